"""Decide, before touching any tensor, which precision each weight is stored at and why.

The plan is separate from the arithmetic so that it can be printed, diffed and written into the
manifest: every weight the recipe wanted quantized but that ends up at a higher precision carries a
reason, and ``skipped`` turns exactly those into the manifest's ``skipped_weights``.

Precision order, lowest first: int4 < int8 < fp16 < fp32. For each weight, ``requested`` is the lowest
precision the recipe asked for it (the global precision, or an override when that is lower), and the
stored precision is the override if one matches, else the global one, then lowered in ambition when
the weight cannot take it:

* int8/int4 only apply to names in ``quantizable`` (Linear/Conv weights, >= 2-D); other tensors are
  stored at the recipe's float precision (fp32 unless an override or the global precision says fp16).
  They were never candidates for quantization, so they are not "skipped".
* quantizable weights with fewer than ``min_elements`` elements stay in float: the scales would cost
  more than the codes save.
* int4 of a weight with fewer columns (in the 2-D view) than ``block_size`` falls back to int8, since
  most of its only block would be padding.
* with ``int8_block_size`` (the recipe's ``quantize.int8_block_size``) int8 is stored in blocks of that
  many elements (``WeightDecision.int8_block_size``); a weight with fewer columns than one block keeps
  int8 with one scale per row, and its decision says so in ``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from voxport.quantize.precisions import PRECISIONS, SPECS, lowest, rank

#: where a blocked integer precision goes for a weight narrower than one block: the lowest-rank integer
#: precision that is not blocked (int8, one scale per row)
_UNBLOCKED = min((s for s in SPECS.values() if s.integer and not s.blocked), key=lambda s: s.rank).name
#: the precision `int8_block_size` cuts into blocks
_INT8_BLOCKABLE = "int8"


@dataclass(frozen=True)
class WeightDecision:
    """One weight's storage precision; ``reason`` is set whenever ``precision != requested`` (and when
    blocked int8 was asked for but the weight keeps one scale per row).

    ``quantizable`` records whether the model family allows quantizing this weight at all; only
    quantizable weights count as skipped when they end up above the requested precision.
    ``int8_block_size`` is set when the weight is stored as int8 in blocks of that many elements;
    None means int8 with one scale per row (or not int8 at all).
    """

    name: str
    precision: str
    requested: str
    reason: str | None
    quantizable: bool = True
    int8_block_size: int | None = None


def _check_precision(value: str, where: str) -> None:
    if value not in SPECS:
        raise ValueError(f"unknown precision {value!r} for {where}; allowed: {', '.join(PRECISIONS)}")


def _first_match(name: str, overrides: Mapping[str, str]) -> tuple[str, str] | None:
    for glob, prec in overrides.items():
        if fnmatchcase(name, glob):
            return glob, prec
    return None


def plan_precisions(
    weights: dict[str, tuple[int, ...]],
    quantizable: set[str],
    precision: str,
    overrides: dict[str, str] | None = None,
    *,
    min_elements: int = 0,
    block_size: int = 32,
    int8_block_size: int | None = None,
) -> dict[str, WeightDecision]:
    """Decisions for every weight, in the order of ``weights``.

    ``overrides`` maps fnmatch globs (case-sensitive, ``*`` crosses dots) to a precision; the first
    matching glob in insertion order wins. A glob that matches no weight is an error, because a typo in
    a recipe would otherwise silently quantize the module it meant to protect.
    """
    _check_precision(precision, "the recipe")
    overrides = dict(overrides or {})
    for glob, prec in overrides.items():
        _check_precision(prec, f"override {glob!r}")
    unmatched = [g for g in overrides if not any(fnmatchcase(n, g) for n in weights)]
    if unmatched:
        raise ValueError(
            f"override glob(s) {', '.join(repr(g) for g in unmatched)} match no weight; "
            f"check the spelling against the model's weight names (e.g. {next(iter(weights), '?')!r})"
        )
    unknown = sorted(set(quantizable) - set(weights))
    if unknown:
        raise ValueError(f"quantizable names not among the weights: {', '.join(unknown[:5])}")
    if min_elements < 0 or block_size < 1:
        raise ValueError(f"need min_elements >= 0 and block_size >= 1, got {min_elements}, {block_size}")
    if int8_block_size is not None and int8_block_size < 1:
        raise ValueError(f"need int8_block_size >= 1 or None, got {int8_block_size}")

    decisions: dict[str, WeightDecision] = {}
    for name, shape in weights.items():
        shape = tuple(int(d) for d in shape)
        match = _first_match(name, overrides)
        target = match[1] if match else precision
        requested = lowest(precision, target)
        is_q = name in quantizable
        if is_q and len(shape) < 2:
            raise ValueError(
                f"{name!r} is marked quantizable but has shape {shape}; only >= 2-D weights can be quantized"
            )
        override_reason = f"override {match[0]!r} → {target}" if match else None

        if not SPECS[target].integer:
            stored, reason = target, None
        else:
            # the override (if any) asked for an int precision, so only the global one can be a float
            fallback = precision if not SPECS[precision].integer else "fp32"
            n_elem = math.prod(shape)
            cols = math.prod(shape[1:]) if len(shape) >= 2 else 0
            if not is_q:
                what = f"{len(shape)}-D tensor" if len(shape) < 2 else "not a Linear/Conv weight"
                stored, reason = fallback, f"not quantizable: {what}"
            elif n_elem < min_elements:
                stored, reason = fallback, f"too small: {n_elem} elements < min_elements {min_elements}"
            elif SPECS[target].blocked and cols < block_size:
                stored = _UNBLOCKED
                reason = f"{target} needs at least block_size columns: {cols} < {block_size} → {stored}"
            else:
                stored, reason = target, None
        if stored != requested and reason is None:
            reason = override_reason
        int8_blocks = None
        if stored == _INT8_BLOCKABLE and int8_block_size is not None:
            cols = math.prod(shape[1:])
            if cols >= int8_block_size:
                int8_blocks = int8_block_size
            elif reason is None:
                reason = (
                    f"int8 blocks need at least int8_block_size columns: {cols} < {int8_block_size} "
                    "→ one scale per row"
                )
        decisions[name] = WeightDecision(name, stored, requested, reason, is_q, int8_blocks)
    return decisions


def skipped(
    decisions: Mapping[str, WeightDecision] | Iterable[WeightDecision],
) -> list[dict[str, str | None]]:
    """Quantizable weights asked for at int8/int4 but stored at a higher precision: the manifest's
    ``skipped_weights``, so a reader knows which parts of the model did not get the advertised bits."""
    items = decisions.values() if isinstance(decisions, Mapping) else decisions
    return [
        {"name": d.name, "requested": d.requested, "stored": d.precision, "reason": d.reason}
        for d in items
        if d.quantizable and SPECS[d.requested].integer and rank(d.precision) > rank(d.requested)
    ]
