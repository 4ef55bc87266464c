"""build(recipe): the stages in order, each reading what the previous one wrote under the output dir.

    OUT/stages/checkpoint/          convert (+ prune): full-precision, weight-norm folded checkpoint
    OUT/stages/quantized/P.safetensors   quantize: stored encodings per precision P
    OUT/<format>/...                export: the artifacts
    OUT/stages/export.json          export: which files make up which artifact
    OUT/report.json, manifest.json  validate: per-sentence figures and the verdict

Each stage is a plain function over those files, so it can be re-run on its own (the CLI exposes
each one) and writes atomically, so a killed build never leaves a finished-looking artifact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxport import __version__
from voxport.errors import BadInput
from voxport.export.onnx.exporter import export_onnx, trace_all, unplaced_quantized
from voxport.families.base import FamilyModel, Runner, SynthesisSettings, load_model
from voxport.io import atomic_write_json, ensure_writable_dir
from voxport.manifest import (
    Artifact,
    ArtifactFile,
    Manifest,
    ModelInfo,
    Parity,
    tool_versions,
    write_manifest,
)
from voxport.quantize.stage import QuantizedModel, load_quantized, quantize_model, save_quantized
from voxport.recipe import Recipe
from voxport.validate.parity import ArtifactParity, Reference, measure_artifact
from voxport.validate.runners import OrtRunner

#: formats this version can produce; a recipe asking for another fails before any work is done
SUPPORTED_FORMATS = ("onnx", "gguf")
#: bits ONNX spends per scale (float32 holding fp16-exact values, see export/onnx/weights.py)
ONNX_SCALE_BITS = 32

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Layout:
    out: Path

    @property
    def checkpoint(self) -> Path:
        return self.out / "stages" / "checkpoint"

    def quantized(self, precision: str) -> Path:
        return self.out / "stages" / "quantized" / f"{precision}.safetensors"

    @property
    def export_index(self) -> Path:
        return self.out / "stages" / "export.json"

    @property
    def report(self) -> Path:
        return self.out / "report.json"


def check_supported(recipe: Recipe) -> None:
    unsupported = [f for f in recipe.formats if f not in SUPPORTED_FORMATS]
    if unsupported:
        raise BadInput(
            f"format {', '.join(unsupported)} cannot be produced by voxport {__version__} yet "
            f"(supported: {', '.join(SUPPORTED_FORMATS)}); remove it from formats:"
        )


def _load_source(recipe: Recipe) -> FamilyModel:
    return load_model(recipe.model, family=recipe.family, trust_pickle=recipe.trust_pickle)


def _load_converted(layout: Layout) -> FamilyModel:
    if not (layout.checkpoint / "voxport.json").is_file():
        raise BadInput(f"{layout.checkpoint}: no converted checkpoint; run `voxport convert` first")
    return load_model(layout.checkpoint)


# --- stages ---------------------------------------------------------------------------------------------
def convert(recipe: Recipe, out: Path, log: Log = _quiet) -> FamilyModel:
    """Load the user's checkpoint, apply pruning, and save the full-precision model we export."""
    layout = Layout(ensure_writable_dir(out))
    model = _load_source(recipe)
    log(f"convert: {model.family}, {model.parameters():,} parameters from {recipe.raw_model}")
    for spec in recipe.prune:
        stacks = {s.name: s for s in model.prunable_stacks()}
        if spec.stack not in stacks:
            raise BadInput(
                f"prune: {model.family} has no prunable stack '{spec.stack}' "
                f"(prunable: {', '.join(stacks) or 'none'})"
            )
        drop = spec.layers if spec.layers is not None else list(range(1, stacks[spec.stack].num_layers, 2))
        model = model.pruned(spec.stack, drop)
        log(f"prune: dropped {spec.stack} layers {drop} → {model.parameters():,} parameters")
    marker = layout.checkpoint / "voxport.json"
    marker.unlink(missing_ok=True)  # the marker is written last: present means complete
    model.save(layout.checkpoint)
    return model


