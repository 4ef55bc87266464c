"""Shared fixtures: the tiny random VITS checkpoint is built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from voxport.families import FamilyModel, load_model
from voxport.families.vits.synthetic import make_vits_checkpoint


@pytest.fixture(scope="session")
def tiny_vits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers VitsModel directory (config.json, model.safetensors, tokenizer), seed 0.

    Read-only for tests: copy it before changing any file in it."""
    return make_vits_checkpoint(tmp_path_factory.mktemp("tiny_vits"), seed=0)


@pytest.fixture(scope="session")
def tiny_vits(tiny_vits_dir: Path) -> FamilyModel:
    """The tiny checkpoint loaded through voxport's own loader (weight-norm folded, fp32)."""
    return load_model(tiny_vits_dir)
