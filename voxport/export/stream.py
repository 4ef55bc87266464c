"""Streaming export: a checkpoint too large to load converted to artifacts one weight at a time.

`voxport build` loads the model as float32 torch modules, quantizes every weight and traces graphs with
real weights: for Voxtral TTS's 4.0B parameters that is 16 GB before the exporter starts. A family whose
checkpoints outgrow memory gives a `StreamSource` instead (`Family.stream_source`: weightless graphs and a
reader of one weight at a time), and `stream_export` writes each requested format from it with memory
bounded by about one weight: the precision plan is the quantize stage's (`plan_precisions` over the
source's shapes and the model's `quantizable()`), each weight is read once, quantized by the same method
calls and written before the next is read.

What runs, and what does not: no parity check (a float32 reference of this size does not fit beside the
exporter); each format's writer checks its own files (ONNX: every graph loads in ONNX Runtime in a child
process and runs its example inputs with the torch graph's output shapes; GGUF: no check yet).

Formats are entries of `STREAMERS` (format name -> writer over a `StreamJob`): ONNX
(`voxport.export.onnx.stream`) and GGUF (`voxport.export.gguf.stream`'s layout writer over the source's
reader, which needs the family's `gguf_layout()`).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxport.errors import BadInput
from voxport.progress import NullProgress, Progress
from voxport.quantize.precisions import PRECISIONS

#: seconds between progress lines while weights are written (a bar advances on every weight)
LOG_EVERY = 30.0

if TYPE_CHECKING:
    from voxport.families.base import StreamSource
    from voxport.quantize.methods import QuantMethod
    from voxport.quantize.plan import WeightDecision


@dataclass(frozen=True)
class StreamedFile:
    """One file written: its format, what it holds (a graph name, a sidecar role, ...), path and size."""

    format: str
    role: str
    path: Path
    bytes: int


@dataclass(frozen=True)
class StreamJob:
    """Everything a format's streaming writer gets: the source, the plan and where to write."""

    source: StreamSource
    precision: str
    decisions: Mapping[str, WeightDecision]
    method: QuantMethod
    block_size: int
    out_dir: Path
    stem: str
    opset: int
    check: bool
    progress: Progress
    on_weight: Callable[[str, str, float], None] | None
    #: float weights above this many float32 bytes are read in row chunks (None: the format's default)
    row_chunk_bytes: int | None = None
    #: GGUF: globs → GGML types over the decisions' own (a recipe's `export.gguf.types`, e.g. Q4_K)
    gguf_types: Mapping[str, str] | None = None


@dataclass
class FormatResult:
    files: list[StreamedFile]
    #: what the format's own check measured (ONNX: output shapes per graph, the check's peak RSS)
    check: dict[str, Any] | None = None
    #: stored precision -> weights written
    precisions: dict[str, int] = field(default_factory=dict)


@dataclass
class StreamReport:
    """What `stream_export` wrote and measured: files, wall time, this process's peak RSS."""

    family: str
    precision: str
    method: str
    files: list[StreamedFile]
    seconds: float
    #: ru_maxrss of this process when the export returned: its peak over its whole life so far
    peak_rss_bytes: int
    checkpoint_bytes: int
    largest_tensor_bytes: int
    weights: int
    checks: dict[str, Any] = field(default_factory=dict)
    precisions: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "precision": self.precision,
            "method": self.method,
            "files": [
                {"format": f.format, "role": f.role, "path": str(f.path), "bytes": f.bytes}
                for f in self.files
            ],
            "seconds": round(self.seconds, 2),
            "peak_rss_bytes": self.peak_rss_bytes,
            "checkpoint_bytes": self.checkpoint_bytes,
            "largest_tensor_bytes": self.largest_tensor_bytes,
            "weights": self.weights,
            "stored_precisions": self.precisions,
            "checks": self.checks,
            "parity": "not run: no reference model is loaded when streaming",
        }


