"""The ONNX format: one `.onnx` file per family graph, run in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator, model_validator

from voxport.config import Bool, ConfigModel, Int, describe_kind
from voxport.export.registry import ExportContext, ExportEntry, FormatAdapter

if TYPE_CHECKING:
    import onnx

    from voxport.families.base import FamilyModel
    from voxport.families.layouts.onnx import OnnxLayout
    from voxport.runtime.base import Runner

#: graph name -> (traced fp32 model, primary, metadata): traced once, shared by every precision
Traced = dict[str, tuple["onnx.ModelProto", bool, dict[str, str]]]


#: ONNX Runtime's MatMulNBits accuracy levels: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
AccuracyLevel = Annotated[Int, Field(ge=0, le=4)]


class OnnxExportConfig(ConfigModel):
    opset: Annotated[Int, Field(ge=17, le=23)] = 21
    #: write quantized Linear weights as ONNX Runtime's `com.microsoft.MatMulNBits` with this
    #: `accuracy_level` (one level, or graph name → level), so every ONNX Runtime that loads the file
    #: computes them that way whatever its session options (export/onnx/matmulnbits.py). null keeps
    #: the portable DequantizeLinear → MatMul, which ONNX Runtime fuses at its default level 4 (int8
    #: activations). On CPU, 8-bit weights at levels 0-2 run a reference kernel ~25x slower.
    matmul_accuracy_level: AccuracyLevel | dict[str, AccuracyLevel] | None = None

    @field_validator("matmul_accuracy_level", mode="before")
    @classmethod
    def _level_or_mapping(cls, value: Any) -> Any:
        """One message for the three accepted shapes (a union would report each branch's failure)."""

        def level(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4

        if value is None or level(value):
            return value
        if isinstance(value, dict):
            for graph, v in value.items():
                if not isinstance(graph, str) or not level(v):
                    raise ValueError(f"{graph}: must be an accuracy level 0-4, got {describe_kind(v)}")
            return value
        raise ValueError(
            "must be an ONNX Runtime MatMulNBits accuracy level 0-4 (1 fp32, 4 int8 activations), "
            f"a mapping graph → level, or null; got {describe_kind(value)}"
        )

    #: integer weights as Cast → Mul of initializers instead of DequantizeLinear: the same floats, which
    #: ONNX Runtime computes once at load (its constant folding skips DequantizeLinear), so an int8/int4
    #: file runs at fp32 speed instead of dequantizing every weight on every call (Kokoro int8: 16 %
    #: slower than fp32 with DequantizeLinear, measured by benchmarks/bench_kokoro.py). Off keeps the
    #: QDQ form quantization-aware tools recognise; exclusive with matmul_accuracy_level.
    fold_dequantize: Bool = False

    @model_validator(mode="after")
    def _fold_or_matmulnbits(self) -> OnnxExportConfig:
        if self.fold_dequantize and self.matmul_accuracy_level is not None:
            raise ValueError(
                "fold_dequantize writes every integer weight as Cast → Mul (fp32 compute) and "
                "matmul_accuracy_level writes Linear weights as MatMulNBits: choose one"
            )
        return self

    #: also write the family's graphs in other ONNX runtimes' layouts, each its own artifact beside
    #: voxport's (Pocket TTS: sherpa-onnx's five-file layout, a second copy of the weights, measured in
    #: sherpa-onnx where it is installed); false skips those units only
    runtime_layouts: Bool = True


class OnnxFormat(FormatAdapter[OnnxExportConfig, Traced], name="onnx"):
    suffix = ".onnx"
    Options = OnnxExportConfig
    tool_packages = ("onnx", "onnxruntime")

    def prepare(self, model: FamilyModel, options: OnnxExportConfig) -> Traced:
        from voxport.export.onnx.exporter import trace_all

        return trace_all(model, options.opset)

    def export(self, ctx: ExportContext[OnnxExportConfig], prepared: Traced | None) -> ExportEntry:
        from voxport.export.onnx.exporter import export_onnx, unplaced_quantized
        from voxport.export.onnx.weights import scale_bits

        model, qm = ctx.model, ctx.qm
        files = export_onnx(
            model,
            qm.weights,
            ctx.out / "onnx",
            stem=ctx.name,
            precision=qm.precision,
            metadata={"recipe": ctx.name, "sample_rate": str(model.sample_rate)},
            traced=prepared,
            opset=ctx.options.opset,
            matmul_accuracy_level=ctx.options.matmul_accuracy_level,
            fold_dequantize=ctx.options.fold_dequantize,
        )
        primary = next(f for f in files if f.primary)
        sidecars = model.write_sidecars(primary.path)
        return ExportEntry(
            format=self.name,
            precision=qm.precision,
            path=ctx.rel(primary.path),
            files={f.graph: ctx.rel(f.path) for f in files},
            sidecars={name: ctx.rel(p) for name, p in sidecars.items()},
            bits_per_weight=qm.bits_per_weight(scale_bits=scale_bits),
            skipped_weights=qm.skipped_weights() + unplaced_quantized(qm.weights, files),
        )

    def cache_options(self, options: OnnxExportConfig, precision: str) -> Any:
        # runtime_layouts only adds or drops the layout units: it does not shape these bytes; an unset
        # accuracy level is left out so the keys of builds made before the option existed still hold
        exclude = {"runtime_layouts"}
        if options.matmul_accuracy_level is None:
            exclude.add("matmul_accuracy_level")
        if not options.fold_dequantize:
            exclude.add("fold_dequantize")
        return options.model_dump(mode="json", exclude=exclude)

    def export_layout(self, ctx: ExportContext[OnnxExportConfig], layout: OnnxLayout) -> ExportEntry:
        """One runtime layout of one precision (issue 13, §2.5): its own directory and export entry."""
        from voxport.export.onnx.layouts import write_onnx_layout
        from voxport.export.onnx.weights import scale_bits

        qm = ctx.qm
        directory = ctx.out / "onnx" / f"{ctx.name}.{qm.precision}.{layout.directory_suffix}"
        metadata = {"precision": qm.precision}
        paths = write_onnx_layout(layout, directory, qm.weights, opset=ctx.options.opset, metadata=metadata)
        return ExportEntry(
            format=self.name,
            precision=qm.precision,
            path=ctx.rel(directory),
            files={role: ctx.rel(p) for role, p in paths.items()},
            layout=layout.name,
            bits_per_weight=qm.bits_per_weight(scale_bits=scale_bits),
            skipped_weights=qm.skipped_weights(),
        )

    def runner(self, model: FamilyModel, entry: ExportEntry, out: Path) -> Runner:
        from voxport.runtime.ort import OrtRunner

        return OrtRunner({graph: out / rel for graph, rel in entry.files.items()})

    def verify_load(self, path: Path) -> None:
        from voxport.runtime.ort import ort_session

        ort_session(path)

    def describe(self, path: Path) -> dict[str, Any]:
        from voxport.export.onnx.describe import describe_onnx

        return describe_onnx(path)
