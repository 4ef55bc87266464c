"""Voxtral TTS written for export: Mistral's consolidated tensor names, explicit state, no sampling inside.

Three parts, each checked against its public reference on the same random weights (tests):
- the backbone, a Mistral decoder (transformers' `MistralModel` after the usual Q/K permutation).
  RoPE is applied in the consolidated file's own convention, adjacent pairs rotated together
  (Mistral's complex-number form), so the Q/K weights are used exactly as stored: no permutation
  anywhere in voxport, and llama.cpp's `llama` architecture reads them as they are;
- the flow-matching acoustic head (sglang-omni's `FlowMatchingAudioTransformer`): the semantic
  code is the argmax of one Linear over the backbone state; the 36 acoustic values come from Euler
  steps over `linspace(0, 1, 8)` (7 steps) of a 3-token bidirectional transformer, with classifier-
  free guidance against a zeroed condition. The Gaussian start point is an input, so every runtime
  integrates from the same noise;
- the codec decoder (sglang-omni's `VoxtralTTSAudioTokenizer.decode`), one 80 ms frame per call: the
  causal convs keep their left context, the transposed convs their overlap tails, and each ALiBi
  sliding-window transformer layer its last `window` keys and values, all as explicit state. Whole-
  utterance decoding pads the first conv by replicating frame 0 and the output conv by reflecting the
  first steps; `position == 0` rebuilds those pads from the first frame, so frame-by-frame audio is
  the reference's whole-utterance audio up to float rounding.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from voxport.families.voxtral_tts.config import (
    END_AUDIO,
    NUM_AUDIO_SPECIAL,
    CodecConfig,
    HeadConfig,
    VoxtralConfig,
    codec_block_indices,
)

#: Euler steps of the flow head and the guidance weight, fixed in the reference implementation
DECODE_ITERS = 8
CFG_ALPHA = 1.2


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=bias)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        *,
        bias: bool = False,
        qk_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.wq = nn.Linear(dim, heads * head_dim, bias=bias)
        self.wk = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, kv_heads * head_dim, bias=bias)
        self.wo = nn.Linear(heads * head_dim, dim, bias=bias)
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(heads * head_dim, qk_norm_eps)
            self.k_norm = RMSNorm(kv_heads * head_dim, qk_norm_eps)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S, D) → q (B, H, S, hd), k and v (B, Hkv, S, hd)."""
        b, s = x.shape[0], x.shape[1]
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """Softmax attention written out (no SDPA: one form every converter maps), KV heads repeated
        to their query heads as transformers' `repeat_kv` does (head h reads KV head h // group)."""
        group = self.heads // self.kv_heads
        if group > 1:
            b, hkv, t, hd = k.shape
            k = k.unsqueeze(2).expand(b, hkv, group, t, hd).reshape(b, hkv * group, t, hd)
            v = v.unsqueeze(2).expand(b, hkv, group, t, hd).reshape(b, hkv * group, t, hd)
        scores = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-1, -2))
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        b, h, s, hd = out.shape
        return cast(torch.Tensor, self.wo(out.transpose(1, 2).reshape(b, s, h * hd)))


