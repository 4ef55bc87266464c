"""The Core ML format: one `.mlpackage` per graph of the family's `bounded_graphs`.

For VITS: encoder and decoder, as Piper's one-graph form sizes its output by predicted durations,
which Core ML cannot express; for Pocket TTS: a fixed-capacity KV cache backbone of
`export.coreml.kv_capacity` positions, flow head, codec. Weights come from the same QuantizedTensors
as ONNX and GGUF (constexpr ops, see export/coreml/weights.py), or from coremltools' palettizer when
the recipe asks for palettes. Measured in Core ML itself on macOS, elsewhere in voxport's numpy MIL
interpreter (the report names which).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from voxport.config import ConfigModel, Int, NonEmptyStr
from voxport.export.registry import ExportContext, ExportEntry, FormatAdapter, Precision

if TYPE_CHECKING:
    from voxport.families.base import FamilyModel
    from voxport.runtime.base import Runner

CoremlTarget = Literal["iOS17", "iOS18", "macOS14", "macOS15", "watchOS10", "watchOS11"]
#: targets before blockwise int4 (`constexpr_blockwise_shift_scale`) existed
_NO_BLOCKWISE_INT4 = ("iOS17", "macOS14", "watchOS10")


class PalettizeConfig(ConfigModel):
    """Lookup-table weights (k-means palettes) instead of linear codes: a different encoding, so these
    weights are not bit-identical to the ONNX/GGUF ones; parity measures what they cost."""

    nbits: Literal[4, 8] = 4


class CoremlExportConfig(ConfigModel):
    """Core ML options. Blockwise int4 (`constexpr_blockwise_shift_scale`) needs iOS18 / macOS15 /
    watchOS11; `compute_precision` is what the Neural Engine computes in (fp16 is its native type)."""

    target: CoremlTarget = "iOS18"
    compute_precision: Literal["fp16", "fp32"] = "fp16"
    #: graph name -> compute precision for that graph only (e.g. {encoder: fp32}: fp16 activations in a
    #: text encoder can flip rounded durations, while the vocoder is where fp16 saves the time)
    graph_compute_precision: dict[NonEmptyStr, Literal["fp16", "fp32"]] = Field(default_factory=dict)
    #: precision -> palettize weights of that artifact instead of using its linear int codes
    palettize: dict[Precision, PalettizeConfig] = Field(default_factory=dict)
    #: the largest token count (and, for graphs with a frame axis, frame count) a model accepts
    max_tokens: Annotated[Int, Field(ge=8, le=4096)] = 512
    max_frames: Annotated[Int, Field(ge=64, le=65536)] = 8192
    #: positions of the fixed KV cache that autoregressive backbones get instead of a growing one
    #: (Core ML needs bounded shapes; pocket_tts: voice prompt + text + generated frames must fit,
    #: e.g. 30 s of voice = 376 positions + 50 tokens + 234 frames ≈ 660). Memory per layer is
    #: 2 · kv_heads · kv_capacity · head_dim floats, passed in and out at every step.
    kv_capacity: Annotated[Int, Field(ge=16, le=65536)] = 512


class CoremlFormat(FormatAdapter[CoremlExportConfig, None], name="coreml"):
    suffix = ".mlpackage"
    Options = CoremlExportConfig
    tool_packages = ("coremltools",)

    def check(self, options: CoremlExportConfig, precisions: Sequence[str]) -> str | None:
        """Blockwise int4 exists from iOS 18 / macOS 15 / watchOS 11: say so before hours of work."""
        blockwise_int4 = "int4" in precisions and "int4" not in options.palettize
        if blockwise_int4 and options.target in _NO_BLOCKWISE_INT4:
            return (
                f"export.coreml.target {options.target} cannot hold int4 blockwise weights: "
                "int4 blockwise needs iOS18/macOS15/watchOS11 (or palettize: {int4: {nbits: 4}})"
            )
        return None

    def cache_options(self, options: CoremlExportConfig, precision: str) -> Any:
        palette = options.palettize.get(precision)  # type: ignore[call-overload]
        return {
            "target": options.target,
            "compute_precision": options.compute_precision,
            "graph_compute_precision": dict(sorted(options.graph_compute_precision.items())),
            "palettize": palette.model_dump() if palette else None,
            "max_tokens": options.max_tokens,
            "max_frames": options.max_frames,
            "kv_capacity": options.kv_capacity,
        }

    def export(self, ctx: ExportContext[CoremlExportConfig], prepared: None) -> ExportEntry:
        from voxport.export.coreml.build import export_mlpackages

        return export_mlpackages(ctx, self.name)

    def runner(self, model: FamilyModel, entry: ExportEntry, out: Path) -> Runner:
        """Core ML itself where it exists (macOS); elsewhere voxport's numpy MIL interpreter. The
        report names which one measured the figures (`runner`)."""
        from voxport.runtime.coreml import CoremlPredictRunner, CoremlRunner

        files = {graph: out / rel for graph, rel in entry.files.items()}
        return CoremlPredictRunner(files) if sys.platform == "darwin" else CoremlRunner(files)

    def verify_load(self, path: Path) -> None:
        from voxport.export.coreml.package import check_package

        check_package(path)

    def describe(self, path: Path) -> dict[str, Any]:
        from voxport.export.coreml.package import describe_mlpackage

        return describe_mlpackage(path)
