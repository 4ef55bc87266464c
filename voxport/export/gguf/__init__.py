"""GGUF export: write stored weights as one GGUF file (streamed, atomic), read it back, run it.

- `names`: the reversible short tensor names (< 64 bytes) used inside the file
- `writer.write_gguf(model, qm, path, name=..., types=..., metadata=...)`
- `reader.read_gguf(path, model=None)`, `reader.describe_gguf(path)`, `reader.GgufRunner(model, path)`
- `kquants.quantize_k(weight2d, "Q4_K" | "Q5_K" | "Q6_K")`: numpy k-quant encoders

The layout is documented in docs/gguf-layout.md. Submodules are imported lazily so that importing
this package stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GgufRunner", "describe_gguf", "read_gguf", "write_gguf"]


def __getattr__(name: str) -> Any:
    if name == "write_gguf":
        from voxport.export.gguf.writer import write_gguf

        return write_gguf
    if name in ("read_gguf", "describe_gguf", "GgufRunner"):
        from voxport.export.gguf import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
