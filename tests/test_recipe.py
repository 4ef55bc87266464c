"""Recipe loading: valid recipes round-trip with defaults; each bad input is one line `file:line: field`."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml

from voxport.errors import BadInput
from voxport.families.base import MetricSpec
from voxport.families.registry import families
from voxport.recipe import (
    Recipe,
    load_recipe,
    recipe_json_schema,
)
from voxport.validate.thresholds import CORE_METRICS, Threshold, spec_named

FULL = """\
name: tiny-vits
model: ../checkpoints/tiny
family: vits
trust_pickle: true
formats: [onnx, gguf]
precisions: [fp32, int8, int4]
quantize:
  method: mse
  block_size: 64
  overrides: {"decoder.conv_post*": fp16}
prune:
  - stack: text_encoder
    layers: [1, 3]
  - stack: flow
    every_other: true
export:
  onnx: {opset: 20}
validate:
  texts: ["Hello world."]
  ids: [[1, 5, 7, 2]]
  seed: 3
  noise_scale: 0.5
  noise_scale_duration: 0.6
  length_scale: 1.1
  speaker_id: 2
  thresholds:
    snr_db: 20
    logmel_dtw_db: 2.0
    length_ratio: 0.02
    mcd_db: {min: 0, max: 4}
"""


def write(directory: Path, text: str, name: str = "recipe.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(BadInput) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------- valid input


def test_minimal_recipe_fills_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "name: tiny\nmodel: ckpt\n"))
    assert recipe.name == "tiny"
    assert recipe.family is None and recipe.trust_pickle is False
    assert recipe.formats == ["onnx"]
    assert recipe.precisions == ["fp32", "int8"]
    assert (recipe.quantize.method, recipe.quantize.block_size, recipe.quantize.overrides) == ("rtn", 32, {})
    assert recipe.prune == []
    assert recipe.export.onnx.opset == 21
    assert recipe.validation is None
    assert recipe.source_path == (tmp_path / "recipe.yaml").absolute()


def test_full_recipe_loads_every_field(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "recipes", FULL))
    assert recipe.family == "vits" and recipe.trust_pickle is True
    assert recipe.formats == ["onnx", "gguf"]
    assert recipe.quantize.overrides == {"decoder.conv_post*": "fp16"}
    assert recipe.prune[0].layers == [1, 3] and recipe.prune[0].every_other is False
    assert recipe.prune[1].layers is None and recipe.prune[1].every_other is True
    assert recipe.export.onnx.opset == 20
    v = recipe.validation
    assert v is not None
    assert v.texts == ["Hello world."] and v.ids == [[1, 5, 7, 2]]
    assert (v.seed, v.noise_scale, v.noise_scale_duration) == (3, 0.5, 0.6)
    assert (v.length_scale, v.speaker_id) == (1.1, 2)
    assert v.thresholds["snr_db"] == Threshold(min=20)
    assert v.thresholds["logmel_dtw_db"] == Threshold(max=2.0)
    assert v.thresholds["length_ratio"] == Threshold(min=0.98, max=1.02)
    assert v.thresholds["mcd_db"] == Threshold(min=0, max=4)


def test_resolved_round_trips_through_json_and_yaml(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "recipes", FULL))
    resolved = recipe.resolved()
    assert resolved["model"] == str(tmp_path / "checkpoints" / "tiny")
    assert resolved["validate"]["thresholds"]["snr_db"] == {"min": 20.0, "max": None}
    assert "source_path" not in resolved
    # JSON-able, and reading it back (from anywhere) gives the same recipe
    again = Recipe.from_mapping(json.loads(json.dumps(resolved)), base_dir=tmp_path / "elsewhere")
    assert again.model_dump() == recipe.model_dump()  # `==` would also compare the source file
    assert again.resolved() == resolved
    # the resolved form is itself a valid recipe file
    copy = write(tmp_path / "other", yaml.safe_dump(resolved, sort_keys=False))
    assert load_recipe(copy).resolved() == resolved


def test_relative_model_resolves_against_recipe_dir_not_cwd(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path / "recipes", "name: tiny\nmodel: ../checkpoints/tiny\n")
    monkeypatch.chdir(tmp_path / "recipes")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(path)
    assert recipe.model == tmp_path / "checkpoints" / "tiny"
    assert recipe.model.is_absolute()
    assert recipe.raw_model == "../checkpoints/tiny"


def test_absolute_model_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs" / "model.safetensors"
    recipe = load_recipe(write(tmp_path / "r", f"name: tiny\nmodel: {target}\n"))
    assert recipe.model == target


def test_from_mapping_resolves_against_base_dir(tmp_path: Path) -> None:
    recipe = Recipe.from_mapping({"name": "x", "model": "ck/pt"}, base_dir=tmp_path)
    assert recipe.model == tmp_path / "ck" / "pt"
    assert recipe.raw_model == "ck/pt"
    assert recipe.source_path is None


def test_from_mapping_errors_are_bad_input_without_line(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        Recipe.from_mapping({"name": "x", "model": "m", "precisions": ["fp32", "int3"]}, base_dir=tmp_path)
    assert str(info.value) == "recipe: precisions[1]: 'int3' is not one of fp32, fp16, int8, int4"


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "name: t\nmodel: m\nquantize:\nexport:\nprune:\nvalidate:\n"))
    assert recipe.quantize.block_size == 32
    assert recipe.quantize.int8_block_size is None  # int8 per channel unless asked
    assert recipe.export.onnx.opset == 21
    assert recipe.prune == []
    assert recipe.validation is None


def test_json_schema_names_yaml_keys() -> None:
    schema = recipe_json_schema()
    json.dumps(schema)
    assert set(schema["required"]) == {"name", "model"}
    assert "validate" in schema["properties"]
    assert schema["additionalProperties"] is False
    quantize = schema["$defs"]["QuantizeConfig"]["properties"]
    assert quantize["int8_block_size"]["default"] is None
    assert {"type": "null"} in quantize["int8_block_size"]["anyOf"]


# ------------------------------------------------------------------------------------------ thresholds


def _registered_metrics() -> list[MetricSpec]:
    """The core metrics and every registered family's own, each name once."""
    specs = {s.name: s for s in CORE_METRICS}
    for family in families().values():
        for spec in family.metrics:
            specs.setdefault(spec.name, spec)
    return list(specs.values())


