"""Shared fixtures (the tiny random VITS checkpoint is built once per test session) and the skip policy:
a skip whose reason is not on tests/skip_allowlist.txt fails the run (skip_policy.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from skip_policy import ALLOWLIST, SkipPolicy, read_allowlist

from voxport.families import FamilyModel, load_model
from voxport.families.vits.synthetic import make_vits_checkpoint

pytest_plugins = ["pytester"]  # test_skip_policy.py runs the policy on real pytest sessions


def pytest_configure(config: pytest.Config) -> None:
    policy = SkipPolicy(read_allowlist(ALLOWLIST), in_ci=bool(os.environ.get("CI")))
    config.pluginmanager.register(policy, "skip_policy")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the whole run: on the 2-core CI machine two threads made the torch
    reference several times slower and erratic under load (ONNX Runtime sessions use one as well)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers VitsModel directory (config.json, model.safetensors, tokenizer), seed 0.

    Read-only for tests: copy it before changing any file in it."""
    return make_vits_checkpoint(tmp_path_factory.mktemp("tiny_vits"), seed=0)


@pytest.fixture(scope="session")
def tiny_vits(tiny_vits_dir: Path) -> FamilyModel:
    """The tiny checkpoint loaded through voxport's own loader (weight-norm folded, fp32)."""
    return load_model(tiny_vits_dir)
