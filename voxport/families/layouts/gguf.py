"""GGUF layout *data*: how a family describes a runtime's own GGUF file split and names.

A family returns a `GgufLayout` from `FamilyModel.gguf_layout()` (e.g. llama.cpp's pockettts text
model + mmproj pair); the GGUF format adapter (export/gguf/split.py) writes and reads it. These are
plain data classes, so a family can describe a layout without importing the exporter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from gguf import GGUFValueType

#: a getter for a weight's float32 values as stored (dequantized when quantized)
Weights = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class LayoutTensor:
    """One tensor of a layout file.

    Plain tensors copy one voxport weight (`source`), optionally a row range of it (`rows`, for a
    fused q|k|v) and optionally reshaped (`shape`, numpy order, e.g. a k=1 conv squeezed to 2-D).
    Derived tensors (`build`) are computed from several weights' stored values; their `inverse`
    gives those weights back from the file's values (and the state restored so far)."""

    gguf_name: str
    source: str | None = None
    rows: tuple[int, int] | None = None
    shape: tuple[int, ...] | None = None
    #: GGML type the runtime requires whatever the precision ("F16", "F32")
    force: str | None = None
    build: Callable[[Weights], np.ndarray] | None = None
    #: (file values, file metadata, state restored so far) -> {voxport name: values}
    inverse: (
        Callable[[np.ndarray, Mapping[str, Any], Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None
    ) = None
    #: voxport weights a derived tensor is built from (for dtype and bookkeeping)
    derived_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetaValue:
    """A metadata value with its explicit GGUF type (arrays name their element type)."""

    value: Any
    type: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass
class LayoutFile:
    """One file of a layout: `role` is its key in the export entry's "files"; `suffix` goes between the
    precision and `.gguf` in the file name ("" for the primary file)."""

    role: str
    suffix: str
    architecture: str
    metadata: dict[str, MetaValue]
    tensors: list[LayoutTensor] = field(default_factory=list)


class GgufLayout(Protocol):
    """What a family returns from `FamilyModel.gguf_layout()` to be written in a runtime's layout."""

    #: short name recorded in the export entry (e.g. "llama.cpp pockettts")
    name: str

    def files(self, weights: Weights) -> list[LayoutFile]:
        """The files, their metadata and tensors; raises BadInput when the model does not fit."""
        ...
