"""The stage cache: unchanged rebuilds compute nothing, a changed option re-runs only what depends on it,
`--force` recomputes, and a build killed with SIGKILL at any point resumes to the same bytes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voxport import pipeline
from voxport.cache import SOURCE_ROOT, StageCache, stage_key
from voxport.export.registry import formats, get_format
from voxport.families.registry import families
from voxport.manifest import read_manifest, verify_files
from voxport.pipeline import stage_fingerprint
from voxport.quantize.methods import method_class
from voxport.recipe import Recipe, load_recipe

TEXTS = ["hello world, this is voxport."]


def make_recipe(model_dir: Path, **overrides: object) -> Recipe:
    data: dict[str, object] = {
        "name": "tiny",
        "model": str(model_dir),
        "formats": ["onnx", "gguf"],
        "precisions": ["fp32", "int4"],
        "validate": {"texts": TEXTS, "thresholds": {"logmel_dtw_db": 15}},
    }
    data.update(overrides)
    return Recipe.from_mapping(data, model_dir)


def run(recipe: Recipe, out: Path, **kwargs: object) -> tuple[list[str], object]:
    lines: list[str] = []
    manifest = pipeline.build(recipe, out, lines.append, **kwargs)  # type: ignore[arg-type]
    return lines, manifest


def cached_units(lines: list[str]) -> set[str]:
    return {line.removesuffix(": cached") for line in lines if line.endswith(": cached")}


@pytest.fixture(scope="module")
def first(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], object]:
    out = tmp_path_factory.mktemp("cache") / "out"
    lines, manifest = run(make_recipe(tiny_vits_dir), out)
    return out, lines, manifest


ALL_UNITS = {
    "convert",
    "quantize fp32",
    "quantize int4",
    "export onnx fp32",
    "export gguf fp32",
    "export onnx int4",
    "export gguf int4",
    "reference audio",
    "validate onnx fp32",
    "validate gguf fp32",
    "validate onnx int4",
    "validate gguf int4",
}


def test_unchanged_rebuild_does_no_work(first: tuple[Path, list[str], object], tiny_vits_dir: Path) -> None:
    out, lines, manifest = first
    assert cached_units(lines) == set()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "onnx").iterdir()}
    again, manifest2 = run(make_recipe(tiny_vits_dir), out)
    assert cached_units(again) == ALL_UNITS
    # no unit ran: no conversion, quantization, export or synthesis line, only restores and verdicts
    work = ("convert:", "prune:", "quantize:", "export: ", "validate: reference", "phrases")
    assert not [line for line in again if line.startswith(work) and not line.endswith(": cached")], again
    assert {p: p.stat().st_mtime_ns for p in (out / "onnx").iterdir()} == mtimes  # not even rewritten
    assert [a.sha256 for a in manifest2.artifacts] == [a.sha256 for a in manifest.artifacts]  # type: ignore[attr-defined]
    assert read_manifest(out).artifacts[0].parity.metrics == manifest.artifacts[0].parity.metrics  # type: ignore[attr-defined]


def test_export_option_change_reruns_only_export_and_validate(
    first: tuple[Path, list[str], object], tiny_vits_dir: Path, tmp_path: Path
) -> None:
    out, _, _ = first
    work = tmp_path / "out"
    shutil.copytree(out, work)
    recipe = make_recipe(tiny_vits_dir, export={"gguf": {"types": {"int4": {"*": "Q4_K"}}}})
    lines, manifest = run(recipe, work)
    recomputed = ALL_UNITS - cached_units(lines)
    assert recomputed == {"export gguf int4", "validate gguf int4"}
    gguf_int4 = next(a for a in manifest.artifacts if a.format == "gguf" and a.precision == "int4")  # type: ignore[attr-defined]
    assert gguf_int4.bits_per_weight > 4.5  # Q4_K, not Q4_0: the change took effect


def test_threshold_change_reruns_nothing_but_changes_the_verdict(
    first: tuple[Path, list[str], object], tiny_vits_dir: Path, tmp_path: Path
) -> None:
    out, _, _ = first
    work = tmp_path / "out"
    shutil.copytree(out, work)
    recipe = make_recipe(tiny_vits_dir, validate={"texts": TEXTS, "thresholds": {"logmel_dtw_db": 0.001}})
    lines, manifest = run(recipe, work)
    assert cached_units(lines) == ALL_UNITS
    assert not manifest.passed  # type: ignore[attr-defined]
    assert manifest.artifacts[0].parity.passed  # type: ignore[attr-defined] # fp32 ONNX is exact


def test_force_recomputes_everything(
    first: tuple[Path, list[str], object], tiny_vits_dir: Path, tmp_path: Path
) -> None:
    out, _, manifest = first
    work = tmp_path / "out"
    shutil.copytree(out, work)
    lines, forced = run(make_recipe(tiny_vits_dir, precisions=["fp32"], formats=["gguf"]), work, force=True)
    assert cached_units(lines) == set()
    assert forced.artifacts[0].sha256 == next(  # type: ignore[attr-defined]
        a.sha256
        for a in manifest.artifacts
        if a.format == "gguf" and a.precision == "fp32"  # type: ignore[attr-defined]
    )


def test_shared_cache_dir_serves_another_output_dir(
    first: tuple[Path, list[str], object], tiny_vits_dir: Path, tmp_path: Path
) -> None:
    out, _, manifest = first
    lines, other = run(make_recipe(tiny_vits_dir), tmp_path / "elsewhere", cache_dir=out / "stages" / "cache")
    assert cached_units(lines) == ALL_UNITS
    assert verify_files(tmp_path / "elsewhere", other) == []  # type: ignore[arg-type]
    assert [a.sha256 for a in other.artifacts] == [a.sha256 for a in manifest.artifacts]  # type: ignore[attr-defined]


def test_incomplete_cache_entry_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.bin").write_bytes(b"abc")
    cache = StageCache(tmp_path / "cache")
    key = stage_key("t", {"x": 1})
    cache.put(key, "t", tmp_path / "out", ["a.bin"], {"ok": True})
    assert cache.get(key) is not None
    (cache.root / key[:2] / key / "files" / "a.bin").unlink()  # e.g. a half-pruned CI cache
    assert cache.get(key) is None
    assert stage_key("t", {"x": 1}) != stage_key("t", {"x": 2}) != stage_key("t", {"x": 1}, ["in"])


# --- SIGKILL ------------------------------------------------------------------------------------------
def _cli_build(recipe_path: Path, out: Path, *, json_stdout: bool = False) -> subprocess.Popen[str]:
    """`voxport build` in its own process; with `json_stdout`, `--json` and stdout piped to the test."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "voxport", "build", str(recipe_path), "--out", str(out)]
        + (["--json"] if json_stdout else []),
        stdout=subprocess.PIPE if json_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _kill_when(proc: subprocess.Popen[str], marker: str, delay: float) -> list[str]:
    """SIGKILL the build `delay` s after a progress line containing `marker` (i.e. mid-unit)."""
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line.rstrip())
        if marker in line:
            time.sleep(delay)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return seen


