"""The GGUF format: one `.gguf` file in voxport's own layout, or the files of a runtime's layout when
the family describes one (`FamilyModel.gguf_layout()`); measured with the file's dequantized weights
in the family's torch graphs, which is what a GGUF runtime computes from these tensors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from voxport.config import ConfigModel, NonEmptyStr
from voxport.export.gguf.types import GgmlType
from voxport.export.registry import ExportContext, ExportEntry, FormatAdapter, Precision

if TYPE_CHECKING:
    from voxport.export.gguf.split import LayoutWritten
    from voxport.export.gguf.writer import GgufWritten
    from voxport.families.base import FamilyModel
    from voxport.runtime.base import Runner


class GgufExportConfig(ConfigModel):
    """GGUF options. By default each precision maps to its natural type (fp32→F32, fp16→F16,
    int8→Q8_0, int4→Q4_0 exactly); `types` gives one precision's artifact a llama.cpp-style mix
    (weight-name glob → GGML type, the last matching glob wins), e.g. {"*": Q4_K, "decoder.*": Q6_K}."""

    types: dict[Precision, dict[NonEmptyStr, GgmlType]] = Field(default_factory=dict)
    #: type for rows that do not fit a quantized type's block (e.g. 24 columns for blocks of 32)
    fallback: Literal["F16", "F32"] = "F16"


class GgufFormat(FormatAdapter[GgufExportConfig, None], name="gguf"):
    suffix = ".gguf"
    Options = GgufExportConfig
    tool_packages = ("gguf",)

    def cache_options(self, options: GgufExportConfig, precision: str) -> Any:
        return {"types": options.types.get(precision), "fallback": options.fallback}  # type: ignore[call-overload]

    def export(self, ctx: ExportContext[GgufExportConfig], prepared: None) -> ExportEntry:
        from voxport.export.gguf.split import write_layout
        from voxport.export.gguf.writer import write_gguf

        model, qm, options = ctx.model, ctx.qm, ctx.options
        types = options.types.get(qm.precision)  # type: ignore[call-overload]
        stem = f"{ctx.name}.{qm.precision}"
        layout = model.gguf_layout()
        written: GgufWritten | LayoutWritten
        if layout is None:
            path = ctx.out / "gguf" / f"{stem}.gguf"
            written = write_gguf(
                model,
                qm,
                path,
                name=ctx.name,
                types=types,
                metadata={"recipe": ctx.name},
                fallback_type=options.fallback,
            )
            files, name = {"gguf": ctx.rel(path)}, None
        else:
            # the family's runtime layout (several files, the runtime's names): "path" is the primary
            # file, "files" every file by role, figures over all files together
            written = write_layout(
                model,
                qm,
                layout,
                ctx.out / "gguf",
                stem=stem,
                name=ctx.name,
                types=types,
                metadata={"recipe": ctx.name},
                fallback_type=options.fallback,
            )
            files, name = {role: ctx.rel(p) for role, p in written.paths.items()}, layout.name
        return ExportEntry(
            format=self.name,
            precision=qm.precision,
            path=next(iter(files.values())),
            files=files,
            layout=name,
            bits_per_weight=written.bits_per_weight,
            skipped_weights=qm.skipped_weights() + written.fallbacks,
            details={"tensor_types": dict(written.tensor_types)},
        )

    def runner(self, model: FamilyModel, entry: ExportEntry, out: Path) -> Runner:
        """The file's dequantized weights in the family's own torch graphs: what a GGUF runtime
        computes from these tensors, whether or not the family has a GGUF runtime of its own."""
        layout = model.gguf_layout()
        if layout is not None:
            from voxport.export.gguf.split import LayoutRunner

            return LayoutRunner(model, layout, {role: out / rel for role, rel in entry.files.items()})
        from voxport.export.gguf.reader import GgufRunner

        return GgufRunner(model, out / entry.path)

    def verify_load(self, path: Path) -> None:
        from voxport.export.gguf.reader import read_gguf

        read_gguf(path)

    def describe(self, path: Path) -> dict[str, Any]:
        from voxport.export.gguf.reader import describe_gguf

        return describe_gguf(path)
