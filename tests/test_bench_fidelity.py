"""benchmarks/bench_fidelity.py: its held-out sentences really are held out, and its core measures real,
finite figures end to end (build, ORT parity, split-graph durations, timing) on the tiny random VITS."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load_bench() -> ModuleType:
    """The script is not a package module: load it from its file."""
    spec = importlib.util.spec_from_file_location("bench_fidelity", REPO / "benchmarks" / "bench_fidelity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fidelity"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_held_out_sentences_are_in_no_recipe_and_not_in_the_calibration_set() -> None:
    assert len(bench.HELD_OUT) >= 12
    bench.check_held_out(bench.HELD_OUT, bench.held_out_sources())  # SystemExit on any overlap


def test_an_overlap_is_refused_ignoring_case_and_punctuation() -> None:
    calibration = bench.calibration_texts()[0]  # "Good morning."
    sources = bench.held_out_sources()
    with pytest.raises(SystemExit, match="calibration_en.txt"):
        bench.check_held_out([*bench.HELD_OUT, calibration.upper().rstrip(".") + "!"], sources)
    recipe_text = "hello world, this is VOXPORT"  # demo-tiny-vits.yaml's validate text, recased
    with pytest.raises(SystemExit, match="demo-tiny-vits.yaml"):
        bench.check_held_out([recipe_text], sources)


def test_rows_patch_the_override_free_recipe() -> None:
    recipe = yaml.safe_load((REPO / "recipes" / "joe-medium.yaml").read_text())
    rows = {r.name: r for r in bench.default_rows(recipe["quantize"], ["int8"], ["a calibration text."])}
    assert rows["hand-mix rtn"].quantize["precision_overrides"] == bench.HAND_MIX["precision_overrides"]
    assert "budget" not in rows["hand-mix rtn"].quantize
    own = rows["recipe gptq + budget"].quantize  # the recipe as it is, with the calibration set added
    assert own["budget"] == recipe["quantize"]["budget"] and own["calibration"]["texts"]
    assert "budget" not in rows["mse"].quantize and rows["mse"].quantize["method"] == "mse"
    assert rows["fp32"].precisions == ("fp32",)
    patch = "budget=budget: {int8: {bits_per_weight: 8.7}}"
    budget = bench.parse_row(patch, recipe["quantize"], ["int8"], ["x."])
    assert budget.quantize["budget"] == {"int8": {"bits_per_weight": 8.7}}
    assert budget.quantize["calibration"] == {"texts": ["x."]}  # a budget measures on calibration data
    assert "precision_overrides" not in budget.quantize


@pytest.mark.slow  # the benchmark end to end (builds, ORT parity, timing): ~40 CPU-s
def test_core_measures_finite_figures_on_the_tiny_vits(tiny_vits_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "model": str(tiny_vits_dir),
                "formats": ["onnx"],
                "precisions": ["fp32", "int8"],
                "quantize": {"method": "rtn", "block_size": 32},
                "validate": {"texts": ["a text."], "noise_scale": 0.0, "noise_scale_duration": 0.0},
            }
        )
    )
    row = bench.RowSpec("rtn", {"method": "rtn", "block_size": 32}, ("int8",))
    sentences = ["the cat sat on the mat.", "one more sentence, a little longer than the first."]
    run = bench.run(recipe, [row], tmp_path / "out", sentences=sentences, repeats=1)
    by = {(r.row, r.precision): r for r in run.results}
    assert set(by) == {("fp32", "fp32"), ("rtn", "int8")}
    fp32, int8 = by["fp32", "fp32"], by["rtn", "int8"]
    for r in (fp32, int8):
        for value in (r.file_mb, r.bits_per_weight, r.logmel_max, r.mcd_max, r.ort_ms, r.ort_vs_fp32):
            assert math.isfinite(value) and value >= 0
        assert r.quantize_seconds is not None and r.quantize_seconds >= 0
        assert len(r.per_sentence["logmel_dtw_db"]) == 2
    # the fp32 ONNX file is the torch model: parity near zero, durations and length identical
    assert fp32.logmel_max < 0.05 and fp32.duration_match_min == 1.0 and fp32.length_dev_max == 0.0
    assert fp32.duration_match_all == 1.0 and int8.duration_match_all >= int8.duration_match_min
    assert fp32.ort_vs_fp32 == 1.0 and fp32.bits_per_weight == 32.0
    # int8 is a real quantization: smaller, and measurably different from the reference
    assert int8.file_mb < fp32.file_mb * 0.5 and int8.bits_per_weight < 9.0
    assert int8.logmel_max > fp32.logmel_max
    lines = bench.table(run.results, run.wer_note)
    assert len(lines) == 4 and lines[3].startswith("| rtn | int8 |")
    if run.reference_wer is None:
        assert run.wer_note.startswith("n/a") and all(r.wer is None for r in run.results)


def test_write_section_appends_once_then_replaces_between_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nearlier text\n")
    bench.write_section(doc, ["| a |", "first"])
    bench.write_section(doc, ["| b |", "second"])
    text = doc.read_text()
    assert text.count(bench.SECTION) == 1 and text.count(bench.BEGIN) == 1
    assert "second" in text and "first" not in text and "earlier text" in text
