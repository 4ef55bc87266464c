"""The sentences calibration runs on: the built-in English set, and the rule that keeps them apart from
the sentences a build is judged on.

A calibrated method fits its codes to what the weights see while the model speaks these sentences, and
a size budget ranks modules by how much the audio of these sentences suffers. A parity gate measured on
the same sentences would grade the codes on the data they were fitted to, so a recipe whose validate
texts (or id lists) appear among its calibration sentences is refused. Sentences are compared after
`normalized` (case, punctuation and spacing do not make a sentence new).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources

_DATA = "calibration_en.txt"


@cache
def default_texts() -> tuple[str, ...]:
    """The built-in English calibration set (60 sentences: questions, numbers, dates, very short and
    long ones), used when a recipe needs calibration and gives none of its own."""
    text = resources.files("voxport.quantize").joinpath("data", _DATA).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def normalized(text: str) -> str:
    """`text` reduced to lowercase words: what decides whether two sentences are the same one."""
    return " ".join(re.findall(r"[^\W_]+", text.casefold()))


def overlap(calibration: Iterable[str], validation: Iterable[str]) -> list[str]:
    """The validation sentences that also appear in `calibration` (as written in `validation`)."""
    seen = {normalized(t) for t in calibration}
    return [t for t in validation if normalized(t) in seen]


def overlapping_ids(calibration: Iterable[Sequence[int]], validation: Iterable[Sequence[int]]) -> list[int]:
    """Indices of validation id lists that are also calibration id lists."""
    seen = {tuple(ids) for ids in calibration}
    return [i for i, ids in enumerate(validation) if tuple(ids) in seen]
