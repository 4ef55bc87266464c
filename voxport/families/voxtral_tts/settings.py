"""Voxtral TTS's synthesis settings: a voice preset, the flow's noise scale and a frame limit."""

from __future__ import annotations

from typing import Annotated, ClassVar

from voxport.families.settings import (
    MAX_FRAMES,
    MAX_NOISE_SCALE,
    RelativeToRecipe,
    SynthesisSettings,
    int_range,
    noise_level,
)


class VoxtralSettings(SynthesisSettings):
    """`voice` None is the checkpoint's first preset in name order; `noise_scale` scales the flow's
    Gaussian start point (1 is the reference's, 0 integrates from zero); `max_frames` None: a limit
    from the text's length (frames are 80 ms)."""

    #: a preset the checkpoint ships (by name), or a preset file ([frames, dim] .npy or .safetensors)
    voice: Annotated[str | None, RelativeToRecipe()] = None
    noise_scale: Annotated[float, noise_level("noise scale", MAX_NOISE_SCALE)] = 1.0
    max_frames: Annotated[int | None, int_range("max frames", 1, MAX_FRAMES)] = None

    #: a voice preset is Voxtral's speaker
    speaker_field: ClassVar[str | None] = "voice"
