"""The calibration recorder: what each quantizable weight sees while a tiny model speaks.

The unfolding is checked against torch itself (the recorded rows times the weight's 2-D view must give
back the op's output), and the model-level tests check that every quantizable weight of the tiny VITS
and the tiny Pocket TTS is recorded, in its own 2-D view, with real and reproducible values."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxport.families import FamilyModel
from voxport.families.base import CalibrationSet, SynthesisSettings, WeightInputs
from voxport.families.calibration import _Recorder, record
from voxport.families.pocket_tts.family import PocketTTSFamily
from voxport.families.pocket_tts.settings import PocketSettings
from voxport.families.pocket_tts.synthetic import make_checkpoint

SENTENCES = ((3, 1, 4, 1, 5, 9, 2, 6), (5, 3, 5, 8))
BATCH = CalibrationSet(ids=SENTENCES, settings=SynthesisSettings(seed=7))
#: Pocket TTS stops after 6 frames so the autoregressive loop runs a fixed, short length
POCKET_BATCH = CalibrationSet(ids=SENTENCES, settings=PocketSettings(seed=7, max_frames=6))


@pytest.fixture(scope="module")
def tiny_pocket(tmp_path_factory: pytest.TempPathFactory) -> FamilyModel:
    return PocketTTSFamily.load(make_checkpoint(tmp_path_factory.mktemp("pocket") / "tiny", seed=0))


def _width(shape: tuple[int, ...], axis: int) -> int:
    """The weight's 2-D view's extent along the reduction axis (columns: in_ch*k; rows: in_ch)."""
    return math.prod(shape[1:]) if axis == 1 else shape[0]


def _recorded(model: FamilyModel, names: Iterable[str], **kw: int) -> dict[str, WeightInputs]:
    return {w.name: w for w in record(model, BATCH, list(names), **kw)}


@pytest.mark.parametrize("which", ["vits", "pocket"])
def test_every_quantizable_weight_is_recorded_in_its_own_2d_view(
    which: str, tiny_vits: FamilyModel, tiny_pocket: FamilyModel
) -> None:
    model = tiny_vits if which == "vits" else tiny_pocket
    state = model.state_dict()
    names = sorted(model.quantizable())
    batch = BATCH if which == "vits" else POCKET_BATCH
    got = {w.name: w for w in model.calibration_inputs(batch, names)}
    # both tiny models multiply every quantizable weight while speaking (none is training-only)
    assert list(got) == names
    axes = set()
    for name, w in got.items():
        shape = tuple(state[name].shape)
        assert w.x.dtype == np.float32 and w.x.ndim == 2, name
        assert w.x.shape[0] > 0, name
        assert w.x.shape[1] == _width(shape, w.reduction_axis), (name, shape, w.x.shape)
        # a ConvTranspose1d (3-D weight, rows = input channels) is the only kind reduced over rows
        assert w.reduction_axis == 1 or len(shape) == 3, name
        assert np.isfinite(w.x).all(), name
        assert np.abs(w.x).max() > 1e-3, name  # real activations, not an empty buffer
        axes.add(w.reduction_axis)
    # the VITS decoder upsamples with transposed convolutions; Pocket TTS's quantizable weights are linear
    assert axes == ({0, 1} if which == "vits" else {1})


def test_recording_is_deterministic(tiny_vits: FamilyModel) -> None:
    names = sorted(tiny_vits.quantizable())
    a = _recorded(tiny_vits, names, max_rows=64)
    b = _recorded(tiny_vits, names, max_rows=64)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name].x, b[name].x), name


def test_capped_rows_are_a_sample_of_every_row(tiny_vits: FamilyModel) -> None:
    """max_rows keeps a subset of the rows the uncapped recording holds (none invented, none repeated
    beyond what the op saw), and reaches the cap wherever more rows were seen."""
    names = sorted(n for n in tiny_vits.quantizable() if n.startswith("decoder."))[:6]
    full = _recorded(tiny_vits, names, max_rows=1 << 20)
    capped = _recorded(tiny_vits, names, max_rows=32)
    for name in names:
        all_rows, few = full[name].x, capped[name].x
        assert few.shape == (min(32, len(all_rows)), all_rows.shape[1]), name
        seen = {row.tobytes() for row in all_rows}
        assert all(row.tobytes() in seen for row in few), name


def test_memory_passes_record_the_same_rows_as_one_pass(tiny_vits: FamilyModel) -> None:
    """max_bytes too small for two weights re-runs the synthesis per weight: same rows as one pass."""
    names = sorted(tiny_vits.quantizable())[:4]
    one = _recorded(tiny_vits, names, max_rows=1 << 16)
    each = _recorded(tiny_vits, names, max_rows=1 << 16, max_bytes=1)
    for name in names:
        assert np.array_equal(one[name].x, each[name].x), name


def test_unknown_weight_name_is_an_error(tiny_vits: FamilyModel) -> None:
    with pytest.raises(ValueError, match="no weight named 'nope.weight'"):
        list(record(tiny_vits, BATCH, ["nope.weight"]))


def _catch(weight: torch.Tensor, call: object) -> tuple[torch.Tensor, WeightInputs]:
    recorder = _Recorder({"w": weight}, max_rows=1 << 20, seed=0)
    with recorder, torch.no_grad():
        out = call()  # type: ignore[operator]
    (inputs,) = recorder.results(["w"])
    return out, inputs


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"),
    [(1, 0, 1, 1), (2, 3, 1, 1), (1, 4, 2, 1), (1, "same", 3, 1), (3, 1, 1, 4), (1, "valid", 1, 2)],
)
def test_conv1d_rows_times_the_weight_view_give_the_output(
    stride: int, padding: int | str, dilation: int, groups: int
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 29, generator=g)
    w = torch.randn(12, 8 // groups, 5, generator=g)
    out, inputs = _catch(
        w, lambda: F.conv1d(x, w, None, stride=stride, padding=padding, dilation=dilation, groups=groups)
    )
    assert inputs.reduction_axis == 1 and inputs.x.shape[1] == w.shape[1] * w.shape[2]
    n, _, positions = out.shape
    # rows run over (sample, position, group); each group's rows meet only that group's output channels
    rows = inputs.x.reshape(n, positions, groups, -1)
    view = w.numpy().reshape(groups, 12 // groups, -1)
    expect = np.einsum("npgc,goc->ngop", rows, view).reshape(n, 12, positions)
    np.testing.assert_allclose(expect, out.numpy(), rtol=1e-5, atol=1e-5)


def test_linear_rows_are_the_inputs_last_axis() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 10, generator=g)
    module = torch.nn.Linear(10, 6)
    out, inputs = _catch(module.weight, lambda: module(x))
    assert inputs.reduction_axis == 1
    np.testing.assert_array_equal(inputs.x, x.numpy().reshape(-1, 10))
    np.testing.assert_allclose(
        inputs.x @ module.weight.detach().numpy().T + module.bias.detach().numpy(),
        out.numpy().reshape(-1, 6),
        rtol=1e-5,
        atol=1e-6,
    )


def test_conv_transpose1d_rows_are_input_positions_reduced_over_the_weight_rows() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 6, 7, generator=g)
    w = torch.randn(6, 3, 4, generator=g)  # (in_ch, out_ch, k)
    # stride == kernel: every output sample is one input position times one weight column
    out, inputs = _catch(w, lambda: F.conv_transpose1d(x, w, stride=4))
    assert inputs.reduction_axis == 0 and inputs.x.shape == (2 * 7, 6)
    contributions = inputs.x @ w.numpy().reshape(6, 3 * 4)  # (n*positions, out_ch*k)
    expect = contributions.reshape(2, 7, 3, 4).transpose(0, 2, 1, 3).reshape(2, 3, 28)
    np.testing.assert_allclose(expect, out.numpy(), rtol=1e-5, atol=1e-5)


def test_a_copy_of_a_weight_is_not_mistaken_for_it() -> None:
    """Matching is by storage, not value: an equal tensor elsewhere is a different weight."""
    w = torch.randn(4, 3)
    recorder = _Recorder({"w": w}, max_rows=8, seed=0)
    with recorder, torch.no_grad():
        F.linear(torch.randn(2, 3), w.clone())
    assert list(recorder.results(["w"])) == []
