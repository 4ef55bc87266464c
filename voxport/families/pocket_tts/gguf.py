"""Pocket TTS in llama.cpp's `pockettts` GGUF layout: a text-model file plus an audio `mmproj` file.

llama.cpp runs Pocket TTS as a "CALM": libllama runs the flow-LM backbone as a text model
(`general.architecture = pockettts`), and mtmd's clip runs everything else from an mmproj
(`general.architecture = clip`): the voice encoder (Mimi encoder + speaker projection, projector
`pockettts_spkenc`) and generation (flow head + EOS head + Mimi decoder, projector `pockettts_gen`).
The names, keys and folds below are those of llama.cpp's converter (`conversion/pockettts.py`,
classes `PocketTTSModel` / `PocketTTSMmprojModel`), gguf-py `constants.py` and `gguf_writer.py`, and
what `src/models/pockettts.cpp` and `tools/mtmd/clip.cpp` read (ggml-org/llama.cpp as vendored by
llama-cpp-python 0.3.36, commit 0c1e570). The PyPI `gguf` package has no POCKETTTS constants, so the
strings are written out here as a table. docs/gguf-pockettts.md has the full mapping.

Only configs llama.cpp can hold are written; anything else is refused with the reason (the ONNX and
Core ML exports cover every size).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from gguf import GGUFValueType

from voxport.errors import BadInput
from voxport.families.layouts.gguf import LayoutFile, LayoutTensor, MetaValue, Weights

if TYPE_CHECKING:
    from voxport.families.pocket_tts.model import PocketTTSAdapter

V = GGUFValueType

# --- the llama.cpp strings (gguf-py/gguf/constants.py, tools/mtmd/clip-impl.h) ---------------------------
ARCH_TEXT = "pockettts"  # MODEL_ARCH_NAMES[MODEL_ARCH.POCKETTTS]
ARCH_MMPROJ = "clip"  # MODEL_ARCH_NAMES[MODEL_ARCH.MMPROJ]
PROJECTOR_SPKENC = "pockettts_spkenc"  # VisionProjectorType.POCKETTTS_SPKENC
PROJECTOR_GEN = "pockettts_gen"  # VisionProjectorType.POCKETTTS_GEN

#: text-model keys (Keys.LLM / Keys.Attention / Keys.Rope, `{arch}` = pockettts)
TEXT_KEYS = {
    "type": "general.type",
    "block_count": "pockettts.block_count",
    "context_length": "pockettts.context_length",
    "embedding_length": "pockettts.embedding_length",
    "feed_forward_length": "pockettts.feed_forward_length",
    "head_count": "pockettts.attention.head_count",
    "rope_freq_base": "pockettts.rope.freq_base",
    "layer_norm_eps": "pockettts.attention.layer_norm_epsilon",
}
#: tokenizer keys (Keys.Tokenizer)
TOKENIZER_KEYS = {
    "model": "tokenizer.ggml.model",
    "pre": "tokenizer.ggml.pre",
    "tokens": "tokenizer.ggml.tokens",
    "scores": "tokenizer.ggml.scores",
    "token_type": "tokenizer.ggml.token_type",
    "add_space_prefix": "tokenizer.ggml.add_space_prefix",
    "remove_extra_whitespaces": "tokenizer.ggml.remove_extra_whitespaces",
    "precompiled_charsmap": "tokenizer.ggml.precompiled_charsmap",
    "add_bos": "tokenizer.ggml.add_bos_token",
    "add_eos": "tokenizer.ggml.add_eos_token",
    "unk_id": "tokenizer.ggml.unknown_token_id",
    "bos_id": "tokenizer.ggml.bos_token_id",
    "eos_id": "tokenizer.ggml.eos_token_id",
}
#: mmproj keys (Keys.Clip, Keys.ClipAudio, Keys.ClipGenAudio; clip.cpp KEY_* in clip-impl.h)
CLIP_KEYS = {
    "type": "general.type",
    "has_audio": "clip.has_audio_encoder",
    "audio_projector": "clip.audio.projector_type",
    "audio_projection_dim": "clip.audio.projection_dim",
    "audio_block_count": "clip.audio.block_count",
    "audio_embedding_length": "clip.audio.embedding_length",
    "audio_feed_forward_length": "clip.audio.feed_forward_length",
    "audio_head_count": "clip.audio.attention.head_count",
    "audio_layer_norm_eps": "clip.audio.attention.layer_norm_epsilon",
    "audio_num_mel_bins": "clip.audio.num_mel_bins",
    "has_gen_audio": "clip.has_gen_audio_encoder",
    "gen_projector": "clip.gen.audio.projector_type",
    "gen_projection_dim": "clip.gen.audio.projection_dim",
    "gen_embedding_length": "clip.gen.audio.embedding_length",
    "gen_feed_forward_length": "clip.gen.audio.feed_forward_length",
    "gen_block_count": "clip.gen.audio.block_count",
    "gen_head_count": "clip.gen.audio.attention.head_count",
    "gen_layer_norm_eps": "clip.gen.audio.attention.layer_norm_epsilon",
    "gen_model_variant": "clip.gen.audio.model_variant",
}
#: voxport's own keys in the text file (ignored by llama.cpp): `bos_emb` is folded into token_embd
#: through input_linear, and kept here so the read-back is exact
BOS_EMB_KEY = "voxport.bos_emb"
CONFIG_KEY = "voxport.config_yaml"

#: llama.cpp's sentencepiece token types (gguf-py SentencePieceTokenTypes)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: names of the extra token_embd rows (conversion/pockettts.py `_extra_tokens`)
PAD_TOKEN, BOS_BEFORE_VOICE_TOKEN, AUDIO_BOS_TOKEN = "<|pad|>", "<|bos_before_voice|>", "<|audio_bos|>"

#: what the converter derives or clip.cpp hard-codes (conversion/pockettts.py, clip.cpp
#: PROJECTOR_TYPE_POCKETTTS_*): every released ~100M/24-layer model satisfies these
HEAD_DIM = 64
SEANET_RATIOS = (6, 5, 4)
CODEC_CONTEXT = 250
CODEC_STEPS = 16
SAMPLE_RATE = 24000
ROPE_THETA = 10000.0
CONTEXT_LENGTH = 4096  # "only bounds the KV cache"
LAYER_NORM_EPS = 1e-5

#: SEANet model indices (SEANetEncoder/SEANetDecoder): stage i's residual block and strided conv
_ENC_RES, _ENC_SCALE = (1, 4, 7), (3, 6, 9)
_DEC_SCALE, _DEC_RES = (2, 5, 8), (3, 6, 9)
_CONV_IN, _CONV_OUT = 0, 11

_TFM = {
    "norm1": "ln1",
    "norm2": "ln2",
    "self_attn.out_proj": "attn_out",
    "linear1": "ffn_up",
    "linear2": "ffn_down",
}


def unsupported_reasons(model: PocketTTSAdapter) -> list[str]:
    """Why llama.cpp's pockettts cannot hold this model (empty when it can)."""
    c = model.cfg
    why: list[str] = []
    if c.z_dim:
        why.append(f"z_proj (d_model {c.d_model} → z_dim {c.z_dim}) before the flow/EOS heads")
    if c.lut_rank:
        why.append(f"a low-rank text table (rank {c.lut_rank} + projection)")
    if c.attn_dim != c.d_model:
        why.append(f"attn_dim {c.attn_dim} ≠ d_model {c.d_model}")
    if c.num_kv_heads != c.num_heads:
        why.append(f"grouped-query attention ({c.num_heads} heads, {c.num_kv_heads} kv heads)")
    if c.head_dim != HEAD_DIM:
        why.append(f"head_dim {c.head_dim} (llama.cpp derives heads as d_model // {HEAD_DIM})")
    if c.flow_type != "lsd":
        why.append(f"a {c.flow_type} flow head (clip.cpp loads exactly two LSD time embeddings)")
    if c.max_period != ROPE_THETA:
        why.append(f"RoPE max_period {c.max_period:g} (the converter writes {ROPE_THETA:g})")
    if not model.modules.mimi.has_encoder:
        why.append("no codec encoder (mimi.encoder.*): the mmproj's voice encoder needs it")
    if "tokenizer.model" not in model.tokenizer_files:
        why.append("no tokenizer.model (llama.cpp reads the vocabulary from the sentencepiece model)")
    if c.sample_rate != SAMPLE_RATE or c.codec_steps != CODEC_STEPS:
        why.append(f"codec rate {c.sample_rate} Hz / {c.codec_steps} steps per frame (clip.cpp: 24000 / 16)")
    for side, s in (("encoder", c.encoder_seanet), ("decoder", c.decoder_seanet)):
        if s.ratios != SEANET_RATIOS or s.n_residual_layers != 1:
            why.append(
                f"{side} SEANet ratios {list(s.ratios)} × {s.n_residual_layers} residual layers "
                f"(clip.cpp: {list(SEANET_RATIOS)} × 1)"
            )
    enc, dec = c.encoder_transformer, c.decoder_transformer
    for side, t in (("encoder", enc), ("decoder", dec)):
        if t.context != CODEC_CONTEXT:
            why.append(f"codec {side} transformer window {t.context} (clip.cpp: {CODEC_CONTEXT})")
        if t.head_dim != HEAD_DIM:
            why.append(f"codec {side} transformer head_dim {t.head_dim} (converter: {HEAD_DIM})")
        if t.max_period != ROPE_THETA:
            why.append(f"codec {side} RoPE max_period {t.max_period:g} (clip.cpp: {ROPE_THETA:g})")
    shape = lambda t: (t.d_model, t.num_layers, t.num_heads, t.dim_feedforward)  # noqa: E731
    if shape(enc) != shape(dec):
        why.append(
            "codec decoder transformer differs from the encoder's (the mmproj stores one set of "
            "hparams, copied from the encoder)"
        )
    return why