#: a bare limit every metric's range admits (a duration match is a fraction; a band of 0.5 is [0.5, 1.5])
BARE = 0.5


@pytest.mark.parametrize("spec", _registered_metrics(), ids=lambda s: s.name)
def test_a_bare_number_is_a_bound_in_the_metrics_direction(tmp_path: Path, spec: MetricSpec) -> None:
    """On every registered metric (a family's own included), a bare number becomes the bound its direction
    implies: checked on a value on each side of it, not by restating the table."""
    recipe = Recipe.from_mapping(
        {"name": "t", "model": "m", "validate": {"ids": [[1]], "thresholds": {spec.name: BARE}}}, tmp_path
    )
    assert recipe.validation is not None
    threshold = recipe.validation.thresholds[spec.name]
    step = 0.1
    sides = {
        "min": [(BARE + step, True), (BARE - step, False)],  # higher is better
        "max": [(BARE - step, True), (BARE + step, False)],  # lower is better
        # |ratio - 1| <= BARE: inside on both sides of 1, outside beyond either end
        "band": [
            (1 - BARE + step, True),
            (1 + BARE - step, True),
            (1 - BARE - step, False),
            (1 + BARE + step, False),
        ],
    }[spec.direction]
    assert [threshold.check(value) for value, _ in sides] == [ok for _, ok in sides]


def test_families_add_metrics_a_recipe_can_limit(tmp_path: Path) -> None:
    """A family's own metric is a known threshold name; a recipe naming a family that does not report
    it fails at its line, and one naming the family that does passes."""
    own = {s.name: f for f in families().values() for s in f.metrics}
    assert own, "no registered family declares a metric of its own; this test needs one"
    metric, owner = next(iter(own.items()))
    other = next((f for f in families().values() if metric not in {s.name for s in f.metrics}), None)
    thresholds = f"validate:\n  ids: [[1]]\n  thresholds:\n    {metric}: 20\n"
    ok = load_recipe(write(tmp_path, f"name: t\nmodel: m\nfamily: {owner.name}\n{thresholds}"))
    assert ok.validation is not None and ok.validation.thresholds[metric] == Threshold(min=20)
    if other is not None:
        with pytest.raises(BadInput) as info:
            load_recipe(write(tmp_path, f"name: t\nmodel: m\nfamily: {other.name}\n{thresholds}"))
        assert str(info.value).startswith(f"{tmp_path / 'recipe.yaml'}:7: validate.thresholds.{metric}: ")
        assert f"{other.name} does not report {metric!r}" in str(info.value)


