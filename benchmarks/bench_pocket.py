"""Benchmark Pocket TTS streaming latency: voxport's ONNX graphs against torch and Kyutai's own code.

    .venv/bin/python benchmarks/bench_pocket.py [--configs english_2026-10,english_18m_2026-10]
        [--frames 50] [--repeats 5] [--threads 1] [--text-ids 20] [--voice-frames 10]
        [--precisions fp32,fp16,int8,int4,int8-bb,int4-bb] [--levers int8,int4] [--json FILE]
        [--keep DIR] [--profile] [--accuracy-levels 1,4]

Why: Pocket TTS is a streaming model, so what a user feels is the time to first audio (TTFA) and
whether frames come faster than real time (RTF). The goal for the 4/8-bit artifacts is TTFA ≤ 30 ms
and RTF ≤ 0.2 on one CPU thread. Kyutai ships its own speed-up, `pocket_tts.quantization
.apply_dynamic_int8` (dynamic int8 on the backbone's attention and FFN Linears; Kyutai reports
450 → 234 MB and 3.17× → 4.04× real time), which is the anchor voxport's exports must be judged
against, measured here in the same process on the same weights.

Per release config (random weights, since no weights are reachable; `flow_lm.out_eos.bias` = −100
so end-of-speech never fires and every run renders exactly `--frames` frames; temperature 0 so the
torch reference, Kyutai and every ONNX precision are deterministic and comparable) it times:

- `torch eager`: voxport's fp32 reference, the family loop over `model.torch_runner()`;
- `kyutai fp32` / `kyutai int8`: Kyutai's `TTSModel` (voice prefill, text prefill, its
  autoregressive step, streaming Mimi decode one frame per call), plain and after `apply_dynamic_int8`;
- `onnx fp32/fp16/int8/int4`: the three exported graphs (backbone, flow_head, codec) in ONNX Runtime,
  exported once per config with voxport's own quantize + export stages (cached in the work dir);
  `int8-bb`/`int4-bb` ("backbone only") quantize with recipe overrides that keep the flow head and the
  codec at fp32, Kyutai's quantization scope, for an equal-scope comparison with the anchor.
- `--levers int8,int4` (the default) adds, per named variant, the issue-15 streaming levers as rows:
  `+voice-cache` (the voice prompt's keys/values computed once per voice and runner before the timed
  calls, as a runtime keeps or ships them, so a call prefills only its text and audio BOS),
  `+voice-cache +kvbind` (the `backbone_kv` graph, a preallocated KV cache written in place, run by
  `OrtBindingRunner` with I/O binding), and `+voice-cache +kvbind +codec-thread` (the codec decoding
  frame f in a second thread while frame f + 1 is generated; the only row that uses two cores). Under
  the table, one backbone step is timed at 80/320/660 cached positions, growing cache vs in place.
- `--accuracy-levels 1,4` adds, per integer variant V and level L, a variant `V@L` exported with
  `export.onnx.matmul_accuracy_level: L` (the quantized Linears written as MatMulNBits carrying that
  accuracy level, run with default session options as a user's ONNX Runtime would); `V@L:backbone`
  sets the level on that graph only (the others keep DequantizeLinear → MatMul, i.e. ORT's default 4).

Timing follows DESIGN.md's notes for this 2-core shared machine: one intra-op thread (torch and ONNX
Runtime), one warm-up run, then targets interleaved round-robin over `--repeats` so a burst of load
hits all of them alike, medians reported (best repeat in parentheses); ratios are taken only between
numbers of this run. TTFA runs from the call start (prompt prefill included) to the first decoded
audio frame; RTF is the whole call's compute seconds over the seconds of audio; ms/frame splits the
loop by graph with the prompt prefill (its own column) left out. Kyutai's own `generate_audio_stream` runs the
decoder in a second thread; with one core per process that overlap is not available, so it is run
here frame by frame in one thread (the same calls, in the same order).

Speed is never shown without quality: every row gets parity against the torch reference of the same
run — teacher-forced (the reference's latent fed back each step, as `synthesize(..., forced=ref)`
does; worst step's SNR of the latent, and for ONNX of the backbone hidden state) and free-running
(latent SNR over all frames, log-mel DTW distance of the audio via `compare_audio`). Kyutai fp32 is
the same numerics, so it shows > 100 dB teacher-forced.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from voxport import __version__
from voxport.export.onnx.exporter import DEFAULT_OPSET, export_onnx, trace_all
from voxport.export.onnx.trace import trace_graph
from voxport.families.base import Runner
from voxport.families.pocket_tts.kvcache import GRAPH as KV_GRAPH
from voxport.families.pocket_tts.kyutai import kyutai_model
from voxport.families.pocket_tts.loop import LoopSettings, VoiceState, generate, voice_state
from voxport.families.pocket_tts.model import PocketTTSAdapter
from voxport.families.pocket_tts.synthetic import random_model
from voxport.quantize.stage import quantize_model
from voxport.recipe import QuantizeConfig
from voxport.runtime.ort import OrtBindingRunner, OrtRunner
from voxport.validate.metrics import compare_audio, tensor_snr_db

#: ONNX variants: name → (precision, quantize overrides). "-bb" keeps Kyutai's anchor scope: only the
#: backbone is quantized, the flow head and the codec stay fp32 (voxport's default quantizes the flow
#: head and the codec transformer too, see PocketTTSAdapter.quantizable)
ANCHOR_SCOPE = {"flow_lm.flow_net.*": "fp32", "mimi.*": "fp32"}
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "fp32": ("fp32", {}),
    "fp16": ("fp16", {}),
    "int8": ("int8", {}),
    "int4": ("int4", {}),
    "int8-bb": ("int8", ANCHOR_SCOPE),
    "int4-bb": ("int4", ANCHOR_SCOPE),
}
DEFAULT_CONFIGS = ("english_2026-10", "english_18m_2026-10")
GOAL_TTFA_MS, GOAL_RTF = 30.0, 0.2
EOS_BIAS = -100.0
SEED = 0
#: node types counted in ONNX Runtime's optimized graphs: did DQ → MatMul fuse into MatMulNBits?
OP_TYPES = (
    "MatMulNBits",
    "DequantizeLinear",
    "MatMul",
    "MatMulInteger",
    "Gemm",
    "Cast",
    "Conv",
    "ConvTranspose",
)
SPLIT = ("backbone", "flow_head", "codec")
#: issue-15 streaming levers, added per variant named in --levers: row suffix → (backbone_kv bound in
#: place by OrtBindingRunner, codec on its own thread); every lever row also uses the cached voice state
LEVERS: dict[str, tuple[bool, bool]] = {
    "+voice-cache": (False, False),
    "+voice-cache +kvbind": (True, False),
    "+voice-cache +kvbind +codec-thread": (True, True),
}


# ----------------------------------------------------------------------------------------------- models
def release_config(name: str) -> dict[str, Any]:
    """A release YAML shipped inside Kyutai's `pocket-tts` package."""
    from pocket_tts.utils.config import CONFIGS_DIR

    return yaml.safe_load((CONFIGS_DIR / f"{name}.yaml").read_text())


