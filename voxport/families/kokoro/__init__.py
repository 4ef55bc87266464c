"""Kokoro-82M (StyleTTS 2 + iSTFTNet, hexgrad, Apache-2.0) as a voxport family."""

from voxport.families.kokoro.family import KokoroFamily

__all__ = ["KokoroFamily"]
