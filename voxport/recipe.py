"""The recipe: one YAML file that describes one target device, validated into typed objects.

A recipe error is the first thing most users see, so every error is one line that names the file, the
line and the field (`recipes/bad.yaml:7: validate.thresholds.snr: unknown metric 'snr' (known: ...)`).
Pydantic does the validation; the line numbers come from walking YAML's composed node tree along each
error's `loc`, because the plain Python objects that `yaml.safe_load` returns have forgotten them.
"""

import math
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from voxport.config import Bool, ConfigModel, Float, Int, NonEmptyStr, NonNegInt, describe_kind, is_number
from voxport.errors import BadInput
from voxport.export.registry import formats, get_format
from voxport.quantize.calibration import default_texts, overlap, overlapping_ids
from voxport.quantize.methods import method_class, methods
from voxport.quantize.precisions import SPECS, Precision, rank
from voxport.validate.thresholds import (
    CORE_METRICS,
    METRIC_RANGES,
    Direction,
    Threshold,
    metric_specs,
    spec_named,
)

if TYPE_CHECKING:  # the families load torch: imported where a recipe names synthesis settings
    from voxport.families.base import Family, SynthesisSettings


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _check_name(value: str) -> str:
    # Names become file names (`<name>.int8.onnx`): a leading dot would hide them, `..` would escape.
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _no_duplicates(values: list[Any]) -> list[Any]:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


def _registered_metrics() -> dict[str, Direction]:
    """Every metric a recipe may name: the core ones, then each registered family's, with its direction.

    Loading the families imports them (and torch), so this is asked only about a name that is no core
    metric."""
    from voxport.families.registry import families

    found: dict[str, Direction] = {s.name: s.direction for s in CORE_METRICS}
    for family in families().values():
        for spec in family.metrics:
            found.setdefault(spec.name, spec.direction)
    return found


def _direction(name: str) -> Direction | None:
    """Which way `name` is good, or None if no core metric or registered family's metric has that name."""
    core = spec_named(name, CORE_METRICS)
    if core is not None:
        return core.direction
    return _registered_metrics().get(name)


def _known_metric(name: str) -> str:
    if _direction(name) is None:
        raise ValueError(f"unknown metric {name!r} (known: {', '.join(_registered_metrics())})")
    return name


def _block_size(value: int) -> int:
    if value <= 0 or value % 16:
        raise ValueError(f"must be a positive multiple of 16 (16, 32, 64, ...), got {value}")
    return value


MetricName = Annotated[str, AfterValidator(_known_metric)]


#: every section's base (unknown keys are errors, an empty section means its defaults): voxport/config.py
_Base = ConfigModel


def _non_blank_text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty or only whitespace")
    return text


_THRESHOLD_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "description": "limit in the metric's own direction"},
        {
            "type": "object",
            "properties": {"min": {"type": "number"}, "max": {"type": "number"}},
            "additionalProperties": False,
            "minProperties": 1,
        },
    ]
}


class _ThresholdsSchema:
    """The JSON schema of a thresholds mapping, built when a schema is asked for: its metric names come
    from the registered families, which a recipe load must not import just to define the model."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {"enum": list(_registered_metrics())},
            "additionalProperties": _THRESHOLD_VALUE_SCHEMA,
            "description": "metric name -> limit; a bare number uses the metric's direction",
        }


Thresholds = Annotated[dict[MetricName, Threshold], _ThresholdsSchema()]


class SettingsSection(_Base):
    """A section that also takes synthesis settings as flat keys (`seed:`, `noise_scale:`,
    `temperature:`, `voice:` ...). Any registered family's settings key is accepted and its value checked
    with that field's own type and range (strictly: `true` is not a number); whether the recipe's family
    has the key is checked where the family is known, at load when `family:` is given, else at build
    (`Recipe.synthesis_settings`). Only the keys given are kept: the rest are the family's defaults."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _settings_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = [(f.alias or n) for n, f in cls.model_fields.items()]
        given = {k: v for k, v in data.items() if k not in own}
        if not given:
            return data
        fields = _settings_fields()
        problems: list[InitErrorDetails] = []
        checked = dict(data)
        for key, value in given.items():
            if not isinstance(key, str) or key not in fields:
                allowed = ", ".join([*own, *fields])
                problems.append(_problem("unknown_key", f"unknown key (allowed: {allowed})", (key,), value))
                continue
            try:
                checked[key] = fields[key].validate_python(value)
            except ValidationError as exc:
                problems += [_problem("setting", _message(e), (key, *e["loc"]), value) for e in exc.errors()]
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, problems)
        return checked

    def settings_given(self) -> dict[str, Any]:
        """The synthesis settings this section names, as validated (the family's defaults fill the rest)."""
        return dict(self.model_extra or {})