def build_model(raw: dict[str, Any], seed: int) -> PocketTTSAdapter:
    """Random weights in Kyutai's layout, end of speech disabled so every run has the same frames."""
    model = random_model(raw, seed=seed)
    with torch.no_grad():
        model.modules.flow_lm.out_eos.bias.fill_(EOS_BIAS)
    return model


def decoder_side(name: str) -> bool:
    """Tensors synthesis reads (the codec encoder only serves voice cloning from audio)."""
    return not name.startswith(("mimi.encoder.", "mimi.encoder_transformer.", "mimi.downsample."))


def kyutai_int8(model: Any) -> tuple[Any, dict[str, str]]:
    """A copy with Kyutai's recommended quantization, and what it actually did."""
    from pocket_tts import quantization

    quantized = copy.deepcopy(model)
    backend = quantization._get_backend()
    quantization.apply_dynamic_int8(quantized.flow_lm, quantization.RECOMMENDED_CONFIG)
    layer = quantized.flow_lm.transformer.layers[0]
    info = {
        "backend": backend,
        "engine": torch.backends.quantized.engine,
        "in_proj": f"{type(layer.self_attn.in_proj).__module__}.{type(layer.self_attn.in_proj).__name__}",
        "linear1": f"{type(layer.linear1).__module__}.{type(layer.linear1).__name__}",
        "flow_net": type(quantized.flow_lm.flow_net.res_blocks[0].mlp[0]).__name__,
    }
    return quantized, info


def state_bytes(state: Mapping[str, Any]) -> int:
    """Serialized size of the tensors synthesis reads (packed int8 params included)."""
    buffer = io.BytesIO()
    torch.save({k: v for k, v in state.items() if decoder_side(k)}, buffer)
    return buffer.tell()


