"""Fidelity per bit: every quantization method (a "row") × precision on held-out sentences of a real voice.

    .venv/bin/python benchmarks/bench_fidelity.py                       # joe, every row, int8 and int4
    .venv/bin/python benchmarks/bench_fidelity.py --rows rtn,mse --precisions int4 --repeats 3
    .venv/bin/python benchmarks/bench_fidelity.py --row 'budget=budget: {int8: {bits_per_weight: 8.7}}'
    .venv/bin/python benchmarks/bench_fidelity.py --json scratch/fidelity.json --write docs/benchmarks.md

Each row is the recipe with its `quantize:` section patched, built for one precision at a time through
the real pipeline (`voxport.pipeline.Build`: convert, quantize, export; ONNX only) into
OUT/rows/<row>/<precision>, all sharing one stage cache (OUT/cache), so the convert stage runs once and a
rerun rebuilds only the rows whose quantize settings or code changed. The rows:

- `fp32`: the reference artifact (every ratio of the ORT time column is to its one-graph file);
- `hand-mix rtn`: the joe recipe's hand-written mix before size budgets replaced it (HAND_MIX), the
  baseline;
- `recipe …`: the recipe's quantize section as it is (its method and budget);
- `rtn`, `mse`, and every other registered method (`voxport.quantize.methods.methods()`): the recipe's
  method, block size and options replaced, no overrides; a calibrated method gets the default
  calibration set (voxport/quantize/data/calibration_en.txt) as `calibration.texts`;
- `--row NAME='YAML'`: any other patch of the quantize section, applied over the override-free base
  (top-level keys replace the base's; the calibration set is added when the method is calibrated or the
  patch sets a `budget`), so a size budget or a method option is a command-line row.

The sentences are HELD_OUT below, and the script refuses to run if any of them appears (ignoring case and
punctuation) in a recipe's texts (validate, phrases, calibration) or in the default calibration set: a
figure measured on the sentences the codes were fitted to, or the mixes were tuned on, proves nothing.

What users run is the one-graph `.onnx` in ONNX Runtime, so every audio figure is that file's output
(noise off, scales [0, length_scale, 0]) against the fp32 torch model's one-graph output on the same ids:
log-mel DTW and MCD (voxport.validate.metrics), and the length ratio of the audio. The one-graph file
reports no durations, so the duration match comes from the same artifact's split encoder/decoder graphs
(same codes) in ORT against the torch model's split loop. Timing follows bench_onnx.py: one intra-op
thread, the one-graph file of every row interleaved round-robin with the fp32 one-graph file, medians of
--repeats rounds after the parity round (which doubles as warm-up); ratios only within this run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import voxport
from voxport import pipeline
from voxport.families.base import FamilyModel, Runner, SynthesisSettings
from voxport.families.registry import load_model
from voxport.quantize.methods import method_class, methods
from voxport.recipe import Recipe
from voxport.runtime.ort import OrtRunner
from voxport.validate.metrics import duration_agreement, logmel_dtw_db, mcd_db

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "joe-medium.yaml"
CALIBRATION_FILE = Path(voxport.__file__).parent / "quantize" / "data" / "calibration_en.txt"
BEGIN, END = "<!-- fidelity-table:begin -->", "<!-- fidelity-table:end -->"
SECTION = "## Fidelity per bit (joe)"

#: held out from every recipe and from the calibration set (checked at start): statements, questions,
#: numbers as people type them, very short and long sentences
HELD_OUT = (
    "Stop!",
    "Please enter your four digit PIN.",
    "It costs 19 euros and 99 cents.",
    "Would you like tea or coffee with your breakfast?",
    "What's the fastest way to get to the airport from here?",
    "The train to Boston leaves from platform 7 at 8:15.",
    "Have you ever seen a whale jump right next to a sailing boat?",
    "Turn off the lights in the garage before you go to bed.",
    "Our small bakery sold 1,250 loaves of bread last December.",
    "Seventeen violinists rehearsed Vivaldi's Four Seasons in the empty cathedral.",
    "My grandfather planted these oak trees in 1962, long before the houses were built.",
    "Sorry, I didn't catch that; could you say it again a little more slowly?",
    "The river wound slowly through fields of barley, past an abandoned mill, and under three old "
    "stone bridges before it finally reached the sea.",
    "Update available: version 2.4 fixes three bugs and makes the app start twice as fast.",
)

#: the issue's goals: (precision, column key, comparison, bound, how it reads)
GOALS: tuple[tuple[str, str, str, float, str], ...] = (
    ("int8", "file_mb", "<=", 17.0, "one-graph file ≤ 17.0 MB"),
    ("int8", "duration_match_min", ">=", 0.99, "duration match ≥ 0.99"),
    ("int8", "length_dev_max", "<=", 0.005, "length within 0.5 % on every sentence"),
    ("int8", "logmel_max", "<=", 0.5, "log-mel ≤ 0.5 dB"),
    ("int4", "file_mb", "<=", 10.0, "one-graph file ≤ 10.0 MB"),
    ("int4", "logmel_max", "<=", 1.0, "log-mel ≤ 1.0 dB"),
    ("int4", "duration_match_min", ">=", 0.95, "duration match ≥ 0.95"),
    ("int4", "length_dev_max", "<=", 0.01, "length within 1 % on every sentence"),
    ("*", "wer_increase", "<=", 0.01, "WER within 0.01 of fp32"),
    ("*", "ort_vs_fp32", "<=", 1.0, "ORT time ≤ 1.0× fp32"),
)


# ------------------------------------------------------------------------------------ held-out check
def normalize(text: str) -> str:
    """Case-, accent- and punctuation-insensitive form, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text).casefold()
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def calibration_texts(path: Path = CALIBRATION_FILE) -> list[str]:
    """The default calibration set: one sentence a line, `#` lines are comments."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _texts_in(node: Any) -> Iterable[str]:
    """Every string under a `texts:` key anywhere in a recipe (validate, phrases, calibration...)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "texts" and isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
            else:
                yield from _texts_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _texts_in(value)