class Block(nn.Module):
    """A pre-norm transformer layer with the consolidated names (attention, feed_forward, the norms)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        eps: float,
        *,
        bias: bool = False,
        qk_norm_eps: float | None = None,
        layer_scale: bool = False,
    ) -> None:
        super().__init__()
        self.attention = Attention(dim, heads, kv_heads, head_dim, bias=bias, qk_norm_eps=qk_norm_eps)
        self.feed_forward = FeedForward(dim, hidden, bias=bias)
        self.attention_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)
        if layer_scale:
            self.attention_scale = nn.Parameter(torch.ones(dim))
            self.ffn_scale = nn.Parameter(torch.ones(dim))

    def ffn(self, h: torch.Tensor) -> torch.Tensor:
        r = self.feed_forward(self.ffn_norm(h))
        if hasattr(self, "ffn_scale"):
            r = r * self.ffn_scale
        return h + r

    def residual(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "attention_scale"):
            attended = attended * self.attention_scale
        return self.ffn(x + attended)


# --- backbone ------------------------------------------------------------------------------------------
def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (S, hd/2) of Mistral's rotary angles for absolute `positions` (S,) float."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = positions.reshape(-1, 1) * inv.reshape(1, -1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2j], x[2j+1]): Mistral's `view_as_complex` convention, in real ops."""
    b, h, s, hd = x.shape
    pairs = x.reshape(b, h, s, hd // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.reshape(b, h, s, hd)


class Backbone(nn.Module):
    """The decoder and its two input tables: text tokens, and the 37 audio codebooks summed per frame."""

    def __init__(self, cfg: VoxtralConfig) -> None:
        super().__init__()
        b = cfg.backbone
        self.cfg = b
        self.mm_audio_embeddings = nn.Module()
        self.mm_audio_embeddings.tok_embeddings = nn.Embedding(b.vocab_size, b.dim)
        codebooks = nn.Module()
        codebooks.embeddings = nn.Embedding(cfg.audio_embedding_rows, b.dim)
        self.mm_audio_embeddings.audio_codebook_embeddings = codebooks
        self.register_buffer(
            "codebook_offsets", torch.tensor(cfg.codebook_offsets, dtype=torch.int64), persistent=False
        )
        self.layers = nn.ModuleList(
            Block(b.dim, b.hidden_dim, b.n_heads, b.n_kv_heads, b.head_dim, b.norm_eps)
            for _ in range(b.n_layers)
        )
        self.norm = RMSNorm(b.dim, b.norm_eps)

    def blocks(self) -> list[Block]:
        return [cast(Block, m) for m in self.layers]

    @property
    def text_table(self) -> nn.Embedding:
        return cast(nn.Embedding, self.get_submodule("mm_audio_embeddings.tok_embeddings"))

    @property
    def codebook_table(self) -> nn.Embedding:
        return cast(
            nn.Embedding, self.get_submodule("mm_audio_embeddings.audio_codebook_embeddings.embeddings")
        )

    def embed_audio(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, S, 37) codes (special-token offset included, as the head emits them) → (B, S, D)."""
        offsets = cast(torch.Tensor, self.codebook_offsets)
        return self.codebook_table(codes + offsets).sum(dim=2)

    def forward(
        self,
        embeds: torch.Tensor,
        position: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """(1, S, D) embeddings at positions [position, position + S) over a growing cache →
        (final-norm hidden states, the caches with the new keys/values appended)."""
        s = embeds.shape[1]
        cached = past[0][0].shape[2]
        queries = torch.arange(s, dtype=torch.int64).reshape(-1, 1) + cached
        keys = torch.arange(cached + s, dtype=torch.int64).reshape(1, -1)
        mask = torch.where(keys <= queries, 0.0, float("-inf"))
        x, present, angles = embeds, [], self.rope(position, s)
        for layer, (pk, pv) in zip(self.blocks(), past, strict=True):
            x, k, v = self.layer_step(layer, x, angles, pk, pv, mask)
            present.append((torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)))
        return self.norm(x), present

    def rope(self, position: torch.Tensor, new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions [position, position + new)."""
        start = position.to(torch.float32).reshape(1)
        return rope_angles(
            start + torch.arange(new, dtype=torch.float32), self.cfg.head_dim, self.cfg.rope_theta
        )

    @staticmethod
    def layer_step(
        layer: Block,
        x: torch.Tensor,
        angles: tuple[torch.Tensor, torch.Tensor],
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder layer over [past | new] keys and values under an additive mask: (its output, the
        new positions' rotated keys and their values). Both cache forms (growing, fixed) run this."""
        cos, sin = angles
        q, k, v = layer.attention.qkv(layer.attention_norm(x))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        return layer.residual(x, layer.attention.attend(q, keys, values, mask)), k, v


# --- flow-matching head --------------------------------------------------------------------------------
def time_table(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's `TimeEmbedding` (cos | sin of t · 10000^(-i/half)) at each Euler step's t."""
    # on the CPU whatever the ambient device: `weightless` builds the modules under torch.device("meta"),
    # where factory functions disagreed (a CI worker got linspace on the CPU, arange on meta)
    half = dim // 2
    cpu = torch.device("cpu")
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=cpu) / half)
    steps = torch.linspace(0, 1, DECODE_ITERS, device=cpu)
    angles = steps.reshape(-1, 1) * inv_freq.reshape(1, -1)
    return torch.cat([angles.cos(), angles.sin()], dim=-1), steps


class AcousticHead(nn.Module):
    """`acoustic_transformer.*`: semantic argmax plus the guided Euler integration of 36 values."""

    def __init__(self, cfg: VoxtralConfig) -> None:
        super().__init__()
        h: HeadConfig = cfg.head
        self.cfg = h
        self.n_acoustic = cfg.n_acoustic
        self.levels = cfg.acoustic_levels
        self.semantic_size = cfg.semantic_codebook_size
        self.input_projection = nn.Linear(cfg.n_acoustic, h.dim, bias=False)
        self.time_projection = nn.Linear(h.dim, h.dim, bias=False)
        self.llm_projection = nn.Linear(h.input_dim, h.dim, bias=False)
        self.semantic_codebook_output = nn.Linear(h.dim, cfg.semantic_logits, bias=h.use_biases)
        self.acoustic_codebook_output = nn.Linear(h.dim, cfg.n_acoustic, bias=False)
        self.layers = nn.ModuleList(
            Block(h.dim, h.hidden_dim, h.n_heads, h.n_kv_heads, h.head_dim, h.norm_eps, bias=h.use_biases)
            for _ in range(h.n_layers)
        )
        self.norm = RMSNorm(h.dim, h.norm_eps)
        table, steps = time_table(h.dim)
        #: the sinusoidal embedding of each Euler step's time (constant: the steps are fixed)
        self.register_buffer("time_table", table, persistent=False)
        self.register_buffer("timesteps", steps, persistent=False)

    def semantic(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, 1, D) → the semantic code (B,) with the special-token offset, [EMPTY_AUDIO] and the
        padding rows excluded as the reference masks them."""
        logits = self.semantic_codebook_output(hidden)[:, 0]
        idx = torch.arange(logits.shape[-1], dtype=torch.int64)
        allowed = (idx != 0) & (idx < NUM_AUDIO_SPECIAL + self.semantic_size)
        return torch.argmax(torch.where(allowed, logits, float("-inf")), dim=-1)

    def velocity(self, x: torch.Tensor, condition: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """(B, 1, 36), (B, 1, Dh) projected condition, (1, 1, Dh) projected time → (B, 1, 36)."""
        tokens = torch.cat([self.input_projection(x), t_emb.expand(x.shape[0], 1, -1), condition], dim=1)
        h = tokens
        for module in self.layers:
            layer = cast(Block, module)
            q, k, v = layer.attention.qkv(layer.attention_norm(h))
            h = layer.residual(h, layer.attention.attend(q, k, v, None))
        return cast(torch.Tensor, self.acoustic_codebook_output(self.norm(h)[:, :1]))

    def forward(
        self, hidden: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1, 1, D) backbone state, (1, 1, 36) start noise → (semantic (1,), acoustic values (1, 36)
        after the last step, clamped, and the frame's 37 codes (1, 37) with the offset included).

        Guidance runs the conditioned and the zero-condition velocity as one batch of two, as the
        reference does; `llm_projection` of zeros is zeros (it has no bias), so the unconditioned
        row's condition is a literal zero."""
        semantic = self.semantic(hidden)
        projected = self.llm_projection(hidden)
        condition = torch.cat([projected, torch.zeros_like(projected)], dim=0)
        x = noise
        table, steps = cast(torch.Tensor, self.time_table), cast(torch.Tensor, self.timesteps)
        for i in range(DECODE_ITERS - 1):
            t_emb = self.time_projection(table[i].reshape(1, 1, -1))
            v = self.velocity(torch.cat([x, x], dim=0), condition, t_emb)
            guided = CFG_ALPHA * v[:1] + (1 - CFG_ALPHA) * v[1:]
            x = x + guided * (steps[i + 1] - steps[i])
        sampled = torch.clamp(x[:, 0], -1.0, 1.0)
        levels = torch.round((sampled + 1) / 2 * (self.levels - 1)).to(torch.int64)
        levels = torch.where(semantic.reshape(-1, 1) == END_AUDIO, torch.zeros_like(levels), levels)
        codes = torch.cat([semantic.reshape(-1, 1), levels + NUM_AUDIO_SPECIAL], dim=1)
        return semantic, sampled, codes


# --- codec decoder -------------------------------------------------------------------------------------
def alibi_slopes(heads: int) -> torch.Tensor:
    def power_of_2(n: int) -> list[float]:
        r = 2.0 ** (-8.0 / n)
        return [r**i for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_2(heads), dtype=torch.float32)
    m = 2 ** math.floor(math.log2(heads))
    return torch.tensor(power_of_2(m) + power_of_2(2 * m)[::2][: heads - m], dtype=torch.float32)


class ConvHolder(nn.Module):
    """`<block>.conv.weight`: the folded weight-normed kernel under the consolidated prefix."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv = nn.Module()
        self.conv.weight = nn.Parameter(torch.zeros(shape))

    @property
    def weight(self) -> torch.Tensor:
        return cast(torch.Tensor, self.conv.weight)


class Stage(nn.Module):
    """One run of ALiBi sliding-window layers (`decoder_blocks.<i>.layers.<l>`)."""

    def __init__(self, c: CodecConfig, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Block(
                c.dim,
                c.hidden_dim,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                c.norm_eps,
                qk_norm_eps=c.qk_norm_eps if c.qk_norm else None,
                layer_scale=c.layer_scale,
            )
            for _ in range(n_layers)
        )


class CodecDecoder(nn.Module):
    """`audio_tokenizer.*` (decoder side): latents → 24 kHz audio, one frame per call."""

    def __init__(self, cfg: VoxtralConfig) -> None:
        super().__init__()
        c = cfg.codec
        self.cfg = c
        self.levels = cfg.acoustic_levels
        stages, upsamplers = codec_block_indices(c)
        self.stage_index, self.upsampler_index = stages, upsamplers
        blocks: list[nn.Module] = [ConvHolder((c.dim, c.latent_dim, c.kernels[0]))]
        for n in range(len(c.transformer_lengths)):
            blocks.append(Stage(c, c.transformer_lengths[n]))
            if n + 1 < len(c.transformer_lengths):
                blocks.append(ConvHolder((c.dim, c.dim, c.kernels[n + 1])))
        self.decoder_blocks = nn.ModuleList(blocks)
        self.quantizer = nn.Module()
        self.quantizer.semantic_codebook = nn.Module()
        self.quantizer.semantic_codebook.embedding = nn.Parameter(
            torch.zeros(c.semantic_codebook_size, c.semantic_dim)
        )
        self.output_proj = ConvHolder((c.patch_size, c.dim, c.patch_kernel))
        self.register_buffer("slopes", alibi_slopes(c.n_heads), persistent=False)

    def latent(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, 37) codes with the offset → (B, latent_dim, 1): the VQ embedding and the FSQ values."""
        table = self.get_parameter("quantizer.semantic_codebook.embedding")
        semantic = (codes[:, 0] - NUM_AUDIO_SPECIAL).clamp(0, table.shape[0] - 1)
        acoustic = (codes[:, 1:] - NUM_AUDIO_SPECIAL).to(torch.float32) * 2 / (self.levels - 1) - 1
        return torch.cat([F.embedding(semantic, table), acoustic], dim=1).unsqueeze(-1)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every piece of carried state, in the graph's order."""
        c = self.cfg
        out: dict[str, tuple[int, ...]] = {"conv_in": (1, c.latent_dim, c.kernels[0] - 1)}
        windows = c.windows()
        for n, _idx in enumerate(self.stage_index):
            for layer in range(c.transformer_lengths[n]):
                out[f"s{n}_l{layer}_key"] = (1, c.n_kv_heads, windows[n], c.head_dim)
                out[f"s{n}_l{layer}_value"] = (1, c.n_kv_heads, windows[n], c.head_dim)
            if n + 1 < len(c.transformer_lengths):
                out[f"up{n}"] = (1, c.dim, c.kernels[n + 1] - c.strides[n + 1])
        out["conv_out"] = (1, c.dim, c.patch_kernel - 1)
        return out

    def attend_window(
        self, layer: Block, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal ALiBi attention of (1, r, D) new positions starting at absolute step `start` over
        the last `window` cached steps plus themselves; cache slots before step 0 are masked."""
        window, r = cache_k.shape[2], x.shape[1]
        q, k, v = layer.attention.qkv(layer.attention_norm(x))
        keys, values = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
        key_pos = torch.arange(window + r, dtype=torch.int64) - window  # relative to `start`
        query_pos = torch.arange(r, dtype=torch.int64).reshape(-1, 1)
        rel = (key_pos.reshape(1, -1) - query_pos).to(torch.float32)  # key - query ≤ 0 where visible
        visible = (rel <= 0) & (rel >= -window) & (key_pos.reshape(1, -1) + start >= 0)
        slopes = cast(torch.Tensor, self.slopes)
        bias = torch.where(visible, slopes.reshape(-1, 1, 1) * rel, float("-inf")).unsqueeze(0)
        out = layer.residual(x, layer.attention.attend(q, keys, values, bias))
        return out, keys[:, :, -window:], values[:, :, -window:]

    def forward(
        self, codes: torch.Tensor, position: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(1, 37) codes of frame `position` → (1, frame_size) audio and the next state."""
        c = self.cfg
        first = position.reshape(()) == 0
        new: dict[str, torch.Tensor] = {}
        x = self.latent(codes)  # (1, latent, 1)
        pad = c.kernels[0] - 1
        tail = torch.where(first, x.expand(-1, -1, pad), state["conv_in"])  # replicate pad at the start
        window = torch.cat([tail, x], dim=2)
        new["conv_in"] = window[:, :, window.shape[2] - pad :]
        h = F.conv1d(window, cast(ConvHolder, self.decoder_blocks[0]).weight).transpose(1, 2)  # (1, t, D)
        for n, idx in enumerate(self.stage_index):
            rate = c.upsampling()[n]
            start = position.reshape(()) * rate
            stage = cast(Stage, self.decoder_blocks[idx])
            for layer_no, module in enumerate(stage.layers):
                key = f"s{n}_l{layer_no}"
                h, new[f"{key}_key"], new[f"{key}_value"] = self.attend_window(
                    cast(Block, module), h, state[f"{key}_key"], state[f"{key}_value"], start
                )
            if n + 1 < len(c.transformer_lengths):
                conv = cast(ConvHolder, self.decoder_blocks[self.upsampler_index[n]])
                stride = c.strides[n + 1]
                y = F.conv_transpose1d(h.transpose(1, 2), conv.weight, stride=stride)
                overlap = c.kernels[n + 1] - stride
                y = torch.cat([y[:, :, :overlap] + state[f"up{n}"], y[:, :, overlap:]], dim=2)
                keep = h.shape[1] * stride
                new[f"up{n}"] = y[:, :, keep:]
                h = y[:, :, :keep].transpose(1, 2)
        steps = h.transpose(1, 2)  # (1, D, steps per frame)
        pad = c.patch_kernel - 1
        reflected = torch.flip(steps[:, :, 1 : pad + 1], dims=[2])  # reflect pad at the start
        tail = torch.where(first, reflected, state["conv_out"])
        window = torch.cat([tail, steps], dim=2)
        new["conv_out"] = window[:, :, window.shape[2] - pad :]
        out = F.conv1d(window, self.output_proj.weight)  # (1, patch, steps)
        audio = out.transpose(1, 2).reshape(1, -1)
        return audio, new


class VoxtralModules(Backbone):
    """The whole model under the consolidated names: the backbone's tensors at the root (`layers.*`,
    `norm`, `mm_audio_embeddings.*`), the head and the codec beside them."""

    def __init__(self, cfg: VoxtralConfig) -> None:
        super().__init__(cfg)
        self.config = cfg
        self.acoustic_transformer = AcousticHead(cfg)
        self.audio_tokenizer = CodecDecoder(cfg)


def weightless(cfg: VoxtralConfig) -> VoxtralModules:
    """The model with every parameter a stride-0 view of one zero: the graphs trace (shapes and ops are
    real) while the weights cost no memory, so a 4B checkpoint's graphs can be exported and their
    weights streamed in one at a time (`FamilyModel.stream_source`). Built on the meta device, then
    given CPU placeholders and its real constant buffers."""
    with torch.device("meta"):
        modules = VoxtralModules(cfg)
    zero = torch.zeros((), dtype=torch.float32)
    for module in modules.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(zero.expand(param.shape), requires_grad=False))
    modules.codebook_offsets = torch.tensor(cfg.codebook_offsets, dtype=torch.int64)
    head = modules.acoustic_transformer
    head.time_table, head.timesteps = time_table(cfg.head.dim)
    modules.audio_tokenizer.slopes = alibi_slopes(cfg.codec.n_heads)
    return modules
