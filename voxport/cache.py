"""The content-addressed stage cache: a stage's outputs stored under the hash of everything that made them.

A key is the sha256 of a stage name, the code the stage runs (version + a hash of the source it can
execute, see `code_fingerprint`), the stage's own configuration and the keys (or file hashes) of its
inputs, so keys chain: a changed checkpoint changes every later key, a changed export option (or
exporter) changes only export's and validate's, and a changed report changes none. An entry is a
directory holding copies of the files the stage wrote (paths relative to the build directory) and a
JSON `result`:

    <cache>/<key[:2]>/<key>/files/...     the outputs
    <cache>/<key[:2]>/<key>/entry.json    {"stage", "files", "hashes", "result", "checksum"}, written last

An entry is built in a temporary sibling and renamed into place, and `entry.json` is checked on read,
so a build killed at any point leaves either a whole entry or none: the next build recomputes what is
missing and restores the rest. Restoring copies files into the build directory through temporary names
too, so a half-restored artifact never looks finished.

Nothing in an entry is trusted blindly. A cache shared between CI runs lives for months on disks that
flip bits and in tarballs that get truncated, and a damaged file restored as "cached" would be shipped
with the validation result that was measured on the good one. So `entry.json` records the sha256 and
size of every file it holds and a checksum over its own content; `restore` re-hashes each file before
using it, and a mismatch drops the entry (`EntryDamaged`) so the caller recomputes. Hashing runs at
about 1 GB/s, a fraction of a second for the largest artifact, and each hash is memoised per build
(`Digests`) so a file verified on restore is not read again for the manifest.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxport import __version__, _imports
from voxport.io import atomic_path, path_size, sha256_path, to_jsonable

ENV_CACHE_DIR = "VOXPORT_CACHE_DIR"


#: the directory holding the `voxport` package whose code the fingerprints hash
SOURCE_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "voxport"


@functools.cache
def code_fingerprint(
    roots: tuple[str, ...], *, stop: tuple[str, ...] = (), source: Path = SOURCE_ROOT
) -> str:
    """The voxport version, a hash of the code a stage runs, and the versions of the tools that shape
    artifact bytes and figures (torch, onnxruntime, coremltools, ...).

    Per stage, not per package: a report change must not throw away an hour of Core ML exports, so a
    stage's key hashes only the source it can execute (`code_closure(roots)`): its root modules and
    everything they import (at module level or inside functions), its root symbols and the helpers they
    use. The version alone would let a development checkout restore artifacts older code wrote; hashing
    the closure costs milliseconds and makes any change to that code a miss. Cached per process: the
    code a process runs does not change under it."""
    from voxport.manifest import tool_versions

    digest = hashlib.sha256()
    for name, text in sorted(code_closure(roots, stop=stop, source=source).items()):
        digest.update(name.encode() + b"\0" + text + b"\0")
    digest.update(json.dumps(tool_versions(), sort_keys=True).encode())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def code_closure(
    roots: Iterable[str], *, stop: Iterable[str] = (), source: Path = SOURCE_ROOT
) -> dict[str, bytes]:
    """The source a stage can run, as {name: bytes}, from roots of three kinds:

    - a voxport module (`voxport.validate.parity`): its file, every voxport module it imports
      (transitively, function-level imports included) and the packages above each (their __init__
      runs first);
    - a symbol (`voxport.pipeline:Build._run_measure`, a function, class, method or constant): its own
      source lines, the symbols of its module it uses (module-level names, and `self.x` members of its
      class) followed the same way, and the modules of the names it uses that its module imports.
      This is how a stage of pipeline.py, which holds every stage, is keyed on its own code and not on
      the module's: only what the stage's code refers to joins, and annotations do not count (they are
      never evaluated). `stop` lists symbols not followed: another stage's cached unit, whose result
      is an input keyed on its own;
    - anything else (`voxport_toy.model`, a family from another distribution, or a symbol in one, such
      as a format adapter's class): every .py of its top-level package, and that distribution's version.
    """
    known = _modules(source)
    pieces: dict[str, bytes] = {}
    stops = set(stop)
    todo_modules: list[str] = []
    todo_symbols: list[tuple[str, str]] = []
    for root in roots:
        module, _, qualname = root.partition(":")
        if not (module == PACKAGE or module.startswith(PACKAGE + ".")):
            pieces.update(_external_package(module))  # a plugin's symbol: its whole package
        elif qualname:
            todo_symbols.append((module, qualname))
        else:
            todo_modules.append(root)
    seen_symbols: set[tuple[str, str]] = set()
    while todo_symbols:
        module, qualname = todo_symbols.pop()
        if (module, qualname) in seen_symbols or f"{module}:{qualname}" in stops:
            continue
        seen_symbols.add((module, qualname))
        if module not in known:
            raise KeyError(f"{module}:{qualname}: no module {module} under {source}")
        symbols = _Symbols.of(known[module], module, known)
        text, uses, imports = symbols.closure_step(qualname)
        pieces[f"{module}:{qualname}"] = text
        todo_symbols += [(module, q) for q in uses]
        todo_modules += imports
    seen: set[str] = set()
    while todo_modules:
        module = todo_modules.pop()
        if module in seen:
            continue
        if module not in known:
            raise KeyError(f"{module}: no such module under {source}")
        seen.add(module)
        pieces[known[module].relative_to(source).as_posix()] = known[module].read_bytes()
        todo_modules += sorted({target for target, _ in _imports.imports_of(module, known)})
        todo_modules += [p for p in _parents(module) if p in known]
    return pieces


@functools.cache
def _modules(source: Path) -> dict[str, Path]:
    return _imports.modules(source, PACKAGE)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _external_package(root: str) -> dict[str, bytes]:
    """Every .py of the top-level package of `root` (a module outside voxport), plus its distribution's
    version: such a package is installed as a unit, so hashing all of it is simple and safe."""
    top = root.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise KeyError(f"{root}: no such module installed")
    pieces: dict[str, bytes] = {}
    if spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            base = Path(location)
            for path in sorted(base.rglob("*.py")):
                pieces[f"{top}/{path.relative_to(base).as_posix()}"] = path.read_bytes()
    elif spec.origin and spec.origin.endswith(".py"):
        pieces[f"{top}.py"] = Path(spec.origin).read_bytes()
    for dist in importlib.metadata.packages_distributions().get(top, []):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pieces[f"{top}@{dist}"] = importlib.metadata.version(dist).encode()
    return pieces


@dataclass
class _Symbols:
    """A module's top-level definitions (and its classes' members) by qualified name, and the modules
    its top-level imports bind to each name."""

    lines: list[str]
    defs: dict[str, ast.AST]
    imported: dict[str, list[str]]
    module: str
    is_package: bool
    known: Mapping[str, Path]

    @classmethod
    def of(cls, path: Path, module: str, known: Mapping[str, Path]) -> _Symbols:
        tree = _imports.parse(path)
        defs: dict[str, ast.AST] = {}
        imported: dict[str, list[str]] = {}
        is_package = path.name == "__init__.py"
        for node in _top_level(tree.body):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    one = (
                        ast.ImportFrom(module=node.module, names=[alias], level=node.level)
                        if isinstance(node, ast.ImportFrom)
                        else ast.Import(names=[alias])
                    )
                    bound = alias.asname or alias.name.split(".")[0]
                    imported.setdefault(bound, []).extend(_imports.resolve(one, module, is_package, known))
            for name in _names_defined(node):
                defs[name] = node
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    for name in _names_defined(member):
                        defs[f"{node.name}.{name}"] = member
        return cls(
            path.read_text(encoding="utf-8").splitlines(True), defs, imported, module, is_package, known
        )

    def closure_step(self, qualname: str) -> tuple[bytes, list[str], list[str]]:
        """The symbol's source, the symbols of this module it uses and the modules it imports."""
        node = self.defs.get(qualname)
        if node is None:
            raise KeyError(f"{self.module}:{qualname}: no such definition")
        decorators = getattr(node, "decorator_list", [])
        first = min([node.lineno, *(d.lineno for d in decorators)])  # type: ignore[attr-defined]
        text = "".join(self.lines[first - 1 : node.end_lineno]).encode()  # type: ignore[attr-defined]
        owner = qualname.rsplit(".", 1)[0] if "." in qualname else None
        uses: list[str] = []
        modules: list[str] = []
        for sub in _runtime_nodes(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                if sub.id in self.defs and sub.id != qualname:
                    uses.append(sub.id)
                modules += self.imported.get(sub.id, [])
            elif (
                isinstance(sub, ast.Attribute)
                and owner is not None
                and isinstance(sub.value, ast.Name)
                and sub.value.id in ("self", "cls")
                and f"{owner}.{sub.attr}" in self.defs
            ):
                uses.append(f"{owner}.{sub.attr}")
            elif isinstance(sub, ast.Import | ast.ImportFrom):
                modules += _imports.resolve(sub, self.module, self.is_package, self.known)
        return text, uses, modules


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, looking into `if`/`try` blocks (guarded imports and definitions)."""
    for node in body:
        if isinstance(node, ast.If | ast.Try):
            inner = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            inner += [s for h in getattr(node, "handlers", []) for s in h.body]
            yield from _top_level(inner)
        else:
            yield node


def _names_defined(node: ast.AST) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under `node` that can run: annotations are skipped (never evaluated here, as every
    voxport module has `from __future__ import annotations`)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for field, value in ast.iter_fields(current):
            if field in ("annotation", "returns"):
                continue
            if isinstance(value, ast.AST):
                stack.append(value)
            elif isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, ast.AST))


def stage_key(stage: str, config: Any, inputs: Iterable[str] = (), code: str | None = None) -> str:
    """sha256 over the stage name, the stage's code (`code_fingerprint`; the version and tools alone
    when None), JSON of `config` and the input keys/hashes."""
    payload = {
        "stage": stage,
        "voxport": code if code is not None else code_fingerprint(()),
        "config": to_jsonable(config),
        "inputs": list(inputs),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_inputs(path: Path) -> str:
    """Content hash of a user's input: a file, or every file under a checkpoint directory."""
    return sha256_path(path)