def recipe_texts(recipes: Path = REPO / "recipes") -> dict[str, str]:
    """normalized text -> where it comes from, over every recipe file."""
    found = {}
    for path in sorted(recipes.glob("*.yaml")):
        for text in _texts_in(yaml.safe_load(path.read_text(encoding="utf-8"))):
            found[normalize(text)] = path.name
    return found


def check_held_out(sentences: Sequence[str], elsewhere: Mapping[str, str]) -> None:
    """SystemExit naming every held-out sentence that also appears in `elsewhere`, or a duplicate."""
    problems = []
    seen: set[str] = set()
    for text in sentences:
        key = normalize(text)
        if key in elsewhere:
            problems.append(f"{text!r} is also in {elsewhere[key]}")
        if key in seen:
            problems.append(f"{text!r} is listed twice")
        seen.add(key)
    if problems:
        raise SystemExit("held-out sentences are not held out: " + "; ".join(problems))


def held_out_sources(recipes: Path = REPO / "recipes") -> dict[str, str]:
    """What the held-out sentences must not overlap: every recipe text and the calibration set."""
    sources = recipe_texts(recipes)
    sources.update({normalize(t): CALIBRATION_FILE.name for t in calibration_texts()})
    return sources


# ---------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class RowSpec:
    """One configuration: the recipe's full quantize section for it, and the precisions it builds."""

    name: str
    quantize: dict[str, Any]
    precisions: tuple[str, ...]