def _problem(kind: str, message: str, loc: tuple[Any, ...], value: Any) -> InitErrorDetails:
    error = PydanticCustomError(kind, "{error}", {"error": message})
    return InitErrorDetails(type=error, loc=loc, input=value)


def _settings_fields() -> dict[str, TypeAdapter[Any]]:
    """Each settings key a registered family takes -> a strict validator of its type and range (a key
    means the same, with the same type, in every family: tests/test_family_registry.py checks that)."""
    from voxport.families.registry import families  # loads the families: only when a section has settings

    fields: dict[str, TypeAdapter[Any]] = {}
    for family in families().values():
        for name, field in family.settings.model_fields.items():
            if name not in fields:
                meta = field.metadata
                annotated = Annotated[(field.annotation, *meta)] if meta else field.annotation
                fields[name] = TypeAdapter(annotated, config=ConfigDict(strict=True))
    return fields


def unknown_setting(family: "type[Family]", key: str) -> str:
    fields = ", ".join(family.settings.model_fields)
    return f"{family.name} has no setting {key!r} (its settings: {fields})"


class AsrConfig(_Base):
    """The intelligibility gate (voxport/validate/asr.py, the `asr` extra): Whisper base transcribes the
    reference's and each artifact's audio of the validate texts, and an artifact's corpus word error rate
    may exceed the reference's by at most `max_wer_increase` (0.02: two more wrong words per hundred)."""

    max_wer_increase: Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.02


class ValidateConfig(SettingsSection):
    """What parity is measured on, with which synthesis settings (flat keys, see SettingsSection), and
    the limits it must meet."""

    texts: list[Annotated[str, AfterValidator(_non_blank_text)]] = Field(default_factory=list)
    ids: list[Annotated[list[NonNegInt], Field(min_length=1)]] = Field(default_factory=list)
    thresholds: Thresholds = Field(default_factory=dict)
    #: per-precision limits merged over `thresholds` (e.g. a looser log-mel limit for int4 only)
    precision_thresholds: dict[Precision, Thresholds] = Field(default_factory=dict)
    #: limits for other runtimes' layouts of the artifacts (sherpa-onnx's Pocket TTS files), measured
    #: where the runtime is installed; a layout measured nowhere passes (its figures are None)
    layout_thresholds: Thresholds = Field(default_factory=dict)
    #: the intelligibility gate: word error rate against the reference's, when the `asr` extra is installed
    asr: AsrConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_thresholds(cls, data: Any) -> Any:
        """Turn `snr_db: 20` into `{min: 20}` here, the only place that knows the key for the value."""
        if not isinstance(data, dict):
            return data
        for key in ("thresholds", "layout_thresholds"):
            if isinstance(data.get(key), dict):
                data = {**data, key: _convert_bare(data[key])}
        per_precision = data.get("precision_thresholds")
        if isinstance(per_precision, dict):
            data = {
                **data,
                "precision_thresholds": {
                    k: _convert_bare(v) if isinstance(v, dict) else v for k, v in per_precision.items()
                },
            }
        return data

    def thresholds_for(self, precision: str) -> dict[str, Threshold]:
        """The limits an artifact of `precision` must meet: the global ones, then its own on top."""
        return {**self.thresholds, **self.precision_thresholds.get(precision, {})}  # type: ignore[call-overload]

    @model_validator(mode="after")
    def _needs_input(self) -> "ValidateConfig":
        if not self.texts and not self.ids:
            raise ValueError("give at least one sentence under texts: or one id list under ids:")
        return self

    @model_validator(mode="after")
    def _asr_needs_texts(self) -> "ValidateConfig":
        """Word errors are counted against the words said: id sequences have none to compare with."""
        if self.asr is not None and not self.texts:
            problem = "the ASR gate transcribes the validate texts: give texts: (ids: cannot be transcribed)"
            error = PydanticCustomError("asr_texts", "{error}", {"error": problem})
            details = InitErrorDetails(type=error, loc=("asr",), input=self.asr.model_dump())
            raise ValidationError.from_exception_data(type(self).__name__, [details])
        return self

    @model_validator(mode="after")
    def _limits_within_range(self) -> "ValidateConfig":
        """A limit outside what its metric can measure never passes (`logmel_dtw_db: -5`) or checks
        nothing (`duration_match: -1`): either way the recipe is wrong, so say where."""
        located = [(("thresholds",), self.thresholds), (("layout_thresholds",), self.layout_thresholds)] + [
            (("precision_thresholds", p), limits) for p, limits in self.precision_thresholds.items()
        ]
        problems = [
            InitErrorDetails(
                type=PydanticCustomError("threshold_range", "{error}", {"error": problem}),
                loc=(*where, metric),
                input=limit.model_dump(exclude_none=True),
            )
            for where, limits in located
            for metric, limit in limits.items()
            if (problem := _out_of_range(metric, limit)) is not None
        ]
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


