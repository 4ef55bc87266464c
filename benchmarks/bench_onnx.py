"""Benchmark voxport's ONNX artifacts: size, ONNX Runtime speed and parity per precision.

    .venv/bin/python benchmarks/bench_onnx.py [--size tiny|mms | --recipe RECIPE.yaml] [--repeats N]
        [--out DIR] [--json FILE] [--qdq-variants] [--optimum-cli PATH]

It builds a random-weight VITS checkpoint, runs the real pipeline stages over it (convert, quantize,
export, validate: what `pipeline.build` runs, called one by one so the export stage can be timed on
its own), then times synthesis of every artifact against the fp32 torch reference *in the same run*.

Timing follows the environment notes in DESIGN.md: one intra-op thread for ONNX Runtime and for torch
(two threads on the 2-core shared machine were slower and erratic), medians of N repeats after one
warm-up round, and targets interleaved round-robin so that a burst of machine load hits all of them
alike. Ratios are only ever taken between numbers measured in this run. Quantization can change
the predicted durations (int4 often by 10–20%), which changes how much audio there is to render, so
the equal-work "forced" timing (reference durations for everyone) is the one to compare compute by.

With `--recipe` it benchmarks a real recipe instead (its model must exist): the recipe's precisions,
quantize settings, validate texts and synthesis settings, built into --out. It then also applies ONNX
Runtime's own `onnxruntime.quantization.quantize_dynamic` (its defaults: int8 weights, QInt8) to the
fp32 primary one-graph file and times it as an extra row, "ort-dynamic-int8", on the `tts` graph only
(the same sentences and noise-off scales [0, length_scale, 0] as every other row's tts timing). Every
ONNX row also gets in-run tts-graph parity against the fp32 torch reference's tts graph (log-mel DTW,
MCD, audio length ratio; worst sentence), since the one-graph file reports no durations.

Random weights need two fixes to look like a voice in the figures that matter here: the vocoder's
last convolution is scaled down (`output_gain`) so the audio is not saturated at ±1, which would make
parity look perfect; and at the MMS size the synthetic duration predictor gives every token exactly
one frame, so it is shifted to ~2.5 frames per token (a trained voice's speaking rate). Decoder work
grows with frames, so without that the encoder's share of the time would be overstated.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import VitsConfig

from voxport import pipeline
from voxport.families.base import FamilyModel, Runner, SynthesisSettings
from voxport.families.registry import load_model
from voxport.families.vits.synthetic import TINY_CONFIG, make_vits_checkpoint
from voxport.manifest import Manifest
from voxport.recipe import Recipe, load_recipe
from voxport.runtime.ort import OrtRunner
from voxport.validate.metrics import logmel_dtw_db, mcd_db

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "int8", "int4")
PARITY_COLUMNS = ("forced_snr_db", "logmel_dtw_db", "mcd_db", "duration_match", "length_ratio")
#: in-run parity of each row's tts graph against the torch reference's tts graph (worst sentence)
TTS_PARITY_COLUMNS = (("tts dtw", "logmel_dtw_db"), ("tts mcd", "mcd_db"), ("tts len", "length_ratio"))
#: the extra row: ONNX Runtime's quantize_dynamic applied to the fp32 primary file
ORT_DYNAMIC = "ort-dynamic-int8"
#: node types counted in the quantize_dynamic output: what it quantized and what it left in float
REPORTED_OPS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "Conv", "ConvTranspose", "MatMul")

#: lowercase, inside the synthetic checkpoint's character vocabulary, 40–80 characters each
TEXTS = (
    "the quick brown fox jumps over the lazy dog, twice.",
    "small models can still sound like big ones, if you quantize with care.",
    "please turn left at the next corner, then walk two blocks north.",
)

#: the key the synthetic fixture nudges to set speaking rate (see _set_speaking_rate)
DURATION_TRANSLATE = "duration_predictor.flows.0.translate"


@dataclass(frozen=True)
class Size:
    """How to build one checkpoint size, and the random-weight fixes it needs (see module doc)."""

    overrides: dict[str, Any]
    output_gain: float
    #: subtracted from the duration flow's translate: the reverse flow computes (x - translate), so
    #: this raises log-durations by about the same amount
    duration_shift: float


def _mms_overrides() -> dict[str, Any]:
    """transformers' VitsConfig defaults are the MMS-TTS size; TINY_CONFIG would win otherwise."""
    defaults = VitsConfig()
    return {key: getattr(defaults, key) for key in TINY_CONFIG}