@pytest.mark.parametrize(
    ("metric", "bare", "expected", "text"),
    [
        ("snr_db", 20, Threshold(min=20), "≥ 20"),
        ("duration_match", 0.9, Threshold(min=0.9), "≥ 0.9"),
        ("logmel_dtw_db", 2, Threshold(max=2), "≤ 2"),
        ("max_abs_error", 0.001, Threshold(max=0.001), "≤ 0.001"),
        ("length_ratio", 0.02, Threshold(min=0.98, max=1.02), "within [0.98, 1.02]"),
        ("length_ratio", 0, Threshold(min=1, max=1), "within [1, 1]"),
    ],
)
def test_bare_thresholds_take_the_metric_direction(
    tmp_path: Path, metric: str, bare: float, expected: Threshold, text: str
) -> None:
    recipe = Recipe.from_mapping(
        {"name": "t", "model": "m", "validate": {"ids": [[1]], "thresholds": {metric: bare}}}, tmp_path
    )
    assert recipe.validation is not None
    threshold = recipe.validation.thresholds[metric]
    spec = spec_named(metric, CORE_METRICS)
    assert spec is not None
    assert threshold == expected == Threshold.from_bare(spec.direction, bare)
    assert threshold.describe() == text


def test_threshold_check() -> None:
    at_least = Threshold(min=20)
    assert at_least.check(20) and at_least.check(35.5) and at_least.check(math.inf)
    assert not at_least.check(19.99)
    assert not at_least.check(None)
    assert not at_least.check(math.nan)
    at_most = Threshold(max=2)
    assert at_most.check(2) and at_most.check(-1) and not at_most.check(2.01)
    band = Threshold.from_bare("band", 0.02)
    assert band.check(0.98) and band.check(1.0) and band.check(1.02)
    assert not band.check(0.97) and not band.check(1.03) and not band.check(None)
    import numpy as np

    assert at_least.check(np.float32(21.0)) and not at_least.check(np.float64(1.0))


def test_explicit_threshold_mapping_ignores_direction(tmp_path: Path) -> None:
    recipe = Recipe.from_mapping(
        {"name": "t", "model": "m", "validate": {"texts": ["Hi."], "thresholds": {"snr_db": {"max": 90}}}},
        tmp_path,
    )
    assert recipe.validation is not None
    assert recipe.validation.thresholds["snr_db"].describe() == "≤ 90"


# ------------------------------------------------------------------------------------------- bad input

