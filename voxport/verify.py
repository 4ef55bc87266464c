"""`voxport verify`: are the files in a build directory still the ones that were validated?

A build directory travels (CI artifact upload, a copy to a device farm, a release asset), and every hop
can truncate or alter a file. For every file the manifest lists this checks that it exists, that its
size and sha256 match, and that the artifact still opens in the runtime users run it in: a matching
hash proves the bytes are the validated ones, the load proves the runtime on *this* machine accepts them.

Every recorded figure is checked, an artifact's top-level `sha256`/`bytes` as well as its `files[]`
(they name the same primary file and must agree with it and with the disk). A manifest that lists no
file at all certifies nothing and is refused (exit 2), and a file in an artifact folder (onnx/, gguf/,
coreml/, phrases/) that the manifest does not list is a problem: it is either a leftover of another
build or something added after validation, and a folder shipped whole would ship it unverified.

The load is the format adapter's `verify_load` (export/registry.py), tried on the files whose name ends
in the format's suffix; a sidecar such as `tokens.txt`, or a format no adapter is registered for, is
hashed but not loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxport.errors import BadInput
from voxport.export.registry import formats
from voxport.io import path_size, sha256_path
from voxport.manifest import MANIFEST_NAME, Manifest, read_manifest
from voxport.progress import NullProgress, Progress


@dataclass(frozen=True)
class Loader:
    """How one format is opened: the suffix of its model files and a function that raises if it cannot."""

    suffix: str
    load: Callable[[Path], None]


def _load_wav(path: Path) -> None:
    import soundfile

    soundfile.info(str(path))


#: the manifest's pre-rendered phrase audio is checked under this pseudo-format
PHRASES = "phrases"


def loader(fmt: str) -> Loader | None:
    """How files of the manifest's format `fmt` are opened: the registered format's adapter, or the
    phrase audio's reader; None for a format no adapter is registered for."""
    if fmt == PHRASES:
        return Loader(".wav", _load_wav)
    adapter = formats().get(fmt)
    return None if adapter is None else Loader(adapter.suffix, adapter().verify_load)


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
    #: files in artifact folders that the manifest does not list (relative to the build directory)
    unlisted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files) and not self.unlisted

    def problems(self) -> list[str]:
        """Every mismatch as `path: what`, for stderr and CI logs."""
        listed = [f"{f.path}: {p}" for f in self.files for p in f.problems]
        return listed + [f"{rel}: {UNLISTED}" for rel in self.unlisted]

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out_dir,
            "passed": self.ok,
            "files": [{**asdict(f), "ok": f.ok} for f in self.files],
            "unlisted": self.unlisted,
            "problems": self.problems(),
        }


UNLISTED = (
    "not listed in the manifest (left by another build, or added after validation); remove it or rebuild"
)


def artifact_folders() -> tuple[str, ...]:
    """Folders whose every file a manifest must list, besides the folders its artifacts are in: each
    format's (a format writes under its own name) and the phrases'."""
    return (*formats(), PHRASES)


#: (path, format, precision, graph, sha256, bytes): one recorded figure set of one file
Row = tuple[str, str, str, str, str, int]


def _listed_files(manifest: Manifest) -> list[Row]:
    """(path, format, precision, graph, sha256, bytes) per recorded figure: every artifact file, the
    artifact's own top-level record of its primary file unless `files` records the same figures for
    it (a disagreeing top-level record is its own row, so it is checked, not hidden), then the phrases."""
    seen: set[tuple[str, str, int]] = set()
    rows: list[Row] = []
    for a in manifest.artifacts:
        for graph, rel, sha, size in [(f.graph, f.path, f.sha256, f.bytes) for f in a.files] + [
            ("primary", a.path, a.sha256, a.bytes)
        ]:
            if (rel, sha, size) not in seen:
                seen.add((rel, sha, size))
                rows.append((rel, a.format, a.precision, graph, sha, size))
    for f in manifest.phrases:
        if (f.path, f.sha256, f.bytes) not in seen:
            seen.add((f.path, f.sha256, f.bytes))
            rows.append((f.path, PHRASES, "", f.graph, f.sha256, f.bytes))
    return rows


