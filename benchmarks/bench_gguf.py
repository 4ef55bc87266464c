"""Benchmark the GGUF writer's memory: streamed (voxport) against naive (hold every tensor) writing.

    .venv/bin/python benchmarks/bench_gguf.py [--params-mb 400] [--cases fp32,int8,int4] [--out DIR]

It builds one random-weight VITS checkpoint whose inference weights take about --params-mb MiB in
fp32 (the posterior encoder and the duration predictor's posterior flows, training-only parts that
voxport drops, are not counted), then for every precision runs two
writers, each in a FRESH subprocess so that peak RSS belongs to that case alone:

* streaming: `voxport.export.gguf.writer.write_gguf` (tensor infos first, then one tensor encoded,
  written and dropped at a time);
* naive: the same plan, metadata and per-tensor encoding, but gguf-py's one-pass API:
  `GGUFWriter.add_tensor(name, encoded)` for every tensor, then `write_tensors_to_file()`, which holds
  every encoded tensor until the end.

Each subprocess loads the model and quantizes it (`quantize_model`); RSS with the model and the
quantized weights in memory, after `gc.collect()` and glibc `malloc_trim(0)` (so heap that quantizing
freed is returned to the OS rather than silently reused by the writer), is the baseline. Quantizing
can itself raise the process's peak RSS (VmHWM is a lifetime peak), so before writing the peak is
reset by writing "5" to /proc/self/clear_refs (Linux); the figure reported is VmHWM after writing
minus VmRSS just before it. If the reset is not available, VmHWM after minus the larger of (VmHWM
before, baseline) is shown and marked "*". As a second, independent figure, tracemalloc's peak over
the writing phase (numpy buffers are tracked) is reported.

fp32 is the control: its stored arrays are views of the model's own memory, so neither writer needs
to copy them and both peaks should be close to zero. The quantized cases are where a naive writer has
to hold the whole encoded model (about model/3.8 for Q8_0, model/7.1 for Q4_0) while the streaming one
holds one tensor and its encoding temporaries.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
#: precision → the GGML type its quantizable weights are stored as
CASES = {"fp32": "F32", "int8": "Q8_0", "int4": "Q4_0"}
#: fixed part of the config; the number of text-encoder layers and prior-flow WaveNet layers are
#: chosen to reach --params-mb
BASE_OVERRIDES: dict[str, Any] = {
    "hidden_size": 768,
    "ffn_dim": 3072,
    "num_attention_heads": 12,
    "flow_size": 192,
    "upsample_initial_channel": 256,
    "duration_predictor_filter_channels": 256,
    "prior_encoder_num_flows": 2,
    "posterior_encoder_num_wavenet_layers": 1,
}


# --- /proc helpers ------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def hwm_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def malloc_trim() -> bool:
    """Hand glibc's free heap back to the OS, so memory freed by load/quantize is not silently reused by
    the writer (which would hide its allocations from VmHWM); False where glibc is not available."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5); True if it took effect."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return hwm_bytes() <= rss_bytes() + 4 * MIB


# --- model size -----------------------------------------------------------------------------------------
def _meta_bytes(overrides: dict[str, Any]) -> int:
    """fp32 bytes of the parameters voxport keeps (all but the posterior encoder and the duration
    predictor's training-only posterior flows)."""
    import torch
    from transformers import VitsConfig, VitsModel

    from voxport.families.vits.synthetic import TINY_CONFIG

    with torch.device("meta"):
        model = VitsModel(VitsConfig(**{**TINY_CONFIG, **overrides}))
    return sum(
        p.numel() * 4
        for n, p in model.named_parameters()
        if not n.startswith("posterior_encoder.") and ".post_" not in n
    )


