"""hexgrad's `KModel` (the `kokoro` package, installed without its dependencies by `make setup`), the
reference voxport's Kokoro is checked against.

`kokoro/__init__.py` imports its G2P pipeline (misaki, spaCy), which voxport does not install: the
package is registered here as a bare namespace so that `kokoro.model` (torch and transformers only)
imports without running that `__init__`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch


def kmodel_class() -> Any:
    if "kokoro.model" not in sys.modules:
        spec = importlib.util.find_spec("kokoro")
        assert spec is not None and spec.submodule_search_locations, "make setup installs kokoro==0.9.4"
        package = types.ModuleType("kokoro")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kokoro"] = package
    return importlib.import_module("kokoro.model").KModel


def kmodel_from(checkpoint: Path, config: dict[str, Any]) -> Any:
    """KModel on a voxport checkpoint's weights, loaded strictly submodule by submodule (KModel's own
    loader falls back to strict=False silently)."""
    from safetensors.torch import load_file

    empty = checkpoint / "empty.pth"
    torch.save({}, empty)
    model = kmodel_class()(repo_id="hexgrad/Kokoro-82M", config=config, model=str(empty)).eval()
    empty.unlink()
    flat = load_file(checkpoint / "model.safetensors")
    for name, module in model.named_children():
        sub = {k[len(name) + 1 :]: v for k, v in flat.items() if k.startswith(name + ".")}
        module.load_state_dict(sub, strict=True)
    return model
