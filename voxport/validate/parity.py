"""Parity: run the same synthesis loop on the reference and on an artifact, and compare.

Per sentence (same ids, same explicit noise):
- free-running: durations agreement, log-mel distance and MCD after DTW, waveform SNR when the
  lengths agree;
- forced durations: the artifact's decoder gets the reference's durations, so the waveforms align
  sample by sample and `forced_snr_db` isolates the decoder's numerical error;
- primary graph (the one users load) with noise off: `tts_snr_db`;
- per-graph tensor figures (max abs error, SNR) for debugging, in report.json.
Sentence figures are aggregated to the worst case (`thresholds.aggregate`), which is what thresholds
are checked against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from voxport.families.base import FamilyModel, MetricSpec, Runner, Synthesis, SynthesisSettings
from voxport.runtime.base import runs_graph
from voxport.validate import metrics as m


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


def _step_snrs(ref: Synthesis, forced: Synthesis, specs: Sequence[MetricSpec]) -> dict[str, float | None]:
    """Worst step's SNR of each per-step tensor a metric names (`spec.tensor`), under teacher forcing."""
    out: dict[str, float | None] = {}
    for spec in specs:
        if spec.tensor is None:
            continue
        a, b = ref.tensors.get(spec.tensor), forced.tensors.get(spec.tensor)
        if a is None or b is None or a.shape != b.shape or not len(a):
            out[spec.name] = None
            continue
        out[spec.name] = min(m.tensor_snr_db(x, y) for x, y in zip(a, b, strict=True))
    return out


def measure_sentence(
    model: FamilyModel,
    runner: Runner,
    reference: Reference,
    ids: Sequence[int],
    label: str,
    specs: Sequence[MetricSpec],
) -> SentenceParity:
    """The figures of one sentence. `specs` are the metrics the run reports (`metric_specs(family)`):
    those naming a per-step tensor (`spec.tensor`, a family's own) are measured here too."""
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
        **_step_snrs(ref, forced, specs),
    }
    return SentenceParity(
        label=label,
        tokens=len(ids),
        metrics=metrics,
        graphs=graphs,
        audio={"reference": ref.audio, "test": test.audio, "forced": forced.audio},
    )
