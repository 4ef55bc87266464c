"""Which families this voxport knows: the built-ins plus any package's `voxport.families` entry points.

A separate package adds an architecture without editing voxport by declaring, in its pyproject,

    [project.entry-points."voxport.families"]
    toy = "voxport_toy:ToyFamily"

The built-ins are named here as strings and imported only when the registry is first asked, so this
module imports no family (the layer test sees no edge from the contract to its members) and
`voxport --help` never loads torch. Every checkpoint, artifact and recipe finds its family here.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from voxport.errors import BadInput
from voxport.families.base import Family, FamilyModel, check_finite_weights

#: the entry-point group a package registers its families under
GROUP = "voxport.families"
#: voxport's own families, "module:class" like an entry point's value
BUILTIN: tuple[str, ...] = (
    "voxport.families.vits:VitsFamily",
    "voxport.families.pocket_tts:PocketTTSFamily",
    "voxport.families.kokoro:KokoroFamily",
    "voxport.families.voxtral_tts:VoxtralFamily",
)
#: who provides the built-ins, in duplicate-name messages
_VOXPORT = "voxport (built in)"

#: families registered in-process (tests, notebooks) with `register`, on top of the discovered ones
_REGISTERED: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    """Add a family from the running process (no packaging needed); usable as a class decorator."""
    _check_class(family, family.name, f"register({family.__name__})")
    known = _discovered()
    if family.name in known and known[family.name][0] is not family:
        raise BadInput(
            f"family {family.name!r} is already provided by {known[family.name][1]}; choose another name"
        )
    _REGISTERED[family.name] = family
    return family


def families() -> dict[str, type[Family]]:
    """Every known family by name: built-ins, entry points, then in-process registrations."""
    return {**{name: cls for name, (cls, _) in _discovered().items()}, **_REGISTERED}


@functools.cache
def _discovered() -> dict[str, tuple[type[Family], str]]:
    """name -> (family class, who provides it). Loaded once per process; a broken or clashing entry
    point is a BadInput naming the distribution, so the user knows which package to fix or remove."""
    found: dict[str, tuple[type[Family], str]] = {}
    for spec in BUILTIN:
        module, _, attr = spec.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        _add(found, cls, cls.name, _VOXPORT)
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        provider = _provider(ep)
        try:
            cls = ep.load()
        except Exception as exc:  # any import failure of someone else's package
            raise BadInput(
                f"the {GROUP} entry point {ep.name!r} = {ep.value!r} of {provider} does not load "
                f"({type(exc).__name__}: {exc}); fix or uninstall {provider}"
            ) from None
        _check_class(cls, ep.name, f"entry point {ep.name!r} = {ep.value!r} of {provider}")
        _add(found, cls, ep.name, provider)
    return found


def _provider(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"the package {dist.name} {dist.version}" if dist is not None else f"module {ep.module}"


def _check_class(cls: object, name: str, where: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Family)):
        raise BadInput(f"{where} is not a voxport Family subclass (got {cls!r})")
    if getattr(cls, "name", None) != name:
        raise BadInput(
            f"{where}: the class says its name is {getattr(cls, 'name', None)!r}, the entry point says "
            f"{name!r}; make them equal"
        )


def _add(found: dict[str, tuple[type[Family], str]], cls: type[Family], name: str, provider: str) -> None:
    if name in found and found[name][0] is not cls:
        raise BadInput(
            f"family {name!r} is provided twice: by {found[name][1]} and by {provider}; uninstall one of them"
        )
    found[name] = (cls, provider)


def family_of(model: FamilyModel) -> type[Family]:
    """The registered family a loaded model belongs to."""
    known = families()
    if model.family not in known:
        names = ", ".join(sorted(known))
        raise BadInput(f"a {model.family!r} model, but no such family is registered (known: {names})")
    return known[model.family]


def detect_family(path: Path, forced: str | None = None) -> type[Family]:
    """The family for a checkpoint, or a BadInput naming what was found and what is supported."""
    known = families()
    if forced is not None:
        if forced not in known:
            raise BadInput(f"unknown family '{forced}' (known: {', '.join(sorted(known))})")
        return known[forced]
    if not path.exists():
        raise BadInput(f"checkpoint not found: {path}")
    for family in known.values():
        if family.recognizes(path):
            return family
    hints = [f.checkpoint_hint for f in known.values() if f.checkpoint_hint]
    raise BadInput(
        f"{path}: unknown architecture (supported: {', '.join(sorted(known))})"
        + (f"; expected e.g. {', '.join(hints[:-1])} or {hints[-1]}" if len(hints) > 1 else "")
        + (f"; expected e.g. {hints[0]}" if len(hints) == 1 else "")
    )


def load_model(path: Path, *, family: str | None = None, trust_pickle: bool = False) -> FamilyModel:
    """A checkpoint as its family's model, refused if any weight is NaN or infinite.

    Every stage (convert, `say`, `inspect`) loads through here, so a damaged checkpoint is stopped before
    anything is written, with the tensor's name, instead of surfacing as NaN audio at parity time."""
    model = detect_family(path, family).load(path, trust_pickle=trust_pickle)
    check_finite_weights(model, path)
    return model