def _onnx(job: StreamJob) -> FormatResult:
    from voxport.export.onnx.stream import ROW_CHUNK_BYTES, stream_onnx

    written = stream_onnx(
        job.source,
        job.out_dir / "onnx",
        stem=job.stem,
        precision=job.precision,
        decisions=job.decisions,
        method=job.method,
        block_size=job.block_size,
        opset=job.opset,
        metadata={"family": job.source.model.family, "sample_rate": str(job.source.model.sample_rate)},
        check=job.check,
        on_weight=job.on_weight,
        row_chunk_bytes=job.row_chunk_bytes or ROW_CHUNK_BYTES,
    )
    files = []
    for g in written.graphs:
        files.append(StreamedFile("onnx", g.graph, g.path, g.path.stat().st_size))
        files.append(StreamedFile("onnx", f"{g.graph} data", g.data_path, g.data_path.stat().st_size))
    files += [StreamedFile("onnx", role, p, p.stat().st_size) for role, p in written.sidecars.items()]
    return FormatResult(files, written.check, written.precisions)


#: GGML type of a quantizable weight per stored precision: the GGUF format's natural types (fp32→F32,
#: fp16→F16, int8→Q8_0, int4→Q4_0, export/gguf/adapter.py); other tensors follow the layout's rules
GGUF_TYPES: dict[str, str] = {"fp32": "F32", "fp16": "F16", "int8": "Q8_0", "int4": "Q4_0"}


def _gguf(job: StreamJob) -> FormatResult:
    """The family's GGUF layout written by export/gguf/stream.py from the source's reader. GGML types
    quantize rows on their own, so that writer takes each weight's type from its precision decision
    (GGUF_TYPES) instead of the plan's QuantizedTensors; float weights decided fp16 are stored F16."""
    from voxport import __version__
    from voxport.export.gguf.stream import LazyWeights, write_layout_stream

    model, read = job.source.model, job.source.read
    layout = model.gguf_layout()
    if layout is None:
        raise BadInput(f"gguf: the {model.family} family has no GGUF layout to stream; use --format onnx")
    done: set[str] = set()

    def load(name: str, rows: tuple[int, int] | None = None) -> Any:
        return read(name, None if rows is None else slice(*rows)).numpy()

    def each(gguf_name: str, plan: Any) -> None:
        if job.on_weight is not None and plan.source in job.source.shapes and plan.source not in done:
            done.add(plan.source)
            job.on_weight(plan.source, plan.ggml_type.name, 0.0)

    # each weight's type from its own decision, so a recipe's mix (int8 head, fp16 codec) holds here too
    quantizable = model.quantizable()
    types = {n: GGUF_TYPES[d.precision] for n, d in job.decisions.items() if n in quantizable}
    types.update(job.gguf_types or {})
    float16 = {n for n, d in job.decisions.items() if d.precision == "fp16"}
    written = write_layout_stream(
        layout,
        LazyWeights(job.source.shapes, load, quantizable, float16),
        job.out_dir / "gguf",
        stem=f"{job.stem}.{job.precision}",
        general={"general.name": job.stem, "general.quantized_by": f"voxport {__version__}"},
        types=types,
        precision=job.precision,
        method=job.method.name,
        on_tensor=each,
    )
    files = [StreamedFile("gguf", role, p, written.bytes[role]) for role, p in written.paths.items()]
    return FormatResult(files, None, dict(written.tensor_types))


#: format name -> streaming writer over a `StreamJob`; another format is one more entry
STREAMERS: dict[str, Callable[[StreamJob], FormatResult]] = {"onnx": _onnx, "gguf": _gguf}


class _Ticker:
    """The per-weight callback of one format: the bar moves on every weight, a CI log (LineProgress,
    which prints only when a task ends) gets a line every LOG_EVERY seconds, then the caller's own."""

    def __init__(
        self,
        description: str,
        total: int,
        progress: Progress,
        advance: Callable[[int], None],
        then: Callable[[str, str, float], None] | None,
    ) -> None:
        self.description, self.total, self.progress, self.advance, self.then = (
            description,
            total,
            progress,
            advance,
            then,
        )
        self.done = 0
        self.last = time.perf_counter()

    def __call__(self, name: str, stored: str, seconds: float) -> None:
        self.done += 1
        self.advance(1)
        if time.perf_counter() - self.last >= LOG_EVERY:
            self.last = time.perf_counter()
            self.progress.log(f"{self.description} {self.done}/{self.total} ({name})")
        if self.then is not None:
            self.then(name, stored, seconds)


