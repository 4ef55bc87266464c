"""Pocket TTS's synthesis settings: sampling variance, length limits and a voice prompt."""

from __future__ import annotations

from typing import Annotated, ClassVar

from voxport.families.settings import (
    MAX_FRAMES,
    MAX_TEMPERATURE,
    RelativeToRecipe,
    SynthesisSettings,
    int_range,
    noise_level,
)


class PocketSettings(SynthesisSettings):
    """None means the model's own default: its temperature, a frame limit from the text's length, and
    Kyutai's frames-after-end-of-speech rule."""

    temperature: Annotated[float | None, noise_level("temperature", MAX_TEMPERATURE)] = None
    max_frames: Annotated[int | None, int_range("max frames", 1, MAX_FRAMES)] = None
    frames_after_eos: Annotated[int | None, int_range("frames after end of speech", 0, MAX_FRAMES)] = None
    #: a voice prompt: a WAV file (encoded by the checkpoint's codec encoder) or saved latents (.npy)
    voice: Annotated[str | None, RelativeToRecipe()] = None

    #: a voice prompt is Pocket TTS's speaker
    speaker_field: ClassVar[str | None] = "voice"
