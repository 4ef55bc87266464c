"""Stage 1: read a checkpoint into a full-precision model (and optionally prune it)."""
