"""Pocket TTS as plain torch modules whose parameter names are Kyutai's release names.

Kyutai's own classes stream by mutating state in place (`complete_kv` slice-assigns into a NaN cache,
convolutions overwrite `state["previous"]`) and branch on tensor values, none of which traces into a
graph. transformers' classes cannot hold the 2M/7M/18M backbones (low-rank text table, `z_proj`,
pointwise head). So voxport has its own modules: the module tree mirrors Kyutai's, so a release
`model.safetensors` loads with `strict=True`, and every computation that an exported graph runs is
a pure function here (state in, state out) in `functional.py`'s style: see the `*_step` functions.
Numerics follow Kyutai's code literally (interleaved-pair RoPE, unbiased-variance RMSNorm, written-out
LayerNorm in the flow head) so that the torch reference matches Kyutai's synthesis to round-off.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from voxport.families.pocket_tts.config import PocketConfig, Seanet

# --- shared pieces ---------------------------------------------------------------------------------


def rope_table(
    positions: torch.Tensor, head_dim: int, max_period: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, 1, head_dim) of the RoPE angles at `positions` (T,), each angle twice (one per
    element of its pair), computed once per call and shared by every layer's q and k: an exported
    graph then has one Cos and one Sin instead of two per layer and per q/k (same values)."""
    ds = torch.arange(head_dim // 2, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(max_period) * 2 / head_dim))
    freqs = torch.stack([freqs, freqs], dim=-1).reshape(head_dim)
    angles = freqs * positions.view(-1, 1, 1)
    return torch.cos(angles), torch.sin(angles)


@functools.cache
def _pair_swap(head_dim: int) -> torch.Tensor:
    """(D, D) matrix taking interleaved pairs (x0, x1), ... to (−x1, x0), ...: one output element per
    column, so `x @ swap` is exact (one ±1 product plus zeros)."""
    swap = np.zeros((head_dim, head_dim), np.float32)
    even = np.arange(0, head_dim, 2)
    swap[even + 1, even] = -1.0
    swap[even, even + 1] = 1.0
    return torch.from_numpy(swap)  # built outside torch, so a trace records one constant


def rope(x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3), ... of `x` (B, T, H, D) by `rope_table`'s angles.

    Kyutai's convention (transformers' rotate-half needs q/k rows permuted per head, see layouts.py),
    written as x·cos + swap(x)·sin with the pair swap a constant matmul, so a graph runs 4 nodes per
    rotation instead of a reshape/gather/stack chain. Bit-identical to Kyutai's pairwise form:
    a·c − b·s = a·c + (−b)·s and b·c + a·s = a·s + b·c exactly in IEEE arithmetic."""
    cos, sin = table
    return x * cos + (x @ _pair_swap(x.shape[-1])) * sin


class LayerScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), 0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class Attention(nn.Module):
    """Fused q|k|v projection (GQA when kv heads < heads), as Kyutai stores it."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.in_proj = nn.Linear(d_model, (num_heads + 2 * num_kv_heads) * head_dim, bias=False)
        self.out_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)


class TransformerLayer(nn.Module):
    def __init__(
        self, d_model: int, heads: int, kv_heads: int, head_dim: int, ffn: int, layer_scale: bool
    ) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, heads, kv_heads, head_dim)
        self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
        self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
        self.linear1 = nn.Linear(d_model, ffn, bias=False)
        self.linear2 = nn.Linear(ffn, d_model, bias=False)
        self.layer_scale_1: nn.Module = LayerScale(d_model) if layer_scale else nn.Identity()
        self.layer_scale_2: nn.Module = LayerScale(d_model) if layer_scale else nn.Identity()


class Transformer(nn.Module):
    def __init__(
        self,
        d_model: int,
        layers: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        ffn: int,
        *,
        max_period: float,
        context: int | None,
        layer_scale: bool,
    ) -> None:
        super().__init__()
        self.max_period, self.context = max_period, context
        self.layers = nn.ModuleList(
            [TransformerLayer(d_model, heads, kv_heads, head_dim, ffn, layer_scale) for _ in range(layers)]
        )