def _out_of_range(metric: str, limit: Threshold) -> str | None:
    """Why `limit` cannot be meant for `metric`, or None when each bound lies in the metric's range."""
    low, high = METRIC_RANGES.get(metric, (-math.inf, math.inf))
    for name, bound in (("min", limit.min), ("max", limit.max)):
        if bound is None or low <= bound <= high:
            continue
        never = (name == "max" and bound < low) or (name == "min" and bound > high)
        fact = (
            f"{metric} is never below {_fmt_num(low)}"
            if bound < low
            else f"{metric} is at most {_fmt_num(high)}"
        )
        span = f"between {_fmt_num(low)} and {_fmt_num(high)}" if high < math.inf else f"≥ {_fmt_num(low)}"
        effect = "can never pass" if never else "checks nothing"
        return f"{name} {_fmt_num(bound)} {effect}: {fact}; use a limit {span}"
    return None


def _convert_bare(thresholds: dict[Any, Any]) -> dict[Any, Any]:
    converted: dict[Any, Any] = {}
    for metric, value in thresholds.items():
        if not is_number(value) or not math.isfinite(value):
            converted[metric] = value  # Threshold rejects NaN/inf with a message at this key's line
        elif (direction := _direction(metric) if isinstance(metric, str) else None) is None:
            converted[metric] = {"min": value}  # the key error says what is wrong; avoid a 2nd error
        elif direction == "band" and value < 0:
            converted[metric] = value  # Threshold rejects it with a message at this key's line
        else:
            converted[metric] = Threshold.from_bare(direction, value).model_dump(exclude_none=True)
    return converted


def _known_method(name: str) -> str:
    if name not in methods():
        raise ValueError(f"{name!r} is not one of {', '.join(methods())}")  # as for any other enum
    return name