def choose_overrides(params_mb: float) -> tuple[dict[str, Any], float]:
    """Text-encoder and flow depth whose kept fp32 weights come closest to `params_mb` MiB (size is
    linear in both depths, so three meta-device builds give the coefficients)."""
    target = params_mb * MIB

    def size(layers: int, wavenet: int) -> int:
        return _meta_bytes(
            {**BASE_OVERRIDES, "num_hidden_layers": layers, "prior_encoder_num_wavenet_layers": wavenet}
        )

    s11, s21, s12 = size(1, 1), size(2, 1), size(1, 2)
    per_layer, per_wavenet = s21 - s11, s12 - s11
    best = None
    for wavenet in range(1, 9):
        for layers in range(1, 65):
            est = s11 + (layers - 1) * per_layer + (wavenet - 1) * per_wavenet
            # closest to the target; ties go to the deeper text encoder
            key = (abs(est - target), -layers)
            if best is None or key < best[0]:
                best = (key, layers, wavenet, est)
    assert best is not None
    _, layers, wavenet, est = best
    overrides = {**BASE_OVERRIDES, "num_hidden_layers": layers, "prior_encoder_num_wavenet_layers": wavenet}
    return overrides, est / MIB


def ensure_checkpoint(ckpt: Path, overrides: dict[str, Any]) -> float:
    """Build (or reuse, if built from the same overrides) the random checkpoint; seconds spent."""
    stamp = ckpt / "bench_overrides.json"
    wanted = json.dumps(overrides, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted:
        return 0.0
    from voxport.families.vits.synthetic import make_vits_checkpoint

    if ckpt.exists():
        shutil.rmtree(ckpt)
    t0 = time.perf_counter()
    make_vits_checkpoint(ckpt, seed=0, overrides=overrides)
    stamp.write_text(wanted)
    return time.perf_counter() - t0


# --- writers --------------------------------------------------------------------------------------------
def write_naive(model: Any, qm: Any, path: Path, *, name: str) -> None:
    """The non-streaming pattern: every tensor encoded and handed to `add_tensor`, then written at once."""
    from gguf import GGUFWriter

    from voxport.export.gguf.writer import _add_value, build_metadata, encode_tensor, plan_tensors

    state = model.state_dict()
    plans, _ = plan_tensors(model, qm, None, state=state)
    kv = build_metadata(model, qm, plans, name=name)
    writer = GGUFWriter(path, model.family)
    try:
        for key, value in kv.items():
            _add_value(writer, key, value)
        for p in plans:
            data = encode_tensor(p, qm.weights[p.name], state[p.name])
            writer.add_tensor(p.gguf_name, data, raw_dtype=p.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def worker(ckpt: Path, precision: str, mode: str, out_file: Path) -> dict[str, Any]:
    """One case in this (fresh) process: load + quantize (baseline), then write and measure."""
    import numpy as np

    from voxport.export.gguf.writer import plan_tensors, write_gguf
    from voxport.families import load_model
    from voxport.quantize.stage import quantize_model

    rss_start = rss_bytes()
    t0 = time.perf_counter()
    model = load_model(ckpt)
    qm = quantize_model(model, precision)
    prep_s = time.perf_counter() - t0
    state = model.state_dict()
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    largest_fp32 = max(t.numel() * 4 for t in state.values())
    plans, _ = plan_tensors(model, qm, None, state=state)
    largest_stored = max(p.nbytes for p in plans)
    stored_types = sorted({p.ggml_type.name for p in plans if p.name in model.quantizable()})
    del state, plans
    gc.collect()
    trimmed = malloc_trim()

    hwm_prep = hwm_bytes()
    reset_ok = reset_hwm()
    baseline = rss_bytes()
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "streaming":
        write_gguf(model, qm, out_file, name="bench")
    else:
        write_naive(model, qm, out_file, name="bench")
    write_s = time.perf_counter() - t0
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm_after = hwm_bytes()
    rss_after = rss_bytes()
    file_bytes = out_file.stat().st_size
    out_file.unlink()
    above = hwm_after - baseline if reset_ok else max(0, hwm_after - max(hwm_prep, baseline))
    return {
        "precision": precision,
        "mode": mode,
        "stored_types": stored_types,
        "model_bytes": model_bytes,
        "largest_fp32_bytes": largest_fp32,
        "largest_stored_bytes": int(largest_stored),
        "file_bytes": file_bytes,
        "rss_start_bytes": rss_start,
        "baseline_rss_bytes": baseline,
        "hwm_after_prep_bytes": hwm_prep,
        "hwm_reset": reset_ok,
        "malloc_trim": trimmed,
        "hwm_after_write_bytes": hwm_after,
        "rss_after_write_bytes": rss_after,
        "peak_above_baseline_bytes": int(above),
        "tracemalloc_peak_bytes": int(tm_peak),
        "prep_seconds": prep_s,
        "write_seconds": write_s,
        "numpy": np.__version__,
    }


def run_case(ckpt: Path, precision: str, mode: str, out: Path) -> dict[str, Any]:
    out_file = out / f"{precision}-{mode}.gguf"
    script = str(Path(__file__).resolve())
    cmd = [sys.executable, script, "--worker", str(ckpt), precision, mode, str(out_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"worker {precision}/{mode} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report ---------------------------------------------------------------------------------------------
def table(results: list[dict[str, Any]]) -> str:
    def mib(x: float) -> str:
        return f"{x / MIB:.1f}"

    header = (
        "case",
        "model fp32 MiB",
        "largest fp32 / stored MiB",
        "file MiB",
        "baseline RSS MiB",
        "peak>base stream MiB",
        "peak>base naive MiB",
        "tracemalloc stream / naive MiB",
        "write s stream / naive",
    )
    rows = [header]
    by = {(r["precision"], r["mode"]): r for r in results}
    for precision, ggml in CASES.items():
        s, n = by.get((precision, "streaming")), by.get((precision, "naive"))
        if s is None or n is None:
            continue
        mark = "" if s["hwm_reset"] and n["hwm_reset"] else " *"
        rows.append(
            (
                f"{precision} ({ggml})",
                mib(s["model_bytes"]),
                f"{mib(s['largest_fp32_bytes'])} / {mib(s['largest_stored_bytes'])}",
                mib(s["file_bytes"]),
                f"{mib(s['baseline_rss_bytes'])} / {mib(n['baseline_rss_bytes'])}",
                mib(s["peak_above_baseline_bytes"]) + mark,
                mib(n["peak_above_baseline_bytes"]) + mark,
                f"{mib(s['tracemalloc_peak_bytes'])} / {mib(n['tracemalloc_peak_bytes'])}",
                f"{s['write_seconds']:.1f} / {n['write_seconds']:.1f}",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        ckpt, precision, mode, out_file = argv[1:5]
        print(json.dumps(worker(Path(ckpt), precision, mode, Path(out_file))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params-mb", type=float, default=400.0, help="fp32 kept weights, MiB (default 400)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated precisions (fp32,int8,int4)")
    ap.add_argument("--out", type=Path, default=REPO / "scratch" / "bench_gguf")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")

    t_start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    overrides, est_mib = choose_overrides(args.params_mb)
    ckpt = args.out / f"ckpt-{int(args.params_mb)}"
    build_s = ensure_checkpoint(ckpt, overrides)
    print(
        f"model: {est_mib:.0f} MiB fp32 kept weights (target {args.params_mb:.0f}); "
        f"text-encoder layers {overrides['num_hidden_layers']}, prior-flow WaveNet layers "
        f"{overrides['prior_encoder_num_wavenet_layers']}, hidden {overrides['hidden_size']}, "
        f"ffn {overrides['ffn_dim']}; checkpoint {f'built in {build_s:.0f} s' if build_s else 'reused'}",
        flush=True,
    )
    results = []
    for precision in cases:
        for mode in ("streaming", "naive"):
            r = run_case(ckpt, precision, mode, args.out)
            results.append(r)
            print(
                f"  {precision:5s} {mode:9s} baseline {r['baseline_rss_bytes'] / MIB:7.1f} MiB  "
                f"peak>base {r['peak_above_baseline_bytes'] / MIB:7.1f} MiB  "
                f"tracemalloc {r['tracemalloc_peak_bytes'] / MIB:7.1f} MiB  "
                f"write {r['write_seconds']:5.1f} s  (load+quantize {r['prep_seconds']:.1f} s, "
                f"HWM reset {'ok' if r['hwm_reset'] else 'unavailable'})",
                flush=True,
            )
    print()
    print(table(results))
    print()
    print(
        "baseline = VmRSS with model + quantized weights loaded (streaming / naive process); peak>base = "
        "VmHWM after writing - baseline (after malloc_trim), VmHWM reset via /proc/self/clear_refs "
        "before writing "
        "(* = reset unavailable: lower bound); tracemalloc = peak traced allocations during writing."
    )
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus, "
        f"total {time.perf_counter() - t_start:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps({"overrides": overrides, "results": results}, indent=2))


if __name__ == "__main__":
    main()
