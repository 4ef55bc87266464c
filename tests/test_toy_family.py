"""A family from another package: installed with pip, found through its `voxport.families` entry point.

tests/toy_family is a separate distribution (voxport_toy) that voxport never imports by name. Installed
into a directory on PYTHONPATH, it is demoed, built to int8 ONNX with parity checked, spoken with `say`,
and its own settings (`gain`) are accepted where VITS's are refused. Each command runs in a subprocess,
so the entry point is discovered exactly as a user's install would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VOXPORT = [sys.executable, "-m", "voxport"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("toy-site")
    build = tmp_path_factory.mktemp("toy-build")
    # setuptools builds in the source tree (build/, *.egg-info): install from a copy, never the repo
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    source = shutil.copytree(ROOT / "tests" / "toy_family", build / "toy_family", ignore=ignore)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        cwd=build,
        env={**os.environ, "TMPDIR": str(build)},
    )
    assert (target / "voxport_toy").is_dir()
    return target


def voxport(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([*VOXPORT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("toy")
    done = voxport(site, work, "demo", "ckpt", "--family", "toy", "--seed", "1", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "ckpt" / "config.json").read_text())["model_type"] == "toy"
    return work / "ckpt"


def test_without_the_package_toy_is_unknown(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*VOXPORT, "demo", "x", "--family", "toy"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "unknown demo family 'toy' (known: kokoro, pocket_tts, vits, voxtral_tts)" in done.stderr


@pytest.mark.slow  # ~15 s of CPU (a voxport process per stage run); the fast tests below use the same install
def test_build_int8_onnx_with_parity(site: Path, checkpoint: Path) -> None:
    work = checkpoint.parent
    (work / "toy.yaml").write_text(
        textwrap.dedent(
            """\
            name: toy
            model: ckpt
            formats: [onnx]
            precisions: [int8]
            validate:
              texts: ["hello toy world", "a second sentence"]
              gain: 0.5
              thresholds:
                snr_db: 25
            """
        )
    )
    done = voxport(site, work, "build", "toy.yaml", "--out", "out", "--cache-dir", "cache", "--quiet")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest["model"]["family"] == "toy"
    assert manifest["model"]["parameters"] == 28 * 32 + 32 * 32 + 32 + 32 * 320 + 1
    [artifact] = manifest["artifacts"]
    assert (artifact["format"], artifact["precision"]) == ("onnx", "int8")
    assert artifact["path"] == "onnx/toy.int8.onnx"
    assert artifact["skipped_weights"] == []  # both kernels were found in the graph and stored as int8
    assert artifact["parity"]["passed"]
    # int8 per-channel on a random 32-wide net: measured 41.9 dB. A weight left fp32 reads > 100 dB, a
    # wrong scale or layout < 10 dB; 30..70 holds for any CPU's rounding.
    snr = artifact["parity"]["metrics"]["snr_db"]
    assert 30.0 < snr < 70.0, snr
    # the recipe as built: the toy's own settings, its defaults filled in
    assert (manifest["recipe"]["validate"]["seed"], manifest["recipe"]["validate"]["gain"]) == (0, 0.5)


def test_say_speaks_a_toy_checkpoint(site: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "toy.wav"
    done = voxport(site, tmp_path, "say", str(checkpoint), "hi there", "-o", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    with wave.open(str(out)) as w:
        assert w.getframerate() == 16000
        assert w.getnframes() == len("hi there") * 160  # one hop of samples per letter
    refused = voxport(site, tmp_path, "say", str(checkpoint), "hi", "-o", str(out), "--noise-scale", "0.3")
    assert refused.returncode == 2
    want = "--noise-scale: toy voices have no noise scale setting (its settings: seed, gain)"
    assert want in refused.stderr


def test_a_vits_setting_on_a_toy_recipe_names_its_line(site: Path, checkpoint: Path) -> None:
    work = checkpoint.parent
    recipe = "name: t\nmodel: ckpt\nfamily: toy\nvalidate:\n  texts: [hi]\n  noise_scale: 0\n"
    (work / "bad.yaml").write_text(recipe)
    done = voxport(site, work, "recipes", "check", "bad.yaml")
    assert done.returncode == 2
    want = "bad.yaml:6: validate.noise_scale: toy has no setting 'noise_scale' (its settings: seed, gain)"
    assert want in done.stderr


def test_a_second_family_of_a_known_name_is_an_error(tmp_path: Path) -> None:
    """Two packages claiming one family name: which one runs would depend on install order, so neither
    does; the message names both providers."""
    site = tmp_path / "site"
    (site / "fake_vits-0.1.dist-info").mkdir(parents=True)
    (site / "fake_vits.py").write_text(
        "from voxport.families.vits import VitsFamily\n\n\nclass FakeVits(VitsFamily):\n    name = 'vits'\n"
    )
    (site / "fake_vits-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-vits\nVersion: 0.1\n"
    )
    (site / "fake_vits-0.1.dist-info" / "entry_points.txt").write_text(
        "[voxport.families]\nvits = fake_vits:FakeVits\n"
    )
    done = voxport(site, tmp_path, "demo", "x", "--family", "vits")
    assert done.returncode == 2
    assert (
        "error: family 'vits' is provided twice: by voxport (built in) and by the package fake-vits 0.1; "
        "uninstall one of them"
    ) in done.stderr
    assert not (tmp_path / "x").exists()
