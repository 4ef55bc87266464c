"""VITS's synthesis settings: prior noise, duration noise (Piper's noise_w), pace and speaker."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from voxport.families.settings import (
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
