"""ONNX runtime layout *data*: another runtime's file split of a family's graphs, as an artifact.

Some runtimes run a family's model from their own set of ONNX files, with their own graph cut, names
and side files (sherpa-onnx's Pocket TTS engine: five graphs plus `vocab.json`/`token_scores.json`).
A family describes such a layout as an `OnnxLayout` (`FamilyModel.runtime_layouts("onnx")`); the ONNX
exporter writes it (`export/onnx/layouts.py`, tracing and the precision's stored weights), the pipeline
makes it its own artifact with its own cache key, and `validate` drives the written files in their
runtime through `voice` (`validate/layouts.py`). The family never imports the exporter: this module is
plain data, like `layouts/gguf.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voxport.families.base import GraphSpec, SynthesisSettings


class Unmeasurable(Exception):
    """The layout's runtime cannot reproduce the reference under these settings (e.g. a voice prompt
    it cannot take); `validate` reports the reason and no figures instead of failing the build."""


class LayoutVoice(Protocol):
    """The written files, speaking in their own runtime."""

    def speak(self, text: str, settings: SynthesisSettings) -> np.ndarray:
        """Mono float32 audio at the model's sample rate for `text`, produced the way the runtime's
        users produce it, post-processed as voxport's own loop is so figures measure the files.
        Raises `Unmeasurable` when these settings have no counterpart in the runtime."""
        ...


@dataclass(frozen=True, eq=False)
class OnnxLayout:
    """One runtime's ONNX layout of one model. Identity-compared (the exporter caches its traces per
    layout object, so a family hands out the same object for the same model)."""

    #: what the layout is called in the manifest (`Artifact.layout`) and in unit labels: "sherpa-onnx"
    name: str
    #: the files go to `<stem>.<precision>.<directory_suffix>/` beside the format's own artifact
    directory_suffix: str
    #: the graphs, in file order (built lazily: construction can be costly, and not needed when cached)
    graphs: Callable[[], list[GraphSpec]]
    #: side files by file name, as bytes (sherpa's vocab and scores)
    files: Mapping[str, bytes] = field(default_factory=dict)
    #: metadata_props of every graph, in order; the writer appends the precision's and `graph`
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: why this model cannot take the layout (nothing is written then), or None
    unsupported: str | None = None
    #: drives the written directory in its runtime; None: the layout is written but never measured
    voice: Callable[[Path], LayoutVoice] | None = None
    #: the PyPI distribution `voice` needs ("sherpa-onnx"); `validate` measures only where it is installed
    runtime_package: str | None = None
    #: synthesis settings the comparison runs under, over the recipe's (e.g. {"temperature": 0.0} for
    #: a runtime whose sampling noise differs from voxport's, so only the deterministic path compares)
    parity_settings: Mapping[str, Any] = field(default_factory=dict)


__all__ = ["LayoutVoice", "OnnxLayout", "Unmeasurable"]