def check_llama_cpp(model: PocketTTSAdapter) -> None:
    why = unsupported_reasons(model)
    if why:
        raise BadInput(
            "gguf: llama.cpp's pockettts layout cannot hold this Pocket TTS config: "
            + "; ".join(why)
            + ". It covers the released ~100M (6-layer) and 24-layer models; "
            "use the onnx or coreml format for this size."
        )


# --- tokenizer -------------------------------------------------------------------------------------------


def tokenizer_metadata(model_bytes: bytes, n_vocab: int, extra: list[str]) -> dict[str, MetaValue]:
    """The UGM (`t5`) tokenizer keys, as the converter's `set_vocab` writes them: every id below the
    table size gets its sentencepiece piece (or `[PAD{i}]`, UNUSED), the last `extra` ids the names of
    the non-text rows (CONTROL, score −1000)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_model

    proto = sp_model.ModelProto()
    proto.ParseFromString(model_bytes)
    if proto.trainer_spec.model_type != 1:
        raise BadInput(
            "gguf: llama.cpp's pockettts tokenizer is UGM (unigram): tokenizer.model is "
            f"model_type {proto.trainer_spec.model_type}, not unigram (1)"
        )
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model_bytes)
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [UNUSED] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = float(sp.GetScore(i))
        if sp.IsUnknown(i):
            types[i] = UNKNOWN
        elif sp.IsControl(i):
            types[i] = CONTROL
        elif sp.IsUnused(i):
            types[i] = UNUSED
        elif sp.IsByte(i):
            types[i] = BYTE
        else:
            types[i] = NORMAL
    for j, name in enumerate(extra):
        i = n_vocab - len(extra) + j
        tokens[i], types[i], scores[i] = name.encode("utf-8"), CONTROL, -1000.0
    k = TOKENIZER_KEYS
    meta = {
        k["model"]: MetaValue("t5", V.STRING),
        k["pre"]: MetaValue("default", V.STRING),
        k["tokens"]: MetaValue(tokens, V.ARRAY, V.STRING),
        k["scores"]: MetaValue(scores, V.ARRAY, V.FLOAT32),
        k["token_type"]: MetaValue(types, V.ARRAY, V.INT32),
        k["add_space_prefix"]: MetaValue(bool(proto.normalizer_spec.add_dummy_prefix), V.BOOL),
        k["remove_extra_whitespaces"]: MetaValue(
            bool(proto.normalizer_spec.remove_extra_whitespaces), V.BOOL
        ),
    }
    if proto.normalizer_spec.precompiled_charsmap:
        meta[k["precompiled_charsmap"]] = MetaValue(
            bytes(proto.normalizer_spec.precompiled_charsmap), V.ARRAY, V.UINT8
        )
    meta[k["add_bos"]] = MetaValue(False, V.BOOL)
    meta[k["add_eos"]] = MetaValue(False, V.BOOL)
    meta.update(special_token_ids(sp))
    return meta


def special_token_ids(sp: Any) -> dict[str, MetaValue]:
    """The sentencepiece model's own unk/bos/eos ids (a disabled one, -1, is left out).

    Without them llama.cpp's UGM vocab keeps T5's defaults (unk 2, eos 1), so a character outside the
    vocabulary became `</s>` instead of `<unk>`; upstream's converter has the same gap."""
    k = TOKENIZER_KEYS
    ids = {k["unk_id"]: sp.unk_id(), k["bos_id"]: sp.bos_id(), k["eos_id"]: sp.eos_id()}
    return {key: MetaValue(int(i), V.UINT32) for key, i in ids.items() if i >= 0}


