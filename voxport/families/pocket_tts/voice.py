"""Voice prompts for Pocket TTS: latents from a `.npy`, or a WAV encoded by the checkpoint's codec.

Its own module so that the artifact voice (artifact.py, which has no checkpoint and takes latents
only) and the checkpoint adapter (model.py) share it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.families.pocket_tts.modules import encode_voice

if TYPE_CHECKING:
    from voxport.families.pocket_tts.model import PocketTTSAdapter


def load_voice(voice: str, model: PocketTTSAdapter | None) -> np.ndarray:
    path = Path(voice)
    if not path.is_file():
        raise BadInput(f"voice prompt not found: {path}")
    if path.suffix == ".npy":
        latents = np.load(path, allow_pickle=False)
        return np.asarray(latents, np.float32).reshape(-1, latents.shape[-1])
    if model is None:
        raise BadInput(f"{path}: encoding a voice needs the checkpoint's codec encoder; give latents (.npy)")
    if not model.modules.mimi.has_encoder:
        raise BadInput(
            f"{model.source}: this checkpoint has no codec encoder (mimi.encoder.*), so it cannot encode "
            "a voice prompt; use a checkpoint with voice cloning weights or give latents (.npy)"
        )
    mono = voice_audio(path, model.sample_rate)
    with torch.no_grad():
        latents = encode_voice(
            model.modules.mimi, torch.from_numpy(np.ascontiguousarray(mono)), model.cfg.frame_size
        )
    return latents[0].numpy().astype(np.float32)


def voice_audio(path: Path, sample_rate: int) -> np.ndarray:
    """A voice prompt WAV as mono float32 at `sample_rate`: what the codec encoder (and any runtime
    given the same prompt, e.g. sherpa-onnx) hears."""
    import librosa
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError and RuntimeError variants
        raise BadInput(f"{path}: not a readable audio file ({exc})") from None
    mono = audio.mean(axis=1)
    if rate != sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)
