"""Voxtral TTS as GGUF: the backbone as llama.cpp's `llama` model, everything else in voxport's layout.

llama.cpp has no Voxtral TTS architecture, so the model is split in two files:

(a) `<stem>.gguf`: the Mistral decoder backbone as `general.architecture = llama`, with llama.cpp's own
    tensor names and keys, taken from gguf-py's constants (`MODEL_ARCH.LLAMA`, `TENSOR_NAMES`, `Keys`)
    rather than typed here, and the Tekken vocabulary as llama.cpp's converter writes it. llama.cpp
    loads it as a text model: it embeds token ids and runs the 26 decoder layers; the tied output head
    (no `output.weight`: llama.cpp falls back to `token_embd`) gives text logits nobody uses here. What
    it cannot do alone is Voxtral's input side: audio frames enter the backbone as the sum of 37
    codebook rows of `audio_embd` (file b), and voice presets as raw embeddings, so a runtime feeds
    those through llama.cpp's embeddings input (`llama_batch.embd`) rather than token ids.

    Q and K stay in Mistral's consolidated row order. llama.cpp's `llama` applies RoPE in the
    interleaved "NORM" mode (pairs (2i, 2i+1)), which is the convention of Mistral's and Meta's
    original checkpoints; transformers' Hugging Face layout instead rotates halves, so HF checkpoints
    arrive with Q/K rows permuted and the converter un-permutes them. In ggml-org/llama.cpp,
    `conversion/llama.py` (commit 0274f0fc) `LlamaModel.undo_permute = True` applies `LlamaModel.permute`
    to `q_proj`/`k_proj` of HF checkpoints, and `conversion/mistral.py` (commit 32e9e044)
    `MistralModel(LlamaModel)` — the converter for the consolidated format, `is_mistral_format = True` —
    sets `undo_permute = False` and writes `MODEL_ARCH.LLAMA` for models without `llama_4_scaling`:
    consolidated Q/K rows go to GGUF unchanged. The tokenizer keys follow the same converter's
    `_set_vocab_mistral` with gguf-py's `MistralVocab` for Tekken: `tokenizer.ggml.model = gpt2`,
    `pre = tekken`, the special tokens first (CONTROL), then every vocabulary entry as its GPT-2
    byte-to-unicode string (NORMAL), scores 0, the BPE merges rebuilt from the ranks, bos/eos/unk/pad
    ids, add_bos true, add_eos false. `llama.vocab_size`, `attention.key_length`/`value_length` (128:
    llama.cpp would otherwise derive 3072/32 = 96) and `rope.dimension_count` are written as well.

(b) `<stem>.audio.gguf`: `general.architecture = voxtral_tts`, voxport's own short names (table below,
    all < 64 bytes), with params.json embedded as `voxtral_tts.config_json`. What a C runtime needs to
    run it, besides llama.cpp for file (a):
    - the audio input embedding: `audio_embd` rows at codebook offsets (semantic 8192+2 entries, then
      36 acoustic codebooks of 21+2), summed per frame;
    - the flow-matching head (`head.*`): 3 bidirectional transformer layers (GQA, RMSNorm, SwiGLU, no
      position encoding) over [projected LLM hidden state, time embedding, projected noisy acoustic
      values]; per frame the semantic token is the argmax of `head.semantic_out` (8,320 logits) and
      the 36 acoustic values come from Euler steps of the velocity field (7 steps between 8 time
      points) with classifier-free guidance (α = 1.2: the conditional and an unconditional pass per
      step), then FSQ quantisation to 21 levels;
    - the codec decoder (`codec.*`): semantic codebook lookup (`codec.semantic_codebook`, 256-d) plus
      the 36 FSQ values, a causal conv (`codec.dec.0.conv`), then 4 stages of ALiBi-biased causal
      sliding-window attention layers (windows from params.json; qk-RMSNorm, layer scales `attn_scale`
      / `ffn_scale`) each followed by a transposed conv (strides 2, 2, 2), and `codec.out_proj` (a
      conv to 240-sample patches) giving 24 kHz audio. Convs are stored 3-D in F16 (weight norm
      folded), as ggml_conv_1d has no quantized path.

`read_layout` (export/gguf/split.py) gives the voxport state dict back from the two files exactly
(dequantized), since every tensor here is a plain copy of one weight.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSOR, TENSOR_NAMES, GGUFValueType, Keys, TokenType
from gguf.vocab import bytes_to_unicode

from voxport.errors import BadInput
from voxport.families.layouts.gguf import LayoutFile, LayoutTensor, MetaValue, Weights
from voxport.families.voxtral_tts.config import VoxtralConfig, tensor_shapes
from voxport.families.voxtral_tts.consolidated import state_shapes

V = GGUFValueType

ARCH_TEXT = MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA]
ARCH_AUDIO = "voxtral_tts"
CONFIG_KEY = f"{ARCH_AUDIO}.config_json"
#: role and file-name suffix of the audio file
AUDIO_ROLE = AUDIO_SUFFIX = "audio"
#: GGML's tensor-name buffer is 64 bytes with the terminating NUL
MAX_NAME_BYTES = 63
#: max_seq_len when params.json has none
DEFAULT_CONTEXT = 65536

#: backbone tensor kinds: consolidated suffix -> gguf-py tensor
_BLOCK = {
    "attention_norm.weight": MODEL_TENSOR.ATTN_NORM,
    "attention.wq.weight": MODEL_TENSOR.ATTN_Q,
    "attention.wk.weight": MODEL_TENSOR.ATTN_K,
    "attention.wv.weight": MODEL_TENSOR.ATTN_V,
    "attention.wo.weight": MODEL_TENSOR.ATTN_OUT,
    "ffn_norm.weight": MODEL_TENSOR.FFN_NORM,
    "feed_forward.w1.weight": MODEL_TENSOR.FFN_GATE,
    "feed_forward.w2.weight": MODEL_TENSOR.FFN_DOWN,
    "feed_forward.w3.weight": MODEL_TENSOR.FFN_UP,
}
TOKEN_EMBD = "mm_audio_embeddings.tok_embeddings.weight"
FINAL_NORM = "norm.weight"

#: voxport short names for file (b): whole dot-separated token runs, longest first
_SHORT: dict[str, str] = {
    "mm_audio_embeddings.audio_codebook_embeddings.embeddings": "audio_embd",
    "quantizer.semantic_codebook.embedding": "semantic_codebook",
    "acoustic_transformer": "head",
    "audio_tokenizer": "codec",
    "decoder_blocks": "dec",
    "layers": "blk",
    "attention": "attn",
    "feed_forward": "ffn",
    "attention_scale": "attn_scale",
    "input_projection": "in_proj",
    "time_projection": "time_proj",
    "llm_projection": "llm_proj",
    "semantic_codebook_output": "semantic_out",
    "acoustic_codebook_output": "acoustic_out",
    "output_proj": "out_proj",
}
_RUNS = sorted(((tuple(k.split(".")), v) for k, v in _SHORT.items()), key=lambda kv: -len(kv[0]))


def audio_name(name: str) -> str:
    """The file-(b) name of a voxport weight (ValueError when it would not fit GGML's 64 bytes)."""
    tokens, out, i = name.split("."), [], 0
    while i < len(tokens):
        for run, short in _RUNS:
            if tuple(tokens[i : i + len(run)]) == run:
                out.append(short)
                i += len(run)
                break
        else:
            out.append(tokens[i])
            i += 1
    short = ".".join(out)
    if len(short.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"GGUF name {short!r} for {name} is longer than {MAX_NAME_BYTES} bytes")
    return short


def backbone_names(cfg: VoxtralConfig) -> dict[str, str]:
    """voxport (consolidated) name -> llama.cpp tensor name, for every backbone weight."""
    out = {
        TOKEN_EMBD: TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + ".weight",
        FINAL_NORM: TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM] + ".weight",
    }
    for i in range(cfg.backbone.n_layers):
        for suffix, kind in _BLOCK.items():
            out[f"layers.{i}.{suffix}"] = TENSOR_NAMES[kind].format(bid=i) + ".weight"
    return out


