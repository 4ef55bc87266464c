"""The ONNX Runtime runner: exported ONNX graphs, one session per graph."""

from __future__ import annotations

from collections.abc import Mapping
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