SIZES: dict[str, Callable[[], Size]] = {
    "tiny": lambda: Size(overrides={}, output_gain=0.05, duration_shift=0.0),
    # gain 0.001: peak ≈ 0.5–0.7, rms ≈ 0.15 (0.01 still clipped 7% of samples); shift 2.0 → ~2.5 frames/token
    "mms": lambda: Size(overrides=_mms_overrides(), output_gain=0.001, duration_shift=2.0),
}


# --------------------------------------------------------------------------------------------- build
def build_checkpoint(size: str, directory: Path) -> Path:
    """A deterministic random-weight VITS checkpoint of the requested size."""
    spec = SIZES[size]()
    make_vits_checkpoint(directory, seed=0, overrides=spec.overrides, output_gain=spec.output_gain)
    if spec.duration_shift:
        _set_speaking_rate(directory / "model.safetensors", spec.duration_shift)
    return directory


def _set_speaking_rate(weights: Path, shift: float) -> None:
    """Lengthen durations in the saved checkpoint, so it goes through the pipeline like any other."""
    tensors = load_file(str(weights))
    tensors[DURATION_TRANSLATE][0] -= shift
    save_file(tensors, str(weights), metadata={"format": "pt"})


def make_recipe(checkpoint: Path, name: str) -> Recipe:
    """Every ONNX precision, round-to-nearest, no thresholds: this reports parity, it does not judge it."""
    return Recipe.from_mapping(
        {
            "name": name,
            "model": str(checkpoint),
            "formats": ["onnx"],
            "precisions": list(PRECISIONS),
            "quantize": {"method": "rtn"},
            "validate": {"texts": list(TEXTS)},
        },
        base_dir=checkpoint.parent,
    )


def run_pipeline(recipe: Recipe, out: Path, log: Callable[[str], None]) -> tuple[Manifest, dict[str, float]]:
    """pipeline.build's stages in its order, each timed, so export's wall time stands on its own."""
    pipeline.check_supported(recipe)
    seconds: dict[str, float] = {}
    manifest: Manifest | None = None
    for stage in ("convert", "quantize", "export", "validate"):
        started = time.perf_counter()
        result = getattr(pipeline, stage)(recipe, out, log)
        seconds[stage] = time.perf_counter() - started
        log(f"{stage}: {seconds[stage]:.1f}s wall")
        if stage == "validate":
            manifest = result
    assert manifest is not None
    return manifest, seconds


# -------------------------------------------------------------------------------------------- timing
@dataclass
class Sentence:
    """One timed input, with the reference's durations for the equal-work (forced) timing."""

    ids: list[int]
    reference_durations: np.ndarray
    #: the torch reference's primary (tts) graph audio, noise off, for in-run tts parity
    reference_tts_audio: np.ndarray | None = None


@dataclass
class Target:
    """One thing to time: the torch reference or one artifact's ONNX Runtime sessions."""

    label: str
    precision: str | None
    runner: Runner
    load_ms: float | None = None
    split_ms: list[float] = field(default_factory=list)
    forced_ms: list[float] = field(default_factory=list)
    tts_ms: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0
    #: only the primary `tts` graph exists (the quantize_dynamic row): no split or forced timing
    tts_only: bool = False
    #: primary-file bytes for a target that is not one of the manifest's artifacts
    primary_bytes: int | None = None
    tts_parity: dict[str, float] = field(default_factory=dict)


class ConfiguredOrtRunner(OrtRunner):
    """OrtRunner whose sessions also get ORT session config entries (e.g. session.disable_quant_qdq),
    with ort_session's other settings: one intra-op thread, CPU provider."""

    def __init__(self, files: Mapping[str, Path], entries: Mapping[str, str]) -> None:
        import onnxruntime as ort

        self.sessions = {}
        for graph, path in files.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            for key, value in entries.items():
                options.add_session_config_entry(key, value)
            self.sessions[graph] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )


