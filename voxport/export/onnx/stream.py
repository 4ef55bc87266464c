"""ONNX from a `StreamSource`: graphs traced without weights, then every weight read, stored, written alone.

`exporter.export_onnx` needs the whole model as float32 torch modules plus its quantized weights in
memory (16 GB and more for Voxtral TTS's 4B parameters) and keeps every initializer in the proto. Here
memory holds one weight at a time:

1. each graph is traced over the source's weightless model (stride-0 placeholder parameters) with the
   parameters left out of the file (`trace_graph(..., weights=False)`): they stay graph inputs named
   `model.<weight name>`, and the proto holds no weight bytes;
2. the weights are visited in the source's order; each is read once (`source.read`), quantized with the
   same plan and method calls as the quantize stage (`plan_precisions` decisions, `quantize`), and
   stored in every graph that uses it by the same `_Rewriter` as the normal exporter, so the nodes and
   initializers are the ones `apply_stored_weights` writes; each new initializer's bytes go straight to
   the graph's `<file>.onnx.data` (ONNX external data) and leave memory;
3. a float weight larger than `row_chunk_bytes` as float32 (the 131,072-row text embedding table) is
   read and written in chunks of rows, so it never exists as one array.

Everything is written into a temporary directory beside the output and moved into place only after every
graph is complete and (by default) loads in ONNX Runtime: a failure leaves no finished-looking `.onnx`.
No parity check runs here (a reference model of this size does not fit beside the exporter): the check
loads each graph in ONNX Runtime in a child process, runs the graph's example inputs and compares the
output shapes with the torch graph's.
"""

from __future__ import annotations

import math
import os
import resource
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto

from voxport import __version__
from voxport.errors import BadInput, VoxportError
from voxport.export.onnx.weights import BLOCKED_DQ_OPSET, Stored, _Rewriter
from voxport.quantize.precisions import SPECS

if TYPE_CHECKING:
    from voxport.families.base import GraphSpec, StreamSource
    from voxport.quantize.methods import QuantMethod
    from voxport.quantize.plan import WeightDecision

#: a float weight above this many float32 bytes is read and written in chunks of rows (64 MB: the
#: 131,072 × 3,072 text table goes in 26 pieces instead of one 1.6 GB array)
ROW_CHUNK_BYTES = 64 << 20
#: initializers smaller than this stay inside the .onnx (ONNX's own default threshold for external data)
INLINE_BYTES = 1024
#: tensors of at least 1 MiB start at a page boundary of the data file, so a runtime can map them
PAGE = 4096
_PAGE_FROM = 1 << 20

#: called after each weight: (name, stored precision, seconds it took); progress and instrumentation
OnWeight = Callable[[str, str, float], None]


class StreamCheckFailed(VoxportError):
    """A streamed graph does not load in ONNX Runtime, or its outputs have other shapes than torch's."""


@dataclass
class StreamedGraph:
    """One written graph: its .onnx and external-data file, and the weights stored in it."""

    graph: str
    path: Path
    data_path: Path
    primary: bool
    stored: frozenset[str] = frozenset()

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size + self.data_path.stat().st_size


@dataclass
class StreamedOnnx:
    """What `stream_onnx` wrote, and what it measured on the way."""

    graphs: list[StreamedGraph]
    sidecars: dict[str, Path]
    #: weights of the source that no graph reads (not read, not written)
    unused: list[str]
    #: the ONNX Runtime check (None when skipped): per graph, output shapes; and the child's peak RSS
    check: dict[str, Any] | None = None
    #: stored precision -> number of weights
    precisions: dict[str, int] = field(default_factory=dict)


def file_name(stem: str, precision: str, graph: str, primary: bool) -> str:
    """The pipeline's artifact names (exporter._file_name), so a streamed voice opens like a built one."""
    from voxport.export.onnx.exporter import _file_name

    return _file_name(stem, precision, graph, primary)