def _clean(quantize: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's quantize section without its mixes (hand-written or budgeted) or calibration."""
    dropped = ("overrides", "precision_overrides", "calibration", "budget")
    return {k: v for k, v in quantize.items() if k not in dropped}


#: the bundled joe recipe's hand-written mix before size budgets replaced it (found on the recipe's own
#: three sentences): the baseline the budget rows are compared with
HAND_MIX: dict[str, Any] = {
    "method": "rtn",
    "precision_overrides": {
        "int8": {
            "text_encoder.encoder.*": "fp16",
            "duration_predictor.*convs_*.weight": "fp16",
            "duration_predictor.*conv_p*.weight": "fp16",
        },
        "int4": {"duration_predictor.*": "int8", "text_encoder.project.*": "int8", "decoder.*": "int8"},
    },
}


def patched(base: Mapping[str, Any], patch: Mapping[str, Any], calibration: Sequence[str]) -> dict[str, Any]:
    """`patch` over the override-free base; the calibration set added where the row needs data."""
    return _with_calibration({**_clean(base), **patch}, calibration)


def _with_calibration(quantize: Mapping[str, Any], calibration: Sequence[str]) -> dict[str, Any]:
    """The recipe's quantize section as it is, with the calibration set where it needs data and has
    none of its own (what the recipe itself would get: the same built-in set)."""
    out = dict(quantize)
    method = out.get("method", "rtn")
    needs_data = bool(out.get("budget")) or (method in methods() and method_class(method).calibrated)
    if needs_data and "calibration" not in out:
        out["calibration"] = {"texts": list(calibration)}
    return out


def default_rows(
    recipe_quantize: Mapping[str, Any], precisions: Sequence[str], calibration: Sequence[str]
) -> list[RowSpec]:
    """fp32, the recipe's hand mix, then one override-free row per registered method (rtn, mse first)."""
    base = dict(recipe_quantize)
    own = f"recipe {base.get('method', 'rtn')}" + (" + budget" if base.get("budget") else "")
    rows = [
        RowSpec("fp32", _clean(base), ("fp32",)),
        RowSpec("hand-mix rtn", {**_clean(base), **HAND_MIX}, tuple(precisions)),
        RowSpec(own, _with_calibration(base, calibration), tuple(precisions)),
    ]
    names = ["rtn", "mse", *(m for m in methods() if m not in ("rtn", "mse"))]
    for name in names:
        rows.append(
            RowSpec(name, patched(base, {"method": name, "options": {}}, calibration), tuple(precisions))
        )
    return rows


def parse_row(
    arg: str, base: Mapping[str, Any], precisions: Sequence[str], calibration: Sequence[str]
) -> RowSpec:
    """`NAME=YAML` → a row whose quantize section is the YAML mapping over the override-free base."""
    name, sep, text = arg.partition("=")
    if not sep or not name.strip():
        raise SystemExit(f"--row {arg!r}: give NAME='<yaml mapping of quantize keys>'")
    patch = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(patch, dict):
        raise SystemExit(f"--row {name}: the patch must be a YAML mapping of quantize keys, got {text!r}")
    return RowSpec(name.strip(), patched(base, patch, calibration), tuple(precisions))


# --------------------------------------------------------------------------------------------- build
@dataclass
class Built:
    """One row × precision's exported ONNX artifact and how it was made."""

    row: str
    precision: str
    tts: Path
    sidecars: list[Path]
    split: dict[str, Path]
    checkpoint: Path
    bits_per_weight: float
    quantize_seconds: float | None
    quantize_cached: bool


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "row"


def build_row(
    raw: Mapping[str, Any],
    base_dir: Path,
    row: RowSpec,
    precision: str,
    out: Path,
    log: Callable[[str], None],
) -> Built:
    """convert (shared cache), quantize (timed), export ONNX for one precision of one row.

    A cached quantize unit reports the wall time recorded when it was computed (OUT/quantize_seconds.json,
    keyed by the unit's cache key), so a rerun still shows what quantizing costs."""
    mapping = {**raw, "formats": ["onnx"], "precisions": [precision], "quantize": row.quantize}
    recipe = Recipe.from_mapping(mapping, base_dir=base_dir)
    times_file = out / "quantize_seconds.json"
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}
    target = out / "rows" / _slug(row.name) / precision
    with pipeline.Build(recipe, target, log, cache_dir=out / "cache") as build:
        build.convert()
        key = build.key_quantize(precision)
        cached = build.cache.get(key) is not None
        if not cached:
            _ = build.model  # load the checkpoint outside the timed span
        started = time.perf_counter()
        build.quantize()
        seconds = time.perf_counter() - started
        if not cached:
            times[key] = seconds
            times_file.write_text(json.dumps(times, indent=1))
        entry = next(e for e in build.export() if e.format == "onnx" and not e.runtime_layout)
    tts_graph = next((g for g, rel in entry.files.items() if rel == entry.path), "tts")
    split = {g: target / rel for g, rel in entry.files.items() if g != tts_graph and rel.endswith(".onnx")}
    # the one-graph file's own sidecars (Piper's .onnx.json), not a vocabulary shared by all precisions
    sidecars = [target / rel for rel in (entry.sidecars or {}).values() if rel.startswith(entry.path)]
    log(
        f"{row.name} {precision}: {entry.bits_per_weight:.2f} bits/weight, quantize {seconds:.1f}s"
        f"{' (cached)' if cached else ''}"
    )
    return Built(
        row.name,
        precision,
        target / entry.path,
        sidecars,
        split,
        pipeline.Layout(target).checkpoint,
        entry.bits_per_weight,
        times.get(key),
        cached,
    )


