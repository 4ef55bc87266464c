"""The content-addressed stage cache: a stage's outputs stored under the hash of everything that made them.

A key is the sha256 of a stage name, the voxport code (version + source hash), the stage's own
configuration and the keys (or file hashes) of its inputs, so keys chain: a changed checkpoint
changes every later key, a changed export option changes only export's and validate's. An entry is a
directory holding copies of the files the stage wrote (paths relative to the build directory) and a
JSON `result`:

    <cache>/<key[:2]>/<key>/files/...     the outputs
    <cache>/<key[:2]>/<key>/entry.json    {"stage", "files": [...], "result": ...}, written last

An entry is built in a temporary sibling and renamed into place, and `entry.json` is checked on read,
so a build killed at any point leaves either a whole entry or none: the next build recomputes what is
missing and restores the rest. Restoring copies files into the build directory through temporary names
too, so a half-restored artifact never looks finished.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from voxport import __version__
from voxport.io import atomic_path, sha256_path, to_jsonable

ENV_CACHE_DIR = "VOXPORT_CACHE_DIR"


@functools.cache
def code_fingerprint() -> str:
    """The voxport version, a hash of the package's own source files, and the versions of the tools
    that shape artifact bytes and figures (torch, onnxruntime, coremltools, piper-tts, ...).

    The version alone would let a development checkout (or a patched install) restore artifacts that
    older code wrote; hashing ~100 small files costs milliseconds and makes any code change a miss."""
    from voxport.manifest import tool_versions

    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(tool_versions(), sort_keys=True).encode())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def stage_key(stage: str, config: Any, inputs: Iterable[str] = ()) -> str:
    """sha256 over the stage name, voxport code, JSON of `config` and the input keys/hashes."""
    payload = {
        "stage": stage,
        "voxport": code_fingerprint(),
        "config": to_jsonable(config),
        "inputs": list(inputs),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_inputs(path: Path) -> str:
    """Content hash of a user's input: a file, or every file under a checkpoint directory."""
    return sha256_path(path)


class StageCache:
    """Entries under one directory; safe to share between builds and to keep between CI runs."""

    #: a temporary entry older than this was left by a killed build (a live one is minutes old at most)
    STALE_SECONDS = 3600.0

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: keys this process read or wrote: what `prune` keeps
        self.touched: set[str] = set()
        self._sweep()

    def _sweep(self) -> None:
        if not self.root.is_dir():
            return
        now = time.time()
        for tmp in self.root.glob("*/.*.tmp-*"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > self.STALE_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry for `key` if it is complete and every file it lists is present, else None."""
        entry_dir = self._dir(key)
        try:
            entry = json.loads((entry_dir / "entry.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not all((entry_dir / "files" / rel).exists() for rel in entry.get("files", [])):
            return None
        self.touched.add(key)
        return entry

    def restore(self, key: str, out: Path) -> Any:
        """Copy the entry's files into the build directory (atomically, one by one); return its result."""
        entry = self.get(key)
        if entry is None:
            raise KeyError(key)
        source = self._dir(key) / "files"
        for rel in entry["files"]:
            _copy_atomic(source / rel, out / rel)
        return entry["result"]

    def put(
        self, key: str, stage: str, out: Path, files: Iterable[str], result: Any, *, replace: bool = False
    ) -> None:
        """Store `files` (relative to `out`, restored in this order) and `result` under `key`.

        A no-op if the entry exists, unless `replace` (`--force` rebuilds repair a damaged cache)."""
        final = self._dir(key)
        self.touched.add(key)
        if not replace and self.get(key) is not None:
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.tmp-{secrets.token_hex(6)}"
        rels = list(dict.fromkeys(files))
        try:
            for rel in rels:
                _copy_tree_or_file(out / rel, tmp / "files" / rel)
            entry = {"stage": stage, "key": key, "files": rels, "result": to_jsonable(result)}
            (tmp / "entry.json").write_text(json.dumps(entry, indent=1, ensure_ascii=False), encoding="utf-8")
            if final.exists():  # an incomplete entry left by a killed build, or `replace`
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def prune(self, keep: set[str]) -> tuple[int, int]:
        """Delete every entry not in `keep`; return (entries removed, bytes freed).

        A CI cache restored from an older run holds entries that no current key can hit (older code,
        older options); saving it again unpruned would grow it with every change."""
        removed, freed = 0, 0
        if not self.root.is_dir():
            return removed, freed
        for entry in sorted(self.root.glob("*/*")):
            if entry.is_dir() and entry.name not in keep and not entry.name.startswith("."):
                freed += sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed, freed


def _copy_tree_or_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and sha256_path(dst) == sha256_path(src):
        return
    with atomic_path(dst, keep_suffix=dst.is_dir() or src.is_dir()) as tmp:
        _copy_tree_or_file(src, tmp)


def default_cache_dir(out: Path, given: Path | None, env: Mapping[str, str] = os.environ) -> Path:
    """`--cache-dir`, else $VOXPORT_CACHE_DIR, else OUT/stages/cache (a rebuild into the same OUT hits)."""
    if given is not None:
        return Path(given)
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR])
    return out / "stages" / "cache"
