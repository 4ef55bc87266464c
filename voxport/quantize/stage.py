"""The quantize stage: one model + one precision → every weight in its stored encoding, on disk.

The result is written as safetensors (codes and scales as plain tensors, layout in the metadata),
so export can run later, elsewhere, or for several formats from the same bits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.families.base import CalibrationSet, FamilyModel
from voxport.io import atomic_write_bytes
from voxport.progress import Progress
from voxport.quantize.budget import Objective, plan_budget, units_of
from voxport.quantize.methods import QuantMethod, get_method, quantize
from voxport.quantize.plan import WeightDecision, plan_precisions, skipped
from voxport.quantize.precisions import SPECS
from voxport.quantize.tensor import QuantizedTensor

Stored = np.ndarray | QuantizedTensor


@dataclass
class QuantizedModel:
    precision: str
    method: str
    weights: dict[str, Stored]
    decisions: dict[str, WeightDecision]
    #: per module: what was done to it (`summarize`, run once by the quantize stage on what it stores, not
    #: on every budget candidate), for `voxport quantize` and the report
    summary: list[dict[str, Any]] = field(default_factory=list)
    #: the size budget's plan (`BudgetPlan.to_json()`) when a budget chose the mix
    budget: dict[str, Any] | None = None

    def skipped_weights(self) -> list[dict]:
        return skipped(self.decisions)

    def dequantized(self) -> dict[str, torch.Tensor]:
        """float32 weights exactly as every artifact computes them (for torch-side checks)."""
        out = {}
        for name, value in self.weights.items():
            array = value.dequantize() if isinstance(value, QuantizedTensor) else value.astype(np.float32)
            out[name] = torch.from_numpy(np.ascontiguousarray(array))
        return out

    def bits_per_weight(self, *, scale_bits: int | Callable[[QuantizedTensor], int] = 32) -> float:
        """Stored bits over all weight elements; `scale_bits` is what the target format spends per scale
        (or a function of the tensor, for a format whose scale width depends on the encoding)."""
        bits = 0
        count = 0
        for value in self.weights.values():
            if isinstance(value, QuantizedTensor):
                width = scale_bits(value) if callable(scale_bits) else scale_bits
                bits += value.storage_bits(scale_bits=width)
                count += int(np.prod(value.shape))
            else:
                bits += value.size * value.dtype.itemsize * 8
                count += value.size
        return bits / max(count, 1)


def quantize_model(
    model: FamilyModel,
    precision: str,
    method: str | QuantMethod = "rtn",
    *,
    block_size: int = 32,
    overrides: Mapping[str, str] | None = None,
    calibration: CalibrationSet | None = None,
    int8_block_size: int | None = None,
) -> QuantizedModel:
    """Every weight of `model` in its stored encoding at `precision` (torchao's ``quantize_(model,
    config)``: this entry point stays the same whatever `method` is).

    `method` is a registered name (default options) or a method object. A calibrated method first
    gets `calibration` (the sentences it records activations on) for the weights the plan stores at an
    integer precision; an uncalibrated one ignores it. `int8_block_size` stores int8 weights in blocks
    of that many elements (32: the codes of GGUF Q8_0) instead of one scale per row."""
    state = model.state_dict()
    try:
        chosen = method if isinstance(method, QuantMethod) else get_method(method)
        decisions = plan_precisions(
            {k: tuple(v.shape) for k, v in state.items()},
            model.quantizable(),
            precision,
            dict(overrides or {}),
            block_size=block_size,
            int8_block_size=int8_block_size,
        )
    except ValueError as exc:
        raise BadInput(f"quantize: {exc}") from None
    integer = [name for name, d in decisions.items() if SPECS[d.precision].integer]
    if chosen.calibrated and integer:
        if calibration is None or not calibration.ids:
            raise BadInput(
                f"quantize: method {chosen.name!r} is calibrated and needs calibration sentences; "
                "give them under quantize.calibration (texts: or ids:) in the recipe"
            )
        chosen.calibrate(model, calibration, integer)
    weights: dict[str, Stored] = {}
    for name, tensor in state.items():
        array = tensor.to(torch.float32).numpy()
        if not np.issubdtype(tensor.numpy().dtype, np.floating):
            weights[name] = tensor.numpy()
            continue
        try:
            weights[name] = quantize(
                array,
                decisions[name].precision,
                method=chosen,
                block_size=block_size,
                name=name,
                int8_block_size=decisions[name].int8_block_size,
            )
        except ValueError as exc:
            raise BadInput(f"quantize {name}: {exc}") from None
    return QuantizedModel(precision=precision, method=chosen.name, weights=weights, decisions=decisions)


def summarize(
    state: Mapping[str, torch.Tensor], qm: QuantizedModel, method: QuantMethod, block_size: int
) -> list[dict[str, Any]]:
    """One row per module (`units_of`, two name levels up): its precisions, and the error of the
    method's codes relative to rtn's codes for the same weights, both judged by the method's own
    `error` (output error on the calibration inputs for a calibrated method): 1.0 means no better than
    rounding to nearest, 0.6 means 40 % less error."""
    rtn = get_method("rtn")
    rows: list[dict[str, Any]] = []
    quantizable = [n for n, d in qm.decisions.items() if d.quantizable]
    for unit, names in units_of(quantizable, "module").items():
        ours = theirs = 0.0
        precisions: dict[str, int] = {}
        for name in names:
            value = qm.weights[name]
            stored = qm.decisions[name].precision
            precisions[stored] = precisions.get(stored, 0) + 1
            if not isinstance(value, QuantizedTensor):
                continue
            weight = state[name].to(torch.float32).numpy()
            plain = quantize(
                weight,
                stored,
                method=rtn,
                block_size=block_size,
                name=name,
                int8_block_size=qm.decisions[name].int8_block_size,
            )
            assert isinstance(plain, QuantizedTensor)
            ours += method.error(name, weight, value)
            theirs += method.error(name, weight, plain)
        rows.append(
            {
                "module": unit,
                "weights": len(names),
                "precision": ", ".join(f"{p}×{n}" if n > 1 else p for p, n in precisions.items()),
                "method": qm.method if theirs > 0 else "-",
                "error_vs_rtn": round(ours / theirs, 4) if theirs > 0 else None,
            }
        )
    return rows


def save_quantized(qm: QuantizedModel, path: Path) -> None:
    from safetensors.numpy import save

    tensors: dict[str, np.ndarray] = {}
    layout: dict[str, dict] = {}
    for name, value in qm.weights.items():
        if isinstance(value, QuantizedTensor):
            tensors[f"{name}#codes"] = np.ascontiguousarray(value.codes)
            tensors[f"{name}#scales"] = np.ascontiguousarray(value.scales)
            if value.offsets is not None:
                tensors[f"{name}#offsets"] = np.ascontiguousarray(value.offsets)
            layout[name] = {
                "bits": value.bits,
                "block_size": value.block_size,
                "shape": list(value.shape),
                "method": value.method,
            }
        else:
            tensors[name] = np.ascontiguousarray(value)
    meta = {
        "precision": qm.precision,
        "method": qm.method,
        "layout": json.dumps(layout),
        "decisions": json.dumps({k: _decision_json(d) for k, d in qm.decisions.items()}),
        "summary": json.dumps(qm.summary),
    }
    if qm.budget is not None:
        meta["budget"] = json.dumps(qm.budget)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save(tensors, metadata=meta))


def _decision_json(d: WeightDecision) -> dict:
    """A decision's fields; `int8_block_size` only when set, so per-row builds keep their old bytes."""
    fields = dict(vars(d))
    if fields.get("int8_block_size") is None:
        fields.pop("int8_block_size", None)
    return fields


