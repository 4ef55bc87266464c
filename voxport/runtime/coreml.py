"""Runners over exported Core ML `.mlpackage` graphs.

`CoremlRunner` interprets the saved MIL program in numpy, so it works on Linux CI where Core ML's
`predict` does not exist; `CoremlPredictRunner` asks Core ML itself and is only usable on macOS.
Both feed the family's synthesis loop exactly like the torch and ONNX Runtime runners.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxport.errors import BadInput
from voxport.runtime.mil import MilInterpreter, load_mlpackage
from voxport.runtime.mil.loader import array_features


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


def spec_input_shapes(features: Any) -> dict[str, tuple[int | None, ...]]:
    """Input shapes from a model spec's feature descriptions, None for an axis that a range or the
    enumerated shapes leave open (the predict runner's `input_shapes`; readable on Linux too)."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for feature in features:
        array = feature.type.multiArrayType
        open_axes = [False] * len(array.shape)
        if array.shapeRange.sizeRanges:
            open_axes = [r.lowerBound != r.upperBound for r in array.shapeRange.sizeRanges]
        if array.enumeratedShapes.shapes:
            sizes = {tuple(s.shape) for s in array.enumeratedShapes.shapes}
            open_axes = [len({s[i] for s in sizes}) > 1 for i in range(len(array.shape))]
        shapes[feature.name] = tuple(
            None if flexible else int(d) for d, flexible in zip(array.shape, open_axes, strict=True)
        )
    return shapes


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

    def input_shapes(self, graph: str) -> dict[str, tuple[int | None, ...]]:
        """Declared input shapes (None for a flexible axis): a loop sizes fixed state buffers from
        them, e.g. the KV capacity of a fixed-cache backbone (`pocket_tts.loop.run_backbone`)."""
        if graph not in self.interpreters:
            raise BadInput(f"no Core ML graph '{graph}' (have: {', '.join(self.interpreters)})")
        inputs = self.interpreters[graph].function.inputs
        return {
            name: tuple(int(d) if isinstance(d, int | np.integer) else None for d in var.shape)
            for name, var in inputs.items()
        }


class CoremlPredictRunner:
    """Runs `.mlpackage` graphs through Core ML itself (`MLModel.predict`); macOS only, untested on CI."""

    name = "coreml"

    def __init__(self, files: Mapping[str, Path | str]) -> None:
        if sys.platform != "darwin":
            raise BadInput("Core ML predict needs macOS; use CoremlRunner (the MIL interpreter) elsewhere")
        import coremltools as ct

        self.models: dict[str, Any] = {graph: ct.models.MLModel(str(path)) for graph, path in files.items()}
        self.graph_names = frozenset(self.models)

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.models[graph]
        described = model.get_spec().description
        declared, _ = array_features(described.input)
        feed = {n: _to_declared(n, inputs[n], d) for n, d in declared.items() if n in inputs}
        outputs = model.predict(feed)
        return {o.name: _from_coreml(outputs[o.name]) for o in described.output}

    def input_shapes(self, graph: str) -> dict[str, tuple[int | None, ...]]:
        """Declared input shapes; a flexible axis (range or enumerated) is None."""
        return spec_input_shapes(self.models[graph].get_spec().description.input)


def package_metadata(path: Path) -> dict[str, str]:
    """A package's `user_defined_metadata` (family, graph, precision, the loop's numbers), read from its
    spec alone: no Core ML runtime needed, so any platform can tell what a package is."""
    from coremltools import proto

    from voxport.runtime.mil.loader import _model_paths

    spec_path, _ = _model_paths(Path(path))
    spec = proto.Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, which is not worth importing
        raise BadInput(f"{spec_path}: not a Core ML model spec ({exc})") from None
    return dict(spec.description.metadata.userDefined)


def sibling_packages(path: Path, graphs: Sequence[str]) -> dict[str, Path]:
    """The packages of one artifact, named `<stem>.<precision>.<graph>.mlpackage` as the Core ML export
    writes them, found from any one of them; BadInput naming the first one missing."""
    meta = package_metadata(path)
    graph = meta.get("graph", "")
    if not graph or not path.name.endswith(f".{graph}.mlpackage"):
        raise BadInput(f"{path}: not a Core ML package voxport exported (no graph in its metadata)")
    base = path.name[: -len(f".{graph}.mlpackage")]
    files = {g: path.with_name(f"{base}.{g}.mlpackage") for g in graphs}
    for g, file in files.items():
        if not file.is_dir():
            raise BadInput(f"{path}: the {g} graph is missing beside it (expected {file.name})")
    return files


def predict_runner(files: Mapping[str, Path]) -> CoremlPredictRunner:
    """Core ML itself, the runtime an app ships: macOS only (BadInput elsewhere, saying what to use)."""
    if sys.platform != "darwin":
        raise BadInput(
            "Core ML packages speak through Core ML itself (MLModel.predict), which only macOS has; "
            "here, speak with the .onnx artifact of the same build"
        )
    return CoremlPredictRunner(files)
