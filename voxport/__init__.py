"""voxport: ship full-precision TTS checkpoints to edge devices, with proof they still sound the same."""

import logging

__version__ = "0.1.0"

# coremltools warns at import, on every Linux run, that its macOS-only runtime and untested torch /
# scikit-learn versions are absent (nine lines, before any command prints). voxport runs Core ML
# through its own interpreter on Linux and pins what it tested, so those warnings say nothing to our
# users; real coremltools errors still show.
logging.getLogger("coremltools").setLevel(logging.ERROR)
