"""voxport: ship full-precision TTS checkpoints to edge devices, with proof they still sound the same."""

__version__ = "0.1.0"
