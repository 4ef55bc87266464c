"""Quantization computed once, format-neutrally: a plan says which weight gets which precision, a
registered method turns each weight into codes plus scales, and every exporter maps that same
``QuantizedTensor`` into its own encoding so all artifacts dequantize to identical weights."""

from voxport.quantize.methods import (
    MethodOptions,
    QuantMethod,
    get_method,
    methods,
    quantize,
    quantize_int4,
    quantize_int8,
)
from voxport.quantize.plan import WeightDecision, plan_precisions, skipped
from voxport.quantize.precisions import PRECISIONS, SPECS, Precision, PrecisionSpec
from voxport.quantize.tensor import QuantizedTensor

__all__ = [
    "PRECISIONS",
    "SPECS",
    "MethodOptions",
    "Precision",
    "PrecisionSpec",
    "QuantMethod",
    "QuantizedTensor",
    "WeightDecision",
    "get_method",
    "methods",
    "plan_precisions",
    "quantize",
    "quantize_int4",
    "quantize_int8",
    "skipped",
]
