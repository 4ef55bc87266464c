"""The Kokoro graphs an edge runtime runs, as torch modules over a `KokoroNet`.

- ``encoder``: tokens (with Kokoro's 0 pads) + style + speed → rounded durations per token and the two
  per-token feature sequences the decoder expands. Quantization can flip a rounded duration, so validate
  compares durations on their own and teacher-forces the reference's into the decoder.
- ``decoder``: per-token features + durations + style + the harmonic source's noise → audio. The frame
  count comes from the noise input's *shape*, not from the durations' values, so its output shape
  follows from its input shapes and Core ML can take it. The noise is [1, frames, 600 × 9] (each
  frame's 600 samples × 9 harmonics, the [1, samples, 9] draw reshaped): its variable axis is the
  frame count, which Core ML bounds like every family's "frames" axis.
- ``tts``: the one-graph form with the published kokoro-onnx interface (``tokens``, ``style``,
  ``speed`` → ``audio``), which kokoro-onnx and sherpa-onnx load; like the published file it has no
  source noise.

Batch size 1 throughout, as the published graph; the style vector is [1, 256]: the decoder's 128 values
first, the prosody predictor's 128 after (KModel's `ref_s[:, :128]` / `ref_s[:, 128:]`).
"""

from __future__ import annotations

import torch
from torch import nn

from voxport.families.kokoro.modules import KokoroNet

#: harmonics of the source (SineGen's harmonic_num + 1): the noise input's last axis
HARMONICS = 9


def _features(
    model: KokoroNet, tokens: torch.Tensor, style: torch.Tensor, speed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s = style[:, model.style_dim :]
    hidden = model.bert(tokens).last_hidden_state
    d = model.predictor.text_encoder(model.bert_encoder(hidden).transpose(1, 2), s)
    durations = torch.round(model.predictor.durations(d, speed)).clamp(min=1)
    return durations, d, model.text_encoder(tokens)


def _alignment(durations: torch.Tensor, frames: int | torch.Tensor) -> torch.Tensor:
    """[1, T] durations → [1, T, frames] one-hot alignment (token t covers its frames).

    A matmul with it copies features exactly (x·1 plus zeros), as KModel's `pred_aln_trg` does.
    `frames` is a 0-d tensor while tracing (torch takes it; its stubs list numbers only)."""
    end = torch.cumsum(durations, dim=1)
    start = end - durations
    f = torch.arange(frames).to(durations.dtype)[None, None, :]  # type: ignore[arg-type]
    return ((f >= start[:, :, None]) & (f < end[:, :, None])).to(torch.float32)


def _decode(
    model: KokoroNet,
    d: torch.Tensor,
    t_en: torch.Tensor,
    aln: torch.Tensor,
    style: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    s = style[:, model.style_dim :]
    en = d.transpose(1, 2) @ aln
    f0, n = model.predictor.f0_n(en, s)
    asr = t_en @ aln
    return model.decoder(asr, f0, n, style[:, : model.style_dim], noise)


class EncoderGraph(nn.Module):
    def __init__(self, model: KokoroNet) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, style: torch.Tensor, speed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _features(self.model, tokens, style, speed)


class DecoderGraph(nn.Module):
    def __init__(self, model: KokoroNet) -> None:
        super().__init__()
        self.model = model
        self.samples_per_frame = model.decoder.generator.upsample_scale * 2

    def forward(
        self,
        d: torch.Tensor,
        t_en: torch.Tensor,
        durations: torch.Tensor,
        style: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        frames = noise.shape[1]
        samples = noise.reshape(noise.shape[0], -1, HARMONICS)
        return _decode(self.model, d, t_en, _alignment(durations, frames), style, samples)


class TtsGraph(nn.Module):
    """kokoro-onnx's interface; no source noise (the published export has none either)."""

    def __init__(self, model: KokoroNet) -> None:
        super().__init__()
        self.model = model
        self.samples_per_frame = model.decoder.generator.upsample_scale * 2

    def forward(self, tokens: torch.Tensor, style: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
        durations, d, t_en = _features(self.model, tokens, style, speed)
        frames = durations.sum().to(torch.int64)
        aln = _alignment(durations, frames)
        noise = torch.zeros(1, frames * self.samples_per_frame, HARMONICS)  # type: ignore[call-overload]
        return _decode(self.model, d, t_en, aln, style, noise)[0]
