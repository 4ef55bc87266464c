"""Recording what each quantizable weight sees while a model speaks (the calibration hook's default).

A calibrated quantization method (GPTQ's Hessian XᵀX, AWQ's per-column |x|) needs, for each weight, the
inputs it multiplies, in the weight's own 2-D quantization view. `record` runs the family's synthesis
loop on the torch runner and catches every ``F.linear``, ``F.conv1d`` and ``F.conv_transpose1d`` call
whose weight argument *is* one of the named ``state_dict()`` tensors.

Why a `TorchFunctionMode` and not module hooks: families call the functional ops directly on module
weights (Pocket TTS's streaming codec runs ``F.conv1d(x, c.weight, ...)`` with its own carried context),
and a function mode sees those calls as well as every ``nn.Linear``/``nn.Conv1d`` forward.

Which tensors are caught: ``FamilyModel.state_dict()`` returns the model's parameters detached, which
share their storage, so a call is matched by the weight's data pointer, shape, strides and dtype. The
built-in families fold weight norm when they load (VITS: `fold_weight_norm`; Pocket TTS has none), so
the tensors the graphs multiply are the very ones the state dict names. A family that recomputes a
weight on every call (an unfolded parametrization, a fused or transposed copy) is not matched for that
weight: `record` yields nothing for it, and a calibrated method falls back to its uncalibrated rule. A
slice such as ``in_proj.weight[:d]`` has another shape, so it never matches the whole tensor.

Memory is capped twice: each weight keeps at most `max_rows` rows, sampled uniformly over every call
(reservoir sampling with a fixed seed, so the same model and sentences record the same rows), and names
are recorded in passes of at most `max_bytes` of rows, re-running the synthesis for each pass (a
vocoder's convolutions see every audio sample; 200 weights of 1,000 columns would otherwise hold GBs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

if TYPE_CHECKING:
    from voxport.families.base import FamilyModel, SynthesisSettings

#: rows kept per weight: enough for a well-conditioned Hessian of a few thousand columns
DEFAULT_MAX_ROWS = 4096
#: bytes of recorded rows held at once (2 GiB: joe's 132 weights in two synthesis passes rather than ten);
#: more names than fit are recorded in further passes
DEFAULT_MAX_BYTES = 2 << 30


@dataclass(frozen=True)
class CalibrationSet:
    """What a calibrated quantization method runs the model on: token ids per sentence, and the
    settings (seed, noise) that make the run reproducible."""

    ids: tuple[tuple[int, ...], ...]
    settings: SynthesisSettings


@dataclass(frozen=True)
class WeightInputs:
    """The activations one quantizable weight saw during calibration, in the weight's own 2-D view.

    `x` is (n, cols) float32 with columns aligned to the axis quantization blocks run along
    (`reduction_axis` 1: Linear and Conv1d, unfolded as in_channels*kernel; 0: ConvTranspose1d, whose
    rows are the input channels), which is what GPTQ's Hessian (XᵀX) and AWQ's per-column |x| need.

    A grouped Conv1d (groups > 1) has each group's unfolded inputs stacked as rows: every column lines
    up with the weight's, but the rows pool all groups, while each output row only ever sees its own
    group's (an exact per-group Hessian would keep them apart)."""

    name: str
    x: np.ndarray
    reduction_axis: Literal[0, 1]


def record(
    model: FamilyModel,
    batch: CalibrationSet,
    names: Collection[str],
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    seed: int = 0,
) -> Iterator[WeightInputs]:
    """What each named weight sees while `model` speaks every sentence of `batch` (torch runner).

    Yields one `WeightInputs` per name that a linear or 1-D convolution multiplied, in `names` order;
    a name no such call used (an embedding table, a weight only training runs) is not yielded."""
    if max_rows < 1 or max_bytes < 1:
        raise ValueError(f"need max_rows >= 1 and max_bytes >= 1, got {max_rows}, {max_bytes}")
    state = model.state_dict()
    unknown = [n for n in names if n not in state]
    if unknown:
        raise ValueError(f"calibration: no weight named {', '.join(map(repr, unknown[:5]))} in the model")
    for group in _passes([n for n in dict.fromkeys(names)], state, max_rows, max_bytes):
        recorder = _Recorder({n: state[n] for n in group}, max_rows, seed)
        runner = model.torch_runner()
        with recorder, torch.no_grad():
            for ids in batch.ids:
                model.synthesize(runner, list(ids), batch.settings)
        yield from recorder.results(group)


def _passes(
    names: Sequence[str], state: dict[str, torch.Tensor], max_rows: int, max_bytes: int
) -> Iterator[list[str]]:
    """`names` in consecutive groups whose recorded rows fit in `max_bytes` (one name per group at least)."""
    group: list[str] = []
    used = 0
    for name in names:
        shape = tuple(state[name].shape)
        cols = max(shape[0], math.prod(shape[1:])) if len(shape) > 1 else shape[0]  # either view's width
        need = max_rows * cols * 4
        if group and used + need > max_bytes:
            yield group
            group, used = [], 0
        group.append(name)
        used += need
    if group:
        yield group


def _key(t: torch.Tensor) -> tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype]:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)


