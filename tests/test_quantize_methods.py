"""Quantization methods as registered objects: byte-identity of the built-ins, the registry, options.

The golden digests below were recorded from HEAD 5563869 (quantize/methods.py, before the methods
became classes) with the same tensors: any change to rtn or mse codes or scales changes an artifact."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from voxport.errors import BadInput
from voxport.families import FamilyModel
from voxport.families.base import CalibrationSet, SynthesisSettings
from voxport.pipeline import quantize as quantize_stage
from voxport.quantize import QuantizedTensor, get_method, methods, quantize
from voxport.quantize.calibration import default_texts
from voxport.quantize.methods import Blocks, QuantMethod, absmax_scale, encode, stored_scale
from voxport.quantize.precisions import FLOAT, INTEGER, PRECISIONS, SPECS, lowest, rank
from voxport.quantize.stage import load_quantized, quantize_model
from voxport.recipe import Recipe, load_recipe, recipe_json_schema

EXAMPLE = Path(__file__).parent / "extending" / "method_example.py"

# (tensor, method, precision, block_size) -> sha256 over dtype, shape and bytes of codes, then scales
GOLDEN = {
    ("conv", "rtn", "int8", 32): "ae8b96410932a466c6fad42555647c202b924d884551f02923e85b398df6b80c",
    ("conv", "rtn", "int4", 32): "f26cd451265aaa25c2e099afa2f04b71bb5619ac9e9b6db7be956d1c688189a1",
    ("conv", "rtn", "int4", 40): "bbd645095b2f070784feda2892f6270d0b5b138a4212c20431254bb5558f3f70",
    ("conv", "mse", "int8", 32): "ae8b96410932a466c6fad42555647c202b924d884551f02923e85b398df6b80c",
    ("conv", "mse", "int4", 32): "eb8b290bb8726e32dfcd3f57de19d474ca214533ca509938c419910a9fb02c0e",
    ("conv", "mse", "int4", 40): "c2e698bab1695d2100efe616d71aaeb624ea3b9e562855337f6e8c72a300be21",
    ("wide", "rtn", "int8", 32): "db4bddd3139b246eacfad12e5bc7442e9b6c02cb38ffa78e77b44f1221f9ea6a",
    ("wide", "rtn", "int4", 32): "57e6b104d147978a8841fb91fbfefd20d5073ea5b1623f901b8a280db3108b75",
    ("wide", "rtn", "int4", 40): "fa3221d80fd1bb8858fc86c617a36f4f3d4d2fe0cc90f4e4dac8248ec5aceb4b",
    ("wide", "mse", "int8", 32): "71455c60f3e9657615c7ff71f3ac1bf15b66f973812f444a33ecf42b6dfcfd02",
    ("wide", "mse", "int4", 32): "db19645896c60512cc4f96cbf3520f6a35dedbe488d1ef60fbdae5657aa47d0e",
    ("wide", "mse", "int4", 40): "144354a267c9af9569248f38bbd9fcd884fb8fe4f0d47fce10f268b2c6997318",
}


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    # heavy tails (Student-t, 2 dof) and per-row gains, one all-zero row; 96 columns: 3 blocks of 32,
    # or 2.4 blocks of 40 (a partial last block)
    conv = (rng.standard_t(2.0, (48, 8, 12)) * rng.uniform(0.01, 3.0, (48, 1, 1))).astype(np.float32)
    conv[3] = 0.0
    # long Gaussian rows: where mse's clipping beats rtn at int8 too (the digests differ)
    wide = rng.standard_normal((16, 4096)).astype(np.float32)
    return {"conv": conv, "wide": wide}


def _digest(q: QuantizedTensor) -> str:
    h = hashlib.sha256()
    for a in (q.codes, q.scales):
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_builtin_codes_and_scales_are_byte_identical_to_before_the_registry(key: tuple) -> None:
    tensor, method, precision, block_size = key
    q = quantize(_tensors()[tensor], precision, method=method, block_size=block_size)
    assert isinstance(q, QuantizedTensor) and q.method == method
    assert _digest(q) == GOLDEN[key]


def test_mse_options_change_the_search_and_its_defaults_are_the_old_grid() -> None:
    w = _tensors()["wide"]
    default = get_method("mse")
    assert default.describe() == {"method": "mse", "options": {"min_factor": 0.5, "steps": 32}}
    same = quantize(w, "int4", method=get_method("mse", {"steps": 32, "min_factor": 0.5}))
    coarse = quantize(w, "int4", method=get_method("mse", {"steps": 2}))
    assert _digest(same) == GOLDEN[("wide", "mse", "int4", 32)]
    assert _digest(coarse) != _digest(same)
    with pytest.raises(ValidationError, match="steps"):
        get_method("mse", {"steps": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        get_method("rtn", {"steps": 4})  # rtn takes no options


def test_registry_lists_builtins_and_registers_a_subclass_by_name() -> None:
    assert list(methods())[:2] == ["rtn", "mse"]
    assert not methods()["rtn"].calibrated and methods()["mse"].Options.model_fields

    class Half(QuantMethod, name="test-half-scale"):
        """A method whose scales are half of rtn's: every value clips, so codes differ."""

        def quantize_weight(self, name, weight, spec, block_size):  # type: ignore[no-untyped-def]
            blocks = Blocks.of(weight, spec, block_size)
            scale = stored_scale(absmax_scale(blocks.values, spec.bits) / 2, spec.bits)
            return blocks.pack(encode(blocks.values, scale, spec.bits), scale, self.name)

    try:
        assert methods()["test-half-scale"] is Half
        w = _tensors()["conv"]
        half, rtn = quantize(w, "int8", method="test-half-scale"), quantize(w, "int8")
        assert isinstance(half, QuantizedTensor) and isinstance(rtn, QuantizedTensor)
        assert np.allclose(half.scales, rtn.scales / 2) and half.method == "test-half-scale"
        with pytest.raises(TypeError, match="already registered"):

            class Clash(QuantMethod, name="rtn"):
                def quantize_weight(self, name, weight, spec, block_size):  # type: ignore[no-untyped-def]
                    raise AssertionError
    finally:
        from voxport.quantize.methods import base

        base._REGISTRY.pop("test-half-scale", None)
    with pytest.raises(ValueError, match="known: rtn, mse, gptq, imatrix"):
        get_method("no-such-method")


