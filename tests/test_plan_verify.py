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


def test_a_damaged_model_file_of_each_built_format_does_not_load(build_copy: Path) -> None:
    """Every format in a fresh build's manifest has a loader that runs (test_verify_passes_on_a_fresh_build:
    loads_ok True): cutting each loaded file in half makes exactly that file `loads_ok` False. Core ML
    packages are loaded by verify in test_pipeline_coreml.py::test_verify_loads_every_package."""
    loaded = [f for f in verify_dir(build_copy).files if f.loads_ok is True]
    formats = {f.format for f in loaded}
    assert formats == {a.format for a in read_manifest(build_copy).artifacts}
    for fmt in sorted(formats):
        victim = next(f.path for f in loaded if f.format == fmt)
        data = (build_copy / victim).read_bytes()
        (build_copy / victim).write_bytes(data[: len(data) // 2])
        bad = [f for f in verify_dir(build_copy).files if f.loads_ok is False]
        assert [f.path for f in bad] == [victim], fmt
        (build_copy / victim).write_bytes(data)


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


def test_ci_runs_make_test_through_the_repo_entry_point() -> None:
    """CI runs `.ci/run`, and `.ci/run` runs `make test`: CI and the README's command are one command."""
    (job,) = load_workflow("ci.yml")["jobs"].values()
    assert [s["run"] for s in steps(job) if "run" in s] == [".ci/run"]
    script = (Path(__file__).parents[1] / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert "make test" in commands


def test_build_jobs_read_only_keys_that_plan_emits() -> None:
    """Every `matrix.KEY` the build workflow reads is a key of each row `voxport plan --json` emits for the
    bundled recipes, and the job's matrix is the plan job's output."""
    wf = load_workflow("build-recipes.yml")
    text = (WORKFLOWS / "build-recipes.yml").read_text()
    read = set(re.findall(r"\bmatrix\.([A-Za-z_][\w-]*)", text))
    assert read, "the build job reads nothing from its matrix"
    files = sorted(map(str, RECIPES.glob("*.yaml")))
    rows = json.loads(runner.invoke(app, ["plan", *files, "--json"]).stdout)["include"]
    assert rows and all(read <= set(row) for row in rows), read - set(rows[0])
    assert "needs.plan.outputs.matrix" in wf["jobs"]["build"]["strategy"]["matrix"]
    plan_runs = " ".join(s.get("run", "") for s in steps(wf["jobs"]["plan"]))
    assert any(args[0] == "plan" and "--json" in args for args in voxport_commands(plan_runs))


def test_build_jobs_restore_and_save_the_cache_dir_they_build_with() -> None:
    """The stage cache the build writes (--cache-dir) is the directory the cache steps restore and save,
    so a rebuild in CI starts from the previous run's stages."""
    (build,) = [j for j in load_workflow("build-recipes.yml")["jobs"].values() if "strategy" in j]
    builds = [a for s in steps(build) for a in voxport_commands(s.get("run", "")) if a[0] == "build"]
    (args,) = builds
    cache_dir = args[args.index("--cache-dir") + 1]
    cached = [s["with"]["path"] for s in steps(build) if s.get("uses", "").startswith("actions/cache/")]
    assert cached and set(cached) == {cache_dir}


def test_the_macos_job_selects_tests_that_exist() -> None:
    """The marker the macOS job selects with `pytest -m` is registered and marks at least one test."""
    import tomllib

    (job,) = load_workflow("coreml-macos.yml")["jobs"].values()
    runs = " ".join(s.get("run", "") for s in steps(job))
    markers = re.findall(r"\bpytest\b[^\n]*?-m\s+(\w+)", runs)
    assert markers
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    registered = {m.split(":")[0] for m in config["tool"]["pytest"]["ini_options"]["markers"]}
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for marker in markers:
        assert marker in registered and f"@pytest.mark.{marker}\n" in sources, marker


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
