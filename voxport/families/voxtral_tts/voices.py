"""Voice presets: rows the backbone reads in place of the prompt's [AUDIO] placeholders.

Mistral ships them as `voice_embedding/<name>.pt` (BF16 [frames, dim], torch pickles): those load
only where the user trusts pickles, like every pickled checkpoint (families/checkpoint.py). voxport
writes them back as `<name>.safetensors`, and beside an artifact as one `.voices.npz`, so nothing
downstream of the first load needs a pickle.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from voxport.errors import BadInput

KEY = "embedding"


def _rows(name: str, value: np.ndarray, dim: int | None) -> np.ndarray:
    rows = np.asarray(value, np.float32)
    if rows.ndim != 2 or len(rows) == 0 or (dim is not None and rows.shape[1] != dim):
        want = f"[frames, {dim}]" if dim is not None else "[frames, dim]"
        raise BadInput(f"voice preset {name}: expected {want} rows, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise BadInput(f"voice preset {name}: holds NaN/inf values; the file is damaged")
    return rows


def read_preset(path: Path, *, dim: int | None = None, trust_pickle: bool = False) -> np.ndarray:
    """One preset file: .safetensors (key `embedding`, or its only tensor), .npy, or Mistral's .pt."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            value = tensors.get(KEY, next(iter(tensors.values())) if len(tensors) == 1 else None)
            if value is None:
                raise BadInput(f"voice preset {path}: expected one tensor named '{KEY}'")
            return _rows(path.name, value, dim)
        if suffix == ".npy":
            return _rows(path.name, np.load(path, allow_pickle=False), dim)
        if suffix == ".pt":
            if not trust_pickle:
                raise BadInput(
                    f"{path}: voice presets in .pt are pickles, which can run code when loaded; if you trust "
                    "the checkpoint's source set `trust_pickle: true` in the recipe or pass --trust-pickle "
                    "(they are then read as plain tensors only)"
                )
            import torch

            value = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise BadInput(f"voice preset {path}: expected one tensor, got {type(value).__name__}")
            return _rows(path.name, value.float().numpy(), dim)
    except BadInput:
        raise
    except Exception as exc:  # numpy, safetensors and torch raise many types for damaged files
        raise BadInput(f"voice preset {path}: not readable ({type(exc).__name__}: {exc})") from None
    raise BadInput(f"voice preset {path}: unsupported file type '{suffix}' (use .safetensors, .npy or .pt)")


def read_presets(directory: Path, *, dim: int, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """Every preset in `voice_embedding/`, by file stem (a .safetensors copy wins over a .pt)."""
    if not directory.is_dir():
        raise BadInput(
            f"{directory.parent}: no voice_embedding/ folder: Voxtral TTS speaks with a voice preset"
        )
    voices: dict[str, np.ndarray] = {}
    files = sorted(directory.iterdir(), key=lambda p: (p.stem, p.suffix != ".safetensors"))
    for path in files:
        if path.suffix.lower() in (".safetensors", ".npy", ".pt") and path.stem not in voices:
            voices[path.stem] = read_preset(path, dim=dim, trust_pickle=trust_pickle)
    if not voices:
        raise BadInput(f"{directory}: no voice presets (<name>.pt, .safetensors or .npy)")
    return voices


def save_voice_presets(directory: Path, voices: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    from voxport.io import atomic_write_bytes

    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in voices.items():
        data = save({KEY: np.ascontiguousarray(rows, np.float32)})
        atomic_write_bytes(directory / f"{name}.safetensors", data)


def write_voices(path: Path, voices: Mapping[str, np.ndarray]) -> None:
    from voxport.io import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(rows, np.float32) for name, rows in voices.items()})
    atomic_write_bytes(path, buffer.getvalue())


def read_voices(path: Path, dim: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: _rows(f"{path.name}:{name}", data[name], dim) for name in data.files}
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not a readable voices .npz ({exc})") from None


def pick_voice(voice: str | None, voices: Mapping[str, np.ndarray], dim: int | None = None) -> np.ndarray:
    """The preset `voice` names (None: the first in name order), or a preset file. A recipe resolves
    `voice:` against its folder, so a name arrives as `<recipe folder>/<name>`: a path that is not a
    file is looked up by its last component."""
    if voice is None:
        return voices[sorted(voices)[0]]
    if voice in voices:
        return voices[voice]
    path = Path(voice)
    if path.is_file():
        return read_preset(path, dim=dim)
    if path.name in voices:
        return voices[path.name]
    raise BadInput(
        f"no voice {voice!r}: give one of {', '.join(sorted(voices))}, or a preset file (.npy/.safetensors)"
    )
