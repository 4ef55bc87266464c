"""Slow end-to-end runs (`pytest -m slow`): the README's main job, and a full-size VITS."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voxport import pipeline
from voxport.families.vits.synthetic import make_vits_checkpoint
from voxport.recipe import Recipe

ROOT = Path(__file__).parents[1]
VOXPORT = [sys.executable, "-c", "from voxport.cli import main; main()"]


@pytest.mark.slow
def test_readme_main_job_builds_the_bundled_recipe(tmp_path: Path) -> None:
    """`voxport demo` + `voxport build recipes/demo-tiny-vits.yaml`, as the quickstart runs them."""
    work = tmp_path / "repo"
    (work / "recipes").mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "demo-tiny-vits.yaml", work / "recipes")
    subprocess.run([*VOXPORT, "demo", "build/demo-checkpoint"], cwd=work, check=True, capture_output=True)
    result = subprocess.run(
        [*VOXPORT, "build", "recipes/demo-tiny-vits.yaml", "--out", "build/demo", "--json", "--quiet"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["passed"]
    for fmt in ("onnx", "gguf"):
        artifacts = [a for a in manifest["artifacts"] if a["format"] == fmt]
        assert [a["precision"] for a in artifacts] == ["fp32", "fp16", "int8", "int4"]
        sizes = [sum(f["bytes"] for f in a["files"]) for a in artifacts]
        assert sizes == sorted(sizes, reverse=True), (fmt, sizes)
    assert (work / "build" / "demo" / "report.html").is_file()


#: transformers' VitsConfig defaults (the MMS-TTS size), spelled out so the test does not drift
MMS_SIZE = {
    "hidden_size": 192,
    "num_hidden_layers": 6,
    "ffn_dim": 768,
    "flow_size": 192,
    "spectrogram_bins": 513,
    "upsample_initial_channel": 512,
    "upsample_rates": [8, 8, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4],
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "duration_predictor_filter_channels": 256,
    "duration_predictor_num_flows": 4,
    "prior_encoder_num_flows": 4,
    "prior_encoder_num_wavenet_layers": 4,
    "posterior_encoder_num_wavenet_layers": 2,
}


@pytest.mark.slow
def test_full_size_vits_exports_with_high_fp32_parity(tmp_path: Path) -> None:
    """A default-size VITS, not just the tiny fixture: fp32 ONNX reproduces torch, int8 stays close."""
    model = make_vits_checkpoint(tmp_path / "mms", seed=1, overrides=MMS_SIZE, output_gain=0.02)
    recipe = Recipe.from_mapping(
        {
            "name": "mms",
            "model": str(model),
            "precisions": ["fp32", "int8"],
            "validate": {"texts": ["hello from a full size model."], "thresholds": {"forced_snr_db": 15}},
        },
        tmp_path,
    )
    manifest = pipeline.build(recipe, tmp_path / "out")
    assert manifest.passed, [a.parity.failures for a in manifest.artifacts]
    fp32, int8 = (a.parity.metrics for a in manifest.artifacts)
    assert fp32["forced_snr_db"] > 60 and fp32["tts_snr_db"] > 60
    assert fp32["forced_snr_db"] > int8["forced_snr_db"]