def _no_finished_looking_broken_artifact(out: Path) -> None:
    """After a kill: no manifest (the build did not finish), and every file under its final name is whole."""
    assert not (out / "manifest.json").exists()
    import onnx

    from voxport.export.gguf.reader import read_gguf

    for path in out.rglob("*.onnx"):
        if ".tmp-" not in path.name:
            onnx.checker.check_model(str(path))
    for path in out.rglob("*.gguf"):
        if ".tmp-" not in path.name:
            read_gguf(path)


def test_a_build_sigkilled_mid_export_resumes_to_identical_bytes(
    first: tuple[Path, list[str], object], tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """Fast variant of the test below: one kill, mid-export, on a one-artifact recipe. The resumed ONNX
    fp32 artifact has the bytes of the same artifact in the clean full build. With --json, stdout stays
    clean while every stage computes in a real process: empty up to the kill, then exactly one document
    (a library writing to fd 1 behind Python's back would break the JSON)."""
    _, _, clean = first
    recipe_path = tmp_path / "tiny.yaml"
    recipe = make_recipe(tiny_vits_dir, formats=["onnx"], precisions=["fp32"])
    recipe_path.write_text(json.dumps(recipe.model_dump(mode="json", by_alias=True, exclude_none=True)))
    out = tmp_path / "out"
    killed = _cli_build(recipe_path, out, json_stdout=True)
    seen = _kill_when(killed, "export: onnx fp32", 0.5)
    assert any("export: onnx fp32" in line for line in seen), seen
    assert killed.stdout is not None and killed.stdout.read() == ""
    _no_finished_looking_broken_artifact(out)
    final = _cli_build(recipe_path, out, json_stdout=True)
    stdout, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    assert "convert: cached" in err
    assert json.loads(stdout)["passed"] is True
    resumed = read_manifest(out)
    assert verify_files(out, resumed) == []
    expected = {(a.format, a.precision): a.sha256 for a in clean.artifacts}  # type: ignore[attr-defined]
    assert [(a.format, a.precision, a.sha256) for a in resumed.artifacts] == [
        ("onnx", "fp32", expected["onnx", "fp32"])
    ]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name and "cache" not in p.parts]


