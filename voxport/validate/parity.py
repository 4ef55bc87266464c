"""Parity: run the same synthesis loop on the reference and on an artifact, and compare.

Per sentence (same ids, same explicit noise):
- free-running: durations agreement, log-mel distance and MCD after DTW, waveform SNR when the
  lengths agree;
- forced durations: the artifact's decoder gets the reference's durations, so the waveforms align
  sample by sample and `forced_snr_db` isolates the decoder's numerical error;
- primary graph (the one users load) with noise off: `tts_snr_db`;
- per-graph tensor figures (max abs error, SNR) for debugging, in report.json.
Sentence figures are aggregated to the worst case, which is what thresholds are checked against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from voxport.families.base import FamilyModel, Runner, Synthesis, SynthesisSettings
from voxport.recipe import METRIC_DIRECTIONS, Threshold
from voxport.runtime.base import runs_graph
from voxport.validate import metrics as m

#: per-step tensors a family may report (`Synthesis.tensors`); each gives a `<name>_snr_db` metric
STEP_TENSORS = ("hidden", "latent")


@dataclass
class SentenceParity:
    label: str
    tokens: int
    metrics: dict[str, float | None]
    graphs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    audio: dict[str, np.ndarray] = field(default_factory=dict)


class Reference:
    """The fp32 torch reference, synthesised once per sentence and shared by every artifact."""

    def __init__(self, model: FamilyModel, settings: SynthesisSettings) -> None:
        self.model = model
        self.settings = settings
        self.runner = model.torch_runner()
        self._split: dict[tuple[int, ...], Synthesis] = {}
        self._primary: dict[tuple[int, ...], Synthesis] = {}
        graphs = model.graphs()
        self.discrete = {g.name: g.discrete_outputs for g in graphs}
        self.primary_graph = next((g.name for g in graphs if g.primary), None)

    def split(self, ids: Sequence[int]) -> Synthesis:
        key = tuple(ids)
        if key not in self._split:
            self._split[key] = self.model.synthesize(self.runner, ids, self.settings)
        return self._split[key]

    def primary(self, ids: Sequence[int]) -> Synthesis:
        key = tuple(ids)
        if key not in self._primary:
            self._primary[key] = self.model.synthesize_primary(self.runner, ids, self.settings)
        return self._primary[key]


def _graph_figures(
    ref: Synthesis, test: Synthesis, discrete: Mapping[str, frozenset[str]]
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for graph, outputs in ref.graph_outputs.items():
        for name, value in outputs.items():
            if name in discrete.get(graph, frozenset()):
                continue
            other = test.graph_outputs.get(graph, {}).get(name)
            if other is None or other.shape != value.shape:
                continue
            out.setdefault(graph, {})[name] = {
                "max_abs_error": m.max_abs_error(value, other),
                "snr_db": m.tensor_snr_db(value, other),
            }
    return out


def _step_snrs(ref: Synthesis, forced: Synthesis) -> dict[str, float | None]:
    """Worst step's SNR of each per-step tensor under teacher forcing (`hidden_snr_db`, ...)."""
    out: dict[str, float | None] = {}
    for name in STEP_TENSORS:
        a, b = ref.tensors.get(name), forced.tensors.get(name)
        if a is None or b is None or a.shape != b.shape or not len(a):
            out[f"{name}_snr_db"] = None
            continue
        out[f"{name}_snr_db"] = min(m.tensor_snr_db(x, y) for x, y in zip(a, b, strict=True))
    return out


def measure_sentence(
    model: FamilyModel, runner: Runner, reference: Reference, ids: Sequence[int], label: str
) -> SentenceParity:
    settings = reference.settings
    ref = reference.split(ids)
    test = model.synthesize(runner, ids, settings)
    forced = model.synthesize(runner, ids, settings, forced=ref)
    audio = m.compare_audio(ref.audio, test.audio, ref.sample_rate)
    match, ratio = m.duration_agreement(ref.durations, test.durations)
    tts_snr: float | None = None
    if reference.primary_graph is not None and runs_graph(runner, reference.primary_graph):
        ref_primary = reference.primary(ids)
        test_primary = model.synthesize_primary(runner, ids, settings)
        tts_snr = m.waveform_snr_db(ref_primary.audio, test_primary.audio)
    graphs = _graph_figures(ref, forced, reference.discrete)
    errors = [fig["max_abs_error"] for outs in graphs.values() for fig in outs.values()]
    metrics: dict[str, float | None] = {
        "snr_db": audio.snr_db,
        "forced_snr_db": m.waveform_snr_db(ref.audio, forced.audio),
        "tts_snr_db": tts_snr,
        "logmel_dtw_db": audio.logmel_dtw_db,
        "mcd_db": audio.mcd_db,
        "duration_match": match,
        "length_ratio": ratio,
        "max_abs_error": max(errors) if errors else None,
        **_step_snrs(ref, forced),
    }
    return SentenceParity(
        label=label,
        tokens=len(ids),
        metrics=metrics,
        graphs=graphs,
        audio={"reference": ref.audio, "test": test.audio, "forced": forced.audio},
    )


def aggregate(sentences: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Worst case over the sentences' metrics in each metric's own direction; None if any sentence
    lacks it (e.g. waveform SNR when one sentence's length changed), so a threshold on it cannot pass
    blindly. Takes plain metric mappings: cached validate units come back as JSON."""
    out: dict[str, float | None] = {}
    for name, direction in METRIC_DIRECTIONS.items():
        values = [s.get(name) for s in sentences]
        if not values or any(v is None for v in values):
            out[name] = None
        elif direction == "min":
            out[name] = float(min(values))  # type: ignore[type-var]
        elif direction == "max":
            out[name] = float(max(values))  # type: ignore[type-var]
        else:
            out[name] = float(max(values, key=lambda v: abs(v - 1.0)))  # type: ignore[operator]
    return out


def check(metrics: Mapping[str, float | None], thresholds: Mapping[str, Threshold]) -> list[str]:
    """One line per missed threshold, saying the value and the limit."""
    failures = []
    for name, threshold in thresholds.items():
        value = metrics.get(name)
        if not threshold.check(value):
            shown = "not measurable (lengths differ)" if value is None else f"{value:.4g}"
            failures.append(f"{name} = {shown}, needs {threshold.describe()}")
    return failures

