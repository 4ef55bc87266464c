"""Quantization methods: registered `QuantMethod` subclasses, looked up by name.

``methods()`` lists them (the recipe's ``quantize.method`` enum), ``get_method(name, options)`` builds one,
and ``voxport.quantize.stage.quantize_model(model, precision, method, ...)`` applies one to a whole model;
that entry point never changes when a method is added. ``quantize`` / ``quantize_int8`` /
``quantize_int4`` quantize a single array (tests, benchmarks, format adapters' probes).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from voxport.quantize.methods.base import (
    BUILTIN,
    MethodOptions,
    NoOptions,
    QuantMethod,
    get_method,
    method_class,
    methods,
)
from voxport.quantize.methods.blocks import (
    Blocks,
    absmax_scale,
    block_sq_error,
    encode,
    fp16_checked,
    stored_scale,
)
from voxport.quantize.precisions import SPECS, spec
from voxport.quantize.tensor import QuantizedTensor

__all__ = [
    "BUILTIN",
    "Blocks",
    "MethodOptions",
    "NoOptions",
    "QuantMethod",
    "absmax_scale",
    "block_sq_error",
    "encode",
    "get_method",
    "method_class",
    "methods",
    "quantize",
    "quantize_int4",
    "quantize_int8",
    "stored_scale",
]


def _method(method: str | QuantMethod) -> QuantMethod:
    return method if isinstance(method, QuantMethod) else get_method(method)


def quantize_int8(weight: np.ndarray, *, method: str | QuantMethod = "rtn") -> QuantizedTensor:
    """Symmetric int8, one scale per row (output channel), codes in [-127, 127]."""
    return _method(method).quantize_weight("", weight, SPECS["int8"], 0)


def quantize_int4(
    weight: np.ndarray, *, block_size: int = 32, method: str | QuantMethod = "rtn"
) -> QuantizedTensor:
    """Symmetric int4 in blocks of `block_size` along axis 1 of the 2-D view, codes in [-8, 7], scales
    exactly representable in float16 (see `blocks.stored_scale`)."""
    return _method(method).quantize_weight("", weight, SPECS["int4"], block_size)


def quantize(
    weight: np.ndarray,
    precision: str,
    *,
    method: str | QuantMethod = "rtn",
    block_size: int = 32,
    name: str = "",
    int8_block_size: int | None = None,
) -> QuantizedTensor | np.ndarray:
    """One entry point for every storage precision, so callers can drive it from a plan's decisions.

    fp32/fp16 apply to any float tensor (biases included); integer precisions only to >= 2-D weights,
    through `method` (a registered name or a method object). `name` is the weight's name, for methods
    whose choice depends on what they recorded for it. `int8_block_size` stores int8 in blocks of that
    many elements (fp16 scales, GGUF Q8_0's layout at 32) instead of one scale per row."""
    target = spec(precision)
    chosen = _method(method)
    if target.integer and int8_block_size is not None and target == SPECS["int8"]:
        return chosen.quantize_weight(name, weight, replace(target, blocked=True), int8_block_size)
    if target.integer:
        return chosen.quantize_weight(name, weight, target, block_size)
    if target.bits == 16:
        return fp16_checked(weight)
    return np.asarray(weight, dtype=np.float32)
