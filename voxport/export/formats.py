"""The artifact formats the pipeline can produce, each as one small adapter.

An adapter knows three things about its format: what it shares across precisions (`prepare`, e.g. the
traced ONNX graphs), how to write one precision's artifact (`export`, returning the export-index entry)
and which runtime validate runs it in (`runner`). The pipeline loops over recipe formats through this
registry and never branches on a format's name.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from voxport.errors import BadInput
from voxport.families.base import FamilyModel, Runner
from voxport.families.layouts.onnx import OnnxLayout
from voxport.quantize.stage import QuantizedModel
from voxport.quantize.tensor import QuantizedTensor
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

    def export_layout(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, layout: OnnxLayout
    ) -> dict[str, Any]:
        """A family's runtime layout of one precision (`FamilyModel.runtime_layouts`), its own artifact."""
        ...


class _NoRuntimeLayouts:
    def export_layout(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, layout: OnnxLayout
    ) -> dict[str, Any]:
        raise BadInput(f"{model.family} declares a runtime layout '{layout.name}' for a format without any")


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


class OnnxFormat:
    name = "onnx"

    def options(self, recipe: Recipe, precision: str) -> Any:
        # runtime_layouts only adds or drops the layout units: it does not shape these bytes
        return recipe.export.onnx.model_dump(mode="json", exclude={"runtime_layouts"})

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

    def export_layout(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, layout: OnnxLayout
    ) -> dict[str, Any]:
        """One runtime layout of one precision (issue 13, §2.5): its own directory and export entry."""
        from voxport.export.onnx.layouts import write_onnx_layout

        directory = out / "onnx" / f"{recipe.name}.{qm.precision}.{layout.directory_suffix}"
        opset, metadata = recipe.export.onnx.opset, {"precision": qm.precision}
        paths = write_onnx_layout(layout, directory, qm.weights, opset=opset, metadata=metadata)
        return {
            "path": _rel(directory, out),
            "files": {role: _rel(p, out) for role, p in paths.items()},
            "layout": layout.name,
            "bits_per_weight": qm.bits_per_weight(scale_bits=ONNX_SCALE_BITS),
            "skipped_weights": qm.skipped_weights(),
        }

    def runner(self, model: FamilyModel, entry: dict[str, Any], out: Path) -> Runner:
        from voxport.runtime.ort import OrtRunner

        return OrtRunner({graph: out / rel for graph, rel in entry["files"].items()})


class GgufFormat(_NoRuntimeLayouts):
    name = "gguf"

    def options(self, recipe: Recipe, precision: str) -> Any:
        gguf = recipe.export.gguf
        return {"types": gguf.types.get(precision), "fallback": gguf.fallback}  # type: ignore[call-overload]

    def prepare(self, recipe: Recipe, model: FamilyModel) -> Any:
        return None

    def export(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, prepared: Any
    ) -> dict[str, Any]:
        options = recipe.export.gguf
        layout = model.gguf_layout()
        if layout is not None:
            return self._export_layout(recipe, model, qm, out, layout)
        from voxport.export.gguf.writer import write_gguf

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

    def _export_layout(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, layout: Any
    ) -> dict[str, Any]:
        """The family's runtime layout (several files, the runtime's names): "path" is the primary
        file, "files" every file by role, figures over all files together."""
        from voxport.export.gguf.split import write_layout

        options = recipe.export.gguf
        written = write_layout(
            model,
            qm,
            layout,
            out / "gguf",
            stem=f"{recipe.name}.{qm.precision}",
            name=recipe.name,
            types=options.types.get(qm.precision),  # type: ignore[call-overload]
            metadata={"recipe": recipe.name},
            fallback_type=options.fallback,
        )
        files = {role: _rel(path, out) for role, path in written["paths"].items()}
        return {
            "path": next(iter(files.values())),
            "files": files,
            "layout": layout.name,
            "bits_per_weight": written["bits_per_weight"],
            "skipped_weights": qm.skipped_weights() + written["fallbacks"],
            "tensor_types": dict(written["tensor_types"]),
        }

    def runner(self, model: FamilyModel, entry: dict[str, Any], out: Path) -> Runner:
        """No VITS runtime exists in the llama.cpp world: the file's dequantized weights run in the
        family's own torch graphs, which is what a GGUF consumer of these tensors computes."""
        layout = model.gguf_layout()
        if layout is not None:
            from voxport.export.gguf.split import LayoutRunner

            return LayoutRunner(model, layout, {role: out / rel for role, rel in entry["files"].items()})
        from voxport.export.gguf.reader import GgufRunner

        return GgufRunner(model, out / entry["path"])


