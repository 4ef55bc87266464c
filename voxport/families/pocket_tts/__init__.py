"""Pocket TTS: Kyutai's latent autoregressive TTS (flow LM backbone, flow head, Mimi codec decoder)."""

from voxport.families.pocket_tts.family import PocketTTSFamily
from voxport.families.pocket_tts.model import PocketTTSAdapter
from voxport.families.pocket_tts.settings import PocketSettings

__all__ = ["PocketSettings", "PocketTTSAdapter", "PocketTTSFamily"]