class _MethodNames:
    """JSON Schema of `quantize.method`: an enum of the methods registered when the schema is asked
    for, so a method registered by subclassing appears in editors without touching the recipe."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "enum": list(methods())}


MethodName = Annotated[str, Strict(), AfterValidator(_known_method), _MethodNames()]


class CalibrationConfig(_Base):
    """Sentences a calibrated method (`QuantMethod.calibrated`) records each weight's inputs on,
    synthesised with the validate settings; `seed` replaces validate.seed for these runs."""

    texts: list[Annotated[str, AfterValidator(_non_blank_text)]] = Field(default_factory=list)
    ids: list[Annotated[list[NonNegInt], Field(min_length=1)]] = Field(default_factory=list)
    seed: NonNegInt | None = None


class BudgetConfig(_Base):
    """A size budget for one precision's artifacts: voxport measures how much each module's audio suffers
    when that module alone drops to each candidate precision, then picks the mix with the least total
    damage whose bits per weight (every weight counted, integer scales at 32 bits as ONNX stores them, so
    the figure bounds every format) stay within `bits_per_weight`."""

    bits_per_weight: Annotated[Float, Field(gt=0, le=32, description="upper bound on stored bits per weight")]
    candidates: Annotated[
        list[Precision],
        Field(min_length=1, description="precisions a module may take (default int4, int8, fp16)"),
        AfterValidator(_no_duplicates),
    ] = Field(default_factory=lambda: ["int4", "int8", "fp16"])
    granularity: Literal["module", "weight"] = Field(
        "module",
        description="unit of choice: a module (the weights two name levels up, e.g. one attention block) "
        "or each weight alone (finer, and one sensitivity run per weight and precision)",
    )
    sentences: Annotated[
        Int, Field(ge=1, le=64, description="calibration sentences each sensitivity run synthesises")
    ] = 4


class QuantizeConfig(_Base):
    """How weights are quantized.

    `method` is a registered quantization method (`voxport.quantize.methods.methods()`), `options`
    its typed options (checked against the method's `Options`), and `calibration` the sentences a
    calibrated method needs. `overrides` (glob → precision) keep modules at a *higher* precision in
    every artifact: an entry below an artifact's own precision does not apply to it (an fp32 artifact
    stays fp32). `precision_overrides` set an exact mix for one precision's artifact (e.g. int4 with
    int8 decoder). `int8_block_size` stores int8 in blocks (32: GGUF Q8_0's) rather than per channel.
    """

    method: MethodName = "rtn"
    options: dict[NonEmptyStr, Any] = Field(default_factory=dict)
    calibration: CalibrationConfig | None = None
    block_size: Annotated[Int, AfterValidator(_block_size)] = 32
    #: None: int8 keeps one scale per output channel; 32: int8 in blocks of 32 with fp16 scales, the
    #: codes GGUF Q8_0 stores, carried identically by ONNX (blocked DequantizeLinear) and Core ML
    int8_block_size: Annotated[Int, AfterValidator(_block_size)] | None = None
    overrides: dict[NonEmptyStr, Precision] = Field(default_factory=dict)
    precision_overrides: dict[Precision, dict[NonEmptyStr, Precision]] = Field(default_factory=dict)
    #: per artifact precision, a size budget that replaces a hand-written mix (see BudgetConfig)
    budget: dict[Precision, BudgetConfig] = Field(default_factory=dict)

    @field_validator("options", mode="after")
    @classmethod
    def _options_fit_the_method(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Each option is checked by the method's own `Options`, so an error names the option's key."""
        method = info.data.get("method")
        if method is None:  # the method itself was wrong; that error is reported instead
            return value
        options = method_class(method).Options
        try:
            options.model_validate(value)
        except ValidationError as exc:
            allowed = ", ".join(options.model_fields) or "none"
            problems = [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "unknown_option", "{error}", {"error": f"unknown option (allowed: {allowed})"}
                    ),
                    loc=tuple(err["loc"]),
                    input=err["input"],
                )
                if err["type"] == "extra_forbidden"
                else InitErrorDetails(
                    type=err["type"], loc=tuple(err["loc"]), input=err["input"], ctx=err.get("ctx", {})
                )
                for err in exc.errors(include_url=False)
            ]
            raise ValidationError.from_exception_data(cls.__name__, problems) from None
        return value

    @model_validator(mode="after")
    def _calibration_is_not_empty(self) -> "QuantizeConfig":
        """An empty `calibration:` section would silently mean the built-in set; say so instead."""
        c = self.calibration
        if c is not None and not (c.texts or c.ids):
            raise ValueError(
                "calibration: give sentences under texts: or ids:, or remove the section to use the "
                f"built-in English set ({len(default_texts())} sentences)"
            )
        return self

    @model_validator(mode="after")
    def _budget_or_hand_mix(self) -> "QuantizeConfig":
        """A budget chooses the whole mix of its precision, so a hand mix for the same precision would be
        overwritten without a word; a budget for a float precision has nothing to choose."""
        problems = []
        for precision, budget in self.budget.items():
            if not SPECS[precision].integer:
                problems.append(
                    _problem(
                        "budget_precision",
                        f"a budget applies to int8/int4 artifacts, not {precision}",
                        ("budget", precision),
                        precision,
                    )
                )
            elif precision in self.precision_overrides:
                problems.append(
                    _problem(
                        "budget_and_mix",
                        f"{precision} has both a budget and precision_overrides: the budget picks the mix; "
                        "remove one of them",
                        ("budget", precision),
                        precision,
                    )
                )
            elif "fp32" in budget.candidates:
                problems.append(
                    _problem(
                        "budget_candidate",
                        "fp32 is not a candidate: fp16 stores the same weights in half the bits",
                        ("budget", precision, "candidates"),
                        budget.candidates,
                    )
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def needs_calibration(self, precision: str) -> bool:
        """True when building `precision` runs the model on calibration sentences (a calibrated method
        for an integer precision, or a budget)."""
        return SPECS[precision].integer and (method_class(self.method).calibrated or precision in self.budget)

    def calibration_texts(self) -> tuple[list[str], list[list[int]]]:
        """The calibration sentences as (texts, ids): the recipe's own, else the built-in English set."""
        if self.calibration is None:
            return list(default_texts()), []
        return list(self.calibration.texts), [list(i) for i in self.calibration.ids]

    def method_options(self) -> dict[str, Any]:
        """The method's options with its defaults filled in (what the cache keys)."""
        return method_class(self.method).Options.model_validate(self.options).model_dump(mode="json")

    def overrides_for(self, precision: str) -> dict[str, str]:
        """Globs for one artifact: the shared keep-higher ones that apply, then its own, which win."""
        shared = {g: p for g, p in self.overrides.items() if rank(p) >= rank(precision)}
        own = self.precision_overrides.get(precision, {})  # type: ignore[call-overload]
        return {**own, **{g: p for g, p in shared.items() if g not in own}}


class PruneSpec(_Base):
    """Layers to drop from one prunable stack: explicit indices or every other layer."""

    stack: NonEmptyStr
    layers: Annotated[list[NonNegInt], Field(min_length=1), AfterValidator(_no_duplicates)] | None = None
    every_other: Bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> "PruneSpec":
        if (self.layers is not None) == self.every_other:
            raise ValueError("give exactly one of layers: [...] or every_other: true")
        return self


def _known_format(name: str) -> str:
    known = formats()
    if name not in known:
        raise ValueError(f"{name!r} is not one of {', '.join(known)}")
    return name


class _FormatNames:
    """The JSON schema of a `formats:` item: the registered formats, read when the schema is made."""

    def __get_pydantic_json_schema__(self, core: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"type": "string", "enum": list(formats())}


FormatName = Annotated[str, AfterValidator(_known_format), _FormatNames()]

#: the `export:` section: one key per registered format, holding that format's own options model
ExportConfig = create_model(
    "ExportConfig",
    __base__=_Base,
    **{name: (a.Options, Field(default_factory=a.Options)) for name, a in formats().items()},
)


class PhrasesConfig(SettingsSection):
    """Phrases pre-rendered by the full-precision model and shipped as audio beside the artifacts, so a
    watch never computes "Battery low". Sampling is seeded: the same recipe renders the same bytes. The
    synthesis settings are flat keys, as in `validate:` (see SettingsSection)."""

    texts: Annotated[
        list[Annotated[str, AfterValidator(_non_blank_text)]],
        Field(min_length=1),
        AfterValidator(_no_duplicates),
    ]


class Recipe(_Base):
    """One target device: what to export, how to quantize, and how to prove it still sounds right.

    `model` is the checkpoint as an absolute path (resolved against the recipe file's directory);
    `raw_model` is the string as written. The YAML key `validate` is the attribute `validation`
    because `BaseModel.validate` already exists.
    """

    name: Annotated[str, AfterValidator(_check_name)]
    model: Path
    family: NonEmptyStr | None = None
    trust_pickle: Bool = False
    formats: Annotated[list[FormatName], Field(min_length=1), AfterValidator(_no_duplicates)] = Field(
        default_factory=lambda: ["onnx"]
    )
    precisions: Annotated[list[Precision], Field(min_length=1), AfterValidator(_no_duplicates)] = Field(
        default_factory=lambda: ["fp32", "int8"]
    )
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    prune: list[PruneSpec] = Field(default_factory=list)
    export: ExportConfig = Field(default_factory=ExportConfig)  # type: ignore[valid-type]
    validation: ValidateConfig | None = Field(default=None, alias="validate")
    phrases: PhrasesConfig | None = None
    #: the recipe file this one builds on (resolved by `load_recipe`; kept for the record)
    extends: str | None = None

    _raw_model: str | None = PrivateAttr(default=None)
    _source_path: Path | None = PrivateAttr(default=None)
    #: the YAML trees it was read from (file and its extends: chain), or a label: for `where`
    _layers: "list[_Layer] | str" = PrivateAttr(default="recipe")

    @field_validator("model", mode="before")
    @classmethod
    def _model_is_a_path_string(cls, value: Any) -> Any:
        if isinstance(value, PurePath):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected a checkpoint path, got {describe_kind(value)}")
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("model", mode="after")
    @classmethod
    def _resolve_model(cls, value: Path, info: ValidationInfo) -> Path:
        # Relative to the recipe, not the shell's cwd, so `voxport build recipes/x.yaml` works anywhere.
        base = (info.context or {}).get("base_dir")
        value = value.expanduser()
        if not value.is_absolute():
            value = Path(base if base is not None else os.getcwd()) / value
        return Path(os.path.abspath(value))  # normalise `..` without following symlinks

    @field_validator("prune", mode="after")
    @classmethod
    def _one_entry_per_stack(cls, specs: list[PruneSpec]) -> list[PruneSpec]:
        seen: set[str] = set()
        for spec in specs:
            if spec.stack in seen:
                raise ValueError(f"stack {spec.stack!r} is listed twice; put all its layers in one entry")
            seen.add(spec.stack)
        return specs

    @model_validator(mode="after")
    def _formats_hold_precisions(self) -> "Recipe":
        """Each format's own check of its options against the precisions (e.g. a Core ML target
        without int4 blockwise weights): said when the recipe is read, before hours of work."""
        for name in self.formats:
            problem = get_format(name).check(self.export_options(name), self.precisions)
            if problem is not None:
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _settings_of_its_family(self) -> "Recipe":
        """With `family:` given, a synthesis setting that family lacks is an error at its line now
        (without it, the detected family is checked at build by `synthesis_settings`)."""
        given = [(name, key, v) for name, section in self._settings_sections() for key, v in section.items()]
        if not given or self.family is None:
            return self
        from voxport.families.registry import families

        family = families().get(self.family)
        if family is None:  # an unknown family is reported, with the known ones, when the model loads
            return self
        problems = [
            _problem("family_setting", unknown_setting(family, key), (name, key), value)
            for name, key, value in given
            if key not in family.settings.model_fields
        ]
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @model_validator(mode="after")
    def _thresholds_fit_family(self) -> "Recipe":
        """A recipe that names its family may set limits only on metrics that family reports: a limit on
        another family's metric would never be measured, so the build would fail on it."""
        v = self.validation
        if self.family is None or v is None:
            return self
        located = [(("thresholds",), v.thresholds), (("layout_thresholds",), v.layout_thresholds)] + [
            (("precision_thresholds", p), limits) for p, limits in v.precision_thresholds.items()
        ]
        foreign = [(w, m) for w, limits in located for m in limits if spec_named(m, CORE_METRICS) is None]
        if not foreign:
            return self  # core metrics only: every family reports them (and no family need be loaded)
        from voxport.families.registry import families

        family = families().get(self.family)
        if family is None:
            return self  # an unknown family is reported by the build, with the known ones
        own = [s.name for s in metric_specs(family)]
        problems = [
            InitErrorDetails(
                type=PydanticCustomError(
                    "foreign_metric",
                    "{error}",
                    {"error": f"{self.family} does not report {metric!r} (its metrics: {', '.join(own)})"},
                ),
                loc=("validate", *where, metric),
                input=metric,
            )
            for where, metric in foreign
            if metric not in own
        ]
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @model_validator(mode="after")
    def _validation_apart_from_calibration(self) -> "Recipe":
        """A gate measured on the sentences the codes were fitted to (or the mix was ranked on) proves
        nothing about the next sentence: validate sentences must not be calibration sentences."""
        q, v = self.quantize, self.validation
        if v is None or not any(q.needs_calibration(p) for p in self.precisions):
            return self
        texts, ids = q.calibration_texts()
        source = "quantize.calibration" if q.calibration is not None else "the built-in calibration set"
        why = "a gate measured on calibration data proves nothing; validate on other sentences"
        shared = set(overlap(texts, v.texts))
        problems = [
            _problem("calibration_overlap", f"also in {source}: {why}", ("validate", "texts", i), text)
            for i, text in enumerate(v.texts)
            if text in shared
        ] + [
            _problem("calibration_overlap", f"also in {source}: {why}", ("validate", "ids", i), v.ids[i])
            for i in overlapping_ids(ids, v.ids)
        ]
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def _settings_sections(self) -> list[tuple[str, dict[str, Any]]]:
        sections = (("validate", self.validation), ("phrases", self.phrases))
        return [(name, s.settings_given()) for name, s in sections if s is not None]

    def synthesis_settings(
        self, section: Literal["validate", "phrases"], family: "type[Family]"
    ) -> "SynthesisSettings":
        """The `family`'s own settings model from a section's keys (its defaults where none is given).
        Paths (a voice prompt) are resolved against the recipe's directory; a key the family lacks is a
        BadInput at the key's file and line."""
        config = self.validation if section == "validate" else self.phrases
        given = config.settings_given() if config is not None else {}
        fields = family.settings.model_fields
        for key in given:
            if key not in fields:
                where = self.where((section, key))
                raise BadInput(f"{where}: {section}.{key}: {unknown_setting(family, key)}")
        base = self.source_path.parent if self.source_path is not None else Path.cwd()
        for key in family.settings.path_fields():
            if given.get(key) is not None:
                given[key] = str((base / given[key]).resolve())
        try:
            return family.settings(**given)
        except BadInput as exc:
            raise BadInput(f"{self.where((section,))}: {section}: {exc}") from None

    def where(self, loc: tuple[Any, ...]) -> str:
        """`file:line` of the key at `loc` (the recipe or the file it extends that sets it), or the label
        of a recipe built from a mapping."""
        if isinstance(self._layers, str):
            return self._layers
        label, line = _locate(self._layers, loc)
        return f"{label}:{line}"

    def export_options(self, name: str) -> ConfigModel:
        """Format `name`'s options: the recipe's `export.<name>:` section, or the format's defaults
        for a format registered after this module built the section."""
        options = getattr(self.export, name, None)
        return options if isinstance(options, ConfigModel) else get_format(name).Options()

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw_model(cls, data: Any, handler: Any) -> "Recipe":
        raw = data.get("model") if isinstance(data, dict) else None
        recipe = handler(data)
        if isinstance(raw, str | PurePath):
            recipe._raw_model = str(raw)
        return recipe

    @property
    def raw_model(self) -> str:
        """The checkpoint path exactly as the recipe wrote it (for messages and the report)."""
        return self._raw_model if self._raw_model is not None else str(self.model)

    @property
    def source_path(self) -> Path | None:
        """The recipe file this came from (absolute), or None when built with `from_mapping`."""
        return self._source_path

    def resolved(self, family: "type[Family] | None" = None) -> dict[str, Any]:
        """The recipe as the build used it, JSON-able: defaults filled in, model as an absolute path.
        With the `family` that ran it, `validate:` and `phrases:` hold all of its synthesis settings
        (its defaults where the recipe gave none, a voice prompt as an absolute path)."""
        data = self.model_dump(mode="json", by_alias=True)
        if family is not None:
            for section in ("validate", "phrases"):
                if data.get(section) is not None:
                    data[section].update(self.synthesis_settings(section, family).model_dump(mode="json"))
        return data

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        base_dir: str | os.PathLike[str],
        *,
        source_path: str | os.PathLike[str] | None = None,
    ) -> "Recipe":
        """Build a recipe without a file (tests, CLI flags); errors are BadInput without line numbers."""
        label = str(source_path) if source_path is not None else "recipe"
        recipe = _validate(dict(data), Path(base_dir), label)
        recipe._layers = label
        if source_path is not None:
            recipe._source_path = Path(source_path).absolute()
        return recipe


