"""Read a saved `.mlpackage` back into a MIL program without Core ML itself.

An `.mlpackage` is a directory: `Manifest.json` names the root item (the model spec, a protobuf
`.mlmodel`), and the weights live in `Data/com.apple.CoreML/weights/weight.bin`. coremltools can
turn the spec's `mlProgram` back into its Python MIL objects on any OS (`milproto.load`), which
gives the op list, const values and types; only evaluation is missing, and that is the interpreter's
job. Reading the package from disk, rather than reusing the in-memory model that was converted,
means the test exercises exactly the bytes a device would load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxport.errors import BadInput

#: Core ML feature-description array types -> numpy dtypes
_ARRAY_DTYPES: dict[str, np.dtype[Any]] = {
    "FLOAT32": np.dtype(np.float32),
    "FLOAT16": np.dtype(np.float16),
    "DOUBLE": np.dtype(np.float64),
    "INT32": np.dtype(np.int32),
    "INT8": np.dtype(np.int8),
}


@dataclass
class MilPackage:
    """A loaded `.mlpackage`: the Python MIL program plus the declared I/O of the model spec."""

    path: Path
    spec: Any  # coremltools.proto.Model_pb2.Model
    program: Any  # coremltools.converters.mil.mil.Program
    input_dtypes: dict[str, np.dtype] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)

    @property
    def specification_version(self) -> int:
        return int(self.spec.specificationVersion)


def _model_paths(package: Path) -> tuple[Path, Path]:
    """(spec file, weights dir) named by the package's manifest."""
    manifest_path = package / "Manifest.json"
    if not manifest_path.is_file():
        raise BadInput(f"{package}: not an .mlpackage (no Manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["itemInfoEntries"]
        root = entries[manifest["rootModelIdentifier"]]
    except (ValueError, KeyError) as exc:
        raise BadInput(f"{manifest_path}: unreadable manifest ({exc})") from None
    data = package / "Data"
    spec_path = data / root["path"]
    weights = next(
        (data / e["path"] for e in entries.values() if e.get("name") == "weights"),
        spec_path.parent / "weights",
    )
    if not spec_path.is_file():
        raise BadInput(f"{package}: manifest names {root['path']} but it is missing")
    return spec_path, weights


def array_features(features: Any) -> tuple[dict[str, np.dtype], dict[str, tuple[int, ...]]]:
    """Declared numpy dtype and shape of each multi-array feature of a model description."""
    from coremltools.proto import FeatureTypes_pb2

    dtypes: dict[str, np.dtype] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for feature in features:
        if feature.type.WhichOneof("Type") != "multiArrayType":
            raise BadInput(f"input '{feature.name}': only multi-array inputs are supported")
        array = feature.type.multiArrayType
        kind = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        if kind not in _ARRAY_DTYPES:
            raise BadInput(f"input '{feature.name}': unsupported array type {kind}")
        dtypes[feature.name] = _ARRAY_DTYPES[kind]
        shapes[feature.name] = tuple(int(s) for s in array.shape)
    return dtypes, shapes


def load_mlpackage(path: Path | str) -> MilPackage:
    """Load `path` (an `.mlpackage` directory) into a `MilPackage`; BadInput if it is not one."""
    package = Path(path)
    spec_path, weights = _model_paths(package)
    from coremltools import proto
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec = proto.Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, which is not worth importing
        raise BadInput(f"{spec_path}: not a Core ML model spec ({exc})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise BadInput(
            f"{package}: only ML Program (mlprogram) models can be interpreted, not neural networks"
        )
    program = load_milproto(spec, spec.specificationVersion, str(weights))
    input_dtypes, input_shapes = array_features(spec.description.input)
    outputs = [o.name for o in spec.description.output]
    return MilPackage(package, spec, program, input_dtypes, input_shapes, outputs)
