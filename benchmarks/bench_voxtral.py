"""Voxtral TTS precision mixes: what each split of backbone / acoustic head / codec costs at full size, and
how each part's rounding shows on random weights.

    .venv/bin/python benchmarks/bench_voxtral.py [--seeds 0,1] [--voices ava,leo] [--max-frames 8]
        [--mixes NAME,...] [--out DIR] [--json FILE] [--write docs/benchmarks.md]

Why: the phone and desktop recipes choose a precision per part (issue 17: "int4 backbone, int8 head, fp16
codec, as the field does it, and measured alternatives"). Two questions per mix, answered separately:

(a) bytes at the released 4.0B shape, generated, never typed: the precision plan
    (`voxport.quantize.plan.plan_precisions`, the recipe's globs) over the names and shapes of the
    weightless full-size model (`modules.weightless(VoxtralConfig(NAMED_PARAMS["full"]))`,
    `VoxtralAdapter.quantizable()`), each weight's storage counted the way each format really stores it:
    ONNX by `QuantizedModel.bits_per_weight` with the ONNX exporter's `scale_bits` rule (int4 in blocks of
    32 with fp16 scales = 4.5 bits/w, int8 per output channel with one fp32 scale per row), GGUF by the
    GGUF writer's own `plan_tensor` over the family's layout (Q4_0 / Q8_0 / F16 / F32 block sizes; the
    codec's convolutions forced to F16, vectors F32). A weight's encoding depends on its block layout, not
    its values, so one real row quantized by `voxport.quantize.methods.quantize` (RTN, block 32) stands for
    all its rows. Weight bytes only: graph structure, metadata and the tokenizer add a few MB.

(b) parity on the tiny random checkpoint (`voxport demo --family voxtral_tts`, one per `--seeds` value:
    the seed of the weights), each mix built through the real pipeline (`voxport.pipeline.Build`: convert,
    quantize with RTN in blocks of 32, export ONNX; one stage cache) and run by the family's loop in ONNX
    Runtime against the fp32 torch loop (`voxport.validate.parity.measure_sentence`): teacher-forced
    worst-step backbone hidden SNR and acoustic SNR, teacher-forced audio SNR and the log-mel (DTW)
    distance of that audio, over the HELD_OUT sentences × `--voices`. Random weights rank the parts'
    sensitivity only: they predict nothing about the trained model's audible loss.

HELD_OUT sentences appear in no recipe and not in the calibration set (checked at start, SystemExit
otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
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
from bench_kokoro import load_average  # noqa: E402

from voxport import pipeline  # noqa: E402
from voxport.export.gguf.writer import GGUF_PY_TYPES, TensorPlan, plan_tensor  # noqa: E402
from voxport.export.onnx.weights import scale_bits  # noqa: E402
from voxport.families.layouts.gguf import LayoutTensor  # noqa: E402
from voxport.families.registry import load_model  # noqa: E402
from voxport.families.voxtral_tts.config import NAMED_PARAMS, VoxtralConfig  # noqa: E402
from voxport.families.voxtral_tts.family import VoxtralFamily  # noqa: E402
from voxport.families.voxtral_tts.gguf import VoxtralGgufLayout, backbone_names  # noqa: E402
from voxport.families.voxtral_tts.model import VoxtralAdapter  # noqa: E402
from voxport.families.voxtral_tts.modules import weightless  # noqa: E402
from voxport.families.voxtral_tts.settings import VoxtralSettings  # noqa: E402
from voxport.quantize.methods import quantize  # noqa: E402
from voxport.quantize.plan import WeightDecision, plan_precisions  # noqa: E402
from voxport.quantize.stage import QuantizedModel  # noqa: E402
from voxport.quantize.tensor import QuantizedTensor  # noqa: E402
from voxport.recipe import QuantizeConfig, Recipe  # noqa: E402
from voxport.runtime.ort import OrtRunner  # noqa: E402
from voxport.validate.metrics import logmel_dtw_db  # noqa: E402
from voxport.validate.parity import Reference, measure_sentence  # noqa: E402
from voxport.validate.thresholds import metric_specs  # noqa: E402

#: English, in no recipe and not in the calibration set (checked at start): a question, numbers, an
#: exclamation, an instruction and a longer sentence with clauses
HELD_OUT = (
    "Is the library on Birch Avenue open late on Thursdays?",
    "Flight 218 now departs from gate 7 at a quarter past nine.",
    "Careful, that pan is still hot!",
    "Press the green button twice to restart the heater.",
    "After the rain stopped, the children ran outside, jumped into every puddle, and came home soaked.",
)
BEGIN, END = "<!-- voxtral-mixes:begin -->", "<!-- voxtral-mixes:end -->"
SECTION = "## Voxtral TTS mixes (benchmarks/bench_voxtral.py)"
PARTS = ("backbone", "head", "codec")
#: the recipe globs of each part (what recipes/voxtral-*.yaml override); the backbone is the recipe's
#: global precision, so its globs are for counting only
PART_GLOBS: dict[str, tuple[str, ...]] = {
    "backbone": ("layers.*", "norm.weight"),
    "head": ("acoustic_transformer.*",),
    "codec": ("audio_tokenizer.*",),
    "embeddings": ("mm_audio_embeddings.*",),
}
#: the two embedding tables are row gathers, never quantizable: fp16 in every mix (as the demo recipe)
EMBEDDINGS = {"mm_audio_embeddings.*": "fp16"}
#: name -> (backbone, head, codec) precisions
MIXES: dict[str, tuple[str, str, str]] = {
    "all int4": ("int4", "int4", "int4"),
    "field split": ("int4", "int8", "fp16"),
    "head int4": ("int4", "int4", "fp16"),
    "codec int8": ("int4", "int8", "int8"),
    "codec int4": ("int4", "int8", "int4"),
    "all int8": ("int8", "int8", "int8"),
    "int8 + fp16 codec": ("int8", "int8", "fp16"),
    "all fp16": ("fp16", "fp16", "fp16"),
    "only backbone int4": ("int4", "fp16", "fp16"),
    "only head int4": ("fp16", "int4", "fp16"),
    "only codec int4": ("fp16", "fp16", "int4"),
}
BLOCK_SIZE = 32


def quantize_section(mix: tuple[str, str, str]) -> tuple[str, dict[str, Any]]:
    """The recipe's (precision, quantize section) for a mix: the backbone's precision is the artifact's,
    the head and the codec set by `precision_overrides` (an exact mix: plain `overrides` only ever keep a
    part *above* the artifact's precision, so "fp16 with an int4 head" needs this form), the embedding
    tables fp16."""
    backbone, head, codec = mix
    exact = {PART_GLOBS["head"][0]: head, PART_GLOBS["codec"][0]: codec}
    return backbone, {
        "method": "rtn",
        "block_size": BLOCK_SIZE,
        "overrides": dict(EMBEDDINGS),
        "precision_overrides": {backbone: exact},
    }


def plan_overrides(mix: tuple[str, str, str]) -> tuple[str, dict[str, str]]:
    """The globs the pipeline hands the planner for the mix's artifact (`QuantizeConfig.overrides_for`)."""
    precision, section = quantize_section(mix)
    return precision, QuantizeConfig.model_validate(section).overrides_for(precision)


def part_of(name: str) -> str:
    from fnmatch import fnmatchcase

    for part, globs in PART_GLOBS.items():
        if any(fnmatchcase(name, g) for g in globs):
            return part
    raise RuntimeError(f"voxtral_tts weight {name!r} belongs to no part; update PART_GLOBS")


# ------------------------------------------------------------------------------------ (a) full-size bytes
@dataclass
class FullSize:
    """The released shape's names, shapes and quantizable set, and its GGUF layout's tensors."""

    shapes: dict[str, tuple[int, ...]]
    quantizable: set[str]
    gguf: list[LayoutTensor]

    @classmethod
    def build(cls, tekken: bytes, config: str = "full") -> FullSize:
        """`config` "full": the released shape; "tiny": the test checkpoint's (the test compares the two
        ways of counting there)."""
        cfg = VoxtralConfig(NAMED_PARAMS[config])
        model = VoxtralAdapter(weightless(cfg), tekken=tekken, voices={}, source="full (weightless)")
        shapes = {k: tuple(int(d) for d in v.shape) for k, v in model.state_dict().items()}
        layout = VoxtralGgufLayout(cfg, tekken)
        # the text file's tensors as `text_file()` lists them (its tokenizer metadata needs the released
        # 131,072-id tokenizer, which no random checkpoint ships), the audio file's as they are
        text = [LayoutTensor(gguf_name, source) for source, gguf_name in backbone_names(cfg).items()]
        tensors = [*text, *layout.audio_file().tensors]
        covered = {t.source for t in tensors}
        if covered != set(shapes) or any(t.build is not None or t.rows is not None for t in tensors):
            raise RuntimeError("voxtral_tts GGUF layout changed: update bench_voxtral.FullSize")
        return cls(shapes, model.quantizable(), tensors)


def _row_sample(shape: tuple[int, ...], precision: str) -> QuantizedTensor | np.ndarray:
    """One row of the weight in its stored encoding (RTN, block 32): the encoding of every row."""
    cols = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    row = np.random.default_rng(0).standard_normal((1, cols)).astype(np.float32)
    if len(shape) < 2:
        row = row.reshape(cols)
    return quantize(row, precision, block_size=BLOCK_SIZE)


@dataclass
class Bytes:
    onnx_bytes: float
    onnx_bits_per_weight: float
    gguf_bytes: int
    gguf_bits_per_weight: float
    onnx_part_bytes: dict[str, float]
    precisions: dict[str, int]  # stored precision -> weights
    #: weights of 1 MB or more left fp32 by the plan (not quantizable under an integer global precision)
    fp32_bytes: dict[str, int]


def full_size_bytes(full: FullSize, mix: tuple[str, str, str]) -> Bytes:
    precision, overrides = plan_overrides(mix)
    decisions = plan_precisions(full.shapes, full.quantizable, precision, overrides, block_size=BLOCK_SIZE)
    samples: dict[tuple[tuple[int, ...], str], QuantizedTensor | np.ndarray] = {}

    def sample(d: WeightDecision) -> QuantizedTensor | np.ndarray:
        key = (full.shapes[d.name], d.precision)
        if key not in samples:
            samples[key] = _row_sample(*key)
        return samples[key]

    # ONNX: QuantizedModel.bits_per_weight (the figure the manifest records) over one row per weight,
    # scaled by the weight's rows: storage is linear in rows for every precision
    part_bits: dict[str, float] = {}
    total_bits = 0.0
    for name, d in decisions.items():
        shape = full.shapes[name]
        one = sample(d)
        rows = shape[0] if len(shape) > 1 else 1
        qm = QuantizedModel(precision, "rtn", {name: one}, {name: d})
        elements = one.size if isinstance(one, np.ndarray) else math.prod(one.shape)
        bits = qm.bits_per_weight(scale_bits=scale_bits) * elements * rows
        total_bits += bits
        part_bits[part_of(name)] = part_bits.get(part_of(name), 0.0) + bits
    elements = sum(math.prod(s) for s in full.shapes.values())
    # GGUF: the writer's plan per layout tensor (convolutions forced F16, vectors F32, as split.py)
    plans: list[TensorPlan] = []
    for t in full.gguf:
        assert t.source is not None
        shape = full.shapes[t.source]
        stored = t.shape or ((shape[0], math.prod(shape[1:])) if len(shape) > 1 else shape)
        if t.force is not None or len(stored) < 2:
            ggml = GGUF_PY_TYPES[t.force or "F32"]
            plans.append(TensorPlan(t.source, t.gguf_name, ggml, shape, stored, "fp32"))
            continue
        value = sample(decisions[t.source])
        plans.append(
            plan_tensor(
                t.source,
                t.gguf_name,
                value,
                shape,
                stored,
                types={},
                quantizable=t.source in full.quantizable,
                fallback_type="F16",
                fallbacks=[],
            )
        )
    gguf_bytes = sum(p.nbytes for p in plans)
    counts: dict[str, int] = {}
    for d in decisions.values():
        counts[d.precision] = counts.get(d.precision, 0) + 1
    return Bytes(
        onnx_bytes=total_bits / 8,
        onnx_bits_per_weight=total_bits / elements,
        gguf_bytes=gguf_bytes,
        gguf_bits_per_weight=8 * gguf_bytes / elements,
        onnx_part_bytes={k: v / 8 for k, v in part_bits.items()},
        precisions=counts,
        fp32_bytes={
            n: 4 * math.prod(full.shapes[n])
            for n, d in decisions.items()
            if d.precision == "fp32" and 4 * math.prod(full.shapes[n]) >= 1e6
        },
    )


# ------------------------------------------------------------------------------------------ (b) parity
def checkpoint(out: Path, seed: int) -> Path:
    """The tiny random checkpoint of `seed` (written once; the demo is deterministic per seed)."""
    path = out / f"checkpoint-seed{seed}"
    if not (path / "params.json").is_file():
        VoxtralFamily.demo(path, seed=seed, config="tiny")
    return path


def build_mix(
    ckpt: Path, name: str, mix: tuple[str, str, str], out: Path, log: Callable[[str], None]
) -> tuple[dict[str, Path], Path, float]:
    """convert (shared cache), quantize, export ONNX for one mix: (graph -> file, converted checkpoint,
    bits per weight the manifest records)."""
    precision, section = quantize_section(mix)
    mapping = {
        "name": "bench-voxtral",
        "model": str(ckpt),
        "trust_pickle": True,  # the demo's voice presets are torch pickles, as Mistral ships them
        "formats": ["onnx"],
        "precisions": [precision],
        "quantize": section,
    }
    recipe = Recipe.from_mapping(mapping, base_dir=out)
    target = out / "rows" / ckpt.name / name.replace(" ", "-").replace(",", "")
    with pipeline.Build(recipe, target, lambda _: None, cache_dir=out / "cache") as build:
        entry = next(e for e in build.export() if e.format == "onnx" and not e.runtime_layout)
    files = {g: target / rel for g, rel in entry.files.items() if rel.endswith(".onnx")}
    log(f"{ckpt.name} {name}: {entry.bits_per_weight:.2f} bits/weight (tiny)")
    return files, pipeline.Layout(target).checkpoint, float(entry.bits_per_weight)


@dataclass
class Parity:
    """Every (seed, voice, sentence) figure of one mix."""

    hidden_snr_db: list[float] = field(default_factory=list)
    acoustic_snr_db: list[float] = field(default_factory=list)
    forced_snr_db: list[float] = field(default_factory=list)
    forced_logmel_db: list[float] = field(default_factory=list)
    free_logmel_db: list[float] = field(default_factory=list)
    tiny_bits_per_weight: list[float] = field(default_factory=list)


def measure_mix(
    files: Mapping[str, Path],
    references: Mapping[str, Reference],
    ids: Sequence[Sequence[int]],
    parity: Parity,
) -> None:
    model = next(iter(references.values())).model
    runner = OrtRunner(files, threads=1)
    specs = metric_specs(VoxtralFamily)
    for reference in references.values():
        for index, sentence in enumerate(ids):
            s = measure_sentence(model, runner, reference, sentence, str(index), specs)
            parity.hidden_snr_db.append(_num(s.metrics["hidden_snr_db"]))
            parity.acoustic_snr_db.append(_num(s.metrics["acoustic_snr_db"]))
            parity.forced_snr_db.append(_num(s.metrics["forced_snr_db"]))
            parity.free_logmel_db.append(_num(s.metrics["logmel_dtw_db"]))
            parity.forced_logmel_db.append(
                logmel_dtw_db(s.audio["reference"], s.audio["forced"], model.sample_rate)
            )


def _num(value: float | None) -> float:
    """A figure `measure_sentence` left unmeasured would silently drop out of the worst case: refuse."""
    if value is None:
        raise RuntimeError("measure_sentence returned no figure where the voxtral loop always gives one")
    return float(value)


# --------------------------------------------------------------------------------------------- results
@dataclass
class Result:
    """One row of the table and one object of --json (mean and worst over seeds × voices × sentences)."""

    mix: str
    backbone: str
    head: str
    codec: str
    full: Bytes
    parity: Parity

    def mean(self, key: str) -> float:
        return statistics.fmean(getattr(self.parity, key))

    def worst(self, key: str) -> float:
        values = getattr(self.parity, key)
        return max(values) if key.endswith("logmel_db") else min(values)


def table(rows: Sequence[Result]) -> list[str]:
    header = [
        "mix",
        "backbone / head / codec",
        "ONNX GB",
        "ONNX bits/w",
        "GGUF GB",
        "hidden SNR dB mean (worst)",
        "acoustic SNR dB mean (worst)",
        "forced audio SNR dB mean (worst)",
        "forced log-mel dB mean (worst)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r.mix,
            f"{r.backbone} / {r.head} / {r.codec}",
            f"{r.full.onnx_bytes / 1e9:.2f}",
            f"{r.full.onnx_bits_per_weight:.2f}",
            f"{r.full.gguf_bytes / 1e9:.2f}",
        ]
        for key in ("hidden_snr_db", "acoustic_snr_db", "forced_snr_db", "forced_logmel_db"):
            cells.append(
                f"{r.mean(key):.1f} ({r.worst(key):.1f})"
                if "snr" in key
                else f"{r.mean(key):.3f} ({r.worst(key):.3f})"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def part_lines(rows: Sequence[Result]) -> list[str]:
    """ONNX GB of each part at each precision, from the rows (what a recipe author adds up)."""
    seen: dict[tuple[str, str], float] = {}
    for r in rows:
        for part, precision in zip(PARTS, (r.backbone, r.head, r.codec), strict=True):
            seen.setdefault((part, precision), r.full.onnx_part_bytes[part])
    cells = []
    for part in PARTS:
        sizes = ", ".join(
            f"{p} {seen[(part, p)] / 1e9:.3f}" for p in ("fp16", "int8", "int4") if (part, p) in seen
        )
        cells.append(f"{part}: {sizes}")
    emb = rows[0].full.onnx_part_bytes["embeddings"] / 1e9
    line = f"ONNX GB per part: {'; '.join(cells)}; the two embedding tables (fp16 in every mix): {emb:.3f}."
    fp32 = {n: b for r in rows if r.backbone in ("int4", "int8") for n, b in r.full.fp32_bytes.items()}
    if fp32:
        listed = ", ".join(f"`{n}` ({b / 1e6:.0f} MB)" for n, b in sorted(fp32.items()))
        line += (
            f" Left fp32 by the plan when the recipe precision is an integer one (not quantizable, and no "
            f"float override covers them): {listed}; a recipe can add an fp16 override for them."
        )
    return [line]


# -------------------------------------------------------------------------------------------- document
@dataclass
class Run:
    results: list[Result]
    sentences: list[str]
    seeds: list[int]
    voices: list[str]
    max_frames: int
    seconds: float


def report(run: Run, argv: Sequence[str], stamp: str, loads: Sequence[str]) -> list[str]:
    n = len(run.sentences) * len(run.voices) * len(run.seeds)
    return [
        "Random weights rank the parts' sensitivity to rounding only; they predict nothing about how the "
        "trained model sounds after quantization (its weights are not reachable here).",
        "",
        *table(run.results),
        "",
        "Sizes (ONNX GB, bits/w, GGUF GB): weight bytes of the released 4.0B shape (the weightless "
        "full-size model's names and shapes), from the precision plan (`plan_precisions` with the globs "
        "the pipeline gives it: the recipe precision is the backbone's (`layers.*`, `norm.weight`), "
        "`precision_overrides` set `acoustic_transformer.*` and `audio_tokenizer.*`, `overrides` keep "
        "`mm_audio_embeddings.*` fp16) and "
        "each format's encoding: ONNX int4 in blocks of 32 with fp16 scales, int8 per output channel with "
        "fp32 scales (`QuantizedModel.bits_per_weight` with the ONNX exporter's `scale_bits`); GGUF by "
        "the writer's `plan_tensor` over the family's layout (Q4_0, Q8_0, the codec's convolutions "
        "forced to F16, vectors F32). Graph structure, metadata and the tokenizer add a few MB. "
        + part_lines(run.results)[0],
        "",
        f"Parity: the tiny random checkpoint (`voxport demo --family voxtral_tts`, weight seeds "
        f"{', '.join(map(str, run.seeds))}), each mix built by `voxport.pipeline.Build` (RTN, block 32, "
        f"ONNX) and run in ONNX Runtime by the family's loop against the fp32 torch loop, "
        f"{len(run.sentences)} held-out English sentences (in no recipe's texts and not in the "
        f"calibration set, checked at start) × voices {', '.join(run.voices)} × {len(run.seeds)} "
        f"checkpoints = {n} runs per mix, at most {run.max_frames} frames each, flow noise seed 0. "
        "Under teacher forcing every graph gets the reference's inputs, so each figure isolates a part: "
        "hidden SNR (the worst step of a run) is the backbone's rounding alone; acoustic SNR (worst step) "
        "is the head's 36 integrated values from the artifact's hidden state, so backbone and head "
        "together; forced audio (the codec decoding the reference's codes, SNR and log-mel DTW distance "
        "against the reference audio) is the codec's rounding alone. Mean over runs, worst run in "
        "brackets. Free-running figures are in the --json output (random weights diverge chaotically "
        "once one code differs).",
        "",
        f"Generated by `{shlex.join(['benchmarks/bench_voxtral.py', *argv])}` at commit {stamp}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average (1/5/15 min) {loads[0]} at "
        f"the start, {loads[1]} at the end; {run.seconds:.0f} s in all.",
    ]


# ------------------------------------------------------------------------------------------------ core
def run(args: argparse.Namespace, log: Callable[[str], None]) -> Run:
    torch.set_num_threads(1)
    started = time.perf_counter()
    mixes = {name: MIXES[name] for name in args.mixes}
    ckpts = [checkpoint(args.out, seed) for seed in args.seeds]
    full = FullSize.build((ckpts[0] / "tekken.json").read_bytes())
    sizes = {name: full_size_bytes(full, mix) for name, mix in mixes.items()}
    log(f"full-size bytes of {len(sizes)} mixes in {time.perf_counter() - started:.0f}s")
    parities = {name: Parity() for name in mixes}
    for ckpt in ckpts:
        references: dict[str, Reference] | None = None
        ids: list[list[int]] = []
        for name, mix in mixes.items():
            files, converted, bits = build_mix(ckpt, name, mix, args.out, log)
            if references is None:
                model = load_model(converted)
                ids = [model.text_to_ids(t) for t in HELD_OUT]
                references = {
                    v: Reference(model, VoxtralSettings(voice=v, seed=0, max_frames=args.max_frames))
                    for v in args.voices
                }
            measure_mix(files, references, ids, parities[name])
            parities[name].tiny_bits_per_weight.append(bits)
            p = parities[name]
            log(
                f"  hidden worst {min(p.hidden_snr_db):.1f} dB, "
                f"acoustic worst {min(p.acoustic_snr_db):.1f} dB"
            )
    results = [Result(name, *mix, full=sizes[name], parity=parities[name]) for name, mix in mixes.items()]
    return Run(
        results,
        list(HELD_OUT),
        list(args.seeds),
        list(args.voices),
        args.max_frames,
        time.perf_counter() - started,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="weight seeds of the tiny random checkpoints")
    parser.add_argument("--voices", default="ava,leo", help="the demo's voice presets to run")
    parser.add_argument("--max-frames", type=int, default=8, help="frames per run (80 ms each)")
    parser.add_argument("--mixes", default=",".join(MIXES), help="comma-separated mix names (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "build" / "bench-voxtral",
        help="checkpoints, builds and the stage cache",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--write", type=Path, help="markdown file whose Voxtral TTS mixes section to replace")
    args = parser.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: give comma-separated integers, got {args.seeds!r}")
    args.voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    args.mixes = [m.strip() for m in args.mixes.split(",") if m.strip()]
    unknown = [m for m in args.mixes if m not in MIXES]
    if unknown:
        parser.error(f"--mixes: unknown {unknown}; known: {', '.join(MIXES)}")
    if not args.seeds or not args.voices or not args.mixes or args.max_frames < 1:
        parser.error("give at least one seed, voice and mix, and --max-frames >= 1")
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
    lines = report(result, argv, stamp, [load_start, load_average()])
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {**asdict(result), "argv": argv, "commit": stamp}
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    if args.write:
        write_section(args.write, lines, begin=BEGIN, end=END, section=SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
