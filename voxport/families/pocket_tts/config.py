"""Pocket TTS hyperparameters, kept in Kyutai's own config shape.

Kyutai ships one YAML per released model (`flow_lm:` backbone + flow head, `mimi:` codec, text and
generation defaults). voxport keeps that mapping as the single source of truth rather than inventing
a second schema: a Kyutai checkpoint's YAML loads as is, a checkpoint voxport saves carries a YAML
Kyutai's loader reads, and the transformers layout is translated into it. `PocketConfig` is a typed
view over the mapping for the values the adapter needs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from voxport.errors import BadInput

#: every released model: 32-d latents at 12.5 Hz over 24 kHz audio, a 4000-piece text vocabulary
LATENT_DIM = 32
FLOW_TYPES = ("lsd", "drifting", "pointwise")
#: llama.cpp's converter makes the same assumption when no config is given (every release uses 64)
DEFAULT_HEAD_DIM = 64
#: released codec transformers whose heads are not 64 wide: the small models' decoder (128 wide, 4 × 32)
CODEC_HEADS = {128: 4}
#: Kyutai's `Config.default_temperature`, for configs that do not set one (the 6-layer language YAMLs)
DEFAULT_TEMPERATURE = 0.3


@dataclass(frozen=True)
class Seanet:
    dimension: int
    n_filters: int
    ratios: tuple[int, ...]
    kernel_size: int
    residual_kernel_size: int
    last_kernel_size: int
    compress: int
    n_residual_layers: int
    dilation_base: int


@dataclass(frozen=True)
class CodecTransformer:
    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int
    context: int
    max_period: float

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def _seanet(d: Mapping[str, Any]) -> Seanet:
    if d.get("pad_mode", "constant") != "constant" or d.get("channels", 1) != 1:
        raise BadInput(
            f"unsupported SEANet codec (pad_mode {d.get('pad_mode')!r}, channels {d.get('channels')}): "
            "voxport handles the released mono, constant-padded codecs"
        )
    return Seanet(
        dimension=int(d["dimension"]),
        n_filters=int(d["n_filters"]),
        ratios=tuple(int(r) for r in d["ratios"]),
        kernel_size=int(d["kernel_size"]),
        residual_kernel_size=int(d["residual_kernel_size"]),
        last_kernel_size=int(d["last_kernel_size"]),
        compress=int(d["compress"]),
        n_residual_layers=int(d["n_residual_layers"]),
        dilation_base=int(d["dilation_base"]),
    )


def _codec_transformer(d: Mapping[str, Any]) -> CodecTransformer:
    dims = {int(d["d_model"]), int(d.get("input_dimension", d["d_model"]))}
    dims |= {int(x) for x in d.get("output_dimensions", [d["d_model"]])}
    if len(dims) != 1:
        raise BadInput("unsupported codec transformer: input/output projections are not in any release")
    return CodecTransformer(
        d_model=int(d["d_model"]),
        num_heads=int(d["num_heads"]),
        num_layers=int(d["num_layers"]),
        dim_feedforward=int(d["dim_feedforward"]),
        context=int(d["context"]),
        max_period=float(d.get("max_period", 10000.0)),
    )


class PocketConfig:
    """Typed view over a Kyutai config mapping; `raw` is what gets saved."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw: dict[str, Any] = copy.deepcopy(dict(raw))
        try:
            self._read()
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise BadInput(f"not a Pocket TTS config: missing or invalid {exc}") from None

    def _read(self) -> None:
        f, m = self.raw["flow_lm"], self.raw["mimi"]
        t = f["transformer"]
        self.d_model = int(t["d_model"])
        self.num_layers = int(t["num_layers"])
        self.num_heads = int(t["num_heads"])
        self.num_kv_heads = int(t.get("num_kv_heads") or t["num_heads"])
        self.attn_dim = int(t.get("attn_dim") or t["d_model"])
        if self.attn_dim % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("attention heads (attn_dim % num_heads, num_heads % num_kv_heads)")
        self.head_dim = self.attn_dim // self.num_heads
        self.ffn_dim = int(t.get("dim_feedforward") or self.d_model * int(t["hidden_scale"]))
        self.max_period = float(t["max_period"])
        self.z_dim = int(f["z_dim"]) if f.get("z_dim") else None
        lut = f["lookup_table"]
        self.n_bins = int(lut["n_bins"])
        self.lut_rank = int(lut["rank"]) if lut.get("rank") else None
        self.tokenizer_kind = str(lut.get("tokenizer", "sentencepiece"))
        flow = f["flow"]
        self.flow_type = str(flow.get("type", "lsd"))
        if self.flow_type not in FLOW_TYPES:
            raise ValueError(f"flow.type {self.flow_type!r} (supported: {', '.join(FLOW_TYPES)})")
        self.flow_dim = int(flow["dim"])
        self.flow_depth = int(flow["depth"])
        self.insert_bos_before_voice = bool(f.get("insert_bos_before_voice", False))
        self.sample_rate = int(m["sample_rate"])
        self.frame_rate = float(m["frame_rate"])
        self.latent_dim = int(m["quantizer"]["dimension"])
        self.outer_dim = int(m["quantizer"]["output_dimension"])
        self.encoder_seanet = _seanet(m["seanet"])
        self.encoder_transformer = _codec_transformer(m["transformer"])
        self.decoder_seanet = _seanet(m.get("decoder_seanet") or m["seanet"])
        self.decoder_transformer = _codec_transformer(m.get("decoder_transformer") or m["transformer"])
        self.inner_dim = int(m.get("inner_dim") or self.encoder_seanet.dimension)
        self.temperature = float(self.raw.get("default_temperature", DEFAULT_TEMPERATURE))
        self.eos_threshold = float(self.raw.get("default_eos_threshold", -4.0))
        hop = math.prod(self.decoder_seanet.ratios)
        if self.sample_rate % hop or (self.sample_rate / hop) % self.frame_rate:
            raise ValueError("mimi frame rate: sample_rate / prod(ratios) must be a multiple of frame_rate")
        #: transformer steps of the codec per latent frame (16 for every release)
        self.codec_steps = int(self.sample_rate / hop / self.frame_rate)
        self.frame_size = hop * self.codec_steps

    @property
    def condition_dim(self) -> int:
        """Width of what the backbone hands the flow and EOS heads (z_proj when present)."""
        return self.z_dim or self.d_model

    @property
    def text_options(self) -> dict[str, Any]:
        keys = (
            "pad_with_spaces_for_short_inputs",
            "remove_semicolons",
            "append_terminal_punctuation",
            "capitalize_first_letter",
            "replace_characters",
        )
        return {k: self.raw[k] for k in keys if k in self.raw}

    def describe(self) -> dict[str, Any]:
        return {
            "d_model": self.d_model,
            "layers": self.num_layers,
            "heads": self.num_heads,
            "kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "ffn": self.ffn_dim,
            "z_dim": self.z_dim,
            "lut_rank": self.lut_rank,
            "flow_head": f"{self.flow_type} dim {self.flow_dim} depth {self.flow_depth}",
            "codec_decoder": (
                f"SEANet {self.decoder_seanet.dimension}/{self.decoder_seanet.n_filters}, transformer "
                f"{self.decoder_transformer.d_model}×{self.decoder_transformer.num_layers} "
                f"window {self.decoder_transformer.context}"
            ),
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "temperature": self.temperature,
            "eos_threshold": self.eos_threshold,
        }