def is_conv(name: str) -> bool:
    return name.endswith("conv.weight")


# --- the Tekken vocabulary, as llama.cpp's converter writes it -------------------------------------------


def _tekken(tekken: Mapping[str, Any] | bytes | str | Path) -> dict[str, Any]:
    if isinstance(tekken, Mapping):
        return dict(tekken)
    raw = Path(tekken).read_bytes() if isinstance(tekken, (str, Path)) else bytes(tekken)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"tekken.json: not JSON ({exc})") from None
    if not isinstance(data, dict) or "config" not in data or "vocab" not in data:
        raise BadInput("tekken.json: not a Tekken tokenizer file (no 'config' / 'vocab')")
    return data


def tekken_metadata(tekken: Mapping[str, Any] | bytes | str | Path, vocab_size: int) -> dict[str, MetaValue]:
    """tokenizer.ggml.* for a Tekken tokenizer, as llama.cpp's `_set_vocab_mistral` writes them with
    gguf-py's `MistralVocab` (read here from the JSON directly, as mistral-common's `Tekkenizer.from_file`
    does: `default_vocab_size` ids, the first `default_num_special_tokens` special, missing specials
    named `<SPECIAL_i>`, vocabulary rank r at id r + specials)."""
    data = _tekken(tekken)
    conf = data["config"]
    n_words = int(conf["default_vocab_size"])
    n_special = int(conf["default_num_special_tokens"])
    if n_words != vocab_size:
        raise BadInput(
            f"tekken.json has {n_words} ids (default_vocab_size) but params.json's vocab_size is "
            f"{vocab_size}: llama.cpp needs one token per token_embd row; use the tokenizer released "
            "with the checkpoint"
        )
    specials = list(data.get("special_tokens") or [])
    names = {int(t["rank"]): str(t["token_str"]) for t in specials}
    tokens: list[bytes] = [names.get(i, f"<SPECIAL_{i}>").encode("utf-8") for i in range(n_special)]
    types = [int(TokenType.CONTROL)] * n_special
    inner = n_words - n_special
    ranks: dict[bytes, int] = {}
    for entry in data["vocab"][:inner]:
        ranks[base64.b64decode(entry["token_bytes"])] = int(entry["rank"])
    if sorted(ranks.values()) != list(range(inner)):
        raise BadInput(f"tekken.json: the first {inner} vocabulary ranks are not 0..{inner - 1}")
    byte_encoder = bytes_to_unicode()
    by_rank = sorted(ranks, key=lambda b: ranks[b])

    def text(b: bytes) -> str:
        return "".join(byte_encoder[x] for x in b)

    tokens += [text(b).encode("utf-8") for b in by_rank]
    types += [int(TokenType.NORMAL)] * inner
    ids = {}
    for key, token in (
        (Keys.Tokenizer.BOS_ID, "<s>"),
        (Keys.Tokenizer.EOS_ID, "</s>"),
        (Keys.Tokenizer.UNK_ID, "<unk>"),
        (Keys.Tokenizer.PAD_ID, "<pad>"),
    ):
        found = [i for i, name in names.items() if name == token]
        if found:
            ids[key] = MetaValue(found[0], V.UINT32)
    if Keys.Tokenizer.PAD_ID not in ids and Keys.Tokenizer.EOS_ID in ids:  # MistralVocab.pad_id
        ids[Keys.Tokenizer.PAD_ID] = ids[Keys.Tokenizer.EOS_ID]
    return {
        Keys.Tokenizer.MODEL: MetaValue("gpt2", V.STRING),
        Keys.Tokenizer.PRE: MetaValue("tekken", V.STRING),
        Keys.Tokenizer.LIST: MetaValue(tokens, V.ARRAY, V.STRING),
        Keys.Tokenizer.SCORES: MetaValue([0.0] * n_words, V.ARRAY, V.FLOAT32),
        Keys.Tokenizer.TOKEN_TYPE: MetaValue(types, V.ARRAY, V.INT32),
        Keys.Tokenizer.MERGES: MetaValue(bpe_merges(ranks, by_rank, text), V.ARRAY, V.STRING),
        **ids,
        Keys.Tokenizer.ADD_BOS: MetaValue(True, V.BOOL),
        Keys.Tokenizer.ADD_EOS: MetaValue(False, V.BOOL),
    }


