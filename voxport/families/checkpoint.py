"""Reading tensors from checkpoint files, safetensors first, pickle only when the user opts in.

A pickled checkpoint can run arbitrary code when loaded, so `.bin/.pt/.pth/.ckpt` files are refused
unless the user opts in (`trust_pickle: true` in a recipe, `--trust-pickle` on inspect and import);
even then they are loaded with `weights_only=True` first, which refuses anything that is not plain
tensors and containers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from voxport.errors import BadInput

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def find_weights_file(directory: Path) -> Path:
    """The weights file of a checkpoint directory, preferring safetensors."""
    for name in ("model.safetensors",):
        if (directory / name).is_file():
            return directory / name
    safes = sorted(directory.glob("*.safetensors"))
    if len(safes) == 1:
        return safes[0]
    if len(safes) > 1:
        raise BadInput(f"{directory}: several .safetensors files and no model.safetensors; keep one")
    pickles = sorted(p for suffix in PICKLE_SUFFIXES for p in directory.glob(f"*{suffix}"))
    if pickles:
        return pickles[0]
    raise BadInput(f"{directory}: no weights found (expected model.safetensors)")


def load_tensors(path: Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of one weights file, with a clear error for anything unreadable."""
    if not path.is_file():
        raise BadInput(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadInput(
                f"{path}: not a readable safetensors file ({exc}); re-download or re-export it"
            ) from None
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise BadInput(
                f"{path}: pickled checkpoints can run code when loaded; convert it to safetensors, "
                "or, if you trust its source, set `trust_pickle: true` in the recipe (build, convert) "
                "or pass --trust-pickle (inspect, import piper)"
            )
        return _load_pickle(path)
    raise BadInput(f"{path}: unsupported weights file type '{suffix}' (use .safetensors)")


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError)
        raise BadInput(
            f"{path}: could not be loaded as plain tensors ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInput(f"{path}: expected a mapping of tensor names to tensors")
    return dict(obj)


def config_beside(path: Path) -> dict[str, Any] | None:
    """The `config.json` of a checkpoint directory, or of the directory a weights file is in; None when
    there is none or it is not a JSON object. The cheap look every family's `recognizes` starts with."""
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