def plan(source: StreamSource, precision: str, **options: Any) -> dict[str, WeightDecision]:
    """The quantize stage's precision plan over the source's shapes (no weight is read)."""
    from voxport.quantize.plan import plan_precisions

    try:
        return plan_precisions(dict(source.shapes), source.model.quantizable(), precision, **options)
    except ValueError as exc:
        raise BadInput(f"quantize: {exc}") from None


def stream_export(
    source: StreamSource,
    formats: Sequence[str],
    precision: str,
    out_dir: Path,
    *,
    stem: str = "model",
    method: str | QuantMethod = "rtn",
    block_size: int = 32,
    overrides: Mapping[str, str] | None = None,
    int8_block_size: int | None = None,
    opset: int = 21,
    check: bool = True,
    progress: Progress | None = None,
    on_weight: Callable[[str, str, float], None] | None = None,
    row_chunk_bytes: int | None = None,
    gguf_types: Mapping[str, str] | None = None,
) -> StreamReport:
    """Write `formats` (e.g. ["onnx"]) of `source` at `precision` (fp32, fp16, int8, int4) under
    `out_dir/<format>/` as `<stem>.<precision>...`, one weight in memory at a time.

    `method`, `block_size`, `overrides` (glob -> precision) and `int8_block_size` mean what they mean in
    a recipe's `quantize:` section; the method must be uncalibrated (rtn, mse): a calibrated one needs
    the model to speak. `check`: each format checks its own files (see the module docstring); no parity
    is measured. `on_weight(name, stored precision, seconds)` is called after each weight of each format.
    `row_chunk_bytes`: float weights larger than this (as float32) are read and written in chunks of rows
    (default: the format's own, 64 MB for ONNX). `gguf_types`: a recipe's `export.gguf.types` for this
    precision (globs → GGML types such as Q4_K, the last match winning over each weight's own type)."""
    from voxport.quantize.methods import QuantMethod, get_method

    if precision not in PRECISIONS:
        raise BadInput(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    unknown = [f for f in formats if f not in STREAMERS]
    if unknown or not formats:
        raise BadInput(
            f"streaming export writes {', '.join(sorted(STREAMERS))}; "
            f"got {', '.join(unknown) if unknown else 'no format'}"
        )
    try:
        chosen = method if isinstance(method, QuantMethod) else get_method(method)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if chosen.calibrated:
        raise BadInput(
            f"method {chosen.name!r} is calibrated (it records the model speaking), which a streamed model "
            "cannot do; use rtn or mse"
        )
    decisions = plan(
        source,
        precision,
        overrides=dict(overrides or {}),
        block_size=block_size,
        int8_block_size=int8_block_size,
    )
    progress = progress if progress is not None else NullProgress()
    started = time.perf_counter()
    report = StreamReport(
        family=source.model.family,
        precision=precision,
        method=chosen.name,
        files=[],
        seconds=0.0,
        peak_rss_bytes=0,
        checkpoint_bytes=source.checkpoint_bytes,
        largest_tensor_bytes=source.largest_tensor_bytes,
        weights=len(source.shapes),
    )
    for fmt in dict.fromkeys(formats):
        description = f"{fmt} {precision}: weights"
        with progress.task(description, total=len(source.shapes)) as advance:
            ticker = _Ticker(description, len(source.shapes), progress, advance, on_weight)
            job = StreamJob(
                source,
                precision,
                decisions,
                chosen,
                block_size,
                out_dir,
                stem,
                opset,
                check,
                progress,
                ticker,
                row_chunk_bytes,
                gguf_types,
            )
            result = STREAMERS[fmt](job)
        report.files += result.files
        report.precisions[fmt] = result.precisions
        if result.check is not None:
            report.checks[fmt] = result.check
    report.seconds = time.perf_counter() - started
    report.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return report