class _GraphWriter:
    """One graph being written: its weightless proto, its rewriter, and its open external-data file."""

    def __init__(
        self, spec: GraphSpec, proto: onnx.ModelProto, directory: Path, name: str, fold: bool
    ) -> None:
        self.spec = spec
        self.proto = proto
        self.path = directory / name
        self.data_name = f"{name}.data"
        self.data: IO[bytes] = open(directory / self.data_name, "wb")  # noqa: SIM115 - closed by close()
        self.offset = 0
        self.rewriter = _Rewriter(proto, fold=fold)
        self.stored: set[str] = set()
        #: the torch graph's output shapes on the example inputs (for the ONNX Runtime check)
        self.output_shapes: dict[str, list[int]] = {}

    def begin(self, tensor: TensorProto, length: int) -> None:
        """Point `tensor` at the next (aligned) `length` bytes of the data file."""
        align = PAGE if length >= _PAGE_FROM else 64
        pad = -self.offset % align
        if pad:
            self.data.write(b"\0" * pad)
            self.offset += pad
        tensor.data_location = TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", self.data_name), ("offset", self.offset), ("length", length)):
            tensor.external_data.add(key=key, value=str(value))
        tensor.ClearField("raw_data")

    def write(self, chunk: bytes) -> None:
        self.data.write(chunk)
        self.offset += len(chunk)

    def store(self, name: str, value: Stored) -> None:
        """Store weight `name` through the rewriter and move the bytes of what it added to the data file.

        Each added initializer is *replaced* by a fresh header-only message rather than cleared: protobuf's
        upb runtime keeps a message's bytes in its arena until the message itself is freed
        (`ClearField("raw_data")` releases nothing), so cleared messages would hold every weight's bytes
        until the end, the whole model again."""
        added = self.rewriter.store(TensorProto(name=f"model.{name}"), value)
        inits = self.rewriter.new_inits
        first = len(inits) - len(added)
        for i, tensor in enumerate(added):
            raw = tensor.raw_data
            if len(raw) < INLINE_BYTES:  # shapes, tiny scales: kept inside the .onnx
                continue
            header = TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
            self.begin(header, len(raw))
            self.write(raw)
            inits[first + i] = header

    def close(self) -> None:
        if not self.data.closed:
            self.data.close()


def _float_chunks(
    read: Callable[[str, slice | None], Any], name: str, shape: tuple[int, ...], rows: int
) -> Iterator[np.ndarray]:
    for r0 in range(0, shape[0], rows):
        r1 = min(shape[0], r0 + rows)
        chunk = read(name, slice(r0, r1)).numpy()
        if tuple(chunk.shape) != (r1 - r0, *shape[1:]):
            raise VoxportError(f"{name}: rows {r0}:{r1} read as {tuple(chunk.shape)}")
        yield chunk


def _trace(spec: GraphSpec, opset: int) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    """The weightless trace, and the torch graph's output shapes on the example inputs, recorded by a
    hook during the trace's own forward pass (a second forward over placeholder weights costs as much:
    every Linear copies its stride-0 weight into a real one)."""
    from voxport.export.onnx.trace import trace_graph

    shapes: dict[str, list[int]] = {}

    def record(module: Any, args: Any, outputs: Any) -> None:
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        shapes.update({n: [int(d) for d in t.shape] for n, t in zip(spec.output_names, outputs, strict=True)})

    handle = spec.module.register_forward_hook(record)
    try:
        proto = trace_graph(spec, opset, weights=False)
    finally:
        handle.remove()
    return proto, shapes


def _weight_inputs(
    proto: onnx.ModelProto, spec: GraphSpec, shapes: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """The weight names this weightless graph reads (its `model.*` inputs), each checked against the
    source; any other input the user does not feed is a family bug, named here."""
    names = []
    for value in proto.graph.input:
        if value.name in spec.input_names:
            continue
        key = value.name.removeprefix("model.")
        if value.name == key or key not in shapes:
            raise VoxportError(
                f"graph '{spec.name}' reads '{value.name}', which is neither an input nor a weight of the "
                "stream source"
            )
        names.append(key)
    return names


def _finish(writer: _GraphWriter, opset: int, metadata: Mapping[str, str]) -> None:
    """Weight inputs become the stored initializers; opset, metadata; the proto checked and saved."""
    proto, spec = writer.proto, writer.spec
    inputs = [v for v in proto.graph.input if v.name in spec.input_names]
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    writer.rewriter.finish(set())
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, opset)
    props = {"graph": spec.name, "voxport_version": __version__, **spec.metadata, **metadata}
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=str(value))
    proto.producer_name = "voxport"
    proto.producer_version = __version__
    writer.close()
    writer.path.write_bytes(proto.SerializeToString())
    # by path: the checker then finds the external-data file beside it (it checks it exists, reads none)
    onnx.checker.check_model(str(writer.path))


