"""The pool's background maintenance: keepalive checks, expiry, refill, leak detection.

One task, started in the pool's own task group by ``async with pool``, runs
:func:`maintenance_round` over and over: it wakes when its next piece of work is due, or at once
when the pool signals that something changed (a resource was closed, the sizes changed).

It sees the pool only through :class:`Maintained`, a small interface in which every decision
about the pool's books (which idle resources are stale, which one to check next, whether a
refill is due) is one synchronous step that also moves what it picked out of the idle set.
Only then does this module await (a close, a check, a connect).  User tasks take and return
resources at every one of those awaits, so nothing this module holds across an await may be
assumed to be still where it was: it only ever holds what the pool handed it.

Failures of the *resources* are expected and handled here: a failed check closes the resource
and is counted, and a failed connect is counted, feeds the circuit breaker and is retried with
jittered exponential backoff.  A bug in this module itself is not caught: it propagates out of
the pool's task group, and so out of the pool's ``async with`` block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio

if TYPE_CHECKING:
    from ._config import PoolConfig

__all__ = ["Maintained", "check_idle", "maintenance_round", "run"]

logger = logging.getLogger("anypool.health")

_MIN_TICK = 0.05
_MAX_TICK = 5.0


class Maintained(Protocol):
    """What maintenance needs from a pool (implemented by the pool's ``_Upkeep``).

    Entries and leases are opaque here.  Methods that pick something remove it from the idle
    set in the same synchronous step, so a user task cannot take it meanwhile.
    """

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> PoolConfig: ...

    def now(self) -> float: ...

    def take_stale(self, now: float) -> Sequence[Any]:
        """Idle entries to close (surplus, retired, expired, idle too long), now out of idle."""
        ...

    async def close(self, entry: Any) -> None:
        """Close an entry taken by :meth:`take_stale`."""
        ...

    def lease_for_check(self, now: float, seen: set[Any], *, everything: bool) -> Any | None:
        """The oldest idle entry due for a check (not in ``seen``), leased with a slot of its
        own; None when nothing is due or no slot is free.  Adds the entry to ``seen``."""
        ...

    async def check(self, lease: Any) -> None:
        """Run the factory's check on a leased entry; raises if it fails."""
        ...

    async def end_check(self, lease: Any, *, healthy: bool) -> None:
        """Return a checked entry to idle (healthy, pool open, not retired) or close it."""
        ...

    def record_check_round(self, checked: int, failed: int) -> None: ...

    def overdue_leases(self, now: float) -> Sequence[tuple[str | None, float, str]]:
        """(task name, seconds held, formatted stack) of leases past ``leak_threshold``, each
        reported once."""
        ...

    def refill_wait(self) -> float:
        """Seconds until a refill may run: 0 now, inf when none is needed."""
        ...

    def lease_for_refill(self) -> Any | None:
        """A slot for one more resource if the pool is open and below ``min_size``."""
        ...

    async def refill(self, lease: Any) -> None:
        """Open one resource into idle with the slot from :meth:`lease_for_refill`; the slot
        is given back whatever happens.  Raises what the factory raised."""
        ...

    def refill_failed(self, error: Exception) -> float:
        """Record a failed refill; returns the backoff delay before the next try."""
        ...

    def update_health(self) -> None: ...

    async def wait_for_work(self, delay: float) -> None:
        """Sleep up to ``delay`` seconds, or until the pool signals a change."""
        ...


async def run(pool: Maintained) -> None:
    """Maintain ``pool`` until cancelled (by the pool, when it closes)."""
    while True:
        delay = await maintenance_round(pool)
        await pool.wait_for_work(delay)


def _tick(config: PoolConfig) -> float:
    """How often to look at the pool when nothing signals: half the shortest interval."""
    intervals = [
        value
        for value in (config.health_check_interval, config.max_idle, config.leak_threshold)
        if value is not None
    ]
    return min(_MAX_TICK, max(_MIN_TICK, min(intervals, default=_MAX_TICK) / 2))


async def maintenance_round(pool: Maintained) -> float:
    """One pass over the pool.  Returns the seconds until the next pass is due."""
    now = pool.now()
    for entry in pool.take_stale(now):
        await pool.close(entry)
    await check_idle(pool, now)
    _report_leaks(pool, now)
    delay = min(_tick(pool.config), await _refill(pool))
    pool.update_health()
    return delay


async def check_idle(pool: Maintained, now: float, *, everything: bool = False) -> None:
    """Check idle resources unused for ``health_check_interval``, oldest first.

    Each check holds a slot like any lease, so checks never push the pool past ``max_size``;
    when no slot is free the round stops (a busy pool has no idle resources to speak of).

    Args:
        pool: the pool.
        now: the pool clock's current reading.
        everything: check every idle resource, due or not (``Pool.check()``).
    """
    if pool.config.health_check_interval is None and not everything:
        return
    seen: set[Any] = set()
    checked = failed = 0
    while (lease := pool.lease_for_check(now, seen, everything=everything)) is not None:
        checked += 1
        healthy = False
        try:
            with anyio.fail_after(pool.config.close_timeout):
                await pool.check(lease)
            healthy = True
        except Exception as exc:  # the resource failed its check: expected, handled, counted
            failed += 1
            logger.debug("%s: health check failed: %r", pool.name, exc)
        finally:
            await pool.end_check(lease, healthy=healthy)
    if checked:
        pool.record_check_round(checked, failed)


def _report_leaks(pool: Maintained, now: float) -> None:
    threshold = pool.config.leak_threshold
    for task_name, held, stack in pool.overdue_leases(now):
        logger.warning(
            "%s: a resource has been leased by task %r for %.1fs (leak_threshold=%ss); "
            "it was acquired at:\n%s",
            pool.name, task_name, held, threshold, stack,
        )  # fmt: skip


async def _refill(pool: Maintained) -> float:
    """Open resources up to ``min_size``.  Returns the seconds until a retry is due (inf: none)."""
    wait = pool.refill_wait()
    if wait > 0:
        return wait
    while (lease := pool.lease_for_refill()) is not None:
        try:
            await pool.refill(lease)
        except Exception as exc:
            delay = pool.refill_failed(exc)
            logger.debug("%s: refill failed (%r); retrying in %.2fs", pool.name, exc, delay)
            return delay
    return math.inf
