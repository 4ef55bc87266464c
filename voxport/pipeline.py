"""build(recipe): the stages in order, each reading what the previous one wrote under the output dir.

    OUT/stages/checkpoint/          convert (+ prune): full-precision, weight-norm folded checkpoint
    OUT/stages/quantized/P.safetensors   quantize: stored encodings per precision P
    OUT/<format>/...                export: the artifacts
    OUT/stages/export.json          export: which files make up which artifact
    OUT/phrases/                    phrases: pre-rendered audio + index.json (if the recipe lists any)
    OUT/report/audio/               validate: reference and exported audio per sentence
    OUT/report.json, report.html, manifest.json   validate: figures, the page people read, the verdict

Every unit of work (convert; quantize per precision; export per format × precision; the reference;
validate per artifact; phrases) goes through the content-addressed stage cache (voxport/cache.py): its
key chains the input file hashes, the unit's own recipe options and the voxport version, so an unchanged
rebuild restores files instead of computing them, a changed export option re-runs only export and
validate, and a build killed at any point resumes with the units that finished. Each stage command runs
the units it depends on first (cached ones cost a copy), like `make`.

Integrity, end to end: a cache entry is checked against the sha256 it recorded before it is restored (a
damaged one is dropped and recomputed); the export result records the sha256 of every file it wrote;
a validation's cache key includes those hashes, so a cached parity result can only certify the bytes it
measured; and the manifest is written only if the files on disk still hold them. A build holds a lock
on its output directory (voxport/lock.py), and removes the artifacts an earlier build wrote that this
one does not produce (`stages/owned.json` lists what voxport wrote; a user's own files are left alone).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

from voxport import __version__
from voxport.cache import (
    SOURCE_ROOT,
    Digests,
    EntryDamaged,
    FileDigest,
    StageCache,
    code_fingerprint,
    default_cache_dir,
    hash_inputs,
    stage_key,
)
from voxport.errors import BadInput, VoxportError
from voxport.export.registry import ExportContext, ExportEntry, FormatAdapter, formats, get_format
from voxport.families.base import CalibrationSet, Family, FamilyModel, MetricSpec, SynthesisSettings
from voxport.families.layouts.onnx import OnnxLayout
from voxport.families.registry import detect_family, families, family_of, load_model
from voxport.io import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_writable_dir,
    sweep_temporaries,
    write_wav,
)
from voxport.lock import OutputLock
from voxport.manifest import (
    Artifact,
    ArtifactFile,
    Manifest,
    ModelInfo,
    Parity,
    tool_versions,
    write_manifest,
)
from voxport.progress import CallbackProgress, NullProgress, Progress
from voxport.quantize.budget import budget_yaml
from voxport.quantize.methods import QuantMethod, method_class
from voxport.quantize.stage import (
    QuantizedModel,
    load_quantized,
    quantize_model,
    quantize_with_budget,
    quantized_info,
    save_quantized,
    summarize,
)
from voxport.recipe import PhrasesConfig, Recipe
from voxport.validate import asr
from voxport.validate.layouts import layout_reference, measure_layout, runner_label, unmeasured
from voxport.validate.objective import AudioObjective
from voxport.validate.parity import Reference, measure_sentence
from voxport.validate.thresholds import aggregate, check, failed_metrics, metric_specs, metrics_json

MARKER = "voxport.json"
#: what a finished build leaves at the top of OUT; removed when a build starts, written at its end
FINISHED = ("manifest.json", "report.json", "report.html")
REPORT_AUDIO = "report/audio"


def artifact_dirs() -> tuple[str, ...]:
    """Folders of OUT whose voxport-written files a later build removes when it no longer produces
    them: each registered format's (a format writes under its own name) and the phrases'."""
    return (*formats(), "phrases")


def _owned_prefixes() -> tuple[str, ...]:
    return tuple(f"{folder}/" for folder in (*artifact_dirs(), REPORT_AUDIO))


class Layout:
    def __init__(self, out: Path) -> None:
        self.out = out

    @property
    def checkpoint(self) -> Path:
        return self.out / "stages" / "checkpoint"

    def quantized(self, precision: str) -> Path:
        return self.out / "stages" / "quantized" / f"{precision}.safetensors"

    def budget_plan(self, precision: str) -> Path:
        """The mix a size budget chose, as a recipe fragment that rebuilds it by hand."""
        return self.out / "stages" / "quantized" / f"{precision}.budget.yaml"

    @property
    def export_index(self) -> Path:
        return self.out / "stages" / "export.json"

    @property
    def report(self) -> Path:
        return self.out / "report.json"

    def audio(self, group: str, index: int) -> Path:
        return self.out / "report" / "audio" / group / f"{index}.wav"

    @property
    def phrases(self) -> Path:
        return self.out / "phrases"

    @property
    def owned(self) -> Path:
        """Every path under OUT that voxport wrote (artifacts, phrases, report audio): what a later
        build may remove. Anything else under OUT is the user's."""
        return self.out / "stages" / "owned.json"


def check_supported(recipe: Recipe) -> None:
    """A recipe asking for a format no adapter is registered for fails before any work is done (a
    recipe validated while a since-removed format was registered, or built with `model_construct`)."""
    known = formats()
    unsupported = [f for f in recipe.formats if f not in known]
    if unsupported:
        raise BadInput(
            f"format {', '.join(unsupported)} cannot be produced by voxport {__version__} yet "
            f"(supported: {', '.join(known)}); remove it from formats:"
        )


def _as_progress(progress: Progress | Callable[[str], None] | None) -> Progress:
    if progress is None:
        return NullProgress()
    if hasattr(progress, "task"):
        return progress  # type: ignore[return-value]
    return CallbackProgress(progress)  # a plain `log(message)` callable


def _source_files(model: Path) -> Path | list[Path]:
    """What a source checkpoint is made of, for its cache key: a directory whole; a file with the
    sidecars that share its name (Piper's VOICE.onnx + VOICE.onnx.json)."""
    if model.is_dir():
        return model
    return sorted(p for p in model.parent.glob(model.name + "*") if p.is_file())


def _slug(text: str, index: int) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].rstrip("-")
    return f"{index:02d}-{words or 'phrase'}"


