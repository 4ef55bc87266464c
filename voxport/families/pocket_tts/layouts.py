"""The two checkpoint layouts of Pocket TTS and the mapping between them.

- **Kyutai** (what people download, and what llama.cpp's converter reads): a directory with one
  `model.safetensors` holding `flow_lm.*` and `mimi.*`, Kyutai's YAML config, `tokenizer.model`
  (sentencepiece) or `tokenizer.json`. These are voxport's own weight names too.
- **transformers** (`PocketTTSForConditionalGeneration` + `PocketTTSAudioTokenizerModel`): a model
  directory (`config.json` with `model_type: pocket_tts`, `model.safetensors`) and its audio tokenizer
  as the `audio_tokenizer/` subdirectory (where voxport looks for it; pass the tokenizer directory
  explicitly otherwise). It cannot express the 2M/7M/18M backbones (low-rank table, `z_proj`).

Differences beyond renaming: Kyutai fuses q|k|v into `in_proj`; transformers rotates q/k halves
where Kyutai rotates interleaved pairs, so q/k rows are permuted per head; the text table has 4 extra
rows in transformers (row 4002 holds Kyutai's `bos_before_voice`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from voxport.errors import BadInput
from voxport.families.pocket_tts.config import DEFAULT_TEMPERATURE

#: transformers' special rows appended to the 4001-row text table
AUDIO_PROMPT_BOS_ROW = 4002


def _half_order(head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])


def interleaved_to_half(w: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """q/k rows per head: (r0, i0, r1, i1, ...) → (r0, r1, ..., i0, i1, ...)."""
    return w.reshape(heads, head_dim, -1)[:, _half_order(head_dim)].reshape(heads * head_dim, -1)


def half_to_interleaved(w: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    inverse = torch.argsort(_half_order(head_dim))
    return w.reshape(heads, head_dim, -1)[:, inverse].reshape(heads * head_dim, -1)


_LAYER = {
    "self_attn.o_proj": "self_attn.out_proj",
    "mlp.fc1": "linear1",
    "mlp.fc2": "linear2",
    "input_layernorm": "norm1",
    "post_attention_layernorm": "norm2",
    "self_attn_layer_scale": "layer_scale_1",
    "mlp_layer_scale": "layer_scale_2",
}
_FLOW = [
    (r"timestep_embeddings\.(\d+)\.fc1\.", r"time_embed.\1.mlp.0."),
    (r"timestep_embeddings\.(\d+)\.fc2\.", r"time_embed.\1.mlp.2."),
    (r"timestep_embeddings\.(\d+)\.norm\.weight", r"time_embed.\1.mlp.3.alpha"),
    (r"timestep_embeddings\.(\d+)\.freqs", r"time_embed.\1.freqs"),
    (r"^cond_proj\.", "cond_embed."),
    (r"layers\.(\d+)\.norm\.", r"res_blocks.\1.in_ln."),
    (r"layers\.(\d+)\.fc1\.", r"res_blocks.\1.mlp.0."),
    (r"layers\.(\d+)\.fc2\.", r"res_blocks.\1.mlp.2."),
    (r"layers\.(\d+)\.adaln_proj\.", r"res_blocks.\1.adaLN_modulation.1."),
    (r"^final_layer\.proj\.", "final_layer.linear."),
    (r"^final_layer\.adaln_proj\.", "final_layer.adaLN_modulation.1."),
]
_FLOW_LM_SIMPLE = {
    "model.audio_latent_proj.weight": "input_linear.weight",
    "model.audio_prompt_proj.weight": "speaker_proj_weight",
    "model.bos_latent": "bos_emb",
    "latent_mean": "emb_mean",
    "latent_std": "emb_std",
    "model.norm.weight": "out_norm.weight",
    "model.norm.bias": "out_norm.bias",
    "eos_head.weight": "out_eos.weight",
    "eos_head.bias": "out_eos.bias",
}
#: transformers tensors that only training uses
TRAINING_ONLY = ("loss_weighting.", "latent_stats_num_updates")


def _fuse_qkv(
    prefix: str, tensors: Mapping[str, torch.Tensor], heads: int, kv_heads: int, head_dim: int
) -> torch.Tensor:
    q = half_to_interleaved(tensors[f"{prefix}.q_proj.weight"], heads, head_dim)
    k = half_to_interleaved(tensors[f"{prefix}.k_proj.weight"], kv_heads, head_dim)
    return torch.cat([q, k, tensors[f"{prefix}.v_proj.weight"]], dim=0)


def flow_lm_from_transformers(
    tensors: Mapping[str, torch.Tensor], *, heads: int, kv_heads: int, head_dim: int, n_bins: int
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if name.startswith(TRAINING_ONLY) or re.search(r"\.(q|k|v)_proj\.weight$", name):
            continue
        m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if m:
            i, rest = m.groups()
            for old, new in _LAYER.items():
                rest = rest.replace(old, new)
            out[f"flow_lm.transformer.layers.{i}.{rest}"] = value
        elif name.startswith("flow_head."):
            rest = name[len("flow_head.") :]
            for pattern, repl in _FLOW:
                rest = re.sub(pattern, repl, rest)
            out[f"flow_lm.flow_net.{rest}"] = value
        elif name in _FLOW_LM_SIMPLE:
            out[f"flow_lm.{_FLOW_LM_SIMPLE[name]}"] = value
        elif name == "model.embed_tokens.weight":
            out["flow_lm.conditioner.embed.weight"] = value[: n_bins + 1]
            out["flow_lm.bos_before_voice"] = value[AUDIO_PROMPT_BOS_ROW].reshape(1, 1, -1)
        else:
            raise BadInput(f"unexpected tensor {name} in a transformers Pocket TTS checkpoint")
    layers = {m.group(1) for n in tensors if (m := re.match(r"model\.layers\.(\d+)\.self_attn\.q_proj", n))}
    for i in layers:
        out[f"flow_lm.transformer.layers.{i}.self_attn.in_proj.weight"] = _fuse_qkv(
            f"model.layers.{i}.self_attn", tensors, heads, kv_heads, head_dim
        )
    return out


def mimi_from_transformers(
    tensors: Mapping[str, torch.Tensor], kyutai_names: set[str], *, heads: int, head_dim: int
) -> dict[str, torch.Tensor]:
    """The audio tokenizer's tensors under Kyutai's `mimi.*` names (`kyutai_names` resolves whether a
    SEANet layer is a conv or a transposed conv, which transformers names alike)."""
    out: dict[str, torch.Tensor] = {}
    simple = {
        "latent_proj.weight": "mimi.quantizer.output_proj.weight",
        "encoder.downsample.conv.weight": "mimi.downsample.conv.conv.weight",
        "decoder.upsample.conv.weight": "mimi.upsample.convtr.convtr.weight",
    }
    for name, value in tensors.items():
        if re.search(r"\.(q|k|v)_proj\.weight$", name):
            continue
        m = re.match(r"(encoder|decoder)\.\1_transformer\.layers\.(\d+)\.(.*)", name)
        if m:
            side, i, rest = m.groups()
            for old, new in _LAYER.items():
                rest = rest.replace(old, new)
            out[f"mimi.{side}_transformer.transformer.layers.{i}.{rest}"] = value
            continue
        m = re.match(r"(encoder|decoder)\.\1_seanet\.layers\.(\d+)\.(.*)", name)
        if m:
            side, i, rest = m.groups()
            candidate = f"mimi.{side}.model.{i}.{rest}"
            if candidate not in kyutai_names:
                candidate = f"mimi.{side}.model.{i}.{rest.replace('conv.', 'convtr.', 1)}"
            out[candidate] = value
        elif name in simple:
            out[simple[name]] = value
        else:
            raise BadInput(f"unexpected tensor {name} in a transformers Pocket TTS audio tokenizer")
    for side in ("encoder", "decoder"):
        layers = {
            m.group(1)
            for n in tensors
            if (m := re.match(rf"{side}\.{side}_transformer\.layers\.(\d+)\.self_attn\.q_proj", n))
        }
        for i in layers:
            out[f"mimi.{side}_transformer.transformer.layers.{i}.self_attn.in_proj.weight"] = _fuse_qkv(
                f"{side}.{side}_transformer.layers.{i}.self_attn", tensors, heads, heads, head_dim
            )
    return out


def config_from_transformers(model: Mapping[str, Any], codec: Mapping[str, Any]) -> dict[str, Any]:
    """A Kyutai config mapping equivalent to the two transformers configs."""
    flow = model.get("flow_head_config") or {}
    if flow.get("flow_type", "lsd") not in ("lsd", "drifting"):
        raise BadInput(f"unsupported flow_type {flow.get('flow_type')!r} in the transformers config")
    hidden = int(model["hidden_size"])
    heads = int(model["num_attention_heads"])
    head_dim = int(model.get("head_dim") or hidden // heads)
    seanet = {
        "dimension": int(codec["hidden_size"]),
        "channels": int(codec.get("audio_channels", 1)),
        "n_filters": int(codec["num_filters"]),
        "n_residual_layers": int(codec.get("num_residual_layers", 1)),
        "ratios": list(codec["upsampling_ratios"]),
        "kernel_size": int(codec["kernel_size"]),
        "residual_kernel_size": int(codec["residual_kernel_size"]),
        "last_kernel_size": int(codec["last_kernel_size"]),
        "dilation_base": int(codec.get("dilation_growth_rate", 2)),
        "pad_mode": codec.get("pad_mode", "constant"),
        "compress": int(codec.get("compress", 2)),
    }
    d = int(codec["hidden_size"])
    transformer = {
        "d_model": d,
        "num_heads": int(codec["num_attention_heads"]),
        "num_layers": int(codec["num_hidden_layers"]),
        "layer_scale": float(codec.get("layer_scale_initial_scale", 0.01)),
        "context": int(codec["sliding_window"]),
        "max_period": float((codec.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
        "dim_feedforward": int(codec["intermediate_size"]),
        "input_dimension": d,
        "output_dimensions": [d],
    }
    latent = int(codec.get("latent_dim", model.get("latent_dim", 32)))
    return {
        "flow_lm": {
            "dtype": "float32",
            "insert_bos_before_voice": True,
            "flow": {
                "dim": int(flow.get("hidden_size", 512)),
                "depth": int(flow.get("num_hidden_layers", 6)),
                "type": flow.get("flow_type", "lsd"),
            },
            "transformer": {
                "d_model": hidden,
                "hidden_scale": 1,
                "max_period": float((model.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
                "num_heads": heads,
                "num_layers": int(model["num_hidden_layers"]),
                "attn_dim": heads * head_dim,
                "num_kv_heads": int(model.get("num_key_value_heads") or heads),
                "dim_feedforward": int(model["intermediate_size"]),
            },
            "lookup_table": {
                "dim": hidden,
                "n_bins": int(model.get("audio_prompt_token_id", 4000)),
                "tokenizer": "sentencepiece",
                "tokenizer_path": "tokenizer.model",
                "rank": None,
            },
            "z_dim": None,
        },
        "mimi": {
            "dtype": "float32",
            "sample_rate": int(codec.get("sampling_rate", 24000)),
            "channels": 1,
            "frame_rate": float(model.get("frame_rate", 12.5)),
            "seanet": seanet,
            "transformer": transformer,
            "quantizer": {"dimension": latent, "output_dimension": d},
            "inner_dim": latent,
            "outer_dim": d,
        },
        "default_temperature": DEFAULT_TEMPERATURE,
        "default_eos_threshold": -4.0,
    }


def to_transformers(
    tensors: Mapping[str, torch.Tensor],
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
    codec_heads: int,
    codec_head_dim: int,
    vocab: int = 4004,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Kyutai names → (transformers model tensors, audio tokenizer tensors); the inverse mapping, so
    a round trip is testable and a checkpoint can be handed to transformers users."""
    model: dict[str, torch.Tensor] = {}
    codec: dict[str, torch.Tensor] = {}
    inv_layer = {v: k for k, v in _LAYER.items()}
    inv_simple = {v: k for k, v in _FLOW_LM_SIMPLE.items()}

    def layer(prefix: str, rest: str, value: torch.Tensor, h: int, hkv: int, hd: int, into: dict) -> None:
        if rest == "self_attn.in_proj.weight":
            q, k, v = value.split([h * hd, hkv * hd, hkv * hd], dim=0)
            into[f"{prefix}.self_attn.q_proj.weight"] = interleaved_to_half(q, h, hd)
            into[f"{prefix}.self_attn.k_proj.weight"] = interleaved_to_half(k, hkv, hd)
            into[f"{prefix}.self_attn.v_proj.weight"] = v
            return
        for new, old in inv_layer.items():
            rest = rest.replace(new, old)
        into[f"{prefix}.{rest}"] = value

    for name, value in tensors.items():
        if m := re.match(r"flow_lm\.transformer\.layers\.(\d+)\.(.*)", name):
            layer(f"model.layers.{m.group(1)}", m.group(2), value, heads, kv_heads, head_dim, model)
        elif name.startswith("flow_lm.flow_net."):
            rest = name[len("flow_lm.flow_net.") :]
            rest = re.sub(r"time_embed\.(\d+)\.mlp\.0\.", r"timestep_embeddings.\1.fc1.", rest)
            rest = re.sub(r"time_embed\.(\d+)\.mlp\.2\.", r"timestep_embeddings.\1.fc2.", rest)
            rest = re.sub(r"time_embed\.(\d+)\.mlp\.3\.alpha", r"timestep_embeddings.\1.norm.weight", rest)
            rest = re.sub(r"time_embed\.(\d+)\.freqs", r"timestep_embeddings.\1.freqs", rest)
            rest = re.sub(r"^cond_embed\.", "cond_proj.", rest)
            rest = re.sub(r"res_blocks\.(\d+)\.in_ln\.", r"layers.\1.norm.", rest)
            rest = re.sub(r"res_blocks\.(\d+)\.mlp\.0\.", r"layers.\1.fc1.", rest)
            rest = re.sub(r"res_blocks\.(\d+)\.mlp\.2\.", r"layers.\1.fc2.", rest)
            rest = re.sub(r"res_blocks\.(\d+)\.adaLN_modulation\.1\.", r"layers.\1.adaln_proj.", rest)
            rest = re.sub(r"^final_layer\.linear\.", "final_layer.proj.", rest)
            rest = re.sub(r"^final_layer\.adaLN_modulation\.1\.", "final_layer.adaln_proj.", rest)
            model[f"flow_head.{rest}"] = value
        elif name.removeprefix("flow_lm.") in inv_simple:
            model[inv_simple[name.removeprefix("flow_lm.")]] = value
        elif name in ("flow_lm.conditioner.embed.weight", "flow_lm.bos_before_voice"):
            continue
        elif name.startswith(("flow_lm.conditioner.proj", "flow_lm.z_proj")):
            raise BadInput(f"{name}: the transformers layout has no low-rank text table or z_proj")
        elif m := re.match(r"mimi\.(encoder|decoder)_transformer\.transformer\.layers\.(\d+)\.(.*)", name):
            side, i, rest = m.groups()
            layer(
                f"{side}.{side}_transformer.layers.{i}",
                rest,
                value,
                codec_heads,
                codec_heads,
                codec_head_dim,
                codec,
            )
        elif m := re.match(r"mimi\.(encoder|decoder)\.model\.(\d+)\.(.*)", name):
            side, i, rest = m.groups()
            codec[f"{side}.{side}_seanet.layers.{i}.{rest.replace('convtr.', 'conv.', 1)}"] = value
        elif name == "mimi.quantizer.output_proj.weight":
            codec["latent_proj.weight"] = value
        elif name == "mimi.downsample.conv.conv.weight":
            codec["encoder.downsample.conv.weight"] = value
        elif name == "mimi.upsample.convtr.convtr.weight":
            codec["decoder.upsample.conv.weight"] = value
        else:
            raise BadInput(f"{name}: no transformers equivalent")
    embed = tensors["flow_lm.conditioner.embed.weight"]
    table = torch.zeros(vocab, embed.shape[1], dtype=embed.dtype)
    table[: embed.shape[0]] = embed
    if "flow_lm.bos_before_voice" in tensors:
        table[AUDIO_PROMPT_BOS_ROW] = tensors["flow_lm.bos_before_voice"].reshape(-1)
    model["model.embed_tokens.weight"] = table
    return model, codec