def load_quantized(path: Path) -> QuantizedModel:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise BadInput(f"{path}: quantized weights not found; run `voxport quantize` first")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        layout = json.loads(meta["layout"])
        decisions = {k: WeightDecision(**v) for k, v in json.loads(meta["decisions"]).items()}
        summary = json.loads(meta.get("summary", "[]"))
        budget = json.loads(meta["budget"]) if "budget" in meta else None
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise BadInput(f"{path}: not a voxport quantized-weights file ({exc})") from None
    weights: dict[str, Stored] = {}
    for name, info in layout.items():
        weights[name] = QuantizedTensor(
            codes=raw.pop(f"{name}#codes"),
            scales=raw.pop(f"{name}#scales"),
            offsets=raw.pop(f"{name}#offsets", None),
            bits=int(info["bits"]),
            block_size=int(info["block_size"]),
            shape=tuple(info["shape"]),
            method=info.get("method", "rtn"),
        )
    weights.update(raw)
    order = list(decisions) or list(weights)
    weights = {k: weights[k] for k in order if k in weights} | weights
    return QuantizedModel(
        precision=meta["precision"],
        method=meta["method"],
        weights=weights,
        decisions=decisions,
        summary=summary,
        budget=budget,
    )


def quantize_with_budget(
    model: FamilyModel,
    precision: str,
    method: QuantMethod,
    *,
    bits_per_weight: float,
    candidates: Sequence[str],
    objective: Objective,
    granularity: str = "module",
    sentences: int = 0,
    block_size: int = 32,
    overrides: Mapping[str, str] | None = None,
    calibration: CalibrationSet | None = None,
    int8_block_size: int | None = None,
    memo: dict[str, QuantizedModel] | None = None,
    sensitivities: dict[tuple[str, str], float] | None = None,
    progress: Progress | None = None,
) -> QuantizedModel:
    """`precision`'s artifact with the per-module mix a size budget chose (see `budget.py`).

    Every quantizable weight is quantized once at each candidate precision by `method` (the codes a
    unit gets in the artifact are exactly those it was measured with); `memo` keeps those candidate
    models across the precisions of one build, since an int8 and an int4 budget share them, and
    `sensitivities` the measured (unit, candidate) objectives for the same objective. `overrides`
    (keep-higher globs) hold in every candidate, so a module they pin is measured and stored as pinned."""
    memo = {} if memo is None else memo

    def at(target: str) -> QuantizedModel:
        return quantize_model(
            model,
            target,
            method,
            block_size=block_size,
            overrides=overrides,
            calibration=calibration,
            int8_block_size=int8_block_size,
        )

    base = at(precision)
    per_candidate: dict[str, QuantizedModel] = {}
    for candidate in candidates:
        key = f"{candidate}|{sorted((overrides or {}).items())}"
        if candidate == precision:
            memo.setdefault(key, base)
        elif key not in memo:
            memo[key] = at(candidate)
        per_candidate[candidate] = memo[key]
    quantizable = [n for n, d in base.decisions.items() if d.quantizable]
    fixed = {n: v for n, v in base.weights.items() if n not in set(quantizable)}
    state = model.state_dict()
    plan = plan_budget(
        precision=precision,
        budget_bits_per_weight=bits_per_weight,
        candidates={c: {n: qm.weights[n] for n in quantizable} for c, qm in per_candidate.items()},
        quantizable=quantizable,
        reference={k: v.to(torch.float32) for k, v in state.items()},
        fixed=fixed,
        objective=objective,
        granularity=granularity,
        sentences=sentences,
        progress=progress,
        known=sensitivities,
    )
    weights = dict(base.weights)
    decisions = dict(base.decisions)
    for row in plan.units:
        source = per_candidate[row.precision]
        for name in row.weights:
            weights[name] = source.weights[name]
            d = source.decisions[name]
            reason = d.reason or (
                f"budget: {row.unit} → {row.precision}" if d.precision != precision else None
            )
            decisions[name] = WeightDecision(name, d.precision, precision, reason, d.quantizable)
    qm = QuantizedModel(precision=precision, method=base.method, weights=weights, decisions=decisions)
    qm.budget = plan.to_json()
    return qm


def quantized_info(path: Path) -> dict[str, Any]:
    """What the quantize stage recorded about one precision (method, per-module summary, budget plan),
    read from the file's metadata alone, for the report; {} when the file is missing or unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
        return {
            "method": meta.get("method"),
            "summary": json.loads(meta.get("summary", "[]")),
            "budget": json.loads(meta["budget"]) if "budget" in meta else None,
        }
    except (SafetensorError, OSError, ValueError):
        return {}