# ---------------------------------------------------------------------------------------------- loading


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a recipe file; every problem is a one-line BadInput naming file:line: field.

    `extends: base.yaml` (relative to the recipe) merges this file over the base: mappings merge key by
    key, anything else (lists, scalars) is replaced. Paths such as `model:` stay relative to the file
    that wrote them, and an error in an inherited key names the base file's line."""
    file = Path(path)
    data, layers = _load_layers(file, str(path), ())
    recipe = _validate(data, file.absolute().parent, layers)
    recipe._source_path = file.absolute()
    recipe._layers = layers
    return recipe


_Layer = tuple[str, yaml.Node]


def _load_layers(file: Path, label: str, chain: tuple[Path, ...]) -> tuple[dict[str, Any], list[_Layer]]:
    """This file's mapping merged over its `extends:` chain, and the (label, YAML tree) of each file,
    the file itself first."""
    data, root = _read_mapping(file, label)
    me = file.resolve()
    if me in chain:
        cycle = " → ".join(p.name for p in (*chain, me))
        raise BadInput(f"{label}: extends: forms a cycle ({cycle})")
    base = data.get("extends")
    if base is None:
        return data, [(label, root)]
    if not isinstance(base, str) or not base.strip():
        line = _line_for(root, ("extends",))
        raise BadInput(f"{label}:{line}: extends: expected a recipe file path, got {describe_kind(base)}")
    base_file = Path(base).expanduser()
    if not base_file.is_absolute():
        base_file = file.absolute().parent / base_file
    if not base_file.is_file():
        line = _line_for(root, ("extends",))
        problem = "is not a regular file" if base_file.exists() else "not found"
        raise BadInput(f"{label}:{line}: extends: {base} {problem} (looked at {base_file})")
    parent, parent_layers = _load_layers(base_file, str(base_file), (*chain, me))
    parent = dict(parent)
    parent.pop("extends", None)
    model = parent.get("model")
    if isinstance(model, str) and model.strip() and not Path(model).expanduser().is_absolute():
        # relative to the base recipe's own directory, as it would be if built on its own
        parent["model"] = os.path.abspath(base_file.absolute().parent / model)
    return _merge(parent, data), [(label, root), *parent_layers]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: the largest recipe file read: real ones are a few KiB; a mistyped path such as /dev/zero or a model
