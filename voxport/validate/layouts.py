"""Parity of a runtime layout (`families/layouts/onnx.py`), measured in that runtime.

A runtime layout (sherpa-onnx's Pocket TTS files) is run the way its users run it: the runtime reads the
files, tokenizes the text itself and runs its own loop, so only the audio can be compared. Each text of
`validate.texts` is spoken by the layout's voice and by voxport's fp32 torch reference under the layout's
`parity_settings` (e.g. temperature 0: the runtime draws its own noise), and compared with the audio
figures of `validate/metrics.py`: log-mel distance and MCD after DTW, the length ratio, and waveform SNR
where the lengths agree.

No figures (None, with the reason) rather than a failure when the runtime is not installed (the files are
still written and listed; `validate` measures where the package is), for `validate.ids` inputs (the runtime
tokenizes text itself), and where the layout's voice says the settings have no counterpart there
(`Unmeasurable`, e.g. a voice prompt it cannot take).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxport.families.base import FamilyModel, SynthesisSettings
from voxport.families.layouts.onnx import OnnxLayout, Unmeasurable
from voxport.validate import metrics as m
from voxport.validate.parity import Reference
from voxport.validate.thresholds import CORE_METRICS, aggregate


@dataclass
class LayoutSentence:
    label: str
    tokens: int
    metrics: dict[str, float | None]
    #: the runtime's audio and the reference it is compared with (same settings)
    audio: np.ndarray
    reference: np.ndarray


@dataclass
class LayoutParity:
    #: what measured: "sherpa-onnx 2.0.1", or "sherpa-onnx not installed"
    runner: str
    sentences: list[LayoutSentence] = field(default_factory=list)
    #: why there are no figures, or None
    reason: str | None = None

    @property
    def metrics(self) -> dict[str, float | None]:
        """Worst case over the sentences (as for voxport's own artifacts); all None without figures."""
        return aggregate([s.metrics for s in self.sentences], CORE_METRICS)


def runtime_version(package: str | None) -> str | None:
    """The installed version of a layout's runtime package, or None when it is missing (or there is
    none)."""
    if package is None:
        return None
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def runner_label(package: str | None) -> str:
    """What measures a layout whose runtime is `package` on this machine; part of the validate cache
    key, so a result measured without the runtime is not reused once it is installed (nor one of
    another version of it)."""
    if package is None:
        return "no runtime"
    version = runtime_version(package)
    return f"{package} {version}" if version else f"{package} not installed"


def unmeasured(package: str | None) -> LayoutParity | None:
    """No figures, with the reason, when the layout's runtime cannot run here; None when it can (checked
    before anything is loaded: a build without the runtime never needs the model for this)."""
    if runtime_version(package) is not None:
        return None
    runner = runner_label(package)
    return LayoutParity(runner=runner, reason=f"{runner}: the layout's files were written, not run")


def layout_settings(layout: OnnxLayout, settings: SynthesisSettings) -> SynthesisSettings:
    """The recipe's validate settings with the layout's parity settings on top."""
    given = {name: getattr(settings, name) for name in settings.model_fields_set}
    return type(settings)(**{**given, **layout.parity_settings})


def layout_reference(model: FamilyModel, layout: OnnxLayout, settings: SynthesisSettings) -> Reference:
    """The fp32 torch reference under the layout's settings (share it across a layout's precisions)."""
    return Reference(model, layout_settings(layout, settings))


def measure_layout(
    layout: OnnxLayout,
    directory: Path,
    reference: Reference,
    texts: Sequence[str],
    *,
    id_inputs: int = 0,
) -> LayoutParity:
    """Speak each text with the written `directory` in the layout's runtime and compare it with
    `reference` (from `layout_reference`). `id_inputs`: how many inputs are bare ids (not measurable
    here: the runtime tokenizes text itself)."""
    factory = layout.voice
    if factory is None:
        return LayoutParity(runner="no runtime", reason=f"{layout.name}: no runtime voice to run the files")
    skipped = unmeasured(layout.runtime_package)
    if skipped is not None:
        return skipped
    runner = runner_label(layout.runtime_package)
    if not texts:
        return LayoutParity(
            runner=runner,
            reason=f"validate has {id_inputs} ids input(s) and no texts: {layout.name} tokenizes text "
            "itself; add validate.texts to measure it",
        )
    voice = factory(directory)
    model, settings = reference.model, reference.settings
    sentences = []
    for text in texts:
        try:
            audio = voice.speak(text, settings)
        except Unmeasurable as exc:
            return LayoutParity(runner=runner, reason=str(exc))
        ids = model.text_to_ids(text)
        ref = reference.split(ids).audio
        sentences.append(
            LayoutSentence(
                label=text,
                tokens=len(ids),
                metrics=compare(ref, audio, model.sample_rate),
                audio=audio,
                reference=ref,
            )
        )
    return LayoutParity(runner=runner, sentences=sentences)


def compare(reference: np.ndarray, test: np.ndarray, sample_rate: int) -> dict[str, float | None]:
    """The audio figures a runtime's output allows: there are no per-token durations or graph tensors,
    so `duration_match` stays None and the length ratio is taken over samples."""
    audio = m.compare_audio(reference, test, sample_rate)
    return {
        "snr_db": audio.snr_db,
        "logmel_dtw_db": audio.logmel_dtw_db,
        "mcd_db": audio.mcd_db,
        "length_ratio": test.size / reference.size,
    }


__all__ = [
    "LayoutParity",
    "LayoutSentence",
    "compare",
    "layout_reference",
    "layout_settings",
    "measure_layout",
    "runner_label",
    "runtime_version",
    "unmeasured",
]
