"""Convert one family graph (`GraphSpec`) into a Core ML ML Program, in two steps that can be split.

    spec ──jit.trace──▶ TorchScript ──ct.convert(convert_to="milinternal")──▶ MIL Program
         ──(caller may rewrite const weight ops)──▶ program_to_mlmodel ──▶ MLModel ──save──▶ .mlpackage

`to_program` stops at the in-memory MIL `Program` so that quantized weights can replace the fp
const ops (with `constexpr_blockwise_shift_scale` built from voxport's own integer codes) before
`program_to_mlmodel` serializes it; `convert_graph` does both steps for full-precision artifacts.

Weights in the program. Every Linear/Conv weight of the torch graph survives as its own ``const``
op named ``model.<state_dict name>`` (see `weight_consts`) holding the very same values (in the saved
package the backend's name sanitizer turns the dots into underscores):

- fp32: bit-identical to the torch tensor, same layout ([out, in] for linear, [out, in, k] for conv);
- fp16 (``common::add_fp16_cast``): the const is rounded to fp16 and renamed ``<name>_to_fp16``;
- ``common::fuse_matmul_weight_bias`` turns ``matmul(x, W) + b`` with a const W into ``linear``
  with Wᵀ, which is why `weight_consts` also matches transposed tensors (none in the VITS graphs);
- ``common::const_elimination`` folds consts that only feed shape-free arithmetic (e.g. VITS'
  ``emb_rel_k[0]`` slices or ``exp(-log_scale)``): those parameters have no const op of their own.
  None of them is a quantizable (Linear/Conv) weight.

Shapes. A graph's `dynamic_axes` name its variable axes ("tokens", "frames"); by default each gets a
`ct.RangeDim` (one symbol per axis name, shared by every input that has the axis). The tiny VITS
encoder (tokens) and decoder (tokens + frames) both convert with RangeDim, so that is the default;
`buckets` switches named axes to `ct.EnumeratedShapes` instead (several enumerated inputs need
iOS18 / macOS15 / watchOS11, and all of them enumerate the same list of combinations).

Graphs whose output length depends on input *values* (the VITS one-graph `tts`, whose audio length
follows the predicted durations) cannot be given a static or range output shape: they are refused
with a BadInput before anything is traced, and callers skip them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.export.coreml.compat import apply_patches
from voxport.export.coreml.metadata import apply_metadata
from voxport.families.base import GraphSpec
from voxport.io import atomic_path

#: deployment targets a recipe may name → attribute of `ct.target`
TARGETS: tuple[str, ...] = ("iOS17", "iOS18", "macOS14", "macOS15", "watchOS10", "watchOS11")
#: targets on which several inputs may carry EnumeratedShapes (Core ML 8 / iOS 18 generation)
MULTI_ENUMERATED_TARGETS = frozenset({"iOS18", "macOS15", "watchOS11"})
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
#: default RangeDim bounds per axis name (recipe: `export.coreml.max_tokens` for tokens/seq, `max_frames`)
DEFAULT_BOUNDS: dict[str, tuple[int, int]] = {"tokens": (1, 512), "seq": (1, 512), "frames": (1, 8192)}
#: bounds for an axis name not listed above: unbounded (Core ML runs such models on the CPU/GPU)
UNBOUNDED: tuple[int, int] = (1, -1)
#: coremltools logs (does not raise) which op failed: "converting 'X' op (located at: 'a/b/c')"
_OP_LOCATION = re.compile(r"converting '([^']+)' op \(located at: '([^']*)'\)")


@dataclass(frozen=True)
class WeightConst:
    """Where one torch parameter lives in a MIL program: the const op and how its value relates."""

    op_name: str
    transposed: bool
    dtype: str


# --- argument checks ---------------------------------------------------------------------------------
def coreml_target(name: str) -> Any:
    """`ct.target.<name>` for one of `TARGETS`, else a BadInput listing them."""
    import coremltools as ct

    if name not in TARGETS:
        raise BadInput(f"unknown Core ML target '{name}' (supported: {', '.join(TARGETS)})")
    return getattr(ct.target, name)


def coreml_precision(name: str) -> Any:
    import coremltools as ct

    if name not in PRECISIONS:
        raise BadInput(f"unknown Core ML compute precision '{name}' (supported: {', '.join(PRECISIONS)})")
    return ct.precision.FLOAT16 if name == "fp16" else ct.precision.FLOAT32


def check_static_output_length(spec: GraphSpec) -> None:
    """Refuse a graph whose output shapes change with input values at fixed input shapes.

    Core ML needs every output shape to follow from the input shapes. Probing is cheap and family
    neutral: run the graph on its example inputs and on copies with float inputs scaled, and compare
    output shapes (VITS' `tts` graph grows with `length_scale`; its split graphs do not)."""
    probes = [spec.example_inputs]
    for factor in (2.0, 0.5):
        probes.append(tuple(x * factor if x.is_floating_point() else x for x in spec.example_inputs))
    with torch.no_grad(), _eval_mode(spec.module), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = [[tuple(o.shape) for o in _as_tuple(spec.module(*p))] for p in probes]
    for probe in shapes[1:]:
        for name, first, other in zip(spec.output_names, shapes[0], probe, strict=False):
            if first != other:
                raise BadInput(
                    f"graph '{spec.name}' cannot be converted to Core ML: the shape of output '{name}' "
                    f"depends on input values ({first} vs {other} for equal input shapes); "
                    "export the family's split graphs instead"
                )


# --- shapes ------------------------------------------------------------------------------------------
def _axis_names(spec: GraphSpec) -> list[str]:
    names: list[str] = []
    for name in spec.input_names:
        for axis in spec.dynamic_axes.get(name, {}).values():
            if axis not in names:
                names.append(axis)
    return names


def _input_types(
    spec: GraphSpec,
    flexible: Mapping[str, tuple[int, int]] | None,
    buckets: Mapping[str, Sequence[int]] | None,
    target: str,
) -> list[Any]:
    """One `ct.TensorType` per input: int64 → int32, dynamic axes → RangeDim or EnumeratedShapes."""
    import coremltools as ct

    axes = _axis_names(spec)
    buckets = dict(buckets or {})
    if buckets and flexible:
        raise BadInput(
            f"graph '{spec.name}': give either RangeDim bounds (flexible) or buckets, not both "
            "(Core ML cannot mix ranges and enumerated shapes)"
        )
    if flexible is None:
        flexible = {} if buckets else {a: DEFAULT_BOUNDS.get(a, UNBOUNDED) for a in axes}
    unknown = sorted((set(flexible) | set(buckets)) - set(axes))
    if unknown:
        raise BadInput(
            f"graph '{spec.name}' has no variable axis {', '.join(map(repr, unknown))} "
            f"(its axes: {', '.join(axes) or 'none'})"
        )
    examples = dict(zip(spec.input_names, spec.example_inputs, strict=True))
    ranges = {}
    for axis, (low, high) in flexible.items():
        default = next(
            int(examples[n].shape[i])
            for n in spec.input_names
            for i, a in spec.dynamic_axes.get(n, {}).items()
            if a == axis
        )
        if low < 1 or (high != -1 and not low <= default <= high):
            raise BadInput(
                f"axis '{axis}': bounds ({low}, {high}) must satisfy 1 <= low <= {default} (example) <= high"
            )
        ranges[axis] = ct.RangeDim(lower_bound=low, upper_bound=high, default=default, symbol=axis)
    combos = list(itertools.product(*buckets.values())) if buckets else []
    enumerated_inputs = [
        n for n in spec.input_names if set(spec.dynamic_axes.get(n, {}).values()) & set(buckets)
    ]
    if buckets:
        if len(combos) < 2:
            raise BadInput(f"graph '{spec.name}': buckets must give at least two shapes, got {combos}")
        if len(enumerated_inputs) > 1 and target not in MULTI_ENUMERATED_TARGETS:
            raise BadInput(
                f"graph '{spec.name}': inputs {', '.join(enumerated_inputs)} all need enumerated shapes, "
                f"which Core ML allows only on {', '.join(sorted(MULTI_ENUMERATED_TARGETS))} (not {target})"
            )
    types = []
    for name, example in examples.items():
        axes_of = spec.dynamic_axes.get(name, {})
        dtype = np.int32 if not example.is_floating_point() else np.float32
        if name in enumerated_inputs:
            shapes = []
            for combo in combos:
                size = dict(zip(buckets, combo, strict=True))
                dims = enumerate(example.shape)
                shapes.append(tuple(size.get(axes_of.get(i, ""), int(d)) for i, d in dims))
            shape_arg: Any = ct.EnumeratedShapes(shapes=shapes, default=shapes[0])
        else:
            shape_arg = tuple(ranges.get(axes_of.get(i, ""), int(d)) for i, d in enumerate(example.shape))
        types.append(ct.TensorType(name=name, shape=shape_arg, dtype=dtype))
    return types


# --- conversion --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for tracing, then every submodule's own flag back (graph wrappers are fresh modules)."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, list | tuple) else (out,)


class _OpLocation(logging.Handler):
    """Catches coremltools' "converting 'X' op (located at: ...)" log line, which the exception lacks."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.found: tuple[str, str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = _OP_LOCATION.search(record.getMessage())
        if match:
            self.found = (match.group(1), match.group(2))


def _module_path(location: str) -> str:
    """'text_encoder/encoder/0/attention/119' → 'text_encoder.encoder.0.attention' (node id dropped)."""
    parts = [p for p in location.split("/") if p]
    if parts and parts[-1].isdigit():
        parts = parts[:-1]
    return ".".join(parts) or "<top level>"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_program(
    spec: GraphSpec,
    *,
    target: str,
    compute_precision: str,
    flexible: Mapping[str, tuple[int, int]] | None = None,
    buckets: Mapping[str, Sequence[int]] | None = None,
) -> Any:
    """Trace `spec` and convert it to an in-memory MIL `Program` (``convert_to="milinternal"``).

    `flexible` maps axis names of `spec.dynamic_axes` to RangeDim (lower, upper) bounds (upper -1 =
    unbounded); None gives every axis `DEFAULT_BOUNDS`, ``{}`` fixes every shape at the example's.
    `buckets` maps axis names to sizes for EnumeratedShapes (all combinations of the given axes).
    The main MIL pass pipeline has run (fp16 casts included); the backend passes run later in
    `program_to_mlmodel`. Raises BadInput for unknown targets, data-dependent graphs and
    unconvertible ops ("CoreML cannot convert op 'X' in module a.b.c (graph g): ...")."""
    import coremltools as ct

    ct_target = coreml_target(target)
    precision = coreml_precision(compute_precision)
    check_static_output_length(spec)
    inputs = _input_types(spec, flexible, buckets, target)
    apply_patches()
    handler = _OpLocation()
    logger = logging.getLogger("coremltools")
    logger.addHandler(handler)
    try:
        with torch.no_grad(), _eval_mode(spec.module), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(spec.module, spec.example_inputs, check_trace=False)
            return ct.convert(
                traced,
                inputs=inputs,
                outputs=[ct.TensorType(name=n) for n in spec.output_names],
                convert_to="milinternal",
                minimum_deployment_target=ct_target,
                compute_precision=precision,
            )
    except BadInput:
        raise
    except Exception as exc:  # coremltools raises many internal types; name op, module and graph instead
        if handler.found is not None:
            op, location = handler.found
            raise BadInput(
                f"CoreML cannot convert op '{op}' in module {_module_path(location)} (graph {spec.name}): "
                f"{_first_line(exc)}"
            ) from exc
        raise BadInput(f"CoreML conversion of graph '{spec.name}' failed: {_first_line(exc)}") from exc
    finally:
        logger.removeHandler(handler)


def program_to_mlmodel(program: Any, *, target: str, graph: str = "graph") -> Any:
    """Serialize a MIL `Program` (from `to_program`, possibly with rewritten weight ops) to an MLModel.

    The main pass pipeline is not run again (``PassPipeline.EMPTY``, fp32 precision): it already ran
    in `to_program`, and running it again could fold or re-cast const ops a caller placed on purpose.
    Only the backend passes needed for serialization run, in place on `program`; they sanitize names
    (``model.flow.x.weight`` → ``model_flow_x_weight``), so match weights (`weight_consts`) before.
    The model is not loaded (no Core ML on Linux), which is all `save_mlpackage` needs."""
    import coremltools as ct

    ct_target = coreml_target(target)
    apply_patches()  # the enumerated-shape patch acts here, in the backend
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ct.convert(
                program,
                convert_to="mlprogram",
                minimum_deployment_target=ct_target,
                compute_precision=ct.precision.FLOAT32,
                pass_pipeline=ct.PassPipeline.EMPTY,
                skip_model_load=True,
            )
    except Exception as exc:
        raise BadInput(f"CoreML serialization of graph '{graph}' failed: {_first_line(exc)}") from exc


def convert_graph(
    spec: GraphSpec,
    *,
    target: str,
    compute_precision: str,
    flexible: Mapping[str, tuple[int, int]] | None = None,
    buckets: Mapping[str, Sequence[int]] | None = None,
    descriptions: Mapping[str, str] | None = None,
    user_metadata: Mapping[str, Any] | None = None,
    license: str | None = None,  # noqa: A002 - Core ML's field name
    short_description: str | None = None,
) -> Any:
    """`to_program` + `program_to_mlmodel` + metadata: an unsaved full-precision `MLModel`.

    `user_metadata` (family, sample_rate, precision, recipe, ...) becomes `user_defined_metadata`,
    merged over the graph's own `spec.metadata`."""
    program = to_program(
        spec, target=target, compute_precision=compute_precision, flexible=flexible, buckets=buckets
    )
    mlmodel = program_to_mlmodel(program, target=target, graph=spec.name)
    apply_metadata(
        mlmodel,
        graph=spec.name,
        license=license,
        short_description=short_description,
        descriptions=descriptions,
        user_metadata={**spec.metadata, "precision": compute_precision, **(user_metadata or {})},
    )
    return mlmodel


def save_mlpackage(mlmodel: Any, path: str | Path) -> Path:
    """Write `mlmodel` as `path` (a `.mlpackage` directory) atomically.

    The package is written to a hidden temporary sibling ending in `.mlpackage` (coremltools insists
    on the suffix) and renamed into place, so `path` is either absent/old or the complete package;
    a failure removes the temporary directory."""
    target = Path(path)
    if target.suffix != ".mlpackage":
        raise BadInput(f"{target}: a Core ML ML Program is saved as a directory ending in .mlpackage")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, keep_suffix=True) as tmp:
        mlmodel.save(str(tmp))
        _stable_item_ids(tmp)
    return target


