"""Metadata written into a Core ML model: the Xcode-visible fields plus voxport's key/values.

Core ML shows `author`, `license`, `short_description` and `version` in Xcode's model viewer and
`user_defined_metadata` (string → string) to apps at run time (`MLModel.modelDescription.metadata
[.creatorDefinedKey]`), which is where a runtime finds the sample rate and the family. Everything is
stored as strings because the protobuf field is `map<string, string>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voxport import __version__
from voxport.errors import BadInput

#: keys callers usually pass in `user_metadata`; any other string key is kept as well
STANDARD_KEYS = ("family", "graph", "sample_rate", "precision", "recipe", "voxport_version")


def apply_metadata(
    mlmodel: Any,
    *,
    graph: str,
    author: str = "voxport",
    license: str | None = None,  # noqa: A002 - Core ML's field name
    short_description: str | None = None,
    version: str | None = None,
    descriptions: Mapping[str, str] | None = None,
    user_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Set the model-level fields, per-feature descriptions and `user_defined_metadata` in place.

    `descriptions` maps input or output names to text; a name that is neither is a BadInput, so a
    typo does not silently drop a description. `voxport_version` and `graph` are always recorded."""
    mlmodel.author = author
    if license is not None:
        mlmodel.license = license
    mlmodel.short_description = short_description or f"voxport graph '{graph}'"
    mlmodel.version = version or __version__
    spec_description = mlmodel.get_spec().description
    inputs = {f.name for f in spec_description.input}
    outputs = {f.name for f in spec_description.output}
    for name, text in (descriptions or {}).items():
        if name in inputs:
            mlmodel.input_description[name] = text
        elif name in outputs:
            mlmodel.output_description[name] = text
        else:
            raise BadInput(
                f"Core ML graph '{graph}': no input or output named '{name}' to describe "
                f"(inputs: {', '.join(sorted(inputs))}; outputs: {', '.join(sorted(outputs))})"
            )
    meta = {"graph": graph, "voxport_version": __version__, **(user_metadata or {})}
    for key, value in meta.items():
        mlmodel.user_defined_metadata[str(key)] = str(value)


def read_metadata(spec: Any) -> dict[str, Any]:
    """The fields `apply_metadata` writes, read back from a model spec (`MLModel.get_spec()`)."""
    description = spec.description
    return {
        "author": description.metadata.author,
        "license": description.metadata.license,
        "short_description": description.metadata.shortDescription,
        "version": description.metadata.versionString,
        "descriptions": {
            **{f.name: f.shortDescription for f in description.input if f.shortDescription},
            **{f.name: f.shortDescription for f in description.output if f.shortDescription},
        },
        "user_defined_metadata": dict(description.metadata.userDefined),
    }