BAD_CASES = [
    pytest.param(
        """\
        name: t
        model: m
        validate:
          texts: ["Hello."]
          thresholds:
            snr_db: 20
            snr: 20
        """,
        7,
        "validate.thresholds.snr: unknown metric 'snr' (known: snr_db, forced_snr_db,",
        id="unknown-metric",
    ),
    pytest.param(
        """\
        name: t
        model: m
        precisions: [fp32, int3]
        """,
        3,
        "precisions[1]: 'int3' is not one of fp32, fp16, int8, int4",
        id="bad-precision",
    ),
    pytest.param(
        """\
        name: t
        model: m
        precisions:
          - fp16
          - int3
        """,
        5,
        "precisions[1]: 'int3' is not one of fp32, fp16, int8, int4",
        id="bad-precision-block-list",
    ),
    pytest.param(
        """\
        name: t
        model: m
        formats: [onnx, tflite]
        """,
        3,
        "formats[1]: 'tflite' is not one of onnx, gguf, coreml",
        id="bad-format",
    ),
    pytest.param(
        """\
        name: t
        model: m
        quantize:
          method: rtn

          blok_size: 32
        """,
        6,
        "quantize.blok_size: unknown key "
        "(allowed: method, options, calibration, block_size, int8_block_size, overrides, "
        "precision_overrides, budget)",
        id="unknown-nested-key",
    ),
    pytest.param(
        """\
        name: t
        model: m
        fromats: [onnx]
        """,
        3,
        "fromats: unknown key (allowed: name, model, family, trust_pickle, formats, precisions, quantize, "
        "prune, export, validate, phrases, extends)",
        id="unknown-top-key",
    ),
    pytest.param(
        """\
        # a comment first

        model: m
        formats: [onnx]
        """,
        3,
        "name: required field is missing",
        id="missing-name",
    ),
    pytest.param(
        """\
        name: t
        model: m
        prune:
          - layers: [1]
        """,
        4,
        "prune[0].stack: required field is missing",
        id="missing-nested-field",
    ),
    pytest.param(
        """\
        name: t
        model: m
        prune:
          - stack: encoder
            layers: [1]
            every_other: true
        """,
        4,
        "prune[0]: give exactly one of layers: [...] or every_other: true",
        id="prune-both",
    ),
    pytest.param(
        """\
        name: t
        model: m
        prune:
          - stack: encoder
          - stack: flow
        """,
        4,
        "prune[0]: give exactly one of layers",
        id="prune-neither",
    ),
    pytest.param(
        """\
        name: t
        model: m
        prune:
          - stack: encoder
            layers: [1, 2, 1]
        """,
        5,
        "prune[0].layers: 1 is listed twice",
        id="prune-duplicate-layer",
    ),
    pytest.param(
        """\
        name: t
        model: m
        quantize:
          block_size: 24
        """,
        4,
        "quantize.block_size: must be a positive multiple of 16 (16, 32, 64, ...), got 24",
        id="block-size",
    ),
    pytest.param(
        """\
        name: t
        model: m
        quantize:
          int8_block_size: 20
        """,
        4,
        "quantize.int8_block_size: must be a positive multiple of 16 (16, 32, 64, ...), got 20",
        id="int8-block-size",
    ),
    pytest.param(
        """\
        name: t
        model: m
        quantize:
          block_size: true
        """,
        4,
        "quantize.block_size: expected an integer, got a boolean (true)",
        id="bool-is-not-int",
    ),
    pytest.param(
        """\
        name: t
        model: m
        quantize:
          overrides:
            "decoder.*": int3
        """,
        5,
        "quantize.overrides['decoder.*']: 'int3' is not one of fp32, fp16, int8, int4",
        id="bad-override",
    ),
    pytest.param(
        """\
        name: t
        model: m
        formats: [onnx, gguf, onnx]
        """,
        3,
        "formats: 'onnx' is listed twice",
        id="duplicate-format",
    ),
    pytest.param(
        """\
        name: t
        model: m
        formats: []
        """,
        3,
        "formats: must not be empty",
        id="empty-formats",
    ),
    pytest.param(
        """\
        name: t
        model: m
        formats: onnx
        """,
        3,
        "formats: expected a list like [onnx], got the string 'onnx'",
        id="formats-not-a-list",
    ),
    pytest.param(
        """\
        name: t
        model: m
        export:
          onnx:
            opset: 16
        """,
        5,
        "export.onnx.opset: must be ≥ 17, got 16",
        id="opset-low",
    ),
    pytest.param(
        """\
        name: ../escape
        model: m
        """,
        1,
        "name: '../escape' is not a valid name",
        id="bad-name",
    ),
    pytest.param(
        """\
        name: t
        model: ""
        """,
        2,
        "model: must not be empty",
        id="empty-model",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          texts:
            - Hello.
            - "   "
        """,
        6,
        "validate.texts[1]: must not be empty or only whitespace",
        id="blank-text",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          seed: 1
        """,
        3,
        "validate: give at least one sentence under texts: or one id list under ids:",
        id="no-validation-input",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          ids:
            - [1, 2]
            - [3, -4]
        """,
        6,
        "validate.ids[1][1]: must be ≥ 0, got -4",
        id="negative-id",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          ids: [[1]]
          length_scale: 0
        """,
        5,
        "validate.length_scale: length scale must be in (0, 10] (1 = the voice's own pace",
        id="length-scale",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          ids: [[1]]
          noise_scale: 1e-3
        """,
        5,
        "validate.noise_scale: expected a number, got the string '1e-3' (YAML 1.1 reads 1e-3 as text",
        id="yaml-exponent",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          ids: [[1]]
          thresholds:
            length_ratio: -0.1
        """,
        6,
        "validate.thresholds.length_ratio: a bare length_ratio tolerance means |ratio − 1| ≤ t "
        "and must be ≥ 0, got -0.1",
        id="negative-length-ratio",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          ids: [[1]]
          thresholds:
            snr_db: {min: 30, max: 10}
        """,
        6,
        "validate.thresholds.snr_db: min (30) is greater than max (10)",
        id="threshold-min-over-max",
    ),
    pytest.param(
        """\
        name: t
        model: m
        validate:
          ids: [[1]]
          thresholds:
            mcd_db:
              maximum: 3
        """,
        7,
        "validate.thresholds.mcd_db.maximum: unknown key (allowed: min, max)",
        id="threshold-unknown-key",
    ),
    pytest.param(
        """\
        name: t
        model: m
        trust_pickle: true
        trust_pickle: false
        """,
        4,
        "trust_pickle: duplicate key (first given on line 3)",
        id="duplicate-key",
    ),
]


@pytest.mark.parametrize(("text", "line", "expected"), BAD_CASES)
def test_bad_recipe_names_file_line_and_field(tmp_path: Path, text: str, line: int, expected: str) -> None:
    path = write(tmp_path, text, name="bad.yaml")
    message = load_error(path)
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message, message


def test_first_problem_in_file_order_is_reported_with_a_count(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        name: t
        model: m
        quantize:
          block_size: 24
        precisions: [int3]
        """,
        name="two.yaml",
    )
    message = load_error(path)
    assert message.startswith(f"{path}:4: quantize.block_size: ")
    assert message.endswith("(and 1 more problem)")


def test_relative_file_name_is_reported_as_given(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "recipes", "name: t\nmodel: m\nprecisions: [fp32, int3]\n", name="bad.yaml")
    monkeypatch.chdir(tmp_path)
    message = load_error(Path("recipes/bad.yaml"))
    assert message == "recipes/bad.yaml:3: precisions[1]: 'int3' is not one of fp32, fp16, int8, int4"


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nope.yaml")
    assert message == f"{tmp_path / 'nope.yaml'}: recipe file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "is a directory" in load_error(tmp_path)


def test_yaml_syntax_error_reports_yaml_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmodel: m\nformats: [onnx]\n  bad: indent\n", name="syntax.yaml")
    message = load_error(path)
    assert message.startswith(f"{path}:4: not valid YAML: "), message


def test_unclosed_flow_list_is_a_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmodel: m\nformats: [onnx\nprecisions: [fp32]\n", name="syntax.yaml")
    message = load_error(path)
    assert message.startswith(f"{path}:") and "not valid YAML" in message


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "# header\n- name: t\n- model: m\n", name="list.yaml")
    message = load_error(path)
    assert message.startswith(f"{path}:2: the recipe must be a mapping"), message
    assert "got a list" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, name="empty.yaml")
    message = load_error(path)
    assert message.startswith(f"{path}: the recipe is empty")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\nmodel: m\n".encode("latin-1"))
    message = load_error(path)
    assert message.startswith(f"{path}: not UTF-8 text")


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "name: t\nmodel: !!python/object:os.system {}\n", name="tag.yaml")
    message = load_error(path)
    assert message.startswith(f"{path}:2: not valid YAML"), message


