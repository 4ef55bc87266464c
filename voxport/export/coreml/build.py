"""One precision's Core ML artifact: every bounded graph converted, its weights placed (or palettized),
its metadata written, saved as `<name>.<precision>.<graph>.mlpackage`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from voxport.errors import BadInput
from voxport.export.coreml import apply_metadata, program_to_mlmodel, save_mlpackage, to_program
from voxport.export.coreml.palettize import palettize_model
from voxport.export.coreml.weights import compress_program, unplaced_across
from voxport.export.registry import ExportContext, ExportEntry
from voxport.quantize.tensor import QuantizedTensor

if TYPE_CHECKING:
    from voxport.export.coreml.adapter import CoremlExportConfig


def export_mlpackages(ctx: ExportContext[CoremlExportConfig], format_name: str) -> ExportEntry:
    """Write one precision's packages under `ctx.out/coreml/`. Kept apart from the adapter so that
    loading the format registry never imports coremltools (this module does, through its imports)."""
    model, qm, c, out = ctx.model, ctx.qm, ctx.options, ctx.out
    palette = c.palettize.get(qm.precision)  # type: ignore[call-overload]
    state = model.state_dict()
    files: dict[str, str] = {}
    results: list[Any] = []
    stored_bits, elements = 0.0, 0
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
            short_description=f"{ctx.name} {spec.name} ({model.family}, {qm.precision})",
            user_metadata={
                **spec.metadata,
                "family": model.family,
                "precision": qm.precision,
                "compute_precision": compute,
                "recipe": ctx.name,
            },
        )
        if palette is not None:
            palettized = palettize_model(mlmodel, qm.weights, state, nbits=palette.nbits)
            mlmodel = palettized.model
            results.append(palettized)
        path = out / "coreml" / f"{ctx.name}.{qm.precision}.{spec.name}.mlpackage"
        save_mlpackage(mlmodel, path)
        files[spec.name] = ctx.rel(path)
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
    return ExportEntry(
        format=format_name,
        precision=qm.precision,
        path=next(iter(files.values())),
        files=files,
        bits_per_weight=bits,
        skipped_weights=skipped,
        details={"target": c.target, "compute_precision": precisions},
    )
