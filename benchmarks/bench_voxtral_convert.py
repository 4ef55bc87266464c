"""Voxtral TTS at full size (~4.0B parameters): convert a random BF16 checkpoint, measure time and peak RSS.

    .venv/bin/python benchmarks/bench_voxtral_convert.py [--work DIR] [--config full|tiny] [--seed 0]
        [--only KEY,...] [--keep] [--json FILE] [--write docs/benchmarks.md]

Why: issue 17's scale goal is that the released 4B shape converts on a machine like this one (2 cores,
24 GB): reading BF16 safetensors lazily, quantizing and writing one tensor at a time, with peak RSS
≤ 2 GB above the largest tensor and ≤ 0.5× the BF16 checkpoint, for every converter. No trained weights
are reachable, so the checkpoint is random (voxtral_tts/synthetic.py) in the real layout and shape; it is
generated once under `--work` (default: a temporary directory under /tmp, removed afterwards; with
`--work` it is kept and reused) and never committed.

Each conversion runs in a child process of its own, so its peak RSS is that child's alone
(`os.wait4`'s `ru_maxrss`), not this driver's; the child also reports `VmHWM` from /proc as a
cross-check. The generator's own wall time and peak are measured the same way. Outputs are deleted
after measuring unless `--keep` (the disk holds the 8 GB checkpoint; one output at a time beside it).

A converter is one entry in CONVERTERS: a key, a label and a function (checkpoint dir, output dir) →
details (output bytes, tensor types). Both run `voxport stream-export`'s own code at int4 with the
recipes' fp16 embedding tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from bench_fidelity import commit, write_section  # noqa: E402

BEGIN, END = "<!-- voxtral-convert-table:begin -->", "<!-- voxtral-convert-table:end -->"
SECTION = "## Voxtral TTS full-size conversion (benchmarks/bench_voxtral_convert.py)"
GB = 1e9
#: the issue's goals: peak ≤ largest tensor + 2 GB, and ≤ half the BF16 checkpoint
HEADROOM_BYTES = 2 * 10**9
CHECKPOINT_SHARE = 0.5


# ------------------------------------------------------------------------------------------ converters
#: the two embedding tables (a row gather: not quantized by the family's plan) stored fp16, as every
#: Voxtral recipe does: fp32 would make the 131,072 × 3,072 text table alone 1.6 GB of the output
OVERRIDES = {"mm_audio_embeddings.*": "fp16"}


def streamed(
    checkpoint: Path, out: Path, fmt: str, gguf_types: dict[str, str] | None = None
) -> dict[str, Any]:
    """`voxport stream-export`'s own path (`voxport.export.stream.stream_export` over the family's
    `stream_source`) at int4 with the recipes' fp16 tables; no load check, so the child's peak is the
    conversion's alone (the check runs ONNX Runtime in a process of its own)."""
    from voxport.export.stream import stream_export
    from voxport.families.registry import families

    started = time.perf_counter()
    done = [0]

    def progress(name: str, stored: str, seconds: float) -> None:
        done[0] += 1
        if done[0] % 25 == 0:
            log(f"  {fmt}: {done[0]} weights, {time.perf_counter() - started:.0f} s ({name})")

    source = families()["voxtral_tts"].stream_source(checkpoint, trust_pickle=True)
    result = stream_export(
        source,
        [fmt],
        "int4",
        out,
        stem="voxtral",
        overrides=OVERRIDES,
        check=False,
        on_weight=progress,
        gguf_types=gguf_types,
    )
    return {
        "output_bytes": sum(f.bytes for f in result.files),
        "files": {f.role: f.path.name for f in result.files},
        "tensor_types": result.precisions.get(fmt, {}),
    }


def convert_gguf_q4k(checkpoint: Path, out: Path) -> dict[str, Any]:
    """GGUF with every quantizable matrix in Q4_K (rows the 256-block does not fit fall back as in every
    voxport GGUF), vectors F32, convs F16: llama.cpp's `llama` backbone + voxport's audio file."""
    return streamed(checkpoint, out, "gguf", {"*": "Q4_K"})


def convert_onnx_int4(checkpoint: Path, out: Path) -> dict[str, Any]:
    """ONNX: blocked int4 DequantizeLinear (blocks of 32, fp16 scales), weights in external data."""
    return streamed(checkpoint, out, "onnx")


