"""Quantization computed once, format-neutrally: a plan says which weight gets which precision, the
methods turn each weight into codes plus scales, and every exporter maps that same ``QuantizedTensor``
into its own encoding so all artifacts dequantize to identical weights."""

from voxport.quantize.methods import quantize, quantize_int4, quantize_int8
from voxport.quantize.plan import WeightDecision, plan_precisions, skipped
from voxport.quantize.tensor import QuantizedTensor

__all__ = [
    "QuantizedTensor",
    "WeightDecision",
    "plan_precisions",
    "quantize",
    "quantize_int4",
    "quantize_int8",
    "skipped",
]