#: The code of each stage's unit, for its cache key (`cache.code_fingerprint`): the Build method that
#: computes it, followed through the helpers and imports it uses, and the output layout; validate adds
#: the parity code. pipeline.py holds every stage, so hashing the whole module (what it imports at the top
#: reaches every stage's code and the report) would make an edit of the report recompute every export:
#: the roots are the stage's own functions instead. `stage_fingerprint` adds the family's module and the
#: format adapter where the unit runs them. report.json and report.html are rendered on every build and
#: never cached.
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "convert": (f"{__name__}:Build._run_convert", f"{__name__}:Layout"),
    "quantize": (f"{__name__}:Build._run_quantize", f"{__name__}:Layout"),
    "export": (f"{__name__}:Build._run_export", f"{__name__}:Layout"),
    "reference": (f"{__name__}:Build._run_reference", f"{__name__}:Layout"),
    "validate": (f"{__name__}:Build._run_measure", f"{__name__}:Layout", "voxport.validate.parity"),
    "phrases": (f"{__name__}:Build._run_phrases", f"{__name__}:Layout"),
    "export-layout": (f"{__name__}:Build._run_export_layout", f"{__name__}:Layout"),
    "validate-layout": (
        f"{__name__}:Build._run_measure_layout",
        f"{__name__}:Layout",
        "voxport.validate.layouts",
    ),
    "asr": (f"{__name__}:Build._run_asr", "voxport.validate.asr"),
}
#: Build methods that restore or run a cached unit: a stage that uses one gets that unit's result as an
#: input, whose own key chains into the stage's, so the code behind them is not part of the stage's code
UNIT_BOUNDARIES: tuple[str, ...] = tuple(
    f"{__name__}:Build.{method}"
    for method in (
        "_unit",
        "convert",
        "quantize",
        "export",
        "reference_audio",
        "measure",
        "measure_layout",
        "phrases",
        "transcripts",
    )
)


def stage_fingerprint(
    stage: str,
    family: type[Family] | None = None,
    adapter: object | None = None,
    *,
    source: Path = SOURCE_ROOT,
) -> str:
    """The fingerprint of the code a unit of `stage` runs (`STAGE_CODE`), with the family's module and the
    format adapter's class when given; `source` is the directory holding the voxport package hashed."""
    roots = [*STAGE_CODE[stage]]
    if adapter is not None:  # a format adapter, or a quantization method's class
        cls = adapter if isinstance(adapter, type) else type(adapter)
        roots.append(f"{cls.__module__}:{cls.__qualname__}")
    if family is not None:
        roots.append(family.__module__)
    return code_fingerprint(tuple(roots), stop=UNIT_BOUNDARIES, source=source)