#: ORT constant-folds weight DequantizeLinear only when QDQ handling is off (see --qdq-variants)
NO_QDQ = {"session.disable_quant_qdq": "1"}


def _timed_load(make: Callable[[], Runner]) -> tuple[Runner, float]:
    started = time.perf_counter()
    runner = make()
    return runner, (time.perf_counter() - started) * 1e3


def load_targets(model: FamilyModel, manifest: Manifest, out: Path, qdq_variants: bool) -> list[Target]:
    """Torch eager first, then one OrtRunner (1 intra-op thread) per artifact; session load timed.

    With `qdq_variants`, each int artifact also runs with session.disable_quant_qdq=1, which lets ORT
    fold DequantizeLinear into float weights at load: speed of fp32, memory of fp32."""
    targets = [Target("torch eager (fp32)", None, model.torch_runner())]
    for artifact in manifest.artifacts:
        # graphs only: a Piper voice also lists its .onnx.json sidecar among the files
        files = {f.graph: out / f.path for f in artifact.files if f.path.endswith(".onnx")}
        runner, load_ms = _timed_load(lambda files=files: OrtRunner(files, threads=1))
        targets.append(Target(artifact.precision, artifact.precision, runner, load_ms))
        if qdq_variants and artifact.precision.startswith("int"):
            runner, load_ms = _timed_load(lambda files=files: ConfiguredOrtRunner(files, NO_QDQ))
            targets.append(Target(f"{artifact.precision} no-qdq", artifact.precision, runner, load_ms))
    return targets


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


def time_target(
    model: FamilyModel, target: Target, sentences: Sequence[Sentence], settings: SynthesisSettings
) -> tuple[float | None, float | None, float]:
    """Three timings over every sentence, in ms:

    - split: the full split loop (encoder, then decoder) as validate runs it, with this artifact's own
      durations: what a user of the split graphs waits for;
    - forced: the same loop with the reference's durations, so every precision renders exactly the
      same frames: the like-for-like compute comparison (int4 may change durations by 20%);
    - tts: the primary one-graph file users load (Piper interface, noise off).
    A tts-only target (no split graphs) gets only the tts timing."""
    if target.tts_only:
        started = time.perf_counter()
        for s in sentences:
            model.synthesize_primary(target.runner, s.ids, settings)
        return None, None, _elapsed_ms(started)
    started = time.perf_counter()
    samples = sum(model.synthesize(target.runner, s.ids, settings).audio.size for s in sentences)
    split = _elapsed_ms(started)
    target.audio_seconds = samples / model.sample_rate
    started = time.perf_counter()
    for s in sentences:
        model.synthesize(target.runner, s.ids, settings, forced_durations=s.reference_durations)
    forced = _elapsed_ms(started)
    started = time.perf_counter()
    for s in sentences:
        model.synthesize_primary(target.runner, s.ids, settings)
    return split, forced, _elapsed_ms(started)


def time_round_robin(
    model: FamilyModel,
    targets: list[Target],
    sentences: Sequence[Sentence],
    settings: SynthesisSettings,
    repeats: int,
    log: Callable[[str], None],
) -> None:
    """One warm-up round, then `repeats` rounds; each round visits every target once, starting at a
    different target each time so no precision always runs right after the same neighbour."""
    torch.set_num_threads(1)
    for round_index in range(repeats + 1):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            split, forced, tts = time_target(model, target, sentences, settings)
            if round_index:  # round 0 is the warm-up
                if split is not None and forced is not None:
                    target.split_ms.append(split)
                    target.forced_ms.append(forced)
                target.tts_ms.append(tts)
        log(f"timing: round {round_index}/{repeats}{' (warm-up)' if not round_index else ''} done")


# ---------------------------------------------------------------------------- ORT quantize_dynamic
def ort_dynamic_defaults() -> dict[str, str]:
    """quantize_dynamic's keyword defaults as this onnxruntime has them (we pass none of them)."""
    import inspect

    from onnxruntime.quantization import quantize_dynamic

    params = inspect.signature(quantize_dynamic).parameters
    return {
        name: str(params[name].default)
        for name in ("weight_type", "per_channel", "reduce_range", "op_types_to_quantize")
        if name in params
    }


