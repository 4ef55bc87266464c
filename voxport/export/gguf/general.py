"""The GGUF spec's `general.*` keys (gguf-py `Keys.General`) from what a checkpoint declares about itself.

Every GGUF voxport writes (its own one-file layout and llama.cpp's two-file layouts) carries them, so a
file says what it is, where it came from and under which license, without the manifest beside it:

- `general.name`, `general.description`, `general.quantized_by`: always (the recipe's name).
- `general.license`, `general.languages`, `general.tags`, `general.author`, `general.organization`,
  `general.source.url`, `general.source.huggingface.repository`: only where the checkpoint declares
  them, never guessed. Sources, first found wins: the family's own `embedded_metadata()` `general.*`
  keys (e.g. a Pocket TTS release's weights path), what the family reads from its own files
  (`FamilyModel.declared_metadata()`: a Piper voice's JSON), a voice package's `MODEL_CARD`
  (`* License: CC0`), a Hugging Face model card's YAML front matter (`README.md`: `license:`,
  `language:`, `tags:`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from voxport import __version__
from voxport.families.base import FamilyModel

#: the generic text files a checkpoint may carry that declare a license (FamilyModel.tokenizer_files names)
MODEL_CARD, HF_CARD = "MODEL_CARD", "README.md"


def _text(files: Mapping[str, Any], name: str) -> str | None:
    data = files.get(name)
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data if isinstance(data, str) else None


def _from_model_card(text: str | None) -> dict[str, Any]:
    """A Piper voice package's MODEL_CARD: markdown bullets such as `* License: CC0`."""
    match = re.search(r"^\s*[*-]\s*License:\s*(\S.*?)\s*$", text or "", re.MULTILINE | re.IGNORECASE)
    return {"general.license": match.group(1)} if match else {}


def _from_hf_card(text: str | None) -> dict[str, Any]:
    """The YAML front matter of a Hugging Face model card (README.md)."""
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text or "", re.DOTALL)
    if not match:
        return {}
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    if not isinstance(front, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(front.get("license"), str):
        out["general.license"] = front["license"]
    for key, gguf_key in (("language", "general.languages"), ("tags", "general.tags")):
        value = front.get(key)
        values = [value] if isinstance(value, str) else value
        if isinstance(values, list) and values and all(isinstance(v, str) for v in values):
            out[gguf_key] = values
    return out


def declared_metadata(model: FamilyModel) -> dict[str, Any]:
    """The `general.*` keys the checkpoint declares about itself (see the module docstring)."""
    files = getattr(model, "tokenizer_files", {}) or {}
    out: dict[str, Any] = {}
    sources = [
        {k: v for k, v in model.embedded_metadata().items() if k.startswith("general.")},
        model.declared_metadata(),
        _from_model_card(_text(files, MODEL_CARD)),
        _from_hf_card(_text(files, HF_CARD)),
    ]
    for found in sources:
        for key, value in found.items():
            out.setdefault(key, value)
    return out


def general_metadata(model: FamilyModel, name: str) -> dict[str, Any]:
    """Every `general.*` key voxport writes except architecture, file type and quantization version
    (which depend on the file, not the model)."""
    out: dict[str, Any] = {
        "general.type": "model",
        "general.name": name,
        "general.quantized_by": f"voxport {__version__}",
    }
    declared = declared_metadata(model)
    out["general.description"] = declared.pop(
        "general.description", f"{model.family} text-to-speech model, exported by voxport"
    )
    out.update(declared)
    return out
