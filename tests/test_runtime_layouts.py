"""Runtime layouts as artifacts (issue 13 §2.5), through the whole pipeline: a tiny Pocket TTS build
writes sherpa-onnx's layout of each precision as its own manifest artifact, measures it by speaking it in
sherpa-onnx (a hard test dependency), caches it as its own unit, and fails the build on a
`validate.layout_thresholds` miss."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from typer.testing import CliRunner

from voxport import pipeline
from voxport.cli import app
from voxport.manifest import read_manifest, verify_files
from voxport.recipe import Recipe, load_recipe
from voxport.validate.layouts import runtime_version

cli = CliRunner()
LAYOUT = "sherpa-onnx"
PRECISIONS = ["fp32", "int8"]
#: what a runtime's audio allows comparing (validate/layouts.py `compare`)
MEASURED = ("snr_db", "logmel_dtw_db", "mcd_db", "length_ratio")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pocket") / "checkpoint"
    result = cli.invoke(app, ["demo", str(out), "--family", "pocket_tts", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def write_recipe(
    directory: Path,
    checkpoint: Path,
    *,
    precisions: list[str] = PRECISIONS,
    runtime_layouts: bool = True,
    **validate: Any,
) -> Path:
    """A one-sentence Pocket recipe with a voice prompt (sherpa-onnx always prompts with one), at
    temperature 0 (the layout's parity setting anyway) and a short frame limit to keep it fast."""
    rng = np.random.default_rng(7)
    voice = directory / "voice.wav"
    t = np.arange(24000 // 2) / 24000
    sf.write(voice, (0.3 * np.sin(2 * np.pi * 180 * t) + 0.02 * rng.standard_normal(t.size)), 24000)
    recipe = {
        "name": "layouts",
        "model": str(checkpoint),
        "formats": ["onnx"],
        "precisions": precisions,
        "quantize": {"block_size": 32},
        "export": {"onnx": {"runtime_layouts": runtime_layouts}},
        "validate": {
            "texts": ["Hello world, this is voxport."],
            "voice": str(voice),
            "temperature": 0.0,
            "max_frames": 6,
            "thresholds": {"logmel_dtw_db": 12},
            **validate,
        },
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def build(recipe: Recipe, out: Path, cache: Path) -> list[str]:
    lines: list[str] = []
    pipeline.build(recipe, out, lines.append, cache_dir=cache)
    return lines


def cached_units(lines: list[str]) -> set[str]:
    return {line.removesuffix(": cached") for line in lines if line.endswith(": cached")}


def units(precisions: list[str], layouts: bool = True) -> set[str]:
    """Every unit of a build of `precisions` (as the cache logs name them)."""
    names = {"convert", "reference audio"}
    for p in precisions:
        names |= {f"quantize {p}", f"export onnx {p}", f"validate onnx {p}"}
        if layouts:
            names |= {f"export onnx {p} {LAYOUT}", f"validate onnx {p} {LAYOUT}"}
    return names


@pytest.fixture(scope="module")
def built(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("layouts")
    recipe = load_recipe(write_recipe(base, checkpoint))
    out = base / "out"
    lines = build(recipe, out, base / "cache")
    assert cached_units(lines) == set() and f"validate: onnx int8 {LAYOUT}: pass" in lines
    return out


def test_sherpa_onnx_is_installed() -> None:
    """A hard dependency (pyproject's test extras): without it no layout figure below is measured."""
    assert runtime_version(LAYOUT) is not None


def test_each_precision_has_a_layout_artifact_measured_in_sherpa_onnx(built: Path) -> None:
    out = built
    manifest = read_manifest(out)
    assert manifest.passed
    assert [(a.precision, a.layout) for a in manifest.artifacts] == [
        *((p, None) for p in PRECISIONS),
        *((p, LAYOUT) for p in PRECISIONS),
    ]
    assert verify_files(out, manifest) == []
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = {(r["precision"], r.get("layout")): r for r in report["artifacts"]}
    for p in PRECISIONS:
        artifact = next(a for a in manifest.artifacts if a.precision == p and a.layout == LAYOUT)
        assert artifact.path == f"onnx/layouts.{p}.sherpa"
        assert (out / artifact.path).is_dir()
        names = sorted(Path(f.path).name for f in artifact.files)
        assert "lm_main.onnx" in names and "vocab.json" in names
        row = rows[(p, LAYOUT)]
        assert row["runner"] == f"{LAYOUT} {runtime_version(LAYOUT)}" and row["note"] is None
        [sentence] = row["sentences"]
        assert (out / sentence["audio"]).is_file() and (out / sentence["reference_audio"]).is_file()
        figures = row["metrics"]
        assert all(figures[k] is not None and math.isfinite(figures[k]) for k in MEASURED)
        if p == "fp32":
            # sherpa-onnx's onnxruntime vs torch on the same fp32 weights at temperature 0: float
            # round-off only (116 dB here; 80 leaves room for any x86-64 CPU's kernels)
            assert figures["snr_db"] > 80
        else:
            # int8 codes in sherpa's graphs vs the fp32 reference: quantization noise (27 dB here)
            assert 10 < figures["snr_db"] < 80 and figures["logmel_dtw_db"] < 3
        # both loops stop at the frame limit: the same length
        assert figures["length_ratio"] == 1.0


def test_changing_only_runtime_layouts_runs_only_the_layout_units(checkpoint: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    without = load_recipe(write_recipe(tmp_path, checkpoint, precisions=["fp32"], runtime_layouts=False))
    first = build(without, out, cache)
    assert cached_units(first) == set()
    assert [a.layout for a in read_manifest(out).artifacts] == [None]
    assert not (out / "onnx" / "layouts.fp32.sherpa").exists()

    with_layouts = load_recipe(write_recipe(tmp_path, checkpoint, precisions=["fp32"]))
    second = build(with_layouts, out, cache)
    # the ONNX artifact's key does not hold the option: only the layout's own units ran
    assert units(["fp32"]) - cached_units(second) == {
        f"export onnx fp32 {LAYOUT}",
        f"validate onnx fp32 {LAYOUT}",
    }
    assert [a.layout for a in read_manifest(out).artifacts] == [None, LAYOUT]
    assert (out / "onnx" / "layouts.fp32.sherpa" / "lm_main.onnx").is_file()

    third = build(without, out, cache)
    assert cached_units(third) == units(["fp32"], layouts=False)
    assert [a.layout for a in read_manifest(out).artifacts] == [None]
    assert not (out / "onnx" / "layouts.fp32.sherpa").exists()  # an earlier build's layout is removed
    assert verify_files(out, read_manifest(out)) == []

    fourth = build(with_layouts, out, cache)
    assert cached_units(fourth) == units(["fp32"])  # the layout restored from the cache, not re-run
    assert verify_files(out, read_manifest(out)) == []


def test_a_layout_threshold_miss_fails_validate_with_exit_code_1(checkpoint: Path, tmp_path: Path) -> None:
    """`voxport validate` after `voxport export` measures the layout in sherpa-onnx itself, and a
    `validate.layout_thresholds` miss fails it; voxport's own artifact still passes."""
    recipe = write_recipe(tmp_path, checkpoint, precisions=["fp32"], layout_thresholds={"snr_db": 1000})
    out, cache = tmp_path / "out", tmp_path / "cache"
    options = ["--out", str(out), "--cache-dir", str(cache)]
    exported = cli.invoke(app, ["export", str(recipe), *options])
    assert exported.exit_code == 0, exported.output
    assert (out / "onnx" / "layouts.fp32.sherpa" / "lm_main.onnx").is_file()
    validated = cli.invoke(app, ["validate", str(recipe), *options])
    assert validated.exit_code == 1, validated.output
    assert f"validate: onnx fp32 {LAYOUT}: FAIL: snr_db = " in validated.output
    assert "validate: onnx fp32: pass" in validated.output
    assert f"parity failed onnx fp32 {LAYOUT}: snr_db = " in validated.output
    assert f"validate onnx fp32 {LAYOUT}: cached" not in validated.output  # measured by this command
    manifest = read_manifest(out)
    assert not manifest.passed
    verdicts = {a.layout: a.parity for a in manifest.artifacts}
    assert verdicts[None].passed
    [failure] = verdicts[LAYOUT].failures
    assert "snr_db" in failure
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    row = next(r for r in report["artifacts"] if r.get("layout") == LAYOUT)
    assert row["runner"].startswith(f"{LAYOUT} ") and row["metrics"]["snr_db"] > 80
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"<h2>onnx fp32 {LAYOUT} " in html and "<h2>onnx fp32 <" in html


def test_a_layout_threshold_out_of_range_is_refused_where_it_is_written(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tmp_path / "no-model", layout_thresholds={"logmel_dtw_db": -5})
    result = cli.invoke(app, ["build", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{recipe}:" in result.output
    assert "validate.layout_thresholds.logmel_dtw_db: max -5 can never pass" in result.output
    assert not (tmp_path / "out").exists()