# ----------------------------------------------------------------------------------------------- export
def export_all(
    model: PocketTTSAdapter, out: Path, variants: Sequence[str], key: str
) -> dict[str, dict[str, Path]]:
    """Each variant's three ONNX graphs with voxport's own quantize + export stages (the calls
    pipeline.Build makes, recipe defaults), cached per variant under `out` while `key` (config, seed,
    EOS bias) is unchanged."""
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if index.get("key") != key:
        shutil.rmtree(out, ignore_errors=True)
        index = {"key": key, "files": {}}
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Path]] = {}
    for variant in variants:
        cached = {g: out / name for g, name in index["files"].get(variant, {}).items()}
        if cached and all(f.is_file() for f in cached.values()):
            files[variant] = cached
    if len(files) == len(variants):
        log(f"  export: cached in {out}")
        return files
    q = QuantizeConfig()
    started = time.perf_counter()
    traced = trace_all(model, DEFAULT_OPSET)
    kv = next(g for g in model.kv_graphs() if g.name == KV_GRAPH)
    traced[KV_GRAPH] = (trace_graph(kv, DEFAULT_OPSET), False, kv.metadata)
    log(f"  export: traced 4 graphs in {time.perf_counter() - started:.1f}s")
    for variant in variants:
        if variant in files:
            continue
        started = time.perf_counter()
        precision, overrides, level = variant_spec(variant)
        qm = quantize_model(model, precision, method=q.method, block_size=q.block_size, overrides=overrides)
        written = export_onnx(
            model,
            qm.weights,
            out,
            stem=f"pocket-{variant.replace('@', '-L').replace(':', '-')}",
            precision=precision,
            metadata={"recipe": "bench"},
            traced=traced,
            opset=DEFAULT_OPSET,
            matmul_accuracy_level=level,
        )
        files[variant] = {f.graph: f.path for f in written}
        index["files"][variant] = {f.graph: f.path.name for f in written}
        index_path.write_text(json.dumps(index, indent=1))
        log(f"  export: {variant} in {time.perf_counter() - started:.1f}s")
    return files


def optimized_ops(path: Path, threads: int, scratch: Path) -> dict[str, int]:
    """Node types of ONNX Runtime's optimized graph (what actually runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    target = scratch / f"{path.stem}.opt.onnx"
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    import onnx

    counts = Counter(n.op_type for n in onnx.load(str(target), load_external_data=False).graph.node)
    target.unlink(missing_ok=True)
    for extra in scratch.glob(f"{target.name}*"):
        extra.unlink()
    return {op: counts[op] for op in OP_TYPES if counts.get(op)}


# ----------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    ttfa: float
    total: float
    split: dict[str, float]
    latents: np.ndarray
    audio: np.ndarray
    hidden: np.ndarray | None = None
    #: the prompt pass(es) before the frame loop
    prefill: float = 0.0


class TimedRunner:
    """Wraps a runner and adds each graph call's wall time to `seconds[graph]`."""

    def __init__(self, inner: Runner) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "runner")
        self.graph_names = getattr(inner, "graph_names", None)
        self.seconds: dict[str, float] = defaultdict(float)
        self.first: dict[str, float] = {}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        out = self.inner.run(graph, inputs)
        elapsed = time.perf_counter() - started
        self.seconds[graph] += elapsed
        self.first.setdefault(graph, elapsed)
        return out


def run_voxport(
    model: PocketTTSAdapter,
    runner: Runner,
    ids: list[int],
    voice: np.ndarray | None,
    frames: int,
    forced: np.ndarray | None = None,
    *,
    cached: VoiceState | None = None,
    codec_thread: bool = False,
) -> Run:
    """One call of the family loop. `cached`: the voice's state computed beforehand (once per voice,
    outside the timing: what a runtime ships or keeps), so the call prefills only the text."""
    timed = TimedRunner(runner)
    settings = LoopSettings(seed=SEED, temperature=0.0, max_frames=frames)
    started = time.perf_counter()
    gen = generate(
        timed,
        model.loop_spec,
        ids,
        settings,
        voice=None if cached is not None else voice,
        voice_cache=cached,
        forced_latents=forced,
        codec_thread=codec_thread,
    )
    total = time.perf_counter() - started
    assert len(gen.latents) == frames, f"expected {frames} frames, got {len(gen.latents)}"
    assert gen.first_audio_seconds is not None
    for name in (KV_GRAPH,):  # the in-place backbone counts as the backbone
        if name in timed.seconds:
            timed.seconds["backbone"] += timed.seconds.pop(name)
            timed.first.setdefault("backbone", timed.first.pop(name))
    prefill = timed.first["backbone"]
    split = {**timed.seconds, "backbone": timed.seconds["backbone"] - prefill}
    return Run(gen.first_audio_seconds, total, split, gen.latents, gen.audio, gen.hidden, prefill)


