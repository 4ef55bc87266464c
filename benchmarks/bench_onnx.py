"""Benchmark voxport's ONNX artifacts: size, ONNX Runtime speed and parity per precision.

    .venv/bin/python benchmarks/bench_onnx.py [--size tiny|mms] [--repeats N] [--out DIR] [--json FILE]

It builds a random-weight VITS checkpoint, runs the real pipeline stages over it (convert, quantize,
export, validate: what `pipeline.build` runs, called one by one so the export stage can be timed on
its own), then times synthesis of every artifact against the fp32 torch reference *in the same run*.

Timing follows the environment notes in DESIGN.md: one intra-op thread for ONNX Runtime and for torch
(two threads on the 2-core shared machine were slower and erratic), medians of N repeats after one
warm-up round, and targets interleaved round-robin so that a burst of machine load hits all of them
alike. Ratios are only ever taken between numbers measured in this run.

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
from collections.abc import Callable, Sequence
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
TORCH = "torch"

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
    # gain 0.001: peak ≈ 0.5, rms ≈ 0.15 (0.01 still clipped 7% of samples); shift 2.0 → ~2.5 frames/token
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
    """The recipe the brief asks for: every ONNX precision, round-to-nearest, no thresholds."""
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
class Target:
    """One thing to time: the torch reference or one artifact's ONNX Runtime sessions."""

    name: str
    runner: Runner
    load_ms: float | None = None
    split_ms: list[float] = field(default_factory=list)
    tts_ms: list[float] = field(default_factory=list)
    audio_seconds: float = 0.0


def load_targets(model: FamilyModel, manifest: Manifest, out: Path) -> list[Target]:
    """Torch eager first, then one OrtRunner (1 intra-op thread) per artifact; session load timed."""
    targets = [Target(TORCH, model.torch_runner())]
    for artifact in manifest.artifacts:
        started = time.perf_counter()
        runner = OrtRunner({f.graph: out / f.path for f in artifact.files}, threads=1)
        targets.append(Target(artifact.precision, runner, load_ms=(time.perf_counter() - started) * 1e3))
    return targets


def _time_split(model: FamilyModel, target: Target, inputs: Sequence[list[int]],
                settings: SynthesisSettings) -> float:
    """The full split loop (encoder, then decoder) over every sentence, as validate runs it."""
    started = time.perf_counter()
    samples = sum(model.synthesize(target.runner, ids, settings).audio.size for ids in inputs)
    elapsed = (time.perf_counter() - started) * 1e3
    target.audio_seconds = samples / model.sample_rate
    return elapsed


def _time_tts(model: FamilyModel, target: Target, inputs: Sequence[list[int]],
              settings: SynthesisSettings) -> float:
    """The primary one-graph form users load (Piper interface, noise off)."""
    started = time.perf_counter()
    for ids in inputs:
        model.synthesize_primary(target.runner, ids, settings)
    return (time.perf_counter() - started) * 1e3


def time_round_robin(model: FamilyModel, targets: list[Target], inputs: Sequence[list[int]],
                     settings: SynthesisSettings, repeats: int, log: Callable[[str], None]) -> None:
    """One warm-up round, then `repeats` rounds; each round visits every target once, starting at a
    different target each time so no precision always runs right after the same neighbour."""
    torch.set_num_threads(1)
    for round_index in range(repeats + 1):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            split = _time_split(model, target, inputs, settings)
            tts = _time_tts(model, target, inputs, settings)
            if round_index:  # round 0 is the warm-up
                target.split_ms.append(split)
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
    """One line of the table (and one object of --json)."""

    target: str
    bytes_total: int | None
    bytes_primary: int | None
    bits_per_weight: float | None
    load_ms: float | None
    split_ms: float
    split_vs_fp32: float
    split_vs_torch: float
    tts_ms: float
    tts_vs_fp32: float
    tts_vs_torch: float
    audio_seconds: float
    real_time_factor: float
    split_ms_all: list[float]
    tts_ms_all: list[float]
    parity: dict[str, float | None]


