"""The base of every user-written options model: recipe sections and the options that registered
units (format adapters, quantization methods, families) declare for themselves.

It lives in the core layer because those units sit below the recipe in the layer order, yet their
options must read and fail exactly like the recipe's own sections: unknown keys are errors, a section
left empty means its defaults, and YAML scalars are taken strictly.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.fields import FieldInfo

# YAML gives real ints, floats and bools, so strict types only reject mistakes: lax pydantic would
# quietly read `true` as 1 or a block size of `32.5` as an error only after truncation surprises.
Int = Annotated[int, Strict()]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]


class ConfigModel(BaseModel):
    """Unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_section_means_defaults(cls, data: Any) -> Any:
        """`quantize:` with everything commented out is YAML null; read it as "use the defaults"."""
        if not isinstance(data, dict):
            return data
        drop = []
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key in data and data[key] is None and not field.is_required() and not _allows_none(field):
                drop.append(key)
        return {k: v for k, v in data.items() if k not in drop} if drop else data


def _allows_none(field: FieldInfo) -> bool:
    return type(None) in typing.get_args(field.annotation) or field.annotation is type(None)


def is_number(value: Any) -> bool:
    """A YAML number (int or float), not a bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def describe_kind(value: Any) -> str:
    """What a value of the wrong type is, as every config message says it ("got a list")."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value:g})"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"