def test_every_precision_stores_what_its_spec_says() -> None:
    """The spec is what quantize() does: integer precisions give codes of `bits` bits, float ones an
    array of that width, and rank orders precisions by the bits they store."""
    w = _tensors()["conv"]
    for p in PRECISIONS:
        stored = quantize(w, p)
        if SPECS[p].integer:
            assert isinstance(stored, QuantizedTensor) and stored.bits == SPECS[p].bits
            assert stored.n_blocks == (-(-stored.cols // 32) if SPECS[p].blocked else 1)
            assert int(stored.codes.min()) >= -(2 ** (stored.bits - 1))
        else:
            assert isinstance(stored, np.ndarray) and stored.dtype.itemsize * 8 == SPECS[p].bits
    assert sorted(PRECISIONS, key=rank) == sorted(PRECISIONS, key=lambda p: SPECS[p].bits)
    assert set(INTEGER) | set(FLOAT) == set(PRECISIONS) and not set(INTEGER) & set(FLOAT)
    assert lowest(*PRECISIONS) == min(PRECISIONS, key=lambda p: SPECS[p].bits)


# --- the recipe's quantize.method / quantize.options ------------------------------------------------


def test_recipe_method_enum_is_the_registry() -> None:
    quantize_schema = recipe_json_schema()["$defs"]["QuantizeConfig"]["properties"]
    assert quantize_schema["method"]["enum"] == list(methods())
    assert (
        Recipe.from_mapping({"name": "x", "model": "m", "quantize": {"method": "mse"}}, ".").quantize.method
        == "mse"
    )


@pytest.mark.parametrize(
    ("quantize_yaml", "line", "message"),
    [
        ("method: mse\n  options:\n    steps: 0", 6, "quantize.options.steps: must be ≥ 1, got 0"),
        (
            "method: mse\n  options:\n    stepz: 4",
            6,
            "quantize.options.stepz: unknown option (allowed: min_factor, steps)",
        ),
        ("options: {steps: 4}", 4, "quantize.options.steps: unknown option (allowed: none)"),
        ("method: no-such", 4, "quantize.method: 'no-such' is not one of rtn, mse, gptq, imatrix"),
    ],
    ids=["out-of-range", "unknown-option", "rtn-takes-none", "unknown-method"],
)
def test_a_bad_method_option_is_one_line_with_file_and_line(
    tmp_path: Path, quantize_yaml: str, line: int, message: str
) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"name: x\nmodel: m\nquantize:\n  {quantize_yaml}\n", encoding="utf-8")
    with pytest.raises(BadInput) as info:
        load_recipe(recipe)
    assert str(info.value) == f"{recipe}:{line}: {message}"
    assert "\n" not in str(info.value)


# --- tests/extending/method_example.py: a calibrated method registered from outside -----------------


@pytest.fixture
def example() -> Iterator[ModuleType]:
    """The example module imported as a user would (registering absmax-act), unregistered afterwards
    so other tests see the built-in registry."""
    from voxport.quantize.methods import base

    spec = importlib.util.spec_from_file_location("method_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["method_example"] = module
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        base._REGISTRY.pop("absmax-act", None)
        sys.modules.pop("method_example", None)


CALIBRATION = CalibrationSet(
    ids=((3, 1, 4, 1, 5, 9, 2, 6), (5, 3, 5, 8, 9, 7)), settings=SynthesisSettings(seed=3)
)


def test_example_method_is_registered_and_validated_by_the_recipe(
    example: ModuleType, tmp_path: Path
) -> None:
    assert methods()["absmax-act"] is example.AbsmaxAct and example.AbsmaxAct.calibrated
    assert "absmax-act" in recipe_json_schema()["$defs"]["QuantizeConfig"]["properties"]["method"]["enum"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nmodel: m\nquantize:\n  method: absmax-act\n", encoding="utf-8")
    # no calibration sentences of its own: the built-in English set, for int8/int4 builds only
    loaded = load_recipe(recipe)
    assert loaded.quantize.calibration_texts() == (list(default_texts()), [])
    assert loaded.quantize.needs_calibration("int8") and not loaded.quantize.needs_calibration("fp16")
    recipe.write_text(
        "name: x\nmodel: m\nquantize:\n  method: absmax-act\n  calibration: {ids: []}\n", encoding="utf-8"
    )
    with pytest.raises(BadInput, match=r"r.yaml:3: quantize: calibration: give sentences"):
        load_recipe(recipe)  # an empty section is said at load time, not silently the built-in set
    recipe.write_text(
        "name: x\nmodel: m\nquantize:\n  method: absmax-act\n  options: {alpha: -1}\n"
        "  calibration: {texts: [hello]}\n",
        encoding="utf-8",
    )
    with pytest.raises(BadInput, match=r"r.yaml:5: quantize.options.alpha: must be ≥ 0, got -1"):
        load_recipe(recipe)


def _output_error(x: np.ndarray, weight: torch.Tensor, stored: QuantizedTensor) -> float:
    """||X (W - Ŵ)ᵀ||²: what the quantization error of one layer does to its outputs on real inputs."""
    w2 = weight.numpy().reshape(weight.shape[0], -1).astype(np.float64)
    delta = w2 - stored.dequantize().reshape(w2.shape).astype(np.float64)
    return float(np.square(x.astype(np.float64) @ delta.T).sum())


def test_example_method_runs_through_quantize_model_on_tiny_vits(
    example: ModuleType, tiny_vits: FamilyModel
) -> None:
    with pytest.raises(BadInput, match="needs calibration sentences"):
        quantize_model(tiny_vits, "int4", example.AbsmaxAct())
    method = example.AbsmaxAct()
    qm = quantize_model(tiny_vits, "int4", method, calibration=CALIBRATION)
    rtn = quantize_model(tiny_vits, "int4", "rtn")
    state = tiny_vits.state_dict()
    stored = {n: w for n, w in qm.weights.items() if isinstance(w, QuantizedTensor)}
    assert stored and all(w.method == "absmax-act" for w in stored.values())
    # every stored linear/conv weight was calibrated except the transposed convs (reduced over rows)
    transposed = {n for n in stored if n.startswith("decoder.upsampler.")}
    assert len(transposed) == 3 and set(method.importance) == set(stored) - transposed
    recorded = {w.name: w for w in tiny_vits.calibration_inputs(CALIBRATION, sorted(method.importance))}
    changed = 0
    ours_total = rtn_total = 0.0
    for name in method.importance:
        ours, base = stored[name], rtn.weights[name]
        assert isinstance(base, QuantizedTensor)
        changed += not np.array_equal(ours.codes, base.codes)
        ours_total += _output_error(recorded[name].x, state[name], ours)
        rtn_total += _output_error(recorded[name].x, state[name], base)
    for name in set(stored) - set(method.importance):
        assert np.array_equal(stored[name].codes, rtn.weights[name].codes), name  # type: ignore[union-attr]
    assert changed > len(method.importance) // 2
    # weighting columns by what they meet lowers the output error on the calibration inputs themselves;
    # measured 0.81 of rtn's; the bound leaves a wide margin for BLAS summation order on other CPUs
    assert ours_total < 0.95 * rtn_total, (ours_total, rtn_total)


def test_example_method_runs_from_a_recipe_with_calibration_texts(
    example: ModuleType, tiny_vits: FamilyModel, tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """quantize.calibration and quantize.options are plumbed: the stage stores exactly what the method
    computes with those options on those sentences (texts tokenized, then ids; default settings)."""
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        textwrap.dedent(
            f"""\
            name: calibrated
            model: {tiny_vits_dir}
            precisions: [int4]
            quantize:
              method: absmax-act
              options: {{alpha: 0.5, steps: 8}}
              calibration:
                texts: [hello there]
                ids: [[3, 1, 4, 1, 5]]
            """
        ),
        encoding="utf-8",
    )
    quantize_stage(load_recipe(recipe_file), tmp_path / "out")
    qm = load_quantized(tmp_path / "out" / "stages" / "quantized" / "int4.safetensors")
    assert qm.method == "absmax-act"
    batch = CalibrationSet(
        (tuple(tiny_vits.text_to_ids("hello there")), (3, 1, 4, 1, 5)), SynthesisSettings()
    )
    direct = quantize_model(
        tiny_vits, "int4", example.AbsmaxAct({"alpha": 0.5, "steps": 8}), calibration=batch
    )
    defaults = quantize_model(tiny_vits, "int4", example.AbsmaxAct(), calibration=batch)
    stored = {n: w for n, w in qm.weights.items() if isinstance(w, QuantizedTensor)}
    assert stored.keys() == {n for n, w in direct.weights.items() if isinstance(w, QuantizedTensor)}
    differ = 0
    for name, w in stored.items():
        assert w.method == "absmax-act"
        assert np.array_equal(w.codes, direct.weights[name].codes), name  # type: ignore[union-attr]
        assert np.array_equal(w.scales, direct.weights[name].scales), name  # type: ignore[union-attr]
        differ += not np.array_equal(w.scales, defaults.weights[name].scales)  # type: ignore[union-attr]
    assert differ > 0  # the recipe's options, not the defaults, were used
