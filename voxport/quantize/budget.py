"""Automatic mixed precision under a size budget: rank modules by what the audio loses, then choose.

Hand-written mixes ("text encoder at fp16, duration predictor at int8") were found on a recipe's own
three sentences and did not carry over to the next five. Here every module (or weight) is tried alone
at each candidate precision while the rest of the model stays at full precision, and the change of an
audio objective on calibration sentences is its *sensitivity*. The objective itself belongs to the
layers above (`validate.objective` builds it from the family's synthesis and metrics); this module only
needs it as a function of the weights, which keeps the choice format- and family-neutral.

The choice is a multiple-choice knapsack: minimise the sum of sensitivities subject to the stored bits
of every weight staying within ``bits_per_weight × elements``. Sensitivities are treated as additive
(each measured alone), which is what makes the search exact and fast; the chosen mix is then measured as
a whole, so the plan reports the prediction next to the measured objective.

Bits are counted as ONNX stores them (block scales in float16, per-channel scales in float32,
non-quantizable tensors at the artifact's float precision), the largest of the formats, so a budget
holds for every artifact built from the plan. The exact total is checked after the search: the budget
is never exceeded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import torch

from voxport.errors import BadInput
from voxport.progress import NullProgress, Progress
from voxport.quantize.precisions import rank
from voxport.quantize.tensor import QuantizedTensor

Stored = np.ndarray | QuantizedTensor
#: the audio objective of a full set of float32 weights (lower is better; 0 is the reference itself)
Objective = Callable[[Mapping[str, torch.Tensor]], float]
#: bits per per-row (per-channel int8) scale in the cost model: ONNX stores those as float32, the most
#: expensive of the formats
SCALE_BITS = 32
#: units holding less than this share of the weights are kept at the widest candidate without being
#: measured (for a 15M voice: under 23k weights, a few kB at fp16): each measurement costs a synthesis
#: of every objective sentence, whatever the unit's size
MIN_SHARE = 0.0015
#: discretisation of the knapsack's capacity; each item's cost is rounded *up*, so a plan feasible in
#: the grid is feasible in bits (and a plan that fits with more than items × capacity / _GRID bits to spare
#: is never missed)
_GRID = 1 << 16


def stored_bits(value: Stored) -> int:
    """Bits one stored tensor costs in the budget's cost model: block scales (fp16-exact by
    construction) at 16 bits, a per-row scale at `SCALE_BITS`, as ONNX stores them."""
    if isinstance(value, QuantizedTensor):
        blocked = value.block_size < value.cols
        return value.storage_bits(scale_bits=16 if blocked else SCALE_BITS)
    return int(value.size * value.dtype.itemsize * 8)


def element_count(value: Stored) -> int:
    return math.prod(value.shape)


def units_of(names: Sequence[str], granularity: str) -> dict[str, list[str]]:
    """Weights grouped into the units a budget chooses for, in first-appearance order.

    ``module``: the weights two name levels up share a unit (``….layers.3.attention.q_proj.weight`` →
    ``….layers.3.attention``), which keeps one attention block or one residual stack together and the
    number of sensitivity runs near 50 for a 15M-parameter voice. ``weight``: each weight alone."""
    units: dict[str, list[str]] = {}
    for name in names:
        key = name if granularity == "weight" else name.rsplit(".", 2)[0]
        units.setdefault(key, []).append(name)
    return units


@dataclass(frozen=True)
class UnitChoice:
    """One unit's row of the plan: the precision chosen, what each candidate costs and would lose."""

    unit: str
    weights: tuple[str, ...]
    elements: int
    precision: str
    #: candidate precision -> objective with this unit alone at it (rest at full precision); None: not
    #: measured (a unit too small to be worth a run keeps the widest candidate)
    sensitivity: dict[str, float | None]
    #: candidate precision -> stored bits of the unit's weights
    bits: dict[str, int]

    @property
    def bytes(self) -> int:
        return -(-self.bits[self.precision] // 8)


@dataclass
class BudgetPlan:
    """What a budget chose for one artifact precision, as written beside the build."""

    precision: str
    budget_bits_per_weight: float
    bits_per_weight: float
    candidates: tuple[str, ...]
    granularity: str
    sentences: int
    units: list[UnitChoice]
    #: sum of the chosen sensitivities (what the search minimised)
    predicted_objective: float
    #: the objective of the chosen mix measured as a whole
    measured_objective: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def precisions(self) -> dict[str, str]:
        """Weight name → chosen precision, for every quantizable weight."""
        return {w: u.precision for u in self.units for w in u.weights}

    def overrides(self) -> dict[str, str]:
        """The plan as `precision_overrides` globs: one per unit whose precision differs from the
        artifact's, so the file can be pasted into a recipe (or kept) to rebuild the same mix by hand.
        A unit's ``prefix.*`` glob is used only where it matches that unit's weights and no other's
        (``flow.flows.0.*`` would also take ``flow.flows.0.wavenet.*``); otherwise its weights are
        listed by name."""
        names = [w for u in self.units for w in u.weights]
        out: dict[str, str] = {}
        for u in self.units:
            if u.precision == self.precision:
                continue
            glob = f"{u.unit}.*"
            if len(u.weights) > 1 and {n for n in names if fnmatchcase(n, glob)} == set(u.weights):
                out[glob] = u.precision
            else:
                out.update(dict.fromkeys(u.weights, u.precision))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "budget_bits_per_weight": self.budget_bits_per_weight,
            "bits_per_weight": round(self.bits_per_weight, 4),
            "candidates": list(self.candidates),
            "granularity": self.granularity,
            "sentences": self.sentences,
            "predicted_objective": round(self.predicted_objective, 4),
            "measured_objective": None
            if self.measured_objective is None
            else round(self.measured_objective, 4),
            "units": [
                {
                    "unit": u.unit,
                    "weights": len(u.weights),
                    "elements": u.elements,
                    "precision": u.precision,
                    "bytes": u.bytes,
                    "sensitivity": {k: None if v is None else round(v, 4) for k, v in u.sensitivity.items()},
                }
                for u in self.units
            ],
            "overrides": self.overrides(),
        }

    def to_yaml(self) -> str:
        return budget_yaml(self.to_json())


