"""Runners over exported Core ML `.mlpackage` graphs.

`CoremlRunner` interprets the saved MIL program in numpy, so it works on Linux CI where Core ML's
`predict` does not exist; `CoremlPredictRunner` asks Core ML itself and is only usable on macOS.
Both feed the family's synthesis loop exactly like the torch and ONNX Runtime runners.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from voxport.errors import BadInput
from voxport.validate.mil import MilInterpreter, load_mlpackage
from voxport.validate.mil.loader import array_features


def _to_declared(name: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast one input to the dtype the package declares (Core ML has no int64: ids become int32)."""
    value = np.asarray(value)
    if value.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if value.size and (value.min() < info.min or value.max() > info.max):
            raise BadInput(f"input '{name}': values outside the {dtype} range the Core ML model declares")
    return value.astype(dtype, copy=False)


def _from_coreml(value: np.ndarray) -> np.ndarray:
    """float32 for any floating output (fp16 programs included); integers and bools as they are."""
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.kind == "f" else value


class CoremlRunner:
    """Runs `.mlpackage` graphs with the numpy MIL interpreter: Core ML parity without a Mac."""

    name = "coreml-mil"

    def __init__(self, files: Mapping[str, Path | str], *, threads: int | None = 1) -> None:
        """`threads`: BLAS threads while interpreting (None leaves BLAS alone); one is fastest here."""
        self.interpreters = {
            graph: MilInterpreter(load_mlpackage(path), threads=threads) for graph, path in files.items()
        }
        self.graph_names = frozenset(self.interpreters)

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph not in self.interpreters:
            raise BadInput(f"no Core ML graph '{graph}' (have: {', '.join(self.interpreters)})")
        interpreter = self.interpreters[graph]
        declared = interpreter.package.input_dtypes
        feed = {
            name: _to_declared(name, inputs[name], declared.get(name, np.asarray(inputs[name]).dtype))
            for name in interpreter.input_names
            if name in inputs
        }
        outputs = interpreter.run(feed)
        names = interpreter.package.output_names or interpreter.output_names
        values = [outputs[v] for v in interpreter.output_names]
        return {n: _from_coreml(v) for n, v in zip(names, values, strict=True)}


class CoremlPredictRunner:
    """Runs `.mlpackage` graphs through Core ML itself (`MLModel.predict`); macOS only, untested on CI."""

    name = "coreml"

    def __init__(self, files: Mapping[str, Path | str]) -> None:
        if sys.platform != "darwin":
            raise BadInput("Core ML predict needs macOS; use CoremlRunner (the MIL interpreter) elsewhere")
        import coremltools as ct

        self.models = {graph: ct.models.MLModel(str(path)) for graph, path in files.items()}
        self.graph_names = frozenset(self.models)

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.models[graph]
        described = model.get_spec().description
        declared, _ = array_features(described.input)
        feed = {n: _to_declared(n, inputs[n], d) for n, d in declared.items() if n in inputs}
        outputs = model.predict(feed)
        return {o.name: _from_coreml(outputs[o.name]) for o in described.output}
