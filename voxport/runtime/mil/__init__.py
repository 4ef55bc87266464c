"""Run Core ML ML Programs (`.mlpackage`) on any OS by interpreting their MIL in numpy.

`MLModel.predict` exists only on macOS; this package gives Linux CI a Core ML parity figure by
loading the saved package with coremltools' MIL proto reader and evaluating it op by op.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from voxport.runtime.mil.interpreter import KERNELS, MilInterpreter, supported_ops
from voxport.runtime.mil.loader import MilPackage, load_mlpackage

__all__ = ["KERNELS", "MilInterpreter", "MilPackage", "load_mlpackage", "run_mlpackage", "supported_ops"]


def run_mlpackage(path: str | Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Load and run an `.mlpackage` once (tests and quick checks; runners keep the interpreter)."""
    return MilInterpreter(load_mlpackage(path)).run(inputs)
