"""No model family is named in code outside `voxport/families/`.

The family adapters are the only code that knows an architecture (DESIGN.md): a family's name, tensor
or runtime in the pipeline, an exporter or the CLI means the next family has to edit that file too. The
check reads Python tokens, so comments and docstrings may still mention families as examples; a NAME
or a string literal that names one fails, unless it is listed in KNOWN_FAMILY_NAMES, which holds what
is still to be moved behind a family hook and may only shrink (a listed place that no longer names a
family fails too, so whoever removes one deletes its entry).
"""

from __future__ import annotations

import io
import re
import tokenize
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "voxport"
FAMILY_WORDS = re.compile(r"vits|pocket|piper|sherpa|kyutai|hidden_snr|latent_snr|pockettts", re.IGNORECASE)

#: file (relative to voxport/) -> how many family-naming tokens it may still hold
KNOWN_FAMILY_NAMES: dict[str, int] = {}


def _docstring_starts(source: str) -> set[tuple[int, int]]:
    """Start positions of string tokens that are docstrings or other bare string statements."""
    import ast

    starts: set[tuple[int, int]] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            starts.add((node.lineno, node.col_offset))
    return starts


def family_tokens(path: Path) -> list[tuple[int, str]]:
    """(line, token) for every NAME or non-docstring string token in `path` that names a family."""
    source = path.read_text(encoding="utf-8")
    docstrings = _docstring_starts(source)
    found: list[tuple[int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and token.start in docstrings:
            continue
        if token.type in (tokenize.NAME, tokenize.STRING) and FAMILY_WORDS.search(token.string):
            found.append((token.start[0], token.string))
        fstring_middle = getattr(tokenize, "FSTRING_MIDDLE", None)
        if fstring_middle is not None and token.type == fstring_middle and FAMILY_WORDS.search(token.string):
            found.append((token.start[0], token.string))
    return found


def _outside_families() -> list[Path]:
    families = PACKAGE / "families"
    return sorted(p for p in PACKAGE.rglob("*.py") if families not in p.parents)


def test_no_family_name_outside_families() -> None:
    counts: Counter[str] = Counter()
    where: dict[str, list[str]] = {}
    for path in _outside_families():
        rel = path.relative_to(PACKAGE).as_posix()
        for line, text in family_tokens(path):
            counts[rel] += 1
            where.setdefault(rel, []).append(f"{rel}:{line}: {text[:60]}")
    new = [hit for rel, hits in where.items() if counts[rel] > KNOWN_FAMILY_NAMES.get(rel, 0) for hit in hits]
    assert not new, "family-specific names outside voxport/families/ (move them behind a family hook):\n" + (
        "\n".join(new)
    )
    stale = {rel: n for rel, n in KNOWN_FAMILY_NAMES.items() if counts[rel] < n}
    assert not stale, f"KNOWN_FAMILY_NAMES lists more than is left; lower or delete: {stale}"


def test_checker_finds_a_planted_name(tmp_path: Path) -> None:
    """The checker itself: a family in code is found; the same word in a docstring or comment is not."""
    planted = tmp_path / "stage.py"
    planted.write_text(
        '"""Works for VITS and Pocket TTS alike."""\n'
        "# a comment naming piper is fine\n"
        "def run(family: str) -> int:\n"
        '    """Docstrings may say sherpa."""\n'
        '    if family == "pocket_tts":\n'
        "        return 1\n"
        "    return len(f'{family}-vits')\n"
    )
    assert [line for line, _ in family_tokens(planted)] == [5, 7]