def make_rows(targets: list[Target], manifest: Manifest) -> list[Row]:
    """Medians and same-run ratios, joined with the manifest's sizes and parity figures."""
    by_precision = {a.precision: a for a in manifest.artifacts}
    median = {t.name: (statistics.median(t.split_ms), statistics.median(t.tts_ms)) for t in targets}
    fp32_split, fp32_tts = median["fp32"]
    torch_split, torch_tts = median[TORCH]
    rows = []
    for t in targets:
        split, tts = median[t.name]
        artifact = by_precision.get(t.name)
        rows.append(Row(
            target=t.name if artifact else "torch eager (fp32)",
            bytes_total=sum(f.bytes for f in artifact.files) if artifact else None,
            bytes_primary=artifact.bytes if artifact else None,
            bits_per_weight=artifact.bits_per_weight if artifact else None,
            load_ms=t.load_ms,
            split_ms=split, split_vs_fp32=split / fp32_split, split_vs_torch=split / torch_split,
            tts_ms=tts, tts_vs_fp32=tts / fp32_tts, tts_vs_torch=tts / torch_tts,
            audio_seconds=t.audio_seconds, real_time_factor=split / 1e3 / t.audio_seconds,
            split_ms_all=t.split_ms, tts_ms_all=t.tts_ms,
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
    ("x fp32", lambda r: f"{r.split_vs_fp32:.2f}"),
    ("x torch", lambda r: f"{r.split_vs_torch:.2f}"),
    ("RTF", lambda r: f"{r.real_time_factor:.3f}"),
    ("tts ms", lambda r: f"{r.tts_ms:.0f}"),
    ("tts x fp32", lambda r: f"{r.tts_vs_fp32:.2f}"),
    ("tts x torch", lambda r: f"{r.tts_vs_torch:.2f}"),
    *((name, lambda r, name=name: _num(r.parity.get(name), ".3f")) for name in PARITY_COLUMNS),
)


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


def reference_sanity(model: FamilyModel, inputs: Sequence[list[int]],
                     settings: SynthesisSettings) -> dict[str, float]:
    """Reference audio level and speaking rate: saturated audio or 1-frame tokens would flatter parity."""
    torch.set_num_threads(1)
    runner = model.torch_runner()
    synths = [model.synthesize(runner, ids, settings) for ids in inputs]
    audio = np.concatenate([s.audio for s in synths])
    frames = sum(int(s.durations.sum()) for s in synths if s.durations is not None)
    return {
        "peak": float(np.abs(audio).max()),
        "rms": float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))),
        "clipped_fraction": float(np.mean(np.abs(audio) > 0.99)),
        "frames_per_token": frames / sum(len(ids) for ids in inputs),
    }


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="mms")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--out", type=Path, help="work directory (default scratch/bench/<size>)")
    parser.add_argument("--json", type=Path, help="also write the rows and run details as JSON here")
    parser.add_argument("--optimum-cli", help="an optimum-cli from another environment to compare against")
    parser.add_argument("--optimum-timeout", type=float, default=1200.0, help="seconds")
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
    sanity = reference_sanity(model, inputs, settings)
    targets = load_targets(model, manifest, build)
    time_round_robin(model, targets, inputs, settings, args.repeats, log)
    rows = make_rows(targets, manifest)

    log("optimum: exporting the same checkpoint")
    optimum = optimum_status(checkpoint, out / "optimum", args.optimum_cli, args.optimum_timeout)

    print(f"voxport ONNX benchmark: VITS size={args.size}, {model.parameters():,} inference parameters, "
          f"{len(inputs)} sentences ({sum(map(len, inputs))} tokens) per timing, median of {args.repeats} "
          f"after 1 warm-up, 1 intra-op thread (ORT and torch)")
    print(f"reference audio: {rows[0].audio_seconds:.2f}s, peak {sanity['peak']:.3f}, "
          f"rms {sanity['rms']:.3f}, clipped {sanity['clipped_fraction']:.2%}, "
          f"{sanity['frames_per_token']:.2f} frames/token")
    print()
    print(format_table(rows))
    print()
    print("split = encoder + decoder graphs (validate's loop, noise on); tts = primary one-graph file "
          "(noise off); x fp32 / x torch = median ratio in this run; RTF = split seconds / audio seconds")
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
