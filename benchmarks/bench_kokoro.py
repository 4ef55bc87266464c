"""Kokoro-82M: a voxport build's ONNX files against the published int8 file, size, speed and fidelity.

    .venv/bin/python benchmarks/bench_kokoro.py --build build/kokoro-desktop [--repeats 3] [--threads 1,4]
        [--checkpoint DIR] [--source FILE] [--voice NAME] [--json FILE] [--write docs/benchmarks.md]

Why: issue 16's goals compare voxport's Kokoro builds with the file Kokoro's users run today, the published
int8 export (kokoro-onnx's `kokoro-v1.0.int8.onnx`, `voxport.families.kokoro.source.published_model()`),
and with voxport's own fp32, in ONE run on ONE machine: ratios between runs on a shared 2-core machine say
nothing. Rows: every one-graph `tts` ONNX file the build's manifest lists (one per precision, the file
kokoro-onnx and sherpa-onnx load), then the source int8 file. Columns:

- file MB: the one-graph `.onnx` alone (the voices and tokens files are shared by every precision);
- ORT ms: one whole sentence (TIMED) through the one-graph file in ONNX Runtime with `intra_op_num_threads`
  1 and 4 (`--threads`), medians of `--repeats` rounds after a warm-up; every round runs every
  (threads, file) pair once, starting at a different file each round so load bursts hit all alike; ratios
  against voxport's fp32 and the source int8 timed in the same rounds;
- fidelity on the HELD_OUT sentences against voxport's fp32 torch reference (the build's checkpoint,
  `KokoroModel.synthesize_primary` on its torch graphs, same ids, voice row and speed; the tts graph has
  no source noise, so the reference is deterministic): log-mel DTW dB (voxport.validate.metrics), length
  ratio of the audio, and the duration match (share of tokens with equal frames) of the artifact's split
  `encoder` graph in ORT against the torch encoder; the source file has no split graph, so "—".

HELD_OUT sentences appear in no recipe and not in the calibration set (checked at start, SystemExit
otherwise). The tts graphs need the `kokoro` extra (espeak-ng phonemes, the published parts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_fidelity import check_held_out, commit, held_out_sources, write_section  # noqa: E402

from voxport.errors import BadInput  # noqa: E402
from voxport.families.base import Runner  # noqa: E402
from voxport.families.kokoro.model import KokoroModel  # noqa: E402
from voxport.families.kokoro.settings import KokoroSettings  # noqa: E402
from voxport.families.kokoro.source import published_model  # noqa: E402
from voxport.families.registry import load_model  # noqa: E402
from voxport.runtime.ort import OrtRunner  # noqa: E402
from voxport.validate.metrics import duration_agreement, logmel_dtw_db  # noqa: E402

#: English, in no recipe and not in the calibration set (checked at start): a question, numbers as people
#: type them, a short exclamation, an everyday statement and a long sentence with clauses
HELD_OUT = (
    "Could you remind me when the pharmacy on Elm Street closes?",
    "The invoice lists 3 items, totaling 427 dollars, due on March 14th.",
    "Watch out, the floor is wet!",
    "Please keep your seatbelt fastened until the sign goes off.",
    "When the storm finally passed, the villagers walked down to the harbor, counted the damaged boats, "
    "and began to mend their torn nets.",
)
#: the sentence timed (index into HELD_OUT): an everyday sentence of about three seconds
TIMED = 3
BEGIN, END = "<!-- kokoro-table:begin -->", "<!-- kokoro-table:end -->"
SECTION = "## Kokoro-82M (benchmarks/bench_kokoro.py)"
SOURCE_LABEL = "source int8"
PRECISION_ORDER = ("fp32", "fp16", "int8", "int4")


# ------------------------------------------------------------------------------------------- artifacts
@dataclass(frozen=True)
class Artifact:
    """One one-graph file to measure, with the split encoder graph of the same build when there is one."""

    label: str
    precision: str
    tts: Path
    encoder: Path | None
    bits_per_weight: float | None

    @property
    def mb(self) -> float:
        return self.tts.stat().st_size / 1e6


def artifacts_in(build: Path) -> list[Artifact]:
    """The build's one-graph ONNX files (default layout), fp32 first, from its manifest.json."""
    manifest = build / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"{build}: no manifest.json; give --build the output directory of `voxport build`")
    found = []
    for entry in json.loads(manifest.read_text(encoding="utf-8"))["artifacts"]:
        if entry["format"] != "onnx" or entry.get("layout"):
            continue
        files = {f["graph"]: build / f["path"] for f in entry.get("files", [])}
        found.append(
            Artifact(
                f"voxport {entry['precision']}",
                entry["precision"],
                build / entry["path"],
                files.get("encoder"),
                entry.get("bits_per_weight"),
            )
        )
    if not found:
        raise SystemExit(f"{manifest}: lists no ONNX artifact; build the recipe with `formats: [onnx]`")
    rank = {p: i for i, p in enumerate(PRECISION_ORDER)}
    return sorted(found, key=lambda a: rank.get(a.precision, len(rank)))