def bpe_merges(ranks: Mapping[bytes, int], by_rank: list[bytes], text: Any) -> list[str]:
    """GPT-2 style merges from tiktoken ranks (gguf-py `MistralVocab.extract_vocab_merges_from_model`):
    for each token of rank >= 256, every split into two tokens that are themselves in the vocabulary,
    ordered by (merged rank, left rank, right rank)."""
    pairs: list[tuple[int, int, int, bytes, bytes]] = []
    for i in range(256, len(by_rank)):
        merged = by_rank[i]
        local = [
            (i, ranks[merged[:j]], ranks[merged[j:]], merged[:j], merged[j:])
            for j in range(1, len(merged))
            if merged[:j] in ranks and merged[j:] in ranks
        ]
        if not local:
            raise BadInput(
                f"tekken.json: vocabulary rank {i} ({merged!r}) is not the merge of two vocabulary tokens; "
                "llama.cpp's BPE needs every token above the 256 bytes to be one"
            )
        pairs += local
    pairs.sort(key=lambda p: (p[0], p[1], p[2]))
    return [f"{_space(text(left))} {_space(text(right))}" for _, _, _, left, right in pairs]


def _space(part: str) -> str:
    return "".join(chr(ord(c) + 256) if c == " " else c for c in part)


# --- the layout ----------------------------------------------------------------------------------------