def budget_yaml(plan: Mapping[str, Any]) -> str:
    """A plan (`BudgetPlan.to_json()`) as a recipe fragment that rebuilds the mix by hand, with the
    measured table as comments: the file a budget leaves in the build."""
    measured = plan.get("measured_objective")
    lines = [
        f"# voxport size budget for {plan['precision']}: {plan['bits_per_weight']:.3f} bits/weight "
        f"(budget {plan['budget_bits_per_weight']}), audio objective predicted "
        f"{plan['predicted_objective']:.3f}" + (f", measured {measured:.3f}" if measured is not None else ""),
        "# module: chosen precision | objective with the module alone at each candidate | bytes",
    ]
    for u in plan["units"]:
        sens = ", ".join(f"{p} {'-' if v is None else format(v, '.3f')}" for p, v in u["sensitivity"].items())
        lines.append(f"#   {u['unit']}: {u['precision']} | {sens} | {u['bytes']}")
    lines += ["quantize:", "  precision_overrides:", f"    {plan['precision']}:"]
    overrides = plan["overrides"]
    if not overrides:
        lines[-1] += " {}"
    lines += [f'      "{glob}": {p}' for glob, p in overrides.items()]
    return "\n".join(lines) + "\n"


def allocate(costs: np.ndarray, losses: np.ndarray, capacity: float) -> np.ndarray | None:
    """Choice index per item minimising the summed loss with summed cost <= `capacity` (multiple-choice
    knapsack by dynamic programming over a capacity grid), or None when even the cheapest choices do not
    fit. `costs` and `losses` are (items, choices); an unavailable choice has an infinite loss."""
    items, choices = costs.shape
    if capacity < 0 or costs.min(axis=1).sum() > capacity:
        return None
    unit = max(capacity / _GRID, 1e-9)
    grid = np.ceil(costs / unit - 1e-9).astype(np.int64)
    size = int(math.floor(capacity / unit + 1e-9)) + 1
    # ties broken towards fewer bits, so a zero-loss choice does not spend bits for nothing
    value = losses + 1e-9 * costs / max(costs.max(), 1)
    best = np.zeros(size)
    pick = np.zeros((items, size), dtype=np.int64)
    for i in range(items):
        nxt = np.full(size, np.inf)
        for c in range(choices):
            w = int(grid[i, c])
            if w >= size or not np.isfinite(value[i, c]):
                continue
            cand = np.full(size, np.inf)
            cand[w:] = best[: size - w] + value[i, c]
            better = cand < nxt
            nxt[better] = cand[better]
            pick[i, better] = c
        best = nxt
    if not np.isfinite(best[-1]):
        return None
    chosen = np.zeros(items, dtype=np.int64)
    left = size - 1
    for i in reversed(range(items)):
        c = int(pick[i, left])
        chosen[i] = c
        left -= int(grid[i, c])
    return chosen


