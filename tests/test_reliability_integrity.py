"""Issue 12, data integrity: nothing corrupt is ever certified.

Each test reproduces a fault that shipped a damaged or stale model as verified, on real files and real
processes: a flipped byte in the stage cache (it was restored, its cached validation served, the manifest
said `passed: true`), a manifest whose top-level figures `verify` never read, two builds into one `--out`,
and artifacts of an earlier build left unlisted beside the new ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from voxport import pipeline
from voxport.cache import EntryDamaged, StageCache, entry_checksum, stage_key
from voxport.cli import app
from voxport.errors import BadInput, VoxportError
from voxport.export.registry import get_format
from voxport.io import sha256_path
from voxport.lock import LOCK_NAME
from voxport.manifest import read_manifest
from voxport.recipe import Recipe
from voxport.verify import check_file, verify_dir

runner = CliRunner()
VOXPORT = Path(sys.executable).parent / "voxport"
#: one thread per process: the 2-core CI machine runs the holder and the second build side by side
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RECIPE: dict[str, Any] = {
    "name": "tv",
    "formats": ["onnx", "gguf"],
    "precisions": ["fp32", "int8"],
    "validate": {"texts": ["hello world."], "thresholds": {"logmel_dtw_db": 15}},
}


def make_recipe(model_dir: Path, **overrides: Any) -> Recipe:
    return Recipe.from_mapping({**RECIPE, "model": str(model_dir), **overrides}, model_dir)


def write_recipe(path: Path, model_dir: Path, **overrides: Any) -> Path:
    """The same recipe as a file, for the CLI (same content, so the same cache keys)."""
    path.write_text(json.dumps({**RECIPE, "model": str(model_dir), **overrides}))
    return path


def build(recipe: Recipe, out: Path, **kwargs: Any) -> tuple[list[str], Any]:
    lines: list[str] = []
    return lines, pipeline.build(recipe, out, lines.append, **kwargs)


def cached(lines: list[str]) -> set[str]:
    return {line.removesuffix(": cached") for line in lines if line.endswith(": cached")}


def flip(path: Path, at: int | None = None, mask: int = 0x01) -> None:
    """Flip low bits of one byte (default: 100 bytes before the end, inside the last tensor's data)."""
    data = bytearray(path.read_bytes())
    data[len(data) - 100 if at is None else at] ^= mask
    path.write_bytes(bytes(data))


def artifact(manifest: Any, fmt: str, precision: str) -> Any:
    return next(a for a in manifest.artifacts if a.format == fmt and a.precision == precision)


@pytest.fixture(scope="module")
def built(tiny_vits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real build (ONNX + GGUF, fp32 + int8, one sentence) with its stage cache inside; read-only."""
    out = tmp_path_factory.mktemp("integrity") / "out"
    _, manifest = build(make_recipe(tiny_vits_dir), out)
    assert manifest.passed
    return out


@pytest.fixture
def work(built: Path, tmp_path: Path) -> Path:
    """A copy of the build (cache included) to damage."""
    return Path(shutil.copytree(built, tmp_path / "out"))


def cache_file(out: Path, rel: str) -> Path:
    """The copy of `rel` that the (only) cache entry holding it stores."""
    (found,) = (out / "stages" / "cache").glob(f"*/*/files/{rel}")
    return found


# --- 1. the stage cache --------------------------------------------------------------------------------
def test_a_flipped_byte_in_the_cache_is_recomputed_not_certified(
    built: Path, work: Path, tiny_vits_dir: Path
) -> None:
    """The issue's reproduction: flip one byte in a cached `gguf/tv.int8.gguf`, rebuild. It used to be
    restored, its cached validation served, the manifest said passed and verify exited 0."""
    good = artifact(read_manifest(built), "gguf", "int8")
    flip(cache_file(work, "gguf/tv.int8.gguf"))
    flip(cache_file(work, "report/audio/onnx-fp32/0.wav"))  # a cached validation's own output
    lines, manifest = build(make_recipe(tiny_vits_dir), work)
    assert (
        "cache: entry for export gguf int8 is damaged (gguf/tv.int8.gguf sha256 mismatch); recomputing"
    ) in lines
    assert (
        "cache: entry for validate onnx fp32 is damaged (report/audio/onnx-fp32/0.wav sha256 mismatch); "
        "recomputing"
    ) in lines
    assert "export gguf int8" not in cached(lines) and "validate onnx fp32" not in cached(lines)
    # the recomputed export is byte-identical, so the validation bound to those bytes may be reused
    assert "validate gguf int8" in cached(lines)
    assert manifest.passed and artifact(manifest, "gguf", "int8").sha256 == good.sha256
    assert sha256_path(work / "gguf/tv.int8.gguf") == good.sha256
    assert verify_dir(work).ok
    # the entry was replaced by a good one: the next build restores it silently
    assert sha256_path(cache_file(work, "gguf/tv.int8.gguf")) == good.sha256


def test_a_cached_validation_never_certifies_other_bytes(
    built: Path, work: Path, tiny_vits_dir: Path
) -> None:
    """An export entry that is self-consistent but holds other bytes than the ones measured (another
    voxport's export under the same key, a hand-repaired cache): the cached parity result must not be
    served for them; validation runs again on the bytes that ship."""
    entry_dir = cache_file(work, "gguf/tv.int8.gguf").parents[2]
    flip(entry_dir / "files/gguf/tv.int8.gguf")  # a Q8_0 quant or fp16-scale mantissa bit: still loads
    new_sha = sha256_path(entry_dir / "files/gguf/tv.int8.gguf")
    record = json.loads((entry_dir / "entry.json").read_text())
    record["hashes"]["gguf/tv.int8.gguf"]["sha256"] = new_sha
    record["result"]["sha256"]["gguf/tv.int8.gguf"] = new_sha
    record["checksum"] = entry_checksum(record)
    (entry_dir / "entry.json").write_text(json.dumps(record))

    lines, manifest = build(make_recipe(tiny_vits_dir), work)
    assert "export gguf int8" in cached(lines)  # the entry is intact as an entry
    assert "validate gguf int8" not in cached(lines)  # ... but its bytes were never measured
    assert artifact(manifest, "gguf", "int8").sha256 == new_sha
    assert artifact(manifest, "gguf", "int8").sha256 != artifact(read_manifest(built), "gguf", "int8").sha256
    assert verify_dir(work).ok


def test_a_changed_artifact_in_the_build_dir_is_restored_or_refused(
    built: Path, work: Path, tiny_vits_dir: Path
) -> None:
    """A flipped byte in the artifact a cached validation measured (in OUT, not the cache): a rebuild
    puts the exported bytes back; bytes that change under a running build are never measured."""
    good = artifact(read_manifest(built), "gguf", "int8")
    flip(work / "gguf/tv.int8.gguf")
    _, manifest = build(make_recipe(tiny_vits_dir), work)
    assert artifact(manifest, "gguf", "int8").sha256 == good.sha256
    assert verify_dir(work).ok

    with pipeline.Build(make_recipe(tiny_vits_dir), work) as run:
        entry = next(e for e in run.export() if e.format == "gguf" and e.precision == "int8")
        flip(work / "gguf/tv.int8.gguf")  # e.g. another process writing into OUT
        with pytest.raises(VoxportError, match=r"gguf/tv\.int8\.gguf changed during the build"):
            run.measure(entry)


def test_cache_records_and_checks_every_file(tmp_path: Path) -> None:
    """StageCache on its own: hashes recorded at put, a flipped byte, a truncation and an edited record
    each raise EntryDamaged naming the problem; an intact file already in place is not rewritten."""
    out = tmp_path / "out"
    (out / "pkg.mlpackage" / "Data").mkdir(parents=True)
    (out / "a.bin").write_bytes(bytes(range(256)) * 64)
    (out / "pkg.mlpackage" / "Data" / "w.bin").write_bytes(b"w" * 1000)
    cache = StageCache(tmp_path / "cache")
    key = stage_key("t", {"x": 1})
    digests = cache.put(key, "t", out, ["a.bin", "pkg.mlpackage"], {"snr": 42.0})
    assert digests["pkg.mlpackage"].sha256 == sha256_path(out / "pkg.mlpackage")
    record = json.loads((cache.root / key[:2] / key / "entry.json").read_text())
    assert record["hashes"]["a.bin"] == {"sha256": sha256_path(out / "a.bin"), "bytes": 16384}

    mtime = (out / "a.bin").stat().st_mtime_ns
    assert cache.restore(key, out) == {"snr": 42.0}
    assert (out / "a.bin").stat().st_mtime_ns == mtime  # already right: left alone

    stored = cache.root / key[:2] / key / "files"
    flip(stored / "pkg.mlpackage" / "Data" / "w.bin", at=10)
    with pytest.raises(EntryDamaged, match=r"pkg\.mlpackage sha256 mismatch"):
        cache.restore(key, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere" / "a.bin").exists()  # checked before anything is copied
    flip(stored / "pkg.mlpackage" / "Data" / "w.bin", at=10)  # repaired
    (stored / "a.bin").write_bytes((stored / "a.bin").read_bytes()[:-1])
    with pytest.raises(EntryDamaged, match=r"a\.bin is 16383 bytes, 16384 recorded"):
        cache.restore(key, tmp_path / "elsewhere")
    cache.put(key, "t", out, ["a.bin", "pkg.mlpackage"], {"snr": 42.0}, replace=True)
    entry_json = cache.root / key[:2] / key / "entry.json"
    entry_json.write_text(entry_json.read_text().replace("42.0", "92.0"))  # a flipped digit of a figure
    with pytest.raises(EntryDamaged, match="entry.json does not match its checksum"):
        cache.restore(key, tmp_path / "elsewhere")


# --- 2. verify -------------------------------------------------------------------------------------------
@pytest.fixture
def out_copy(built: Path, tmp_path: Path) -> Path:
    """The build without its stages: what CI uploads and verify checks."""
    return Path(shutil.copytree(built, tmp_path / "copy", ignore=shutil.ignore_patterns("stages")))


def edit_manifest(out: Path, change: Any) -> None:
    data = json.loads((out / "manifest.json").read_text())
    change(data)
    (out / "manifest.json").write_text(json.dumps(data))


def test_verify_checks_the_top_level_sha256_and_bytes(out_copy: Path) -> None:
    def wrong_sha(data: dict[str, Any]) -> None:
        data["artifacts"][1]["sha256"] = "0" * 64

    edit_manifest(out_copy, wrong_sha)
    path = read_manifest(out_copy).artifacts[1].path
    result = runner.invoke(app, ["verify", str(out_copy)])
    assert result.exit_code == 1
    assert (
        f"{path}: sha256" in result.stderr and "artifact's top-level record's 000000000000" in result.stderr
    )

    def wrong_bytes(data: dict[str, Any]) -> None:
        data["artifacts"][1]["sha256"] = data["artifacts"][1]["files"][-1]["sha256"]
        data["artifacts"][1]["bytes"] += 1

    edit_manifest(out_copy, wrong_bytes)
    problems = verify_dir(out_copy).problems()
    size = (out_copy / path).stat().st_size
    assert problems == [f"{path}: {size} bytes on disk, artifact's top-level record says {size + 1}"]


@pytest.mark.parametrize("artifacts", [None, []], ids=["no-artifacts-key", "empty-list"])
def test_a_manifest_that_describes_nothing_exits_2(out_copy: Path, artifacts: list[Any] | None) -> None:
    def strip(data: dict[str, Any]) -> None:
        data.pop("artifacts")
        if artifacts is not None:
            data["artifacts"] = artifacts

    edit_manifest(out_copy, strip)
    result = runner.invoke(app, ["verify", str(out_copy), "--json"])
    assert result.exit_code == 2
    assert "manifest describes no artifacts" in json.loads(result.stdout)["error"]
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1


def test_verify_reports_unlisted_files_in_artifact_folders(out_copy: Path) -> None:
    """A stale artifact of an earlier build, or a file added after validation, ships unverified."""
    shutil.copy(out_copy / "gguf/tv.int8.gguf", out_copy / "gguf/tv.int4.gguf")
    (out_copy / "onnx/notes.txt").write_text("mine")
    (out_copy / "report/extra.txt").write_text("not an artifact folder")
    result = runner.invoke(app, ["verify", str(out_copy), "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["unlisted"] == ["gguf/tv.int4.gguf", "onnx/notes.txt"]
    assert all(f["ok"] for f in doc["files"])  # every listed file is still fine
    assert "gguf/tv.int4.gguf: not listed in the manifest" in result.stderr
    table = runner.invoke(app, ["verify", str(out_copy)])
    assert table.exit_code == 1 and "unlisted" in table.stdout


def test_verify_of_a_file_is_one_clear_line(out_copy: Path) -> None:
    result = runner.invoke(app, ["verify", str(out_copy / "onnx/tv.fp32.onnx")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {out_copy / 'onnx/tv.fp32.onnx'} is a file: verify takes a build directory (the --out of "
        "a build, holding manifest.json)"
    ]
    assert runner.invoke(app, ["verify", str(out_copy / "manifest.json"), "-q"]).exit_code == 0


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-op ML program whose 64×64 weight is stored in weights/weight.bin, as Core ML stores them."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 64))])
    def prog(x: Any) -> Any:
        return mb.linear(x=x, weight=weight)

    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT32,
    )
    path = tmp_path_factory.mktemp("coreml") / "m.mlpackage"
    model.save(str(path))
    assert (path / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size > weight.nbytes
    return path


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_coreml_loads_column_checks_the_weight_file(mlpackage: Path, tmp_path: Path, damage: str) -> None:
    """`verify`'s loads column called an .mlpackage without weights/weight.bin fine."""
    out = tmp_path / "out"
    package = Path(shutil.copytree(mlpackage, out / "coreml/m.mlpackage"))
    get_format("coreml").verify_load(package)  # intact: loads
    weights = package / "Data/com.apple.CoreML/weights/weight.bin"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    check = check_file(out, "coreml/m.mlpackage", "coreml", "fp32", "m", "0" * 64, 0)
    assert check.loads_ok is False
    expected = "weights/weight.bin is not readable" if damage == "missing" else "damaged or cut off"
    assert any(expected in p for p in check.problems), check.problems


# --- 3. one build per output directory -------------------------------------------------------------------
HOLDER = """
import sys, time
from pathlib import Path
from voxport.lock import OutputLock
OutputLock(Path(sys.argv[1]), "recipes/other.yaml").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_locked_out_dir_is_refused_and_taken_over_from_a_dead_holder(
    tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """Fast variant with a light holder process (no torch import): refusal names it; SIGKILL frees it."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            BadInput, match=rf"is being built by pid {holder.pid} \(recipe recipes/other\.yaml\)"
        ):
            pipeline.Build(make_recipe(tiny_vits_dir), out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # its record outlives it
    with pipeline.Build(make_recipe(tiny_vits_dir), out) as run:
        assert run.lock.held
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (out / LOCK_NAME).read_text() == ""  # released: nobody to name


def _wait_for(condition: Any, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _holder_pid(out: Path) -> int | None:
    try:
        return int(json.loads((out / LOCK_NAME).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_two_real_builds_into_one_out_and_a_sigkilled_holder(
    work: Path, tiny_vits_dir: Path, tmp_path: Path
) -> None:
    """Two `voxport build` processes: the second exits 2 naming the first; SIGKILL the first mid-build
    and nothing looks finished (no manifest, no report claiming to be current); a third build takes the
    dead holder's lock over and finishes."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_vits_dir)
    first = subprocess.Popen(
        [str(VOXPORT), "build", str(recipe), "--out", str(work), "--force"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ONE_THREAD,
        cwd=tmp_path,
    )
    try:
        _wait_for(lambda: _holder_pid(work) == first.pid, "the first build's lock")
        _wait_for(lambda: not (work / "report.json").exists(), "the first build to clear the old report")
        second = subprocess.run(
            [str(VOXPORT), "build", str(recipe), "--out", str(work)],
            capture_output=True,
            text=True,
            env=ONE_THREAD,
            cwd=tmp_path,
            timeout=300,
        )
        assert first.poll() is None, "the first build finished before the second started: no overlap"
        assert second.returncode == 2, second.stderr
        (message,) = [line for line in second.stderr.splitlines() if line.strip()]
        assert message.startswith(f"error: {work} is being built by pid {first.pid} (recipe r.yaml) since ")
        assert message.endswith("; wait for it or use another --out")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert _holder_pid(work) == first.pid  # a stale record of a dead process
    for name in ("manifest.json", "report.json", "report.html"):
        assert not (work / name).exists(), f"a killed rebuild left {name} looking current"
    third = subprocess.run(
        [str(VOXPORT), "build", str(recipe), "--out", str(work), "-q"],
        capture_output=True,
        text=True,
        env=ONE_THREAD,
        timeout=600,
    )
    assert third.returncode == 0, third.stderr
    assert verify_dir(work).ok and (work / "report.json").exists()


def test_a_starting_build_removes_the_previous_verdicts(work: Path, tiny_vits_dir: Path) -> None:
    """Fast variant: a rebuild removes manifest.json, report.json and report.html before any work, so
    a rebuild killed at any later point leaves no page or manifest that looks current."""
    with pipeline.Build(make_recipe(tiny_vits_dir), work):
        assert not [n for n in ("manifest.json", "report.json", "report.html") if (work / n).exists()]


# --- 4. stale artifacts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ledger", ["ledger", "pre-ledger"])
def test_fewer_precisions_remove_old_artifacts_but_not_the_users_files(
    work: Path, tiny_vits_dir: Path, ledger: str
) -> None:
    """Rebuilding fp32+int8 as fp32 only left the int8 files in onnx/ and gguf/, unlisted. voxport's own
    (named in stages/owned.json, or, for a directory built before it, in the old manifest and export
    index) go; a user's files beside them stay, and verify names them."""
    if ledger == "pre-ledger":
        (work / "stages/owned.json").unlink()
    (work / "onnx/README.md").write_text("my notes")
    (work / "gguf/mine.gguf").write_bytes(b"GGUF user file")
    old = {p.relative_to(work).as_posix() for p in work.glob("*/*int8*")}
    assert {"onnx/tv.int8.onnx", "gguf/tv.int8.gguf"} <= old

    lines, manifest = build(make_recipe(tiny_vits_dir, precisions=["fp32"]), work)
    assert manifest.passed and {a.precision for a in manifest.artifacts} == {"fp32"}
    assert not list(work.glob("onnx/*int8*")) and not list(work.glob("gguf/*int8*"))
    assert not (work / "report/audio/onnx-int8").exists()
    assert "removed gguf/tv.int8.gguf: written by an earlier build, not produced by this one" in lines
    assert (work / "onnx/README.md").read_text() == "my notes"
    assert (work / "gguf/mine.gguf").read_bytes() == b"GGUF user file"
    result = verify_dir(work)
    assert result.unlisted == ["gguf/mine.gguf", "onnx/README.md"] and all(f.ok for f in result.files)
    assert "onnx/tv.int8.onnx" not in json.loads((work / "stages/owned.json").read_text())["files"]
