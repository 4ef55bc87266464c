"""Benchmark voxport's ONNX artifacts: size, ONNX Runtime speed and parity per precision.

    .venv/bin/python benchmarks/bench_onnx.py [--size tiny|mms] [--repeats N] [--out DIR] [--json FILE]
        [--qdq-variants] [--optimum-cli PATH]

It builds a random-weight VITS checkpoint, runs the real pipeline stages over it (convert, quantize,
export, validate: what `pipeline.build` runs, called one by one so the export stage can be timed on
its own), then times synthesis of every artifact against the fp32 torch reference *in the same run*.

Timing follows the environment notes in DESIGN.md: one intra-op thread for ONNX Runtime and for torch
(two threads on the 2-core shared machine were slower and erratic), medians of N repeats after one
warm-up round, and targets interleaved round-robin so that a burst of machine load hits all of them
alike. Ratios are only ever taken between numbers measured in this run. Quantization can change
the predicted durations (int4 often by 10–20%), which changes how much audio there is to render, so
the equal-work "forced" timing (reference durations for everyone) is the one to compare compute by.

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
from voxport.families.base import FamilyModel, Runner, SynthesisSettings, load_model
from voxport.families.vits.synthetic import TINY_CONFIG, make_vits_checkpoint
from voxport.manifest import Manifest
from voxport.recipe import Recipe
from voxport.validate.runners import OrtRunner

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "int8", "int4")
PARITY_COLUMNS = ("forced_snr_db", "logmel_dtw_db", "mcd_db", "duration_match", "length_ratio")

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
            self.sessions[graph] = ort.InferenceSession(str(path), options,
                                                        providers=["CPUExecutionProvider"])


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
        files = {f.graph: out / f.path for f in artifact.files}
        runner, load_ms = _timed_load(lambda files=files: OrtRunner(files, threads=1))
        targets.append(Target(artifact.precision, artifact.precision, runner, load_ms))
        if qdq_variants and artifact.precision.startswith("int"):
            runner, load_ms = _timed_load(lambda files=files: ConfiguredOrtRunner(files, NO_QDQ))
            targets.append(Target(f"{artifact.precision} no-qdq", artifact.precision, runner, load_ms))
    return targets


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


def time_target(model: FamilyModel, target: Target, sentences: Sequence[Sentence],
                settings: SynthesisSettings) -> tuple[float, float, float]:
    """Three timings over every sentence, in ms:

    - split: the full split loop (encoder, then decoder) as validate runs it, with this artifact's own
      durations: what a user of the split graphs waits for;
    - forced: the same loop with the reference's durations, so every precision renders exactly the
      same frames: the like-for-like compute comparison (int4 may change durations by 20%);
    - tts: the primary one-graph file users load (Piper interface, noise off)."""
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


def time_round_robin(model: FamilyModel, targets: list[Target], sentences: Sequence[Sentence],
                     settings: SynthesisSettings, repeats: int, log: Callable[[str], None]) -> None:
    """One warm-up round, then `repeats` rounds; each round visits every target once, starting at a
    different target each time so no precision always runs right after the same neighbour."""
    torch.set_num_threads(1)
    for round_index in range(repeats + 1):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            split, forced, tts = time_target(model, target, sentences, settings)
            if round_index:  # round 0 is the warm-up
                target.split_ms.append(split)
                target.forced_ms.append(forced)
                target.tts_ms.append(tts)
        log(f"timing: round {round_index}/{repeats}{' (warm-up)' if not round_index else ''} done")


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
        return {"status": "ok", "seconds": seconds, "bytes": size,
                "line": f"optimum-cli export onnx: ok in {seconds:.1f}s ({_mb(size)} MB model.onnx)"}
    error = _first_error_line(proc.stderr + proc.stdout)
    left = f", left {_mb(size)} MB model.onnx" if size else ""
    return {"status": "error", "seconds": seconds, "bytes": size, "error": error,
            "line": f"optimum-cli export onnx: failed after {seconds:.1f}s{left}: {error}"}


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
    split_ms: float
    split_spread: float
    split_vs_fp32: float
    split_vs_torch: float
    forced_ms: float
    forced_vs_fp32: float
    tts_ms: float
    tts_vs_fp32: float
    tts_vs_torch: float
    audio_seconds: float
    real_time_factor: float
    split_ms_all: list[float]
    forced_ms_all: list[float]
    tts_ms_all: list[float]
    parity: dict[str, float | None]


def _spread(values: Sequence[float]) -> float:
    """Half the range as a fraction of the median: how far apart repeats were on this machine."""
    return (max(values) - min(values)) / 2 / statistics.median(values)


def make_rows(targets: list[Target], manifest: Manifest) -> list[Row]:
    """Medians and same-run ratios, joined with the manifest's sizes and parity figures."""
    by_precision = {a.precision: a for a in manifest.artifacts}
    med = {t.label: {k: statistics.median(getattr(t, f"{k}_ms")) for k in ("split", "forced", "tts")}
           for t in targets}
    fp32 = med["fp32"]
    ref = med[targets[0].label]
    rows = []
    for t in targets:
        m = med[t.label]
        artifact = by_precision.get(t.precision) if t.precision else None
        rows.append(Row(
            target=t.label,
            bytes_total=sum(f.bytes for f in artifact.files) if artifact else None,
            bytes_primary=artifact.bytes if artifact else None,
            bits_per_weight=artifact.bits_per_weight if artifact else None,
            load_ms=t.load_ms,
            split_ms=m["split"], split_spread=_spread(t.split_ms),
            split_vs_fp32=m["split"] / fp32["split"], split_vs_torch=m["split"] / ref["split"],
            forced_ms=m["forced"], forced_vs_fp32=m["forced"] / fp32["forced"],
            tts_ms=m["tts"], tts_vs_fp32=m["tts"] / fp32["tts"], tts_vs_torch=m["tts"] / ref["tts"],
            audio_seconds=t.audio_seconds, real_time_factor=m["split"] / 1e3 / t.audio_seconds,
            split_ms_all=t.split_ms, forced_ms_all=t.forced_ms, tts_ms_all=t.tts_ms,
            parity=dict(artifact.parity.metrics) if artifact else {},
        ))
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
    ("split ms", lambda r: f"{r.split_ms:.0f}"),
    ("±", lambda r: f"{r.split_spread:.0%}"),
    ("/fp32", lambda r: f"{r.split_vs_fp32:.2f}"),
    ("/torch", lambda r: f"{r.split_vs_torch:.2f}"),
    ("RTF", lambda r: f"{r.real_time_factor:.3f}"),
    ("forced ms", lambda r: f"{r.forced_ms:.0f}"),
    ("/fp32", lambda r: f"{r.forced_vs_fp32:.2f}"),
    ("tts ms", lambda r: f"{r.tts_ms:.0f}"),
    ("/fp32", lambda r: f"{r.tts_vs_fp32:.2f}"),
    ("/torch", lambda r: f"{r.tts_vs_torch:.2f}"),
    *((name, lambda r, name=name: _num(r.parity.get(name), ".3f")) for name in PARITY_COLUMNS),
)

