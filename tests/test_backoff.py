"""Backoff and circuit breaker: pure, with a fake clock."""

from __future__ import annotations

import pytest

from anypool._backoff import BreakerState, CircuitBreaker, backoff_delay


def test_backoff_doubles_to_the_cap() -> None:
    delays = [backoff_delay(n, base=0.1, cap=1.0, jitter=0.0) for n in range(1, 8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_jitter_bounds() -> None:
    low = backoff_delay(3, base=0.1, cap=10, jitter=0.5, rand=lambda: 0.0)
    high = backoff_delay(3, base=0.1, cap=10, jitter=0.5, rand=lambda: 0.999999)
    assert low == pytest.approx(0.2)
    assert high == pytest.approx(0.6, rel=1e-5)
    assert backoff_delay(10_000, base=0.1, cap=3.0, jitter=0.0) == 3.0  # no overflow
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, base=0.1, cap=1, jitter=0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_at_threshold_and_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(3, 5.0, clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure(OSError("down"))
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(OSError("still down"))
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == pytest.approx(5.0)
    assert str(breaker.last_error) == "still down"
    clock.now += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    breaker.record_failure(OSError("probe failed"))
    assert breaker.state is BreakerState.OPEN
    assert breaker.times_opened == 2
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.allow()


def test_cancelled_probe_lets_another_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock)
    breaker.record_failure(OSError())
    clock.now += 1.0
    assert breaker.allow()
    breaker.abandon_probe()
    assert breaker.allow()


def test_probe_now_lets_one_probe_through_an_open_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 60.0, clock)
    breaker.probe_now()  # closed: nothing to do
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(OSError("down"))
    assert not breaker.allow()
    breaker.probe_now()  # told the server may be back (a failover was announced)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # one probe, as after reset_timeout
    breaker.record_failure(OSError("still down"))
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == pytest.approx(60.0)  # a failed probe re-opens it fully
