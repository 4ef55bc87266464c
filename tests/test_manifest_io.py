"""Atomic writes, hashes, the writable-dir check and manifest read/write/verify, on real files."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from voxport.errors import BadInput
from voxport.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    sha256_file,
    sha256_path,
)
from voxport.manifest import (
    MANIFEST_NAME,
    REQUIRED_METRICS,
    Artifact,
    ArtifactFile,
    Manifest,
    ModelInfo,
    Parity,
    read_manifest,
    tool_versions,
    verify_files,
    write_manifest,
)


class Boom(Exception):
    pass


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------------------------- atomic io


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_bytes() == "héllo\n".encode()
    atomic_write_text(tmp_path / "a.txt", "second")
    assert (tmp_path / "a.txt").read_text() == "second"
    assert listing(tmp_path) == ["a.bin", "a.txt"]


def test_atomic_write_json_converts_numpy_and_paths(tmp_path: Path) -> None:
    obj = {
        "z": 1,
        "a": np.float32(0.5),
        "n": np.int64(7),
        "arr": np.arange(3, dtype=np.int16),
        "mat": np.eye(2),
        "p": Path("/x/y"),
        "inf": math.inf,
        "nan": np.float64("nan"),
        "b": np.bool_(True),
        "t": (1, 2),
    }
    atomic_write_json(tmp_path / "o.json", obj)
    text = (tmp_path / "o.json").read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "z": 1,')  # indent 2, insertion order kept
    assert json.loads(text) == {
        "z": 1,
        "a": 0.5,
        "n": 7,
        "arr": [0, 1, 2],
        "mat": [[1.0, 0.0], [0.0, 1.0]],
        "p": "/x/y",
        "inf": None,
        "nan": None,
        "b": True,
        "t": [1, 2],
    }


def test_atomic_write_json_rejects_unknown_types(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "o.json", {"x": object()})
    assert listing(tmp_path) == []


def test_atomic_path_temp_name_and_success(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".model.onnx.tmp-")
        assert not tmp.exists()
        tmp.write_bytes(b"graph")
        assert not target.exists()
    assert target.read_bytes() == b"graph"
    assert listing(tmp_path) == ["model.onnx"]


def test_atomic_path_keep_suffix(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "v.mlpackage", keep_suffix=True) as tmp:
        assert tmp.name.startswith(".v.mlpackage.tmp-") and tmp.suffix == ".mlpackage"
        tmp.write_text("x")
    assert listing(tmp_path) == ["v.mlpackage"]


def test_atomic_path_exception_leaves_target_absent(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert listing(tmp_path) == []


def test_atomic_path_exception_leaves_existing_target_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_bytes(b"new but broken")
        raise Boom
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["model.onnx"]


def test_atomic_path_exception_removes_temp_directory(tmp_path: Path) -> None:
    with pytest.raises(Boom), atomic_path(tmp_path / "v.mlpackage") as tmp:
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "weights.bin").write_bytes(b"w")
        raise Boom
    assert listing(tmp_path) == []


def test_atomic_path_replaces_directory(tmp_path: Path) -> None:
    target = tmp_path / "v.mlpackage"
    (target / "old").mkdir(parents=True)
    (target / "old" / "f").write_text("old")
    with atomic_path(target) as tmp:
        (tmp / "new").mkdir(parents=True)
        (tmp / "new" / "f").write_text("new")
    assert listing(tmp_path) == ["v.mlpackage"]
    assert listing(target) == ["new"]
    assert (target / "new" / "f").read_text() == "new"


def test_atomic_path_nothing_written_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "x.gguf"
    target.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["x.gguf"]


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, size=3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_path(path) == sha256_file(path)


def test_sha256_path_of_directory_depends_on_content_not_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, order in ((a, ["x", "y/z"]), (b, ["y/z", "x"])):
        for rel in order:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(rel)
    assert sha256_path(a) == sha256_path(b)
    (b / "x").write_text("changed")
    assert sha256_path(a) != sha256_path(b)


def test_ensure_writable_dir_creates_nested(tmp_path: Path) -> None:
    out = ensure_writable_dir(tmp_path / "a" / "b")
    assert out == (tmp_path / "a" / "b").absolute() and out.is_dir()
    assert listing(out) == []  # the probe is gone
    assert ensure_writable_dir(out) == out  # existing dir is fine


def test_ensure_writable_dir_under_a_file(tmp_path: Path) -> None:
    # chmod does not stop root; a path below a regular file fails for everyone
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "sub"
    with pytest.raises(BadInput) as info:
        ensure_writable_dir(bad)
    message = str(info.value)
    assert message.startswith(f"output directory {bad} is not writable: ")
    assert message.endswith("; choose another --out")


def test_ensure_writable_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BadInput, match="exists and is not a directory; choose another --out"):
        ensure_writable_dir(tmp_path / "afile")


# ---------------------------------------------------------------------------------------------- manifest


def build_outputs(out: Path) -> Manifest:
    """Two artifacts on disk, one single-file and one with two graph files, and their manifest."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiny.fp32.onnx").write_bytes(b"onnx-fp32" * 100)
    (out / "gguf").mkdir()
    (out / "gguf" / "tiny.q4.gguf").write_bytes(b"gguf-main")
    (out / "gguf" / "tiny.q4.decoder.gguf").write_bytes(b"gguf-decoder")
    onnx_file = ArtifactFile.from_path(out, out / "tiny.fp32.onnx", graph="model")
    main = ArtifactFile.from_path(out, "gguf/tiny.q4.gguf", graph="backbone")
    decoder = ArtifactFile.from_path(out, "gguf/tiny.q4.decoder.gguf", graph="decoder")
    return Manifest(
        voxport_version="0.1.0",
        recipe={"name": "tiny", "model": "/abs/ckpt"},
        model=ModelInfo(family="vits", source="/abs/ckpt", parameters=1234),
        artifacts=[
            Artifact(
                format="onnx",
                precision="fp32",
                path=onnx_file.path,
                sha256=onnx_file.sha256,
                bytes=onnx_file.bytes,
                bits_per_weight=32.0,
                files=[onnx_file],
                parity=Parity(passed=True, metrics={"snr_db": 80.5, "max_abs_error": 1e-6}),
            ),
            Artifact(
                format="gguf",
                precision="int4",
                path=main.path,
                sha256=main.sha256,
                bytes=main.bytes,
                bits_per_weight=4.5,
                skipped_weights=[{"name": "emb.weight", "reason": "embedding"}],
                files=[main, decoder],
                parity=Parity(passed=False, metrics={"snr_db": math.inf}, failures=["mcd_db: n/a"]),
            ),
        ],
        passed=False,
        tool_versions=tool_versions(),
    )


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = build_outputs(tmp_path)
    path = write_manifest(tmp_path, manifest)
    assert path == tmp_path / MANIFEST_NAME
    assert path.read_text().endswith("}\n")
    raw = json.loads(path.read_text())
    assert raw["created_by"] == "voxport"
    assert raw["artifacts"][1]["parity"]["metrics"]["snr_db"] is None  # inf is not JSON
    loaded = read_manifest(tmp_path)
    assert loaded.artifacts[0] == manifest.artifacts[0]
    assert loaded.artifacts[1].files == manifest.artifacts[1].files
    assert read_manifest(path) == loaded  # the manifest file itself is accepted too
    assert verify_files(tmp_path, loaded) == []


