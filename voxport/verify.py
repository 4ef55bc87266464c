"""`voxport verify`: are the files in a build directory still the ones that were validated?

A build directory travels (CI artifact upload, a copy to a device farm, a release asset), and every hop
can truncate or alter a file. For every file the manifest lists this checks that it exists, that its
size and sha256 match, and that the artifact still opens in the runtime users run it in: a matching
hash proves the bytes are the validated ones, the load proves the runtime on *this* machine accepts them.

Loaders are keyed by the manifest's `format` in `LOADERS`; a format without a loader (or a sidecar such
as `tokens.txt`, whose suffix is not the format's) is hashed but not loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxport.io import path_size, sha256_path
from voxport.manifest import Manifest, read_manifest
from voxport.progress import NullProgress, Progress


@dataclass(frozen=True)
class Loader:
    """How one format is opened: the suffix of its model files and a function that raises if it cannot."""

    suffix: str
    load: Callable[[Path], None]


def _load_onnx(path: Path) -> None:
    from voxport.validate.runners import ort_session

    ort_session(path)


def _load_gguf(path: Path) -> None:
    from voxport.export.gguf.reader import read_gguf

    read_gguf(path)


def _load_coreml(path: Path) -> None:
    # skip_model_load: parse and check the package without compiling it, which only macOS can do
    import coremltools as ct

    ct.models.MLModel(str(path), skip_model_load=True)


def _load_wav(path: Path) -> None:
    import soundfile

    soundfile.info(str(path))


#: the manifest's pre-rendered phrase audio is checked under this pseudo-format
PHRASES = "phrases"

LOADERS: dict[str, Loader] = {
    "onnx": Loader(".onnx", _load_onnx),
    "gguf": Loader(".gguf", _load_gguf),
    "coreml": Loader(".mlpackage", _load_coreml),
    PHRASES: Loader(".wav", _load_wav),
}


@dataclass
class FileCheck:
    """One file's verdict. `None` means "not checked": no hash of a file of the wrong size, no load of a
    sidecar or of a format without a loader."""

    path: str
    format: str
    precision: str
    graph: str
    expected_bytes: int
    bytes: int | None = None
    exists: bool = False
    bytes_ok: bool = False
    sha_ok: bool | None = None
    loads_ok: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exists and self.bytes_ok and self.sha_ok is not False and self.loads_ok is not False


@dataclass
class VerifyResult:
    out_dir: str
    files: list[FileCheck]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    def problems(self) -> list[str]:
        """Every mismatch as `path: what`, for stderr and CI logs."""
        return [f"{f.path}: {p}" for f in self.files for p in f.problems]

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out_dir,
            "passed": self.ok,
            "files": [{**asdict(f), "ok": f.ok} for f in self.files],
            "problems": self.problems(),
        }


def _listed_files(manifest: Manifest) -> list[tuple[str, str, str, str, str, int]]:
    """(path, format, precision, graph, sha256, bytes) per file, each path once: every artifact file (the
    primary one even if an older manifest left it out of `files`), then the pre-rendered phrases."""
    seen: set[str] = set()
    rows = []
    for a in manifest.artifacts:
        for graph, rel, sha, size in [(f.graph, f.path, f.sha256, f.bytes) for f in a.files] + [
            ("primary", a.path, a.sha256, a.bytes)
        ]:
            if rel not in seen:
                seen.add(rel)
                rows.append((rel, a.format, a.precision, graph, sha, size))
    for f in manifest.phrases:
        if f.path not in seen:
            seen.add(f.path)
            rows.append((f.path, PHRASES, "", f.graph, f.sha256, f.bytes))
    return rows


def check_file(out: Path, rel: str, fmt: str, precision: str, graph: str, sha: str, size: int) -> FileCheck:
    """Size first (cheap, catches truncation), then hash, then a load in the format's runtime."""
    check = FileCheck(path=rel, format=fmt, precision=precision, graph=graph, expected_bytes=size)
    full = out / rel
    check.exists = full.exists()
    if not check.exists:
        check.problems.append("missing")
        return check
    check.bytes = path_size(full)
    check.bytes_ok = check.bytes == size
    if not check.bytes_ok:
        check.problems.append(f"{check.bytes} bytes on disk, manifest says {size}")
    else:
        actual = sha256_path(full)
        check.sha_ok = actual == sha
        if not check.sha_ok:
            check.problems.append(f"sha256 {actual[:12]}… does not match the manifest's {sha[:12]}…")
    loader = LOADERS.get(fmt)
    if loader is not None and full.name.endswith(loader.suffix):
        try:
            loader.load(full)
            check.loads_ok = True
        except Exception as exc:  # any runtime error means users cannot load it either
            check.loads_ok = False
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            check.problems.append(f"does not load as {fmt}: {first}")
    return check


def verify_dir(out_dir: str | os.PathLike[str], progress: Progress | None = None) -> VerifyResult:
    """Check every file the manifest in `out_dir` lists; BadInput (exit 2) if there is no valid manifest."""
    progress = progress if progress is not None else NullProgress()
    out = Path(out_dir)
    manifest = read_manifest(out)
    out = out if out.is_dir() else out.parent  # read_manifest also takes the manifest file itself
    rows = _listed_files(manifest)
    checks = []
    with progress.task(f"verify {len(rows)} files", total=len(rows)) as advance:
        for rel, fmt, precision, graph, sha, size in rows:
            checks.append(check_file(out, rel, fmt, precision, graph, sha, size))
            advance(1)
    return VerifyResult(out_dir=str(out_dir), files=checks)