LEGEND = """\
split = encoder + decoder graphs, validate's loop (noise on, the artifact's own durations); ± = half
  the range of the repeats; RTF = split seconds per second of audio it produced
forced = the same loop given the fp32 reference's durations: equal work for every row
tts = the primary one-graph file (noise off); /fp32, /torch = ratio of medians from this run
parity figures are the manifest's (worst sentence); no-qdq rows reuse their artifact's figures"""


def format_table(rows: Sequence[Row]) -> str:
    """Plain aligned text: first column left, numbers right."""
    cells = [[name for name, _ in COLUMNS]] + [[cell(r) for _, cell in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for line in cells:
        parts = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def reference_sentences(model: FamilyModel, inputs: Sequence[list[int]], settings: SynthesisSettings,
                        ) -> tuple[list[Sentence], dict[str, float]]:
    """The torch reference once per sentence: its durations (for forced timing) and a sanity check
    of its audio, since saturated audio or 1-frame tokens would flatter every figure."""
    torch.set_num_threads(1)
    runner = model.torch_runner()
    synths = [model.synthesize(runner, ids, settings) for ids in inputs]
    sentences = []
    for ids, synth in zip(inputs, synths, strict=True):
        assert synth.durations is not None, "VITS reports durations"
        sentences.append(Sentence(ids, synth.durations[None].astype(np.float32)))
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
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--out", type=Path, help="work directory (default scratch/bench/<size>)")
    parser.add_argument("--json", type=Path, help="also write the rows and run details as JSON here")
    parser.add_argument("--optimum-cli", help="an optimum-cli from another environment to compare against")
    parser.add_argument("--optimum-timeout", type=float, default=1200.0, help="seconds")
    parser.add_argument("--qdq-variants", action="store_true",
                        help="also time int8/int4 with ORT's session.disable_quant_qdq=1 "
                             "(weights folded to fp32 at load)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = (args.out or REPO / "scratch" / "bench" / args.size).resolve()
    out.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    checkpoint = build_checkpoint(args.size, out / "checkpoint")
    recipe = make_recipe(checkpoint, f"bench-{args.size}")
    build = out / "build"
    manifest, stage_seconds = run_pipeline(recipe, build, log)

    model = load_model(pipeline.Layout(build).checkpoint)
    settings = pipeline.settings_for(recipe)
    inputs = [ids for _, ids in pipeline.validation_inputs(recipe, model)]
    sentences, sanity = reference_sentences(model, inputs, settings)
    targets = load_targets(model, manifest, build, args.qdq_variants)
    time_round_robin(model, targets, sentences, settings, args.repeats, log)
    rows = make_rows(targets, manifest)

    log("optimum: exporting the same checkpoint")
    optimum = optimum_status(checkpoint, out / "optimum", args.optimum_cli, args.optimum_timeout)

    print(f"voxport ONNX benchmark: VITS size={args.size}, {model.parameters():,} inference parameters, "
          f"{len(inputs)} sentences ({sum(map(len, inputs))} tokens) per timing, median of {args.repeats} "
          f"after 1 warm-up, 1 intra-op thread (ORT and torch)")
    print(f"reference audio: {sanity['audio_seconds']:.2f}s, peak {sanity['peak']:.3f}, "
          f"rms {sanity['rms']:.3f}, clipped {sanity['clipped_fraction']:.2%}, "
          f"{sanity['frames_per_token']:.2f} frames/token")
    print()
    print(format_table(rows))
    print()
    print(LEGEND)
    print(f"export stage wall time: {stage_seconds['export']:.1f}s for {len(PRECISIONS)} precisions "
          f"(convert {stage_seconds['convert']:.1f}s, quantize {stage_seconds['quantize']:.1f}s, "
          f"validate {stage_seconds['validate']:.1f}s)")
    print(optimum["line"])

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "size": args.size, "repeats": args.repeats, "parameters": model.parameters(),
            "texts": list(TEXTS), "tokens": [len(ids) for ids in inputs], "reference": sanity,
            "stage_seconds": stage_seconds, "optimum": optimum, "rows": [asdict(r) for r in rows],
            "versions": {**manifest.tool_versions, "python": platform.python_version()},
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