# ------------------------------------------------------------------------------------------- measure
@dataclass
class Sentence:
    text: str
    ids: list[int]
    audio: np.ndarray  # the fp32 torch model's one-graph output
    durations: np.ndarray  # the fp32 torch model's split-loop durations


@dataclass
class Target:
    built: Built
    runner: Runner
    tts_ms: list[float] = field(default_factory=list)
    logmel: list[float] = field(default_factory=list)
    mcd: list[float] = field(default_factory=list)
    length_ratio: list[float] = field(default_factory=list)
    duration_match: list[float] = field(default_factory=list)
    #: tokens per sentence, to pool the duration match over every token of every sentence
    tokens: list[int] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.built.row} {self.built.precision}"


def reference(model: FamilyModel, texts: Sequence[str], settings: SynthesisSettings) -> list[Sentence]:
    """The fp32 torch model once per sentence: one-graph audio and split-loop durations."""
    runner = model.torch_runner()
    sentences = []
    for text in texts:
        ids = model.text_to_ids(text)
        durations = model.synthesize(runner, ids, settings).durations
        if durations is None:
            raise SystemExit(f"{model.family} reports no durations: this benchmark needs them")
        sentences.append(
            Sentence(text, ids, model.synthesize_primary(runner, ids, settings).audio, durations)
        )
    return sentences


def measure_parity(
    model: FamilyModel, target: Target, sentences: Sequence[Sentence], settings: SynthesisSettings
) -> None:
    """The one-graph file's audio against the reference's (also the warm-up), then durations from the
    artifact's split graphs."""
    for s in sentences:
        audio = model.synthesize_primary(target.runner, s.ids, settings).audio
        target.audio.append(audio)
        target.logmel.append(logmel_dtw_db(s.audio, audio, model.sample_rate))
        target.mcd.append(mcd_db(s.audio, audio, model.sample_rate))
        target.length_ratio.append(audio.size / s.audio.size)
    split = OrtRunner(target.built.split, threads=1)
    for s in sentences:
        durations = model.synthesize(split, s.ids, settings).durations
        assert durations is not None
        target.duration_match.append(duration_agreement(s.durations, durations)[0])
        target.tokens.append(len(s.ids))


def time_round_robin(
    model: FamilyModel,
    targets: Sequence[Target],
    sentences: Sequence[Sentence],
    settings: SynthesisSettings,
    repeats: int,
    log: Callable[[str], None],
) -> None:
    """`repeats` rounds; each visits every target's one-graph file once over all sentences, starting at
    a different target each round so load bursts hit every target alike."""
    for round_index in range(repeats):
        shift = round_index % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            started = time.perf_counter()
            for s in sentences:
                model.synthesize_primary(target.runner, s.ids, settings)
            target.tts_ms.append((time.perf_counter() - started) * 1e3)
        log(f"timing: round {round_index + 1}/{repeats} done")


# ----------------------------------------------------------------------------------------------- asr
def asr_backend() -> tuple[Any | None, str]:
    """voxport.validate.asr when it exists and its extra is installed, else (None, why not)."""
    try:
        asr = importlib.import_module("voxport.validate.asr")
    except ImportError:
        return None, "n/a (asr extra not installed)"
    available = getattr(asr, "available", None)
    if not callable(available) or not available():
        return None, "n/a (asr extra not installed)"
    if not (callable(getattr(asr, "transcribe", None)) and callable(getattr(asr, "wer", None))):
        return None, "n/a (voxport.validate.asr has no transcribe/wer)"
    return asr, ""


def corpus_wer(asr: Any, texts: Sequence[str], audios: Sequence[np.ndarray], sample_rate: int) -> float:
    """Corpus WER of what the recogniser hears in `audios` against `texts` (batched when it can)."""
    batch = getattr(asr, "transcribe_sentences", None)
    if callable(batch):
        heard = list(batch(list(audios), sample_rate))
    else:
        heard = [asr.transcribe(a, sample_rate) for a in audios]
    return float(asr.wer(list(texts), heard))