@torch.no_grad()
def run_kyutai(
    model: Any, ids: list[int], voice: np.ndarray | None, frames: int, forced: np.ndarray | None = None
) -> Run:
    """Kyutai's prefills + `_run_flow_lm_and_increment_step` loop + streaming Mimi decode, one frame per
    call, in one thread (what `generate_audio_stream` does across two threads). `forced` (frames, 32)
    feeds the reference's latent back instead of Kyutai's own (teacher forcing)."""
    from pocket_tts.modules.stateful_module import increment_steps, init_states

    flow = model.flow_lm
    seconds: dict[str, float] = defaultdict(float)
    marks: list[float] = []
    hooks = [
        flow.flow_net.register_forward_pre_hook(lambda m, a: marks.append(time.perf_counter())),
        flow.flow_net.register_forward_hook(
            lambda m, a, o: seconds.__setitem__(
                "flow_head", seconds["flow_head"] + time.perf_counter() - marks.pop()
            )
        ),
    ]
    try:
        started = time.perf_counter()
        prompt_len = len(ids) + (0 if voice is None else len(voice) + 1)
        state = init_states(flow, batch_size=1, sequence_length=prompt_len + frames + 1)
        if voice is not None:
            prompt = torch.nn.functional.linear(torch.from_numpy(voice)[None], flow.speaker_proj_weight)
            if flow.insert_bos_before_voice:
                prompt = torch.cat([flow.bos_before_voice, prompt], dim=1)
            model._run_flow_lm_and_increment_step(model_state=state, audio_conditioning=prompt)
        model._run_flow_lm_and_increment_step(model_state=state, text_tokens=torch.tensor([ids]))
        mimi_state = init_states(model.mimi, batch_size=1, sequence_length=16 * frames)
        fade = torch.linspace(0, 1, model.config.mimi.sample_rate // 200)
        x = torch.full((1, 1, flow.ldim), float("nan"))
        latents, audio, first = [], [], 0.0
        prefill = time.perf_counter() - started
        seconds.pop("flow_head", None)  # the prefills' discarded samples count as prefill
        lm_seconds = 0.0
        for f in range(frames):
            t0 = time.perf_counter()
            x, eos = model._run_flow_lm_and_increment_step(model_state=state, backbone_input_latents=x)
            bool(eos.item())  # the loop reads the EOS decision every step
            t1 = time.perf_counter()
            a = model.mimi.decode_from_latent(x * flow.emb_std + flow.emb_mean, mimi_state)
            increment_steps(model.mimi, mimi_state, increment=16)
            if f == 0:
                n = min(fade.numel(), a.shape[-1])
                a[..., :n] *= fade[:n]
            t2 = time.perf_counter()
            lm_seconds += t1 - t0
            seconds["codec"] += t2 - t1
            if f == 0:
                first = t2 - started
            latents.append(x[0, 0].numpy().copy())
            if forced is not None:
                x = torch.from_numpy(forced[f]).reshape(1, 1, -1)
            audio.append(a.reshape(-1).numpy().copy())
        total = time.perf_counter() - started
    finally:
        for hook in hooks:
            hook.remove()
    seconds["backbone"] = lm_seconds - seconds["flow_head"]
    return Run(first, total, dict(seconds), np.stack(latents), np.concatenate(audio), prefill=prefill)


# ----------------------------------------------------------------------------------------------- bench
#: one ONNX row's run: forced latents (teacher forcing) or None (free running) → its timings and outputs
OnnxTarget = Callable[[np.ndarray | None], "Run"]


@dataclass
class Row:
    config: str
    target: str
    ttfa_ms: float
    rtf: float
    prefill_ms: float
    ms_per_frame: dict[str, float]
    size_mb: float
    ttfa_vs_torch: float = 1.0
    speed_vs_torch: float = 1.0
    quantized: bool = False
    meets_goal: bool = False
    parity: dict[str, float | None] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)


def variant_spec(variant: str) -> tuple[str, dict[str, str], int | dict[str, int] | None]:
    """(precision, quantize overrides, matmul_accuracy_level) of `int8`, `int8@1`, `int8@1:flow_head`."""
    base, _, level = variant.partition("@")
    precision, overrides = VARIANTS[base]
    if not level:
        return precision, overrides, None
    value, _, graph = level.partition(":")
    return precision, overrides, {graph: int(value)} if graph else int(value)


