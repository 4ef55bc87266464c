"""Each coremltools patch in voxport.export.coreml.compat: still needed, and right when applied.

`test_*_still_needed` reproduces the original failure with the patch removed. When coremltools (or
numpy) fixes the bug, that test fails: delete the patch and its tests then.
"""

from __future__ import annotations

from collections.abc import Iterator

import coremltools as ct
import pytest
import torch
from torch import nn

from voxport.export.coreml import compat


class SizeReshape(nn.Module):
    """The pattern of VITS' conv flows: sizes read as Python numbers and fed back into a reshape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        return x.reshape(batch, channels, -1, length)


def _feature(default: tuple[int, ...]) -> object:
    from coremltools.proto import Model_pb2

    feature = Model_pb2.FeatureDescription(name="noise")
    feature.type.multiArrayType.shape.extend(default)
    return feature


def _enumerated(feature: object) -> list[tuple[int, ...]]:
    return [tuple(s.shape) for s in feature.type.multiArrayType.enumeratedShapes.shapes]


ALIGNED = [(1, 12), (1, 48), (1, 12), (1, 48)]  # frames of the combinations tokens × frames


def _convert(shape: tuple) -> object:
    example = torch.zeros(1, 4, 6)
    traced = torch.jit.trace(SizeReshape().eval(), example)
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=shape)],
        convert_to="milinternal",
        minimum_deployment_target=ct.target.iOS18,
    )


@pytest.fixture
def unpatched() -> Iterator[None]:
    compat.remove_patches()
    try:
        yield
    finally:
        compat.apply_patches()


def test_apply_patches_is_idempotent() -> None:
    from coremltools.converters.mil.frontend.torch import ops

    names = compat.apply_patches()
    first = ops._cast
    assert compat.apply_patches() == names
    assert ops._cast is first
    assert all(compat.is_applied(n) for n in names)


def test_every_patch_says_when_it_can_go() -> None:
    for patch in compat.PATCHES:
        doc = patch.make.__doc__ or ""
        assert "What breaks" in doc and "coremltools 9.0" in doc and "No longer needed when" in doc


def test_cast_patch_still_needed(unpatched: None) -> None:
    assert not compat.is_applied("torch-frontend-scalar-cast-numpy2")
    with pytest.raises(TypeError, match="only 0-dimensional arrays can be converted"):
        _convert((1, 4, 6))


def test_cast_patch_folds_one_element_sizes() -> None:
    compat.apply_patches()
    program = _convert((1, 4, 6))
    assert tuple(program.functions["main"].outputs[0].shape) == (1, 4, 1, 6)


def test_cast_patch_keeps_flexible_lengths_symbolic() -> None:
    compat.apply_patches()
    program = _convert((1, 4, ct.RangeDim(1, 64, default=6)))
    shape = program.functions["main"].outputs[0].shape
    assert tuple(shape[:2]) == (1, 4)
    assert not all(isinstance(d, int) for d in shape[2:])  # still symbolic, not baked to the example


def _add_enumeration(feature: object, shapes: list[tuple[int, ...]], allow_duplicates: bool) -> None:
    from coremltools.models.neural_network import flexible_shape_utils

    flexible_shape_utils._add_multiarray_ndshape_enumeration_for_feature(
        feature, shapes, allow_duplicate_shapes=allow_duplicates
    )


def test_enumerated_order_patch_still_needed(unpatched: None) -> None:
    feature = _feature((1, 12))
    _add_enumeration(feature, ALIGNED, True)
    assert _enumerated(feature) != ALIGNED  # coremltools 9.0 moves every default-shaped entry first


def test_enumerated_order_patch_keeps_combinations_aligned() -> None:
    compat.apply_patches()
    feature = _feature((1, 12))
    _add_enumeration(feature, ALIGNED, True)
    assert _enumerated(feature) == ALIGNED
    # calls the patch does not own keep coremltools' behaviour (dedupe without duplicates allowed)
    other = _feature((1, 12))
    _add_enumeration(other, ALIGNED, False)
    assert _enumerated(other) == [(1, 12), (1, 48)]