def _heads(what: str, width: int, head_dim: int) -> int:
    if width < head_dim or width % head_dim:
        raise BadInput(
            f"cannot tell the attention heads of {what} from the tensor shapes (width {width} is not a "
            f"multiple of the {head_dim}-wide heads of the releases); put the model's Kyutai YAML beside "
            "the weights as config.yaml"
        )
    return width // head_dim


def infer_config(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """A Kyutai config read off a checkpoint's tensor shapes, for a `model.safetensors` without its YAML.

    Head counts are not in the shapes: like llama.cpp's converter, assume 64-wide heads (true of
    every release's flow LM and 512-wide codec; the small releases' 128-wide codec decoder has 4 heads
    of 32, `CODEC_HEADS`); the SEANet layout (ratios 6/5/4, one residual block) is the released one.
    Shapes that fit no such head count are refused rather than guessed."""

    def shape(name: str) -> tuple[int, ...]:
        if name not in tensors:
            raise BadInput(f"not a Pocket TTS checkpoint: tensor {name} is missing")
        return tuple(tensors[name].shape)

    d_model = shape("flow_lm.out_norm.weight")[0]
    layers = 1 + max(
        (int(k.split(".")[3]) for k in tensors if k.startswith("flow_lm.transformer.layers.")), default=-1
    )
    attn_dim = shape("flow_lm.transformer.layers.0.self_attn.out_proj.weight")[1]
    qkv = shape("flow_lm.transformer.layers.0.self_attn.in_proj.weight")[0]
    heads = _heads("the flow LM", attn_dim, DEFAULT_HEAD_DIM)
    kv_heads = _heads("the flow LM's keys/values", (qkv - attn_dim) // 2, DEFAULT_HEAD_DIM)
    z = shape("flow_lm.z_proj.weight")[0] if "flow_lm.z_proj.weight" in tensors else None
    rank = (
        shape("flow_lm.conditioner.embed.weight")[1] if "flow_lm.conditioner.proj.weight" in tensors else None
    )
    n_time = sum(1 for k in tensors if k.startswith("flow_lm.flow_net.time_embed.") and k.endswith(".freqs"))
    # drifting and pointwise heads have the same tensors; only the 2M release is pointwise
    flow_type = "lsd" if n_time == 2 else "drifting"
    flow_dim = shape("flow_lm.flow_net.input_proj.weight")[0]
    depth = 1 + max(
        (int(k.split(".")[3]) for k in tensors if k.startswith("flow_lm.flow_net.res_blocks.")), default=-1
    )
    if depth < 1:
        raise BadInput("not a Pocket TTS checkpoint: the flow head has no res_blocks")

    def seanet(prefix: str, decoder: bool) -> dict[str, Any]:
        first = shape(f"{prefix}.model.0.conv.weight")
        last = shape(f"{prefix}.model.11.conv.weight")
        n_filters = first[0] if not decoder else last[1]
        return {
            "dimension": first[1] if decoder else last[0],
            "channels": 1,
            "n_filters": n_filters,
            "n_residual_layers": 1,
            "ratios": [6, 5, 4],
            "kernel_size": first[2],
            "residual_kernel_size": shape(f"{prefix}.model.{3 if decoder else 1}.block.1.conv.weight")[2],
            "last_kernel_size": last[2],
            "dilation_base": 2,
            "pad_mode": "constant",
            "compress": 2,
        }

    def transformer(prefix: str, context: int) -> dict[str, Any]:
        d = shape(f"{prefix}.transformer.layers.0.norm1.weight")[0]
        n = 1 + max(int(k.split(".")[4]) for k in tensors if k.startswith(f"{prefix}.transformer.layers."))
        heads = CODEC_HEADS[d] if d in CODEC_HEADS else _heads(prefix, d, DEFAULT_HEAD_DIM)
        return {
            "d_model": d,
            "num_heads": heads,
            "num_layers": n,
            "layer_scale": 0.01,
            "context": context,
            "dim_feedforward": shape(f"{prefix}.transformer.layers.0.linear1.weight")[0],
            "input_dimension": d,
            "output_dimensions": [d],
        }

    latent, outer = (
        shape("mimi.quantizer.output_proj.weight")[1],
        shape("mimi.quantizer.output_proj.weight")[0],
    )
    has_encoder = "mimi.encoder.model.0.conv.weight" in tensors
    decoder = {
        "decoder_seanet": seanet("mimi.decoder", True),
        "decoder_transformer": transformer("mimi.decoder_transformer", 250 if outer >= 512 else 50),
    }
    mimi: dict[str, Any] = {
        "dtype": "float32",
        "sample_rate": 24000,
        "channels": 1,
        "frame_rate": 12.5,
        "quantizer": {"dimension": latent, "output_dimension": outer},
        "inner_dim": shape("mimi.downsample.conv.conv.weight")[0] if has_encoder else latent,
        "outer_dim": outer,
        **decoder,
    }
    if has_encoder:
        mimi["seanet"] = seanet("mimi.encoder", False)
        mimi["transformer"] = transformer("mimi.encoder_transformer", 250)
    else:
        mimi["seanet"], mimi["transformer"] = decoder["decoder_seanet"], decoder["decoder_transformer"]
    return {
        "flow_lm": {
            "dtype": "float32",
            "insert_bos_before_voice": "flow_lm.bos_before_voice" in tensors,
            "flow": {"dim": flow_dim, "depth": depth, "type": flow_type},
            "transformer": {
                "d_model": d_model,
                "hidden_scale": 1,
                "max_period": 10000,
                "num_heads": heads,
                "num_layers": layers,
                "attn_dim": attn_dim,
                "num_kv_heads": kv_heads,
                "dim_feedforward": shape("flow_lm.transformer.layers.0.linear1.weight")[0],
            },
            "lookup_table": {
                "dim": d_model,
                "n_bins": shape("flow_lm.conditioner.embed.weight")[0] - 1,
                "tokenizer": "sentencepiece",
                "tokenizer_path": "tokenizer.model",
                "rank": rank,
            },
            "z_dim": z,
        },
        "mimi": mimi,
        "default_temperature": DEFAULT_TEMPERATURE,
        "default_eos_threshold": -4.0,
    }