def test_precision_thresholds_merge_over_the_global_ones(tmp_path: Path) -> None:
    recipe = Recipe.from_mapping(
        {
            "name": "x",
            "model": "m",
            "validate": {
                "ids": [[1, 2]],
                "thresholds": {"logmel_dtw_db": 1.5, "duration_match": 1.0},
                "precision_thresholds": {"int4": {"logmel_dtw_db": 3.0}},
            },
        },
        tmp_path,
    )
    v = recipe.validation
    assert v is not None
    assert v.thresholds_for("int8")["logmel_dtw_db"].max == 1.5
    assert v.thresholds_for("int4")["logmel_dtw_db"].max == 3.0
    assert v.thresholds_for("int4")["duration_match"].min == 1.0
    with pytest.raises(BadInput, match="int3"):
        Recipe.from_mapping(
            {"name": "x", "model": "m", "validate": {"ids": [[1]], "precision_thresholds": {"int3": {}}}},
            tmp_path,
        )


def test_overrides_keep_higher_everywhere_and_precision_overrides_set_one_mix(tmp_path: Path) -> None:
    recipe = Recipe.from_mapping(
        {
            "name": "x",
            "model": "m",
            "quantize": {
                "overrides": {"decoder.conv_post*": "fp16"},
                "precision_overrides": {"int4": {"decoder.*": "int8"}},
            },
            "validate": {"ids": [[1]]},
        },
        tmp_path,
    )
    q = recipe.quantize
    assert q.overrides_for("fp32") == {}  # fp16 would lower an fp32 artifact: not applied
    assert q.overrides_for("fp16") == {"decoder.conv_post*": "fp16"}
    assert q.overrides_for("int8") == {"decoder.conv_post*": "fp16"}
    # the precision's own mix comes first, so it wins where globs overlap (first match wins)
    assert list(q.overrides_for("int4").items()) == [("decoder.*", "int8"), ("decoder.conv_post*", "fp16")]
