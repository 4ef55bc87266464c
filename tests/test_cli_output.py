"""What every command prints: one JSON document on stdout with --json, nothing on stderr with --quiet,
progress rendered through `voxport.progress` (bars on a terminal, lines in a log)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from voxport import cli
from voxport.cli import app
from voxport.progress import LineProgress, NullProgress, RichProgress

runner = CliRunner()
MAIN = [sys.executable, "-c", "from voxport.cli import main; main()"]


def run_main(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script in a child process: real, separate stdout and stderr file descriptors, so
    anything a library writes to fd 1 behind Python's back would show up and break the JSON."""
    return subprocess.run(
        [*MAIN, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )


def json_doc(result: Any) -> Any:
    """stdout must be exactly one JSON document."""
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def staged(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each stage command run once with --json on a one-artifact recipe; their documents by stage."""
    tmp = tmp_path_factory.mktemp("cli_output")
    recipe = tmp / "r.yaml"
    recipe.write_text(
        f"name: out-tiny\nmodel: {tiny_vits_dir}\nformats: [onnx]\nprecisions: [fp32]\n"
        'validate:\n  texts: ["hello."]\n  thresholds:\n    forced_snr_db: 3\n'
    )
    out = tmp / "out"
    docs: dict[str, Any] = {"recipe": recipe, "out": out, "tmp": tmp}
    for stage in ("convert", "quantize", "export", "validate"):
        result = runner.invoke(app, [stage, str(recipe), "--out", str(out), "--json", "--quiet"])
        assert result.exit_code == 0, (stage, result.output)
        assert result.stderr == "", stage
        docs[stage] = json_doc(result)
    return docs


def test_stage_commands_print_one_json_document(staged: dict[str, Any]) -> None:
    out = staged["out"]
    convert = staged["convert"]
    assert convert["stage"] == "convert" and convert["family"] == "vits" and convert["parameters"] > 400_000
    assert Path(convert["checkpoint"]).is_dir()
    quantize = staged["quantize"]
    assert quantize["precisions"] == ["fp32"] and Path(quantize["files"]["fp32"]).is_file()
    export = staged["export"]
    assert [(a["format"], a["precision"]) for a in export["artifacts"]] == [("onnx", "fp32")]
    assert (out / export["artifacts"][0]["path"]).is_file()
    validate = staged["validate"]
    assert validate["passed"] is True and validate["artifacts"][0]["parity"]["passed"] is True
    assert {"voxport_version", "recipe", "model", "tool_versions"} <= set(validate)


# slow (~37 s: a whole build in a subprocess); the in-process build --json is
# test_cli.py::test_build_prints_a_table_and_json, and cache hits are test_cache.py's
@pytest.mark.slow
def test_build_json_in_a_real_process_from_a_cache(staged: dict[str, Any], tmp_path: Path) -> None:
    """Fast variant of the test below: the console script with the stage cache the module's staged run
    filled, so nothing is recomputed. stdout is one JSON document; --cache-dir and VOXPORT_CACHE_DIR are
    where units are restored from; --quiet leaves stderr empty. (A real process computing every stage
    with a clean stdout: test_cache.py's SIGKILL fast variant.)"""
    cache = Path(shutil.copytree(staged["out"] / "stages" / "cache", tmp_path / "cache"))
    args = ["build", str(staged["recipe"]), "--out", str(tmp_path / "b"), "--json"]
    result = run_main(*args, "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    assert json_doc(result)["passed"] is True
    assert "export onnx fp32: cached" in result.stderr and "validate onnx fp32: cached" in result.stderr
    assert "\x1b[" not in result.stderr and "━" not in result.stderr
    again = run_main(*args, "--quiet", env={"VOXPORT_CACHE_DIR": str(cache)})
    assert again.returncode == 0 and again.stderr == ""
    assert json_doc(again)["artifacts"][0]["sha256"] == json_doc(result)["artifacts"][0]["sha256"]


@pytest.mark.slow  # two real-process builds, the first computing every stage (154 s on the loaded box)
def test_build_json_in_a_real_process_has_a_clean_stdout(staged: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["build", str(staged["recipe"]), "--out", str(tmp_path / "b"), "--json"]
    result = run_main(*args, "--cache-dir", str(cache))
    assert result.returncode == 0, result.stderr
    assert json_doc(result)["passed"] is True
    assert "validate" in result.stderr  # progress lines (not a terminal: timed lines, no bars)
    assert "\x1b[" not in result.stderr and "━" not in result.stderr
    assert any(cache.rglob("entry.json"))  # --cache-dir is where the stage cache went
    # the env var is --cache-dir's default; --quiet leaves stderr empty
    again = run_main(*args, "--quiet", env={"VOXPORT_CACHE_DIR": str(cache)})
    assert again.returncode == 0 and again.stderr == ""
    assert json_doc(again)["artifacts"][0]["sha256"] == json_doc(result)["artifacts"][0]["sha256"]


def test_build_force_recomputes(staged: dict[str, Any]) -> None:
    result = runner.invoke(app, ["build", str(staged["recipe"]), "--out", str(staged["out"]), "--force"])
    assert result.exit_code == 0, result.output
    assert "pass" in result.stdout and "validate" in result.stderr


def test_inspect_say_verify_plan_json(staged: dict[str, Any], tiny_vits_dir: Path) -> None:
    out, tmp = staged["out"], staged["tmp"]
    artifact = out / staged["export"]["artifacts"][0]["path"]
    info = json_doc(runner.invoke(app, ["inspect", str(artifact), "--json", "-q"]))
    assert info["metadata"]["precision"] == "fp32"
    result = runner.invoke(
        app, ["say", str(artifact), "--ids", "1,2,3,4", "-o", str(tmp / "s.wav"), "--json"]
    )
    assert result.exit_code == 0, result.output
    said = json_doc(result)
    assert said["output"] == str(tmp / "s.wav") and said["sample_rate"] > 0 and said["seconds"] > 0
    # a one-piece voice: the first audio is the whole synthesis, which the clock must cover
    assert said["chunks"] >= 1 and said["first_audio_ms"] > 0 and said["real_time_factor"] > 0
    verified = json_doc(runner.invoke(app, ["verify", str(out), "--json"]))
    assert verified["passed"] is True and {"out", "files", "problems"} <= set(verified)
    plan = json_doc(runner.invoke(app, ["plan", str(staged["recipe"]), "--json"]))
    assert plan["include"][0]["name"] == "out-tiny"


def test_demo_import_and_recipes_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", str(tmp_path / "ckpt"), "--json"])
    assert result.exit_code == 0 and "wrote" in result.stderr
    assert json_doc(result) == {"checkpoint": str(tmp_path / "ckpt"), "seed": 0, "family": "vits"}
    assert runner.invoke(app, ["demo", str(tmp_path / "c2"), "-q"]).stderr == ""
    result = runner.invoke(app, ["demo", str(tmp_path / "p"), "--family", "pocket_tts", "--json", "-q"])
    assert json_doc(result)["family"] == "pocket_tts" and (tmp_path / "p" / "config.yaml").is_file()
    result = runner.invoke(app, ["demo", str(tmp_path / "x"), "--family", "tacotron", "--json"])
    assert result.exit_code == 2 and "unknown demo family" in json_doc(result)["error"]

    result = runner.invoke(app, ["import", "piper", "no-such-voice", "--out", str(tmp_path / "v"), "--json"])
    assert result.exit_code == 2 and "no installed voice package" in result.stderr
    doc = json_doc(result)
    assert doc["exit_code"] == 2 and "no installed voice package" in doc["error"]

    recipes = sorted(map(str, (Path(__file__).parents[1] / "recipes").glob("*.yaml")))
    doc = json_doc(runner.invoke(app, ["recipes", "check", *recipes, "--json"]))
    assert doc["passed"] is True and all(r["ok"] and r["name"] for r in doc["recipes"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\nformats: [onnx, tflite]\n")
    result = runner.invoke(app, ["recipes", "check", recipes[0], str(bad), "--json"])
    assert result.exit_code == 2
    doc = json_doc(result)
    assert doc["exit_code"] == 2 and [r["ok"] for r in doc["recipes"]] == [True, False]
    assert "bad.yaml:3" in doc["recipes"][1]["error"]

    schema = json_doc(runner.invoke(app, ["recipes", "schema", "--json", "-q"]))
    assert "properties" in schema


def test_recipe_error_with_json_prints_an_error_document(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\nquantize:\n  blok_size: 32\nvalidate:\n  ids: [[1]]\n")
    for command in ("build", "convert", "quantize", "export", "validate"):
        result = runner.invoke(app, [command, str(bad), "--json"])
        assert result.exit_code == 2, command
        doc = json_doc(result)
        assert doc["exit_code"] == 2 and "bad.yaml:4: quantize.blok_size" in doc["error"], command


def test_usage_error_with_json_still_prints_json() -> None:
    result = run_main("build", "--json")
    assert result.returncode == 2 and "Missing argument" in result.stderr
    assert json_doc(result)["exit_code"] == 2


def _all_commands() -> list[list[str]]:
    """Every leaf command of the CLI, read from the app itself so a new command cannot be missed."""
    import typer

    found: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        children = getattr(command, "commands", None)
        if children is None:
            found.append(path)
            return
        for name, child in children.items():
            walk(child, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def test_every_command_takes_json_and_quiet_and_has_an_example() -> None:
    commands = _all_commands()
    stages = [["build"], ["convert"], ["quantize"], ["export"], ["validate"]]
    assert {"plan", "verify", "say", "inspect", "demo"} <= {c[0] for c in commands}
    assert all(stage in commands for stage in stages)
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, command
        assert "--json" in result.stdout and "--quiet" in result.stdout, command
        assert "Example: voxport" in result.stdout, command
    for command in stages:
        help_text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).stdout
        assert "--force" in help_text and "--cache-dir" in help_text, command


# --- progress renderers -----------------------------------------------------------------------------------
def test_the_cli_picks_the_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    with cli._progress(True) as progress:
        assert isinstance(progress, NullProgress)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with cli._progress(False) as progress:
        assert isinstance(progress, LineProgress)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with cli._progress(False) as progress:
        assert isinstance(progress, RichProgress)


def test_rich_progress_prints_logs_above_and_cleans_up() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    with RichProgress(console) as progress:
        progress.log("prune: dropped text_encoder layers [1, 3] → [fp16]")
        with progress.task("quantize int8", total=3) as advance:
            for _ in range(3):
                advance(1)
    text = buffer.getvalue()
    assert "prune: dropped text_encoder layers [1, 3] → [fp16]" in text  # not eaten as markup
    assert "quantize int8 (3/3) done in" in text
    # a task outside `with` starts and stops the display itself
    standalone = RichProgress(console)
    with pytest.raises(RuntimeError), standalone.task("boom"):
        raise RuntimeError
    assert not standalone._running