def quantize(recipe: Recipe, out: Path, log: Log = _quiet) -> None:
    layout = Layout(out)
    model = _load_converted(layout)
    q = recipe.quantize
    for precision in recipe.precisions:
        started = time.perf_counter()
        qm = quantize_model(
            model, precision, method=q.method, block_size=q.block_size, overrides=q.overrides_for(precision)
        )
        save_quantized(qm, layout.quantized(precision))
        log(
            f"quantize: {precision} ({q.method}) {qm.bits_per_weight(scale_bits=16):.2f} bits/weight, "
            f"{len(qm.skipped_weights())} kept at higher precision, {time.perf_counter() - started:.1f}s"
        )


def _export_onnx(
    recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path, traced: dict[str, Any]
) -> dict[str, Any]:
    files = export_onnx(
        model,
        qm.weights,
        out / "onnx",
        stem=recipe.name,
        precision=qm.precision,
        metadata={"recipe": recipe.name, "sample_rate": str(model.sample_rate)},
        traced=traced,
        opset=recipe.export.onnx.opset,
    )
    primary = next(f for f in files if f.primary)
    sidecars = model.write_sidecars(primary.path)
    return {
        "path": primary.path.relative_to(out).as_posix(),
        "files": {f.graph: f.path.relative_to(out).as_posix() for f in files},
        "sidecars": {name: p.relative_to(out).as_posix() for name, p in sidecars.items()},
        "bits_per_weight": qm.bits_per_weight(scale_bits=ONNX_SCALE_BITS),
        "skipped_weights": qm.skipped_weights() + unplaced_quantized(qm.weights, files),
    }


def _export_gguf(recipe: Recipe, model: FamilyModel, qm: QuantizedModel, out: Path) -> dict[str, Any]:
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
    rel = path.relative_to(out).as_posix()
    return {
        "path": rel,
        "files": {"gguf": rel},
        "bits_per_weight": written["bits_per_weight"],
        "skipped_weights": qm.skipped_weights() + written["fallbacks"],
        "tensor_types": dict(written["tensor_types"]),
    }


def export(recipe: Recipe, out: Path, log: Log = _quiet) -> list[dict[str, Any]]:
    check_supported(recipe)
    layout = Layout(out)
    model = _load_converted(layout)
    traced = trace_all(model, recipe.export.onnx.opset) if "onnx" in recipe.formats else {}
    index = []
    for precision in recipe.precisions:
        qm = load_quantized(layout.quantized(precision))
        for fmt in recipe.formats:
            started = time.perf_counter()
            if fmt == "onnx":
                entry = _export_onnx(recipe, model, qm, out, traced)
            else:
                entry = _export_gguf(recipe, model, qm, out)
            size = sum((out / rel).stat().st_size for rel in entry["files"].values())
            index.append(
                {
                    "format": fmt,
                    "precision": precision,
                    **entry,
                    "export_seconds": time.perf_counter() - started,
                }
            )
            log(
                f"export: {fmt} {precision} → {entry['path']} "
                f"({size / 1e6:.2f} MB in {len(entry['files'])} files)"
            )
    atomic_write_json(layout.export_index, index)
    return index


def _runner(model: FamilyModel, entry: dict[str, Any], out: Path) -> Runner:
    """The runtime users run each format in: ONNX Runtime for ONNX; for GGUF (no VITS runtime
    exists in the llama.cpp world) the file's dequantized weights in the family's torch graphs."""
    if entry["format"] == "gguf":
        from voxport.export.gguf.reader import GgufRunner

        return GgufRunner(model, out / entry["path"])
    return OrtRunner({graph: out / rel for graph, rel in entry["files"].items()})


def validation_inputs(recipe: Recipe, model: FamilyModel) -> list[tuple[str, list[int]]]:
    if recipe.validation is None:
        raise BadInput("the recipe has no validate: section (texts: or ids:), so parity cannot be measured")
    inputs = [(text, model.text_to_ids(text)) for text in recipe.validation.texts]
    inputs += [(f"ids[{i}]", list(ids)) for i, ids in enumerate(recipe.validation.ids)]
    return inputs