def stream_onnx(
    source: StreamSource,
    out_dir: Path,
    *,
    stem: str,
    precision: str,
    decisions: Mapping[str, WeightDecision],
    method: QuantMethod,
    block_size: int = 32,
    opset: int = BLOCKED_DQ_OPSET,
    fold_dequantize: bool = False,
    metadata: Mapping[str, str] | None = None,
    check: bool = True,
    row_chunk_bytes: int = ROW_CHUNK_BYTES,
    on_weight: OnWeight | None = None,
) -> StreamedOnnx:
    """Write `source`'s graphs as `<stem>.<precision>[.<graph>].onnx` (+ `.onnx.data`) under `out_dir`.

    `decisions` (from `plan_precisions` over `source.shapes`) says each weight's stored precision;
    `method` chooses the integer codes (an uncalibrated one: there is no model to speak calibration
    text). `metadata` is added to every graph's metadata_props (family, precision, recipe, sample rate).
    `check`: load every graph in ONNX Runtime in a child process and run its example inputs (see the
    module docstring). `on_weight` is called once per weight written."""
    from voxport.quantize.methods import quantize

    blocked = [n for n, d in decisions.items() if SPECS[d.precision].blocked or d.int8_block_size]
    if blocked and opset < BLOCKED_DQ_OPSET:
        raise BadInput(
            f"int4 and int8 blocks need ONNX opset >= {BLOCKED_DQ_OPSET} (blocked DequantizeLinear), "
            f"asked for {opset}: use opset {BLOCKED_DQ_OPSET}"
        )
    if row_chunk_bytes < 1:
        raise ValueError("row_chunk_bytes must be positive")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".stream-{stem}.{precision}.tmp-{secrets.token_hex(4)}"
    work.mkdir()
    writers: list[_GraphWriter] = []
    try:
        specs = source.model.graphs()
        users: dict[str, list[_GraphWriter]] = {}
        for spec in specs:
            proto, shapes = _trace(spec, opset)
            writer = _GraphWriter(
                spec, proto, work, file_name(stem, precision, spec.name, spec.primary), fold_dequantize
            )
            writer.output_shapes = shapes
            writers.append(writer)
            for name in _weight_inputs(proto, spec, source.shapes):
                users.setdefault(name, []).append(writer)
        counts: dict[str, int] = {}
        for name, shape in source.shapes.items():
            if name not in users:
                continue
            started = time.perf_counter()
            decision = decisions[name]
            stored_as = decision.precision
            counts[stored_as] = counts.get(stored_as, 0) + 1

            def encode(values: np.ndarray, name: str = name, decision: WeightDecision = decision) -> Stored:
                try:
                    return quantize(
                        values,
                        decision.precision,
                        method=method,
                        block_size=block_size,
                        name=name,
                        int8_block_size=decision.int8_block_size,
                    )
                except ValueError as exc:
                    raise BadInput(f"quantize {name}: {exc}") from None

            row_bytes = 4 * math.prod(shape[1:])
            if not SPECS[stored_as].integer and len(shape) >= 1 and row_bytes * shape[0] > row_chunk_bytes:
                dtype = np.dtype(np.float16 if SPECS[stored_as].bits == 16 else np.float32)
                targets = []
                for writer in users[name]:
                    tensor = writer.rewriter.store_float(f"model.{name}", tuple(shape), dtype)
                    writer.begin(tensor, math.prod(shape) * dtype.itemsize)
                    targets.append(writer)
                rows = max(1, row_chunk_bytes // max(row_bytes, 1))
                for chunk in _float_chunks(source.read, name, tuple(shape), rows):
                    raw = np.asarray(encode(chunk), dtype=dtype.newbyteorder("<")).tobytes()
                    del chunk
                    for writer in targets:
                        writer.write(raw)
            else:
                values = source.read(name, None).numpy()
                if tuple(values.shape) != tuple(shape):
                    raise VoxportError(f"{name}: read with shape {tuple(values.shape)}, expected {shape}")
                value = encode(values)
                del values
                for writer in users[name]:
                    writer.store(name, value)
                del value
            for writer in users[name]:
                writer.stored.add(name)
            if on_weight is not None:
                on_weight(name, stored_as, time.perf_counter() - started)
        props = {"precision": precision, **(metadata or {})}
        for writer in writers:
            _finish(writer, opset, props)
        result_check = _check(writers, work) if check else None
        primary = next((w for w in writers if w.spec.primary), writers[0])
        sidecars = source.model.write_sidecars(primary.path)
        final = _move_into_place(work, out_dir, writers, sidecars)
        graphs = [
            StreamedGraph(
                graph=w.spec.name,
                path=out_dir / w.path.name,
                data_path=out_dir / w.data_name,
                primary=w is primary,
                stored=frozenset(w.stored),
            )
            for w in writers
        ]
        unused = [n for n in source.shapes if n not in users]
        return StreamedOnnx(graphs, final, unused, result_check, counts)
    finally:
        for writer in writers:
            writer.close()
        shutil.rmtree(work, ignore_errors=True)


def _move_into_place(
    work: Path, out_dir: Path, writers: Sequence[_GraphWriter], sidecars: Mapping[str, Path]
) -> dict[str, Path]:
    """Data files first, then sidecars, then the .onnx files: until the last rename no complete-looking
    graph exists, and each rename replaces an older file whole."""
    for writer in writers:
        os.replace(work / writer.data_name, out_dir / writer.data_name)
    moved = {}
    for role, path in sidecars.items():
        target = out_dir / path.name
        if path.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(path, target)
        moved[role] = target
    for writer in writers:
        os.replace(writer.path, out_dir / writer.path.name)
    return moved


# ----------------------------------------------------------------------------- ONNX Runtime load check
def _check(writers: Sequence[_GraphWriter], work: Path) -> dict[str, Any]:
    """Load each written graph in ONNX Runtime in a child process (its memory is not the converter's,
    and is returned when it exits), run the graph's example inputs, and compare output shapes with the
    torch graph's (recorded while tracing, `_trace`). A plain subprocess rather
    than multiprocessing: spawning re-imports the caller's __main__, which a library cannot require to
    be guarded."""
    import json
    import subprocess
    import sys

    import voxport

    jobs, arrays = [], {}
    for i, writer in enumerate(writers):
        spec, expected = writer.spec, writer.output_shapes
        for name, value in zip(spec.input_names, spec.example_inputs, strict=True):
            arrays[f"{i}/{name}"] = value.numpy()
        jobs.append(
            {"graph": spec.name, "path": str(writer.path), "inputs": spec.input_names, "expected": expected}
        )
    np.savez(work / "check-inputs.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
    (work / "check-jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    env = dict(os.environ)
    root = str(Path(voxport.__file__).resolve().parent.parent)  # this voxport, not another installed one
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxport.export.onnx.stream", str(work)], env=env, stderr=subprocess.PIPE
    )
    _, stderr = proc.communicate()
    result_file = work / "check-result.json"
    if proc.returncode != 0 or not result_file.is_file():
        last = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise StreamCheckFailed(f"the ONNX Runtime check process failed (exit {proc.returncode}): {last[0]}")
    report: dict[str, Any] = json.loads(result_file.read_text(encoding="utf-8"))
    bad = [f"{g}: {problem}" for g, info in report["graphs"].items() if (problem := info.get("problem"))]
    if bad:
        raise StreamCheckFailed("streamed ONNX check failed: " + "; ".join(bad))
    return report


def _load_and_run(work: Path) -> None:
    """In the child: one session at a time, dropped before the next graph loads; results as JSON."""
    import json

    from voxport.runtime.ort import ort_session

    jobs = json.loads((work / "check-jobs.json").read_text(encoding="utf-8"))
    arrays = np.load(work / "check-inputs.npz")
    graphs: dict[str, dict[str, Any]] = {}
    for i, job in enumerate(jobs):
        info: dict[str, Any] = {}
        feeds = {name: arrays[f"{i}/{name}"] for name in job["inputs"]}
        try:
            session = ort_session(Path(job["path"]))
            names = [o.name for o in session.get_outputs()]
            values = session.run(None, feeds)
            got = {n: list(v.shape) for n, v in zip(names, values, strict=True)}
            info["outputs"] = got
            expected = job["expected"]
            if got != expected:
                diff = [f"{n} {got.get(n)} (torch {s})" for n, s in expected.items() if got.get(n) != s]
                info["problem"] = "output shapes differ: " + ", ".join(diff[:3])
            elif not all(np.isfinite(v).all() for v in values if np.issubdtype(v.dtype, np.floating)):
                info["problem"] = "non-finite outputs on the example inputs"
            del session, values
        except BadInput as exc:
            info["problem"] = str(exc)
        graphs[job["graph"]] = info
    result = {"graphs": graphs, "peak_rss_bytes": _own_peak_rss()}
    (work / "check-result.json").write_text(json.dumps(result), encoding="utf-8")


def _own_peak_rss() -> int:
    """This process's peak resident set since it exec'd (/proc VmHWM). Not ru_maxrss: a child started by
    fork + exec inherits its parent's high-water mark there, so the check would report the converter's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


if __name__ == "__main__":
    import sys

    _load_and_run(Path(sys.argv[1]))