def source_metadata(raw: Mapping[str, Any]) -> dict[str, MetaValue]:
    """general.source.* from the config's `weights_path` (hf://<org>/<repo>/<file>@<rev>), and the
    release name as general.version: where a Kyutai release's weights were published."""
    match = re.match(r"hf://([^/@]+/[^/@]+)/", str(raw.get("weights_path", "")))
    if not match:
        return {}
    repo = match.group(1)
    meta = {
        "general.source.url": MetaValue(f"https://huggingface.co/{repo}", V.STRING),
        "general.source.huggingface.repository": MetaValue(repo, V.STRING),
    }
    release = release_name(raw)
    if release:
        meta["general.version"] = MetaValue(release, V.STRING)
    return meta


#: what `clip.gen.audio.model_variant` holds for a config that names no Kyutai release
UNKNOWN_VARIANT = "custom"


def release_name(raw: Mapping[str, Any]) -> str | None:
    """The Kyutai release a config came from (`english_2026-10`, ...), read from its `weights_path`
    (hf://kyutai/pocket-tts/languages/<release>/model.safetensors@rev), which every release YAML in the
    `pocket-tts` package carries and which the checkpoint's saved config keeps. None: not a release."""
    for key in ("weights_path", "weights_path_without_voice_cloning"):
        match = re.search(r"/languages/([^/]+)/", str(raw.get(key, "")))
        if match:
            return match.group(1)
    return None


