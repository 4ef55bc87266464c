"""ONNX export: trace each family graph once in fp32, then store every weight in its precision.

Submodules are imported lazily, so that loading the format registry (`adapter`) stays cheap."""

from __future__ import annotations

from typing import Any

__all__ = ["ExportedFile", "export_onnx"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from voxport.export.onnx import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
