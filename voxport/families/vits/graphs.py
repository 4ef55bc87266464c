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

The split graphs assume batch size 1, the edge case; noise enters as an input wherever parity needs
it. ``tts`` keeps Piper's dynamic batch: items of different lengths are padded, ``input_lengths`` masks
the text encoder's attention, the duration predictor and the flow per item, and ``output`` is
[batch, 1, 1, longest]. As in Piper's own graph, HiFi-GAN (no mask) sees the padded frames as zeros,
so a shorter item's last samples differ from its batch-1 audio within the vocoder's receptive field;
equal-length items match batch 1 to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.vits.modeling_vits import VitsConvFlow, VitsElementwiseAffine, VitsModel

from voxport.families.vits.spline import rational_quadratic_spline
from voxport.families.vits.streaming import Upsample, WindowSpec, conv_reach


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


def _key_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B,1,T] 1/0 padding mask → [B,1,1,T] additive attention bias (0 on tokens, -1e9 on padding).

    transformers passes a prepared 4-D mask through unchanged; it is built here so that the trace has
    no data-dependent "all ones, skip the mask" branch. Adding 0 leaves unpadded scores bit-identical."""
    return ((mask - 1.0) * 1e9)[:, :, None, :]


def encode(
    model: VitsModel,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    noise_w: torch.Tensor,
    length_scale: torch.Tensor,
    sid: torch.Tensor | None,
    mask_attention: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [B,T], mask [B,1,T] → durations [B,T], prior means and log-scales [B,C,T].

    `mask_attention`: keep padded keys out of the text encoder's attention (a padded batch); off,
    every key is attended, which is the same for an unpadded item."""
    g = _speaker(model, sid)
    out = model.text_encoder(
        input_ids=input_ids,
        padding_mask=mask.transpose(1, 2),
        attention_mask=_key_mask(mask) if mask_attention else None,
        return_dict=True,
    )
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
    frame_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Expand the prior by the durations onto `noise`'s frame count, then flow + vocoder.

    The frame count comes from the noise input rather than from the durations' values, which keeps
    output shapes free of data-dependent computation (and lets validate force durations).
    `frame_lengths` [B]: each item's frame count in a padded batch (None: every frame is valid); the
    flow is masked per item, as in Piper's graph, so padding does not leak into an item's frames."""
    g = _speaker(model, sid)
    frames = torch.arange(noise.shape[2], device=noise.device).to(durations.dtype)
    ends = torch.cumsum(durations, dim=-1)
    starts = ends - durations
    path = (frames[None, None, :] < ends[:, :, None]) & (frames[None, None, :] >= starts[:, :, None])
    path = path.to(m_p.dtype)  # [B, T, F]
    m = torch.matmul(m_p, path)
    logs = torch.matmul(logs_p, path)
    z_p = m + noise * torch.exp(logs)
    if frame_lengths is None:
        frame_mask = torch.ones_like(noise[:, :1, :])
    else:
        frame_mask = (frames[None, :] < frame_lengths[:, None]).to(noise.dtype)[:, None, :]
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
    """Piper's one-graph interface: scales = [noise_scale, length_scale, noise_scale_w].

    input [B, T] int64 (padded), input_lengths [B], sid [B] or [1] → output [B, 1, 1, frames * hop]
    where frames is the longest item's (each item's own count is the sum of its durations)."""

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
        durations, m_p, logs_p = encode(
            self.model, input, mask, noise_w, scales[1:2], sid, mask_attention=True
        )
        lengths = torch.clamp(durations.sum(dim=1), min=1)  # [B] frames per item
        total = lengths.max().to(torch.int64)
        frames = torch.arange(total, device=input.device)
        noise = torch.randn_like(m_p[:, :, :1] * frames[None, None, :].to(m_p.dtype)) * scales[0]
        audio = decode(self.model, m_p, logs_p, durations, noise, sid, frame_lengths=lengths)
        return audio[:, None, None, :]


def _chain_reach(module: nn.Module) -> tuple[int, int]:
    """Reach of a module whose convolutions run one after another (residual adds widen nothing):
    the sum of its stride-1 convolutions' reaches."""
    left = right = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv1d):
            if conv.stride[0] != 1 or isinstance(conv.padding, str):
                raise ValueError(
                    f"{type(module).__name__}: a strided or 'same'-padded conv cannot be windowed"
                )
            lo, hi = conv_reach(conv.kernel_size[0], conv.dilation[0], int(conv.padding[0]))
            left, right = left + lo, right + hi
    return left, right


