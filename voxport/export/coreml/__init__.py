"""Core ML export: family graphs → MIL Program → `.mlpackage` (see `convert` for the two-step API)."""

from voxport.export.coreml.compat import apply_patches
from voxport.export.coreml.convert import (
    TARGETS,
    WeightConst,
    convert_graph,
    program_to_mlmodel,
    save_mlpackage,
    to_program,
    weight_consts,
)
from voxport.export.coreml.metadata import apply_metadata, read_metadata

__all__ = [
    "TARGETS",
    "WeightConst",
    "apply_metadata",
    "apply_patches",
    "convert_graph",
    "program_to_mlmodel",
    "read_metadata",
    "save_mlpackage",
    "to_program",
    "weight_consts",
]