def onnx_label(variant: str) -> str:
    precision, overrides, level = variant_spec(variant)
    label = f"onnx {precision}" + (", backbone only" if overrides == ANCHOR_SCOPE else "")
    if isinstance(level, dict):
        label += ", " + ", ".join(f"{g} MatMulNBits level {v}" for g, v in level.items())
    elif level is not None:
        label += f", MatMulNBits level {level}"
    return label


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median_run(
    runs: list[Run], frames: int
) -> tuple[float, float, float, dict[str, float], dict[str, float]]:
    """Medians of TTFA, total and prefill seconds, per-frame ms by graph, and the spread of the repeats."""
    ttfa = statistics.median(r.ttfa for r in runs)
    prefill = statistics.median(r.prefill for r in runs)
    total = statistics.median(r.total for r in runs)
    split = {g: statistics.median(r.split.get(g, 0.0) for r in runs) * 1000 / frames for g in SPLIT}
    spread = {
        "total_min_s": min(r.total for r in runs),
        "total_max_s": max(r.total for r in runs),
        "ttfa_min_ms": 1000 * min(r.ttfa for r in runs),
        "ttfa_max_ms": 1000 * max(r.ttfa for r in runs),
    }
    return ttfa, total, prefill, split, spread


def bench_config(name: str, args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, Any]]:
    log(f"== {name}")
    raw = release_config(name)
    model = build_model(raw, SEED)
    spec = model.loop_spec
    frames = args.frames
    audio_seconds = frames * spec.frame_size / spec.sample_rate
    rng = np.random.default_rng(SEED)
    ids = [int(i) for i in rng.integers(1, model.cfg.n_bins, size=args.text_ids)]
    voice = (
        rng.standard_normal((args.voice_frames, spec.latent_dim)).astype(np.float32)
        if args.voice_frames
        else None
    )

    state = model.state_dict()
    fp32_bytes = sum(v.numel() * 4 for k, v in state.items() if decoder_side(k))
    kyutai = kyutai_model(raw, state)
    kyutai_q, quant_info = kyutai_int8(kyutai)
    q = quant_info
    log(f"  kyutai int8: backend {q['backend']}, engine {q['engine']}, {q['in_proj']}")

    variants = args.precisions
    key = json.dumps({"config": raw, "seed": SEED, "eos_bias": EOS_BIAS, "voxport": __version__})
    files = export_all(model, work / name, variants, key)
    three = {v: {g: path for g, path in files[v].items() if g != KV_GRAPH} for v in variants}
    ort = {v: OrtRunner(three[v], threads=args.threads) for v in variants}
    onnx_labels = {onnx_label(v): v for v in variants}
    torch_runner = model.torch_runner()

    # each target runs the family loop; `forced` (the reference's latents) gives teacher forcing
    def target(runner: Runner, cached: VoiceState | None = None, thread: bool = False) -> OnnxTarget:
        return lambda forced: run_voxport(
            model, runner, ids, voice, frames, forced, cached=cached, codec_thread=thread
        )

    onnx_targets = {label: target(ort[v]) for label, v in onnx_labels.items()}
    sizes = {
        "torch eager fp32": fp32_bytes,
        "kyutai fp32": state_bytes(kyutai.state_dict()),
        "kyutai int8 (apply_dynamic_int8)": state_bytes(kyutai_q.state_dict()),
        **{label: sum(f.stat().st_size for f in three[v].values()) for label, v in onnx_labels.items()},
    }
    quantized = {"kyutai int8 (apply_dynamic_int8)"} | {
        label for label, v in onnx_labels.items() if variant_spec(v)[0] in ("int8", "int4")
    }
    kv_runners: dict[str, Runner] = {}
    for v in [v for v in args.levers if v in variants]:
        in_place = {**{g: p for g, p in three[v].items() if g != "backbone"}, KV_GRAPH: files[v][KV_GRAPH]}
        bound = OrtBindingRunner(in_place, threads=args.threads)
        kv_runners[v] = bound
        # the voice's state, once per voice and runner (outside the timing, as a runtime keeps it)
        states = (
            {False: voice_state(ort[v], spec, voice), True: voice_state(bound, spec, voice)}
            if (voice is not None)
            else {False: None, True: None}
        )
        for suffix, (kv, thread) in LEVERS.items():
            label = f"{onnx_label(v)} {suffix}"
            onnx_targets[label] = target(bound if kv else ort[v], states[kv], thread)
            sizes[label] = sum(f.stat().st_size for f in (in_place if kv else three[v]).values())
            quantized.add(label)

    targets: dict[str, Callable[[], Run]] = {
        "torch eager fp32": lambda: run_voxport(model, torch_runner, ids, voice, frames),
        "kyutai fp32": lambda: run_kyutai(kyutai, ids, voice, frames),
        "kyutai int8 (apply_dynamic_int8)": lambda: run_kyutai(kyutai_q, ids, voice, frames),
        **{label: functools.partial(fn, None) for label, fn in onnx_targets.items()},
    }

    log("  warm-up (also the parity outputs)")
    first = {label: fn() for label, fn in targets.items()}
    runs: dict[str, list[Run]] = {label: [] for label in targets}
    for r in range(args.repeats):
        for label, fn in targets.items():
            runs[label].append(fn())
        log(
            f"  repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{k.split(' (')[0]} {runs[k][-1].total:.2f}s" for k in targets)
        )

    ref = first["torch eager fp32"]
    parity: dict[str, dict[str, float | None]] = {}
    for label, run in first.items():
        if label == "torch eager fp32":
            continue
        audio = compare_audio(ref.audio, run.audio, spec.sample_rate)
        entry: dict[str, float | None] = {
            "free_latent_snr_db": tensor_snr_db(ref.latents, run.latents),
            "free_logmel_dtw_db": audio.logmel_dtw_db,
        }
        if label.startswith("kyutai"):
            kyutai_forced = run_kyutai(
                kyutai_q if "int8" in label else kyutai, ids, voice, frames, ref.latents
            )
            entry["forced_latent_snr_db"] = min(
                tensor_snr_db(a, b) for a, b in zip(ref.latents, kyutai_forced.latents, strict=True)
            )
        if label in onnx_targets:
            forced = onnx_targets[label](ref.latents)
            entry["forced_latent_snr_db"] = min(
                tensor_snr_db(a, b) for a, b in zip(ref.latents, forced.latents, strict=True)
            )
            assert ref.hidden is not None and forced.hidden is not None
            entry["forced_hidden_snr_db"] = min(
                tensor_snr_db(a, b) for a, b in zip(ref.hidden, forced.hidden, strict=True)
            )
        parity[label] = entry

    base_ttfa, base_total, _, _, _ = median_run(runs["torch eager fp32"], frames)
    rows = []
    for label in targets:
        ttfa, total, prefill, split, spread = median_run(runs[label], frames)
        rtf = total / audio_seconds
        rows.append(
            Row(
                config=name,
                target=label,
                ttfa_ms=1000 * ttfa,
                rtf=rtf,
                prefill_ms=1000 * prefill,
                ms_per_frame=split,
                size_mb=sizes[label] / 1e6,
                ttfa_vs_torch=ttfa / base_ttfa,
                speed_vs_torch=base_total / total,
                quantized=label in quantized,
                meets_goal=1000 * ttfa <= GOAL_TTFA_MS and rtf <= GOAL_RTF,
                parity=parity.get(label, {}),
                spread={**spread, "rtf_min": spread["total_min_s"] / audio_seconds},
            )
        )

    scratch = work / name / "opt"
    scratch.mkdir(exist_ok=True)
    ops = {
        v: {g: optimized_ops(path, args.threads, scratch) for g, path in files[v].items()}
        for v in variants
        if v != "fp32"
    }
    profile = profile_ops(model, files, ids, voice, frames, args, work / name) if args.profile else {}
    step_ms = {v: kv_step_ms(spec, ort[v], kv_runners[v], args.repeats) for v in kv_runners}
    info = {
        "config": name,
        "parameters_decoder_side": sum(v.numel() for k, v in state.items() if decoder_side(k)),
        "prompt": {"text_ids": len(ids), "voice_frames": args.voice_frames},
        "frames": frames,
        "audio_seconds": audio_seconds,
        "kyutai_quantization": quant_info,
        "ort_optimized_ops": ops,
        "ort_profile_ms_per_frame": profile,
        "backbone_step_ms": step_ms,
    }
    return rows, info


