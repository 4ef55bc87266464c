"""The audio objective a size budget minimises: how far a set of weights makes the model's speech drift.

One number per set of weights, because the budget's search adds sensitivities up. Each calibration
sentence is synthesised once by the full-precision model (the reference) and once by the candidate
weights *teacher-forced* on the reference (`synthesize(..., forced=reference)`): VITS decodes the
reference's durations, an autoregressive family is fed the reference's previous frames. Forcing keeps
the audio aligned, so a module's own error is measured rather than the divergence that one changed
frame causes in free-running audio. Per sentence the objective adds:

- the log-mel distance of the forced audio, in dB (what a listener hears of the decoder's error);
- for families with durations, the share of tokens whose duration flips (×20: one token in a hundred
  counts 0.2 dB, about where the gates start to care) and the relative change of the total length
  (×50: 1 % counts 0.5 dB), both read from the candidate's own predicted durations;
- for each per-step tensor a family's metrics name (Pocket TTS's latents), the worst step's noise-to-
  signal power ratio ×10 (at 20 dB SNR that adds 0.1).

and the objective is the mean over sentences. The weights of the terms are a choice, stated here so a
plan's figures can be read; they are not tuned on any validation or benchmark sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from voxport.families.base import FamilyModel, MetricSpec, Synthesis, SynthesisSettings
from voxport.validate import metrics as m

#: objective weight of the share of flipped durations (dB-equivalent per unit share)
DURATION_FLIP_WEIGHT = 20.0
#: objective weight of the relative length change
LENGTH_WEIGHT = 50.0
#: objective weight of a per-step tensor's noise-to-signal power ratio
TENSOR_WEIGHT = 10.0


class AudioObjective:
    """Callable on a full set of float32 weights (`FamilyModel.state_dict()` names); 0 for the
    reference's own weights, larger the further the speech drifts."""

    def __init__(
        self,
        model: FamilyModel,
        sentences: Sequence[Sequence[int]],
        settings: SynthesisSettings,
        specs: Sequence[MetricSpec] = (),
    ) -> None:
        if not sentences:
            raise ValueError("the audio objective needs at least one sentence")
        self.model = model
        self.sentences = [list(s) for s in sentences]
        self.settings = settings
        self.tensors = [s.tensor for s in specs if s.tensor is not None]
        runner = model.torch_runner()
        with torch.no_grad():
            self.references = [model.synthesize(runner, ids, settings) for ids in self.sentences]
        # One working copy whose weights each call overwrites in place (`state_dict()` shares the
        # parameters' storage): a fresh `with_weights` copy per call cost more than the synthesis.
        self.work = model.with_weights(model.state_dict())
        self.slots = self.work.state_dict()

    def __call__(self, weights: Mapping[str, torch.Tensor]) -> float:
        missing = set(self.slots) - set(weights)
        if missing:
            raise ValueError(f"the objective needs every weight; missing {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, slot in self.slots.items():
                slot.copy_(weights[name])
        candidate = self.work
        runner = candidate.torch_runner()
        total = 0.0
        with torch.no_grad():
            for ids, ref in zip(self.sentences, self.references, strict=True):
                forced = candidate.synthesize(runner, ids, self.settings, forced=ref)
                total += self.sentence(ref, forced)
        return total / len(self.sentences)

    def sentence(self, ref: Synthesis, forced: Synthesis) -> float:
        """One sentence's objective (see the module docstring)."""
        value = m.logmel_dtw_db(ref.audio, forced.audio, ref.sample_rate)
        if ref.durations is not None and forced.durations is not None:
            match, ratio = m.duration_agreement(ref.durations, forced.durations)
            value += DURATION_FLIP_WEIGHT * (1.0 - match) + LENGTH_WEIGHT * abs(ratio - 1.0)
        for name in self.tensors:
            a, b = ref.tensors.get(name), forced.tensors.get(name)
            if a is None or b is None or a.shape != b.shape or not len(a):
                continue
            noise = max(_noise_ratio(x, y) for x, y in zip(a, b, strict=True))
            value += TENSOR_WEIGHT * noise
        return float(value)


def _noise_ratio(reference: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(reference, dtype=np.float64)
    err = np.asarray(test, dtype=np.float64) - ref
    power = float(np.mean(ref * ref))
    return float(np.mean(err * err)) / power if power > 0 else 0.0