def plan_budget(
    *,
    precision: str,
    budget_bits_per_weight: float,
    candidates: Mapping[str, Mapping[str, Stored]],
    quantizable: Sequence[str],
    reference: Mapping[str, torch.Tensor],
    fixed: Mapping[str, Stored],
    objective: Objective,
    granularity: str = "module",
    sentences: int = 0,
    progress: Progress | None = None,
    known: dict[tuple[str, str], float] | None = None,
    min_share: float = MIN_SHARE,
) -> BudgetPlan:
    """Choose a precision per unit of `quantizable` weights within the budget.

    `candidates` maps each candidate precision to every quantizable weight stored at it (what the plan
    and the method made of it: an int4 weight too narrow for a block is int8 there, as it would be in
    the artifact). `fixed` holds the other tensors as the artifact stores them; they count towards the
    bits but are not chosen. `reference` is the full-precision state the objective compares against."""
    progress = progress or NullProgress()
    order = sorted(candidates, key=rank)
    units = units_of(list(quantizable), granularity)
    elements = sum(element_count(v) for v in fixed.values()) + sum(
        element_count(candidates[order[0]][w]) for w in quantizable
    )
    fixed_bits = sum(stored_bits(v) for v in fixed.values())
    capacity = budget_bits_per_weight * elements - fixed_bits
    bits = {u: {c: sum(stored_bits(candidates[c][w]) for w in ws) for c in order} for u, ws in units.items()}
    cheapest = fixed_bits + sum(min(b.values()) for b in bits.values())
    if cheapest > capacity + fixed_bits:
        raise BadInput(
            f"quantize.budget.{precision}: {budget_bits_per_weight} bits/weight is below the smallest this "
            f"model reaches with candidates {', '.join(order)} ({cheapest / elements:.3f}); raise the budget "
            "or add int4"
        )
    sens: dict[str, dict[str, float | None]] = {u: {} for u in units}
    known = {} if known is None else known
    size = {u: sum(element_count(candidates[order[0]][w]) for w in ws) for u, ws in units.items()}
    # a unit this small costs next to nothing at the widest candidate: it is not worth a synthesis run
    pinned = {u for u in units if size[u] < min_share * elements}
    for u in pinned:
        sens[u] = {c: (0.0 if c == order[-1] else None) for c in order}
    to_measure = [
        (u, c)
        for u in units
        if u not in pinned
        for c in order
        if any(_lossy(candidates[c][w]) for w in units[u])
    ]
    with progress.task(
        f"budget {precision}: sensitivity of {len(units)} units", total=len(to_measure)
    ) as advance:
        for u in set(units) - pinned:  # all-float choices (fp16, or an override kept them): ~fp32
            sens[u].update({c: 0.0 for c in order if (u, c) not in to_measure})
        for u, c in to_measure:
            if (u, c) not in known:
                trial = dict(reference)
                for w in units[u]:
                    trial[w] = _as_float(candidates[c][w])
                known[u, c] = max(float(objective(trial)), 0.0)
            sens[u][c] = known[u, c]
            advance(1)
    names = list(units)
    costs = np.array([[bits[u][c] for c in order] for u in names], dtype=np.float64)
    losses = np.array([[_loss(sens[u][c]) for c in order] for u in names], dtype=np.float64)
    chosen = allocate(costs, losses, capacity)
    if chosen is None:
        floor = (fixed_bits + costs.min(axis=1).sum()) / elements
        raise BadInput(
            f"quantize.budget.{precision}: {budget_bits_per_weight} bits/weight is below the smallest this "
            f"model reaches with candidates {', '.join(order)} ({floor:.3f}); raise the budget or add int4"
        )
    rows = [
        UnitChoice(
            unit=u,
            weights=tuple(units[u]),
            elements=size[u],
            precision=order[int(k)],
            sensitivity={c: sens[u][c] for c in order},
            bits=bits[u],
        )
        for u, k in zip(names, chosen, strict=True)
    ]
    total = fixed_bits + sum(r.bits[r.precision] for r in rows)
    achieved = total / elements
    if achieved > budget_bits_per_weight + 1e-12:  # the grid rounds costs up: this cannot happen
        raise AssertionError(f"budget plan exceeds its budget: {achieved} > {budget_bits_per_weight}")
    plan = BudgetPlan(
        precision=precision,
        budget_bits_per_weight=budget_bits_per_weight,
        bits_per_weight=achieved,
        candidates=tuple(order),
        granularity=granularity,
        sentences=sentences,
        units=rows,
        predicted_objective=float(sum(_loss(r.sensitivity[r.precision]) for r in rows)),
    )
    mix = dict(reference)
    for r in rows:
        for w in r.weights:
            mix[w] = _as_float(candidates[r.precision][w])
    plan.measured_objective = float(objective(mix))
    progress.log(
        f"budget {precision}: {achieved:.3f} bits/weight (budget {budget_bits_per_weight}), objective "
        f"predicted {plan.predicted_objective:.3f}, measured {plan.measured_objective:.3f}"
    )
    return plan


def _loss(value: float | None) -> float:
    return math.inf if value is None else value


def _lossy(value: Stored) -> bool:
    return isinstance(value, QuantizedTensor)


def _as_float(value: Stored) -> torch.Tensor:
    array = value.dequantize() if isinstance(value, QuantizedTensor) else value.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))