class _Rows:
    """At most `max_rows` rows of one weight's inputs, a uniform sample of every row offered
    (Algorithm R, vectorised per call: only the rows that are kept are ever unfolded)."""

    def __init__(self, max_rows: int, rng: np.random.Generator, reduction_axis: Literal[0, 1]) -> None:
        self.max_rows, self.rng, self.reduction_axis = max_rows, rng, reduction_axis
        self.seen = 0
        self.buffer: np.ndarray | None = None

    def offer(self, count: int, cols: int, gather: Callable[[np.ndarray], np.ndarray]) -> None:
        if count == 0:
            return
        index = self.seen + np.arange(count)
        slot = np.where(index < self.max_rows, index, self.rng.integers(0, index + 1))
        local = np.nonzero(slot < self.max_rows)[0]
        self.seen += count
        if local.size == 0:
            return
        # a slot taken twice in one call keeps the later row, as the sequential algorithm would
        _, last = np.unique(slot[local][::-1], return_index=True)
        local = local[::-1][last]
        if self.buffer is None:
            self.buffer = np.empty((min(self.max_rows, 1 << 30), cols), dtype=np.float32)
        if self.buffer.shape[1] != cols:
            raise ValueError(f"a weight was called with {cols} input columns and with {self.buffer.shape[1]}")
        self.buffer[slot[local]] = gather(local)

    def rows(self) -> np.ndarray:
        assert self.buffer is not None
        return self.buffer[: min(self.seen, self.max_rows)].copy()


class _Recorder(TorchFunctionMode):
    """Runs every torch function as usual; for the three weight ops on a watched weight it also offers
    the call's input rows (in the weight's 2-D view) to that weight's `_Rows`."""

    def __init__(self, weights: dict[str, torch.Tensor], max_rows: int, seed: int) -> None:
        super().__init__()
        self.watch: dict[tuple[Any, ...], list[str]] = {}
        for name, tensor in weights.items():
            self.watch.setdefault(_key(tensor), []).append(name)
        self.max_rows = max_rows
        self.rng = np.random.default_rng(seed)
        self.rows: dict[str, _Rows] = {}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # the mode is off while this runs: nothing below is re-entered
        unfold = _UNFOLD.get(func)
        if unfold is not None:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            names = self.watch.get(_key(weight)) if isinstance(weight, torch.Tensor) else None
            if names:
                axis, count, cols, gather = unfold(*args, **kwargs)
                for name in names:
                    rows = self.rows.setdefault(name, _Rows(self.max_rows, self.rng, axis))
                    rows.offer(count, cols, gather)
        return out

    def results(self, order: Sequence[str]) -> Iterator[WeightInputs]:
        for name in order:
            if name in self.rows:
                rows = self.rows[name]
                yield WeightInputs(name, rows.rows(), rows.reduction_axis)


_Unfolded = tuple[Literal[0, 1], int, int, Callable[[np.ndarray], np.ndarray]]


def _array(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).numpy()


def _one(value: int | Sequence[int]) -> int:
    return int(value if isinstance(value, int) else value[0])


def _linear(input: torch.Tensor, weight: torch.Tensor, bias: Any = None) -> _Unfolded:
    """Linear: the inputs' last axis is the weight's columns; every leading position is a row."""
    x = _array(input).reshape(-1, weight.shape[1])
    return 1, x.shape[0], x.shape[1], lambda rows: x[rows]


def _conv1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Any = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> _Unfolded:
    """Conv1d: each output position (and group) is a row of in_channels/groups * kernel columns, the
    input window that position multiplies, in the weight's (in_ch, k) column order; padding applied
    as the op applies it (zeros; "same" puts the odd extra sample on the right, as torch does)."""
    x = _array(input if input.dim() == 3 else input.unsqueeze(0))
    s, d, k = _one(stride), _one(dilation), int(weight.shape[2])
    if isinstance(padding, str):
        total = d * (k - 1) if padding == "same" else 0
        left, right = total // 2, total - total // 2
    else:
        left = right = _one(padding)
    x = np.pad(x, ((0, 0), (0, 0), (left, right)))
    n, channels, length = x.shape
    per_group = channels // groups
    positions = (length - d * (k - 1) - 1) // s + 1
    taps = d * np.arange(k)

    def gather(rows: np.ndarray) -> np.ndarray:
        sample, rest = np.divmod(rows, positions * groups)
        position, group = np.divmod(rest, groups)
        chans = group[:, None] * per_group + np.arange(per_group)[None, :]
        times = position[:, None] * s + taps[None, :]
        window: np.ndarray = x[sample[:, None, None], chans[:, :, None], times[:, None, :]]
        return window.reshape(len(rows), per_group * k)

    return 1, n * max(positions, 0) * groups, per_group * k, gather


def _conv_transpose1d(input: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> _Unfolded:
    """ConvTranspose1d: the weight is (in_ch, out_ch/groups, k), its 2-D view's rows are the input
    channels, so the reduction runs over rows (axis 0) and each input position is a row of in_ch."""
    x = _array(input if input.dim() == 3 else input.unsqueeze(0))
    x = x.transpose(0, 2, 1).reshape(-1, x.shape[1])
    return 0, x.shape[0], x.shape[1], lambda rows: x[rows]


_UNFOLD: dict[Callable[..., Any], Callable[..., _Unfolded]] = {
    F.linear: _linear,
    F.conv1d: _conv1d,
    F.conv_transpose1d: _conv_transpose1d,
}