def source_artifact(path: Path | None) -> Artifact:
    try:
        file = path if path is not None else published_model()
    except BadInput as exc:
        raise SystemExit(f"the published Kokoro int8 file: {exc}") from None
    return Artifact(SOURCE_LABEL, "int8", file, None, None)


# --------------------------------------------------------------------------------------------- measure
@dataclass
class Sentence:
    text: str
    ids: list[int]
    audio: np.ndarray  # the fp32 torch reference's one-graph output
    durations: np.ndarray  # the fp32 torch encoder's durations (frames per token, pads included)


@dataclass
class Target:
    artifact: Artifact
    runners: dict[int, Runner]  # threads -> runner over the one-graph file
    ms: dict[int, list[float]] = field(default_factory=dict)
    logmel: list[float] = field(default_factory=list)
    length_ratio: list[float] = field(default_factory=list)
    duration_match: list[float] = field(default_factory=list)


def encoder_durations(
    model: KokoroModel, runner: Runner, ids: Sequence[int], settings: KokoroSettings
) -> np.ndarray:
    """Frames per token from an `encoder` graph, fed as `KokoroModel.synthesize` feeds it."""
    tokens = np.asarray([[0, *ids, 0]], dtype=np.int64)
    feed = {
        "tokens": tokens,
        "style": model.style(settings, len(ids)),
        "speed": np.array([settings.speed], dtype=np.float32),
    }
    return np.rint(runner.run("encoder", feed)["durations"][0]).astype(np.int64)


def reference(model: KokoroModel, texts: Sequence[str], settings: KokoroSettings) -> list[Sentence]:
    runner = model.torch_runner()
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = model.text_to_ids(text)
            audio = model.synthesize_primary(runner, ids, settings).audio
            out.append(Sentence(text, ids, audio, encoder_durations(model, runner, ids, settings)))
    return out


def measure_fidelity(
    model: KokoroModel, target: Target, sentences: Sequence[Sentence], settings: KokoroSettings
) -> None:
    """Every sentence through the 1-thread session (also its warm-up), then the encoder's durations."""
    runner = target.runners[min(target.runners)]
    for s in sentences:
        audio = model.synthesize_primary(runner, s.ids, settings).audio
        target.logmel.append(logmel_dtw_db(s.audio, audio, model.sample_rate))
        target.length_ratio.append(audio.size / s.audio.size)
    if target.artifact.encoder is not None:
        encoder = OrtRunner({"encoder": target.artifact.encoder}, threads=1)
        for s in sentences:
            durations = encoder_durations(model, encoder, s.ids, settings)
            target.duration_match.append(duration_agreement(s.durations, durations)[0])


