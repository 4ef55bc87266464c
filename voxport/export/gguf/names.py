"""Reversible short tensor names for GGUF.

ggml keeps a tensor name in a fixed 64-byte buffer (``GGML_MAX_NAME``, terminating NUL included), so a
name must be at most 63 bytes; gguf-py does not check. Piper/transformers VITS names reach about 100
bytes (``duration_predictor.flows.3.conv_dds.convs_pointwise.2.weight``), so voxport shortens them with
a fixed abbreviation table applied to whole dot-separated tokens (or runs of tokens), longest run first:

    duration_predictor.flows.3.conv_dds.convs_pointwise.2.weight  ->  dp.fl.3.dds.pw.2.weight

``from_gguf`` expands every abbreviated token back. Tokens that are not in the table pass through, so a
name only fails to round-trip when it literally contains one of the short forms (e.g. a module named
``dec``); ``to_gguf`` checks the round trip and the length and raises ``ValueError`` either way, so a
file never holds a name voxport cannot map back. The table is part of the file format: changing an
entry needs a new ``NAMING_VERSION`` (written to ``voxport.naming_version``). Version 2 only added entries
(ALBERT's, for Kokoro), so a version-1 file reads the same through it: the reader accepts both.
"""

from __future__ import annotations

NAMING_VERSION = 2
#: versions `from_gguf` reads correctly: each later table only added entries to the earlier ones
READABLE_VERSIONS = frozenset({1, 2})
MAX_NAME_BYTES = 63  # GGML_MAX_NAME (64) minus the terminating NUL

#: voxport (torch state_dict) token run -> GGUF token; documented in docs/gguf-layout.md
ABBREVIATIONS: dict[str, str] = {
    # text encoder
    "text_encoder": "enc",
    "encoder.layers": "blk",
    "embed_tokens": "tok_emb",
    "attention": "attn",
    "emb_rel_k": "rel_k",
    "emb_rel_v": "rel_v",
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "out_proj": "o",
    "feed_forward": "ffn",
    "final_layer_norm": "ln2",
    "layer_norm": "ln1",
    "project": "prj",
    # duration predictor
    "duration_predictor": "dp",
    "flow.flows": "flow",
    "flows": "fl",
    "conv_dds": "dds",
    "convs_dilated": "dil",
    "convs_pointwise": "pw",
    "norms_1": "n1",
    "norms_2": "n2",
    "log_scale": "logs",
    "translate": "tr",
    # shared conv names
    "conv_pre": "pre",
    "conv_post": "post",
    "conv_proj": "proj",
    # flow (WaveNet coupling layers)
    "wavenet": "wn",
    "in_layers": "in",
    "res_skip_layers": "rs",
    "cond_layer": "cond",
    # HiFi-GAN decoder
    "decoder": "dec",
    "upsampler": "up",
    "resblocks": "rb",
    "convs1": "c1",
    "convs2": "c2",
    "convs": "c",
    # speakers
    "embed_speaker": "spk_emb",
    # ALBERT (Kokoro's PL-BERT): 79-byte names such as
    # bert.encoder.albert_layer_groups.0.albert_layers.0.full_layer_layer_norm.weight (version 2)
    "albert_layer_groups": "agrp",
    "albert_layers": "alyr",
    # ALBERT's up-projection is a module literally named `ffn`, VITS' short form of `feed_forward`: it
    # gets a short form of its own (llama.cpp's name for the up-projection) so both names round-trip
    "ffn": "ffn_up",
}

_FORWARD: list[tuple[tuple[str, ...], str]] = sorted(
    ((tuple(k.split(".")), v) for k, v in ABBREVIATIONS.items()), key=lambda kv: -len(kv[0])
)
_REVERSE: dict[str, str] = {v: k for k, v in ABBREVIATIONS.items()}
assert len(_REVERSE) == len(ABBREVIATIONS), "GGUF abbreviations must be distinct"


def _shorten(name: str) -> str:
    tokens = name.split(".")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for run, short in _FORWARD:
            if tuple(tokens[i : i + len(run)]) == run:
                out.append(short)
                i += len(run)
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


def _expand(name: str) -> str:
    return ".".join(_REVERSE.get(token, token) for token in name.split("."))


def to_gguf(name: str) -> str:
    """The GGUF tensor name for a voxport weight name; ValueError if too long or not reversible."""
    short = _shorten(name)
    if len(short.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(
            f"tensor name {name!r} is {len(short.encode('utf-8'))} bytes as {short!r} in GGUF; "
            f"ggml allows at most {MAX_NAME_BYTES}"
        )
    if _expand(short) != name:
        raise ValueError(
            f"tensor name {name!r} would not round-trip through the GGUF abbreviations "
            f"({short!r} reads back as {_expand(short)!r}): it contains a reserved short token"
        )
    return short


def from_gguf(name: str) -> str:
    """The voxport weight name for a GGUF tensor name written by `to_gguf`."""
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"GGUF tensor name {name!r} is longer than {MAX_NAME_BYTES} bytes")
    full = _expand(name)
    if _shorten(full) != name:
        raise ValueError(f"GGUF tensor name {name!r} is not in voxport's naming scheme")
    return full