def check_file(
    out: Path,
    rel: str,
    fmt: str,
    precision: str,
    graph: str,
    sha: str,
    size: int,
    *,
    hashes: dict[str, str] | None = None,
    loaded: dict[str, str | None] | None = None,
) -> FileCheck:
    """Size first (cheap, catches truncation), then hash, then a load in the format's runtime.

    `hashes` and `loaded` memoise per path, so a file recorded twice (in `files` and at the top level)
    is read and loaded once."""
    hashes = {} if hashes is None else hashes
    loaded = {} if loaded is None else loaded
    check = FileCheck(path=rel, format=fmt, precision=precision, graph=graph, expected_bytes=size)
    full = out / rel
    check.exists = full.exists()
    if not check.exists:
        check.problems.append("missing")
        return check
    check.bytes = path_size(full)
    check.bytes_ok = check.bytes == size
    if not check.bytes_ok:
        check.problems.append(f"{check.bytes} bytes on disk, {_what(graph)} says {size}")
    else:
        if rel not in hashes:
            hashes[rel] = sha256_path(full)
        actual = hashes[rel]
        check.sha_ok = actual == sha
        if not check.sha_ok:
            check.problems.append(f"sha256 {actual[:12]}… does not match the {_what(graph)}'s {sha[:12]}…")
    opener = loader(fmt)
    if opener is not None and full.name.endswith(opener.suffix):
        if rel not in loaded:
            loaded[rel] = _load_error(opener, full)
        check.loads_ok = loaded[rel] is None
        if loaded[rel] is not None:
            check.problems.append(f"does not load as {fmt}: {loaded[rel]}")
    return check


def _what(graph: str) -> str:
    return "artifact's top-level record" if graph == "primary" else "manifest"


def _load_error(loader: Loader, path: Path) -> str | None:
    """None if the file loads, else the first line of why not."""
    try:
        loader.load(path)
    except Exception as exc:  # any runtime error means users cannot load it either
        return (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
    return None


def _build_dir(given: Path) -> Path:
    """The build directory to verify, or BadInput (exit 2): verify reads a build directory (or its
    manifest.json), and anything else would fail later as a confusing parse error."""
    if given.is_dir():
        return given
    if given.is_file() and given.name == MANIFEST_NAME:
        return given.parent
    if given.exists():
        raise BadInput(
            f"{given} is a file: verify takes a build directory (the --out of a build, holding "
            f"{MANIFEST_NAME})"
        )
    return given  # read_manifest says there is no manifest.json there


def unlisted_files(out: Path, rows: list[Row]) -> list[str]:
    """Files in artifact folders not covered by a listed path (a listed `.mlpackage` covers its tree)."""
    listed = {rel for rel, *_ in rows}
    folders = set(artifact_folders()) | {rel.split("/")[0] for rel in listed if "/" in rel}
    found = []
    for folder in sorted(folders):
        for rel in _files_under(out, folder):
            parts = rel.split("/")
            if not any("/".join(parts[:i]) in listed for i in range(1, len(parts) + 1)):
                found.append(rel)
    return found


def _files_under(out: Path, folder: str) -> Iterator[str]:
    root = out / folder
    if not root.is_dir() or root.is_symlink():
        return
    for dirpath, _dirs, names in os.walk(root):
        for name in sorted(names):
            yield (Path(dirpath) / name).relative_to(out).as_posix()


def verify_dir(out_dir: str | os.PathLike[str], progress: Progress | None = None) -> VerifyResult:
    """Check every figure the manifest in `out_dir` records and every file in its artifact folders;
    BadInput (exit 2) if there is no valid manifest or it describes no artifact."""
    progress = progress if progress is not None else NullProgress()
    out = _build_dir(Path(out_dir))
    manifest = read_manifest(out)
    if not manifest.artifacts and not manifest.phrases:
        # a build always writes at least one artifact: this manifest was truncated or hand-made
        raise BadInput(
            f"{out / MANIFEST_NAME}: manifest describes no artifacts, so it certifies nothing; "
            "rebuild the directory with voxport build"
        )
    rows = _listed_files(manifest)
    checks: list[FileCheck] = []
    hashes: dict[str, str] = {}
    loaded: dict[str, str | None] = {}
    with progress.task(f"verify {len(rows)} files", total=len(rows)) as advance:
        for rel, fmt, precision, graph, sha, size in rows:
            checks.append(
                check_file(out, rel, fmt, precision, graph, sha, size, hashes=hashes, loaded=loaded)
            )
            advance(1)
    return VerifyResult(out_dir=str(out_dir), files=checks, unlisted=unlisted_files(out, rows))
