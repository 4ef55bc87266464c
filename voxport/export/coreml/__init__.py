"""Core ML export: family graphs → MIL Program → `.mlpackage` (see `convert` for the two-step API).

Submodules are imported lazily: loading the format registry (`adapter`) must not import coremltools."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "TARGETS": "convert",
    "WeightConst": "convert",
    "convert_graph": "convert",
    "program_to_mlmodel": "convert",
    "save_mlpackage": "convert",
    "to_program": "convert",
    "weight_consts": "convert",
    "apply_patches": "compat",
    "apply_metadata": "metadata",
    "read_metadata": "metadata",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
