"""The skip policy (skip_policy.py) on real pytest sessions: an unlisted skip fails the run and is named, a
listed one passes, and a local-only reason fails in CI."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
from skip_policy import ALLOWLIST, SkipPolicy, read_allowlist

ALLOWED = read_allowlist(ALLOWLIST)


def run(pytester: pytest.Pytester, body: str, *, in_ci: bool) -> pytest.RunResult:
    pytester.makepyfile(test_sample="import pytest\n" + dedent(body))
    return pytester.runpytest(plugins=[SkipPolicy(ALLOWED, in_ci=in_ci)])


def test_an_unlisted_skip_fails_the_run_and_names_the_test(pytester: pytest.Pytester) -> None:
    body = """
        def test_x():
            pytest.skip("sherpa_onnx is not installed")
    """
    result = run(pytester, body, in_ci=False)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*skips not allowed here*", "test_sample.py::test_x: sherpa_onnx is not installed"]
    )


def test_an_unlisted_module_level_importorskip_fails_the_run(pytester: pytest.Pytester) -> None:
    body = """
        pytest.importorskip("no_such_module_voxport")

        def test_x():
            pass
    """
    result = run(pytester, body, in_ci=False)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_sample.py: could not import 'no_such_module_voxport'*"])


def test_a_listed_skip_passes(pytester: pytest.Pytester) -> None:
    body = """
        @pytest.mark.skipif(True, reason="MLModel.predict runs only on macOS")
        def test_x():
            pass

        def test_y():
            pass
    """
    result = run(pytester, body, in_ci=True)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=1)


def test_a_local_only_skip_passes_locally_and_fails_in_ci(pytester: pytest.Pytester) -> None:
    body = """
        def test_x():
            pytest.skip("headless Chromium not installed (apt-get install chromium)")
    """
    assert run(pytester, body, in_ci=False).ret == pytest.ExitCode.OK
    assert run(pytester, body, in_ci=True).ret == pytest.ExitCode.TESTS_FAILED


def test_a_failing_run_keeps_its_status_and_xfail_is_not_a_skip(pytester: pytest.Pytester) -> None:
    body = """
        @pytest.mark.xfail(reason="known")
        def test_x():
            assert False

        def test_y():
            assert False
    """
    result = run(pytester, body, in_ci=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, xfailed=1)
    assert "skips not allowed" not in result.stdout.str()


def test_no_allow_list_entry_is_stale() -> None:
    """Each listed reason still occurs in some test file, so the list shrinks when a skip goes."""
    here = Path(__file__)
    sources = "\n".join(p.read_text() for p in here.parent.glob("test_*.py") if p != here)
    for allowed in ALLOWED:
        assert allowed.reason in sources, f"stale entry in tests/skip_allowlist.txt: {allowed.reason}"