def time_rounds(
    model: KokoroModel,
    targets: Sequence[Target],
    ids: Sequence[int],
    settings: KokoroSettings,
    repeats: int,
    log: Callable[[str], None],
) -> None:
    """`repeats` rounds over every (threads, file) pair, the file order rotated each round."""
    for target in targets:  # warm-up of the sessions the fidelity pass did not run
        for threads, runner in target.runners.items():
            if threads != min(target.runners):
                model.synthesize_primary(runner, ids, settings)
            target.ms[threads] = []
    for index in range(repeats):
        shift = index % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            for threads, runner in target.runners.items():
                started = time.perf_counter()
                model.synthesize_primary(runner, ids, settings)
                target.ms[threads].append((time.perf_counter() - started) * 1e3)
        log(f"timing: round {index + 1}/{repeats} done")


# --------------------------------------------------------------------------------------------- results
@dataclass
class Result:
    """One row of the table and one object of --json."""

    label: str
    precision: str
    file_mb: float
    bits_per_weight: float | None
    ms: dict[str, float]  # threads -> median ms
    vs_fp32: dict[str, float | None]
    vs_source: dict[str, float | None]
    logmel_max: float
    logmel_mean: float
    duration_match_min: float | None
    length_ratio_min: float
    length_ratio_max: float
    per_sentence: dict[str, list[float]]
    rounds_ms: dict[str, list[float]]


