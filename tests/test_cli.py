"""The `voxport` command as users run it: exit codes, one-line errors, tables and JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voxport.cli import app

runner = CliRunner()


def write_recipe(path: Path, model: Path, extra: str = "", precisions: str = "[fp32, int8]") -> Path:
    path.write_text(
        f"name: cli-tiny\nmodel: {model}\nformats: [onnx]\nprecisions: {precisions}\n"
        'validate:\n  texts: ["hello there."]\n  thresholds:\n    forced_snr_db: 3\n' + extra
    )
    return path


def test_build_prints_a_table_and_json(tiny_vits_dir: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    result = runner.invoke(app, ["build", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "int8" in result.output and "pass" in result.output
    result = runner.invoke(app, ["validate", str(recipe), "--out", str(tmp_path / "out"), "--json", "-q"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["passed"] is True and len(data["artifacts"]) == 2


@pytest.fixture(scope="module")
def int4_build(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe, out) of one int4 ONNX build, shared by the tests that read it or judge it again."""
    tmp = tmp_path_factory.mktemp("cli_int4")
    recipe = write_recipe(tmp / "r.yaml", tiny_vits_dir, precisions="[int4]")
    result = runner.invoke(app, ["build", str(recipe), "--out", str(tmp / "o"), "-q"])
    assert result.exit_code == 0, result.output
    return recipe, tmp / "o"


def test_parity_miss_exits_1(int4_build: tuple[Path, Path], tmp_path: Path) -> None:
    """A threshold the int4 artifact misses: exit 1, naming the metric. Thresholds change only the
    verdict, so every unit (the measurement too) is restored from the shared build's stage cache."""
    recipe, out = int4_build
    strict = tmp_path / "r.yaml"
    strict.write_text(recipe.read_text().replace("forced_snr_db: 3", "forced_snr_db: 80"))
    cache = str(out / "stages" / "cache")
    result = runner.invoke(app, ["build", str(strict), "--out", str(tmp_path / "out"), "--cache-dir", cache])
    assert result.exit_code == 1
    assert "validate onnx int4: cached" in result.stderr and "forced_snr_db" in result.stderr


def test_inspect_checkpoint_and_artifact(tiny_vits_dir: Path, int4_build: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["inspect", str(tiny_vits_dir), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["family"] == "vits" and info["parameters"] > 400_000
    assert info["bits_per_weight"] == pytest.approx(32.0)
    _, out = int4_build
    result = runner.invoke(app, ["inspect", str(out / "onnx" / "cli-tiny.int4.onnx"), "--json"])
    info = json.loads(result.stdout)
    assert info["metadata"]["precision"] == "int4" and info["opset"] >= 21
    assert "INT4" in info["parameters_by_precision"] and 4 < info["bits_per_weight"] < 12
    assert info["dequantize_nodes"] > 10


def _one_error_line(result) -> str:  # noqa: ANN001
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing-checkpoint", "checkpoint not found"),
        ("corrupt-checkpoint", "not a readable safetensors"),
        ("unknown-architecture", "unknown architecture"),
        ("unknown-key", "r.yaml:3: validate.textz: unknown key"),
        ("wrong-type", "r.yaml:3: precisions[0]"),
        ("unwritable-out", "not writable"),
        ("empty-text", "validate.texts[0]"),
        ("pickle", "--trust-pickle"),
        ("coreml-int4-ios17", "int4 blockwise needs iOS18/macOS15/watchOS11"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_artifact(
    case: str, expect: str, tiny_vits_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_vits_dir, model)
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    write_recipe(recipe, model)
    if case == "missing-checkpoint":
        write_recipe(recipe, tmp_path / "nope")
    elif case == "corrupt-checkpoint":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "unknown-architecture":
        (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    elif case == "unknown-key":
        recipe.write_text(f"model: {model}\nvalidate:\n  textz: [hi]\nname: x\n")
    elif case == "wrong-type":
        recipe.write_text(f"name: x\nmodel: {model}\nprecisions: [int3]\nvalidate:\n  ids: [[1, 2]]\n")
    elif case == "unwritable-out":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "sub"
    elif case == "empty-text":
        recipe.write_text(f"name: x\nmodel: {model}\nvalidate:\n  texts: ['   ']\n")
    elif case == "pickle":
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
        (model / "model.safetensors").unlink()
    elif case == "coreml-int4-ios17":
        text = recipe.read_text().replace("formats: [onnx]", "formats: [onnx, coreml]")
        text = text.replace("precisions: [fp32, int8]", "precisions: [fp32, int4]")
        recipe.write_text(text + "export:\n  coreml: {target: iOS17}\n")
    result = runner.invoke(app, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert expect in _one_error_line(result)
    assert not list(tmp_path.rglob("*.onnx"))


def test_recipes_check_and_schema(tmp_path: Path) -> None:
    bundled = sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.yaml"))
    assert bundled
    assert runner.invoke(app, ["recipes", "check", *map(str, bundled)]).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\nquantize:\n  blok_size: 32\nvalidate:\n  ids: [[1]]\n")
    result = runner.invoke(app, ["recipes", "check", str(bad)])
    assert result.exit_code == 2 and "bad.yaml:4: quantize.blok_size" in result.stderr
    schema = json.loads(runner.invoke(app, ["recipes", "schema"]).stdout)
    assert "validate" in schema["properties"]


def test_console_script_usage_error_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from voxport.cli import main; main()", "build"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Missing argument" in result.stderr