#: cached positions at which `kv_step_ms` times one backbone step (the 50-frame runs end near 80;
#: ~660 is Kyutai's 50-token chunk at its frame limit plus the prompt)
STEP_POSITIONS = (80, 320, 660)


def kv_step_ms(
    spec: Any, growing: Runner, bound: Runner, repeats: int, positions: Sequence[int] = STEP_POSITIONS
) -> dict[str, dict[str, float]]:
    """One decode step's wall time (median of 10 × repeats calls, Python side included) after P cached
    positions: the growing-cache `backbone` (Concat of past + new per layer, present handed back) against
    `backbone_kv` bound in place (capacity P + 64, the new row scattered into the caller's buffer)."""
    step = {
        "token_ids": np.zeros((1, 1), np.int64),
        "latents": np.zeros((1, 1, spec.latent_dim), np.float32),
        "kind": np.full((1, 1), 2, np.int64),
    }
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for p in positions:
        shape = (1, spec.kv_heads, p, spec.head_dim)
        layers = [(i, kv) for i in range(spec.num_layers) for kv in ("key", "value")]
        past = {f"past_{kv}_{i}": rng.standard_normal(shape).astype(np.float32) for i, kv in layers}
        cache = {
            f"{kv}_cache_{i}": np.concatenate(
                [past[f"past_{kv}_{i}"], np.zeros((*shape[:2], 64, shape[3]), np.float32)], 2
            )
            for i, kv in layers
        }
        feed = {**step, "position": np.array([p], np.int64)}
        calls = {
            "growing": (growing, "backbone", {**feed, **past}),
            "in-place": (bound, KV_GRAPH, {**feed, **cache}),
        }
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(10 * max(repeats, 1) + 1):
            for k, (runner, graph, inputs) in calls.items():
                started = time.perf_counter()
                runner.run(graph, inputs)
                times[k].append(time.perf_counter() - started)
        out[str(p)] = {k: 1000 * statistics.median(v[1:]) for k, v in times.items()}
    return out


