"""The GitHub workflows are linted on every `make test`, and that lint is live.

The workflows never ran on GitHub, and on 2026-09-23 GitHub removed the node20 runtime that
`actions/checkout@v4`, `setup-python@v5`, `cache@v4` and `upload-artifact@v4` run on: every job would
have failed at its first step. `make test` (what .ci/run runs) now runs actionlint over
.github/workflows before pytest. These tests prove the check bites: the real workflows pass with zero
findings, and a copy with one retired action, or one typo, fails. actionlint flags node20 actions by
itself (its action table records each major's runtime and GitHub's removal date), and node16/node12
ones (`@v3` and older) as "retired on GitHub.com".
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
# exactly the Makefile's flags: ShellCheck from the [dev] extra, pyflakes off
ACTIONLINT = [str(BIN / "actionlint"), "-oneline", f"-shellcheck={BIN / 'shellcheck'}", "-pyflakes="]


def actionlint(repo: Path) -> subprocess.CompletedProcess[str]:
    """Run actionlint on every workflow of `repo`, from inside it (as `make lint` does at the root)."""
    files = sorted(str(p.relative_to(repo)) for p in (repo / ".github" / "workflows").glob("*.yml"))
    assert files, f"no workflows under {repo}"
    return subprocess.run(ACTIONLINT + files, cwd=repo, capture_output=True, text=True, timeout=120)


def copy_workflows(tmp_path: Path) -> Path:
    """A scratch repository holding a copy of the real workflows, to break one on purpose."""
    shutil.copytree(WORKFLOWS, tmp_path / ".github" / "workflows")
    return tmp_path


def replace_once(path: Path, old: str, new: str) -> None:
    """Edit a workflow copy; the old text must be there, or the test would pass by testing nothing."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path.name}: the real workflow changed, update this test"
    path.write_text(text.replace(old, new, 1))


def test_real_workflows_have_zero_findings() -> None:
    result = actionlint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("workflow", "current", "retired", "why"),
    [
        ("ci.yml", "actions/checkout@v7", "actions/checkout@v4", 'runtime "node20" is deprecated'),
        ("ci.yml", "actions/checkout@v7", "actions/checkout@v3", "retired on GitHub.com"),
        ("ci.yml", "actions/setup-python@v7", "actions/setup-python@v5", 'runtime "node20" is deprecated'),
        ("ci.yml", "actions/cache@v6", "actions/cache@v4", 'runtime "node20" is deprecated'),
        ("build-recipes.yml", "actions/cache/save@v6", "actions/cache/save@v4", 'runtime "node20"'),
        ("build-recipes.yml", "actions/upload-artifact@v7", "actions/upload-artifact@v4", 'runtime "node20"'),
    ],
)
def test_a_retired_action_fails_the_lint(
    tmp_path: Path, workflow: str, current: str, retired: str, why: str
) -> None:
    repo = copy_workflows(tmp_path)
    replace_once(repo / ".github" / "workflows" / workflow, current, retired)
    result = actionlint(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    findings = result.stdout.strip().splitlines()
    assert len(findings) == 1, findings  # exactly the one planted, so the copy is otherwise clean
    (finding,) = findings
    assert finding.startswith(f".github/workflows/{workflow}:") and retired in finding and why in finding


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 'unexpected key "runs_on"'),
        ("${{ github.ref }}", "${{ github.reff }}", 'property "reff" is not defined'),
        ("run: .ci/run", "run: cd $HOME/x && .ci/run", "SC2086"),  # ShellCheck on `run:` is live too
    ],
)
def test_a_workflow_typo_fails_the_lint(tmp_path: Path, old: str, new: str, message: str) -> None:
    repo = copy_workflows(tmp_path)
    replace_once(repo / ".github" / "workflows" / "ci.yml", old, new)
    result = actionlint(repo)
    assert result.returncode == 1 and message in result.stdout, result.stdout + result.stderr


def test_make_test_lints_the_workflows_before_pytest() -> None:
    """`make -n` prints the recipe without running it: actionlint comes before pytest."""
    plan = subprocess.run(
        ["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    lint = [i for i, line in enumerate(plan) if "bin/actionlint" in line and "-shellcheck=" in line]
    pytest_line = [i for i, line in enumerate(plan) if "bin/pytest" in line]
    assert lint and pytest_line and lint[0] < pytest_line[0], plan