class Build:
    """One build directory for one recipe: the cache keys of every unit and the units themselves."""

    def __init__(
        self,
        recipe: Recipe,
        out: Path,
        progress: Progress | Callable[[str], None] | None = None,
        *,
        force: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        check_supported(recipe)
        if not recipe.model.exists():  # before the output directory is created
            raise BadInput(f"checkpoint not found: {recipe.raw_model} (model: in the recipe)")
        self.recipe = recipe
        self.layout = Layout(ensure_writable_dir(out))
        self.out = self.layout.out
        self.progress = _as_progress(progress)
        self.force = force
        # first, before anything under OUT changes: a second build must not sweep the first's temporaries
        self.lock = OutputLock(self.out, _recipe_label(recipe)).acquire()
        self._finalizer = weakref.finalize(self, self.lock.release)
        if self.lock.unsupported:
            self.progress.log(
                f"lock: cannot lock {self.out} ({self.lock.unsupported}); two builds into it would not be "
                "noticed"
            )
        self.digests = Digests()
        self.cache = StageCache(default_cache_dir(self.out, cache_dir), self.digests)
        self.formats: dict[str, FormatAdapter[Any, Any]] = {name: get_format(name) for name in recipe.formats}
        self.owned = _read_owned(self.layout)
        # manifest.json present means "this directory holds a finished, validated build"; whatever this
        # run changes, that stops being true until validate writes a new one. The report goes with it: a
        # killed rebuild must not leave the previous report looking current.
        for name in FINISHED:
            (self.out / name).unlink(missing_ok=True)
        for path in sweep_temporaries(self.out, skip=self.cache.root):
            self.progress.log(f"removed {path.relative_to(self.out)} left by an interrupted build")
        self._prepared: dict[str, Any] = {}
        self._quant_method: QuantMethod | None = None
        self._candidates: dict[str, QuantizedModel] = {}
        self._objectives: dict[int, AudioObjective] = {}
        self._sensitivities: dict[str, dict[tuple[str, str], float]] = {}
        self._layout_references: dict[str, Reference] = {}
        self._converted: dict[str, Any] | None = None
        #: files the units of this run produced or restored (relative to OUT)
        self.produced: set[str] = set()

    def close(self) -> None:
        """Release the output directory's lock (also done when the object is collected or the process
        exits, however it exits)."""
        self._finalizer()

    def __enter__(self) -> Build:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- keys: everything that shapes a unit's output, and nothing else -------------------------------
    @cached_property
    def family(self) -> type[Family]:
        """The checkpoint's family (the recipe's `family:`, else detected from the files)."""
        return detect_family(self.recipe.model, self.recipe.family)

    @cached_property
    def source_hash(self) -> str:
        files = _source_files(self.recipe.model)
        if isinstance(files, Path):
            return hash_inputs(files)
        if not files:
            raise BadInput(f"checkpoint not found: {self.recipe.raw_model} (model: in the recipe)")
        return stage_key("source", [f.name for f in files], [hash_inputs(f) for f in files])

    @cached_property
    def key_convert(self) -> str:
        r = self.recipe
        config = {
            "family": r.family,
            "trust_pickle": r.trust_pickle,
            "prune": [p.model_dump() for p in r.prune],
        }
        inputs = [self.source_hash]
        return stage_key("convert", config, inputs, stage_fingerprint("convert", self.family))

    def key_quantize(self, precision: str) -> str:
        q = self.recipe.quantize
        config = {
            "precision": precision,
            "method": q.method,
            "block_size": q.block_size,
            "overrides": q.overrides_for(precision),
        }
        if q.int8_block_size is not None:  # per-channel int8 keeps its earlier keys
            config["int8_block_size"] = q.int8_block_size
        # only what a method has: an option-less, uncalibrated method (rtn) keeps its earlier keys
        if options := q.method_options():
            config["options"] = options
        if q.needs_calibration(precision):
            # texts, not token ids: the tokenizer is part of the converted checkpoint (key_convert)
            texts, ids = q.calibration_texts()
            config["calibration"] = {
                "sentences": {"texts": texts, "ids": ids},
                "seed": None if q.calibration is None else q.calibration.seed,
                "settings": calibration_settings(self.recipe).model_dump(mode="json"),
            }
        if precision in q.budget:
            config["budget"] = q.budget[precision].model_dump(mode="json")
        method = method_class(q.method)
        # a calibrated method or a budget runs the family's synthesis: that code shapes the codes too
        runs_model = q.needs_calibration(precision)
        code = stage_fingerprint("quantize", self.family if runs_model else None, method)
        return stage_key("quantize", config, [self.key_convert], code)

    def _export_config(self, fmt: str, precision: str) -> dict[str, Any]:
        """What shapes one precision's files in `fmt`: shared by the artifact and its runtime layouts."""
        return {
            "format": fmt,
            "precision": precision,
            "name": self.recipe.name,
            "options": self.formats[fmt].cache_options(self.recipe.export_options(fmt), precision),
        }

    def key_export(self, fmt: str, precision: str) -> str:
        config = self._export_config(fmt, precision)
        code = stage_fingerprint("export", self.family, self.formats[fmt])
        return stage_key("export", config, [self.key_convert, self.key_quantize(precision)], code)

    def _measure_config(self) -> dict[str, Any]:
        """Validate options that change the figures (thresholds only change the verdict)."""
        v = self.recipe.validation
        if v is None:
            return {}
        # the ASR gate transcribes in units of its own (`transcripts`): it changes no parity figure
        limits = {"thresholds", "precision_thresholds", "layout_thresholds", "asr"}
        return v.model_dump(mode="json", exclude=limits)

    @cached_property
    def key_reference(self) -> str:
        """The reference is the unpruned source model: pruning does not change it."""
        config = {"measure": self._measure_config(), "family": self.recipe.family}
        return stage_key("reference", config, [self.source_hash], stage_fingerprint("reference", self.family))

    def key_validate(self, entry: ExportEntry) -> str:
        """Bound to the sha256 of every file of the artifact measured: a cached result can never
        certify other bytes, whatever happened to the export entry in between."""
        # the platform picks the runtime for some formats (Core ML predict on macOS, else the interpreter)
        config = {"measure": self._measure_config(), "platform": sys.platform}
        hashes = [f"{rel}={sha}" for rel, sha in sorted(entry.sha256.items())]
        inputs = [self.key_export(entry.format, entry.precision), self.key_reference, *hashes]
        code = stage_fingerprint("validate", self.family, self.formats[entry.format])
        return stage_key("validate", config, inputs, code)

    @cached_property
    def key_phrases(self) -> str:
        phrases = self.recipe.phrases
        config = phrases.model_dump(mode="json") if phrases else None
        return stage_key("phrases", config, [self.source_hash], stage_fingerprint("phrases", self.family))

    # --- models, loaded only when a unit has to compute ------------------------------------------------
    @cached_property
    def model(self) -> FamilyModel:
        """The converted (maybe pruned) model the artifacts are exported from."""
        self.convert()
        return load_model(self.layout.checkpoint)

    @cached_property
    def source(self) -> FamilyModel:
        """The user's model before pruning: the reference every figure is measured against."""
        if not self.recipe.prune:
            return self.model
        return load_model(self.recipe.model, family=self.recipe.family, trust_pickle=self.recipe.trust_pickle)

    def _unit(self, stage: str, label: str, key: str, run: Callable[[], tuple[list[str], Any]]) -> Any:
        """Restore `key` from the cache, or run it and store its files and result.

        An entry whose files or record do not match the sha256 it recorded is dropped and recomputed:
        a shared CI cache must never ship a flipped byte as "cached"."""
        entry = None if self.force else self.cache.get(key)
        if entry is not None:
            try:
                result = self.cache.restore(key, self.out)
            except EntryDamaged as exc:
                self.progress.log(f"cache: entry for {label} is damaged ({exc.reason}); recomputing")
                self.cache.drop(key)
            else:
                self.progress.log(f"{label}: cached")
                self._own(entry["files"])
                return result
        files, result = run()
        self._own(files)  # before the copy into the cache: a build killed there still knows its files
        self.cache.put(key, stage, self.out, files, result, replace=self.force)
        return result

    # --- which files under OUT are voxport's --------------------------------------------------------
    def _own(self, files: Iterable[str]) -> None:
        """Record files this run wrote into OUT, in the ledger at once (a killed build's files stay
        known, so the next build can remove them if it does not produce them again)."""
        files = list(files)
        self.produced.update(files)
        mine = {rel for rel in files if rel.startswith(_owned_prefixes())}
        if not mine <= self.owned:
            self.owned.update(mine)
            _write_owned(self.layout, self.owned)

    def _remove_stale(self, prefixes: Iterable[str]) -> None:
        """Delete files an earlier build wrote under `prefixes` that this build did not produce.

        Only paths in the ledger are touched: a user's notes or scripts beside the artifacts stay (and
        `verify` reports them as unlisted)."""
        prefixes = tuple(p.rstrip("/") + "/" for p in prefixes)
        stale = sorted(rel for rel in self.owned - self.produced if rel.startswith(prefixes))
        for rel in stale:
            path = self.out / rel
            if _through_symlink(path.parent, self.out):
                continue  # never delete outside OUT through a folder someone replaced with a link
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            _remove_empty_parents(path.parent, self.out)
            self.progress.log(f"removed {rel}: written by an earlier build, not produced by this one")
        if stale:
            self.owned.difference_update(stale)
            _write_owned(self.layout, self.owned)

    def _check_unchanged(self, entry: ExportEntry) -> dict[str, FileDigest]:
        """The artifact's files as its export recorded them, or VoxportError: bytes that differ from the
        exported ones (changed under a running build) must never be measured or certified."""
        digests = {}
        for rel, sha in entry.sha256.items():
            try:
                digest = self.digests.of(self.out / rel)
            except OSError:
                digest = None
            if digest is None or digest.sha256 != sha:
                raise VoxportError(
                    f"{rel} changed during the build: it no longer holds the bytes export wrote "
                    f"(sha256 {sha[:12]}…); was something else writing into {self.out}? build again"
                )
            digests[rel] = digest
        return digests

    # --- units -------------------------------------------------------------------------------------
    def convert(self) -> dict[str, Any]:
        """Load the user's checkpoint, apply pruning, and save the full-precision model we export."""
        if self._converted is None:
            self._converted = self._unit("convert", "convert", self.key_convert, self._run_convert)
        return self._converted

    def _run_convert(self) -> tuple[list[str], Any]:
        recipe, layout = self.recipe, self.layout
        with self.progress.task("convert: loading the checkpoint") as advance:
            model = load_model(recipe.model, family=recipe.family, trust_pickle=recipe.trust_pickle)
            advance(1)
        self.progress.log(
            f"convert: {model.family}, {model.parameters():,} parameters from {recipe.raw_model}"
        )
        for spec in recipe.prune:
            stacks = {s.name: s for s in model.prunable_stacks()}
            if spec.stack not in stacks:
                raise BadInput(
                    f"prune: {model.family} has no prunable stack '{spec.stack}' "
                    f"(prunable: {', '.join(stacks) or 'none'})"
                )
            drop = (
                spec.layers if spec.layers is not None else list(range(1, stacks[spec.stack].num_layers, 2))
            )
            model = model.pruned(spec.stack, drop)
            self.progress.log(
                f"prune: dropped {spec.stack} layers {drop} → {model.parameters():,} parameters"
            )
        marker = layout.checkpoint / MARKER
        marker.unlink(missing_ok=True)  # the marker is written last: present means complete
        model.save(layout.checkpoint)
        files = sorted(p for p in layout.checkpoint.rglob("*") if p.is_file() and p.name != MARKER)
        rels = [p.relative_to(self.out).as_posix() for p in files] + [marker.relative_to(self.out).as_posix()]
        return rels, {
            "family": model.family,
            "parameters": model.parameters(),
            "sample_rate": model.sample_rate,
        }

    def quantize(self) -> None:
        for precision in self.recipe.precisions:
            self._unit(
                "quantize",
                f"quantize {precision}",
                self.key_quantize(precision),
                lambda p=precision: self._run_quantize(p),
            )

    def _run_quantize(self, precision: str) -> tuple[list[str], Any]:
        q = self.recipe.quantize
        started = time.perf_counter()
        method = self._method()
        calibration = calibration_set(self.recipe, self.model, precision)
        outputs = [self.layout.quantized(precision)]
        if precision in q.budget:
            budget = q.budget[precision]
            qm = quantize_with_budget(
                self.model,
                precision,
                method,
                bits_per_weight=budget.bits_per_weight,
                candidates=budget.candidates,
                objective=self._objective(budget.sentences),
                granularity=budget.granularity,
                sentences=budget.sentences,
                block_size=q.block_size,
                overrides=q.overrides_for(precision),
                calibration=calibration,
                memo=self._candidates,
                sensitivities=self._sensitivities.setdefault(
                    f"{budget.sentences}|{budget.granularity}|{sorted(q.overrides_for(precision).items())}",
                    {},
                ),
                progress=self.progress,
                int8_block_size=q.int8_block_size,
            )
            plan = self.layout.budget_plan(precision)
            plan.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(plan, budget_yaml(qm.budget or {}).encode())
            outputs.append(plan)
        else:
            with self.progress.task(f"quantize: {precision} ({q.method})"):
                qm = quantize_model(
                    self.model,
                    precision,
                    method=method,
                    block_size=q.block_size,
                    overrides=q.overrides_for(precision),
                    calibration=calibration,
                    int8_block_size=q.int8_block_size,
                )
        qm.summary = summarize(self.model.state_dict(), qm, method, q.block_size)
        save_quantized(qm, self.layout.quantized(precision))
        self.progress.log(
            f"quantize: {precision} ({q.method}) {qm.bits_per_weight(scale_bits=16):.2f} bits/weight, "
            f"{len(qm.skipped_weights())} kept at higher precision, {time.perf_counter() - started:.1f}s"
        )
        return [p.relative_to(self.out).as_posix() for p in outputs], None

    def _method(self) -> QuantMethod:
        """One method object per build: a calibrated method records each weight once and reuses it for
        every precision (and every budget candidate) of the build."""
        if self._quant_method is None:
            q = self.recipe.quantize
            self._quant_method = method_class(q.method)(q.options)
        return self._quant_method

    def _objective(self, sentences: int) -> AudioObjective:
        """The audio objective a budget minimises, on `sentences` of the calibration set at evenly spaced
        quantiles of their length (short and long ones both in, the longest few out: every unit's
        measurement synthesises all of them), built once per build."""
        if sentences not in self._objectives:
            calibration = calibration_set(self.recipe, self.model, None)
            assert calibration is not None
            ids = sorted(calibration.ids, key=len)
            n = min(sentences, len(ids))
            picked = [list(ids[int((i + 1) * len(ids) / (n + 2))]) for i in range(n)]
            self._objectives[sentences] = AudioObjective(
                self.model, picked, calibration.settings, metric_specs(family_of(self.model))
            )
        return self._objectives[sentences]

    def export(self) -> list[ExportEntry]:
        self.convert()
        self.quantize()
        index = []
        units = [(p, f) for p in self.recipe.precisions for f in self.recipe.formats]
        with self.progress.task("export", total=len(units)) as advance:
            for precision, fmt in units:
                record = self._unit(
                    "export",
                    f"export {fmt} {precision}",
                    self.key_export(fmt, precision),
                    lambda p=precision, f=fmt: self._run_export(f, p),
                )
                index.append(ExportEntry.from_json(record))
                advance(1)
        index += self._export_layouts()
        self._remove_stale(formats())
        atomic_write_json(self.layout.export_index, [entry.to_json() for entry in index])
        return index

    def _run_export(self, fmt: str, precision: str) -> tuple[list[str], Any]:
        adapter = self.formats[fmt]
        options = self.recipe.export_options(fmt)
        if fmt not in self._prepared:
            self._prepared[fmt] = adapter.prepare(self.model, options)
        started = time.perf_counter()
        qm = load_quantized(self.layout.quantized(precision))
        ctx = ExportContext(name=self.recipe.name, model=self.model, qm=qm, out=self.out, options=options)
        entry = adapter.export(ctx, self._prepared[fmt])
        files = list(dict.fromkeys([*entry.files.values(), *(entry.sidecars or {}).values()]))
        size = sum(self.digests.of(self.out / rel).bytes for rel in entry.files.values())
        entry.export_seconds = time.perf_counter() - started
        # what validate measures and the manifest certifies; hashed once (the cache reuses it)
        entry.sha256 = {rel: self.digests.of(self.out / rel).sha256 for rel in files}
        count = len(entry.files)
        self.progress.log(f"export: {fmt} {precision} → {entry.path} ({size / 1e6:.2f} MB in {count} files)")
        return files, entry.to_json()

    # --- reference, validate, phrases --------------------------------------------------------------
    @cached_property
    def inputs(self) -> list[tuple[str, list[int]]]:
        return validation_inputs(self.recipe, self.source)

    @cached_property
    def reference(self) -> Reference:
        return Reference(self.source, settings_for(self.recipe, self.source))

    def reference_audio(self) -> list[dict[str, Any]]:
        return self._unit("reference", "reference audio", self.key_reference, self._run_reference)

    def _run_reference(self) -> tuple[list[str], Any]:
        listing, files = [], []
        with self.progress.task("validate: reference audio", total=len(self.inputs)) as advance:
            for i, (label, ids) in enumerate(self.inputs):
                ref = self.reference.split(ids)
                path = self.layout.audio("reference", i)
                write_wav(path, ref.audio, ref.sample_rate)
                rel = path.relative_to(self.out).as_posix()
                listing.append({"input": label, "tokens": len(ids), "audio": rel})
                files.append(rel)
                advance(1)
        return files, listing

    @cached_property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """The metrics parity reports for this family: the core ones and the family's own."""
        return metric_specs(self.family)

    def measure(self, entry: ExportEntry) -> dict[str, Any]:
        """Parity figures of one artifact, for exactly the bytes its export recorded."""
        fmt, precision = entry.format, entry.precision
        self._check_unchanged(entry)
        result: dict[str, Any] = self._unit(
            "validate",
            f"validate {fmt} {precision}",
            self.key_validate(entry),
            lambda: self._run_measure(entry),
        )
        if result.get("artifact_sha256") != entry.sha256:  # the key binds them; a record can rot
            raise VoxportError(
                f"the validation of {entry.path} was measured on other bytes than the artifact's; "
                "build again with --force"
            )
        return result

    def _run_measure(self, entry: ExportEntry) -> tuple[list[str], Any]:
        fmt, precision = entry.format, entry.precision
        started = time.perf_counter()
        runner = self.formats[fmt].runner(self.model, entry, self.out)
        sentences, files = [], []
        with self.progress.task(f"validate: {fmt} {precision}", total=len(self.inputs)) as advance:
            for i, (label, ids) in enumerate(self.inputs):
                s = measure_sentence(self.model, runner, self.reference, ids, label, self.metrics)
                path = self.layout.audio(f"{fmt}-{precision}", i)
                write_wav(path, s.audio["test"], self.model.sample_rate)
                rel = path.relative_to(self.out).as_posix()
                files.append(rel)
                sentences.append(
                    {
                        "input": s.label,
                        "tokens": s.tokens,
                        "metrics": s.metrics,
                        "graphs": s.graphs,
                        "audio": rel,
                    }
                )
                advance(1)
        result = {
            "sentences": sentences,
            "runner": runner.name,
            "validate_seconds": time.perf_counter() - started,
            "artifact_sha256": dict(entry.sha256),
        }
        return files, result

    # --- runtime layouts (issue 13 §2.5): another runtime's files of an artifact, each its own unit ---
    def layout_names(self, fmt: str) -> tuple[str, ...]:
        """The family's runtime layouts in `fmt` (from the convert result: no checkpoint load), unless
        the format's options turn them off (`export.onnx.runtime_layouts: false`)."""
        if not getattr(self.recipe.export_options(fmt), "runtime_layouts", False):
            return ()
        return tuple(families()[self.convert()["family"]].layouts.get(fmt, ()))

    def key_export_layout(self, fmt: str, precision: str, name: str) -> str:
        config = {**self._export_config(fmt, precision), "layout": name}  # keys are hashed sorted
        code = stage_fingerprint("export-layout", self.family, self.formats[fmt])
        return stage_key("export-layout", config, [self.key_convert, self.key_quantize(precision)], code)

    def key_validate_layout(self, entry: ExportEntry) -> str:
        """As `key_validate`, plus what runs the files here (a result measured without the runtime is
        not reused once it is installed)."""
        assert entry.layout is not None
        config = {"measure": self._measure_config(), "runner": runner_label(entry.runtime)}
        hashes = [f"{rel}={sha}" for rel, sha in sorted(entry.sha256.items())]
        export_key = self.key_export_layout(entry.format, entry.precision, entry.layout)
        code = stage_fingerprint("validate-layout", self.family, self.formats[entry.format])
        return stage_key("validate-layout", config, [export_key, self.key_reference, *hashes], code)

    def _export_layouts(self) -> list[ExportEntry]:
        index = []
        for precision in self.recipe.precisions:
            for fmt in self.recipe.formats:
                for name in self.layout_names(fmt):
                    record = self._unit(
                        "export",
                        f"export {fmt} {precision} {name}",
                        self.key_export_layout(fmt, precision, name),
                        lambda p=precision, f=fmt, n=name: self._run_export_layout(f, p, n),
                    )
                    if record.get("unsupported"):
                        self.progress.log(
                            f"export: {fmt} {precision} {name} not written: {record['unsupported']}"
                        )
                    else:
                        index.append(ExportEntry.from_json(record))
        return index

    def _model_layout(self, fmt: str, name: str) -> OnnxLayout:
        layouts = {layout.name: layout for layout in self.model.runtime_layouts(fmt)}
        if name not in layouts:
            raise VoxportError(
                f"{self.model.family} declares the {fmt} runtime layout '{name}', but its model gives "
                f"{', '.join(layouts) or 'none'}"
            )
        return layouts[name]

    def _run_export_layout(self, fmt: str, precision: str, name: str) -> tuple[list[str], Any]:
        layout = self._model_layout(fmt, name)
        if layout.unsupported:
            return [], {
                "format": fmt,
                "precision": precision,
                "layout": name,
                "unsupported": layout.unsupported,
            }
        started = time.perf_counter()
        qm = load_quantized(self.layout.quantized(precision))
        options = self.recipe.export_options(fmt)
        ctx = ExportContext(name=self.recipe.name, model=self.model, qm=qm, out=self.out, options=options)
        entry = self.formats[fmt].export_layout(ctx, layout)
        files = list(entry.files.values())
        entry.runtime_layout = True
        entry.runtime = layout.runtime_package if layout.voice is not None else None
        entry.export_seconds = time.perf_counter() - started
        entry.sha256 = {rel: self.digests.of(self.out / rel).sha256 for rel in [entry.path, *files]}
        self.progress.log(f"export: {_unit_name(entry)} → {entry.path} ({len(files)} files)")
        return files, entry.to_json()

    def measure_layout(self, entry: ExportEntry) -> dict[str, Any]:
        """A runtime layout's figures, measured in its runtime, for exactly the bytes export recorded."""
        self._check_unchanged(entry)
        result: dict[str, Any] = self._unit(
            "validate",
            f"validate {_unit_name(entry)}",
            self.key_validate_layout(entry),
            lambda: self._run_measure_layout(entry),
        )
        if result.get("artifact_sha256") != entry.sha256:
            raise VoxportError(
                f"the validation of {entry.path} was measured on other bytes than the artifact's; "
                "build again with --force"
            )
        return result

    def _run_measure_layout(self, entry: ExportEntry) -> tuple[list[str], Any]:
        started = time.perf_counter()
        parity = unmeasured(entry.runtime)
        if parity is None:
            v = self.recipe.validation
            assert v is not None and entry.layout is not None  # validate() checked
            layout = self._model_layout(entry.format, entry.layout)
            if layout.name not in self._layout_references:
                self._layout_references[layout.name] = layout_reference(
                    self.source, layout, settings_for(self.recipe, self.source)
                )
            with self.progress.task(f"validate: {_unit_name(entry)}"):
                parity = measure_layout(
                    layout,
                    self.out / entry.path,
                    self._layout_references[layout.name],
                    v.texts,
                    id_inputs=len(v.ids),
                )
        files, sentences = [], []
        group = _unit_name(entry).replace(" ", "-")
        for i, s in enumerate(parity.sentences):
            test = self.layout.audio(group, i)
            ref = test.with_name(f"{i}.reference.wav")
            write_wav(test, s.audio, self.source.sample_rate)
            write_wav(ref, s.reference, self.source.sample_rate)
            rels = [p.relative_to(self.out).as_posix() for p in (test, ref)]
            files += rels
            sentences.append(
                {
                    "input": s.label,
                    "tokens": s.tokens,
                    "metrics": s.metrics,
                    "audio": rels[0],
                    "reference_audio": rels[1],
                }
            )
        if parity.reason:
            self.progress.log(f"validate: {_unit_name(entry)}: not measured ({parity.reason})")
        result = {
            "sentences": sentences,
            "runner": parity.runner,
            "reason": parity.reason,
            "validate_seconds": time.perf_counter() - started,
            "artifact_sha256": dict(entry.sha256),
        }
        return files, result

    # --- intelligibility gate (validate.asr) ----------------------------------------------------------
    def transcripts(self, label: str, audio_key: str, audio: list[str]) -> list[dict[str, Any]]:
        """Word errors of the validate texts in `audio` (WAVs under OUT, in input order, texts first),
        cached on the key of the unit that wrote the audio."""
        assert self.recipe.validation is not None
        config = {"texts": self.recipe.validation.texts, **asr.cache_config()}
        key = stage_key("asr", config, [audio_key], stage_fingerprint("asr"))
        return self._unit("asr", f"asr {label}", key, lambda: self._run_asr(label, audio))

    def _run_asr(self, label: str, audio: list[str]) -> tuple[list[str], Any]:
        assert self.recipe.validation is not None
        texts = self.recipe.validation.texts
        with self.progress.task(f"validate: asr {label}"):
            scored = asr.score_files(texts, [self.out / rel for rel in audio[: len(texts)]])
        return [], [s.to_json() for s in scored]

    def _asr_gate(self, reference: list[dict[str, Any]]) -> tuple[asr.Gate | None, dict[str, Any] | None]:
        """The gate with the reference's transcripts, and report.json's `asr` section; (None, None)
        without `validate.asr`, (None, why) where the `asr` extra is missing: skipped, never guessed."""
        v = self.recipe.validation
        if v is None or v.asr is None:
            return None, None
        reason = asr.missing_reason()
        if reason is not None:
            self.progress.log(f"validate: ASR gate skipped: {reason}")
            return None, asr.skipped(v.asr.max_wer_increase, reason)
        heard = self.transcripts("reference", self.key_reference, [r["audio"] for r in reference])
        gate = asr.Gate(v.asr.max_wer_increase, tuple(heard))
        self.progress.log(f"validate: asr reference: WER {gate.reference_wer:.3f} ({asr.MODEL_NAME})")
        return gate, gate.summary()

    def phrases(self) -> list[dict[str, Any]]:
        if self.recipe.phrases is None:
            return []
        return self._unit("phrases", "phrases", self.key_phrases, self._run_phrases)

    def _run_phrases(self) -> tuple[list[str], Any]:
        """Render with the full-precision source model: the best audio the device could ever play."""
        config = self.recipe.phrases
        assert config is not None
        settings = self.recipe.synthesis_settings("phrases", family_of(self.source))
        runner = self.source.torch_runner()
        listing, files = [], []
        with self.progress.task("phrases", total=len(config.texts)) as advance:
            for i, text in enumerate(config.texts):
                audio = self.source.synthesize(runner, self.source.text_to_ids(text), settings).audio
                path = self.layout.phrases / f"{_slug(text, i)}.wav"
                write_wav(path, audio, self.source.sample_rate)
                listing.append(
                    {
                        "text": text,
                        "file": path.name,
                        "seconds": round(audio.size / self.source.sample_rate, 3),
                    }
                )
                files.append(path.relative_to(self.out).as_posix())
                advance(1)
        index = self.layout.phrases / "index.json"
        atomic_write_json(
            index,
            {
                "sample_rate": self.source.sample_rate,
                # as the recipe wrote paths (a voice prompt), not this machine's absolute ones
                "settings": {**settings.model_dump(mode="json"), **_paths_as_given(config, settings)},
                "phrases": listing,
            },
        )
        return [*files, index.relative_to(self.out).as_posix()], listing

    def validate(self) -> Manifest:
        """Parity of every exported artifact against the unpruned fp32 source, then report + manifest."""
        if self.recipe.validation is None:
            raise BadInput(
                "the recipe has no validate: section (texts: or ids:), so parity cannot be measured"
            )
        index = self.export()
        reference = self.reference_audio()
        phrases = self.phrases()
        info = self.convert()
        gate, asr_report = self._asr_gate(reference)
        artifacts, report = [], []
        for entry in index:
            runtime_layout = entry.runtime_layout
            measured = self.measure_layout(entry) if runtime_layout else self.measure(entry)
            sentences = measured["sentences"]
            metrics = aggregate([s["metrics"] for s in sentences], self.metrics)
            if runtime_layout:  # layout limits apply where the runtime measured (never: None, no miss)
                thresholds = self.recipe.validation.layout_thresholds
                failures = [] if measured.get("reason") else check(metrics, thresholds)
            else:
                thresholds = self.recipe.validation.thresholds_for(entry.precision)
                if gate is not None:  # word errors of the artifact's own audio (runtime layouts: none)
                    heard = self.transcripts(
                        _unit_name(entry), self.key_validate(entry), [s["audio"] for s in sentences]
                    )
                    sentences, metrics, thresholds = gate.apply(sentences, metrics, thresholds, heard)
                failures = check(metrics, thresholds)
            verdict = "pass" if not failures else "FAIL: " + "; ".join(failures)
            self.progress.log(f"validate: {_unit_name(entry)}: {verdict}")
            artifact = _artifact(
                entry,
                self._check_unchanged(entry),  # the bytes on disk now, against what was measured
                Parity(passed=not failures, metrics=metrics, failures=failures),
            )
            artifacts.append(artifact)
            report.append(
                {
                    "format": entry.format,
                    "precision": entry.precision,
                    "path": entry.path,
                    "bytes": sum(f.bytes for f in artifact.files if f.graph in entry.files),
                    "bits_per_weight": entry.bits_per_weight,
                    "export_seconds": entry.export_seconds,
                    "validate_seconds": measured["validate_seconds"],
                    "runner": measured.get("runner"),
                    **({"layout": entry.layout, "note": measured["reason"]} if runtime_layout else {}),
                    "passed": not failures,
                    "failures": failures,
                    "metrics": metrics,
                    # as numbers: the report checks each sentence against them with Threshold.check
                    "thresholds": {k: v.model_dump(exclude_none=True) for k, v in thresholds.items()},
                    "failed_metrics": failed_metrics(metrics, thresholds) if failures else [],
                    "sentences": sentences,
                }
            )
        passed = all(a.parity.passed for a in artifacts)
        self._remove_stale(["phrases", REPORT_AUDIO])
        atomic_write_json(
            self.layout.report,
            {
                "voxport_version": __version__,
                "recipe": self.recipe.name,
                "family": info["family"],
                "sample_rate": info["sample_rate"],  # no checkpoint load on a fully cached rebuild
                "passed": passed,
                "metrics": metrics_json((*self.metrics, *(asr.ASR_METRICS if gate is not None else ()))),
                "reference": reference,
                "artifacts": report,
                "phrases": [{"text": p["text"], "audio": f"phrases/{p['file']}"} for p in phrases],
                "quantization": self._quantization_report(),
                **({"asr": asr_report} if asr_report is not None else {}),
            },
        )
        self._render_report()
        manifest = Manifest(
            voxport_version=__version__,
            recipe=self.recipe.resolved(families()[info["family"]]),
            model=ModelInfo(
                family=info["family"], source=str(self.recipe.model), parameters=info["parameters"]
            ),
            artifacts=artifacts,
            phrases=[self._file(f"phrases/{p['file']}", p["text"]) for p in phrases]
            + ([self._file("phrases/index.json", "index")] if phrases else []),
            passed=passed,
            tool_versions=tool_versions(),
        )
        write_manifest(self.out, manifest)
        return manifest

    def _quantization_report(self) -> dict[str, Any]:
        """Per integer precision: the method, what it did per module and, with a budget, the plan (and
        the file it was written to), for the report's quantization section."""
        out: dict[str, Any] = {}
        for precision in self.recipe.precisions:
            info = quantized_info(self.layout.quantized(precision))
            integer = any(row.get("error_vs_rtn") is not None for row in info.get("summary", []))
            if not (integer or info.get("budget")):
                continue
            if info.get("budget"):
                info["plan_file"] = self.layout.budget_plan(precision).relative_to(self.out).as_posix()
            out[precision] = info
        return out

    def _file(self, rel: str, graph: str) -> ArtifactFile:
        digest = self.digests.of(self.out / rel)
        return ArtifactFile(graph=graph, path=rel, sha256=digest.sha256, bytes=digest.bytes)

    def _render_report(self) -> None:
        from voxport.validate.report_html import render_report

        with self.progress.task("report.html"):
            render_report(self.out)


def validation_inputs(recipe: Recipe, model: FamilyModel) -> list[tuple[str, list[int]]]:
    if recipe.validation is None:
        raise BadInput("the recipe has no validate: section (texts: or ids:), so parity cannot be measured")
    inputs = [(text, model.text_to_ids(text)) for text in recipe.validation.texts]
    inputs += [(f"ids[{i}]", list(ids)) for i, ids in enumerate(recipe.validation.ids)]
    return inputs


def calibration_inputs(recipe: Recipe, model: FamilyModel) -> list[list[int]]:
    """Token ids of the calibration sentences (texts first, then ids): `quantize.calibration`'s, else
    the built-in English set, which needs a text frontend that reads English."""
    texts, ids = recipe.quantize.calibration_texts()
    out: list[list[int]] = []
    for text in texts:
        try:
            out.append(model.text_to_ids(text))
        except (BadInput, ValueError) as exc:
            where = (
                "quantize.calibration.texts"
                if recipe.quantize.calibration
                else "the built-in calibration set"
            )
            raise BadInput(
                f"{where}: cannot turn {text!r} into ids ({exc}); give quantize.calibration.ids "
                "(or texts this model's frontend reads)"
            ) from None
    return out + ids


def calibration_settings(recipe: Recipe, model: FamilyModel | None = None) -> SynthesisSettings:
    """The validate settings, with `quantize.calibration.seed` in place of validate.seed when given."""
    c = recipe.quantize.calibration
    settings = settings_for(recipe, model)
    return settings if c is None or c.seed is None else settings.model_copy(update={"seed": c.seed})


def calibration_set(recipe: Recipe, model: FamilyModel, precision: str | None) -> CalibrationSet | None:
    """What a calibrated method records on and a budget measures on; None when building `precision`
    needs neither (`precision` None: the set regardless)."""
    if precision is not None and not recipe.quantize.needs_calibration(precision):
        return None
    ids = calibration_inputs(recipe, model)
    return CalibrationSet(tuple(tuple(i) for i in ids), calibration_settings(recipe, model))


def settings_for(recipe: Recipe, model: FamilyModel | None = None) -> SynthesisSettings:
    """The synthesis settings parity runs with: the `validate:` section's keys in `model`'s family's own
    settings model (the recipe's family, detected from its checkpoint, when no model is given)."""
    family = family_of(model) if model is not None else detect_family(recipe.model, recipe.family)
    return recipe.synthesis_settings("validate", family)


def _paths_as_given(section: PhrasesConfig, settings: SynthesisSettings) -> dict[str, Any]:
    given = section.settings_given()
    return {k: given[k] for k in type(settings).path_fields() if given.get(k) is not None}


def _artifact(entry: ExportEntry, digests: dict[str, FileDigest], parity: Parity) -> Artifact:
    """The manifest's record of one artifact, from the digests `_check_unchanged` just confirmed."""
    primary = digests[entry.path]
    return Artifact(
        format=entry.format,
        precision=entry.precision,
        path=entry.path,
        sha256=primary.sha256,
        bytes=primary.bytes,
        bits_per_weight=round(entry.bits_per_weight, 4),
        skipped_weights=entry.skipped_weights,
        files=[
            ArtifactFile(graph=graph, path=rel, sha256=digests[rel].sha256, bytes=digests[rel].bytes)
            for graph, rel in entry.all_files.items()
        ],
        parity=parity,
        layout=entry.layout if entry.runtime_layout else None,
    )


def _unit_name(entry: ExportEntry) -> str:
    """The unit as logs name it: "onnx int8", or "onnx int8 sherpa-onnx" for a runtime layout."""
    name = f"{entry.format} {entry.precision}"
    return f"{name} {entry.layout}" if entry.runtime_layout else name


def _recipe_label(recipe: Recipe) -> str:
    """How the lock names a build's recipe: its file as the user would type it, else its name."""
    if recipe.source_path is None:
        return recipe.name
    path = Path(recipe.source_path).absolute()
    with contextlib.suppress(ValueError):
        return path.relative_to(Path.cwd()).as_posix()
    return str(path)


def _read_owned(layout: Layout) -> set[str]:
    """The ledger, plus what the previous build's manifest, export index and report list (a directory
    built before the ledger existed still has its old artifacts and audio recognised)."""
    owned: set[str] = set()
    with contextlib.suppress(OSError, ValueError, TypeError):
        owned.update(json.loads(layout.owned.read_text(encoding="utf-8"))["files"])
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        for entry in json.loads(layout.export_index.read_text(encoding="utf-8")):
            owned.update(entry["files"].values())
            owned.update(entry.get("sidecars", {}).values())
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        manifest = json.loads((layout.out / "manifest.json").read_text(encoding="utf-8"))
        for artifact in manifest["artifacts"]:
            owned.add(artifact["path"])
            owned.update(f["path"] for f in artifact.get("files", []))
        owned.update(f["path"] for f in manifest.get("phrases", []))
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        report = json.loads(layout.report.read_text(encoding="utf-8"))
        owned.update(r["audio"] for r in report.get("reference", []))
        owned.update(s["audio"] for a in report.get("artifacts", []) for s in a.get("sentences", []))
    return {rel for rel in owned if isinstance(rel, str) and _inside(rel)}


def _inside(rel: str) -> bool:
    """A ledger entry voxport may delete: relative, no `..`, under one of the folders it writes (a
    hand-edited ledger or manifest must not make a build delete anything else)."""
    path = Path(rel)
    return not path.is_absolute() and ".." not in path.parts and rel.startswith(_owned_prefixes())


def _write_owned(layout: Layout, owned: set[str]) -> None:
    layout.owned.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(layout.owned, {"files": sorted(owned)})


def _through_symlink(folder: Path, stop: Path) -> bool:
    """Whether a folder between OUT (exclusive) and `folder` (inclusive) is a symbolic link."""
    while folder != stop and stop in folder.parents:
        if folder.is_symlink():
            return True
        folder = folder.parent
    return False


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """rmdir folders emptied by a removal, up to (not including) OUT; a folder with anything left stays."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# --- the stage functions the CLI calls ------------------------------------------------------------------
ProgressArg = Progress | Callable[[str], None] | None


def convert(
    recipe: Recipe,
    out: Path,
    progress: ProgressArg = None,
    *,
    force: bool = False,
    cache_dir: Path | None = None,
) -> FamilyModel:
    with Build(recipe, out, progress, force=force, cache_dir=cache_dir) as build_:
        build_.convert()
        return build_.model


def quantize(
    recipe: Recipe,
    out: Path,
    progress: ProgressArg = None,
    *,
    force: bool = False,
    cache_dir: Path | None = None,
) -> None:
    with Build(recipe, out, progress, force=force, cache_dir=cache_dir) as build_:
        build_.convert()
        build_.quantize()


def export(
    recipe: Recipe,
    out: Path,
    progress: ProgressArg = None,
    *,
    force: bool = False,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """The export index as JSON (what `voxport export --json` prints)."""
    with Build(recipe, out, progress, force=force, cache_dir=cache_dir) as build_:
        return [entry.to_json() for entry in build_.export()]


def validate(
    recipe: Recipe,
    out: Path,
    progress: ProgressArg = None,
    *,
    force: bool = False,
    cache_dir: Path | None = None,
) -> Manifest:
    with Build(recipe, out, progress, force=force, cache_dir=cache_dir) as build_:
        return build_.validate()


def build(
    recipe: Recipe,
    out: Path,
    progress: ProgressArg = None,
    *,
    force: bool = False,
    cache_dir: Path | None = None,
    prune_cache: bool = False,
) -> Manifest:
    """All stages in order. Format support and the validate section are checked before any work.

    `prune_cache` then deletes every cache entry this build did not use (for a per-recipe CI cache)."""
    check_supported(recipe)
    if recipe.validation is None:
        raise BadInput("the recipe has no validate: section; add validate.texts or validate.ids")
    with Build(recipe, out, progress, force=force, cache_dir=cache_dir) as run:
        manifest = run.validate()
        if prune_cache:
            removed, freed = run.cache.prune(run.cache.touched)
            run.progress.log(f"cache: pruned {removed} unused entries ({freed / 1e6:.1f} MB)")
        return manifest
