"""benchmarks/bench_kokoro.py: its held-out sentences really are held out, a recipe's sentence is refused,
and a directory that is not a build is refused before anything loads (the measuring itself needs the
published 92 MB file and minutes: the lead runs the script, the tests do not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_bench() -> ModuleType:
    """The script is not a package module: load it from its file."""
    spec = importlib.util.spec_from_file_location("bench_kokoro", REPO / "benchmarks" / "bench_kokoro.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_kokoro"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_held_out_sentences_are_in_no_recipe_and_not_in_the_calibration_set() -> None:
    assert len(bench.HELD_OUT) >= 5
    assert 0 <= bench.TIMED < len(bench.HELD_OUT)
    bench.check_held_out(bench.HELD_OUT, bench.held_out_sources())  # SystemExit on any overlap


def test_a_recipe_sentence_among_the_held_out_is_refused() -> None:
    recipe_text = "you have REACHED your goal"  # apple-watch-ultra-2.yaml's validate text, recased
    with pytest.raises(SystemExit, match="apple-watch-ultra-2.yaml"):
        bench.check_held_out([*bench.HELD_OUT, recipe_text], bench.held_out_sources())


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no manifest.json"):
        bench.artifacts_in(tmp_path)
