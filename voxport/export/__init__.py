"""Stage 3: turn a family's graphs plus the stored (quantized) weights into runtime files."""
