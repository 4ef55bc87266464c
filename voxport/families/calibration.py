"""Recording what each quantizable weight sees while a model speaks (the calibration hook's default).

Placeholder until the calibrated-quantization work package lands: it names the contract only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voxport.families.base import CalibrationSet, FamilyModel, WeightInputs


def record(model: FamilyModel, batch: CalibrationSet, names: Sequence[str]) -> Iterator[WeightInputs]:
    """Not yet implemented (issue 13, WP-C)."""
    raise NotImplementedError("calibration recording lands with the quantization-methods registry")