#: file must fail at once instead of being read into memory (/dev/zero reached 7.2 GB in 15 s)
MAX_RECIPE_BYTES = 1 << 20


def _read_recipe_bytes(file: Path, label: str) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most MAX_RECIPE_BYTES.

    Checked with stat before opening: opening a FIFO for reading blocks until a writer appears, and a
    device reads forever. The read itself is bounded too, in case the file grows after the stat."""
    try:
        info = file.stat()
    except FileNotFoundError:
        raise BadInput(f"{label}: recipe file not found") from None
    except OSError as exc:
        raise BadInput(f"{label}: cannot read the recipe: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise BadInput(f"{label}: is a directory, not a recipe file")
    if not stat.S_ISREG(info.st_mode):
        raise BadInput(f"{label}: is {_file_kind(info.st_mode)}, not a recipe file; give a .yaml file")
    too_big = f"{label}: is larger than {MAX_RECIPE_BYTES >> 20} MiB, which no recipe is; check the path"
    if info.st_size > MAX_RECIPE_BYTES:
        raise BadInput(too_big)
    try:
        with open(file, "rb") as fh:
            raw = fh.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"{label}: cannot read the recipe: {exc.strerror or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise BadInput(too_big)
    return raw


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _read_mapping(file: Path, label: str) -> tuple[dict[str, Any], yaml.Node]:
    raw = _read_recipe_bytes(file, label)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{label}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise BadInput(_yaml_error_line(label, exc)) from None
    finally:
        loader.dispose()

    if root is None or data is None:
        raise BadInput(f"{label}: the recipe is empty (it needs at least name: and model:)")
    if not isinstance(data, dict):
        line = root.start_mark.line + 1
        raise BadInput(
            f"{label}:{line}: the recipe must be a mapping of keys (name:, model:, formats:, ...), "
            f"got {describe_kind(data)}"
        )
    _check_duplicate_keys(root, (), label, set())
    return data, root


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe, for editor completion and validation (e.g. yaml-language-server)."""
    schema = Recipe.model_json_schema(by_alias=True)
    _add_settings_keys(schema)
    return schema


