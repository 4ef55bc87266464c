"""ONNX export: trace each family graph once in fp32, then store every weight in its precision."""

from voxport.export.onnx.exporter import ExportedFile, export_onnx

__all__ = ["ExportedFile", "export_onnx"]
