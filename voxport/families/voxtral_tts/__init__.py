"""Voxtral TTS (Mistral): a Mistral backbone over text and audio codes, a flow-matching head, a codec."""

from voxport.families.voxtral_tts.family import VoxtralFamily

__all__ = ["VoxtralFamily"]
