"""Architecture adapters: the only code that knows a model's layout."""

from voxport.families.base import (
    Family,
    FamilyModel,
    GraphSpec,
    PrunableStack,
    Runner,
    Synthesis,
    SynthesisSettings,
    Voice,
)
from voxport.families.registry import detect_family, families, load_model, register

__all__ = [
    "Family",
    "FamilyModel",
    "GraphSpec",
    "PrunableStack",
    "Runner",
    "Synthesis",
    "SynthesisSettings",
    "Voice",
    "detect_family",
    "families",
    "load_model",
    "register",
]
