"""The GGML tensor types voxport writes, defined once: a recipe's `export.gguf.types` accepts exactly
these names, and the writer maps them to gguf-py's `GGMLQuantizationType`.

F32 … Q5_1 are encoded by gguf-py; the K-quants by voxport's own numpy encoders (kquants.py). The
names stay importable without gguf-py (reading a recipe must not load it): `ggml_type` imports it.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

GgmlType = Literal["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
GGML_TYPE_NAMES: tuple[GgmlType, ...] = get_args(GgmlType)
#: the 256-element super-block types, encoded by voxport.export.gguf.kquants
K_TYPES: tuple[GgmlType, ...] = ("Q4_K", "Q5_K", "Q6_K")


@cache
def ggml_types() -> dict[str, GGMLQuantizationType]:
    """Every name of `GgmlType` with its gguf-py type, in `GgmlType`'s order."""
    from gguf import GGMLQuantizationType

    return {name: GGMLQuantizationType[name] for name in GGML_TYPE_NAMES}
