"""``rtn``: round to nearest with the absmax scale of each block, GGML's Q8_0 / Q4_0 arithmetic.

With block 32 at int4 this is GGUF ``Q4_0`` exactly, except that gguf-py picks codes with the unrounded
scale while rtn rounds the scale to float16 first (about one element in 2,000 differs by one code)."""

from __future__ import annotations

import numpy as np

from voxport.quantize.methods.base import QuantMethod
from voxport.quantize.methods.blocks import Blocks, absmax_scale, encode, stored_scale
from voxport.quantize.precisions import PrecisionSpec
from voxport.quantize.tensor import QuantizedTensor


class Rtn(QuantMethod, name="rtn"):
    """Round to nearest: the scale maps each block's largest magnitude to the end of the code range."""

    def quantize_weight(
        self, name: str, weight: np.ndarray, spec: PrecisionSpec, block_size: int
    ) -> QuantizedTensor:
        blocks = Blocks.of(weight, spec, block_size)
        scale = stored_scale(absmax_scale(blocks.values, spec.bits), spec)
        return blocks.pack(encode(blocks.values, scale, spec.bits), scale, self.name)
