"""The quantization-method protocol and its registry: a method is one registered subclass.

As in gguf-py's ``quants.py`` (one class per quant type, registered by subclassing) a method is added
by writing ``class Gptq(QuantMethod, name="gptq")``; nothing else changes. Another package declares its
methods under the ``voxport.quantize_methods`` entry point group, so recipes can name them. Its options
are a typed pydantic model whose fields carry a type, a default and a description (Olive's pass
configs), so the recipe validates ``quantize.options`` with the method's own model and the cache keys them.

A *calibrated* method (GPTQ, AWQ) sets ``calibrated = True``; before any weight is quantized it gets
``calibrate(model, batch, names)``, where ``model.calibration_inputs(batch, names)`` yields what each
named weight sees while the model speaks the calibration sentences (`WeightInputs`: activations in the
weight's own 2-D view). Then ``quantize_weight`` is called once per weight that the plan stores at an
integer precision, and returns its codes and scales.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from voxport.errors import BadInput
from voxport.quantize.precisions import PrecisionSpec
from voxport.quantize.tensor import QuantizedTensor

if TYPE_CHECKING:
    from voxport.families.base import CalibrationSet, FamilyModel, WeightInputs


class MethodOptions(BaseModel):
    """Base of every method's options: unknown keys are errors (a typo must not fall back to a
    default), and the model is frozen so a method cannot change its own cache key mid-build."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(MethodOptions):
    """The options of a method that takes none."""


_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*")

#: built-in methods by name -> the module that defines them, imported on first use so that a stage's
#: import closure (and its cache fingerprint) holds only the methods it runs
BUILTIN: dict[str, str] = {
    "rtn": "voxport.quantize.methods.rtn",
    "mse": "voxport.quantize.methods.mse",
    "gptq": "voxport.quantize.methods.gptq",
    "imatrix": "voxport.quantize.methods.imatrix",
}

#: methods of other packages: `[project.entry-points."voxport.quantize_methods"] NAME = "module:Class"`
ENTRY_POINT_GROUP = "voxport.quantize_methods"

_REGISTRY: dict[str, type[QuantMethod]] = {}
_entry_points_loaded = False


class QuantMethod(ABC):
    """Chooses integer codes and scales for one weight at a time.

    Subclass with a name to register: ``class Rtn(QuantMethod, name="rtn")``. A subclass without a name
    is an abstract helper and is not registered."""

    name: ClassVar[str]
    #: typed, described parameters; `NoOptions` when the method takes none
    Options: ClassVar[type[MethodOptions]] = NoOptions
    #: True: `calibrate` must run on calibration sentences before `quantize_weight`
    calibrated: ClassVar[bool] = False

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            return
        if not _NAME_RE.fullmatch(name):
            raise TypeError(f"quantization method name {name!r}: use lowercase letters, digits, '_' and '-'")
        taken = _REGISTRY.get(name)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise TypeError(f"quantization method {name!r} is already registered by {_qualified(taken)}")
        cls.name = name
        _REGISTRY[name] = cls

    def __init__(self, options: MethodOptions | Mapping[str, Any] | None = None) -> None:
        """`options` as the method's `Options` (or a mapping validated into it; pydantic's
        ValidationError when it does not fit)."""
        if isinstance(options, self.Options):
            self.options: MethodOptions = options
        else:
            self.options = self.Options.model_validate(dict(options or {}))

    def calibrate(self, model: FamilyModel, batch: CalibrationSet, names: Collection[str]) -> None:  # noqa: B027
        """Gather what the method needs from the model speaking `batch` (default: nothing).

        `names` are the weights about to be quantized to an integer precision. The same method object
        may be calibrated again for another precision of the same build, with the same model and batch:
        a method keeps what it gathered and records only names it has not seen."""

    @abstractmethod
    def quantize_weight(
        self, name: str, weight: np.ndarray, spec: PrecisionSpec, block_size: int
    ) -> QuantizedTensor:
        """Codes and scales of `weight` (any >= 2-D float array) at integer precision `spec`.

        `block_size` applies to blocked precisions (`spec.blocked`); `Blocks.of(weight, spec,
        block_size)` cuts the weight as every format expects. ValueError for a weight that cannot be
        quantized (NaN, empty, scale out of the float16 range)."""

    def error(self, name: str, weight: np.ndarray, quantized: QuantizedTensor) -> float:
        """How far `quantized` is from `weight`, as this method judges it (lower is better): the squared
        weight error by default; a calibrated method weighs it by what the weight's inputs were, so the
        figure is the layer's output error on the calibration sentences. `voxport quantize` prints each
        module's error relative to rtn's codes measured the same way."""
        diff = weight_delta(weight, quantized)
        return float(np.sum(diff * diff))

    def describe(self) -> dict[str, Any]:
        """Name and options for logs and the cache key (options with their defaults filled in)."""
        return {"method": self.name, "options": self.options.model_dump(mode="json")}