@dataclass(frozen=True)
class Converter:
    key: str
    label: str
    run: Callable[[Path, Path], dict[str, Any]]


#: every converter measured, in table order; another format is one more entry
CONVERTERS: list[Converter] = [
    Converter("gguf-q4k", "GGUF Q4_K (voxport stream-export)", convert_gguf_q4k),
    Converter("onnx-int4", "ONNX int4 (voxport stream-export)", convert_onnx_int4),
]


# -------------------------------------------------------------------------------------- child process
def vm_hwm() -> int | None:
    """This process's peak resident set (bytes) from /proc/self/status, None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child(args: argparse.Namespace) -> int:
    """Run one job (a converter, or the checkpoint generator) and write its result JSON."""
    started = time.perf_counter()
    if args.child == "generate":
        from voxport.families.voxtral_tts.synthetic import make_checkpoint

        make_checkpoint(args.checkpoint, args.config, seed=args.seed)
        details: dict[str, Any] = {}
    else:
        conv = {c.key: c for c in CONVERTERS}[args.child]
        details = conv.run(args.checkpoint, args.out)
    details["seconds_inside"] = time.perf_counter() - started
    details["vm_hwm"] = vm_hwm()
    args.result.write_text(json.dumps(details), encoding="utf-8")
    return 0


@dataclass
class Measured:
    """One child process: wall time (s), peak RSS (bytes, from wait4), and what it reported."""

    key: str
    label: str
    seconds: float
    peak_rss: int
    details: dict[str, Any] = field(default_factory=dict)


def run_child(key: str, label: str, argv: list[str], result: Path) -> Measured:
    """Start this script as a child for one job; wall time and its own peak RSS (ru_maxrss, KiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--result", str(result)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{label}: the child process failed (exit {proc.returncode})")
    details = json.loads(result.read_text(encoding="utf-8"))
    return Measured(key, label, seconds, int(usage.ru_maxrss) * 1024, details)


# --------------------------------------------------------------------------------------------- driver
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


@dataclass
class Checkpoint:
    path: str
    config: str
    parameters: int
    bytes: int
    largest_name: str
    largest_bytes: int
    generated: Measured | None


def describe_checkpoint(path: Path, config: str, generated: Measured | None) -> Checkpoint:
    from voxport.families.voxtral_tts.consolidated import LazyCheckpoint
    from voxport.families.voxtral_tts.synthetic import WEIGHTS

    with LazyCheckpoint(path / WEIGHTS) as ck:
        largest = ck.largest
        params = sum(t.numel for t in ck.entries.values())
        size = (path / WEIGHTS).stat().st_size
    return Checkpoint(str(path), config, params, size, largest.name, largest.nbytes, generated)


def ensure_checkpoint(work: Path, config: str, seed: int) -> tuple[Path, Measured | None]:
    """The checkpoint under `work`, generated (in a child, measured) unless it is already there with the
    same params.json (the weights file is written atomically: present means complete)."""
    from voxport.families.voxtral_tts.config import NAMED_PARAMS
    from voxport.families.voxtral_tts.synthetic import PARAMS, WEIGHTS

    ckpt = work / f"voxtral-{config}-seed{seed}"
    params = ckpt / PARAMS
    same = params.is_file() and json.loads(params.read_text(encoding="utf-8")) == NAMED_PARAMS[config]
    if same and (ckpt / WEIGHTS).is_file():
        log(f"reusing {ckpt}")
        return ckpt, None
    log(f"generating the {config} checkpoint in {ckpt}")
    measured = run_child(
        "generate",
        "random checkpoint (BF16, streamed)",
        ["--child", "generate", "--checkpoint", str(ckpt), "--config", config, "--seed", str(seed)],
        work / "generate.json",
    )
    log(f"generated in {measured.seconds:.0f} s, peak RSS {measured.peak_rss / GB:.2f} GB")
    return ckpt, measured


def goals(m: Measured, ck: Checkpoint) -> tuple[bool, bool]:
    return m.peak_rss <= ck.largest_bytes + HEADROOM_BYTES, m.peak_rss <= CHECKPOINT_SHARE * ck.bytes


