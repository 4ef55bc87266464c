"""Automatic mixed precision under a size budget: the search, the bits it promises, and the recipe rules.

The knapsack is checked against brute force on random instances; the whole path runs on the tiny VITS
with the real audio objective, and its bits per weight are recomputed from the stored tensors (the same
cost model the manifest's ONNX figure uses) to show the budget is never exceeded."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from voxport.errors import BadInput
from voxport.export.onnx.weights import scale_bits as onnx_scale_bits
from voxport.families import FamilyModel
from voxport.families.base import SynthesisSettings
from voxport.quantize.budget import _GRID, allocate, budget_yaml, units_of
from voxport.quantize.calibration import default_texts, normalized, overlap
from voxport.quantize.methods import get_method
from voxport.quantize.stage import quantize_model, quantize_with_budget
from voxport.recipe import load_recipe
from voxport.validate.objective import AudioObjective

SENTENCES = ([3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9])


def test_allocate_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        items, choices = int(rng.integers(2, 6)), 3
        costs = rng.integers(1, 50, size=(items, choices)).astype(float)
        losses = rng.random((items, choices))
        capacity = float(rng.integers(int(costs.min(axis=1).sum()), int(costs.max(axis=1).sum()) + 1))
        got = allocate(costs, losses, capacity)
        assert got is not None
        rows = np.arange(items)
        assert costs[rows, got].sum() <= capacity
        # the grid rounds each cost up, so it may miss a plan that fits with less than one grid step per
        # item to spare; it never misses one with more
        slack = items * capacity / _GRID
        best = min(
            losses[rows, list(pick)].sum()
            for pick in itertools.product(range(choices), repeat=items)
            if costs[rows, list(pick)].sum() <= capacity - slack
        )
        assert losses[rows, got].sum() <= best + 1e-6


def test_allocate_refuses_what_cannot_fit() -> None:
    assert allocate(np.array([[10.0, 20.0]]), np.array([[1.0, 0.0]]), 9.0) is None


def test_units_group_weights_two_levels_up() -> None:
    names = ["enc.layers.0.attn.q.weight", "enc.layers.0.attn.k.weight", "dec.conv_pre.weight"]
    assert units_of(names, "module") == {
        "enc.layers.0.attn": names[:2],
        "dec": ["dec.conv_pre.weight"],
    }
    assert list(units_of(names, "weight")) == names


def _onnx_bits(qm_weights: dict) -> float:
    from voxport.quantize.budget import element_count, stored_bits

    return sum(stored_bits(v) for v in qm_weights.values()) / sum(
        element_count(v) for v in qm_weights.values()
    )


@pytest.fixture(scope="module")
def objective(tiny_vits: FamilyModel) -> AudioObjective:
    return AudioObjective(tiny_vits, SENTENCES, SynthesisSettings(seed=3))


@pytest.mark.parametrize(("precision", "budget"), [("int8", 9.0), ("int4", 6.0)])
def test_budget_is_respected_exactly_and_beats_the_uniform_mix(
    tiny_vits: FamilyModel, objective: AudioObjective, precision: str, budget: float
) -> None:
    method = get_method("rtn")
    qm = quantize_with_budget(
        tiny_vits,
        precision,
        method,
        bits_per_weight=budget,
        candidates=["int4", "int8", "fp16"],
        objective=objective,
    )
    plan = qm.budget
    assert plan is not None
    achieved = _onnx_bits(qm.weights)
    assert achieved <= budget
    assert abs(achieved - plan["bits_per_weight"]) < 1e-3
    # the budget's cost model is the ONNX artifact's bits/weight (what the manifest reports)
    assert qm.bits_per_weight(scale_bits=onnx_scale_bits) == pytest.approx(achieved)
    # the plan spends the budget: within one unit's step of it
    assert achieved > budget - 2.5
    chosen = {u["precision"] for u in plan["units"]}
    assert len(chosen) >= 2, plan["units"]  # a real mix, not one precision everywhere
    # the mix measures no worse than the uniform artifact of the same precision, which is cheaper or
    # similar in bits only when the budget allows nothing better
    uniform = quantize_model(tiny_vits, precision, method)
    weights = {k: v for k, v in uniform.dequantized().items()}
    mixed = objective(qm.dequantized())
    assert mixed == pytest.approx(plan["measured_objective"], abs=1e-3)
    if _onnx_bits(uniform.weights) <= budget:
        assert mixed <= objective(weights) + 1e-6
    # every weight's stored form is what the plan says
    for unit in plan["units"]:
        assert unit["bytes"] > 0
    text = budget_yaml(plan)
    assert f"    {precision}:" in text and "bits/weight" in text
    # the written mix, used as a hand mix, stores every quantizable weight at the precision the budget
    # chose (a unit's glob also takes its biases to fp16, as hand-written globs always did)
    fragment = yaml.safe_load(text)["quantize"]["precision_overrides"][precision] or {}
    rebuilt = quantize_model(tiny_vits, precision, method, overrides=fragment)
    quantizable = tiny_vits.quantizable()
    assert {n: d.precision for n, d in rebuilt.decisions.items() if n in quantizable} == {
        n: d.precision for n, d in qm.decisions.items() if n in quantizable
    }


def test_budget_below_reach_is_a_clear_error(tiny_vits: FamilyModel, objective: AudioObjective) -> None:
    with pytest.raises(BadInput, match="below the smallest this model reaches"):
        quantize_with_budget(
            tiny_vits,
            "int8",
            get_method("rtn"),
            bits_per_weight=2.0,
            candidates=["int8", "fp16"],
            objective=objective,
        )


def test_objective_is_zero_for_the_reference_and_grows_with_damage(
    tiny_vits: FamilyModel, objective: AudioObjective
) -> None:
    state = {k: v.to(torch.float32) for k, v in tiny_vits.state_dict().items()}
    assert objective(state) == pytest.approx(0.0, abs=1e-6)
    int8 = objective(quantize_model(tiny_vits, "int8", "rtn").dequantized())
    int4 = objective(quantize_model(tiny_vits, "int4", "rtn").dequantized())
    assert 0 < int8 < int4


def test_default_calibration_set_is_large_and_varied() -> None:
    texts = default_texts()
    assert len(texts) >= 50
    assert len({normalized(t) for t in texts}) == len(texts)
    assert sum("?" in t for t in texts) >= 5
    assert sum(any(c.isdigit() for c in t) for t in texts) >= 5
    lengths = sorted(len(t.split()) for t in texts)
    assert lengths[0] <= 2 and lengths[-1] >= 20


def test_no_recipe_validates_on_calibration_sentences() -> None:
    for path in sorted(Path("recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        texts = recipe.validation.texts if recipe.validation else []
        assert overlap(default_texts(), texts) == [], path


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(body)
    return path


RECIPE = """\
name: overlap
model: {model}
precisions: [int8]
quantize:
{quantize}
validate:
  texts:
    - "A sentence of its own."
    - "{text}"
