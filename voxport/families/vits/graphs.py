"""The VITS graphs an edge runtime runs, as torch modules over a (weight-norm folded) VitsModel.

Two graphs for parity, one for users:

- ``encoder``: token ids + duration noise → integer durations and the prior's means and log-scales
  per token. Quantization flips rounded durations, so validate compares durations on their own.
- ``decoder``: durations + per-token prior + frame noise → waveform. Validate can feed it the
  reference durations, so exported and reference audio have the same length and can be compared
  sample by sample.
- ``tts``: the usual one-graph form with Piper's interface (``input``, ``input_lengths``,
  ``scales`` → ``output``), which Piper and sherpa-onnx load. It samples its own noise like Piper's
  export does; parity runs it with noise off.

All graphs assume batch size 1, the edge case; noise enters as an input wherever parity needs it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.vits.modeling_vits import VitsConvFlow, VitsElementwiseAffine, VitsModel

from voxport.families.vits.spline import rational_quadratic_spline


def _conv_flow_reverse(
    flow: VitsConvFlow, inputs: torch.Tensor, mask: torch.Tensor, conditioning: torch.Tensor
) -> torch.Tensor:
    first_half, second_half = torch.split(inputs, [flow.half_channels] * 2, dim=1)
    hidden = flow.conv_pre(first_half)
    hidden = flow.conv_dds(hidden, mask, conditioning)
    hidden = flow.conv_proj(hidden) * mask
    batch, channels, length = first_half.shape
    hidden = hidden.reshape(batch, channels, -1, length).permute(0, 1, 3, 2)
    scale = math.sqrt(flow.filter_channels)
    second_half = rational_quadratic_spline(
        second_half,
        hidden[..., : flow.num_bins] / scale,
        hidden[..., flow.num_bins : 2 * flow.num_bins] / scale,
        hidden[..., 2 * flow.num_bins :],
        reverse=True,
        tail_bound=flow.tail_bound,
    )
    return torch.cat([first_half, second_half], dim=1) * mask


def _speaker(model: VitsModel, sid: torch.Tensor | None) -> torch.Tensor | None:
    if sid is None or model.config.num_speakers <= 1:
        return None
    return model.embed_speaker(sid).unsqueeze(-1)


def encode(
    model: VitsModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    noise_w: torch.Tensor,
    length_scale: torch.Tensor,
    sid: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [1,T], mask [1,1,T] → durations [1,T], prior means and log-scales [1,C,T]."""
    g = _speaker(model, sid)
    out = model.text_encoder(input_ids=input_ids, padding_mask=mask.transpose(1, 2), return_dict=True)
    hidden = out.last_hidden_state.transpose(1, 2)
    m_p = out.prior_means.transpose(1, 2)
    logs_p = out.prior_log_variances.transpose(1, 2)

    dp = model.duration_predictor
    if model.config.use_stochastic_duration_prediction:
        x = dp.conv_pre(hidden)
        if g is not None:
            x = x + dp.cond(g)
        x = dp.conv_dds(x, mask)
        x = dp.conv_proj(x) * mask
        flows = list(reversed(dp.flows))
        flows = flows[:-2] + [flows[-1]]  # the first conv flow is unused at inference (as in VITS)
        latents = noise_w
        for flow in flows:
            latents = torch.flip(latents, [1])
            if isinstance(flow, VitsElementwiseAffine):
                latents = (latents - flow.translate) * torch.exp(-flow.log_scale) * mask
            else:
                latents = _conv_flow_reverse(flow, latents, mask, x)
        log_duration = latents[:, :1]
    else:
        log_duration = dp(hidden, mask, g)
    durations = torch.ceil(torch.exp(log_duration) * mask * length_scale)[:, 0]
    return durations, m_p, logs_p


def decode(
    model: VitsModel,
    m_p: torch.Tensor,
    logs_p: torch.Tensor,
    durations: torch.Tensor,
    noise: torch.Tensor,
    sid: torch.Tensor | None,
) -> torch.Tensor:
    """Expand the prior by the durations onto `noise`'s frame count, then flow + vocoder.

    The frame count comes from the noise input rather than from the durations' values, which keeps
    output shapes free of data-dependent computation (and lets validate force durations)."""
    g = _speaker(model, sid)
    frames = torch.arange(noise.shape[2], device=noise.device).to(durations.dtype)
    ends = torch.cumsum(durations, dim=-1)
    starts = ends - durations
    path = (frames[None, None, :] < ends[:, :, None]) & (frames[None, None, :] >= starts[:, :, None])
    path = path.to(m_p.dtype)  # [1, T, F]
    m = torch.matmul(m_p, path)
    logs = torch.matmul(logs_p, path)
    z_p = m + noise * torch.exp(logs)
    frame_mask = torch.ones_like(noise[:, :1, :])
    z = model.flow(z_p, frame_mask, g, reverse=True)
    return model.decoder(z * frame_mask, g)[:, 0]


class EncoderGraph(nn.Module):
    def __init__(self, model: VitsModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        noise_w: torch.Tensor,
        length_scale: torch.Tensor,
        sid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mask = torch.ones_like(input_ids[:, None, :], dtype=noise_w.dtype)
        return encode(self.model, input_ids, mask, noise_w, length_scale, sid)


class DecoderGraph(nn.Module):
    def __init__(self, model: VitsModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        m_p: torch.Tensor,
        logs_p: torch.Tensor,
        durations: torch.Tensor,
        noise: torch.Tensor,
        sid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return decode(self.model, m_p, logs_p, durations, noise, sid)


class PiperGraph(nn.Module):
    """Piper's one-graph interface: scales = [noise_scale, length_scale, noise_scale_w]."""

    def __init__(self, model: VitsModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input: torch.Tensor,  # noqa: A002 - Piper's input name
        input_lengths: torch.Tensor,
        scales: torch.Tensor,
        sid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        length = input.shape[1]
        positions = torch.arange(length, device=input.device)
        mask = (positions[None, :] < input_lengths[:, None]).to(torch.float32)[:, None, :]
        noise_w = torch.randn_like(mask.expand(-1, 2, -1)) * scales[2]
        durations, m_p, logs_p = encode(self.model, input, mask, noise_w, scales[1:2], sid)
        total = torch.clamp(durations.sum(), min=1).to(torch.int64)
        frames = torch.arange(total, device=input.device)
        noise = torch.randn_like(m_p[:, :, :1] * frames[None, None, :].to(m_p.dtype)) * scales[0]
        audio = decode(self.model, m_p, logs_p, durations, noise, sid)
        return audio[:, None, None, :]
