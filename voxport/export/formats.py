"""The artifact formats the pipeline can produce, each as one small adapter.

An adapter knows three things about its format: what it shares across precisions (`prepare`, e.g. the
traced ONNX graphs), how to write one precision's artifact (`export`, returning the export-index entry)
and which runtime validate runs it in (`runner`). The pipeline loops over recipe formats through this
registry and never branches on a format's name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from voxport.families.base import FamilyModel, Runner
from voxport.quantize.stage import QuantizedModel
from voxport.recipe import Recipe

#: bits ONNX spends per scale (float32 holding fp16-exact values, see export/onnx/weights.py)
ONNX_SCALE_BITS = 32


class Format(Protocol):
    name: str

    def prepare(self, recipe: Recipe, model: FamilyModel) -> Any: ...

    def export(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, prepared: Any
    ) -> dict[str, Any]: ...

    def runner(self, model: FamilyModel, entry: dict[str, Any], out: Path) -> Runner: ...

    def options(self, recipe: Recipe, precision: str) -> Any:
        """The recipe options that shape one precision's artifact bytes (part of its export cache key)."""
        ...


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


class OnnxFormat:
    name = "onnx"

    def options(self, recipe: Recipe, precision: str) -> Any:
        return recipe.export.onnx.model_dump(mode="json")

    def prepare(self, recipe: Recipe, model: FamilyModel) -> Any:
        from voxport.export.onnx.exporter import trace_all

        return trace_all(model, recipe.export.onnx.opset)

    def export(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, prepared: Any
    ) -> dict[str, Any]:
        from voxport.export.onnx.exporter import export_onnx, unplaced_quantized

        files = export_onnx(
            model,
            qm.weights,
            out / "onnx",
            stem=recipe.name,
            precision=qm.precision,
            metadata={"recipe": recipe.name, "sample_rate": str(model.sample_rate)},
            traced=prepared,
            opset=recipe.export.onnx.opset,
        )
        primary = next(f for f in files if f.primary)
        sidecars = model.write_sidecars(primary.path)
        return {
            "path": _rel(primary.path, out),
            "files": {f.graph: _rel(f.path, out) for f in files},
            "sidecars": {name: _rel(p, out) for name, p in sidecars.items()},
            "bits_per_weight": qm.bits_per_weight(scale_bits=ONNX_SCALE_BITS),
            "skipped_weights": qm.skipped_weights() + unplaced_quantized(qm.weights, files),
        }

    def runner(self, model: FamilyModel, entry: dict[str, Any], out: Path) -> Runner:
        from voxport.validate.runners import OrtRunner

        return OrtRunner({graph: out / rel for graph, rel in entry["files"].items()})


class GgufFormat:
    name = "gguf"

    def options(self, recipe: Recipe, precision: str) -> Any:
        gguf = recipe.export.gguf
        return {"types": gguf.types.get(precision), "fallback": gguf.fallback}  # type: ignore[call-overload]

    def prepare(self, recipe: Recipe, model: FamilyModel) -> Any:
        return None

    def export(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, prepared: Any
    ) -> dict[str, Any]:
        from voxport.export.gguf.writer import write_gguf

        options = recipe.export.gguf
        path = out / "gguf" / f"{recipe.name}.{qm.precision}.gguf"
        written = write_gguf(
            model,
            qm,
            path,
            name=recipe.name,
            types=options.types.get(qm.precision),  # type: ignore[call-overload]
            metadata={"recipe": recipe.name},
            fallback_type=options.fallback,
        )
        return {
            "path": _rel(path, out),
            "files": {"gguf": _rel(path, out)},
            "bits_per_weight": written["bits_per_weight"],
            "skipped_weights": qm.skipped_weights() + written["fallbacks"],
            "tensor_types": dict(written["tensor_types"]),
        }

    def runner(self, model: FamilyModel, entry: dict[str, Any], out: Path) -> Runner:
        """No VITS runtime exists in the llama.cpp world: the file's dequantized weights run in the
        family's own torch graphs, which is what a GGUF consumer of these tensors computes."""
        from voxport.export.gguf.reader import GgufRunner

        return GgufRunner(model, out / entry["path"])


FORMATS: dict[str, Callable[[], Format]] = {
    "onnx": OnnxFormat,
    "gguf": GgufFormat,
}


def get_format(name: str) -> Format:
    return FORMATS[name]()
