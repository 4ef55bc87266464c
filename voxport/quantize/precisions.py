"""The storage precisions, defined once: names, their order and what each one stores.

The recipe's `precisions:` and `overrides:`, the precision plan, the quantization methods and every
exporter ask this module rather than spelling ``"int4"`` themselves, so a new precision (int5, say) is
added here and each consumer learns its rank, bit width and kind from its `PrecisionSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Precision = Literal["fp32", "fp16", "int8", "int4"]

#: every precision, in the order recipes and reports list them (widest first)
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


@dataclass(frozen=True)
class PrecisionSpec:
    """What one storage precision means.

    rank:    position in the order int4 < int8 < fp16 < fp32 (lower stores less); a weight the recipe
             keeps "at least fp16" is one whose precision has a rank >= fp16's.
    bits:    bits per stored element (the codes of an integer precision, the float width otherwise).
    integer: codes plus scales (`QuantizedTensor`) rather than a float array.
    blocked: integer codes share one scale per ``block_size`` consecutive elements of a row; otherwise
             one scale per row (output channel), which is what int8's per-channel formats expect.
    """

    name: Precision
    rank: int
    bits: int
    integer: bool
    blocked: bool = False


SPECS: dict[str, PrecisionSpec] = {
    "fp32": PrecisionSpec("fp32", rank=3, bits=32, integer=False),
    "fp16": PrecisionSpec("fp16", rank=2, bits=16, integer=False),
    "int8": PrecisionSpec("int8", rank=1, bits=8, integer=True),
    "int4": PrecisionSpec("int4", rank=0, bits=4, integer=True, blocked=True),
}
assert tuple(SPECS) == PRECISIONS, "SPECS and the Precision literal must list the same names"

#: integer (codes + scales) and float precisions, each in `PRECISIONS` order
INTEGER: tuple[Precision, ...] = tuple(p for p in PRECISIONS if SPECS[p].integer)
FLOAT: tuple[Precision, ...] = tuple(p for p in PRECISIONS if not SPECS[p].integer)


def spec(precision: str) -> PrecisionSpec:
    """The spec of `precision`, or ValueError naming the allowed ones."""
    try:
        return SPECS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}") from None


def rank(precision: str) -> int:
    """Sort key: lower stores fewer bits (int4 < int8 < fp16 < fp32)."""
    return spec(precision).rank


def lowest(*precisions: str) -> str:
    """The precision of lowest rank among `precisions` (what a weight asked for twice gets)."""
    return min(precisions, key=rank)
