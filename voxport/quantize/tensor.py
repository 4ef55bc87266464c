"""The format-neutral quantized tensor that every exporter consumes.

A weight is quantized exactly once; ONNX, GGUF and CoreML each map the same codes and scales into
their own encoding, so that the dequantized weights are identical in every artifact.

Layout: the weight is viewed as 2-D, ``(shape[0], prod(shape[1:]))`` (rows = output channels for
Linear/Conv, input channels for ConvTranspose), and blocks run along the second axis of that view.
That is the row-major order GGUF uses for its blocks, and it is what an ONNX ``DequantizeLinear`` on a
2-D initializer followed by a ``Reshape`` reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes plus per-block scales (and offsets when asymmetric).

    codes:   int8 array of shape ``(rows, cols)`` holding signed values in
             ``[-2**(bits-1), 2**(bits-1) - 1]`` (int4 codes are stored one per int8).
    scales:  float32 array ``(rows, n_blocks)``; for int4 every value is exactly representable in
             float16, so a format that stores fp16 scales loses nothing.
    offsets: ``None`` for symmetric quantization, else float32 ``(rows, n_blocks)`` added after scaling
             (``w = codes * scale + offset``).
    bits:    4 or 8.
    block_size: number of consecutive elements along axis 1 sharing one scale; equal to ``cols``
             for per-channel quantization.
    shape:   the original weight shape.
    method:  how the scales were chosen (``rtn`` or ``mse``), for the manifest.
    """

    codes: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None
    bits: int
    block_size: int
    shape: tuple[int, ...]
    method: str = "rtn"

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def cols(self) -> int:
        return int(self.codes.shape[1])

    @property
    def n_blocks(self) -> int:
        return int(self.scales.shape[1])

    @property
    def symmetric(self) -> bool:
        return self.offsets is None

    def dequantize(self) -> np.ndarray:
        """float32 weights of the original shape: the exact values every artifact must reproduce."""
        scales = np.repeat(self.scales.astype(np.float32), self.block_size, axis=1)[:, : self.cols]
        out = self.codes.astype(np.float32) * scales
        if self.offsets is not None:
            out = out + np.repeat(self.offsets.astype(np.float32), self.block_size, axis=1)[:, : self.cols]
        return out.reshape(self.shape)

    def storage_bits(self, scale_bits: int = 16) -> int:
        """Bits needed to store codes and scales (and offsets) in a compact encoding."""
        per_block = scale_bits * (2 if self.offsets is not None else 1)
        return self.codes.size * self.bits + self.scales.size * per_block