# ------------------------------------------------------------------------------------------- results
@dataclass
class Result:
    """One line of the table and one object of --json."""

    row: str
    precision: str
    file_mb: float
    bits_per_weight: float
    logmel_max: float
    logmel_mean: float
    mcd_max: float
    duration_match_min: float
    #: share of all tokens of all sentences with equal frames (one flip in "Stop!" costs 1/6 of its
    #: worst-sentence figure but 1/600 of this)
    duration_match_all: float
    length_dev_max: float
    wer: float | None
    wer_increase: float | None
    ort_ms: float
    ort_vs_fp32: float
    quantize_seconds: float | None
    quantize_cached: bool
    per_sentence: dict[str, list[float]]


def results(targets: Sequence[Target], wers: Mapping[str, float]) -> list[Result]:
    fp32 = next(t for t in targets if t.built.precision == "fp32")
    fp32_ms = statistics.median(fp32.tts_ms)
    out = []
    for t in targets:
        b = t.built
        ms = statistics.median(t.tts_ms)
        wer = wers.get(t.label)
        out.append(
            Result(
                row=b.row,
                precision=b.precision,
                file_mb=(b.tts.stat().st_size + sum(p.stat().st_size for p in b.sidecars)) / 1e6,
                bits_per_weight=b.bits_per_weight,
                logmel_max=max(t.logmel),
                logmel_mean=statistics.fmean(t.logmel),
                mcd_max=max(t.mcd),
                duration_match_min=min(t.duration_match),
                duration_match_all=sum(m * n for m, n in zip(t.duration_match, t.tokens, strict=True))
                / sum(t.tokens),
                length_dev_max=max(abs(r - 1.0) for r in t.length_ratio),
                wer=wer,
                wer_increase=None if wer is None or "reference" not in wers else wer - wers["reference"],
                ort_ms=ms,
                ort_vs_fp32=ms / fp32_ms,
                quantize_seconds=b.quantize_seconds,
                quantize_cached=b.quantize_cached,
                per_sentence={
                    "logmel_dtw_db": t.logmel,
                    "mcd_db": t.mcd,
                    "duration_match": t.duration_match,
                    "length_ratio": t.length_ratio,
                    "tokens": [float(n) for n in t.tokens],
                    "tts_ms_rounds": t.tts_ms,
                },
            )
        )
    return out


def _num(x: float | None, fmt: str, missing: str = "—") -> str:
    return missing if x is None else format(x, fmt)


