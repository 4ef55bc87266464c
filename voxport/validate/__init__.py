"""Parity checks: does an exported artifact still sound like the full-precision reference?"""
