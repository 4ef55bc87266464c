"""Skips fail the run unless their reason is on tests/skip_allowlist.txt.

Why: a test that skips because a dependency is missing reports green while testing nothing. Hard
dependencies and the [dev] extra are required, so their tests import them plainly; the only skips left are
the ones the project chose (a macOS-only runtime, a browser a developer machine may lack), each written
down with its reason. conftest.py registers this plugin; test_skip_policy.py runs it on real sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")
LOCAL_ONLY = "local: "


@dataclass(frozen=True)
class AllowedSkip:
    """One allow-list line: `reason` is matched as a prefix of the reported reason; a `local_only` skip
    is allowed only outside CI (the CI environment variable unset)."""

    reason: str
    local_only: bool


def read_allowlist(path: Path) -> tuple[AllowedSkip, ...]:
    """The non-blank, non-comment lines of `path`; a `local: ` prefix marks a local-only reason."""
    allowed = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        local = line.startswith(LOCAL_ONLY)
        allowed.append(AllowedSkip(line.removeprefix(LOCAL_ONLY).strip() if local else line, local))
    return tuple(allowed)


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason pytest shows for a skip, without its "Skipped: " prefix."""
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message.removeprefix("Skipped: ")


@dataclass(eq=False)  # pluggy keeps plugins in sets: hashed by identity
class SkipPolicy:
    """The pytest plugin: records every skip not on the list and turns a passing exit status into 1."""

    allowed: tuple[AllowedSkip, ...]
    in_ci: bool
    refused: list[tuple[str, str]] = field(default_factory=list)

    def allows(self, reason: str) -> bool:
        return any(reason.startswith(a.reason) and not (a.local_only and self.in_ci) for a in self.allowed)

    def _record(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = skip_reason(report)
            if not self.allows(reason):
                self.refused.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.refused and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.refused:
            return
        where = "in CI" if self.in_ci else "here"
        terminalreporter.section(f"skips not allowed {where} (tests/skip_allowlist.txt)", red=True)
        for nodeid, reason in self.refused:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line("Install what each needs, or list its reason and why in skip_allowlist.txt.")