def ort_dynamic_int8(
    fp32_primary: Path,
    out: Path,
    log: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """onnxruntime.quantization.quantize_dynamic with its defaults on the fp32 one-graph file."""
    import logging

    import onnx
    from onnxruntime.quantization import quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    target = out / fp32_primary.name.replace(".fp32.onnx", ".ort-dynamic-int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # one shape-inference warning per int64 tensor otherwise
    started = time.perf_counter()
    try:
        quantize_dynamic(fp32_primary, target)
    finally:
        root.setLevel(level)
    seconds = time.perf_counter() - started
    ops: dict[str, int] = {}
    for node in onnx.load(str(target), load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    info = {
        "seconds": seconds,
        "bytes": target.stat().st_size,
        "source_bytes": fp32_primary.stat().st_size,
        "defaults": ort_dynamic_defaults(),
        "ops": {k: v for k, v in ops.items() if k in REPORTED_OPS},
    }
    log(f"ort quantize_dynamic: {_mb(info['source_bytes'])} → {_mb(info['bytes'])} MB in {seconds:.1f}s")
    return target, info


def measure_tts_parity(
    model: FamilyModel, target: Target, sentences: Sequence[Sentence], settings: SynthesisSettings
) -> None:
    """The target's tts graph against the torch reference's tts graph, worst sentence per figure;
    length_ratio is audio samples (the one-graph file reports no durations), worst |ratio − 1|."""
    dtw, mcd, ratios = [], [], []
    samples = 0
    for s in sentences:
        assert s.reference_tts_audio is not None
        audio = model.synthesize_primary(target.runner, s.ids, settings).audio
        samples += audio.size
        dtw.append(logmel_dtw_db(s.reference_tts_audio, audio, model.sample_rate))
        mcd.append(mcd_db(s.reference_tts_audio, audio, model.sample_rate))
        ratios.append(audio.size / s.reference_tts_audio.size)
    total_ref = sum(s.reference_tts_audio.size for s in sentences if s.reference_tts_audio is not None)
    target.tts_parity = {
        "logmel_dtw_db": max(dtw),
        "mcd_db": max(mcd),
        "length_ratio": max(ratios, key=lambda r: abs(r - 1.0)),
        "total_length_ratio": samples / total_ref,
    }
    if target.tts_only:
        target.audio_seconds = samples / model.sample_rate


# ----------------------------------------------------------------------------------------- optimum
def optimum_status(checkpoint: Path, out: Path, cli: str | None, timeout: float) -> dict[str, Any]:
    """What optimum's generic exporter does with the same checkpoint, for comparison only.

    `--task text-to-audio` is needed because optimum cannot infer a task from a local directory."""
    if cli is None:
        try:
            import optimum.exporters.onnx  # noqa: F401
        except ImportError:
            return {"status": "missing", "line": "optimum-onnx not installed: pip install optimum-onnx"}
        cli = str(Path(sys.executable).with_name("optimum-cli"))
    shutil.rmtree(out, ignore_errors=True)
    command = [cli, "export", "onnx", "--model", str(checkpoint), "--task", "text-to-audio", str(out)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        line = f"optimum-cli export onnx: timed out after {timeout:.0f}s"
        return {"status": "timeout", "seconds": timeout, "line": line}
    seconds = time.perf_counter() - started
    written = out / "model.onnx"
    size = written.stat().st_size if written.is_file() else None
    if proc.returncode == 0:
        return {
            "status": "ok",
            "seconds": seconds,
            "bytes": size,
            "line": f"optimum-cli export onnx: ok in {seconds:.1f}s ({_mb(size)} MB model.onnx)",
        }
    error = _first_error_line(proc.stderr + proc.stdout)
    left = f", left {_mb(size)} MB model.onnx" if size else ""
    return {
        "status": "error",
        "seconds": seconds,
        "bytes": size,
        "error": error,
        "line": f"optimum-cli export onnx: failed after {seconds:.1f}s{left}: {error}",
    }


def _first_error_line(text: str) -> str:
    """The first line of the exception message (a traceback's last `SomeError: ...` line)."""
    errors = [line for line in text.splitlines() if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    if errors:
        return errors[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# ------------------------------------------------------------------------------------------ report
@dataclass
class Row:
    """One line of the table (and one object of --json); ratios are of medians from this run."""

    target: str
    bytes_total: int | None
    bytes_primary: int | None
    bits_per_weight: float | None
    load_ms: float | None
    split_ms: float | None
    split_spread: float | None
    split_vs_fp32: float | None
    split_vs_torch: float | None
    forced_ms: float | None
    forced_vs_fp32: float | None
    tts_ms: float
    tts_spread: float
    tts_vs_fp32: float
    tts_vs_torch: float
    audio_seconds: float
    real_time_factor: float | None
    split_ms_all: list[float]
    forced_ms_all: list[float]
    tts_ms_all: list[float]
    parity: dict[str, float | None]
    tts_parity: dict[str, float]


def _spread(values: Sequence[float]) -> float:
    """Half the range as a fraction of the median: how far apart repeats were on this machine."""
    return (max(values) - min(values)) / 2 / statistics.median(values)


def make_rows(targets: list[Target], manifest: Manifest) -> list[Row]:
    """Medians and same-run ratios, joined with the manifest's sizes and parity figures."""
    by_precision = {a.precision: a for a in manifest.artifacts}
    med = {
        t.label: {
            k: statistics.median(v) if (v := getattr(t, f"{k}_ms")) else None
            for k in ("split", "forced", "tts")
        }
        for t in targets
    }
    fp32 = med["fp32"]
    ref = med[targets[0].label]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    rows = []
    for t in targets:
        m = med[t.label]
        artifact = by_precision.get(t.precision) if t.precision else None
        rows.append(
            Row(
                target=t.label,
                bytes_total=sum(f.bytes for f in artifact.files if f.path.endswith(".onnx"))
                if artifact
                else t.primary_bytes,
                bytes_primary=artifact.bytes if artifact else t.primary_bytes,
                bits_per_weight=artifact.bits_per_weight if artifact else None,
                load_ms=t.load_ms,
                split_ms=m["split"],
                split_spread=_spread(t.split_ms) if t.split_ms else None,
                split_vs_fp32=ratio(m["split"], fp32["split"]),
                split_vs_torch=ratio(m["split"], ref["split"]),
                forced_ms=m["forced"],
                forced_vs_fp32=ratio(m["forced"], fp32["forced"]),
                tts_ms=m["tts"],
                tts_spread=_spread(t.tts_ms),
                tts_vs_fp32=m["tts"] / fp32["tts"],
                tts_vs_torch=m["tts"] / ref["tts"],
                audio_seconds=t.audio_seconds,
                real_time_factor=ratio(m["split"], t.audio_seconds * 1e3) if m["split"] is not None else None,
                split_ms_all=t.split_ms,
                forced_ms_all=t.forced_ms,
                tts_ms_all=t.tts_ms,
                parity=dict(artifact.parity.metrics) if artifact else {},
                tts_parity=dict(t.tts_parity),
            )
        )
    return rows


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = (
    ("target", lambda r: r.target),
    ("all MB", lambda r: _mb(r.bytes_total)),
    ("tts MB", lambda r: _mb(r.bytes_primary)),
    ("bits/w", lambda r: _num(r.bits_per_weight, ".2f")),
    ("load ms", lambda r: _num(r.load_ms, ".0f")),
    ("split ms", lambda r: _num(r.split_ms, ".0f")),
    ("±", lambda r: _num(r.split_spread, ".0%")),
    ("/fp32", lambda r: _num(r.split_vs_fp32, ".2f")),
    ("/torch", lambda r: _num(r.split_vs_torch, ".2f")),
    ("RTF", lambda r: _num(r.real_time_factor, ".3f")),
    ("forced ms", lambda r: _num(r.forced_ms, ".0f")),
    ("/fp32", lambda r: _num(r.forced_vs_fp32, ".2f")),
    ("tts ms", lambda r: f"{r.tts_ms:.0f}"),
    ("±", lambda r: f"{r.tts_spread:.0%}"),
    ("/fp32", lambda r: f"{r.tts_vs_fp32:.2f}"),
    ("/torch", lambda r: f"{r.tts_vs_torch:.2f}"),
    *((name, lambda r, name=name: _num(r.parity.get(name), ".3f")) for name in PARITY_COLUMNS),
)
#: appended when tts parity was measured in-run (--recipe)
TTS_COLUMNS: tuple[tuple[str, Callable[[Row], str]], ...] = tuple(
    (title, lambda r, key=key: _num(r.tts_parity.get(key), ".3f")) for title, key in TTS_PARITY_COLUMNS
)

LEGEND = """\
split = encoder + decoder graphs, validate's loop (its noise settings, the artifact's own durations); ± = half
  the range of the repeats; RTF = split seconds per second of audio it produced
forced = the same loop given the fp32 reference's durations: equal work for every row
tts = the primary one-graph file (noise off); /fp32, /torch = ratio of medians from this run
parity figures are the manifest's (worst sentence); no-qdq rows reuse their artifact's figures"""

TTS_LEGEND = """\
tts dtw / tts mcd / tts len = this run's parity of the row's tts graph against the torch reference's
  tts graph (same ids, noise off), worst sentence; tts len = audio samples ratio (no durations there)
ort-dynamic-int8 = onnxruntime.quantization.quantize_dynamic (defaults) of the fp32 tts file: tts only"""


def format_table(rows: Sequence[Row], columns: Sequence[tuple[str, Callable[[Row], str]]] = COLUMNS) -> str:
    """Plain aligned text: first column left, numbers right."""
    cells = [[name for name, _ in columns]] + [[cell(r) for _, cell in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        parts = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def reference_sentences(
    model: FamilyModel,
    inputs: Sequence[list[int]],
    settings: SynthesisSettings,
) -> tuple[list[Sentence], dict[str, float]]:
    """The torch reference once per sentence: its durations (for forced timing) and a sanity check
    of its audio, since saturated audio or 1-frame tokens would flatter every figure."""
    torch.set_num_threads(1)
    runner = model.torch_runner()
    synths = [model.synthesize(runner, ids, settings) for ids in inputs]
    sentences = []
    for ids, synth in zip(inputs, synths, strict=True):
        assert synth.durations is not None, "VITS reports durations"
        tts_audio = model.synthesize_primary(runner, ids, settings).audio
        sentences.append(Sentence(ids, synth.durations[None].astype(np.float32), tts_audio))
    audio = np.concatenate([s.audio for s in synths])
    sanity = {
        "audio_seconds": audio.size / model.sample_rate,
        "peak": float(np.abs(audio).max()),
        "rms": float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))),
        "clipped_fraction": float(np.mean(np.abs(audio) > 0.99)),
        "frames_per_token": sum(int(s.reference_durations.sum()) for s in sentences)
        / sum(len(ids) for ids in inputs),
    }
    return sentences, sanity


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mms")
    parser.add_argument(
        "--recipe",
        type=Path,
        help="benchmark this recipe (its model must exist) instead of a random checkpoint; "
        "adds the ort-dynamic-int8 row",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument(
        "--out",
        type=Path,
        help="work directory (default scratch/bench/<size>, or scratch/bench/<recipe name>)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows and run details as JSON here")
    parser.add_argument("--optimum-cli", help="an optimum-cli from another environment to compare against")
    parser.add_argument("--optimum-timeout", type=float, default=1200.0, help="seconds")
    parser.add_argument(
        "--qdq-variants",
        action="store_true",
        help="also time int8/int4 with ORT's session.disable_quant_qdq=1 (weights folded to fp32 at load)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    if args.recipe is not None:
        recipe = load_recipe(args.recipe)
        if not Path(recipe.model).exists():
            raise SystemExit(f"{args.recipe}: model {recipe.model} does not exist (build or import it first)")
        label = f"recipe {recipe.name}"
        out: Path = (args.out or REPO / "scratch" / "bench" / recipe.name).resolve()
        checkpoint = None
    else:
        label = f"VITS size={args.size}"
        out = (args.out or REPO / "scratch" / "bench" / args.size).resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.recipe is None:
        checkpoint = build_checkpoint(args.size, out / "checkpoint")
        recipe = make_recipe(checkpoint, f"bench-{args.size}")
    build = out / "build"
    manifest, stage_seconds = run_pipeline(recipe, build, log)

    model = load_model(pipeline.Layout(build).checkpoint)
    settings = pipeline.settings_for(recipe)
    inputs = [ids for _, ids in pipeline.validation_inputs(recipe, model)]
    sentences, sanity = reference_sentences(model, inputs, settings)
    targets = load_targets(model, manifest, build, args.qdq_variants)
    columns = COLUMNS
    dynamic: dict[str, Any] | None = None
    if args.recipe is not None:
        fp32 = next(a for a in manifest.artifacts if a.precision == "fp32")
        dynamic_path, dynamic = ort_dynamic_int8(build / fp32.path, out / "ort-dynamic", log)
        runner, load_ms = _timed_load(lambda: OrtRunner({"tts": dynamic_path}, threads=1))
        targets.append(
            Target(ORT_DYNAMIC, None, runner, load_ms, tts_only=True, primary_bytes=dynamic["bytes"])
        )
        for target in targets[1:]:
            measure_tts_parity(model, target, sentences, settings)
        columns = (*COLUMNS, *TTS_COLUMNS)
        log("tts parity measured for every ONNX row")
    time_round_robin(model, targets, sentences, settings, args.repeats, log)
    rows = make_rows(targets, manifest)

    if checkpoint is not None:
        log("optimum: exporting the same checkpoint")
        optimum = optimum_status(checkpoint, out / "optimum", args.optimum_cli, args.optimum_timeout)
    else:
        optimum = {"status": "skipped", "line": "optimum-cli export: skipped (--recipe)"}

    texts = recipe.validation.texts if recipe.validation else list(TEXTS)
    print(
        f"voxport ONNX benchmark: {label}, {model.parameters():,} inference parameters, "
        f"{len(inputs)} sentences ({sum(map(len, inputs))} tokens) per timing, median of {args.repeats} "
        f"after 1 warm-up, 1 intra-op thread (ORT and torch)"
    )
    print(
        f"synthesis settings: noise_scale {settings.noise_scale}, noise_scale_duration "
        f"{settings.noise_scale_duration}, length_scale {settings.length_scale} "
        f"(tts graph: scales [0, {settings.length_scale}, 0] for every row)"
    )
    print(
        f"reference audio: {sanity['audio_seconds']:.2f}s, peak {sanity['peak']:.3f}, "
        f"rms {sanity['rms']:.3f}, clipped {sanity['clipped_fraction']:.2%}, "
        f"{sanity['frames_per_token']:.2f} frames/token"
    )
    print()
    print(format_table(rows, columns))
    print()
    print(LEGEND)
    if dynamic is not None:
        print(TTS_LEGEND)
        total = next(r for r in rows if r.target == ORT_DYNAMIC).tts_parity["total_length_ratio"]
        print(
            f"ort quantize_dynamic: {_mb(dynamic['source_bytes'])} → {_mb(dynamic['bytes'])} MB in "
            f"{dynamic['seconds']:.1f}s, defaults {dynamic['defaults']}; nodes {dynamic['ops']}; "
            f"total audio length ratio {total:.4f}"
        )
    print(
        f"export stage wall time: {stage_seconds['export']:.1f}s for {len(recipe.precisions)} precisions "
        f"(convert {stage_seconds['convert']:.1f}s, quantize {stage_seconds['quantize']:.1f}s, "
        f"validate {stage_seconds['validate']:.1f}s)"
    )
    print(optimum["line"])

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "size": None if args.recipe else args.size,
                    "recipe": str(args.recipe) if args.recipe else None,
                    "repeats": args.repeats,
                    "parameters": model.parameters(),
                    "texts": list(texts),
                    "tokens": [len(ids) for ids in inputs],
                    "reference": sanity,
                    "settings": asdict(settings),
                    "ort_dynamic": dynamic,
                    "stage_seconds": stage_seconds,
                    "optimum": optimum,
                    "rows": [asdict(r) for r in rows],
                    "versions": {**manifest.tool_versions, "python": platform.python_version()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
