"""Voxtral TTS's hyperparameters, read from Mistral's `params.json`, and the tensors they imply.

Mistral's "consolidated" layout keeps every hyperparameter in one `params.json`: the backbone's at the
top level, the flow-matching head's under `multimodal.audio_model_args.acoustic_transformer_args`, the
codec's under `multimodal.audio_tokenizer_args`. The defaults below are those of the public
implementations (sglang-omni's `model_config.py` and `audio_tokenizer.py`); a key the file sets wins.

`tensor_shapes` is the one statement of the checkpoint's names and shapes (BF16 on disk): the loader
checks a checkpoint against it, the random demo writes it, and the streaming converters walk it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from voxport.errors import BadInput

#: the codec's special tokens come first in every codebook: [EMPTY_AUDIO] = 0, [END_AUDIO] = 1
EMPTY_AUDIO, END_AUDIO = 0, 1
NUM_AUDIO_SPECIAL = 2


def round_up(n: int, multiple: int) -> int:
    return multiple * ((n + multiple - 1) // multiple)


#: the released model's shape (mistralai/Voxtral-4B-TTS-2603), as the public implementations read it
FULL_PARAMS: dict[str, Any] = {
    "dim": 3072,
    "n_layers": 26,
    "head_dim": 128,
    "hidden_dim": 9216,
    "n_heads": 32,
    "n_kv_heads": 8,
    "vocab_size": 131072,
    "rope_theta": 1000000.0,
    "norm_eps": 1e-5,
    "max_seq_len": 65536,
    "tied_embeddings": True,
    "multimodal": {
        "audio_model_args": {
            "semantic_codebook_size": 8192,
            "acoustic_codebook_size": 21,
            "n_acoustic_codebook": 36,
            "audio_token_id": 24,
            "begin_audio_token_id": 25,
            "acoustic_transformer_args": {
                "input_dim": 3072,
                "dim": 3072,
                "n_layers": 3,
                "head_dim": 128,
                "hidden_dim": 9216,
                "n_heads": 32,
                "n_kv_heads": 8,
                "use_biases": False,
                "norm_eps": 1e-5,
                "sigma": 1e-5,
            },
        },
        "audio_tokenizer_args": {
            "channels": 1,
            "sampling_rate": 24000,
            "pretransform_patch_size": 240,
            "patch_proj_kernel_size": 7,
            "semantic_codebook_size": 8192,
            "semantic_dim": 256,
            "acoustic_codebook_size": 21,
            "acoustic_dim": 36,
            "conv_weight_norm": True,
            "causal": True,
            "attn_sliding_window_size": 16,
            "half_attn_window_upon_downsampling": True,
            "dim": 1024,
            "hidden_dim": 4096,
            "head_dim": 128,
            "n_heads": 8,
            "n_kv_heads": 8,
            "qk_norm_eps": 1e-6,
            "qk_norm": True,
            "use_biases": False,
            "norm_eps": 1e-2,
            "layer_scale": True,
            "encoder_transformer_lengths_str": "2,2,2,2",
            "encoder_convs_kernels_str": "4,4,4,3",
            "encoder_convs_strides_str": "2,2,2,1",
            "decoder_transformer_lengths_str": "2,2,2,2",
            "decoder_convs_kernels_str": "3,4,4,4",
            "decoder_convs_strides_str": "1,2,2,2",
        },
    },
}


def _tiny() -> dict[str, Any]:
    """Every feature of the full model (GQA in backbone and head, qk-norm, layer scale, ALiBi windows,
    weight-normed convs, the real codebook geometry) at a size a test runs in seconds. The head has 2
    layers, not 3: its graph unrolls 7 guided steps, so each layer is 14 layer copies in every export
    (Core ML converts ~100 ops a second here), and two already exercise the layer loop."""
    p = copy.deepcopy(FULL_PARAMS)
    p.update(dim=64, n_layers=2, head_dim=16, hidden_dim=160, n_heads=4, n_kv_heads=2, vocab_size=1280)
    mm = p["multimodal"]
    audio = mm["audio_model_args"]
    audio["semantic_codebook_size"] = 128
    audio["acoustic_transformer_args"].update(
        input_dim=64, dim=64, n_layers=2, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2
    )
    mm["audio_tokenizer_args"].update(
        semantic_codebook_size=128,
        semantic_dim=32,
        dim=64,
        hidden_dim=128,
        head_dim=16,
        n_heads=4,
        n_kv_heads=4,
        decoder_transformer_lengths_str="1,1,1,1",
    )
    return p


NAMED_PARAMS: dict[str, dict[str, Any]] = {"tiny": _tiny(), "full": FULL_PARAMS}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in str(text).split(","))


@dataclass(frozen=True)
class BackboneConfig:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    rope_theta: float
    norm_eps: float


@dataclass(frozen=True)
class HeadConfig:
    input_dim: int
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    use_biases: bool
    norm_eps: float


@dataclass(frozen=True)
class CodecConfig:
    sample_rate: int
    patch_size: int
    patch_kernel: int
    semantic_codebook_size: int
    semantic_dim: int
    acoustic_levels: int
    acoustic_dim: int
    window: int
    half_window_on_downsampling: bool
    dim: int
    hidden_dim: int
    head_dim: int
    n_heads: int
    n_kv_heads: int
    qk_norm: bool
    qk_norm_eps: float
    norm_eps: float
    layer_scale: bool
    encoder_strides: tuple[int, ...]
    transformer_lengths: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def latent_dim(self) -> int:
        return self.semantic_dim + self.acoustic_dim

    def windows(self) -> list[int]:
        """Each decoder stage's attention window, as the reference derives it: the encoder halves
        the window at each downsampling, the decoder doubles it at each upsampling."""
        w = self.window
        for s in self.encoder_strides:
            if self.half_window_on_downsampling and s > 1:
                w //= 2
        if self.half_window_on_downsampling and self.strides[0] > 1:
            w *= 2
        out = []
        for idx in range(len(self.transformer_lengths)):
            out.append(w)
            last = idx + 1 == len(self.transformer_lengths)
            if not last and self.half_window_on_downsampling and self.strides[idx + 1] > 1:
                w *= 2
        return out

    def upsampling(self) -> list[int]:
        """Positions per frame at each transformer stage (1, 2, 4, 8 for the released codec)."""
        out, rate = [], self.strides[0]
        for idx in range(len(self.transformer_lengths)):
            out.append(rate)
            if idx + 1 < len(self.transformer_lengths):
                rate *= self.strides[idx + 1]
        return out

    @property
    def steps_per_frame(self) -> int:
        return self.upsampling()[-1]

    @property
    def frame_size(self) -> int:
        return self.steps_per_frame * self.patch_size

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / (self.patch_size * math.prod(self.encoder_strides))


@dataclass(frozen=True)
class VoxtralConfig:
    """params.json, typed. `raw` is the file as read (written back unchanged by `save`)."""

    raw: dict[str, Any]

    @cached_property
    def backbone(self) -> BackboneConfig:
        r = self.raw
        return BackboneConfig(
            dim=int(r["dim"]),
            n_layers=int(r["n_layers"]),
            head_dim=int(r.get("head_dim", r["dim"] // r["n_heads"])),
            hidden_dim=int(r["hidden_dim"]),
            n_heads=int(r["n_heads"]),
            n_kv_heads=int(r.get("n_kv_heads", r["n_heads"])),
            vocab_size=int(r["vocab_size"]),
            rope_theta=float(r.get("rope_theta", 1e6)),
            norm_eps=float(r.get("norm_eps", 1e-5)),
        )

    @cached_property
    def audio(self) -> dict[str, Any]:
        return dict(self.raw.get("multimodal", {}).get("audio_model_args", {}))

    @cached_property
    def head(self) -> HeadConfig:
        a = self.audio.get("acoustic_transformer_args", {})
        dim = int(a.get("dim", 768))
        return HeadConfig(
            input_dim=int(a.get("input_dim", self.backbone.dim)),
            dim=dim,
            n_layers=int(a.get("n_layers", 3)),
            head_dim=int(a.get("head_dim", 128)),
            hidden_dim=int(a.get("hidden_dim", 2048)),
            n_heads=int(a.get("n_heads", 6)),
            n_kv_heads=int(a.get("n_kv_heads", 2)),
            use_biases=bool(a.get("use_biases", False)),
            norm_eps=float(a.get("norm_eps", 1e-5)),
        )

    @cached_property
    def codec(self) -> CodecConfig:
        t = self.raw.get("multimodal", {}).get("audio_tokenizer_args", {})
        return CodecConfig(
            sample_rate=int(t.get("sampling_rate", 24000)),
            patch_size=int(t.get("pretransform_patch_size", 240)),
            patch_kernel=int(t.get("patch_proj_kernel_size", 7)),
            semantic_codebook_size=int(t.get("semantic_codebook_size", 8192)),
            semantic_dim=int(t.get("semantic_dim", 256)),
            acoustic_levels=int(t.get("acoustic_codebook_size", 21)),
            acoustic_dim=int(t.get("acoustic_dim", 36)),
            window=int(t.get("attn_sliding_window_size", 16)),
            half_window_on_downsampling=bool(t.get("half_attn_window_upon_downsampling", True)),
            dim=int(t.get("dim", 1024)),
            hidden_dim=int(t.get("hidden_dim", 4096)),
            head_dim=int(t.get("head_dim", 128)),
            n_heads=int(t.get("n_heads", 8)),
            n_kv_heads=int(t.get("n_kv_heads", 8)),
            qk_norm=bool(t.get("qk_norm", True)),
            qk_norm_eps=float(t.get("qk_norm_eps", 1e-6)),
            norm_eps=float(t.get("norm_eps", 1e-2)),
            layer_scale=bool(t.get("layer_scale", True)),
            encoder_strides=_ints(t.get("encoder_convs_strides_str", "2,2,2,1")),
            transformer_lengths=_ints(t.get("decoder_transformer_lengths_str", "2,2,2,2")),
            kernels=_ints(t.get("decoder_convs_kernels_str", "3,4,4,4")),
            strides=_ints(t.get("decoder_convs_strides_str", "1,2,2,2")),
        )

    @property
    def semantic_codebook_size(self) -> int:
        return int(self.audio.get("semantic_codebook_size", 8192))

    @property
    def acoustic_levels(self) -> int:
        return int(self.audio.get("acoustic_codebook_size", 21))

    @property
    def n_acoustic(self) -> int:
        return int(self.audio.get("n_acoustic_codebook", 36))

    @property
    def audio_token_id(self) -> int:
        return int(self.audio.get("audio_token_id", 24))

    @property
    def begin_audio_token_id(self) -> int:
        return int(self.audio.get("begin_audio_token_id", 25))

    @property
    def codebook_sizes(self) -> list[int]:
        """Entries per codebook with the special tokens, as the audio embedding table counts them."""
        return [self.semantic_codebook_size + NUM_AUDIO_SPECIAL] + [
            self.acoustic_levels + NUM_AUDIO_SPECIAL
        ] * self.n_acoustic

    @property
    def codebook_offsets(self) -> list[int]:
        out = [0]
        for size in self.codebook_sizes[:-1]:
            out.append(out[-1] + size)
        return out

    @property
    def audio_embedding_rows(self) -> int:
        return round_up(sum(self.codebook_sizes), 128)

    @property
    def semantic_logits(self) -> int:
        """Rows of the semantic output layer: codebook + specials, padded to 128 (8,320 released)."""
        return round_up(self.semantic_codebook_size + NUM_AUDIO_SPECIAL, 128)

    def check(self, source: str) -> None:
        """BadInput for a params.json the graphs cannot carry, naming the key."""
        b, h, c = self.backbone, self.head, self.codec
        if b.n_heads % b.n_kv_heads or h.n_heads % h.n_kv_heads or c.n_heads % c.n_kv_heads:
            raise BadInput(f"{source}: n_heads must be a multiple of n_kv_heads in params.json")
        if not h.input_dim == h.dim == b.dim:
            # the semantic output layer reads the backbone state directly with a head-width weight
            raise BadInput(
                f"{source}: acoustic_transformer_args.input_dim ({h.input_dim}) and dim ({h.dim}) must "
                f"equal the backbone's dim ({b.dim})"
            )
        if c.acoustic_dim != self.n_acoustic or c.acoustic_levels != self.acoustic_levels:
            raise BadInput(
                f"{source}: audio_tokenizer_args and audio_model_args disagree on the acoustic codebooks"
            )
        if c.semantic_codebook_size != self.semantic_codebook_size:
            raise BadInput(
                f"{source}: audio_tokenizer_args and audio_model_args disagree on the semantic codebook"
            )
        n = len(c.transformer_lengths)
        if not (len(c.kernels) == len(c.strides) == n) or c.strides[0] != 1:
            raise BadInput(
                f"{source}: decoder conv kernels/strides must list one per stage, the first of stride 1"
            )
        if any(k < s for k, s in zip(c.kernels[1:], c.strides[1:], strict=True)):
            raise BadInput(f"{source}: decoder transposed convs need kernel >= stride")


def codec_block_indices(codec: CodecConfig) -> tuple[list[int], list[int]]:
    """`audio_tokenizer.decoder_blocks` indices of the transformer stages and of the transposed convs
    (block 0 is the input conv): 1, 3, 5, 7 and 2, 4, 6 in the released codec."""
    stages, upsamplers, idx = [], [], 1
    for stage in range(len(codec.transformer_lengths)):
        stages.append(idx)
        idx += 1
        if stage + 1 < len(codec.transformer_lengths):
            upsamplers.append(idx)
            idx += 1
    return stages, upsamplers


def tensor_shapes(cfg: VoxtralConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the consolidated checkpoint the decoder-side model reads, with its shape
    (torch order). Convs are weight-normed on disk (`parametrizations.weight.original0` = g,
    `original1` = v); the codec's encoder (voice cloning) is not listed: nothing here runs it."""
    b, h, c = cfg.backbone, cfg.head, cfg.codec
    out: dict[str, tuple[int, ...]] = {
        "mm_audio_embeddings.tok_embeddings.weight": (b.vocab_size, b.dim),
        "mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight": (cfg.audio_embedding_rows, b.dim),
    }
    for i in range(b.n_layers):
        p = f"layers.{i}."
        out[p + "attention.wq.weight"] = (b.n_heads * b.head_dim, b.dim)
        out[p + "attention.wk.weight"] = (b.n_kv_heads * b.head_dim, b.dim)
        out[p + "attention.wv.weight"] = (b.n_kv_heads * b.head_dim, b.dim)
        out[p + "attention.wo.weight"] = (b.dim, b.n_heads * b.head_dim)
        out[p + "attention_norm.weight"] = (b.dim,)
        out[p + "ffn_norm.weight"] = (b.dim,)
        out[p + "feed_forward.w1.weight"] = (b.hidden_dim, b.dim)
        out[p + "feed_forward.w2.weight"] = (b.dim, b.hidden_dim)
        out[p + "feed_forward.w3.weight"] = (b.hidden_dim, b.dim)
    out["norm.weight"] = (b.dim,)
    a = "acoustic_transformer."
    out[a + "input_projection.weight"] = (h.dim, cfg.n_acoustic)
    out[a + "time_projection.weight"] = (h.dim, h.dim)
    out[a + "llm_projection.weight"] = (h.dim, h.input_dim)
    out[a + "semantic_codebook_output.weight"] = (cfg.semantic_logits, h.dim)
    if h.use_biases:
        out[a + "semantic_codebook_output.bias"] = (cfg.semantic_logits,)
    out[a + "acoustic_codebook_output.weight"] = (cfg.n_acoustic, h.dim)
    for i in range(h.n_layers):
        p = f"{a}layers.{i}."
        out[p + "attention.wq.weight"] = (h.n_heads * h.head_dim, h.dim)
        out[p + "attention.wk.weight"] = (h.n_kv_heads * h.head_dim, h.dim)
        out[p + "attention.wv.weight"] = (h.n_kv_heads * h.head_dim, h.dim)
        out[p + "attention.wo.weight"] = (h.dim, h.n_heads * h.head_dim)
        if h.use_biases:
            out[p + "attention.wq.bias"] = (h.n_heads * h.head_dim,)
            out[p + "attention.wv.bias"] = (h.n_kv_heads * h.head_dim,)
            out[p + "attention.wo.bias"] = (h.dim,)
            out[p + "feed_forward.w2.bias"] = (h.dim,)
        out[p + "attention_norm.weight"] = (h.dim,)
        out[p + "ffn_norm.weight"] = (h.dim,)
        out[p + "feed_forward.w1.weight"] = (h.hidden_dim, h.dim)
        out[p + "feed_forward.w2.weight"] = (h.dim, h.hidden_dim)
        out[p + "feed_forward.w3.weight"] = (h.hidden_dim, h.dim)
    out[a + "norm.weight"] = (h.dim,)
    t = "audio_tokenizer."
    stages, upsamplers = codec_block_indices(c)

    def conv(prefix: str, o: int, i: int, k: int, g_rows: int) -> None:
        out[prefix + "conv.parametrizations.weight.original0"] = (g_rows, 1, 1)
        out[prefix + "conv.parametrizations.weight.original1"] = (o, i, k) if g_rows == o else (i, o, k)

    conv(f"{t}decoder_blocks.0.", c.dim, c.latent_dim, c.kernels[0], c.dim)
    for n, idx in enumerate(stages):
        for layer in range(c.transformer_lengths[n]):
            p = f"{t}decoder_blocks.{idx}.layers.{layer}."
            out[p + "attention.wq.weight"] = (c.n_heads * c.head_dim, c.dim)
            out[p + "attention.wk.weight"] = (c.n_kv_heads * c.head_dim, c.dim)
            out[p + "attention.wv.weight"] = (c.n_kv_heads * c.head_dim, c.dim)
            out[p + "attention.wo.weight"] = (c.dim, c.n_heads * c.head_dim)
            if c.qk_norm:
                out[p + "attention.q_norm.weight"] = (c.n_heads * c.head_dim,)
                out[p + "attention.k_norm.weight"] = (c.n_kv_heads * c.head_dim,)
            out[p + "attention_norm.weight"] = (c.dim,)
            out[p + "ffn_norm.weight"] = (c.dim,)
            out[p + "feed_forward.w1.weight"] = (c.hidden_dim, c.dim)
            out[p + "feed_forward.w2.weight"] = (c.dim, c.hidden_dim)
            out[p + "feed_forward.w3.weight"] = (c.hidden_dim, c.dim)
            if c.layer_scale:
                out[p + "attention_scale"] = (c.dim,)
                out[p + "ffn_scale"] = (c.dim,)
    for n, idx in enumerate(upsamplers):
        # ConvTranspose1d weights are (in, out, k); weight norm's dim 0 is then the input channel
        kernel = c.kernels[n + 1]
        out[f"{t}decoder_blocks.{idx}.conv.parametrizations.weight.original0"] = (c.dim, 1, 1)
        out[f"{t}decoder_blocks.{idx}.conv.parametrizations.weight.original1"] = (c.dim, c.dim, kernel)
    out[f"{t}quantizer.semantic_codebook.cluster_usage"] = (c.semantic_codebook_size,)
    out[f"{t}quantizer.semantic_codebook.embedding_sum"] = (c.semantic_codebook_size, c.semantic_dim)
    conv(f"{t}output_proj.", c.patch_size, c.dim, c.patch_kernel, c.patch_size)
    return out
