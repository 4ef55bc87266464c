"""The artifact formats, one registered adapter each: the only list of formats voxport has.

An adapter is one subclass of `FormatAdapter`, registered by naming it (gguf-py registers its quant
types the same way):

    class NpzFormat(FormatAdapter[NpzOptions, None], name="npz"):
        suffix = ".npz"
        Options = NpzOptions
        ...

It owns everything voxport knows about its format: its options (the recipe's `export.<name>:`
section and JSON schema are generated from `Options`), a recipe check, what shapes its bytes (the export
cache key), the work shared across precisions (`prepare`), the export of one precision, the runtime that
validate measures it in, the load `voxport verify` tries and the description `voxport inspect` prints.
The pipeline, the recipe, verify and inspect loop over `formats()` and never name a format.

Adapters never see a Recipe: they get their own validated `Options`. The built-in adapters are
loaded from module names, so importing the registry imports none of them (and none of their runtimes);
formats of other packages come from the `voxport.formats` entry point group. A format registered after
`voxport.recipe` was imported is accepted in `formats:` and exports with its default options; its
`export:` section is known to recipes only when it is registered first (an entry point is).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from voxport.config import ConfigModel
from voxport.errors import BadInput

if TYPE_CHECKING:
    from voxport.families.base import FamilyModel
    from voxport.families.layouts.onnx import OnnxLayout
    from voxport.quantize.stage import QuantizedModel
    from voxport.runtime.base import Runner

# TODO(WP-C): import Precision from voxport.quantize.precisions once it exists (defined once there).
Precision = Literal["fp32", "fp16", "int8", "int4"]

#: modules holding the built-in adapters, imported on first use of the registry
BUILTIN: tuple[str, ...] = (
    "voxport.export.onnx.adapter",
    "voxport.export.gguf.adapter",
    "voxport.export.coreml.adapter",
)
ENTRY_POINT_GROUP = "voxport.formats"

O = TypeVar("O", bound=ConfigModel)  # noqa: E741  (the adapter's options model)
P = TypeVar("P")  # what `prepare` shares across one build's precisions


@dataclass(frozen=True)
class ExportContext(Generic[O]):
    """What one export needs: the recipe's name (file stems, metadata), the model, one precision's
    quantized weights, the build directory and the format's own options."""

    name: str
    model: FamilyModel
    qm: QuantizedModel
    out: Path
    options: O

    def rel(self, path: Path) -> str:
        """`path` as the export index records it: relative to the build directory, posix."""
        return path.relative_to(self.out).as_posix()


#: keys of an entry's JSON that are fields; every other key is a format's own detail
_FIELDS = (
    "format",
    "precision",
    "path",
    "files",
    "sidecars",
    "layout",
    "bits_per_weight",
    "skipped_weights",
    "runtime_layout",
    "runtime",
    "export_seconds",
    "sha256",
)


@dataclass
class ExportEntry:
    """One exported artifact, as `stages/export.json` records it and validate and the manifest read it.

    Paths are relative to the build directory. `files` are the artifact's own files by role (graph
    name), `path` the one a user loads; `sidecars` are files a runtime needs beside it (None: the
    format writes none). `details` are a format's own facts (GGUF tensor types, the Core ML target),
    kept flat in the JSON. The pipeline fills `export_seconds` and `sha256` (every file's hash, what
    validate measures and the manifest certifies)."""

    format: str
    precision: str
    path: str
    files: dict[str, str]
    bits_per_weight: float
    skipped_weights: list[dict[str, Any]]
    sidecars: dict[str, str] | None = None
    #: the runtime layout the files follow ("llama.cpp pockettts"); None: voxport's own
    layout: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: another runtime's files of an artifact (`FormatAdapter.export_layout`): its own unit and figures
    runtime_layout: bool = False
    #: the distribution that runs a runtime layout's files for validate; None: written, never measured
    runtime: str | None = None
    export_seconds: float | None = None
    sha256: dict[str, str] = field(default_factory=dict)

    @property
    def all_files(self) -> dict[str, str]:
        """The artifact's files and its sidecars, by role."""
        return {**self.files, **(self.sidecars or {})}

    def to_json(self) -> dict[str, Any]:
        """The export index's JSON object (the same keys, in the same order, as before the registry)."""
        data: dict[str, Any] = {
            "format": self.format,
            "precision": self.precision,
            "path": self.path,
            "files": dict(self.files),
        }
        if self.sidecars is not None:
            data["sidecars"] = dict(self.sidecars)
        if self.layout is not None:
            data["layout"] = self.layout
        data["bits_per_weight"] = self.bits_per_weight
        data["skipped_weights"] = list(self.skipped_weights)
        data.update(self.details)
        if self.runtime_layout:
            data["runtime_layout"] = True
            data["runtime"] = self.runtime
        data["export_seconds"] = self.export_seconds
        data["sha256"] = dict(self.sha256)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportEntry:
        return cls(
            format=data["format"],
            precision=data["precision"],
            path=data["path"],
            files=dict(data["files"]),
            bits_per_weight=data["bits_per_weight"],
            skipped_weights=list(data["skipped_weights"]),
            sidecars=dict(data["sidecars"]) if data.get("sidecars") is not None else None,
            layout=data.get("layout"),
            details={k: v for k, v in data.items() if k not in _FIELDS},
            runtime_layout=bool(data.get("runtime_layout", False)),
            runtime=data.get("runtime"),
            export_seconds=data.get("export_seconds"),
            sha256=dict(data.get("sha256", {})),
        )


