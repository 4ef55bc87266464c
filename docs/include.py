"""Keep the code blocks of the docs equal to the files they show: `python docs/include.py` rewrites
every block that follows an `<!-- include: PATH -->` marker with PATH's text (relative to the repo).

Why: the extension examples in docs/extending.md are real files that the tests install and run
(tests/test_toy_family.py, test_formats_registry.py, test_quantize_methods.py); a copy typed into the
page would drift from them. tests/test_extending.py fails when running this script would change a page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: a marker line, then one fenced block (its language tag and body are replaced; no body line may
#: start with a fence)
BLOCK = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)```[a-z]*\n(?:(?!```).*\n)*```\n")
LANGUAGES = {".py": "python", ".toml": "toml", ".yaml": "yaml"}


def render(page: str) -> str:
    """`page` with every include block holding its file's current text."""

    def block(match: re.Match[str]) -> str:
        path = ROOT / match["path"]
        text = path.read_text(encoding="utf-8").rstrip("\n")
        return f"{match[1]}```{LANGUAGES.get(path.suffix, '')}\n{text}\n```\n"

    return BLOCK.sub(block, page)


def includes(page: str) -> list[str]:
    """The paths a page includes, in order."""
    return [m["path"] for m in BLOCK.finditer(page)]


def main() -> int:
    changed = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            doc.write_text(new, encoding="utf-8")
            changed.append(doc.relative_to(ROOT).as_posix())
    print("\n".join(f"updated {p}" for p in changed) or "every include is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
