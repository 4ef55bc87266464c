"""manifest.json: the machine-readable record of a build, written beside the artifacts.

CI reads it to decide pass/fail and to check that the files it is about to ship are the ones that were
validated (sha256 and size per file); people read the HTML report generated from the same data.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from voxport.errors import BadInput
from voxport.io import atomic_write_text, path_size, sha256_path

MANIFEST_NAME = "manifest.json"

# validate always reports these, None when a metric does not apply (e.g. waveform SNR with unequal lengths)
REQUIRED_METRICS: tuple[str, ...] = ("snr_db", "logmel_dtw_db", "mcd_db", "duration_match", "length_ratio")

#: what shapes every artifact's bytes, whatever the format or family; each format adapter and each
#: family adds its own (`tool_packages`)
CORE_TOOL_PACKAGES = ("torch", "transformers", "numpy")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class _Base(BaseModel):
    # forbid: a misspelt field in pipeline code must fail at build time, not vanish from the manifest.
    model_config = ConfigDict(extra="forbid")


def _relative_posix(path: str) -> str:
    """Artifact paths are relative to the output dir, so the folder can be moved or uploaded whole."""
    if not path or "\\" in path:
        raise ValueError(f"artifact path {path!r} must be a non-empty posix path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"artifact path {path!r} must be relative to the output directory")
    return pure.as_posix()


def _sha256_hex(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a lowercase hex sha256")
    return value


RelPath = Annotated[str, AfterValidator(_relative_posix)]
Sha256 = Annotated[str, AfterValidator(_sha256_hex)]


class ArtifactFile(_Base):
    """One file (or `.mlpackage` directory) that an artifact consists of, e.g. one graph of several."""

    graph: str
    path: RelPath
    sha256: Sha256
    bytes: int = Field(ge=0)

    @classmethod
    def from_path(
        cls, out_dir: str | os.PathLike[str], path: str | os.PathLike[str], graph: str
    ) -> ArtifactFile:
        """Hash and measure a file already written under `out_dir` (absolute or out_dir-relative path)."""
        out, full = _locate(out_dir, path)
        return cls(
            graph=graph,
            path=full.relative_to(out).as_posix(),
            sha256=sha256_path(full),
            bytes=path_size(full),
        )


class Parity(_Base):
    """Parity verdict for one artifact; `metrics` always carries the REQUIRED_METRICS keys."""

    passed: bool
    metrics: dict[str, float | None] = Field(default_factory=dict)
    failures: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _required_keys(self) -> Parity:
        for key in REQUIRED_METRICS:
            self.metrics.setdefault(key, None)
        return self


class Artifact(_Base):
    """One shipped model: a format at a precision; `path` is its main file, `files` every file in it."""

    format: str
    precision: str
    path: RelPath
    sha256: Sha256
    bytes: int = Field(ge=0)
    bits_per_weight: float = Field(ge=0)
    skipped_weights: list[dict[str, Any]] = Field(default_factory=list)
    files: list[ArtifactFile] = Field(default_factory=list)
    parity: Parity
    #: another runtime's layout of the format's artifact at this precision ("sherpa-onnx": its own files,
    #: its own parity measured in that runtime); None for voxport's own artifact
    layout: str | None = None


class ModelInfo(_Base):
    family: str
    source: str
    parameters: int = Field(ge=0)


class Manifest(_Base):
    voxport_version: str
    created_by: str = "voxport"
    recipe: dict[str, Any]
    model: ModelInfo
    artifacts: list[Artifact] = Field(default_factory=list)
    #: pre-rendered phrase audio and its index (`graph` holds the phrase text, or "index")
    phrases: list[ArtifactFile] = Field(default_factory=list)
    passed: bool
    tool_versions: dict[str, str] = Field(default_factory=dict)


def _locate(out_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> tuple[Path, Path]:
    out = Path(os.path.abspath(out_dir))
    full = Path(os.path.abspath(out / path))  # an absolute `path` replaces `out` in the join
    try:
        full.relative_to(out)
    except ValueError:
        raise ValueError(f"{full} is not inside the output directory {out}") from None
    return out, full


def manifest_path(out_dir: str | os.PathLike[str]) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def write_manifest(out_dir: str | os.PathLike[str], manifest: Manifest) -> Path:
    """Atomic, so CI never reads a half-written manifest of a build that is still running or died."""
    # pydantic writes NaN/inf as null: strict JSON for jq and browsers.
    return atomic_write_text(manifest_path(out_dir), manifest.model_dump_json(indent=2) + "\n")


def read_manifest(out_dir: str | os.PathLike[str]) -> Manifest:
    """Load `<out_dir>/manifest.json` (or the manifest file itself, if given one)."""
    given = Path(out_dir)
    path = given if given.is_file() else manifest_path(given)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(
            f"no {MANIFEST_NAME} in {given}: is this a voxport output directory (--out)?"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(
            f"{path} is corrupt: not JSON (line {exc.lineno}: {exc.msg}); rebuild to replace it"
        ) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise BadInput(f"{path} is not a voxport manifest: {where}: {err['msg']}") from None


def verify_files(out_dir: str | os.PathLike[str], manifest: Manifest) -> list[str]:
    """Every difference between the files on disk and the manifest; an empty list means all match.

    Size is compared before hashing, so a truncated upload is reported without reading gigabytes.
    """
    out = Path(out_dir)
    problems: list[str] = []
    checked: set[tuple[str, str, int]] = set()
    entries = []
    for artifact in manifest.artifacts:
        entries.append((artifact.path, artifact.sha256, artifact.bytes))
        entries += [(f.path, f.sha256, f.bytes) for f in artifact.files]
    entries += [(f.path, f.sha256, f.bytes) for f in manifest.phrases]
    for rel, sha, size in entries:
        if (rel, sha, size) in checked:
            continue
        checked.add((rel, sha, size))
        full = out / rel
        if not full.exists():
            problems.append(f"{rel}: missing")
            continue
        actual_size = path_size(full)
        if actual_size != size:
            problems.append(f"{rel}: {actual_size} bytes on disk, manifest says {size}")
            continue
        actual_sha = sha256_path(full)
        if actual_sha != sha:
            problems.append(f"{rel}: sha256 {actual_sha[:12]}… does not match the manifest's {sha[:12]}…")
    return problems


def tool_packages() -> tuple[str, ...]:
    """The core packages, then each registered format's and each registered family's, once each."""
    from voxport.export.registry import formats
    from voxport.families.registry import families

    packages = [*CORE_TOOL_PACKAGES]
    for adapter in formats().values():
        packages += adapter.tool_packages
    for family in families().values():
        packages += family.tool_packages
    return tuple(dict.fromkeys(packages))


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes the artifacts' bytes; packages not installed are left out."""
    versions = {"python": platform.python_version()}
    for package in tool_packages():
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
