"""Architecture adapters: the only code that knows a model's layout."""

from voxport.families.base import (
    Family,
    FamilyModel,
    GraphSpec,
    PrunableStack,
    Runner,
    Synthesis,
    SynthesisSettings,
    detect_family,
    families,
    load_model,
)

__all__ = [
    "Family",
    "FamilyModel",
    "GraphSpec",
    "PrunableStack",
    "Runner",
    "Synthesis",
    "SynthesisSettings",
    "detect_family",
    "families",
    "load_model",
]
