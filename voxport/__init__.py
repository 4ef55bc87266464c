"""voxport: ship full-precision TTS checkpoints to edge devices, with proof they still sound the same."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voxport.api import Synthesizer

__version__ = "0.1.0"

# coremltools warns at import, on every Linux run, that its macOS-only runtime and untested torch /
# scikit-learn versions are absent (nine lines, before any command prints). voxport runs Core ML
# through its own interpreter on Linux and pins what it tested, so those warnings say nothing to our
# users; real coremltools errors still show.
logging.getLogger("coremltools").setLevel(logging.ERROR)


def load(path: str | Path, *, trust_pickle: bool = False) -> Synthesizer:
    """Open an exported artifact or a checkpoint to speak with, in your own process (`voxport.api`):
    `voxport.load(path).synthesize("Hello.")` or `.stream(...)`.

    The API is the top layer and this package root the bottom one (every module imports it for
    `__version__`), so the API is looked up by name on first use rather than imported here: an import
    statement would make it part of every module's dependencies, closing an import cycle and putting
    the API's code into every pipeline stage's cache key. It also keeps `import voxport` light."""
    api = importlib.import_module("voxport.api")
    synthesizer: Synthesizer = api.load(path, trust_pickle=trust_pickle)
    return synthesizer