class FormatAdapter(ABC, Generic[O, P]):
    """One artifact format. Subclass with `name=...` to register it; see the module docstring."""

    name: ClassVar[str]
    #: how the format's model files end (".onnx", ".gguf", ".mlpackage"): verify and inspect match on it
    suffix: ClassVar[str]
    #: the recipe's `export.<name>:` section
    Options: ClassVar[type[ConfigModel]]
    #: distributions whose versions shape this format's bytes (recorded in the manifest)
    tool_packages: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            _register(cls)

    def check(self, options: O, precisions: Sequence[str]) -> str | None:
        """Why these options cannot hold these precisions (said when the recipe is read, before hours
        of work), or None."""
        return None

    def cache_options(self, options: O, precision: str) -> Any:
        """The options that shape one precision's bytes, JSON-able (part of its export cache key)."""
        return options.model_dump(mode="json")

    def prepare(self, model: FamilyModel, options: O) -> P | None:
        """Work shared by every precision of one build (e.g. traced graphs); None by default."""
        return None

    @abstractmethod
    def export(self, ctx: ExportContext[O], prepared: P | None) -> ExportEntry:
        """Write one precision's artifact under `ctx.out` and describe it."""

    def export_layout(self, ctx: ExportContext[O], layout: OnnxLayout) -> ExportEntry:
        """Write one of a family's runtime layouts (`FamilyModel.runtime_layouts`) of one precision, its
        own artifact; a format whose families declare none never gets here."""
        raise BadInput(
            f"{ctx.model.family} declares a runtime layout '{layout.name}' for {self.name}, "
            "which writes none; remove it from the family's `layouts`"
        )

    @abstractmethod
    def runner(self, model: FamilyModel, entry: ExportEntry, out: Path) -> Runner:
        """The runtime validate measures the artifact in."""

    @abstractmethod
    def verify_load(self, path: Path) -> None:
        """Open one model file (a path ending in `suffix`) as its runtime would; raise if it cannot."""

    @abstractmethod
    def describe(self, path: Path) -> dict[str, Any]:
        """What one model file holds, in numbers (`voxport inspect`); BadInput when it is damaged."""


_REGISTRY: dict[str, type[FormatAdapter[Any, Any]]] = {}
_loaded = False


def _register(cls: type[FormatAdapter[Any, Any]]) -> None:
    for attr in ("suffix", "Options"):
        if not hasattr(cls, attr):
            raise TypeError(f"format adapter {cls.__qualname__} ({cls.name!r}) must set {attr}")
    known = _REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(
            f"format {cls.name!r} is registered twice: by {known.__module__}.{known.__qualname__} "
            f"and by {cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[cls.name] = cls


def unregister(name: str) -> None:
    """Forget a format (for tests that register a toy one)."""
    _REGISTRY.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN:
        importlib.import_module(module)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, FormatAdapter)) or cls.name != ep.name:
            raise BadInput(
                f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) is not a FormatAdapter "
                f"registered as {ep.name!r}; fix or uninstall the package that declares it"
            )


def formats() -> dict[str, type[FormatAdapter[Any, Any]]]:
    """Every registered format by name, built-ins first (onnx, gguf, coreml)."""
    _load()
    rank = {module: i for i, module in enumerate(BUILTIN)}
    ordered = sorted(_REGISTRY.items(), key=lambda item: rank.get(item[1].__module__, len(rank)))
    return dict(ordered)  # sorted() is stable: other formats keep their registration order


def get_format(name: str) -> FormatAdapter[Any, Any]:
    known = formats()
    if name not in known:
        raise BadInput(f"unknown format {name!r} (known: {', '.join(known)})")
    return known[name]()


def format_for_path(path: Path) -> FormatAdapter[Any, Any] | None:
    """The format whose model files end like `path` (`x.int8.onnx` → onnx), or None."""
    for cls in formats().values():
        if path.name.endswith(cls.suffix):
            return cls()
    return None