# --- the layout ----------------------------------------------------------------------------------------


class PocketGgufLayout:
    """llama.cpp's two-file pockettts layout for one Pocket TTS model (see the module docstring)."""

    name = "llama.cpp pockettts"

    def __init__(self, model: PocketTTSAdapter) -> None:
        self.model = model

    @property
    def has_bos_before_voice(self) -> bool:
        return self.model.cfg.insert_bos_before_voice

    def extra_tokens(self) -> list[str]:
        names = [PAD_TOKEN]
        if self.has_bos_before_voice:
            names.append(BOS_BEFORE_VOICE_TOKEN)
        return [*names, AUDIO_BOS_TOKEN]

    def files(self, weights: Weights) -> list[LayoutFile]:
        check_llama_cpp(self.model)
        return [self._text_file(weights), self._mmproj_file()]

    # text model ---------------------------------------------------------------------------------------
    def _text_file(self, weights: Weights) -> LayoutFile:
        c = self.model.cfg
        n_rows = c.n_bins + 1
        n_vocab = n_rows + len(self.extra_tokens()) - 1  # the pad row is the table's own last row
        k = TEXT_KEYS
        meta = {
            k["type"]: MetaValue("model", V.STRING),
            k["block_count"]: MetaValue(c.num_layers, V.UINT32),
            k["context_length"]: MetaValue(CONTEXT_LENGTH, V.UINT32),
            k["embedding_length"]: MetaValue(c.d_model, V.UINT32),
            k["feed_forward_length"]: MetaValue(c.ffn_dim, V.UINT32),
            k["head_count"]: MetaValue(c.d_model // HEAD_DIM, V.UINT32),
            k["rope_freq_base"]: MetaValue(ROPE_THETA, V.FLOAT32),
            k["layer_norm_eps"]: MetaValue(LAYER_NORM_EPS, V.FLOAT32),
            **tokenizer_metadata(self.model.tokenizer_files["tokenizer.model"], n_vocab, self.extra_tokens()),
            BOS_EMB_KEY: MetaValue(
                [float(x) for x in weights("flow_lm.bos_emb").reshape(-1)], V.ARRAY, V.FLOAT32
            ),
            CONFIG_KEY: MetaValue(yaml.safe_dump(c.raw, sort_keys=True), V.STRING),
            **source_metadata(c.raw),
        }
        sources = ["flow_lm.conditioner.embed.weight", "flow_lm.bos_emb", "flow_lm.input_linear.weight"]
        if self.has_bos_before_voice:
            sources.insert(1, "flow_lm.bos_before_voice")
        tensors = [
            LayoutTensor(
                "token_embd.weight",
                shape=(n_vocab, c.d_model),
                build=self._build_token_embd,
                inverse=self._invert_token_embd,
                derived_from=tuple(sources),
            ),
            LayoutTensor("output_norm.weight", "flow_lm.out_norm.weight"),
            LayoutTensor("output_norm.bias", "flow_lm.out_norm.bias"),
        ]
        d = c.d_model
        for i in range(c.num_layers):
            src = f"flow_lm.transformer.layers.{i}"
            tensors += [
                LayoutTensor(f"blk.{i}.attn_norm.weight", f"{src}.norm1.weight"),
                LayoutTensor(f"blk.{i}.attn_norm.bias", f"{src}.norm1.bias"),
                LayoutTensor(f"blk.{i}.attn_q.weight", f"{src}.self_attn.in_proj.weight", rows=(0, d)),
                LayoutTensor(f"blk.{i}.attn_k.weight", f"{src}.self_attn.in_proj.weight", rows=(d, 2 * d)),
                LayoutTensor(
                    f"blk.{i}.attn_v.weight", f"{src}.self_attn.in_proj.weight", rows=(2 * d, 3 * d)
                ),
                LayoutTensor(f"blk.{i}.attn_output.weight", f"{src}.self_attn.out_proj.weight"),
                LayoutTensor(f"blk.{i}.ffn_norm.weight", f"{src}.norm2.weight"),
                LayoutTensor(f"blk.{i}.ffn_norm.bias", f"{src}.norm2.bias"),
                LayoutTensor(f"blk.{i}.ffn_up.weight", f"{src}.linear1.weight"),
                LayoutTensor(f"blk.{i}.ffn_down.weight", f"{src}.linear2.weight"),
            ]
        return LayoutFile("gguf", "", ARCH_TEXT, meta, tensors)

    def _build_token_embd(self, weights: Weights) -> np.ndarray:
        """The converter's `_embd_table`: the 4001 text rows (the last is Kyutai's padding row), then
        `bos_before_voice`, then `input_linear @ bos_emb` (bos_emb is a latent that only enters the
        backbone through input_linear)."""
        rows = [weights("flow_lm.conditioner.embed.weight")]
        if self.has_bos_before_voice:
            rows.append(weights("flow_lm.bos_before_voice").reshape(1, -1))
        audio_bos = weights("flow_lm.input_linear.weight") @ weights("flow_lm.bos_emb").reshape(-1)
        rows.append(audio_bos.reshape(1, -1))
        return np.concatenate(rows, axis=0).astype(np.float32)

    def _invert_token_embd(
        self, values: np.ndarray, meta: Mapping[str, Any], restored: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        n = self.model.cfg.n_bins + 1
        expected = n + len(self.extra_tokens()) - 1
        if values.shape[0] != expected:
            raise BadInput(f"gguf: token_embd has {values.shape[0]} rows, expected {expected}")
        out = {"flow_lm.conditioner.embed.weight": values[:n]}
        if self.has_bos_before_voice:
            out["flow_lm.bos_before_voice"] = values[n]
        audio_bos = values[-1].astype(np.float64)
        w = restored["flow_lm.input_linear.weight"].astype(np.float64)
        if BOS_EMB_KEY in meta:
            bos = np.asarray(meta[BOS_EMB_KEY], dtype=np.float32)
        else:  # a file from llama.cpp's own converter: solve input_linear @ bos_emb = row
            bos = np.linalg.lstsq(w, audio_bos, rcond=None)[0].astype(np.float32)
        err = float(np.max(np.abs(w @ bos.astype(np.float64) - audio_bos)))
        scale = max(1.0, float(np.max(np.abs(audio_bos))))
        if err > 2e-2 * scale:
            raise BadInput(
                f"gguf: token_embd row {AUDIO_BOS_TOKEN} is not a.gen.input_linear @ bos_emb "
                f"(max difference {err:.3g}): the two files do not belong together"
            )
        out["flow_lm.bos_emb"] = bos
        return out

    # mmproj -----------------------------------------------------------------------------------------
    def _mmproj_file(self) -> LayoutFile:
        c = self.model.cfg
        enc = c.encoder_transformer
        k = CLIP_KEYS
        # llama.cpp picks its tuned temperature, tail frames and short-text padding by release name
        variant = release_name(c.raw) or UNKNOWN_VARIANT
        meta = {
            k["type"]: MetaValue("mmproj", V.STRING),
            k["has_audio"]: MetaValue(True, V.BOOL),
            k["audio_projector"]: MetaValue(PROJECTOR_SPKENC, V.STRING),
            k["audio_projection_dim"]: MetaValue(c.d_model, V.UINT32),
            k["audio_block_count"]: MetaValue(enc.num_layers, V.UINT32),
            k["audio_embedding_length"]: MetaValue(enc.d_model, V.UINT32),
            k["audio_feed_forward_length"]: MetaValue(enc.dim_feedforward, V.UINT32),
            k["audio_head_count"]: MetaValue(enc.d_model // HEAD_DIM, V.UINT32),
            k["audio_layer_norm_eps"]: MetaValue(LAYER_NORM_EPS, V.FLOAT32),
            k["audio_num_mel_bins"]: MetaValue(1, V.UINT32),
            k["has_gen_audio"]: MetaValue(True, V.BOOL),
            k["gen_projector"]: MetaValue(PROJECTOR_GEN, V.STRING),
            k["gen_projection_dim"]: MetaValue(c.d_model, V.UINT32),
            # copied from the encoder transformer, as the converter does (checked equal to the decoder's)
            k["gen_embedding_length"]: MetaValue(enc.d_model, V.UINT32),
            k["gen_feed_forward_length"]: MetaValue(enc.dim_feedforward, V.UINT32),
            k["gen_block_count"]: MetaValue(enc.num_layers, V.UINT32),
            k["gen_head_count"]: MetaValue(enc.d_model // HEAD_DIM, V.UINT32),
            k["gen_layer_norm_eps"]: MetaValue(LAYER_NORM_EPS, V.FLOAT32),
            k["gen_model_variant"]: MetaValue(variant, V.STRING),
            **source_metadata(c.raw),
        }
        t: list[LayoutTensor] = [
            LayoutTensor("a.speaker_proj.weight", "flow_lm.speaker_proj_weight"),
            LayoutTensor("a.gen.input_linear.weight", "flow_lm.input_linear.weight"),
            LayoutTensor("a.gen.emb_mean", "flow_lm.emb_mean"),
            LayoutTensor("a.gen.emb_std", "flow_lm.emb_std"),
        ]
        t += self._pairs("a.gen.out_eos", "flow_lm.out_eos")
        f = "flow_lm.flow_net"
        t += self._pairs("a.gen.flow.input_proj", f"{f}.input_proj")
        t += self._pairs("a.gen.flow.cond_embd", f"{f}.cond_embed")
        for i in range(2):
            src = f"{f}.time_embed.{i}"
            t.append(LayoutTensor(f"a.gen.flow.time.{i}.freqs", f"{src}.freqs"))
            t += self._pairs(f"a.gen.flow.time.{i}.up", f"{src}.mlp.0")
            t += self._pairs(f"a.gen.flow.time.{i}.down", f"{src}.mlp.2")
            t.append(LayoutTensor(f"a.gen.flow.time.{i}.norm", f"{src}.mlp.3.alpha"))
        for j in range(c.flow_depth):
            src = f"{f}.res_blocks.{j}"
            t += self._pairs(f"a.gen.flow.blk.{j}.norm", f"{src}.in_ln")
            t += self._pairs(f"a.gen.flow.blk.{j}.up", f"{src}.mlp.0")
            t += self._pairs(f"a.gen.flow.blk.{j}.down", f"{src}.mlp.2")
            t += self._pairs(f"a.gen.flow.blk.{j}.ada", f"{src}.adaLN_modulation.1")
        t += self._pairs("a.gen.flow.final.ada", f"{f}.final_layer.adaLN_modulation.1")
        t += self._pairs("a.gen.flow.final.proj", f"{f}.final_layer.linear")
        # codec decoder side
        outer, latent = c.outer_dim, c.latent_dim
        t.append(
            LayoutTensor(
                "a.gen.wav.quant_out.weight", "mimi.quantizer.output_proj.weight", shape=(outer, latent)
            )
        )
        t.append(LayoutTensor("a.gen.wav.upsample.weight", "mimi.upsample.convtr.convtr.weight", force="F16"))
        t += self._transformer(
            "a.gen.wav.tfm.blk", "mimi.decoder_transformer", c.decoder_transformer.num_layers
        )
        t += self._seanet("a.gen.wav.seanet", "mimi.decoder", decoder=True)
        # voice encoder side
        t += self._seanet("a.seanet", "mimi.encoder", decoder=False)
        t.append(LayoutTensor("a.downsample.conv.weight", "mimi.downsample.conv.conv.weight", force="F16"))
        t += self._transformer("a.blk", "mimi.encoder_transformer", enc.num_layers)
        return LayoutFile("mmproj", "mmproj", ARCH_MMPROJ, meta, t)

    def _pairs(self, gguf: str, src: str, *, force: str | None = None) -> list[LayoutTensor]:
        """weight + bias of one module (the bias is a vector: F32 whatever `force` says)."""
        return [
            LayoutTensor(f"{gguf}.weight", f"{src}.weight", force=force),
            LayoutTensor(f"{gguf}.bias", f"{src}.bias"),
        ]

    def _transformer(self, prefix: str, src: str, layers: int) -> list[LayoutTensor]:
        d = int(self.model.state_dict()[f"{src}.transformer.layers.0.norm1.weight"].shape[0])
        out: list[LayoutTensor] = []
        for i in range(layers):
            s = f"{src}.transformer.layers.{i}"
            qkv = f"{s}.self_attn.in_proj.weight"
            out += [
                LayoutTensor(f"{prefix}.{i}.attn_q.weight", qkv, rows=(0, d)),
                LayoutTensor(f"{prefix}.{i}.attn_k.weight", qkv, rows=(d, 2 * d)),
                LayoutTensor(f"{prefix}.{i}.attn_v.weight", qkv, rows=(2 * d, 3 * d)),
            ]
            for kyutai, short in _TFM.items():
                out.append(LayoutTensor(f"{prefix}.{i}.{short}.weight", f"{s}.{kyutai}.weight"))
                if kyutai.startswith("norm"):
                    out.append(LayoutTensor(f"{prefix}.{i}.{short}.bias", f"{s}.{kyutai}.bias"))
            out.append(LayoutTensor(f"{prefix}.{i}.ls1.weight", f"{s}.layer_scale_1.scale"))
            out.append(LayoutTensor(f"{prefix}.{i}.ls2.weight", f"{s}.layer_scale_2.scale"))
        return out

    def _seanet(self, prefix: str, src: str, *, decoder: bool) -> list[LayoutTensor]:
        """SEANet convolutions, kept 3-D and F16 (ggml_conv_1d has no quantized or BF16 path)."""
        out = self._pairs(f"{prefix}.conv_in", f"{src}.model.{_CONV_IN}.conv", force="F16")
        out += self._pairs(f"{prefix}.conv_out", f"{src}.model.{_CONV_OUT}.conv", force="F16")
        scale_idx, res_idx = (_DEC_SCALE, _DEC_RES) if decoder else (_ENC_SCALE, _ENC_RES)
        for stage in range(3):
            kind = "convtr" if decoder else "conv"
            out += self._pairs(
                f"{prefix}.blk.{stage}.scale_conv", f"{src}.model.{scale_idx[stage]}.{kind}", force="F16"
            )
            res = f"{src}.model.{res_idx[stage]}.block"
            out += self._pairs(f"{prefix}.blk.{stage}.res_conv1", f"{res}.1.conv", force="F16")
            out += self._pairs(f"{prefix}.blk.{stage}.res_conv2", f"{res}.3.conv", force="F16")
        return out