def test_parity_always_has_required_metric_keys() -> None:
    parity = Parity(passed=True, metrics={"snr_db": 30.0})
    assert set(REQUIRED_METRICS) <= set(parity.metrics)
    assert parity.metrics["snr_db"] == 30.0 and parity.metrics["mcd_db"] is None


def test_artifact_file_paths_are_posix_and_relative(tmp_path: Path) -> None:
    manifest = build_outputs(tmp_path)
    assert manifest.artifacts[1].files[1].path == "gguf/tiny.q4.decoder.gguf"
    assert manifest.artifacts[1].files[1].bytes == len(b"gguf-decoder")
    good = {"graph": "g", "sha256": "0" * 64, "bytes": 1}
    for bad in ("/etc/passwd", "../up.onnx", "a\\b.onnx", ""):
        with pytest.raises(ValidationError):
            ArtifactFile(path=bad, **good)
    with pytest.raises(ValidationError):
        ArtifactFile(path="ok.onnx", graph="g", sha256="XYZ", bytes=1)
    with pytest.raises(ValueError):
        ArtifactFile.from_path(tmp_path / "gguf", tmp_path / "tiny.fp32.onnx", graph="g")


def test_verify_detects_changed_byte(tmp_path: Path) -> None:
    manifest = build_outputs(tmp_path)
    write_manifest(tmp_path, manifest)
    data = bytearray((tmp_path / "tiny.fp32.onnx").read_bytes())
    data[10] ^= 0xFF
    (tmp_path / "tiny.fp32.onnx").write_bytes(bytes(data))
    problems = verify_files(tmp_path, read_manifest(tmp_path))
    assert len(problems) == 1  # listed as path and as files[0]: reported once
    assert problems[0].startswith("tiny.fp32.onnx: sha256 ")


def test_verify_detects_size_change_and_missing_file(tmp_path: Path) -> None:
    manifest = build_outputs(tmp_path)
    write_manifest(tmp_path, manifest)
    (tmp_path / "gguf" / "tiny.q4.decoder.gguf").unlink()
    with open(tmp_path / "tiny.fp32.onnx", "ab") as fh:
        fh.write(b"!")
    problems = verify_files(tmp_path, read_manifest(tmp_path))
    assert problems == [
        "tiny.fp32.onnx: 901 bytes on disk, manifest says 900",
        "gguf/tiny.q4.decoder.gguf: missing",
    ]


def test_read_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=f"no {MANIFEST_NAME} in {tmp_path}"):
        read_manifest(tmp_path)


def test_read_manifest_corrupt_json(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text('{"voxport_version": "0.1.0",\n  oops')
    with pytest.raises(BadInput, match=r"manifest.json is corrupt: not JSON \(line 2"):
        read_manifest(tmp_path)


def test_read_manifest_wrong_shape(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text('{"voxport_version": "0.1.0"}\n')
    with pytest.raises(BadInput, match="is not a voxport manifest: recipe: Field required"):
        read_manifest(tmp_path)


def test_tool_versions() -> None:
    versions = tool_versions()
    assert versions["python"].count(".") == 2
    assert versions["numpy"] == np.__version__
    assert all(isinstance(v, str) and v for v in versions.values())
