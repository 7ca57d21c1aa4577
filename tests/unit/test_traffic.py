"""The fault/soak traffic generator: tokens whatever the clock's origin, and the baseline check."""

from __future__ import annotations

from typing import Any

import pytest

from bench.traffic import MIX, TOKEN_REFRESH_BEFORE_S, TOKEN_TTL_S, BaselineError, Sample, Traffic, baseline_problem


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class _TrustDomain:
    def __init__(self) -> None:
        self.minted: list[tuple[str, int]] = []

    def mint_jwt(self, agent: str, ttl: int) -> str:
        self.minted.append((agent, ttl))
        return f"token-{len(self.minted)}"


class _Stack:
    def __init__(self) -> None:
        self.trust_domain = _TrustDomain()


def _traffic(clock: _Clock) -> tuple[Traffic, _TrustDomain]:
    stack: Any = _Stack()
    return Traffic(stack, clock=clock), stack.trust_domain


@pytest.mark.parametrize("origin", [0.0, 0.001, 120.0, 2_999.0, 86_400.0 * 30])
def test_first_use_mints_a_token_whatever_the_clock_origin(origin: float) -> None:
    clock = _Clock(origin)
    traffic, minted = _traffic(clock)
    assert traffic.token("agent-a") == "token-1"
    assert minted.minted == [("agent-a", TOKEN_TTL_S)]


def test_token_is_reused_then_reminted_before_it_expires() -> None:
    clock = _Clock(0.0)
    traffic, minted = _traffic(clock)
    first = traffic.token("a")
    clock.now = TOKEN_TTL_S - TOKEN_REFRESH_BEFORE_S - 1
    assert traffic.token("a") == first
    clock.now = TOKEN_TTL_S - TOKEN_REFRESH_BEFORE_S
    second = traffic.token("a")
    assert second != first and clock.now < TOKEN_TTL_S, "re-minted before the first one expired"
    assert traffic.token("b") not in (first, second), "each agent has its own token"
    assert len(minted.minted) == 3


def _samples(status_of: dict[str, int], per_kind: int = 3) -> list[Sample]:
    return [Sample(kind, 1.0, 1.1, status_of.get(kind.name, kind.normal)) for kind in MIX for _ in range(per_kind)]


def test_a_healthy_baseline_passes() -> None:
    assert baseline_problem(_samples({})) is None


def test_everything_refused_is_not_a_baseline() -> None:
    problem = baseline_problem(_samples({kind.name: 401 for kind in MIX}))
    assert problem is not None
    assert "read docs (allow): expected 200, got 401 x3" in problem
    assert "the run stops" in problem


def test_a_kind_never_answered_or_answered_wrongly_is_named() -> None:
    samples = [s for s in _samples({"read record (allow)": 503}) if s.kind.name != "read docs (allow)"]
    problem = baseline_problem(samples)
    assert problem is not None
    assert "read docs (allow): never answered" in problem
    assert "read record (allow): expected 200, got 503 x3" in problem
    assert baseline_problem([]) == "baseline: no request of the load was answered"


def test_check_baseline_raises_with_the_reason() -> None:
    clock = _Clock(6.0)
    traffic, _ = _traffic(clock)
    traffic.samples.extend(Sample(kind, 5.0, 5.1, 401) for kind in MIX for _ in range(2))
    with pytest.raises(BaselineError, match="expected 200, got 401"):
        traffic.check_baseline(0.0, timeout_s=0)
