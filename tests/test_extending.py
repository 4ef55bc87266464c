"""docs/extending.md shows the real example files, and a method reaches recipes through its entry point.

The examples themselves run in their own tests (test_toy_family.py, test_formats_registry.py,
test_quantize_methods.py); here: the page cannot drift from them, and the page's recipe snippet loads
in a fresh process where `absmax-act` is known only from a `voxport.quantize_methods` entry point.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXTENDING = ROOT / "docs" / "extending.md"

spec = importlib.util.spec_from_file_location("docs_include", ROOT / "docs" / "include.py")
assert spec is not None and spec.loader is not None
include = importlib.util.module_from_spec(spec)
spec.loader.exec_module(include)


def test_every_include_block_in_the_docs_equals_its_file() -> None:
    stale = [
        doc.name
        for doc in sorted((ROOT / "docs").glob("*.md"))
        if include.render(doc.read_text(encoding="utf-8")) != doc.read_text(encoding="utf-8")
    ]
    assert not stale, f"run `python docs/include.py`: these pages show old copies of files: {stale}"


def test_the_extending_page_shows_one_example_of_each_kind() -> None:
    assert include.includes(EXTENDING.read_text(encoding="utf-8")) == [
        "tests/toy_family/pyproject.toml",
        "tests/toy_family/voxport_toy/__init__.py",
        "tests/extending/format_example.py",
        "tests/extending/method_example.py",
    ]


def test_a_changed_example_makes_the_page_stale(tmp_path: Path) -> None:
    """The check above can fail: a page whose block differs from its file is rewritten by render."""
    page = "<!-- include: tests/extending/format_example.py -->\n```python\nold copy\n```\n"
    rendered = include.render(page)
    assert rendered != page and (ROOT / "tests/extending/format_example.py").read_text() in rendered


def test_the_pages_method_recipe_loads_with_the_method_known_only_from_its_entry_point(
    tmp_path: Path, tiny_vits_dir: Path
) -> None:
    snippet = re.search(r"```yaml\n(quantize:.*?)```", EXTENDING.read_text(encoding="utf-8"), re.DOTALL)
    assert snippet is not None
    quantize = yaml.safe_load(snippet[1])["quantize"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "model": str(tiny_vits_dir),
                "quantize": quantize,
                "validate": {"texts": ["Validation says something else entirely."]},
            }
        ),
        encoding="utf-8",
    )
    # a distribution that declares the example as a method, as `pip install` would leave it
    dist = tmp_path / "site" / "method_example-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: method-example\nVersion: 0.1\n")
    declared = "[voxport.quantize_methods]\nabsmax-act = method_example:AbsmaxAct\n"
    (dist / "entry_points.txt").write_text(declared)
    probe = textwrap.dedent(
        f"""
        from voxport.recipe import load_recipe
        r = load_recipe({str(recipe)!r})
        print(r.quantize.method, r.quantize.method_options())
        """
    )
    path = os.pathsep.join([str(tmp_path / "site"), str(ROOT / "tests" / "extending"), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 1)[0] == "absmax-act"
    assert "'alpha': 1.0" in done.stdout and "'steps': 16" in done.stdout
    # without the distribution the same recipe is an error that names the known methods
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "extending"), str(ROOT)])
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and "absmax-act" in done.stderr and "rtn" in done.stderr