class EntryDamaged(Exception):
    """A cache entry whose files or record do not match what was stored; `reason` names the file."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key[:12]}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    bytes: int


def _signature(path: Path) -> tuple[Any, ...] | None:
    """What changes whenever a file's bytes change: size, mtime, ctime and inode of every file under
    `path`. ctime cannot be set back by any tool, and voxport (like copy tools) replaces files, which
    changes the inode, so an unchanged signature means unchanged bytes. The one blind spot, an in-place
    rewrite within one kernel clock tick (a few ms) of the hash, is too narrow for anything but a
    process racing the build, which the output directory's lock rules out."""
    try:
        files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
        stats = [(p.as_posix(), p.stat()) for p in files]
    except OSError:
        return None
    return tuple((name, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for name, s in stats)


class Digests:
    """sha256 and size of files, memoised while their stat signature is unchanged.

    One build hashes an artifact when the cache restores (or stores) it, when validation checks that
    it still holds the exported bytes, and when the manifest records it: the memo makes that one read."""

    def __init__(self) -> None:
        self._memo: dict[Path, tuple[tuple[Any, ...], FileDigest]] = {}

    def of(self, path: Path) -> FileDigest:
        """The digest of a file or `.mlpackage` directory (OSError if it is missing)."""
        path = Path(os.path.abspath(path))
        signature = _signature(path)
        if signature is not None:
            known = self._memo.get(path)
            if known is not None and known[0] == signature:
                return known[1]
        digest = FileDigest(sha256_path(path), path_size(path))
        if signature is not None and _signature(path) == signature:  # not rewritten while we read it
            self._memo[path] = (signature, digest)
        return digest

    def remember(self, path: Path, digest: FileDigest) -> None:
        """Record a digest known without reading (a copy of bytes that were just hashed)."""
        path = Path(os.path.abspath(path))
        signature = _signature(path)
        if signature is not None:
            self._memo[path] = (signature, digest)

    def matches(self, path: Path, expected: FileDigest) -> bool:
        """Size first (a stat), then the hash: a truncated file is told apart without reading it."""
        try:
            if path_size(path) != expected.bytes:
                return False
            return self.of(path) == expected
        except OSError:
            return False


def entry_checksum(entry: Mapping[str, Any]) -> str:
    """sha256 of an entry's record without its checksum: a flipped digit in a cached parity figure is
    as damaging as a flipped byte in an artifact."""
    body = {k: v for k, v in entry.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StageCache:
    """Entries under one directory; safe to share between builds and to keep between CI runs."""

    #: a temporary entry older than this was left by a killed build (a live one is minutes old at most)
    STALE_SECONDS = 3600.0

    def __init__(self, root: Path, digests: Digests | None = None) -> None:
        self.root = Path(root)
        self.digests = digests if digests is not None else Digests()
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
        """The entry for `key` if it is complete and every file it lists is present, else None.

        Only cheap checks (parse, presence); the contents are checked by `restore`, which reads them."""
        entry_dir = self._dir(key)
        try:
            entry = json.loads((entry_dir / "entry.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
            return None
        if not all((entry_dir / "files" / rel).exists() for rel in entry["files"]):
            return None
        self.touched.add(key)
        return entry

    def check(self, key: str, entry: Mapping[str, Any]) -> dict[str, FileDigest]:
        """Every file of the entry as recorded, or EntryDamaged: the record's checksum first, then
        each file's size and sha256 against the record."""
        if entry.get("checksum") != entry_checksum(entry):
            raise EntryDamaged(key, "entry.json does not match its checksum")
        hashes = entry.get("hashes")
        if not isinstance(hashes, dict) or set(hashes) != set(entry["files"]):
            raise EntryDamaged(key, "entry.json records no checksum for some files")
        recorded = {rel: FileDigest(h["sha256"], h["bytes"]) for rel, h in hashes.items()}
        source = self._dir(key) / "files"
        for rel, expected in recorded.items():
            try:
                size = path_size(source / rel)
            except OSError:
                raise EntryDamaged(key, f"{rel} missing") from None
            if size != expected.bytes:
                raise EntryDamaged(key, f"{rel} is {size} bytes, {expected.bytes} recorded")
            if sha256_path(source / rel) != expected.sha256:
                raise EntryDamaged(key, f"{rel} sha256 mismatch")
        return recorded

    def restore(self, key: str, out: Path) -> Any:
        """Check the entry, then copy its files into the build directory (atomically, one by one) and
        return its result. A file already in the build directory with the recorded bytes is left as it
        is (no rewrite, same mtime). EntryDamaged if the entry does not hold what it recorded."""
        entry = self.get(key)
        if entry is None:
            raise KeyError(key)
        recorded = self.check(key, entry)
        source = self._dir(key) / "files"
        for rel in entry["files"]:
            dst = out / rel
            if dst.exists() and self.digests.matches(dst, recorded[rel]):
                continue
            _copy_atomic(source / rel, dst)
            self.digests.remember(dst, recorded[rel])  # a copy of bytes just checked: no second read
        return entry["result"]

    def drop(self, key: str) -> None:
        """Remove an entry (damaged, or replaced): moved aside first so no reader sees half of it."""
        final = self._dir(key)
        if not final.exists():
            return
        doomed = final.parent / f".{key}.tmp-{secrets.token_hex(6)}"
        with contextlib.suppress(OSError):
            os.replace(final, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def put(
        self, key: str, stage: str, out: Path, files: Iterable[str], result: Any, *, replace: bool = False
    ) -> dict[str, FileDigest]:
        """Store `files` (relative to `out`, restored in this order) and `result` under `key`, recording
        each file's sha256 and size; return those digests.

        A no-op (apart from hashing) if the entry exists, unless `replace` (`--force` rebuilds repair a
        damaged cache)."""
        final = self._dir(key)
        self.touched.add(key)
        rels = list(dict.fromkeys(files))
        digests = {rel: self.digests.of(out / rel) for rel in rels}
        if not replace and self.get(key) is not None:
            return digests
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.tmp-{secrets.token_hex(6)}"
        try:
            tmp.mkdir()  # an entry may hold no files (a unit measured nothing): its record still goes here
            for rel in rels:
                _copy_tree_or_file(out / rel, tmp / "files" / rel)
            entry: dict[str, Any] = {
                "stage": stage,
                "key": key,
                "files": rels,
                "hashes": {rel: {"sha256": d.sha256, "bytes": d.bytes} for rel, d in digests.items()},
                "result": to_jsonable(result),
            }
            entry["checksum"] = entry_checksum(entry)
            (tmp / "entry.json").write_text(json.dumps(entry, indent=1, ensure_ascii=False), encoding="utf-8")
            self.drop(key)  # an incomplete entry left by a killed build, or `replace`
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return digests

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
    with atomic_path(dst, keep_suffix=dst.is_dir() or src.is_dir()) as tmp:
        _copy_tree_or_file(src, tmp)


def default_cache_dir(out: Path, given: Path | None, env: Mapping[str, str] = os.environ) -> Path:
    """`--cache-dir`, else $VOXPORT_CACHE_DIR, else OUT/stages/cache (a rebuild into the same OUT hits)."""
    if given is not None:
        return Path(given)
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR])
    return out / "stages" / "cache"