def weight_delta(weight: np.ndarray, quantized: QuantizedTensor) -> np.ndarray:
    """`weight` minus its dequantized codes in float64, in the codes' 2-D (rows, columns) view: the
    error every method's `error` weighs its own way."""
    w2 = np.asarray(weight, dtype=np.float64).reshape(quantized.rows, -1)
    return w2 - quantized.dequantize().reshape(w2.shape).astype(np.float64)


class RecordingMethod(QuantMethod):
    """Base of a calibrated method that keeps a statistic per weight from its recorded inputs (gptq's
    Hessian, imatrix's importance): `calibrate` records only names not asked for before (a build
    calibrates again per precision), `absorb` takes one recording (which can feed several methods) and
    hands each weight's inputs to `take`. `fallback` says why a weight had nothing recorded."""

    calibrated = True

    def __init__(self, options: MethodOptions | Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        #: weights quantized without calibration data because none was recorded for them, with why
        self.fallback: dict[str, str] = {}
        self._asked: set[str] = set()

    def calibrate(self, model: FamilyModel, batch: CalibrationSet, names: Collection[str]) -> None:
        todo = [n for n in names if n not in self._asked]
        self._asked.update(todo)
        self.absorb(model.calibration_inputs(batch, todo))

    def absorb(self, recorded: Iterable[WeightInputs]) -> None:
        """Take what `calibration_inputs` yielded; a name seen before is replaced."""
        for inputs in recorded:
            self._asked.add(inputs.name)
            self.take(inputs)

    @abstractmethod
    def take(self, inputs: WeightInputs) -> None:
        """Keep what the method needs of one weight's recorded inputs."""

    def uncalibrated(self, name: str) -> str:
        """Why `name` has no statistic (recorded in `fallback`)."""
        reason = "not calibrated" if name not in self._asked else "no inputs recorded"
        self.fallback[name] = reason
        return reason


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_entry_points() -> None:
    """Import the methods other packages declare (once): a recipe can name them with nothing imported."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if (
            not (isinstance(cls, type) and issubclass(cls, QuantMethod))
            or getattr(cls, "name", None) != ep.name
        ):
            raise BadInput(
                f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) is not a QuantMethod registered "
                f"as {ep.name!r}; fix or uninstall the package that declares it"
            )


def methods() -> dict[str, type[QuantMethod]]:
    """Every registered method by name: the built-ins first, then those registered by subclassing or
    declared as entry points."""
    for module in BUILTIN.values():
        importlib.import_module(module)
    _load_entry_points()
    return {**{n: _REGISTRY[n] for n in BUILTIN}, **_REGISTRY}


def method_class(name: str) -> type[QuantMethod]:
    """The class registered as `name`, importing only its module when it is a built-in."""
    if name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    elif name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantization method {name!r} (known: {', '.join(methods())})")
    return _REGISTRY[name]


def get_method(name: str, options: MethodOptions | Mapping[str, Any] | None = None) -> QuantMethod:
    """A ready method object: `name`'s class with `options` validated into its `Options`."""
    return method_class(name)(options)