def profile_ops(
    model: PocketTTSAdapter,
    files: Mapping[str, Mapping[str, Path]],
    ids: list[int],
    voice: np.ndarray | None,
    frames: int,
    args: argparse.Namespace,
    work: Path,
) -> dict[str, dict[str, dict[str, float]]]:
    """ONNX Runtime's own profiler over one generation: ms per frame by graph and node type."""
    import onnxruntime as ort

    out: dict[str, dict[str, dict[str, float]]] = {}
    for precision, graphs in files.items():
        runner = OrtRunner({}, threads=args.threads)
        for graph, path in graphs.items():
            if graph == KV_GRAPH:  # profiled: the growing-cache loop, as the plain rows run it
                continue
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            options.enable_profiling = True
            options.profile_file_prefix = str(work / f"profile_{precision}_{graph}")
            runner.sessions[graph] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        runner.graph_names = frozenset(runner.sessions)
        run_voxport(model, runner, ids, voice, frames)
        out[precision] = {}
        for graph, session in runner.sessions.items():
            trace = Path(session.end_profiling())
            by_op: Counter[str] = Counter()
            for event in json.loads(trace.read_text()):
                if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                    by_op[event["args"]["op_name"]] += event["dur"] / 1000 / frames
            trace.unlink()
            out[precision][graph] = {op: round(ms, 3) for op, ms in by_op.most_common(6)}
    return out