"""


@pytest.mark.parametrize(
    ("quantize", "text", "where"),
    [
        # a budget with no calibration of its own measures on the built-in set
        ("  budget: {int8: {bits_per_weight: 9}}", "Could you open the window a little?", "built-in"),
        (
            "  budget: {int8: {bits_per_weight: 9}}\n  calibration: {texts: ['Hi there, Bob!']}",
            "hi there bob",
            "quantize.calibration",
        ),
    ],
)
def test_validate_texts_among_calibration_sentences_exit_2(
    tmp_path: Path, tiny_vits_dir: Path, quantize: str, text: str, where: str
) -> None:
    recipe = _write(tmp_path, RECIPE.format(model=tiny_vits_dir, quantize=quantize, text=text))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from voxport.cli import main; main()",
            "build",
            str(recipe),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    line = 9 + quantize.count("\n")  # the second validate text's line
    assert f"r.yaml:{line}: validate.texts[1]" in last and where in last and "proves nothing" in last
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_recipe_budget_rules(tmp_path: Path, tiny_vits_dir: Path) -> None:
    cases = {
        "  budget: {fp16: {bits_per_weight: 9}}": "budget.fp16",
        "  budget: {int8: {bits_per_weight: 9}}\n  precision_overrides: {int8: {'x': fp16}}": "both a budget",
        "  budget: {int8: {bits_per_weight: 9, candidates: [int8, fp32]}}": "fp32 is not a candidate",
        "  budget: {int8: {bits_per_weight: 0}}": "bits_per_weight",
        "  calibration: {texts: []}": "built-in English set",
    }
    for quantize, message in cases.items():
        recipe = _write(tmp_path, RECIPE.format(model=tiny_vits_dir, quantize=quantize, text="Fine."))
        with pytest.raises(BadInput, match=message):
            load_recipe(recipe)
