"""Benchmark first audio for a VITS artifact: whole-utterance synthesis against exact chunked streaming.

    .venv/bin/python benchmarks/bench_streaming.py [--artifact build/joe-medium/onnx/joe-medium.int8.onnx]
        [--repeats 5] [--threads 1] [--json FILE] [--write docs/benchmarks.md]

Why: a VITS voice used to render a whole utterance before its first sample, so the time to first audio
(TTFA) was the whole synthesis. voxport now splits text into sentences as Piper does and decodes each
sentence in chunks of frames whose windows come from the network's receptive field (exact: the same
samples). This script measures what that buys on a real voice, in ONNX Runtime on `--threads` threads,
with one paragraph of ~40 words (PARAGRAPH, in no recipe and not in the calibration set: the script
refuses to run otherwise). Rows, all on the same artifact's files, interleaved round-robin over
`--repeats` (one warm-up), medians:

- `one graph, whole utterance`: Piper's interface (`<name>.<p>.onnx`, what Piper and sherpa-onnx run);
- `split graphs, whole utterance`: encoder + decoder graphs on the paragraph as one utterance, the
  non-streamed reference the goals are judged against;
- `chunked, whole utterance`: the same utterance, decoded by the flow and vocoder graphs in chunks
  (default schedule: 16 frames, doubling to 128); its audio against the reference row gives the
  exactness figure (SNR, same length);
- `by sentence, whole sentences`: Piper's own streaming: one sentence at a time;
- `by sentence + chunks`: what `voxport.load(path).stream(text)` and `voxport say` do (the first
  sentence in the growing schedule; later ones, which continue a text already playing, each in one
  window of the same graphs).

TTFA runs from the call (ids in hand) to the first audio chunk; RTF is compute seconds over audio
seconds. Goals (issue 15): TTFA ≤ 0.1× the reference row, streamed audio = whole-utterance audio
(SNR ≥ 60 dB), total ≤ 1.05× the reference row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_fidelity import check_held_out, held_out_sources  # noqa: E402

from voxport.families.vits.artifact import VitsArtifactVoice  # noqa: E402
from voxport.families.vits.loop import frame_noise, run_encoder  # noqa: E402
from voxport.families.vits.settings import VitsSettings  # noqa: E402
from voxport.families.vits.streaming import chunk_sizes, decode_chunks, prior_sample  # noqa: E402
from voxport.runtime.ort import OrtRunner, ort_session  # noqa: E402
from voxport.validate.metrics import waveform_snr_db  # noqa: E402

#: 40 words, three sentences, in no recipe and not in the calibration set
PARAGRAPH = (
    "The old lighthouse keeper climbed the winding stairs every evening at dusk. "
    "He lit the lamp, polished the heavy lens, and wrote a short note in his log. "
    "Ships passed safely through the narrow channel below, and nobody ever learned his name."
)
BEGIN, END = "<!-- streaming-table:begin -->", "<!-- streaming-table:end -->"
GOAL_TTFA, GOAL_SNR_DB, GOAL_TOTAL = 0.1, 60.0, 1.05


@dataclass
class Timing:
    first: float
    total: float
    audio: np.ndarray
    chunks: int


@dataclass
class Row:
    name: str
    ttfa_ms: float
    total_ms: float
    rtf: float
    chunks: int
    seconds: float
    ttfa_ratio: float
    total_ratio: float
    snr_db: float | None


def timed(chunks: Callable[[], Iterator[np.ndarray]]) -> Timing:
    started = time.perf_counter()
    first: float | None = None
    parts = []
    for chunk in chunks():
        if first is None:
            first = time.perf_counter() - started
        parts.append(chunk)
    total = time.perf_counter() - started
    return Timing(first if first is not None else total, total, np.concatenate(parts), len(parts))


class Targets:
    """The ways of speaking PARAGRAPH with one artifact, each a generator of audio chunks."""

    def __init__(self, artifact: Path, threads: int) -> None:
        self.voice = VitsArtifactVoice(artifact)
        if self.voice.split is None or self.voice.window is None:
            raise SystemExit(f"{artifact}: its split graphs (encoder, flow, vocoder) are missing; rebuild it")
        stem = artifact.name[: -len(".onnx")]
        graphs = ("encoder", "decoder", "flow", "vocoder")
        self.runner = OrtRunner({g: artifact.with_name(f"{stem}.{g}.onnx") for g in graphs}, threads=threads)
        self.one_graph = ort_session(artifact, threads=threads)
        self.spec = self.voice.window
        self.settings = VitsSettings()
        self.utterance = self.voice.text_to_ids(PARAGRAPH)
        self.sentences = self.voice.text_pieces(PARAGRAPH)

    def _prior(self, ids: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        enc = run_encoder(self.runner, np.asarray([ids], np.int64), self.settings, {})
        durations = np.rint(enc["durations"][0]).astype(np.int64)
        return enc, frame_noise(durations, int(enc["m_p"].shape[1]), self.settings)

    def whole(self, ids: Sequence[int]) -> Iterator[np.ndarray]:
        enc, noise = self._prior(ids)
        feed = {"m_p": enc["m_p"], "logs_p": enc["logs_p"], "durations": enc["durations"], "noise": noise}
        yield self.runner.run("decoder", feed)["waveform"].reshape(-1)

    def chunked(self, ids: Sequence[int], continuing: bool = False) -> Iterator[np.ndarray]:
        enc, noise = self._prior(ids)
        z_p = prior_sample(enc["m_p"], enc["logs_p"], enc["durations"], noise)
        yield from decode_chunks(self.runner, z_p, self.spec, {}, **chunk_sizes(None, continuing=continuing))

    def one(self, ids: Sequence[int]) -> Iterator[np.ndarray]:
        feed = {
            "input": np.asarray([ids], np.int64),
            "input_lengths": np.asarray([len(ids)], np.int64),
            "scales": np.asarray([0.667, 1.0, 0.8], np.float32),
        }
        yield self.one_graph.run(["output"], feed)[0].reshape(-1)

    def rows(self) -> dict[str, Callable[[], Iterator[np.ndarray]]]:
        def by_sentence(speak: Callable[[Sequence[int], bool], Iterator[np.ndarray]]) -> Iterator[np.ndarray]:
            for index, ids in enumerate(self.sentences):
                yield from speak(ids, index > 0)  # later sentences continue a text already playing

        return {
            "one graph, whole utterance": lambda: self.one(self.utterance),
            "split graphs, whole utterance": lambda: self.whole(self.utterance),
            "chunked, whole utterance": lambda: self.chunked(self.utterance),
            "by sentence, whole sentences": lambda: by_sentence(lambda ids, _: self.whole(ids)),
            "by sentence + chunks": lambda: by_sentence(self.chunked),
        }


REFERENCE = "split graphs, whole utterance"
#: row → the row whose audio it must equal (same utterance boundaries)
SAME_AUDIO = {"chunked, whole utterance": REFERENCE, "by sentence + chunks": "by sentence, whole sentences"}


def measure(targets: Targets, repeats: int, log: Callable[[str], None]) -> list[Row]:
    makers = targets.rows()
    runs: dict[str, list[Timing]] = {name: [] for name in makers}
    for make in makers.values():  # warm-up: sessions allocate their buffers on the first call
        timed(make)
    for repeat in range(repeats):
        for name, make in makers.items():
            runs[name].append(timed(make))
        log(f"repeat {repeat + 1}/{repeats} done")
    rate = targets.voice.sample_rate
    reference_total = statistics.median(t.total for t in runs[REFERENCE])
    rows = []
    for name, timings in runs.items():
        first = statistics.median(t.first for t in timings)
        total = statistics.median(t.total for t in timings)
        audio = timings[0].audio
        snr = None
        if name in SAME_AUDIO:
            want = runs[SAME_AUDIO[name]][0].audio
            snr = waveform_snr_db(want, audio) if want.shape == audio.shape else float("-inf")
        seconds = audio.size / rate
        rows.append(
            Row(
                name,
                first * 1000,
                total * 1000,
                total / seconds,
                timings[0].chunks,
                seconds,
                first / reference_total,
                total / reference_total,
                snr,
            )
        )
    return rows


def table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| target | audio s | chunks | TTFA ms | total ms | RTF | TTFA ÷ reference | total ÷ reference "
        "| SNR dB vs same utterance whole |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        snr = "—" if r.snr_db is None else f"{r.snr_db:.1f}"
        lines.append(
            f"| {r.name} | {r.seconds:.2f} | {r.chunks} | {r.ttfa_ms:.0f} | {r.total_ms:.0f} | {r.rtf:.3f} | "
            f"{r.ttfa_ratio:.3f} | {r.total_ratio:.3f} | {snr} |"
        )
    return lines


def goals(rows: Sequence[Row]) -> list[str]:
    by = {r.name: r for r in rows}
    streamed, exact = by["by sentence + chunks"], by["chunked, whole utterance"]

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    exact_snr, streamed_snr = exact.snr_db or 0.0, streamed.snr_db or 0.0
    return [
        f"- TTFA ≤ {GOAL_TTFA}× the whole-utterance synthesis: `voxport say` / `stream` (by sentence + "
        f"chunks) {streamed.ttfa_ratio:.3f}× — {mark(streamed.ttfa_ratio <= GOAL_TTFA)}; the whole paragraph "
        f"as one utterance in chunks {exact.ttfa_ratio:.3f}× — {mark(exact.ttfa_ratio <= GOAL_TTFA)} (its "
        "encoder runs over the whole paragraph before the first chunk).",
        f"- Streamed audio = whole-utterance audio (SNR ≥ {GOAL_SNR_DB:g} dB, same length): chunked whole "
        f"utterance {exact_snr:.1f} dB, by sentence + chunks vs whole sentences {streamed_snr:.1f} dB — "
        f"{mark(min(exact_snr, streamed_snr) >= GOAL_SNR_DB)}.",
        f"- Total ≤ {GOAL_TOTAL}× non-streamed: chunked whole utterance {exact.total_ratio:.3f}× — "
        f"{mark(exact.total_ratio <= GOAL_TOTAL)}; by sentence + chunks {streamed.total_ratio:.3f}× — "
        f"{mark(streamed.total_ratio <= GOAL_TOTAL)}.",
    ]


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "voxport"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def report(rows: Sequence[Row], args: argparse.Namespace, load_start: str, load_end: str) -> list[str]:
    words = len(PARAGRAPH.split())
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [
        f"Run {stamp}, commit {commit()}: `{args.artifact}`, a {words}-word paragraph in three sentences, "
        f"ONNX Runtime on {args.threads} thread(s), medians of {args.repeats} interleaved repeats; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average "
        f"(1/5/15 min) {load_start} at the start, {load_end} at the end. Reference row: `{REFERENCE}`.",
        "",
        *table(rows),
        "",
        *goals(rows),
    ]


def write_section(markdown: Path, lines: Sequence[str]) -> None:
    text = markdown.read_text(encoding="utf-8")
    block = "\n".join([BEGIN, *lines, END])
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{markdown}: no {BEGIN} ... {END} block to replace")
    markdown.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=REPO / "build/joe-medium/onnx/joe-medium.int8.onnx")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write", type=Path, help="markdown file whose streaming section to replace")
    args = parser.parse_args(argv)
    check_held_out([PARAGRAPH], held_out_sources())

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    load_start = load_average()
    rows = measure(Targets(args.artifact, args.threads), args.repeats, log)
    lines = report(rows, args, load_start, load_average())
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    if args.write:
        write_section(args.write, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
