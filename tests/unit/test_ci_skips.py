"""CI turns skips into failures, except for the allow-listed capabilities (tests/ci_skips.py)."""

from __future__ import annotations

import pytest

TESTS = """
import pytest

def test_runs():
    pass

def test_capability_missing():
    pytest.skip("real SPIRE is not built here")

@pytest.mark.docker
def test_needs_docker():
    pytest.skip("no Docker engine")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    docker: needs a Docker engine\n"
    )
    pytester.makepyfile(TESTS)
    return pytester


def test_outside_ci_a_skip_stays_a_skip(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest("-p", "tests.ci_skips")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)


def test_in_ci_an_unlisted_skip_fails_and_listed_ones_are_printed(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "tests.ci_skips")
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*skipped in CI: real SPIRE is not built here*",
            "*skips accepted in CI*",
            "docker (1 tests): no Docker engine runs on CI's machine*",
            "*test_needs_docker: no Docker engine",
        ]
    )