def results(targets: Sequence[Target]) -> list[Result]:
    medians = {t.artifact.label: {n: statistics.median(ms) for n, ms in t.ms.items()} for t in targets}
    fp32 = medians.get("voxport fp32")
    source = medians.get(SOURCE_LABEL)

    def ratio(ms: float, base: Mapping[int, float] | None, threads: int) -> float | None:
        return None if base is None else ms / base[threads]

    out = []
    for t in targets:
        a, own = t.artifact, medians[t.artifact.label]
        out.append(
            Result(
                label=a.label,
                precision=a.precision,
                file_mb=a.mb,
                bits_per_weight=a.bits_per_weight,
                ms={str(n): ms for n, ms in own.items()},
                vs_fp32={str(n): ratio(ms, fp32, n) for n, ms in own.items()},
                vs_source={str(n): ratio(ms, source, n) for n, ms in own.items()},
                logmel_max=max(t.logmel),
                logmel_mean=statistics.fmean(t.logmel),
                duration_match_min=min(t.duration_match) if t.duration_match else None,
                length_ratio_min=min(t.length_ratio),
                length_ratio_max=max(t.length_ratio),
                per_sentence={
                    "logmel_dtw_db": t.logmel,
                    "length_ratio": t.length_ratio,
                    "duration_match": t.duration_match,
                },
                rounds_ms={str(n): ms for n, ms in t.ms.items()},
            )
        )
    return out


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def table(rows: Sequence[Result], threads: Sequence[int]) -> list[str]:
    header = ["file", "file MB", "bits/w"]
    for n in threads:
        header += [f"ORT ms, {n} thr", "÷ fp32", "÷ source"]
    header += ["log-mel dB worst", "log-mel dB mean", "duration match worst", "length ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.label, f"{r.file_mb:.2f}", _num(r.bits_per_weight, ".2f")]
        for n in threads:
            k = str(n)
            cells += [f"{r.ms[k]:.0f}", _num(r.vs_fp32[k], ".2f"), _num(r.vs_source[k], ".2f")]
        cells += [
            f"{r.logmel_max:.3f}",
            f"{r.logmel_mean:.3f}",
            _num(r.duration_match_min, ".3f"),
            f"{r.length_ratio_min:.3f}–{r.length_ratio_max:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def goal_checks(r: Result, rows: Sequence[Result]) -> list[tuple[str, bool | None, str]]:
    """Issue 16's goals for one voxport row: (goal, passed or None when unmeasurable, measured)."""
    by = {x.label: x for x in rows}
    source, fp32 = by.get(SOURCE_LABEL), by.get("voxport fp32")
    checks: list[tuple[str, bool | None, str]] = []

    def check(text: str, value: float | None, ok: Callable[[float], bool], fmt: str = ".3f") -> None:
        checks.append((text, None if value is None else ok(value), _num(value, fmt)))

    if r.precision == "int8" and source is not None:
        check(
            f"smaller than the source int8 ({source.file_mb:.2f} MB)",
            r.file_mb,
            lambda v: v < source.file_mb,
            ".2f",
        )
    if r.precision == "int4":
        check("one-graph file ≤ 50 MB", r.file_mb, lambda v: v <= 50.0, ".2f")
    if r.precision == "fp16" and fp32 is not None:
        check("half the fp32 size", r.file_mb / fp32.file_mb, lambda v: v <= 0.5)
    if r.precision in ("int8", "int4"):
        for n in r.ms:
            check(f"faster than the source int8, {n} thread(s) (÷ source)", r.vs_source[n], lambda v: v < 1.0)
            check(f"no slower than voxport fp32, {n} thread(s) (÷ fp32)", r.vs_fp32[n], lambda v: v <= 1.0)
    bound = {"int8": 0.5, "int4": 1.0, "fp16": 0.1}.get(r.precision)
    if bound is not None:
        check(f"log-mel ≤ {bound} dB (worst sentence)", r.logmel_max, lambda v: v <= bound)
    if r.precision == "int8":
        check("durations identical (worst sentence)", r.duration_match_min, lambda v: v == 1.0)
    if r.precision == "int4":
        check("duration match ≥ 0.95 (worst sentence)", r.duration_match_min, lambda v: v >= 0.95)
    return checks


def goal_lines(rows: Sequence[Result]) -> list[str]:
    lines = []
    for r in rows:
        if r.label == SOURCE_LABEL:
            continue
        checks = goal_checks(r, rows)
        if not checks:
            continue
        lines.append(f"Goals for `{r.label}`:")
        for text, ok, shown in checks:
            mark = "n/a " if ok is None else ("pass" if ok else "FAIL")
            lines.append(f"- {mark} {text}: {shown}")
    return lines


# -------------------------------------------------------------------------------------------- document
def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


@dataclass
class Run:
    results: list[Result]
    sentences: list[str]
    tokens: int
    audio_seconds: float
    timed_seconds: float
    voice: str
    checkpoint: str
    seconds: dict[str, float]


def report(
    run: Run, args: argparse.Namespace, argv: Sequence[str], stamp: str, loads: Sequence[str]
) -> list[str]:
    threads = [int(n) for n in run.results[0].ms]
    cpus = os.cpu_count() or 0
    oversubscribed = ", ".join(str(n) for n in threads if n > cpus)
    note = (
        f" The machine has {cpus} cores: {oversubscribed} threads oversubscribe them, so those columns "
        "show what ONNX Runtime does when asked for more threads than there are cores."
        if oversubscribed
        else ""
    )
    timed = HELD_OUT[TIMED]
    return [
        f"{len(run.sentences)} held-out English sentences ({run.tokens} phonemes, "
        f"{run.audio_seconds:.1f} s of audio) in no recipe and not in the calibration set; voice "
        f"`{run.voice}`, speed 1; reference: voxport's fp32 torch graphs on `{run.checkpoint}`. "
        f"Build `{args.build}`.",
        "",
        *table(run.results, threads),
        "",
        f"file MB: the one-graph `.onnx` alone. ORT ms: the sentence {timed!r} "
        f"({run.timed_seconds:.2f} s of audio) through the one-graph file, median of {args.repeats} "
        "rounds after a warm-up, every (threads, file) pair once per round, order rotated; ÷ fp32 and "
        "÷ source are against `voxport fp32` and the published `kokoro-v1.0.int8.onnx` in the same rounds."
        f"{note} log-mel (DTW) and length ratio (range over sentences): the one-graph file in ORT against "
        "the torch reference; duration match: the build's split `encoder` graph in ORT against the torch "
        "encoder (share of tokens with equal frames; the source file has no split graph).",
        "",
        *goal_lines(run.results),
        "",
        f"Generated by `{shlex.join(['benchmarks/bench_kokoro.py', *argv])}` at commit {stamp}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpus} CPUs "
        f"({platform.processor() or platform.machine()}), load average (1/5/15 min) {loads[0]} at the start, "
        f"{loads[1]} at the end; {sum(run.seconds.values()):.0f} s in all.",
    ]


# ------------------------------------------------------------------------------------------------ core
def run(args: argparse.Namespace, log: Callable[[str], None]) -> Run:
    torch.set_num_threads(1)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    artifacts = [*artifacts_in(args.build), source_artifact(args.source)]
    checkpoint = args.checkpoint or args.build / "stages" / "checkpoint"
    model = load_model(checkpoint)
    if not isinstance(model, KokoroModel):
        raise SystemExit(f"{checkpoint}: a {model.family} checkpoint, not Kokoro; give --checkpoint")
    manifest = json.loads((args.build / "manifest.json").read_text(encoding="utf-8"))
    voice = args.voice or manifest["recipe"].get("validate", {}).get("voice") or sorted(model.voices)[0]
    settings = KokoroSettings(voice=voice)
    seconds["load"] = time.perf_counter() - started

    started = time.perf_counter()
    sentences = reference(model, HELD_OUT, settings)
    seconds["reference"] = time.perf_counter() - started
    log(f"reference: {len(sentences)} sentences in {seconds['reference']:.1f}s")

    started = time.perf_counter()
    targets = []
    for a in artifacts:
        runners: dict[int, Runner] = {n: OrtRunner({"tts": a.tts}, threads=n) for n in args.threads}
        target = Target(a, runners)
        measure_fidelity(model, target, sentences, settings)
        log(f"fidelity {a.label}: log-mel worst {max(target.logmel):.3f} dB")
        targets.append(target)
    seconds["fidelity"] = time.perf_counter() - started

    started = time.perf_counter()
    time_rounds(model, targets, sentences[TIMED].ids, settings, args.repeats, log)
    seconds["timing"] = time.perf_counter() - started
    return Run(
        results=results(targets),
        sentences=list(HELD_OUT),
        tokens=sum(len(s.ids) for s in sentences),
        audio_seconds=sum(s.audio.size for s in sentences) / model.sample_rate,
        timed_seconds=sentences[TIMED].audio.size / model.sample_rate,
        voice=voice,
        checkpoint=str(checkpoint),
        seconds=seconds,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--build", type=Path, required=True, help="a `voxport build` output directory")
    parser.add_argument("--checkpoint", type=Path, help="the fp32 reference (default: the build's own)")
    parser.add_argument("--source", type=Path, help="the published int8 file (default: the kokoro extra's)")
    parser.add_argument("--voice", help="voice name (default: the recipe's validate voice, else the first)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--threads", default="1,4", help="comma-separated intra-op thread counts")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--write", type=Path, help="markdown file whose Kokoro-82M section to replace")
    args = parser.parse_args(argv)
    try:
        args.threads = sorted({int(n) for n in args.threads.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--threads: give comma-separated integers, got {args.threads!r}")
    if args.repeats < 1 or not args.threads or min(args.threads) < 1:
        parser.error("--repeats and every --threads count must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    check_held_out(HELD_OUT, held_out_sources())
    stamp = commit()  # the code measured, before anyone edits the checkout during the run
    load_start = load_average()
    result = run(args, log)
    lines = report(result, args, argv, stamp, [load_start, load_average()])
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {**asdict(result), "argv": argv, "commit": stamp, "repeats": args.repeats}
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    if args.write:
        write_section(args.write, lines, begin=BEGIN, end=END, section=SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