def _stable_item_ids(package: Path) -> None:
    """Replace the random UUIDs coremltools writes into `Manifest.json` with ones derived from each
    item's path, so that the same model gives a byte-identical package (same sha256 in the manifest).
    Core ML only uses them as keys linking `rootModelIdentifier` to an item."""
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    renamed = {
        old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"voxport:{item['path']}"))
        for old, item in manifest.get("itemInfoEntries", {}).items()
    }
    manifest["itemInfoEntries"] = {renamed[old]: item for old, item in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed.get(manifest.get("rootModelIdentifier"), "")
    # sorted keys, indent 4, final newline: exactly how Core ML's own package code rewrites this file
    # whenever coremltools opens a package (ct.utils.load_spec), so reading it leaves its hash alone
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n", encoding="utf-8")


def weight_consts(program: Any, weights: Mapping[str, torch.Tensor]) -> dict[str, WeightConst]:
    """Map parameter names to the const ops of `program` that hold them (by value, fp16 included).

    The lookup is the weight pass's own (`weights.WeightIndex`: exact bytes in fp32 or fp16, as is,
    transposed, or first two axes swapped; a reshape keeps the bytes). Parameters folded into other
    constants (see the module docstring) are absent from the result."""
    from voxport.export.coreml.weights import IDENTITY, WeightIndex, const_ops

    index = WeightIndex(weights, weights.keys())
    found: dict[str, WeightConst] = {}
    for function in program.functions.values():
        for op in const_ops(function):
            value = op.outputs[0].val
            if not isinstance(value, np.ndarray) or value.size <= 1:
                continue
            match = index.lookup(value, op.name)
            if match is not None and match[0] not in found:
                found[match[0]] = WeightConst(op.name, match[1] != IDENTITY, value.dtype.name)
    return found