def _add_settings_keys(schema: dict[str, Any]) -> None:
    """`validate:` and `phrases:` take every registered family's settings keys; the models allow extra
    keys only to check them per family, so the schema lists those keys and no others."""
    from voxport.families.registry import families

    keys: dict[str, Any] = {}
    for family in families().values():
        for name, prop in family.settings.model_json_schema()["properties"].items():
            keys.setdefault(name, {**prop, "description": f"synthesis setting ({family.name} and others)"})
    for section in (ValidateConfig, PhrasesConfig):
        definition = schema["$defs"][section.__name__]
        definition["properties"] = {**definition["properties"], **keys}
        definition["additionalProperties"] = False


def _yaml_error_line(label: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    problem = " ".join(str(problem).split())
    if mark is None:
        return f"{label}: not valid YAML: {problem}"
    return f"{label}:{mark.line + 1}: not valid YAML: {problem} (column {mark.column + 1})"


def _check_duplicate_keys(node: yaml.Node, loc: tuple[Any, ...], label: str, visited: set[int]) -> None:
    """PyYAML keeps the last of two equal keys without a word; a recipe with both is a mistake."""
    if id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if key.value in first_line:
                    raise BadInput(
                        f"{label}:{line}: {_format_loc((*loc, key.value))}: duplicate key "
                        f"(first given on line {first_line[key.value]})"
                    )
                first_line[key.value] = line
                _check_duplicate_keys(value, (*loc, key.value), label, visited)
            else:
                _check_duplicate_keys(value, loc, label, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, (*loc, index), label, visited)


def _validate(data: dict[str, Any], base_dir: Path, layers: list[_Layer] | str) -> Recipe:
    try:
        return Recipe.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise BadInput(_one_line(exc, layers)) from None


def _one_line(exc: ValidationError, layers: list[_Layer] | str) -> str:
    """The first problem in file order, plus a count of the rest: one line the CLI can print.

    `layers` is the recipe file and the files it extends (first wins where a key is found), or just a
    label when the recipe came from a mapping."""
    located = []
    for order, err in enumerate(exc.errors(include_url=False)):
        if isinstance(layers, str):
            located.append((0, 0, order, err, layers))
            continue
        label, line = _locate(layers, err["loc"])
        # errors in the recipe itself come first, then those inherited from a base file
        located.append(([lbl for lbl, _ in layers].index(label), line, order, err, f"{label}:{line}"))
    located.sort(key=lambda item: item[:3])
    *_, err, where = located[0]
    message = f"{where}: {_format_loc(err['loc'])}: {_message(err)}"
    if len(located) > 1:
        rest = len(located) - 1
        message += f" (and {rest} more problem{'s' if rest > 1 else ''})"
    return message


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENT_RE.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out or "(top level)"


def _locate(layers: list[_Layer], loc: tuple[Any, ...]) -> tuple[str, int]:
    """The file and line for an error: the file whose tree follows `loc` deepest (the recipe on ties)."""
    best = max(layers, key=lambda layer: _depth_along(layer[1], loc))
    return best[0], _line_for(best[1], loc)


def _depth_along(root: yaml.Node, loc: tuple[Any, ...]) -> int:
    return _walk(root, loc)[1]


def _line_for(root: yaml.Node, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest node along `loc`: a mapping entry's key, a list item, or the parent."""
    return _walk(root, loc)[0]


def _walk(root: yaml.Node, loc: tuple[Any, ...]) -> tuple[int, int]:
    node = root
    line = root.start_mark.line + 1
    depth = 0
    for part in loc:
        if part == "[key]":
            continue  # `line` already points at the key
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                break  # e.g. a missing field: stay on the parent mapping
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
        depth += 1
    return line, depth


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and `X | None` down to the type a loc step walks into."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _allowed_keys(loc: tuple[Any, ...]) -> list[str] | None:
    """The keys the model at `loc` accepts, for "unknown key (allowed: ...)"."""
    tp: Any = Recipe
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or n): f for n, f in tp.model_fields.items()}
            if part not in fields:
                return None
            tp = fields[part].annotation
        elif typing.get_origin(tp) is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [(f.alias or n) for n, f in tp.model_fields.items()]
    return None


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "path_type": "a path string",
}


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(tuple(err["loc"][:-1]))
        return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{value!r} is not one of {', '.join(options)}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind == "list_type" and isinstance(value, str):
        return f"expected a list like [{value}], got {describe_kind(value)}"
    if kind in ("float_type", "float_parsing") and isinstance(value, str) and _looks_like_float(value):
        return f"expected a number, got {describe_kind(value)} (YAML 1.1 reads 1e-3 as text: write 1.0e-3)"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe_kind(value)}"
    if kind in ("too_short", "string_too_short"):
        minimum = ctx.get("min_length", 1)
        return "must not be empty" if minimum == 1 else f"needs at least {minimum} items"
    bounds = {
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        symbol, key = bounds[kind]
        limit = ctx.get(key)
        shown = _fmt_num(limit) if is_number(limit) else limit
        return f"must be {symbol} {shown}, got {value!r}"
    if kind == "finite_number":
        return f"must be a finite number, got {value!r}"
    return str(err["msg"])


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
