"""Synthesis settings: one typed model per family, all sharing `seed`.

Each family declares the knobs its loop honours (`Family.settings`): VITS has noise and pace, an
autoregressive model has a temperature, a frame limit and a voice prompt. The recipe's `validate:` and
`phrases:` sections and `voxport say` validate against the family's own model, so a setting the
family lacks is an error instead of a silently ignored value. A field with the same name means the
same thing, with the same type, in every family (the recipe checks one key against all of them).

Range checks raise `BadInput` with the same one-line messages for Python callers and the CLI; the
recipe validates the same fields strictly (`model_validate(..., strict=True)`) and puts the message
after the file, line and key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from voxport.errors import BadInput

#: Upper bound of `length_scale`. It multiplies every predicted duration: Piper voices ship 0.8-1.2,
#: 2 is already a drawl, and 10 (ten times slower than trained) is far past intelligible speech. Beyond
#: that the only effect is memory: audio, and the vocoder's activations with it, grow linearly (1e5 asked
#: a tiny voice for a 3.7 GB allocation).
MAX_LENGTH_SCALE = 10.0
#: Upper bound of VITS's noise scales. Voices ship defaults under 1 (Piper 0.667 and 0.8), and the
#: duration noise (noise_w) goes through exp() into the durations: on the demo voice 2 already triples
#: the length of a sentence, 3 made it 7x longer and 10 asked for 137M frames (a 32.7 GiB array).
MAX_NOISE_SCALE = 2.0
#: Upper bound of an autoregressive model's sampling temperature (the variance of its flow noise;
#: Kyutai's default is 0.7). It does not change lengths, so the bound is only "still a variance a model
#: could have been trained near": at 5 the audio is noise.
MAX_TEMPERATURE = 5.0
#: Upper bound of `max_frames` per synthesis piece: an autoregressive model's KV cache and its
#: attention grow with every frame. 20,000 frames is 26 minutes at Pocket TTS's 12.5 Hz, where Kyutai's
#: own length rule for a 50-token chunk stops after ~230.
MAX_FRAMES = 20_000


@dataclass(frozen=True)
class RelativeToRecipe:
    """Marks a path-valued setting (a voice prompt file): a recipe resolves it against the recipe's
    own directory, as it does `model:`, so a recipe builds the same from any working directory."""


def noise_level(label: str, high: float) -> AfterValidator:
    """A noise amount: a finite number in [0, high], 0 meaning no noise (None: the model's default)."""

    def check(value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and 0.0 <= value <= high):
            raise ValueError(f"{label} must be a number in [0, {high:g}] (0 = no noise), got {value}")
        return value

    return AfterValidator(check)


def int_range(label: str, low: int, high: int | None = None) -> AfterValidator:
    """An integer in low..high (None: no upper bound), or None where the field allows it."""

    def check(value: int | None) -> int | None:
        if value is None:
            return value
        if high is None and value < low:
            raise ValueError(f"{label} must be >= {low}, got {value}")
        if high is not None and not low <= value <= high:
            raise ValueError(f"{label} must be in {low}..{high}, got {value}")
        return value

    return AfterValidator(check)


def check_length_scale(value: float) -> float:
    """`length_scale` multiplies every duration: in (0, MAX_LENGTH_SCALE]."""
    if not (math.isfinite(value) and 0 < value <= MAX_LENGTH_SCALE):
        raise ValueError(
            f"length scale must be in (0, {MAX_LENGTH_SCALE:g}] (1 = the voice's own pace, 2 = twice "
            f"as slow), got {value}"
        )
    return value


class SynthesisSettings(BaseModel):
    """What makes a synthesis run reproducible: noise is derived from `seed` explicitly. The base of
    every family's settings; on its own it is "the family's defaults with this seed"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: Annotated[int, int_range("seed", 0)] = 0

    #: the field the runtime API's `speaker=` sets (a speaker id, a voice prompt); None: the family's
    #: voices have no speakers to choose
    speaker_field: ClassVar[str | None] = None

    def at_speed(self, speed: float) -> Self:
        """These settings at speaking rate `speed` (1 = the voice's own pace, 2 = twice as fast), in the
        family's own terms. A family whose loop has no pace control refuses: silently ignoring a speed
        would hand back audio at a pace nobody asked for."""
        raise BadInput(
            f"these voices have no speaking-rate control, so speed {speed:g} cannot apply; leave it at 1"
        )

    def __init__(self, **values: Any) -> None:
        """Construct and check; a bad value is a one-line BadInput (what a CLI flag or API caller sees)."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise BadInput(explain(type(self), exc)) from None

    @classmethod
    def of(cls, settings: SynthesisSettings) -> Self:
        """`settings` as this family's model: itself if it already is one, else the values it was given
        (a bare `SynthesisSettings(seed=3)` becomes this family's defaults with seed 3). A value this
        family has no field for is a BadInput naming it, never silently dropped."""
        if isinstance(settings, cls):
            return settings
        return cls(**{k: getattr(settings, k) for k in settings.model_fields_set})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def path_fields(cls) -> tuple[str, ...]:
        """Fields holding a file path that a recipe resolves against its own directory."""
        return tuple(
            n for n, f in cls.model_fields.items() if any(isinstance(m, RelativeToRecipe) for m in f.metadata)
        )


def explain(model: type[SynthesisSettings], exc: ValidationError) -> str:
    """The first problem as one line: our own range messages as they are, others with the field named."""
    err = exc.errors(include_url=False)[0]
    name = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{model.__name__} has no setting {name!r} (its settings: {', '.join(model.field_names())})"
    if err["type"] in ("value_error", "assertion_error"):
        return str(err.get("ctx", {}).get("error", err["msg"]))
    return f"setting {name}: {err['msg'].lower()}, got {err.get('input')!r}"