def table(rows: Sequence[Result], wer_missing: str) -> list[str]:
    header = [
        "row",
        "precision",
        "file MB",
        "bits/w",
        "log-mel dB worst",
        "log-mel dB mean",
        "MCD dB worst",
        "duration match worst",
        "duration match all",
        "length dev worst",
        "WER",
        "ORT /fp32",
        "quantize s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r.row,
            r.precision,
            f"{r.file_mb:.2f}",
            f"{r.bits_per_weight:.2f}",
            f"{r.logmel_max:.3f}",
            f"{r.logmel_mean:.3f}",
            f"{r.mcd_max:.3f}",
            f"{r.duration_match_min:.3f}",
            f"{r.duration_match_all:.3f}",
            f"{r.length_dev_max:.2%}",
            _num(r.wer, ".3f", wer_missing),
            f"{r.ort_vs_fp32:.2f}",
            _num(r.quantize_seconds, ".1f") + (" (cached)" if r.quantize_cached else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def goal_rows(rows: Sequence[Result], wanted: Sequence[str]) -> dict[str, Result]:
    """precision -> the row judged: the named one(s), else the row passing most goals (then lowest
    worst log-mel)."""
    chosen: dict[str, Result] = {}
    for precision in ("int8", "int4"):
        candidates = [r for r in rows if r.precision == precision]
        if wanted:
            candidates = [r for r in candidates if r.row in wanted]
        if not candidates:
            continue
        chosen[precision] = max(
            candidates, key=lambda r: (sum(ok is True for _, ok, _ in goal_checks(r)), -r.logmel_max)
        )
    return chosen


def goal_checks(r: Result) -> list[tuple[str, bool | None, str]]:
    """(goal, passed or None when not measured, measured value as text) for one row's precision."""
    checks = []
    for precision, key, op, bound, text in GOALS:
        if precision not in ("*", r.precision):
            continue
        value = getattr(r, key)
        if value is None:
            checks.append((text, None, "not measured"))
            continue
        ok = value <= bound if op == "<=" else value >= bound
        shown = f"{value:.2%}" if key == "length_dev_max" else f"{value:.3f}"
        checks.append((text, ok, shown))
    return checks


def goal_lines(chosen: Mapping[str, Result]) -> list[str]:
    lines = []
    for precision, r in chosen.items():
        lines.append(f"Goals at {precision} (row `{r.row}`):")
        for text, ok, shown in goal_checks(r):
            mark = "n/a " if ok is None else ("pass" if ok else "FAIL")
            lines.append(f"- {mark} {text}: {shown}")
    return lines


# ------------------------------------------------------------------------------------------ document
def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "voxport", "benchmarks"],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def write_section(
    markdown: Path,
    lines: Sequence[str],
    *,
    begin: str = BEGIN,
    end: str = END,
    section: str = SECTION,
) -> None:
    """Replace the block between the markers, or append the section with its markers (other
    benchmarks pass their own)."""
    text = markdown.read_text(encoding="utf-8") if markdown.exists() else "# Benchmarks\n"
    block = "\n".join([begin, *lines, end])
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    markdown.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- core
@dataclass
class Run:
    """Everything one run measured: what main prints, writes and the smoke test checks."""

    results: list[Result]
    sentences: list[str]
    tokens: int
    audio_seconds: float
    wer_note: str
    reference_wer: float | None
    settings: dict[str, Any]
    seconds: dict[str, float]


def run(
    recipe_path: Path,
    rows: Sequence[RowSpec],
    out: Path,
    *,
    sentences: Sequence[str] = HELD_OUT,
    repeats: int = 3,
    log: Callable[[str], None] = lambda _: None,
) -> Run:
    """Build every row × precision, measure parity and time, return the figures (no printing)."""
    torch.set_num_threads(1)
    raw = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    if "extends" in raw:
        raise SystemExit(f"{recipe_path}: a recipe with extends: is not supported here; give the merged one")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fp32_row = next((r for r in rows if "fp32" in r.precisions), None)
    if fp32_row is None:
        rows = [RowSpec("fp32", _clean(raw.get("quantize", {})), ("fp32",)), *rows]
    built = [
        build_row(raw, recipe_path.parent, row, p, out, log)
        for row in sorted(rows, key=lambda r: "fp32" not in r.precisions)
        for p in row.precisions
    ]
    build_seconds = time.perf_counter() - started

    fp32 = next(b for b in built if b.precision == "fp32")
    model = load_model(fp32.checkpoint)
    recipe = Recipe.from_mapping({**raw, "formats": ["onnx"]}, base_dir=recipe_path.parent)
    settings = pipeline.settings_for(recipe, model)
    started = time.perf_counter()
    refs = reference(model, sentences, settings)
    log(f"reference: {len(refs)} sentences in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    targets = [Target(b, OrtRunner({"tts": b.tts}, threads=1)) for b in built]
    for target in targets:
        measure_parity(model, target, refs, settings)
        log(
            f"parity {target.label}: log-mel worst {max(target.logmel):.3f} dB, "
            f"durations worst {min(target.duration_match):.3f}"
        )
    parity_seconds = time.perf_counter() - started
    started = time.perf_counter()
    time_round_robin(model, targets, refs, settings, repeats, log)
    timing_seconds = time.perf_counter() - started

    asr, wer_note = asr_backend()
    wers: dict[str, float] = {}
    if asr is not None:
        texts = [s.text for s in refs]
        wers["reference"] = corpus_wer(asr, texts, [s.audio for s in refs], model.sample_rate)
        for target in targets:
            wers[target.label] = corpus_wer(asr, texts, target.audio, model.sample_rate)
    return Run(
        results=results(targets, wers),
        sentences=list(sentences),
        tokens=sum(len(s.ids) for s in refs),
        audio_seconds=sum(s.audio.size for s in refs) / model.sample_rate,
        wer_note=wer_note,
        reference_wer=wers.get("reference"),
        settings=settings.model_dump(mode="json"),
        seconds={"build": build_seconds, "parity": parity_seconds, "timing": timing_seconds},
    )


def report(result: Run, argv: Sequence[str], repeats: int, goal_row: Sequence[str], stamp: str) -> list[str]:
    wer_ref = "" if result.reference_wer is None else f"; fp32 torch reference WER {result.reference_wer:.3f}"
    lines = [
        f"{len(result.sentences)} held-out sentences ({result.tokens} tokens, "
        f"{result.audio_seconds:.1f} s of audio), in no recipe and not in the calibration set; noise off; "
        f"worst sentence unless marked mean or all"
        f"{wer_ref}.",
        "",
        *table(result.results, result.wer_note),
        "",
        "file MB = the one-graph `.onnx` + its `.json`. log-mel / MCD / length dev: the one-graph file in "
        "ONNX Runtime against the fp32 torch model's one-graph output. duration match: the same artifact's "
        "split graphs in ORT against the torch split loop, share of tokens with equal frames (worst "
        "sentence; all = pooled over every token). ORT /fp32: median one-graph time over all sentences "
        f"relative to the fp32 file in the same run (1 thread, {repeats} rounds, round-robin). quantize s: "
        "the quantize stage's wall time (when cached: as recorded when it ran).",
        "",
        *goal_lines(goal_rows(result.results, goal_row)),
        "",
        f"Generated by `{shlex.join(['benchmarks/bench_fidelity.py', *argv])}` at commit {stamp}, "
        f"{time.strftime('%Y-%m-%d')}.",
    ]
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--out", type=Path, default=REPO / "scratch" / "bench" / "fidelity")
    parser.add_argument("--rows", help="comma-separated row names to run (default: all)")
    parser.add_argument("--precisions", default="int8,int4", help="comma-separated (default int8,int4)")
    parser.add_argument(
        "--row",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="an extra row: NAME='<yaml mapping of quantize keys>' over the override-free recipe",
    )
    parser.add_argument("--goal-row", action="append", default=[], help="the row the goals judge")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the parity round")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--write", type=Path, help="markdown file whose fidelity section to replace")
    parser.add_argument(
        "--from-json", type=Path, help="render a run saved by --json again (no building or measuring)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def load_json(path: Path) -> tuple[Run, dict[str, Any]]:
    """A run saved by --json, to render again (--from-json) without measuring anything."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    fields = {name: payload[name] for name in Run.__dataclass_fields__}
    fields["results"] = [Result(**r) for r in payload["results"]]
    return Run(**fields), payload


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    if args.from_json:
        result, saved = load_json(args.from_json)
        lines = report(result, saved["argv"], saved["repeats"], args.goal_row, saved["commit"])
        print("\n".join(lines))
        if args.write:
            write_section(args.write, lines)
        return 0

    check_held_out(HELD_OUT, held_out_sources())
    stamp = commit()  # the code this run measures, before anyone edits the checkout during the run
    raw = yaml.safe_load(args.recipe.read_text(encoding="utf-8"))
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    calibration = calibration_texts()
    quantize = raw.get("quantize", {})
    rows = default_rows(quantize, precisions, calibration)
    rows += [parse_row(arg, quantize, precisions, calibration) for arg in args.row]
    if args.rows:
        wanted = {name.strip() for name in args.rows.split(",")}
        unknown = wanted - {r.name for r in rows}
        if unknown:
            raise SystemExit(
                f"--rows: no row {', '.join(sorted(unknown))} (rows: {', '.join(r.name for r in rows)})"
            )
        rows = [r for r in rows if r.name in wanted or r.name == "fp32"]
    result = run(args.recipe, rows, args.out.resolve(), repeats=args.repeats, log=log)
    lines = report(result, argv, args.repeats, args.goal_row, stamp)
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = asdict(result)
        payload.update(
            argv=argv,
            commit=stamp,
            repeats=args.repeats,
            rows={r.name: {"quantize": r.quantize, "precisions": list(r.precisions)} for r in rows},
            versions={"python": platform.python_version(), "voxport": voxport.__version__},
        )
        args.json.write_text(json.dumps(payload, indent=1, default=_json_default))
    if args.write:
        write_section(args.write, lines)
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    with contextlib.suppress(Exception):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
