"""In CI (``CI=true``) a skipped test is a failure, unless its capability is on a short allow-list.

A skip hides a whole capability: a SPIRE that failed to build, a missing fuzz engine, a kernel
without time namespaces would all leave the suite green and prove nothing. Locally a skip stays
a skip (the reason is printed by ``-ra``); in CI only the skips listed here are accepted, and
they are printed at the end of the run with their reasons.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

# marker -> why CI may skip the tests that carry it
CI_ALLOWED_SKIPS = {
    "docker": "no Docker engine runs on CI's machine; the compose behaviours are covered by local-process e2e tests",
    "interop_vectors": "the AuthZEN interop decision vectors are not vendored "
    "(tests/fixtures/authzen-interop/README.md); the Todo bundle's own opa tests run in ./taskw rego",
}

_accepted = pytest.StashKey[list[tuple[str, str, str]]]()


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_accepted] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    reason = _reason(report)
    marker = next((name for name in CI_ALLOWED_SKIPS if item.get_closest_marker(name)), None)
    if marker is not None:
        item.config.stash[_accepted].append((item.nodeid, marker, reason))
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI: {reason}\n"
        "A skipped capability fails CI (CI=true) unless its marker is on CI_ALLOWED_SKIPS in tests/ci_skips.py."
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    accepted = config.stash.get(_accepted, [])
    if not in_ci():
        return
    terminalreporter.section("skips accepted in CI")
    if not accepted:
        terminalreporter.write_line("none: every capability ran")
        return
    for marker in sorted({m for _, m, _ in accepted}):
        tests = [(nodeid, reason) for nodeid, m, reason in accepted if m == marker]
        terminalreporter.write_line(f"{marker} ({len(tests)} tests): {CI_ALLOWED_SKIPS[marker]}")
        for nodeid, reason in tests[:3]:
            terminalreporter.write_line(f"  {nodeid}: {reason}")
        if len(tests) > 3:
            terminalreporter.write_line(f"  ... and {len(tests) - 3} more")
