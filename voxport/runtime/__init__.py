"""Runtimes: run a named graph with numpy inputs (torch, ONNX Runtime, Core ML), whatever executes it.

The lowest layer above errors/io: it knows no family, format or recipe, only graphs and arrays.
"""
