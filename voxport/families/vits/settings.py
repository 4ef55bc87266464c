"""VITS's synthesis settings: prior noise, duration noise (Piper's noise_w), pace and speaker."""

from __future__ import annotations

from typing import Annotated, ClassVar, Self

from pydantic import AfterValidator

from voxport.errors import BadInput
from voxport.families.settings import (
    MAX_LENGTH_SCALE,
    MAX_NOISE_SCALE,
    SynthesisSettings,
    check_length_scale,
    int_range,
    noise_level,
)


class VitsSettings(SynthesisSettings):
    """Defaults are Piper's (0.667, 0.8, 1.0); `speaker_id` None is speaker 0 of a multi-speaker voice."""

    noise_scale: Annotated[float, noise_level("noise scale", MAX_NOISE_SCALE)] = 0.667
    noise_scale_duration: Annotated[float, noise_level("duration noise (noise_w)", MAX_NOISE_SCALE)] = 0.8
    length_scale: Annotated[float, AfterValidator(check_length_scale)] = 1.0
    speaker_id: Annotated[int | None, int_range("speaker id", 0)] = None

    speaker_field: ClassVar[str | None] = "speaker_id"

    def at_speed(self, speed: float) -> Self:
        """Speed divides the length scale (every predicted duration), as Piper's own `--length-scale`
        does: speed 2 is length scale 0.5."""
        length_scale = self.length_scale / speed
        if not 0 < length_scale <= MAX_LENGTH_SCALE:
            raise BadInput(
                f"speed {speed:g} gives length scale {length_scale:g}, outside (0, {MAX_LENGTH_SCALE:g}]; "
                f"use a speed of at least {self.length_scale / MAX_LENGTH_SCALE:g}"
            )
        return self.model_copy(update={"length_scale": length_scale})
