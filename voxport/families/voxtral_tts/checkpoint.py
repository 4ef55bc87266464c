"""Mistral's consolidated layout in and out: weight norm folded on the way in, unfolded on the way out.

On disk the codec's convolutions are weight-normed (`conv.parametrizations.weight.original0` = g,
`original1` = v, torch's `weight_norm` over dim 0) and the VQ codebook is kept as running sums
(`cluster_usage`, `embedding_sum`); inference reads only `g · v / ‖v‖` and `embedding_sum / usage`,
so voxport's state dict holds those (`conv.weight`, `semantic_codebook.embedding`) and quantizes what
the graphs actually multiply by. Saving writes the layout back with g = ‖w‖ and usage = 1, which
folds to the same values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from voxport.errors import BadInput
from voxport.families.voxtral_tts.config import VoxtralConfig

G, V = "conv.parametrizations.weight.original0", "conv.parametrizations.weight.original1"
USAGE, SUMS = "quantizer.semantic_codebook.cluster_usage", "quantizer.semantic_codebook.embedding_sum"
EMBEDDING = "quantizer.semantic_codebook.embedding"
#: the reference clamps the usage counts before dividing
MIN_USAGE = 1e-5
PARAMS, WEIGHTS, TEKKEN, VOICES = "params.json", "consolidated.safetensors", "tekken.json", "voice_embedding"
#: tensors a checkpoint may carry that the decoder side never reads: the codec's encoder (voice
#: cloning from audio, which this family does not run) and the head's recomputable time frequencies
IGNORED_PREFIXES = ("audio_tokenizer.", "acoustic_transformer.time_embedding.")


def weight_norm_fold(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
    return v * (g / norm)


def fold_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint names → voxport's (float32): weight norm and the codebook's sums folded."""
    out: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if name.endswith(V) or name.endswith(USAGE):
            continue
        if name.endswith(G):
            prefix = name[: -len(G)]
            if prefix + V not in tensors:
                raise BadInput(f"{name} has no matching {prefix + V}")
            out[prefix + "conv.weight"] = weight_norm_fold(value.float(), tensors[prefix + V].float())
        elif name.endswith(SUMS):
            prefix = name[: -len(SUMS)]
            usage = tensors.get(prefix + USAGE)
            if usage is None:
                raise BadInput(f"{name} has no matching {prefix + USAGE}")
            out[prefix + EMBEDDING] = value.float() / usage.float().clamp(min=MIN_USAGE)[:, None]
        else:
            out[name] = value.float()
    return out


def unfold_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """voxport's names → the checkpoint's, folding back to exactly `state`."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name.endswith("conv.weight"):
            prefix = name[: -len("conv.weight")]
            out[prefix + G] = value.flatten(1).norm(dim=1).reshape(-1, *([1] * (value.dim() - 1)))
            out[prefix + V] = value
        elif name.endswith(EMBEDDING):
            prefix = name[: -len(EMBEDDING)]
            out[prefix + SUMS] = value
            out[prefix + USAGE] = torch.ones(value.shape[0])
        else:
            out[name] = value
    return out


def checkpoint_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def read_params(directory: Path) -> VoxtralConfig:
    file = directory / PARAMS
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise BadInput(
            f"{directory}: no {PARAMS} (a Voxtral TTS checkpoint keeps its config there)"
        ) from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{file}: not readable JSON ({exc}); re-download it") from None
    if not isinstance(raw, dict):
        raise BadInput(f"{file}: expected a JSON object")
    try:
        cfg = VoxtralConfig(raw)
        cfg.check(str(file))
        _ = cfg.backbone, cfg.head, cfg.codec
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{file}: missing or malformed key {exc} for Voxtral TTS") from None
    return cfg


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of consolidated.safetensors as stored (BF16 on release), one read at a time."""
    from safetensors import SafetensorError, safe_open

    if not file.is_file():
        raise BadInput(f"{file.parent}: no {WEIGHTS} beside {PARAMS}")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(f"{file}: not a readable safetensors file ({exc}); re-download it") from None


def read_marker(directory: Path) -> dict[str, Any]:
    marker = directory / "voxport.json"
    if not marker.is_file():
        return {}
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