# ----------------------------------------------------------------------------------------------- report
def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(rows: Sequence[Row], infos: Sequence[Mapping[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Goal (4/8-bit rows): TTFA ≤ {GOAL_TTFA_MS:.0f} ms and RTF ≤ {GOAL_RTF}. "
        f"{args.frames} frames ({args.frames / 12.5:.2f} s of audio at 12.5 Hz), {args.text_ids} text ids + "
        f"{args.voice_frames} voice frames, {args.threads} thread(s), medians of {args.repeats}; "
        f"{os.cpu_count()} CPUs, load average {args.load_start[0]:.1f} at the start, "
        f"{args.load_end[0]:.1f} at the end.",
        "",
        "| config | target | MB | TTFA ms (best) | prefill ms | RTF (best) | ms/frame backbone | flow "
        "| codec | TTFA /torch | speed ×torch | goal | forced latent SNR dB | forced hidden SNR dB "
        "| free latent SNR dB | free log-mel dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        goal = ("✓" if r.meets_goal else "✗") if r.quantized else ("(✓)" if r.meets_goal else "")
        p = r.parity
        lines.append(
            f"| {r.config} | {r.target} | {r.size_mb:.1f} | {r.ttfa_ms:.1f} ({r.spread['ttfa_min_ms']:.1f}) "
            f"| {r.prefill_ms:.1f} | {r.rtf:.3f} ({r.spread['rtf_min']:.3f}) "
            f"| {r.ms_per_frame['backbone']:.2f} | {r.ms_per_frame['flow_head']:.2f} "
            f"| {r.ms_per_frame['codec']:.2f} | {r.ttfa_vs_torch:.2f} | {r.speed_vs_torch:.2f} | {goal} "
            f"| {fmt(p.get('forced_latent_snr_db'))} | {fmt(p.get('forced_hidden_snr_db'))} "
            f"| {fmt(p.get('free_latent_snr_db'))} | {fmt(p.get('free_logmel_dtw_db'), 3)} |"
        )
    for info in infos:
        q = info["kyutai_quantization"]
        lines += [
            "",
            f"{info['config']}: {info['parameters_decoder_side'] / 1e6:.2f}M parameters (flow LM + codec "
            f"decoder). Kyutai apply_dynamic_int8 backend: {q['backend']} (engine {q['engine']}; "
            f"in_proj → {q['in_proj'].rsplit('.', 1)[-1]} from {q['in_proj'].rsplit('.', 1)[0]}).",
        ]
        for precision, graphs in info["ort_optimized_ops"].items():
            parts = [f"{g}: " + ", ".join(f"{op} {n}" for op, n in ops.items()) for g, ops in graphs.items()]
            lines.append(f"- ORT optimized graph, {precision}: " + "; ".join(parts))
        for precision, graphs in info["ort_profile_ms_per_frame"].items():
            parts = [
                f"{g}: " + ", ".join(f"{op} {ms:.2f}" for op, ms in ops.items()) for g, ops in graphs.items()
            ]
            lines.append(f"- ORT profile ms/frame by node type, {precision}: " + "; ".join(parts))
        for precision, by_position in info["backbone_step_ms"].items():
            parts = [f"{p}: {t['growing']:.2f} → {t['in-place']:.2f}" for p, t in by_position.items()]
            lines.append(
                f"- one backbone step, {precision}, ms after P cached positions, growing cache → "
                "backbone_kv bound in place: " + "; ".join(parts)
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="Kyutai release config names")
    parser.add_argument("--frames", type=int, default=50, help="frames per run (12.5 Hz: 50 = 4 s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--text-ids", type=int, default=20)
    parser.add_argument("--voice-frames", type=int, default=10, help="voice prompt latents (0: none)")
    parser.add_argument(
        "--precisions", default=",".join(VARIANTS), help="ONNX variants: " + ", ".join(VARIANTS)
    )
    parser.add_argument(
        "--levers",
        default="int8,int4",
        help="variants that also get the streaming-lever rows (" + "; ".join(LEVERS) + "); '' for none",
    )
    parser.add_argument("--json", type=Path, help="also write rows + run info as JSON here")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the exported ONNX in this directory")
    parser.add_argument("--profile", action="store_true", help="ORT profiler: ms per node type per graph")
    parser.add_argument(
        "--accuracy-levels",
        default="",
        help="add each integer variant at these MatMulNBits accuracy levels (e.g. 1,4 or 1:flow_head)",
    )
    args = parser.parse_args(argv)
    args.configs = [c for c in args.configs.split(",") if c]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.levers = [p for p in args.levers.split(",") if p]
    levels = [lv for lv in args.accuracy_levels.split(",") if lv]
    integer = [p for p in args.precisions if VARIANTS.get(p, ("",))[0] in ("int8", "int4")]
    args.precisions += [f"{p}@{lv}" for p in integer for lv in levels]
    unknown = {p.partition("@")[0] for p in args.precisions} - set(VARIANTS)
    if unknown:
        parser.error(f"unknown precisions {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows: list[Row] = []
    infos: list[dict[str, Any]] = []
    args.load_start = os.getloadavg()
    with _work_dir(args.keep) as work:
        for name in args.configs:
            config_rows, info = bench_config(name, args, work)
            rows += config_rows
            infos.append(info)
    args.load_end = os.getloadavg()
    print(markdown(rows, infos, args))
    if args.json:
        payload = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()},
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "goal": {"ttfa_ms": GOAL_TTFA_MS, "rtf": GOAL_RTF},
            "rows": [asdict(r) for r in rows],
            "configs": infos,
        }
        args.json.write_text(json.dumps(payload, indent=1, default=float))
    return 0


@contextlib.contextmanager
def _work_dir(keep: Path | None) -> Iterator[Path]:
    """`--keep DIR` (created, reused across runs), else a temp dir removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench_pocket_") as tmp:
        yield Path(tmp)


if __name__ == "__main__":
    sys.exit(main())
