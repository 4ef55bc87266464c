"""Reading and writing Kokoro checkpoints: voxport's directory, hexgrad's .pth, the published ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.families.checkpoint import PICKLE_SUFFIXES, find_weights_file, load_tensors
from voxport.families.kokoro.checkpoint import MARKER
from voxport.families.kokoro.model import KokoroModel, build
from voxport.io import atomic_path

CONFIG = Path(__file__).with_name("data") / "config.json"


def default_config() -> dict[str, Any]:
    """Kokoro v1.0's config.json (hexgrad/Kokoro-82M, Apache-2.0), bundled with voxport."""
    loaded: dict[str, Any] = json.loads(CONFIG.read_text())
    return loaded


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a readable Kokoro config ({exc})") from None
    if not isinstance(data, dict) or "istftnet" not in data or "vocab" not in data:
        raise BadInput(f"{path}: not a Kokoro config (no 'istftnet' or 'vocab')")
    return data


def _flatten_pth(nested: dict[str, Any]) -> dict[str, torch.Tensor]:
    """hexgrad's .pth: {submodule: {name: tensor}} → flat KModel names."""
    flat: dict[str, torch.Tensor] = {}
    for top, sub in nested.items():
        if isinstance(sub, torch.Tensor):
            flat[top] = sub
            continue
        for name, tensor in sub.items():
            flat[f"{top}.{name.removeprefix('module.')}"] = tensor
    return flat


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> KokoroModel:
    """A Kokoro directory (model.safetensors or hexgrad's .pth, config.json, voices.npz) or a weights file
    inside one."""
    directory = path if path.is_dir() else path.parent
    config = _read_config(directory / "config.json")
    weights_file = find_weights_file(directory) if path.is_dir() else path
    if weights_file.suffix.lower() in PICKLE_SUFFIXES:
        raw: Any = load_tensors(weights_file, trust_pickle=trust_pickle)
        tensors = _flatten_pth(raw) if any(isinstance(v, dict) for v in raw.values()) else raw
    else:
        tensors = load_tensors(weights_file, trust_pickle=trust_pickle)
    voices_file = directory / "voices.npz"
    if not voices_file.is_file():
        raise BadInput(f"{directory}: no voices.npz beside the weights (Kokoro needs its style presets)")
    marker: dict[str, Any] = {}
    if (directory / MARKER).is_file():
        marker = json.loads((directory / MARKER).read_text())
    from voxport.families.kokoro.source import read_voices

    return build(
        config,
        tensors,
        read_voices(voices_file),
        source=str(path),
        provenance=str(marker.get("provenance", "")),
    )


def import_published(onnx_path: Path, voices_path: Path, out_dir: Path) -> Path:
    """The published int8 graph as a checkpoint directory, written through a temporary sibling."""
    from voxport.families.kokoro.importer import PROVENANCE, published_weights
    from voxport.families.kokoro.source import read_voices

    if not onnx_path.is_file():
        raise BadInput(f"{onnx_path}: no such file; give Kokoro's .onnx (see the README's Kokoro section)")
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MARKER).is_file())
    ):
        raise BadInput(
            f"{out_dir}: exists and is not an empty directory or a voxport checkpoint; choose another"
        )
    voices = read_voices(Path(voices_path))
    config = default_config()
    model = build(
        config,
        published_weights(onnx_path, config),
        voices,
        source=f"kokoro-onnx:{onnx_path}",
        provenance=PROVENANCE,
    )
    _check_voices(voices, model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        model.save(tmp)
    return out_dir


def _check_voices(voices: dict[str, np.ndarray], model: KokoroModel) -> None:
    width = 2 * model.net.style_dim
    for name, pack in voices.items():
        if pack.shape[-1] != width:
            raise BadInput(f"voice {name!r} has style width {pack.shape[-1]}, this Kokoro needs {width}")
