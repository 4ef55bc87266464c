"""Pocket TTS: Kyutai's latent autoregressive TTS (flow LM backbone, flow head, Mimi codec decoder)."""

from voxport.families.pocket_tts.model import PocketTTSAdapter, PocketTTSFamily

__all__ = ["PocketTTSAdapter", "PocketTTSFamily"]
