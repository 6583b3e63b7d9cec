"""Jittered exponential backoff and a circuit breaker: pure state, with the clock injected.

Nothing here sleeps or does I/O; the pool asks "how long should I wait?" and "may I try?", and
tells the breaker what happened.  That keeps both testable with a fake clock and no event loop.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker", "backoff_delay", "uniform"]

# anypool's own source of jitter: the global ``random`` stream belongs to the application (a
# seeded simulation, Hypothesis checking that nothing draws from it mid-test); a library's
# background retries must not advance it.
_JITTER = random.Random()


def uniform() -> float:
    """A uniform number in [0, 1) from anypool's own stream (every jitter anypool draws)."""
    return _JITTER.random()


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: float,
    rand: Callable[[], float] = uniform,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    ``base * 2**(attempt-1)``, capped at ``cap``, then spread by up to ``±jitter`` of itself so
    that many clients do not retry in lock-step.  Never negative.

    Args:
        attempt: which retry this is, starting at 1.
        base: the first delay.
        cap: the largest delay before jitter.
        jitter: fraction of the delay to randomise, 0 to 1.
        rand: a source of uniform numbers in [0, 1) (injected for tests).
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, not {attempt}")
    delay = min(cap, base * 2.0 ** min(attempt - 1, 62))
    spread = delay * jitter * (2.0 * rand() - 1.0)
    return max(0.0, delay + spread)


class BreakerState(enum.Enum):
    """Where the circuit breaker stands."""

    CLOSED = "closed"
    """Connecting works (or has not failed often enough): requests go through."""
    OPEN = "open"
    """Connecting keeps failing: requests fail at once until the reset timeout passes."""
    HALF_OPEN = "half_open"
    """The reset timeout passed: one probe may try; its outcome closes or re-opens the breaker."""


class CircuitBreaker:
    """Counts consecutive connect failures and fails fast while the server is unreachable.

    After ``failure_threshold`` consecutive failures the breaker opens; :meth:`allow` then says
    no until ``reset_timeout`` seconds have passed, after which exactly one caller is allowed
    through (half-open).  Its success closes the breaker; its failure opens it again.

    Args:
        failure_threshold: consecutive failures that open the breaker.
        reset_timeout: seconds the breaker stays open before letting a probe through.
        clock: monotonic time source (injected for tests).
    """

    def __init__(
        self, failure_threshold: int, reset_timeout: float, clock: Callable[[], float]
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self.consecutive_failures = 0
        self.last_error: BaseException | None = None
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns into HALF_OPEN once the reset timeout has passed)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.reset_timeout
        ):
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    def allow(self) -> bool:
        """May a caller try to connect now?  In HALF_OPEN, only the first caller may."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 unless it is OPEN)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())

    def record_success(self) -> None:
        """A connect succeeded: close the breaker."""
        self._state = BreakerState.CLOSED
        self._probing = False
        self.consecutive_failures = 0
        self.last_error = None

    def record_failure(self, error: BaseException) -> None:
        """A connect failed: count it, and open the breaker at the threshold (or after a
        failed probe)."""
        self.consecutive_failures += 1
        self.last_error = error
        state = self.state
        if state is BreakerState.HALF_OPEN or (
            state is BreakerState.CLOSED and self.consecutive_failures >= self.failure_threshold
        ):
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probing = False
            self.times_opened += 1

    def abandon_probe(self) -> None:
        """The half-open probe was cancelled before it knew: let another caller probe."""
        self._probing = False

    def probe_now(self) -> None:
        """The server may be back (told so from outside, e.g. a failover was announced): an
        open breaker lets one probe through now instead of after ``reset_timeout``."""
        if self._state is BreakerState.OPEN:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
