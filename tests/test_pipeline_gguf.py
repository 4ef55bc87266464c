"""GGUF through the whole pipeline: recipe → GGUF artifacts → parity with the GGUF runner → manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxport import pipeline
from voxport.cli import app
from voxport.manifest import verify_files
from voxport.recipe import Recipe

runner = CliRunner()


@pytest.fixture(scope="module")
def built(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gguf-build")
    recipe = Recipe.from_mapping(
        {
            "name": "tiny",
            "model": str(tiny_vits_dir),
            "formats": ["onnx", "gguf"],
            "precisions": ["fp32", "int4"],
            "export": {"gguf": {"types": {"int4": {"decoder.resblocks.*": "Q5_0"}}}},
            "validate": {"texts": ["hello there, general."], "thresholds": {"logmel_dtw_db": 6}},
        },
        tiny_vits_dir,
    )
    manifest = pipeline.build(recipe, out)
    index = json.loads((out / "stages" / "export.json").read_text())
    return out, {"manifest": manifest, "index": index}


def test_every_precision_has_an_onnx_and_a_gguf_artifact(built: tuple[Path, dict]) -> None:
    out, b = built
    manifest = b["manifest"]
    assert manifest.passed
    assert [(a.format, a.precision) for a in manifest.artifacts] == [
        ("onnx", "fp32"),
        ("gguf", "fp32"),
        ("onnx", "int4"),
        ("gguf", "int4"),
    ]
    assert verify_files(out, manifest) == []
    gguf_fp32 = manifest.artifacts[1].parity.metrics
    assert gguf_fp32["forced_snr_db"] >= 150  # the file holds exactly the fp32 weights
    assert gguf_fp32["duration_match"] == 1.0


def test_int4_gguf_holds_q4_0_and_the_recipe_mix(built: tuple[Path, dict]) -> None:
    out, b = built
    entry = next(e for e in b["index"] if e["format"] == "gguf" and e["precision"] == "int4")
    assert entry["tensor_types"].get("Q4_0", 0) > 0
    assert entry["tensor_types"].get("Q5_0", 0) > 0  # export.gguf.types for int4
    result = runner.invoke(app, ["inspect", str(out / entry["path"]), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["architecture"] == "vits" and info["tensor_types"]["Q4_0"] == entry["tensor_types"]["Q4_0"]
    # every fallback (a row too short for a block of 32) is listed with its reason
    fallbacks = [s for s in entry["skipped_weights"] if "gguf_name" in s]
    assert fallbacks and all(s["stored"] in ("F16", "F32") and "block" in s["reason"] for s in fallbacks)


def test_onnx_and_gguf_int4_sound_alike(built: tuple[Path, dict]) -> None:
    _, b = built
    onnx_int4, gguf_int4 = (a.parity.metrics for a in b["manifest"].artifacts[2:])
    # same Q4_0 codes in both files: the figures agree far closer than int4's own cost
    assert abs(onnx_int4["logmel_dtw_db"] - gguf_int4["logmel_dtw_db"]) < 0.5
    assert onnx_int4["duration_match"] == pytest.approx(gguf_int4["duration_match"], abs=0.1)


def test_malformed_gguf_is_exit_2(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, b = built
    entry = next(e for e in b["index"] if e["format"] == "gguf")
    data = (out / entry["path"]).read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[: len(data) // 3])
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2 and "bad.gguf" in result.stderr and "Traceback" not in result.stderr


def test_unknown_ggml_type_in_recipe_is_exit_2(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: x\nmodel: m\nformats: [gguf]\nexport:\n  gguf:\n    types:\n      int4: {'*': Q3_K}\n"
        "validate:\n  ids: [[1]]\n"
    )
    result = runner.invoke(app, ["recipes", "check", str(recipe)])
    assert result.exit_code == 2 and "r.yaml:7" in result.stderr
