"""VITS: text encoder + duration predictor, normalising flow and HiFi-GAN vocoder in one model."""

from voxport.families.vits.model import VitsFamily, VitsModelAdapter

__all__ = ["VitsFamily", "VitsModelAdapter"]
