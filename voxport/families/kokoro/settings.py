"""Kokoro's synthesis settings: a voice (style preset), a speaking rate and the source noise."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Self

from pydantic import AfterValidator

from voxport.errors import BadInput
from voxport.families.settings import MAX_NOISE_SCALE, RelativeToRecipe, SynthesisSettings, noise_level

#: Kokoro divides every duration by `speed`; kokoro-onnx accepts 0.5-2.0. Below 0.1 a sentence is
#: ten times its length (memory grows with it); above 10 every token is clamped to one frame.
MIN_SPEED, MAX_SPEED = 0.1, 10.0


def _check_speed(value: float) -> float:
    if not (math.isfinite(value) and MIN_SPEED <= value <= MAX_SPEED):
        raise ValueError(
            f"speed must be in [{MIN_SPEED:g}, {MAX_SPEED:g}] (1 = the voice's own pace), got {value}"
        )
    return value


class KokoroSettings(SynthesisSettings):
    """`voice` None is the checkpoint's first voice (in name order). `noise_scale` scales the harmonic
    source's Gaussian noise: 1 is KModel's, 0 the published ONNX export's (which has none)."""

    #: a voice the model ships (by name), or a style table file (.npy); a recipe resolves it like the
    #: other families' voice files, and a name still finds the voice (source.pick_voice)
    voice: Annotated[str | None, RelativeToRecipe()] = None
    speed: Annotated[float, AfterValidator(_check_speed)] = 1.0
    noise_scale: Annotated[float, noise_level("noise scale", MAX_NOISE_SCALE)] = 1.0

    #: a style preset is Kokoro's speaker
    speaker_field: ClassVar[str | None] = "voice"

    def at_speed(self, speed: float) -> Self:
        """Kokoro's own control: every predicted duration is divided by the speed."""
        total = self.speed * speed
        if not MIN_SPEED <= total <= MAX_SPEED:
            raise BadInput(f"speed {speed:g} gives {total:g}, outside [{MIN_SPEED:g}, {MAX_SPEED:g}]")
        return self.model_copy(update={"speed": total})