@pytest.mark.slow  # ~4 CLI builds (265 s on the loaded 2-core box); the fast variant above kills once
def test_sigkilled_builds_resume_to_identical_artifacts(
    first: tuple[Path, list[str], object], tiny_vits_dir: Path, tmp_path: Path
) -> None:
    _, _, clean = first
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(
        json.dumps(make_recipe(tiny_vits_dir).model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    out = tmp_path / "out"
    # kill in convert's aftermath, mid-export, mid-validate: each resumed run picks up from there
    for marker, delay in (("convert:", 0.3), ("export: onnx fp32", 0.5), ("validate: onnx int4", 0.2)):
        seen = _kill_when(_cli_build(recipe_path, out), marker, delay)
        assert any(marker in line for line in seen), seen
        _no_finished_looking_broken_artifact(out)
    final = _cli_build(recipe_path, out)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err
    assert "convert: cached" in err and "export onnx fp32: cached" in err
    resumed = read_manifest(out)
    assert verify_files(out, resumed) == []
    assert [a.sha256 for a in resumed.artifacts] == [a.sha256 for a in clean.artifacts]  # type: ignore[attr-defined]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name and "cache" not in p.parts]


def test_prune_cache_keeps_exactly_what_the_build_used(
    first: tuple[Path, list[str], object], tiny_vits_dir: Path, tmp_path: Path
) -> None:
    out, _, _ = first
    work = tmp_path / "out"
    shutil.copytree(out, work)
    cache = work / "stages" / "cache"
    before = {p.name for p in cache.glob("*/*") if p.is_dir()}
    changed = make_recipe(tiny_vits_dir, export={"gguf": {"types": {"int4": {"*": "Q4_K"}}}})
    lines, _ = run(changed, work, prune_cache=True)
    after = {p.name for p in cache.glob("*/*") if p.is_dir()}
    assert len(after) == len(ALL_UNITS)  # one entry per unit of this build, nothing else
    assert len(before - after) == 2  # the old gguf int4 export and its validation are gone
    assert any(line.startswith("cache: pruned 2 unused entries") for line in lines), lines
    # the original recipe now misses exactly those two units again
    again, _ = run(make_recipe(tiny_vits_dir), work)
    assert ALL_UNITS - cached_units(again) == {"export gguf int4", "validate gguf int4"}


# --- per-stage code fingerprints ---------------------------------------------------------------------
def _source_copy(where: Path, edit: str | None = None, *, inside: str | None = None) -> Path:
    """A copy of the voxport package under `where` (the directory to hash), with `edit` (a path inside
    voxport/) changed: a comment appended, or, with `inside`, a comment line inserted after the line
    that starts with `inside` (a def, so the change lands inside that function's source)."""
    shutil.copytree(
        SOURCE_ROOT / "voxport", where / "voxport", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    if edit is not None:
        path = where / "voxport" / edit
        text = path.read_text(encoding="utf-8")
        if inside is None:
            text += "\n# edited\n"
        else:
            head, sep, tail = text.partition(inside)
            assert sep, f"{inside!r} not in {edit}"
            line_end = tail.index("\n") + 1
            text = head + sep + tail[:line_end] + "        # edited\n" + tail[line_end:]
        path.write_text(text, encoding="utf-8")
    return where


def _fingerprints(source: Path) -> dict[str, str]:
    """Every stage's code fingerprint for a VITS build into every format, from the source at `source`."""
    family = families()["vits"]
    found = {
        "convert": stage_fingerprint("convert", family, source=source),
        "quantize": stage_fingerprint("quantize", None, method_class("rtn"), source=source),
        "reference": stage_fingerprint("reference", family, source=source),
        "phrases": stage_fingerprint("phrases", family, source=source),
    }
    for fmt in formats():
        adapter = get_format(fmt)
        found[f"export {fmt}"] = stage_fingerprint("export", family, adapter, source=source)
        found[f"validate {fmt}"] = stage_fingerprint("validate", family, adapter, source=source)
    return found


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


@pytest.fixture(scope="module")
def unedited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _fingerprints(_source_copy(tmp_path_factory.mktemp("src")))


def test_fingerprints_depend_on_the_code_not_where_it_lives(unedited: dict[str, str]) -> None:
    assert _fingerprints(SOURCE_ROOT) == unedited
    assert len(set(unedited.values())) == len(unedited)  # each stage runs different code


def test_report_edit_changes_no_stage_fingerprint(unedited: dict[str, str], tmp_path: Path) -> None:
    """The report is rendered on every build: an edit to it must not throw away any cached unit."""
    edited = _fingerprints(_source_copy(tmp_path, "validate/report_html.py"))
    assert _changed(unedited, edited) == set()


def test_gguf_writer_edit_changes_only_gguf_export_and_validate(
    unedited: dict[str, str], tmp_path: Path
) -> None:
    edited = _fingerprints(_source_copy(tmp_path, "export/gguf/writer.py"))
    assert _changed(unedited, edited) == {"export gguf", "validate gguf"}


def test_a_stage_is_keyed_on_its_own_code_in_the_pipeline_module(
    unedited: dict[str, str], tmp_path: Path
) -> None:
    """pipeline.py holds every stage: an edit inside validate's unit changes validate's fingerprints
    only, and one in a helper it calls (the synthesis settings) changes the stages that call it."""
    edited = _fingerprints(_source_copy(tmp_path / "a", "pipeline.py", inside="    def _run_measure("))
    assert _changed(unedited, edited) == {f"validate {fmt}" for fmt in formats()}
    edited = _fingerprints(_source_copy(tmp_path / "b", "pipeline.py", inside="def settings_for("))
    # quantize too: its unit hands calibrated methods the synthesis settings (calibration_set)
    assert _changed(unedited, edited) == {"reference", "quantize", *(f"validate {fmt}" for fmt in formats())}


def _voxport_cli(src: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    env.pop("VOXPORT_CACHE_DIR", None)  # the cache is the build's own (OUT/stages/cache)
    return subprocess.run(
        [sys.executable, "-m", "voxport", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_rebuild_after_a_report_edit_restores_every_unit(tmp_path: Path) -> None:
    """A real `voxport build` of the demo recipe, run from a copy of the code; after an edit to the report
    renderer, the rebuild restores every unit from the cache, and the page shows the edit."""
    src = _source_copy(tmp_path / "src")
    probe = subprocess.run(
        [sys.executable, "-c", "import voxport; print(voxport.__file__)"],
        env={**os.environ, "PYTHONPATH": str(src)},
        cwd=tmp_path,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == str(src / "voxport" / "__init__.py")  # the copy is what runs
    work = tmp_path / "repo"
    (work / "recipes").mkdir(parents=True)
    recipe_file = work / "recipes" / "demo-tiny-vits.yaml"
    shutil.copy(Path(__file__).parents[1] / "recipes" / "demo-tiny-vits.yaml", recipe_file)
    demo = _voxport_cli(src, "demo", "build/demo-checkpoint", cwd=work)
    assert demo.returncode == 0, demo.stderr
    build = ("build", "recipes/demo-tiny-vits.yaml", "--out", "build/demo")
    first = _voxport_cli(src, *build, cwd=work)
    assert first.returncode == 0, first.stderr
    assert ": cached" not in first.stderr

    renderer = src / "voxport" / "validate" / "report_html.py"
    text = renderer.read_text(encoding="utf-8")
    assert text.count("voxport report ·") == 1
    renderer.write_text(text.replace("voxport report ·", "voxport report (edited) ·"), encoding="utf-8")
    again = _voxport_cli(src, *build, cwd=work)
    assert again.returncode == 0, again.stderr

    recipe = load_recipe(recipe_file)
    units = {"convert", "reference audio"} | {f"quantize {p}" for p in recipe.precisions}
    units |= {
        f"{stage} {f} {p}"
        for stage in ("export", "validate")
        for f in recipe.formats
        for p in recipe.precisions
    }
    # the CLI's progress lines start with the elapsed time ("9.9s quantize fp32: cached")
    lines = [re.sub(r"^\d+(\.\d+)?s\s+", "", line.strip()) for line in again.stderr.splitlines()]
    assert cached_units(lines) == units, again.stderr
    assert "(edited)" in (work / "build" / "demo" / "report.html").read_text(encoding="utf-8")
