"""`voxport plan` (the CI matrix), `voxport verify` (a build dir against its manifest), and the GitHub
workflows that run them."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from voxport.cli import app
from voxport.manifest import read_manifest
from voxport.verify import verify_dir

runner = CliRunner()
RECIPES = Path(__file__).parents[1] / "recipes"


def demo_recipe(
    tmp: Path, model: Path, name: str = "demo-tiny-vits", precisions: str = "[fp32, int8]"
) -> Path:
    """The bundled demo recipe pointed at the session's tiny checkpoint (fewer precisions: faster)."""
    text = (RECIPES / "demo-tiny-vits.yaml").read_text()
    text = text.replace("model: ../build/demo-checkpoint", f"model: {model}")
    text = text.replace("precisions: [fp32, fp16, int8, int4]", f"precisions: {precisions}")
    text = text.replace("name: demo-tiny-vits", f"name: {name}")
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


# --- plan -----------------------------------------------------------------------------------------------
def test_plan_json_is_a_github_actions_matrix(tmp_path: Path, tiny_vits_dir: Path) -> None:
    a = demo_recipe(tmp_path, tiny_vits_dir, "voice-a")
    b = demo_recipe(tmp_path, tiny_vits_dir, "voice-b", precisions="[int4]")
    result = runner.invoke(app, ["plan", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1  # one line, for $GITHUB_OUTPUT
    data = json.loads(result.stdout)
    assert data == {
        "include": [
            {
                "recipe": a.as_posix(),
                "name": "voice-a",
                "out": "build/voice-a",
                "formats": "onnx,gguf",
                "precisions": "fp32,int8",
                "artifacts": 4,
            },
            {
                "recipe": b.as_posix(),
                "name": "voice-b",
                "out": "build/voice-b",
                "formats": "onnx,gguf",
                "precisions": "int4",
                "artifacts": 2,
            },
        ]
    }


def test_plan_of_the_bundled_recipes_and_its_table() -> None:
    files = sorted(map(str, RECIPES.glob("*.yaml")))
    data = json.loads(runner.invoke(app, ["plan", *files, "--json"]).stdout)
    assert {e["name"] for e in data["include"]} >= {"demo-tiny-vits", "joe-medium"}
    result = runner.invoke(app, ["plan", *files, "--out-root", "dist/"])
    assert result.exit_code == 0 and "dist/demo-tiny-vits" in result.stdout


def test_plan_refuses_duplicate_names_and_bad_recipes(tmp_path: Path, tiny_vits_dir: Path) -> None:
    a = demo_recipe(tmp_path, tiny_vits_dir, "same")
    b = tmp_path / "copy.yaml"
    shutil.copy(a, b)
    result = runner.invoke(app, ["plan", str(a), str(b), "--json"])
    assert result.exit_code == 2
    assert "copy.yaml" in result.stderr and "'same'" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\nprecisions: [int3]\nvalidate:\n  ids: [[1]]\n")
    result = runner.invoke(app, ["plan", str(a), str(bad)])
    assert result.exit_code == 2 and "bad.yaml:3" in result.stderr and result.stdout == ""


# --- verify ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real build of the demo recipe (ONNX + GGUF, fp32 + int8), made once for the module."""
    tmp = tmp_path_factory.mktemp("verify")
    out = tmp / "out"
    result = runner.invoke(app, ["build", str(demo_recipe(tmp, tiny_vits_dir)), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def build_copy(built: Path, tmp_path: Path) -> Path:
    """A copy to damage; the module's build stays intact."""
    return Path(shutil.copytree(built, tmp_path / "copy", ignore=shutil.ignore_patterns("stages")))


def test_verify_passes_on_a_fresh_build(built: Path) -> None:
    result = runner.invoke(app, ["verify", str(built), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True and data["problems"] == []
    formats = {f["format"] for f in data["files"]}
    assert formats == {"onnx", "gguf"}
    models = [f for f in data["files"] if f["path"].endswith((".onnx", ".gguf"))]
    assert models and all(f["loads_ok"] is True and f["sha_ok"] is True for f in models)
    sidecars = [f for f in data["files"] if not f["path"].endswith((".onnx", ".gguf"))]
    assert all(f["loads_ok"] is None for f in sidecars)  # hashed, not loaded
    table = runner.invoke(app, ["verify", str(built)])
    assert table.exit_code == 0 and "loads ok" in table.stdout


def test_a_flipped_byte_in_an_onnx_file_is_named(build_copy: Path) -> None:
    onnx = next((build_copy / "onnx").glob("*.int8.onnx"))
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(build_copy)])
    assert result.exit_code == 1
    rel = onnx.relative_to(build_copy).as_posix()
    assert f"{rel}: sha256" in result.stderr
    doc = json.loads(runner.invoke(app, ["verify", str(build_copy), "--json"]).stdout)
    bad = [f for f in doc["files"] if not f["ok"]]
    assert [f["path"] for f in bad] == [rel] and bad[0]["bytes_ok"] is True and bad[0]["sha_ok"] is False


def test_a_truncated_gguf_is_a_size_mismatch_that_does_not_load(build_copy: Path) -> None:
    gguf = next((build_copy / "gguf").glob("*.fp32.gguf"))
    gguf.write_bytes(gguf.read_bytes()[:-1000])
    result = verify_dir(build_copy)
    assert not result.ok
    (check,) = [f for f in result.files if not f.ok]
    assert check.path == gguf.relative_to(build_copy).as_posix()
    assert check.bytes_ok is False and check.sha_ok is None and check.loads_ok is False
    cli = runner.invoke(app, ["verify", str(build_copy), "-q"])
    assert cli.exit_code == 1 and "bytes on disk" in cli.stderr and "does not load as gguf" in cli.stderr


def test_a_deleted_file_is_reported_missing(build_copy: Path) -> None:
    manifest = read_manifest(build_copy)
    victim = manifest.artifacts[0].files[-1].path
    (build_copy / victim).unlink()
    result = runner.invoke(app, ["verify", str(build_copy), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["problems"] == [f"{victim}: missing"]
    assert f"{victim}: missing" in result.stderr


def test_no_or_invalid_manifest_exits_2(build_copy: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["verify", str(tmp_path / "nowhere"), "--json"])
    assert result.exit_code == 2 and "no manifest.json" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 2 and "no manifest.json" in doc["error"]
    (build_copy / "manifest.json").write_text("{not json")
    result = runner.invoke(app, ["verify", str(build_copy)])
    assert result.exit_code == 2 and "corrupt" in result.stderr


# --- workflows ------------------------------------------------------------------------------------------
WORKFLOWS = Path(__file__).parents[1] / ".github" / "workflows"


def load_workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["steps"]


def voxport_commands(run: str) -> list[list[str]]:
    """Every `voxport ...` invocation in a step's shell script, as argument lists (up to a pipe/`)`)."""
    found = []
    for match in re.finditer(r"(?<![\w/.=-])voxport((?:[ \t]+[^\s|;&)]+)+)", run):
        found.append(shlex.split(match.group(1).replace("${{", "X").replace("}}", "X")))
    return found


def check_command(args: list[str]) -> None:
    """The subcommand exists and every --option it is given is one of its options."""
    command = typer.main.get_command(app)  # typer vendors click: duck-type groups (`.commands`)
    path = []
    for arg in args:
        if hasattr(command, "commands") and not arg.startswith("-"):
            assert arg in command.commands, f"voxport {' '.join(args)}: no command {arg!r}"
            command = command.commands[arg]
            path.append(arg)
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for arg in args:
        if arg.startswith("--"):
            assert arg.split("=")[0] in known, f"voxport {' '.join(args)}: no option {arg}"
    assert runner.invoke(app, [*path, "--help"]).exit_code == 0


def test_workflows_run_real_commands() -> None:
    ran = []
    for name in ("ci.yml", "build-recipes.yml", "coreml-macos.yml"):
        for job in load_workflow(name)["jobs"].values():
            for step in steps(job):
                for args in voxport_commands(step.get("run", "")):
                    check_command(args)
                    ran.append(args[0])
    assert {"plan", "build", "demo", "import"} <= set(ran)


def test_ci_runs_the_repo_entry_point() -> None:
    ci = load_workflow("ci.yml")
    (job,) = ci["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps(job))
    assert any(s.get("run") == ".ci/run" for s in steps(job))
    assert (Path(__file__).parents[1] / ".ci" / "run").is_file()


def test_build_recipes_workflow_shape() -> None:
    wf = load_workflow("build-recipes.yml")
    plan_job, build_job = wf["jobs"]["plan"], wf["jobs"]["build"]
    assert "voxport plan recipes/*.yaml --json" in " ".join(s.get("run", "") for s in steps(plan_job))
    assert plan_job["outputs"]["matrix"] == "${{ steps.plan.outputs.matrix }}"
    assert build_job["needs"] == "plan"
    assert build_job["strategy"] == {
        "fail-fast": False,
        "matrix": "${{ fromJSON(needs.plan.outputs.matrix) }}",
    }
    runs = [s.get("run", "") for s in steps(build_job)]
    install = next(r for r in runs if "pip install" in r)
    assert install.index("torch==2.13.0") < install.index("pip install -e")
    assert any(
        "voxport build ${{ matrix.recipe }} --out ${{ matrix.out }} --cache-dir .voxport-cache" in r
        for r in runs
    )
    uses = {s.get("uses", "").split("@")[0]: s for s in steps(build_job)}
    assert uses["actions/cache/restore"]["with"]["path"] == ".voxport-cache"
    assert "hashFiles('recipes/**')" in uses["actions/cache/restore"]["with"]["key"]  # bases too
    assert "steps.version.outputs.voxport" in uses["actions/cache/restore"]["with"]["key"]
    upload = uses["actions/upload-artifact"]
    assert upload["if"] == "always()" and "${{ matrix.out }}" in upload["with"]["path"]


def test_coreml_workflow_runs_the_predict_tests_on_macos() -> None:
    (job,) = load_workflow("coreml-macos.yml")["jobs"].values()
    assert job["runs-on"] == "macos-14"
    runs = " ".join(s.get("run", "") for s in steps(job))
    assert "pytest -m coreml_predict -q" in runs and "torch==2.13.0" in runs


def test_phrase_audio_is_verified_and_must_decode(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from voxport.manifest import ArtifactFile, Manifest, ModelInfo, write_manifest

    wav = tmp_path / "phrases" / "00-hi.wav"
    wav.parent.mkdir()
    sf.write(wav, np.zeros(800, dtype=np.float32), 16000)
    (tmp_path / "phrases" / "index.json").write_text("[]")
    manifest = Manifest(
        voxport_version="0",
        recipe={"name": "p"},
        model=ModelInfo(family="vits", source="m", parameters=1),
        phrases=[
            ArtifactFile.from_path(tmp_path, "phrases/00-hi.wav", "hi"),
            ArtifactFile.from_path(tmp_path, "phrases/index.json", "index"),
        ],
        passed=True,
    )
    write_manifest(tmp_path, manifest)
    result = verify_dir(tmp_path)
    assert result.ok and [f.loads_ok for f in result.files] == [True, None]
    wav.write_bytes(b"RIFF" + bytes(wav.stat().st_size - 4))  # same size, not audio any more
    result = verify_dir(tmp_path)
    problems = result.problems()
    assert problems[0].startswith("phrases/00-hi.wav: sha256")
    assert problems[1].startswith("phrases/00-hi.wav: does not load as phrases")
    assert result.files[0].loads_ok is False and result.files[1].ok