def window_spec(model: VitsModel) -> WindowSpec:
    """The reach of each stage of `model`'s flow and HiFi-GAN, read off its modules (streaming.py)."""
    decoder = model.decoder
    kernels = decoder.num_kernels
    stages = []
    for i, up in enumerate(decoder.upsampler):
        stride, kernel, padding = up.stride[0], up.kernel_size[0], int(up.padding[0])
        if kernel - 2 * padding != stride or up.output_padding[0] != 0 or up.dilation[0] != 1:
            raise ValueError(
                f"upsampler {i}: kernel {kernel}, stride {stride}, padding {padding} cannot be windowed"
            )
        reaches = [_chain_reach(block) for block in decoder.resblocks[i * kernels : (i + 1) * kernels]]
        stages.append(
            Upsample(stride, kernel, padding, max(r[0] for r in reaches), max(r[1] for r in reaches))
        )
    flow_left, flow_right = _chain_reach(model.flow)
    pre_left, pre_right = _chain_reach(decoder.conv_pre)
    post_left, post_right = _chain_reach(decoder.conv_post)
    return WindowSpec(flow_left, flow_right, pre_left, pre_right, tuple(stages), post_left, post_right)


def _keep(hidden: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """hidden[:, :, crop[0]:crop[1]] with the bounds as tensor values, so the exported graph takes them
    as inputs (a Python slice would bake the traced numbers in)."""
    return hidden.index_select(2, torch.arange(crop[0], crop[1], device=hidden.device))


class FlowWindowGraph(nn.Module):
    """The reverse flow over a window of z_p frames, cropped to the frames it computes exactly.

    z_p [1, C, W], crop [2] int64 (streaming.flow_plan) → z [1, C, kept frames]."""

    def __init__(self, model: VitsModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, z_p: torch.Tensor, crop: torch.Tensor, sid: torch.Tensor | None = None) -> torch.Tensor:
        g = _speaker(self.model, sid)
        z = self.model.flow(z_p, torch.ones_like(z_p[:, :1, :]), g, reverse=True)
        return _keep(z, crop)


class VocoderWindowGraph(nn.Module):
    """HiFi-GAN over a window of z frames, cropped after every stage (streaming.vocoder_plan).

    z [1, C, W], crops [K, 2] int64 (K = WindowSpec.crop_count) → waveform [1, samples]. With the whole
    utterance as the window and nothing cropped it computes what DecoderGraph's vocoder does; a chunk's
    window gives that chunk's samples."""

    def __init__(self, model: VitsModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, crops: torch.Tensor, sid: torch.Tensor | None = None) -> torch.Tensor:
        decoder = self.model.decoder
        g = _speaker(self.model, sid)
        hidden = decoder.conv_pre(z)
        if g is not None:
            hidden = hidden + decoder.cond(g)
        hidden = _keep(hidden, crops[0])
        slope, kernels = decoder.config.leaky_relu_slope, decoder.num_kernels
        for i, up in enumerate(decoder.upsampler):
            hidden = _keep(up(nn.functional.leaky_relu(hidden, slope)), crops[1 + 2 * i])
            state = decoder.resblocks[i * kernels](hidden)
            for j in range(1, kernels):
                state += decoder.resblocks[i * kernels + j](hidden)
            hidden = _keep(state / kernels, crops[2 + 2 * i])
        # transformers' HiFi-GAN uses leaky_relu's default slope here, not the config's
        waveform = torch.tanh(decoder.conv_post(nn.functional.leaky_relu(hidden)))
        return _keep(waveform, crops[-1])[:, 0]