def layer_qkv(
    layer: TransformerLayer, x: torch.Tensor, table: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The new positions' rotated queries (1, H, S, hd) and keys, and values (1, Hkv, S, hd).

    Every Pocket TTS graph runs one utterance: batch 1 (the shapes below rely on it)."""
    attn = layer.self_attn
    h, hkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    # one Split and constant target shapes (batch 1, -1 for the sequence): the exported graph does no
    # Shape/Gather/Concat arithmetic per layer, and no sequence length is baked into it
    q, k, v = attn.in_proj(layer.norm1(x)).split([h * hd, hkv * hd, hkv * hd], dim=-1)
    q = rope(q.reshape(1, -1, h, hd), table).transpose(1, 2)
    k = rope(k.reshape(1, -1, hkv, hd), table).transpose(1, 2)
    return q, k, v.reshape(1, -1, hkv, hd).transpose(1, 2)


def layer_attend(
    layer: TransformerLayer,
    x: torch.Tensor,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Attention of `q` over `keys`/`values` (B, Hkv, K, hd) with the additive `mask` (S, K), then
    the residual, the FFN and its residual: the layer's output."""
    attn = layer.self_attn
    h, hkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    k_all, v_all = keys, values
    if hkv != h:
        k_all = keys.repeat_interleave(h // hkv, dim=1)
        v_all = values.repeat_interleave(h // hkv, dim=1)
    weights = torch.softmax(q @ k_all.transpose(2, 3) * (1.0 / math.sqrt(hd)) + mask, dim=-1)
    update = attn.out_proj((weights @ v_all).transpose(1, 2).reshape(1, -1, h * hd))
    x = x + layer.layer_scale_1(update)
    return x + layer.layer_scale_2(layer.linear2(F.gelu(layer.linear1(layer.norm2(x)), approximate="tanh")))


def layer_step(
    layer: TransformerLayer,
    x: torch.Tensor,
    table: tuple[torch.Tensor, torch.Tensor],
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pre-norm layer over new positions `x` (B, S, D) with an explicit past (B, Hkv, P, hd).

    `table` is `rope_table` of the new positions; `mask` (S, P+S) is additive (0 / -inf). Returns the
    output and the concatenated keys/values."""
    q, k, v = layer_qkv(layer, x, table)
    keys = torch.cat([past_k, k], dim=2)
    values = torch.cat([past_v, v], dim=2)
    return layer_attend(layer, x, q, keys, values, mask), keys, values


# --- flow LM (backbone + flow head) ----------------------------------------------------------------


class LUTConditioner(nn.Module):
    def __init__(self, n_bins: int, dim: int, rank: int | None) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_bins + 1, rank or dim)
        self.proj = nn.Linear(rank, dim, bias=False) if rank else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        return x if self.proj is None else self.proj(x)


class RMSNorm(nn.Module):
    """Kyutai's timestep norm: unbiased variance, no centring."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = 1e-5 + x.var(dim=-1, keepdim=True)
        return x * (self.alpha * torch.rsqrt(var))


class FlowLayerNorm(nn.Module):
    """Written-out LayerNorm (eps 1e-6) as the flow head computes it."""

    def __init__(self, channels: int, affine: bool = True) -> None:
        super().__init__()
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-6)
        return x * self.weight + self.bias if self.affine else x


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, frequencies: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden), RMSNorm(hidden)
        )
        half = frequencies // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000) * torch.arange(half) / half))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t * self.freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_ln = FlowLayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.norm_final = FlowLayerNorm(channels, affine=False)
        self.linear = nn.Linear(channels, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class FlowNet(nn.Module):
    """The MLP flow head: LSD (two time conditions), drifting or pointwise (none)."""

    def __init__(self, latent: int, channels: int, cond: int, depth: int, time_conds: int) -> None:
        super().__init__()
        self.time_embed = nn.ModuleList([TimestepEmbedder(channels) for _ in range(time_conds)])
        self.cond_embed = nn.Linear(cond, channels)
        self.input_proj = nn.Linear(latent, channels)
        self.res_blocks = nn.ModuleList([ResBlock(channels) for _ in range(depth)])
        self.final_layer = FinalLayer(channels, latent)

    def forward(self, c: torch.Tensor, times: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        y = self.cond_embed(c)
        if len(self.time_embed):
            y = y + sum(emb(t) for emb, t in zip(self.time_embed, times, strict=True)) / len(self.time_embed)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)


def sample_latent(
    flow_net: FlowNet, flow_type: str, condition: torch.Tensor, noise: torch.Tensor, steps: int
):
    """Kyutai's decoders: LSD Euler steps from the noise, drifting f(noise), pointwise noise + f(noise)."""
    if flow_type == "lsd":
        x = noise
        ones = torch.ones_like(noise[..., :1])
        for i in range(steps):
            x = x + flow_net(condition, [ones * (i / steps), ones * ((i + 1) / steps)], x) / steps
        return x
    if flow_type == "drifting":
        return flow_net(condition, [], noise)
    return noise + flow_net(condition, [], noise)


class FlowLM(nn.Module):
    """Kyutai's `FlowLMModel` weights: text table, transformer, heads, latent statistics."""

    def __init__(self, cfg: PocketConfig) -> None:
        super().__init__()
        d, lat = cfg.d_model, cfg.latent_dim
        self.conditioner = LUTConditioner(cfg.n_bins, d, cfg.lut_rank)
        self.flow_net = FlowNet(
            lat, cfg.flow_dim, cfg.condition_dim, cfg.flow_depth, 2 if cfg.flow_type == "lsd" else 0
        )
        self.register_buffer("emb_std", torch.ones(lat))
        self.register_buffer("emb_mean", torch.zeros(lat))
        self.bos_emb = nn.Parameter(torch.zeros(lat))
        if cfg.insert_bos_before_voice:
            self.bos_before_voice = nn.Parameter(torch.zeros(1, 1, d))
        self.speaker_proj_weight = nn.Parameter(torch.zeros(d, lat))
        self.input_linear = nn.Linear(lat, d, bias=False)
        self.transformer = Transformer(
            d,
            cfg.num_layers,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.ffn_dim,
            max_period=cfg.max_period,
            context=None,
            layer_scale=False,
        )
        self.out_norm = nn.LayerNorm(d, eps=1e-5)
        self.z_proj = nn.Linear(d, cfg.z_dim, bias=False) if cfg.z_dim else None
        self.out_eos = nn.Linear(cfg.condition_dim, 1)


# --- Mimi codec ------------------------------------------------------------------------------------


class Conv(nn.Module):
    """Kyutai's `StreamingConv1d` weights (`.conv`): causal, left context carried between calls."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride, dilation=dilation, bias=bias)

    @property
    def context(self) -> int:
        """Input samples a call must remember for the next one (effective kernel − stride)."""
        c = self.conv
        return (c.kernel_size[0] - 1) * c.dilation[0] + 1 - c.stride[0]


class ConvTr(nn.Module):
    """Kyutai's `StreamingConvTranspose1d` weights (`.convtr`): the overlap tail is carried."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int = 1, bias: bool = True):
        super().__init__()
        self.convtr = nn.ConvTranspose1d(cin, cout, k, stride, groups=groups, bias=bias)

    @property
    def context(self) -> int:
        return self.convtr.kernel_size[0] - self.convtr.stride[0]


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, dilation: int, compress: int) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList(
            [nn.ELU(), Conv(dim, hidden, kernel, dilation=dilation), nn.ELU(), Conv(hidden, dim, 1)]
        )


def _seanet_decoder(s: Seanet) -> nn.ModuleList:
    mult = 2 ** len(s.ratios)
    model: list[nn.Module] = [Conv(s.dimension, mult * s.n_filters, s.kernel_size)]
    for ratio in s.ratios:
        model += [nn.ELU(), ConvTr(mult * s.n_filters, mult * s.n_filters // 2, 2 * ratio, ratio)]
        model += [
            ResnetBlock(mult * s.n_filters // 2, s.residual_kernel_size, s.dilation_base**j, s.compress)
            for j in range(s.n_residual_layers)
        ]
        mult //= 2
    model += [nn.ELU(), Conv(s.n_filters, 1, s.last_kernel_size)]
    return nn.ModuleList(model)


def _seanet_encoder(s: Seanet) -> nn.ModuleList:
    mult = 1
    model: list[nn.Module] = [Conv(1, s.n_filters, s.kernel_size)]
    for ratio in reversed(s.ratios):
        model += [
            ResnetBlock(mult * s.n_filters, s.residual_kernel_size, s.dilation_base**j, s.compress)
            for j in range(s.n_residual_layers)
        ]
        model += [nn.ELU(), Conv(mult * s.n_filters, mult * s.n_filters * 2, 2 * ratio, stride=ratio)]
        mult *= 2
    model += [nn.ELU(), Conv(mult * s.n_filters, s.dimension, s.last_kernel_size)]
    return nn.ModuleList(model)


class _Seanet(nn.Module):
    def __init__(self, model: nn.ModuleList) -> None:
        super().__init__()
        self.model = model


class _Projected(nn.Module):
    """`ProjectedTransformer` without projections (no release has them)."""

    def __init__(self, transformer: Transformer) -> None:
        super().__init__()
        self.transformer = transformer


class _Quantizer(nn.Module):
    def __init__(self, latent: int, outer: int) -> None:
        super().__init__()
        self.output_proj = nn.Conv1d(latent, outer, 1, bias=False)


class _Upsample(nn.Module):
    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.convtr = ConvTr(dim, dim, 2 * stride, stride, groups=dim, bias=False)


class _Downsample(nn.Module):
    def __init__(self, dim: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv = Conv(dim, out, 2 * stride, stride=stride, bias=False)


def _codec_transformer(t, *, layer_scale: bool = True) -> Transformer:  # noqa: ANN001
    return Transformer(
        t.d_model,
        t.num_layers,
        t.num_heads,
        t.num_heads,
        t.head_dim,
        t.dim_feedforward,
        max_period=t.max_period,
        context=t.context,
        layer_scale=layer_scale,
    )


class Mimi(nn.Module):
    """Kyutai's `MimiModel` weights. The encoder side exists only when the checkpoint has it (voice
    cloning); text-to-speech needs the decoder side alone."""

    def __init__(self, cfg: PocketConfig, *, with_encoder: bool) -> None:
        super().__init__()
        self.quantizer = _Quantizer(cfg.latent_dim, cfg.outer_dim)
        self.upsample = _Upsample(cfg.outer_dim, cfg.codec_steps)
        self.decoder_transformer = _Projected(_codec_transformer(cfg.decoder_transformer))
        self.decoder = _Seanet(_seanet_decoder(cfg.decoder_seanet))
        self.has_encoder = with_encoder
        if with_encoder:
            self.encoder = _Seanet(_seanet_encoder(cfg.encoder_seanet))
            self.encoder_transformer = _Projected(_codec_transformer(cfg.encoder_transformer))
            self.downsample = _Downsample(cfg.encoder_seanet.dimension, cfg.inner_dim, cfg.codec_steps)


class PocketModules(nn.Module):
    """The whole checkpoint: `flow_lm.*` and `mimi.*`, Kyutai's release names."""

    def __init__(self, cfg: PocketConfig, *, with_encoder: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.flow_lm = FlowLM(cfg)
        self.mimi = Mimi(cfg, with_encoder=with_encoder)


# --- the computations the graphs run ------------------------------------------------------------------


def causal_mask(position: torch.Tensor, new: int, total: int) -> torch.Tensor:
    """Additive (new, total) mask: query i (absolute position + i) sees every key up to itself."""
    q = position.to(torch.float32) + torch.arange(new, dtype=torch.float32)
    k = torch.arange(total, dtype=torch.float32)
    return torch.where(k[None, :] <= q[:, None], 0.0, float("-inf"))


def backbone_step(
    flow_lm: FlowLM,
    embeds: torch.Tensor,
    position: torch.Tensor,
    past: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The flow LM over `embeds` (1, S, D) after `position` cached positions: (hidden, eos, present)."""
    t = flow_lm.transformer
    s = embeds.shape[1]
    positions = position.to(torch.float32) + torch.arange(s, dtype=torch.float32)
    mask = causal_mask(position, s, past[0][0].shape[2] + s)
    table = rope_table(positions, t.layers[0].self_attn.head_dim, t.max_period)
    x, present = embeds, []
    for layer, (pk, pv) in zip(t.layers, past, strict=True):
        x, k, v = layer_step(layer, x, table, pk, pv, mask)
        present.append((k, v))
    return (*output_heads(flow_lm, x), present)


def output_heads(flow_lm: FlowLM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformer's output → (the condition the flow head reads, the end-of-speech logit)."""
    hidden = flow_lm.out_norm(x)
    if flow_lm.z_proj is not None:
        hidden = flow_lm.z_proj(hidden)
    return hidden, flow_lm.out_eos(hidden)


def streaming_conv(conv: Conv, x: torch.Tensor, previous: torch.Tensor | None):
    """Causal conv with the carried left context; returns the output and the next context."""
    c = conv.conv
    if previous is not None:
        x = torch.cat([previous, x], dim=-1)
        previous = x[..., x.shape[-1] - previous.shape[-1] :]
    y = F.conv1d(x, c.weight, c.bias, stride=c.stride[0], dilation=c.dilation[0], groups=c.groups)
    return y, previous


def streaming_convtr(convtr: ConvTr, x: torch.Tensor, partial: torch.Tensor):
    """Transposed conv whose overlapping tail is added to the next call's head (Kyutai's `partial`)."""
    c = convtr.convtr
    y = F.conv_transpose1d(x, c.weight, c.bias, stride=c.stride[0], groups=c.groups)
    n = partial.shape[-1]
    head = y[..., :n] + partial
    tail = y[..., y.shape[-1] - n :]
    if c.bias is not None:
        tail = tail - c.bias[:, None]
    return torch.cat([head, y[..., n : y.shape[-1] - n]], dim=-1), tail


def codec_state_shapes(mimi: Mimi) -> dict[str, tuple[int, ...]]:
    """The streaming decoder's whole state: fixed shapes, so Core ML and ONNX see static tensors."""
    shapes: dict[str, tuple[int, ...]] = {}
    up = mimi.upsample.convtr
    shapes["upsample"] = (1, up.convtr.out_channels, up.context)
    t = mimi.decoder_transformer.transformer
    window = t.context - 1
    for i, layer in enumerate(t.layers):
        a = layer.self_attn
        shapes[f"attn{i}_k"] = (1, a.num_kv_heads, window, a.head_dim)
        shapes[f"attn{i}_v"] = (1, a.num_kv_heads, window, a.head_dim)
    for name, module in _stateful_convs(mimi):
        if isinstance(module, ConvTr):
            shapes[name] = (1, module.convtr.out_channels, module.context)
        elif module.context > 0:
            shapes[name] = (1, module.conv.in_channels, module.context)
    return shapes


def _stateful_convs(mimi: Mimi) -> list[tuple[str, Conv | ConvTr]]:
    out: list[tuple[str, Conv | ConvTr]] = []
    for i, layer in enumerate(mimi.decoder.model):
        if isinstance(layer, (Conv, ConvTr)):
            out.append((f"seanet{i}", layer))
        elif isinstance(layer, ResnetBlock):
            out += [(f"seanet{i}_{j}", m) for j, m in enumerate(layer.block) if isinstance(m, Conv)]
    return out


def codec_step(
    mimi: Mimi,
    emb_std: torch.Tensor,
    emb_mean: torch.Tensor,
    latent: torch.Tensor,
    position: torch.Tensor,
    state: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decode one normalized latent frame (1, 1, 32) into `frame_size` samples, carrying the state.

    `position` counts codec transformer steps already decoded (frames × 16). The attention keeps a
    sliding window of `context − 1` past keys; slots before the start are masked by position."""
    new: dict[str, torch.Tensor] = {}
    x = mimi.quantizer.output_proj((latent * emb_std + emb_mean).transpose(1, 2))
    x, new["upsample"] = streaming_convtr(mimi.upsample.convtr, x, state["upsample"])
    t = mimi.decoder_transformer.transformer
    window, s = t.context - 1, x.shape[-1]
    q = position.to(torch.float32) + torch.arange(s, dtype=torch.float32)
    k = position.to(torch.float32) - window + torch.arange(window + s, dtype=torch.float32)
    delta = q[:, None] - k[None, :]
    valid = (k[None, :] >= 0) & (delta >= 0) & (delta < t.context)
    mask = torch.where(valid, 0.0, float("-inf"))
    h = x.transpose(1, 2)
    table = rope_table(q, t.layers[0].self_attn.head_dim, t.max_period)
    for i, layer in enumerate(t.layers):
        h, keys, values = layer_step(layer, h, table, state[f"attn{i}_k"], state[f"attn{i}_v"], mask)
        new[f"attn{i}_k"] = keys[:, :, keys.shape[2] - window :]
        new[f"attn{i}_v"] = values[:, :, values.shape[2] - window :]
    x = h.transpose(1, 2)
    for i, layer in enumerate(mimi.decoder.model):
        if isinstance(layer, ConvTr):
            x, new[f"seanet{i}"] = streaming_convtr(layer, x, state[f"seanet{i}"])
        elif isinstance(layer, Conv):
            x, nxt = streaming_conv(layer, x, state.get(f"seanet{i}"))
            if nxt is not None:
                new[f"seanet{i}"] = nxt
        elif isinstance(layer, ResnetBlock):
            v = x
            for j, m in enumerate(layer.block):
                if isinstance(m, Conv):
                    v, nxt = streaming_conv(m, v, state.get(f"seanet{i}_{j}"))
                    if nxt is not None:
                        new[f"seanet{i}_{j}"] = nxt
                else:
                    v = m(v)
            x = x + v
        else:
            x = layer(x)
    return x, new


def encode_voice(mimi: Mimi, audio: torch.Tensor, frame_size: int) -> torch.Tensor:
    """Raw (unnormalized) voice latents (1, T, latent) of mono 24 kHz `audio` (samples,), one shot.

    Kyutai's `encode_to_latent`: right-pad to whole frames, causal SEANet encoder, windowed causal
    transformer, strided downsample whose left context replicates the first sample."""
    x = audio.reshape(1, 1, -1).to(torch.float32)
    x = F.pad(x, (0, (-x.shape[-1]) % frame_size))

    def conv(m: Conv, x: torch.Tensor, replicate: bool = False) -> torch.Tensor:
        if m.context:
            left = x[..., :1].expand(-1, -1, m.context) if replicate else x.new_zeros(*x.shape[:2], m.context)
            x = torch.cat([left, x], dim=-1)
        c = m.conv
        return F.conv1d(x, c.weight, c.bias, stride=c.stride[0], dilation=c.dilation[0])

    for layer in mimi.encoder.model:
        if isinstance(layer, Conv):
            x = conv(layer, x)
        elif isinstance(layer, ResnetBlock):
            v = x
            for m in layer.block:
                v = conv(m, v) if isinstance(m, Conv) else m(v)
            x = x + v
        else:
            x = layer(x)
    t = mimi.encoder_transformer.transformer
    h = x.transpose(1, 2)
    n = h.shape[1]
    pos = torch.arange(n, dtype=torch.float32)
    delta = pos[:, None] - pos[None, :]
    mask = torch.where((delta >= 0) & (delta < t.context), 0.0, float("-inf"))
    table = rope_table(pos, t.layers[0].self_attn.head_dim, t.max_period)
    for layer in t.layers:
        a = layer.self_attn
        empty = h.new_zeros(1, a.num_kv_heads, 0, a.head_dim)
        h, _, _ = layer_step(layer, h, table, empty, empty, mask)
    x = conv(mimi.downsample.conv, h.transpose(1, 2), replicate=True)
    return x.transpose(1, 2)
