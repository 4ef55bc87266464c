"""Kokoro end to end: the published graph imported, built into ONNX at fp32, fp16 and int8, and each
artifact spoken by the runtimes users already have: voxport's own `say` path, kokoro-onnx and sherpa-onnx.

Slow (two minutes: tracing three graphs of an 82M model and validating three precisions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sherpa_onnx
import yaml
from kokoro_onnx import Kokoro
from typer.testing import CliRunner

import voxport
from voxport.cli import app
from voxport.families.kokoro import frontend
from voxport.families.kokoro.loading import import_published
from voxport.families.kokoro.source import published_model, published_voices
from voxport.validate.metrics import logmel_dtw_db, waveform_snr_db

pytestmark = pytest.mark.slow

#: in no recipe and no calibration set
TEXT = "Brisk winds carried the smell of pine across the valley."
VOICE = "jf_alpha"
RATE = 24_000
FRAME = 600
runner = CliRunner()


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kokoro_build")
    checkpoint = import_published(published_model(), published_voices(), root / "ckpt")
    recipe = root / "kokoro.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "k",
                "model": str(checkpoint),
                "formats": ["onnx"],
                "precisions": ["fp32", "fp16", "int8"],
                "quantize": {"method": "rtn"},
                "validate": {
                    "texts": ["Lanterns flickered along the quiet canal."],
                    "voice": VOICE,
                    "noise_scale": 0.0,
                    "thresholds": {"logmel_dtw_db": 2.5, "duration_match": 0.85, "length_ratio": 0.05},
                },
            }
        )
    )
    result = runner.invoke(app, ["build", str(recipe), "--out", str(root / "out"), "-q"])
    assert result.exit_code == 0, result.output
    return root / "out"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_artifact_speaks_in_kokoro_onnx_and_sherpa_onnx(build: Path, precision: str) -> None:
    model = build / "onnx" / f"k.{precision}.onnx"
    ids = frontend.text_to_ids(TEXT)
    ours = voxport.load(model).synthesize(TEXT, speaker=VOICE)
    assert np.isfinite(ours).all() and 0.02 < float(np.sqrt(np.mean(ours**2))) < 0.5

    kokoro = Kokoro(str(model), str(model.with_name("voices.npz")))
    audio, rate = kokoro.create(TEXT, voice=VOICE, speed=1.0, lang="en-us", trim=False)
    assert rate == RATE
    snr = waveform_snr_db(ours, np.asarray(audio, np.float32))
    assert snr is not None and snr >= 60  # the same graph, inputs and style row: bit-identical here

    config = sherpa_onnx.OfflineTtsKokoroModelConfig(
        model=str(model), voices=str(model.with_name("voices.bin")), tokens=str(model.with_name("tokens.txt"))
    )
    tts = sherpa_onnx.OfflineTts(
        sherpa_onnx.OfflineTtsConfig(model=sherpa_onnx.OfflineTtsModelConfig(kokoro=config, num_threads=1))
    )
    assert tts.sample_rate == RATE and tts.num_speakers == 5
    generation = sherpa_onnx.GenerationConfig()
    generation.sid = 0  # jf_alpha: voices.bin holds the voices in sorted order, as the metadata lists them
    generation.silence_scale = 1.0
    generation.phoneme_codepoints = [[ord(c) for c in p] for p in frontend.phoneme_pieces(TEXT)]
    spoken = np.asarray(tts.generate("", generation).samples, np.float32)
    # sherpa-onnx takes style row n (not n - 1) and runs its own ONNX Runtime build: close, not equal
    assert abs(spoken.size - ours.size) <= 3 * FRAME
    assert logmel_dtw_db(ours, spoken, RATE) < 3.0
    assert len(ids) > 20


def test_build_report_has_every_precision_passing(build: Path) -> None:
    report = json.loads((build / "report.json").read_text())
    rows = {(a["format"], a["precision"]): a for a in report["artifacts"]}
    assert set(rows) == {("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8")}
    assert report["passed"] and all(a["passed"] for a in rows.values()), rows
