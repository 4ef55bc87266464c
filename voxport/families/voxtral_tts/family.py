"""Voxtral TTS as a registered family: what voxport needs to know about it, without loading a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from voxport.families.base import Family, MetricSpec, StreamSource, Voice
from voxport.families.voxtral_tts.settings import VoxtralSettings

if TYPE_CHECKING:
    from voxport.families.voxtral_tts.model import VoxtralAdapter


class VoxtralFamily(Family):
    name: ClassVar[str] = "voxtral_tts"
    settings: ClassVar[type[VoxtralSettings]] = VoxtralSettings
    #: under teacher forcing each step's backbone state and the head's 36 integrated values are
    #: compared too: one flipped semantic argmax makes free-running audio diverge, these localise it
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("hidden_snr_db", "min", "hidden SNR dB", tensor="hidden"),
        MetricSpec("acoustic_snr_db", "min", "acoustic SNR dB", tensor="acoustic"),
    )
    checkpoint_hint: ClassVar[str] = (
        "a Mistral consolidated directory (params.json with multimodal.audio_tokenizer_args, "
        "consolidated.safetensors, tekken.json, voice_embedding/)"
    )

    @classmethod
    def recognizes(cls, path: Path) -> bool:
        directory = path if path.is_dir() else path.parent
        params = directory / "params.json"
        if not params.is_file():
            return False
        try:
            mm = json.loads(params.read_text()).get("multimodal", {})
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(mm, dict) and "audio_tokenizer_args" in mm and "audio_model_args" in mm

    @classmethod
    def load(cls, path: Path, *, trust_pickle: bool = False) -> VoxtralAdapter:
        from voxport.families.voxtral_tts.model import load_checkpoint

        return load_checkpoint(path, trust_pickle=trust_pickle)

    @classmethod
    def stream_source(cls, path: Path, *, trust_pickle: bool = False) -> StreamSource:
        """The 4B release converts on a small machine this way: weightless graphs, tensors read one by one."""
        from voxport.families.voxtral_tts.stream import stream_source

        return stream_source(path, trust_pickle=trust_pickle)

    @classmethod
    def demo(cls, out_dir: Path, *, seed: int = 0, config: str | None = None) -> Path:
        """A random checkpoint in Mistral's layout: `config` 'tiny' (default, for tests) or 'full' (the
        released 4B shape, ~8 GB of BF16, written one tensor at a time)."""
        from voxport.families.voxtral_tts.synthetic import make_checkpoint

        return make_checkpoint(out_dir, config or "tiny", seed=seed)

    @classmethod
    def open_artifact(cls, path: Path) -> Voice:
        from voxport.families.voxtral_tts.artifact import VoxtralArtifactVoice

        return VoxtralArtifactVoice.open(path)
