"""VITS: text encoder + duration predictor, normalising flow and HiFi-GAN vocoder in one model."""

from voxport.families.vits.family import VitsFamily
from voxport.families.vits.model import VitsModelAdapter
from voxport.families.vits.settings import VitsSettings

__all__ = ["VitsFamily", "VitsModelAdapter", "VitsSettings"]
