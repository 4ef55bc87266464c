"""The quantize stage: one model + one precision → every weight in its stored encoding, on disk.

The result is written as safetensors (codes and scales as plain tensors, layout in the metadata),
so export can run later, elsewhere, or for several formats from the same bits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.families.base import CalibrationSet, FamilyModel
from voxport.io import atomic_write_bytes
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
    }
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
        precision=meta["precision"], method=meta["method"], weights=weights, decisions=decisions
    )
