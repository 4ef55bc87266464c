"""Per-format layout data a family hands a format adapter (the adapter writes it)."""
