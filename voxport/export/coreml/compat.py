"""Every patch voxport applies to coremltools, in one place, applied idempotently by `apply_patches()`.

coremltools 9.0 is tested against torch 2.7 and numpy 1.x; voxport runs torch 2.13 and numpy 2, and
needs aligned multi-input enumerated shapes, which coremltools 9.0 scrambles. Each patch below names
what breaks, in which coremltools version, and the test in ``tests/test_coreml_compat.py`` that
reproduces the failure without the patch: when that test starts failing (the unpatched code no
longer breaks), the patch can be deleted.

Where the cause is our own model code and an exact rewrite exists, the model is fixed instead (VITS'
relative-position attention: `voxport.families.vits.attention`); patches are only for coremltools
bugs that any ordinary torch code hits.

Patches replace coremltools module globals (never its files), only when `apply_patches()` runs,
which the converter calls; `remove_patches()` restores the originals (for the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Patch:
    """One replacement of a coremltools module global; `why` is the patch function's docstring.

    `torch_op`: `attribute` names a torch op in the torch frontend's registry instead of a module
    global (the converter looks translation functions up there, not in the `ops` module)."""

    name: str
    module: str
    attribute: str
    make: Callable[[Callable[..., Any]], Callable[..., Any]]
    torch_op: bool = False


_MARK = "__voxport_patch__"


def _scalar_cast_numpy2(original: Callable[..., Any]) -> Callable[..., Any]:
    """torch frontend `_cast` (behind the ``int``/``bool`` torch ops) on a one-element const array.

    What breaks: coremltools 9.0, ``coremltools/converters/mil/frontend/torch/ops.py::_cast``. When
    torch code reads a size and uses it as a Python number (``b, c, t = x.shape; x.reshape(b, c, -1,
    t)``), the trace holds ``prim::NumToTensor`` → ``aten::Int``. coremltools folds the size to a
    const of shape ``(1,)`` and then calls ``int(val)`` on that array; numpy ≥ 2 refuses (``TypeError:
    only 0-dimensional arrays can be converted to Python scalars``), numpy 1.x only warned. The VITS
    duration predictor's conv flows (`voxport.families.vits.graphs._conv_flow_reverse`) do exactly this.

    The fix: a foldable input holding exactly one element is converted through ``.item()``; anything
    else goes to the original function unchanged.

    No longer needed when: ``test_cast_patch_still_needed`` in tests/test_coreml_compat.py fails, i.e.
    converting ``x.reshape(*x.shape[:2], -1, x.shape[2])`` succeeds with the original function.
    """
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil import Builder as mb

    def _cast(context: Any, node: Any, dtype: type, dtype_name: str) -> None:
        x = ops._get_inputs(context, node, expected=1)[0]
        value = x.val if x.can_be_folded_to_const() else None
        if isinstance(value, np.ndarray) and value.ndim > 0 and value.size == 1:
            context.add(mb.const(val=dtype(value.reshape(()).item()), name=node.name), node.name)
            return
        original(context, node, dtype, dtype_name)

    return _cast


def _reciprocal_of_integers(original: Callable[..., Any]) -> Callable[..., Any]:
    """torch frontend ``aten::reciprocal`` on an integer tensor.

    What breaks: coremltools 9.0, ``coremltools/converters/mil/frontend/torch/ops.py::reciprocal``
    maps it to MIL ``inverse``, whose input must be fp16/fp32; torch's ``reciprocal`` of an integer
    tensor is a float tensor. Traced code that divides by a size read from a shape (``b, t, h, d =
    x.shape; ... * 2 / d``, Pocket TTS' RoPE in `voxport.families.pocket_tts.modules.rope`) records
    ``reciprocal(d)`` with ``d`` an int tensor, and the conversion fails with "expects tensor or
    scalar of dtype from type domain ['fp16', 'fp32'] but got tensor[1,int32]".

    The fix: an integer input is cast to fp32 first (what torch computes); float inputs go to the
    original function unchanged.

    No longer needed when: ``test_reciprocal_patch_still_needed`` in tests/test_pocket_coreml.py
    fails, i.e. converting ``x * (2 / x.shape[-1])`` succeeds with the original function.
    """
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    def reciprocal(context: Any, node: Any) -> None:
        x = ops._get_inputs(context, node, expected=1)[0]
        if types.is_int(x.dtype) or types.is_bool(x.dtype):
            x = mb.cast(x=x, dtype="fp32", name=f"{node.name}_to_fp32")
            context.add(mb.inverse(x=x, name=node.name))
            return
        original(context, node)

    return reciprocal


def _aligned_enumerated_shapes(original: Callable[..., Any]) -> Callable[..., Any]:
    """Keep the order of enumerated shapes when several inputs enumerate aligned combinations.

    What breaks: coremltools 9.0, ``coremltools/models/neural_network/flexible_shape_utils.py::
    _add_multiarray_ndshape_enumeration_for_feature``, called by the ML Program backend for every
    input with `ct.EnumeratedShapes`. From iOS 18, several inputs may carry enumerated shapes, each
    listing the same number of shapes so that the i-th shapes of all inputs form one allowed
    combination (coremltools checks the counts and keeps duplicates for that reason). But the
    function moves *every* entry equal to the input's default shape to the front, so an input whose
    default recurs (the decoder's ``noise`` with buckets tokens × frames = [(8, 12), (8, 48), (16, 12),
    (16, 48)] lists frames 12, 48, 12, 48) is reordered to 12, 12, 48, 48 while ``m_p`` keeps 8, 8,
    16, 16: the combinations written to the model are no longer the ones asked for. Not numpy/torch
    related; a plain coremltools bug.

    The fix: when duplicates are allowed and the list already starts with the default shape (which
    voxport's converter guarantees), the shapes are written exactly in the given order; any other
    call goes to the original function.

    No longer needed when: ``test_enumerated_order_patch_still_needed`` fails, i.e. the original
    function keeps [(1, 12), (1, 48), (1, 12), (1, 48)] in that order.
    """

    def _add_enumeration(
        feature: Any, enumerated_shapes: list[tuple[int, ...]], allow_duplicate_shapes: bool = False
    ) -> None:
        array = feature.type.multiArrayType
        shapes = [list(s) for s in enumerated_shapes] if isinstance(enumerated_shapes, list) else []
        if (
            not allow_duplicate_shapes
            or not shapes
            or feature.type.WhichOneof("Type") != "multiArrayType"
            or shapes[0] != list(array.shape)
        ):
            original(feature, enumerated_shapes, allow_duplicate_shapes=allow_duplicate_shapes)
            return
        array.ClearField("ShapeFlexibility")
        for shape in shapes:
            array.enumeratedShapes.shapes.add().shape.extend(shape)

    return _add_enumeration


PATCHES: tuple[Patch, ...] = (
    Patch(
        name="torch-frontend-scalar-cast-numpy2",
        module="coremltools.converters.mil.frontend.torch.ops",
        attribute="_cast",
        make=_scalar_cast_numpy2,
    ),
    Patch(
        name="torch-frontend-reciprocal-of-integers",
        module="coremltools.converters.mil.frontend.torch.torch_op_registry",
        attribute="reciprocal",
        make=_reciprocal_of_integers,
        torch_op=True,
    ),
    Patch(
        name="enumerated-shapes-keep-aligned-order",
        module="coremltools.models.neural_network.flexible_shape_utils",
        attribute="_add_multiarray_ndshape_enumeration_for_feature",
        make=_aligned_enumerated_shapes,
    ),
)

_ORIGINALS: dict[str, Callable[..., Any]] = {}


def _module(path: str) -> Any:
    import importlib

    return importlib.import_module(path)


def _current(patch: Patch) -> Callable[..., Any]:
    module = _module(patch.module)
    if patch.torch_op:
        return module._TORCH_OPS_REGISTRY.name_to_func_mapping[patch.attribute]
    return getattr(module, patch.attribute)


def _install(patch: Patch, function: Callable[..., Any]) -> None:
    module = _module(patch.module)
    if patch.torch_op:
        module._TORCH_OPS_REGISTRY.set_func_by_name(function, patch.attribute)
    else:
        setattr(module, patch.attribute, function)


def apply_patches() -> list[str]:
    """Install every patch once (calling again is a no-op); returns the names of the active patches."""
    for patch in PATCHES:
        current = _current(patch)
        if getattr(current, _MARK, None) == patch.name:
            continue
        _ORIGINALS[patch.name] = current
        replacement = patch.make(current)
        setattr(replacement, _MARK, patch.name)
        replacement.__doc__ = patch.make.__doc__
        _install(patch, replacement)
    return [p.name for p in PATCHES]


def remove_patches() -> None:
    """Restore coremltools' own functions (tests use this to show a patch is still needed)."""
    for patch in PATCHES:
        original = _ORIGINALS.pop(patch.name, None)
        if original is not None:
            _install(patch, original)


def is_applied(name: str) -> bool:
    patch = next(p for p in PATCHES if p.name == name)
    return getattr(_current(patch), _MARK, None) == name