def table(rows: Sequence[Measured], ck: Checkpoint) -> list[str]:
    lines = [
        "| conversion | wall s | peak RSS GB | output GB | peak ≤ largest + 2 GB | peak ≤ 0.5× checkpoint |",
        "|---|---:|---:|---:|:-:|:-:|",
    ]
    for m in rows:
        a, b = goals(m, ck)
        out = m.details.get("output_bytes")
        lines.append(
            f"| {m.label} | {m.seconds:.0f} | {m.peak_rss / GB:.2f} | "
            f"{'—' if out is None else f'{out / GB:.2f}'} | {'pass' if a else 'FAIL'} | "
            f"{'pass' if b else 'FAIL'} |"
        )
    return lines


def report(
    ck: Checkpoint, rows: Sequence[Measured], argv: Sequence[str], stamp: str, loads: Sequence[str]
) -> list[str]:
    cpus = os.cpu_count() or 0
    gen = ck.generated
    gen_line = (
        f"Generating it (streamed, one BF16 tensor at a time) took {gen.seconds:.0f} s at "
        f"{gen.peak_rss / GB:.2f} GB peak RSS."
        if gen
        else "The checkpoint was reused from an earlier run (not regenerated)."
    )
    types = "; ".join(
        f"{m.label}: " + ", ".join(f"{n} {t}" for t, n in sorted(m.details.get("tensor_types", {}).items()))
        for m in rows
        if m.details.get("tensor_types")
    )
    return [
        f"A random-weight Voxtral TTS checkpoint of the released shape (`{ck.config}`: "
        f"{ck.parameters / 1e9:.2f}B parameters), `consolidated.safetensors` in BF16: "
        f"{ck.bytes / GB:.2f} GB; largest tensor `{ck.largest_name}`, {ck.largest_bytes / GB:.2f} GB. "
        f"{gen_line}",
        "",
        *table(rows, ck),
        "",
        "Each conversion runs alone in a child process; peak RSS is that process's `ru_maxrss` (os.wait4), "
        "wall time includes Python start-up and imports. Goals (issue 17): peak ≤ largest tensor + 2 GB "
        f"(= {(ck.largest_bytes + HEADROOM_BYTES) / GB:.2f} GB) and ≤ 0.5× the BF16 checkpoint "
        f"(= {CHECKPOINT_SHARE * ck.bytes / GB:.2f} GB). Tensor types: {types or 'n/a'}.",
        "",
        f"Generated by `{shlex.join(['benchmarks/bench_voxtral_convert.py', *argv])}` at commit {stamp}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpus} CPUs "
        f"({platform.processor() or platform.machine()}), load average (1/5/15 min) {loads[0]} at the start, "
        f"{loads[1]} at the end.",
    ]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch directory for the checkpoint (kept and reused)")
    parser.add_argument("--config", default="full", choices=("full", "tiny"), help="checkpoint shape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="comma-separated converter keys (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the converted files under --work")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--write", type=Path, help="markdown file whose section to replace")
    # child-process mode (internal)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        return child(args)
    keys = [c.key for c in CONVERTERS]
    wanted = keys if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(wanted) - set(keys))
    if unknown:
        raise SystemExit(f"--only: unknown converter(s) {', '.join(unknown)} (known: {', '.join(keys)})")
    stamp = commit()
    load_start = load_average()
    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="voxtral-convert-", dir="/tmp")) if temporary else args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        ckpt, generated = ensure_checkpoint(work, args.config, args.seed)
        ck = describe_checkpoint(ckpt, args.config, generated)
        rows: list[Measured] = []
        for conv in (c for c in CONVERTERS if c.key in wanted):
            out = work / f"out-{conv.key}"
            shutil.rmtree(out, ignore_errors=True)
            free = shutil.disk_usage(work).free
            log(f"{conv.label}: converting ({free / GB:.1f} GB free on {work})")
            m = run_child(
                conv.key,
                conv.label,
                ["--child", conv.key, "--checkpoint", str(ckpt), "--out", str(out)],
                work / f"{conv.key}.json",
            )
            log(f"{conv.label}: {m.seconds:.0f} s, peak RSS {m.peak_rss / GB:.2f} GB")
            rows.append(m)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        lines = report(ck, rows, argv, stamp, [load_start, load_average()])
        print("\n".join(lines))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "checkpoint": asdict(ck),
                "rows": [asdict(m) for m in rows],
                "argv": argv,
                "commit": stamp,
            }
            args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        if args.write:
            write_section(args.write, lines, begin=BEGIN, end=END, section=SECTION)
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
