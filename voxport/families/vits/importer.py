"""Write a Piper voice (its ONNX, or a training .ckpt) as a voxport VITS checkpoint directory.

The reading and renaming is in piper_import.py (see its docstring); this module only adds the
writing: an empty or earlier-voxport `out_dir`, filled through a temporary sibling and renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from voxport.errors import BadInput
from voxport.families.vits.model import MARKER, VitsModelAdapter
from voxport.families.vits.piper_import import (
    PiperWeights,
    _read_voice_json,
    build_model,
    read_piper_checkpoint,
    read_piper_onnx,
)
from voxport.io import atomic_path, atomic_write_bytes


def _prepare_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an empty directory or an earlier voxport output."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise BadInput(f"{out_dir}: exists and is not a directory; choose another output path")
        if any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
            raise BadInput(f"{out_dir}: not empty and not a voxport checkpoint; refusing to replace it")


def _write(
    weights: PiperWeights, voice_bytes: bytes, voice: dict[str, Any], source: Path, kind: str, out_dir: Path
) -> Path:
    model = build_model(weights, voice, source)
    adapter = VitsModelAdapter(model, source=f"{kind}:{source}", tokenizer_files={})
    # Written into a temporary sibling and renamed at the end: no half-finished out_dir on failure.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        adapter.save(tmp)
        atomic_write_bytes(tmp / "piper.json", voice_bytes)
        card = source.with_name("MODEL_CARD")  # a voice package's card: the license GGUF files declare
        if card.is_file():
            atomic_write_bytes(tmp / "MODEL_CARD", card.read_bytes())
    return out_dir


def import_piper_onnx(onnx_path: Path, config_path: Path | None, out_dir: Path) -> Path:
    """Recover a Piper voice's VITS weights from its ONNX and write them as a voxport checkpoint.

    `config_path` defaults to the voice's `<onnx>.json`. Writes out_dir/{config.json,
    model.safetensors, voxport.json, piper.json} and returns out_dir."""
    onnx_path = Path(onnx_path)
    config_path = (
        Path(config_path) if config_path is not None else onnx_path.with_name(onnx_path.name + ".json")
    )
    _prepare_out_dir(Path(out_dir))
    voice_bytes, voice = _read_voice_json(config_path)
    weights = read_piper_onnx(onnx_path)
    return _write(weights, voice_bytes, voice, onnx_path, "piper-onnx", Path(out_dir))


def import_piper_checkpoint(
    ckpt_path: Path, config_path: Path, out_dir: Path, *, trust_pickle: bool = False
) -> Path:
    """Import a Piper training checkpoint (PyTorch Lightning .ckpt, generator under `model_g.`).

    Pickled checkpoints can run code when loaded: refused unless `trust_pickle`, and even then loaded
    with `weights_only=True`. Weight norm is folded; training-only tensors are dropped."""
    ckpt_path = Path(ckpt_path)
    _prepare_out_dir(Path(out_dir))
    voice_bytes, voice = _read_voice_json(Path(config_path))
    weights = read_piper_checkpoint(ckpt_path, trust_pickle=trust_pickle)
    return _write(weights, voice_bytes, voice, ckpt_path, "piper-ckpt", Path(out_dir))
