"""The ONNX Runtime runner: exported ONNX graphs, one session per graph."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxport.errors import BadInput


def ort_session(path: Path, *, threads: int = 1) -> Any:  # onnxruntime ships no type stubs
    """An ONNX Runtime session with deterministic, single-threaded defaults.

    One intra-op thread: on a 2-core shared machine two threads were slower and erratic."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for corrupt models
        raise BadInput(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None


def graph_metadata(session: Any, path: Path, graph: str, what: str = "") -> dict[str, str]:
    """The metadata of the voxport graph `session` runs, or BadInput when it is not `graph`: a voice is
    spoken through its primary file, and a user handing `say` a split graph gets told which file that is."""
    meta: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("graph") != graph:
        raise BadInput(
            f"{path}: a '{meta.get('graph')}' graph; speak with the primary <name>.<precision>.onnx{what}"
        )
    return meta


def sibling_graphs(primary: Path, graphs: Sequence[str]) -> dict[str, Path]:
    """`<base>.<graph>.onnx` beside a split artifact's primary `<base>.onnx` for each of `graphs`, or
    BadInput naming the first one missing: the files an artifact voice opens together."""
    base = primary.name[: -len(".onnx")]
    found = {}
    for graph in graphs:
        sibling = primary.with_name(f"{base}.{graph}.onnx")
        if not sibling.is_file():
            raise BadInput(f"{primary}: the {graph} graph is missing beside it (expected {sibling.name})")
        found[graph] = sibling
    return found


class OrtRunner:
    """Runs exported ONNX graphs in ONNX Runtime, one session per graph."""

    name = "onnxruntime"

    def __init__(self, files: Mapping[str, Path], *, threads: int = 1) -> None:
        self.sessions = {graph: ort_session(path, threads=threads) for graph, path in files.items()}
        self.graph_names = frozenset(self.sessions)

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[graph]
        feed = {i.name: inputs[i.name] for i in session.get_inputs() if i.name in inputs}
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feed), strict=True))


#: ONNX metadata key a graph sets to JSON {output: input} when the output may be written into the
#: input's own buffer (e.g. a KV cache updated by ScatterElements, which ORT then does in place)
INPLACE_KEY = "voxport_inplace"


class OrtBindingRunner(OrtRunner):
    """`OrtRunner` with I/O binding for graphs that declare in-place outputs (`voxport_inplace`).

    Such an output is bound to its input's own buffer: ONNX Runtime's scatter then writes only the new
    rows into the caller's array, and neither the state nor a copy of it crosses back into Python.
    The returned value for that output is the (updated) input array itself, so the caller must own
    it (the Pocket TTS loop allocates its KV cache per call). Graphs without the key run as in
    `OrtRunner`, so this runner is a drop-in `Runner`."""

    def __init__(self, files: Mapping[str, Path], *, threads: int = 1) -> None:
        super().__init__(files, threads=threads)
        self.inplace: dict[str, dict[str, str]] = {}
        for graph, session in self.sessions.items():
            declared = session.get_modelmeta().custom_metadata_map.get(INPLACE_KEY)
            if declared:
                self.inplace[graph] = json.loads(declared)

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = self.inplace.get(graph)
        if not pairs:
            return super().run(graph, inputs)
        import onnxruntime as ort

        session = self.sessions[graph]
        binding = session.io_binding()
        owned: dict[str, tuple[np.ndarray, Any]] = {}
        targets = set(pairs.values())
        for node in session.get_inputs():
            if node.name not in inputs:
                continue
            array = np.ascontiguousarray(inputs[node.name])
            if node.name in targets:
                # the graph writes into this buffer: never a read-only one, nor one bound twice
                if not array.flags.writeable or any(np.may_share_memory(array, a) for a, _ in owned.values()):
                    array = array.copy()
                value = ort.OrtValue.ortvalue_from_numpy(array)  # shares the array's memory
                binding.bind_ortvalue_input(node.name, value)
                owned[node.name] = (array, value)
            else:
                binding.bind_cpu_input(node.name, array)
        names = [o.name for o in session.get_outputs()]
        for name in names:
            if pairs.get(name) in owned:
                binding.bind_ortvalue_output(name, owned[pairs[name]][1])
            else:
                binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return {
            name: owned[pairs[name]][0] if pairs.get(name) in owned else value.numpy()
            for name, value in zip(names, values, strict=True)
        }