class VoxtralGgufLayout:
    """Two files: llama.cpp's `llama` backbone and voxport's `voxtral_tts` audio file (module docstring).

    Built from params.json and tekken.json alone (no weights), so the streaming converter can write it
    from a lazily read checkpoint as well as the exporter from a loaded model."""

    name = "llama.cpp llama backbone + voxport voxtral_tts audio"

    def __init__(self, cfg: VoxtralConfig, tekken: Mapping[str, Any] | bytes | str | Path) -> None:
        self.cfg = cfg
        self.tekken = _tekken(tekken)
        self.state = state_shapes(tensor_shapes(cfg))

    def files(self, weights: Weights | None = None) -> list[LayoutFile]:
        return [self.text_file(), self.audio_file()]

    def text_file(self) -> LayoutFile:
        b = self.cfg.backbone
        arch = ARCH_TEXT

        def key(k: str) -> str:
            return k.format(arch=arch)

        meta: dict[str, MetaValue] = {
            Keys.General.TYPE: MetaValue("model", V.STRING),
            key(Keys.LLM.CONTEXT_LENGTH): MetaValue(
                int(self.cfg.raw.get("max_seq_len", DEFAULT_CONTEXT)), V.UINT32
            ),
            key(Keys.LLM.EMBEDDING_LENGTH): MetaValue(b.dim, V.UINT32),
            key(Keys.LLM.BLOCK_COUNT): MetaValue(b.n_layers, V.UINT32),
            key(Keys.LLM.FEED_FORWARD_LENGTH): MetaValue(b.hidden_dim, V.UINT32),
            key(Keys.LLM.VOCAB_SIZE): MetaValue(b.vocab_size, V.UINT32),
            key(Keys.Rope.DIMENSION_COUNT): MetaValue(b.head_dim, V.UINT32),
            key(Keys.Rope.FREQ_BASE): MetaValue(float(b.rope_theta), V.FLOAT32),
            key(Keys.Attention.HEAD_COUNT): MetaValue(b.n_heads, V.UINT32),
            key(Keys.Attention.HEAD_COUNT_KV): MetaValue(b.n_kv_heads, V.UINT32),
            key(Keys.Attention.KEY_LENGTH): MetaValue(b.head_dim, V.UINT32),
            key(Keys.Attention.VALUE_LENGTH): MetaValue(b.head_dim, V.UINT32),
            key(Keys.Attention.LAYERNORM_RMS_EPS): MetaValue(float(b.norm_eps), V.FLOAT32),
            **tekken_metadata(self.tekken, b.vocab_size),
        }
        tensors = [LayoutTensor(gguf_name, source) for source, gguf_name in backbone_names(self.cfg).items()]
        return LayoutFile("gguf", "", arch, meta, tensors)

    def audio_names(self) -> dict[str, str]:
        """voxport name -> file-(b) name for every weight the backbone file does not hold."""
        backbone = backbone_names(self.cfg)
        out = {name: audio_name(name) for name in self.state if name not in backbone}
        if len(set(out.values())) != len(out):
            raise RuntimeError("voxtral_tts gguf: two weights share a short name")
        return out

    def audio_file(self) -> LayoutFile:
        meta = {
            Keys.General.TYPE: MetaValue("model", V.STRING),
            CONFIG_KEY: MetaValue(json.dumps(self.cfg.raw, sort_keys=True), V.STRING),
        }
        tensors = [
            LayoutTensor(short, name, force="F16" if is_conv(name) else None)
            for name, short in self.audio_names().items()
        ]
        return LayoutFile(AUDIO_ROLE, AUDIO_SUFFIX, ARCH_AUDIO, meta, tensors)


def quantizable(cfg: VoxtralConfig) -> set[str]:
    """Weights a GGML quantized type may hold: every 2-D matrix (Linear layers and embedding tables).
    Norms, layer scales and convs (F16, 3-D) stay as they are."""
    return {name for name, shape in state_shapes(tensor_shapes(cfg)).items() if len(shape) == 2}


def layout_tensors(files: Iterable[LayoutFile]) -> dict[str, str]:
    """gguf name -> voxport name over every file (for checks and read-back)."""
    return {t.gguf_name: t.source or "" for f in files for t in f.tensors}


def config_from_metadata(meta: Mapping[str, Any]) -> VoxtralConfig:
    """The params.json an audio file embeds."""
    if CONFIG_KEY not in meta:
        raise BadInput(f"not a voxtral_tts audio GGUF: no {CONFIG_KEY}")
    return VoxtralConfig(json.loads(meta[CONFIG_KEY]))


__all__ = [
    "ARCH_AUDIO",
    "ARCH_TEXT",
    "VoxtralGgufLayout",
    "audio_name",
    "backbone_names",
    "quantizable",
    "tekken_metadata",
]