class CoremlFormat(_NoRuntimeLayouts):
    """One `.mlpackage` per graph of the family's `bounded_graphs` (for VITS: encoder and decoder, as
    Piper's one-graph form sizes its output by predicted durations, which Core ML cannot express; for
    Pocket TTS: a fixed-capacity KV cache backbone of `export.coreml.kv_capacity` positions, flow head,
    codec). Weights come from the same QuantizedTensors as ONNX and GGUF (constexpr ops, see
    export/coreml/weights.py), or from coremltools' palettizer when the recipe asks for palettes."""

    name = "coreml"

    def options(self, recipe: Recipe, precision: str) -> Any:
        c = recipe.export.coreml
        palette = c.palettize.get(precision)  # type: ignore[call-overload]
        return {
            "target": c.target,
            "compute_precision": c.compute_precision,
            "graph_compute_precision": dict(sorted(c.graph_compute_precision.items())),
            "palettize": palette.model_dump() if palette else None,
            "max_tokens": c.max_tokens,
            "max_frames": c.max_frames,
            "kv_capacity": c.kv_capacity,
        }

    def prepare(self, recipe: Recipe, model: FamilyModel) -> Any:
        return None

    def export(
        self, recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, prepared: Any
    ) -> dict[str, Any]:
        from voxport.export.coreml import apply_metadata, program_to_mlmodel, save_mlpackage, to_program
        from voxport.export.coreml.palettize import palettize_model
        from voxport.export.coreml.weights import compress_program, unplaced_across

        c = recipe.export.coreml
        palette = c.palettize.get(qm.precision)  # type: ignore[call-overload]
        state = model.state_dict()
        files: dict[str, str] = {}
        results, stored_bits, elements = [], 0.0, 0
        graphs = model.bounded_graphs(c.kv_capacity)
        unknown = sorted(set(c.graph_compute_precision) - {g.name for g in graphs})
        if unknown:
            raise BadInput(
                f"export.coreml.graph_compute_precision: no Core ML graph {', '.join(unknown)} "
                f"({model.family} has {', '.join(g.name for g in graphs)})"
            )
        precisions = {g.name: c.graph_compute_precision.get(g.name, c.compute_precision) for g in graphs}
        # "seq": the new positions of an autoregressive step (a whole prompt at most)
        bounds = {"tokens": (1, c.max_tokens), "seq": (1, c.max_tokens), "frames": (1, c.max_frames)}
        for spec in graphs:
            compute = precisions[spec.name]
            axes = {a for n in spec.input_names for a in spec.dynamic_axes.get(n, {}).values()}
            program = to_program(
                spec,
                target=c.target,
                compute_precision=compute,
                flexible={a: bounds[a] for a in axes if a in bounds},
            )
            if palette is None:
                # fp16 compute rounds weights to fp16 on device anyway; fp16 scales keep int8 weights
                # a pure constexpr (Neural Engine friendly) instead of fp32 scales + a runtime cast
                result = compress_program(
                    program,
                    qm.weights,
                    state,
                    fp16_scales="round" if compute == "fp16" else "exact",
                )
                results.append(result)
                rows = [*result.placed.values(), *result.kept.values(), *result.dense.values()]
                stored_bits += sum(r.stored_bits for r in rows)
                elements += sum(r.elements for r in rows)
            mlmodel = program_to_mlmodel(program, target=c.target, graph=spec.name)
            apply_metadata(
                mlmodel,
                graph=spec.name,
                license=model.embedded_metadata().get("general.license"),
                short_description=f"{recipe.name} {spec.name} ({model.family}, {qm.precision})",
                user_metadata={
                    **spec.metadata,
                    "family": model.family,
                    "precision": qm.precision,
                    "compute_precision": compute,
                    "recipe": recipe.name,
                },
            )
            if palette is not None:
                palettized = palettize_model(mlmodel, qm.weights, state, nbits=palette.nbits)
                mlmodel = palettized.model
                results.append(palettized)
            path = out / "coreml" / f"{recipe.name}.{qm.precision}.{spec.name}.mlpackage"
            save_mlpackage(mlmodel, path)
            files[spec.name] = _rel(path, out)
        if palette is not None:
            bits = sum(r.bits_per_weight for r in results) / max(len(results), 1)
            # each graph holds only its own weights: skipped means palettized by no graph
            done = set().union(*(r.palettized for r in results))
            skipped = qm.skipped_weights() + [
                {
                    "name": name,
                    "requested": f"int{value.bits}",
                    "stored": "absent",
                    "reason": "not found as a const op in any Core ML graph",
                }
                for name, value in qm.weights.items()
                if isinstance(value, QuantizedTensor) and name not in done
            ]
        else:
            bits = stored_bits / max(elements, 1)
            skipped = qm.skipped_weights() + unplaced_across(qm.weights, results)
        return {
            "path": next(iter(files.values())),
            "files": files,
            "bits_per_weight": bits,
            "skipped_weights": skipped,
            "target": c.target,
            "compute_precision": precisions,
        }

    def runner(self, model: FamilyModel, entry: dict[str, Any], out: Path) -> Runner:
        """Core ML itself where it exists (macOS); elsewhere voxport's numpy MIL interpreter. The
        report names which one measured the figures (`runner`)."""
        from voxport.runtime.coreml import CoremlPredictRunner, CoremlRunner

        files = {graph: out / rel for graph, rel in entry["files"].items()}
        return CoremlPredictRunner(files) if sys.platform == "darwin" else CoremlRunner(files)


FORMATS: dict[str, Callable[[], Format]] = {
    "onnx": OnnxFormat,
    "gguf": GgufFormat,
    "coreml": CoremlFormat,
}


def get_format(name: str) -> Format:
    return FORMATS[name]()
