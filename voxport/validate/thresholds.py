"""Parity metrics and their limits: which metrics exist, which way each is good, and how a limit is checked.

One table (`CORE_METRICS`, plus each family's `Family.metrics`) says everything the rest of voxport needs
to know about a metric: the recipe checks threshold names against it and reads a bare number in the
metric's direction, `aggregate` takes the worst sentence in that direction, the CLI and report.html
label and round it, and report.json carries it (`"metrics"`), so the report never re-derives a verdict
from text. `Threshold` is the one limit type: the pipeline checks it, report.json stores it as numbers,
and report.html checks it again per sentence with the same `check`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from voxport.config import describe_kind, is_number
from voxport.families.base import Family, MetricSpec

Direction = Literal["min", "max", "band"]

#: The metrics every family's parity run measures, in report order. Direction: which way is good ("band":
#: a ratio whose best value is 1; a bare t reads |ratio - 1| <= t). Label and digits: how the CLI table
#: and the report show the figure.
CORE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("snr_db", "min", "SNR dB", 1),
    MetricSpec("forced_snr_db", "min", "forced SNR dB", 1),
    MetricSpec("tts_snr_db", "min", "primary SNR dB", 1),
    MetricSpec("logmel_dtw_db", "max", "log-mel dB", 2),
    MetricSpec("mcd_db", "max", "MCD dB", 2),
    MetricSpec("duration_match", "min", "dur match", 3),
    MetricSpec("length_ratio", "band", "len ratio", 3),
    MetricSpec("max_abs_error", "max", "max abs error", 4),
)

#: The values a core metric can take, where bounded: distances and errors are never negative, the
#: duration match is a fraction and a length ratio is never negative. SNRs can be any number.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "logmel_dtw_db": (0.0, math.inf),
    "mcd_db": (0.0, math.inf),
    "max_abs_error": (0.0, math.inf),
    "duration_match": (0.0, 1.0),
    "length_ratio": (0.0, math.inf),
}


def metric_specs(family: type[Family] | None) -> tuple[MetricSpec, ...]:
    """The metrics a parity run of `family` reports: the core ones, then the family's own."""
    return CORE_METRICS + (tuple(family.metrics) if family is not None else ())


def spec_named(name: str, specs: Iterable[MetricSpec]) -> MetricSpec | None:
    return next((s for s in specs if s.name == name), None)


def _fmt_num(x: float) -> str:
    return f"{x:g}"


#: a bound as the recipe writes it: a real number (YAML's `true` is not 1), never NaN or infinite
Bound = Annotated[float, Strict(), Field(allow_inf_nan=False)]


class Threshold(BaseModel):
    """A parity limit: the metric must be ≥ min and/or ≤ max."""

    model_config = ConfigDict(extra="forbid")

    min: Bound | None = None
    max: Bound | None = None

    @model_validator(mode="before")
    @classmethod
    def _mapping_only(cls, data: Any) -> Any:
        # Bare numbers were turned into mappings by the recipe, which knows the metric's direction.
        # The ones left over are NaN/infinity and a negative length_ratio tolerance.
        if is_number(data) and not math.isfinite(data):
            raise ValueError(f"must be a finite number, got {data}")
        if is_number(data):
            raise ValueError(
                f"a bare length_ratio tolerance means |ratio − 1| ≤ t and must be ≥ 0, got {data}"
            )
        if not isinstance(data, dict | Threshold):
            raise ValueError(
                f"expected a number or a mapping like {{min: 20}} or {{max: 2.0}}, got {describe_kind(data)}"
            )
        return data

    @model_validator(mode="after")
    def _has_a_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("give min:, max: or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({_fmt_num(self.min)}) is greater than max ({_fmt_num(self.max)})")
        return self

    @classmethod
    def from_bare(cls, direction: Direction, value: float) -> Threshold:
        """The threshold a bare number means for a metric of `direction`."""
        if direction == "min":
            return cls(min=value)
        if direction == "max":
            return cls(max=value)
        return cls(min=max(0.0, round(1.0 - value, 12)), max=round(1.0 + value, 12))  # a ratio is ≥ 0

    def check(self, value: float | None) -> bool:
        """False when the metric is missing or NaN: an unmeasured limit must not pass silently."""
        if value is None:
            return False
        value = float(value)
        if math.isnan(value):
            return False
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"within [{_fmt_num(self.min)}, {_fmt_num(self.max)}]"
        if self.min is not None:
            return f"≥ {_fmt_num(self.min)}"
        assert self.max is not None  # _has_a_bound guarantees one
        return f"≤ {_fmt_num(self.max)}"


def aggregate(
    sentences: Sequence[Mapping[str, float | None]], specs: Sequence[MetricSpec]
) -> dict[str, float | None]:
    """Worst case over the sentences' metrics in each metric's own direction; None if any sentence
    lacks it (e.g. waveform SNR when one sentence's length changed), so a threshold on it cannot pass
    blindly. Takes plain metric mappings: cached validate units come back as JSON."""
    out: dict[str, float | None] = {}
    for spec in specs:
        values = [s.get(spec.name) for s in sentences]
        present = [float(v) for v in values if v is not None]
        if not values or len(present) < len(values):
            out[spec.name] = None
        elif spec.direction == "min":
            out[spec.name] = min(present)
        elif spec.direction == "max":
            out[spec.name] = max(present)
        else:
            out[spec.name] = max(present, key=lambda v: abs(v - 1.0))
    return out


def failed_metrics(metrics: Mapping[str, float | None], thresholds: Mapping[str, Threshold]) -> list[str]:
    """The names of the thresholds `metrics` misses, in threshold order."""
    return [name for name, threshold in thresholds.items() if not threshold.check(metrics.get(name))]


def check(metrics: Mapping[str, float | None], thresholds: Mapping[str, Threshold]) -> list[str]:
    """One line per missed threshold, saying the value and the limit."""
    failures = []
    for name in failed_metrics(metrics, thresholds):
        value = metrics.get(name)
        shown = "not measurable (lengths differ)" if value is None else f"{value:.4g}"
        failures.append(f"{name} = {shown}, needs {thresholds[name].describe()}")
    return failures


def metrics_json(specs: Iterable[MetricSpec]) -> list[dict[str, Any]]:
    """The `"metrics"` list of report.json: what a reader of the report needs to show each figure."""
    return [{"name": s.name, "direction": s.direction, "label": s.label, "digits": s.digits} for s in specs]