def settings_for(recipe: Recipe) -> SynthesisSettings:
    v = recipe.validation
    if v is None:
        return SynthesisSettings()
    return SynthesisSettings(
        seed=v.seed,
        noise_scale=v.noise_scale,
        noise_scale_duration=v.noise_scale_duration,
        length_scale=v.length_scale,
        speaker_id=v.speaker_id,
    )


def validate(recipe: Recipe, out: Path, log: Log = _quiet) -> Manifest:
    """Parity of every exported artifact against the unpruned fp32 source, then report + manifest."""
    layout = Layout(out)
    model = _load_converted(layout)
    if not layout.export_index.is_file():
        raise BadInput(f"{layout.export_index}: nothing exported yet; run `voxport export` first")
    index = json.loads(layout.export_index.read_text())
    # The reference is the user's model before pruning, so pruning's cost shows in every figure.
    source = _load_source(recipe) if recipe.prune else model
    inputs = validation_inputs(recipe, source)
    reference = Reference(source, settings_for(recipe))
    artifacts, report = [], []
    for entry in index:
        started = time.perf_counter()
        runner = _runner(model, entry, out)
        thresholds = recipe.validation.thresholds_for(entry["precision"]) if recipe.validation else {}
        parity = measure_artifact(model, runner, reference, inputs, thresholds)
        log(
            f"validate: {entry['format']} {entry['precision']}: "
            f"{'pass' if parity.passed else 'FAIL: ' + '; '.join(parity.failures)} "
            f"({time.perf_counter() - started:.1f}s)"
        )
        artifacts.append(_artifact(out, entry, parity))
        report.append(_report_entry(entry, parity, thresholds))
    atomic_write_json(
        layout.report,
        {
            "voxport_version": __version__,
            "recipe": recipe.name,
            "artifacts": report,
        },
    )
    manifest = Manifest(
        voxport_version=__version__,
        recipe=recipe.resolved(),
        model=ModelInfo(family=source.family, source=str(recipe.model), parameters=model.parameters()),
        artifacts=artifacts,
        passed=all(a.parity.passed for a in artifacts),
        tool_versions=tool_versions(),
    )
    write_manifest(out, manifest)
    return manifest


def _artifact(out: Path, entry: dict[str, Any], parity: ArtifactParity) -> Artifact:
    primary = ArtifactFile.from_path(out, entry["path"], "primary")
    return Artifact(
        format=entry["format"],
        precision=entry["precision"],
        path=entry["path"],
        sha256=primary.sha256,
        bytes=primary.bytes,
        bits_per_weight=round(entry["bits_per_weight"], 4),
        skipped_weights=entry["skipped_weights"],
        files=[
            ArtifactFile.from_path(out, rel, graph)
            for graph, rel in {**entry["files"], **entry.get("sidecars", {})}.items()
        ],
        parity=Parity(passed=parity.passed, metrics=parity.metrics, failures=parity.failures),
    )


def _report_entry(
    entry: dict[str, Any], parity: ArtifactParity, thresholds: dict[str, Any]
) -> dict[str, Any]:
    return {
        "thresholds": {k: v.describe() for k, v in thresholds.items()},
        "format": entry["format"],
        "precision": entry["precision"],
        "path": entry["path"],
        "passed": parity.passed,
        "failures": parity.failures,
        "metrics": parity.metrics,
        "sentences": [
            {"input": s.label, "tokens": s.tokens, "metrics": s.metrics, "graphs": s.graphs}
            for s in parity.sentences
        ],
    }


def build(recipe: Recipe, out: Path, log: Log = _quiet) -> Manifest:
    """All stages in order. Format support is checked before any work, so a bad recipe fails fast."""
    check_supported(recipe)
    if recipe.validation is None:
        raise BadInput("the recipe has no validate: section; add validate.texts or validate.ids")
    convert(recipe, out, log)
    quantize(recipe, out, log)
    export(recipe, out, log)
    return validate(recipe, out, log)
