"""The pool's background maintenance: keepalive checks, expiry, refill, leak detection.

One task, started in the pool's own task group by ``async with pool``, runs
:func:`maintenance_round` over and over: it wakes when its next piece of work is due, or at once
when the pool signals that something changed (a resource was closed, the sizes changed).

Failures of the *resources* are expected and handled here: a failed check closes the resource
and is counted, and a failed connect is counted, feeds the circuit breaker and is retried with
jittered exponential backoff.  A bug in this module itself is not caught: it propagates out of
the pool's task group, and so out of the pool's ``async with`` block.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import anyio

from ._backoff import BreakerState, backoff_delay

if TYPE_CHECKING:
    from ._pool import Pool

__all__ = ["check_idle", "maintenance_round", "run"]

logger = logging.getLogger("anypool.health")

_MIN_TICK = 0.05
_MAX_TICK = 5.0


async def run(pool: Pool[Any]) -> None:
    """Maintain ``pool`` until cancelled (by the pool, when it closes)."""
    while True:
        delay = await maintenance_round(pool)
        with anyio.move_on_after(delay):
            await pool._wake_maintenance.wait()
        pool._wake_maintenance = anyio.Event()


def _tick(pool: Pool[Any]) -> float:
    """How often to look at the pool when nothing signals: half the shortest interval."""
    config = pool._config
    intervals = [
        value
        for value in (config.health_check_interval, config.max_idle, config.leak_threshold)
        if value is not None
    ]
    return min(_MAX_TICK, max(_MIN_TICK, min(intervals, default=_MAX_TICK) / 2))


async def maintenance_round(pool: Pool[Any]) -> float:
    """One pass over the pool.  Returns the seconds until the next pass is due."""
    now = pool._clock()
    await _expire_idle(pool, now)
    await check_idle(pool, now)
    _detect_leaks(pool, now)
    delay = min(_tick(pool), await _refill(pool))
    pool._update_health()
    return delay


async def _expire_idle(pool: Pool[Any], now: float) -> None:
    """Close idle resources that are surplus, retired, past their lifetime or idle too long."""
    idle, counters = pool._idle, pool._counters
    while idle and pool._open_count() > pool._max_size:  # shrunk by resize()
        await pool._close_entry(idle.popleft())
    for entry in [e for e in idle if e.expires_at <= now or e.generation != pool._generation]:
        idle.remove(entry)
        counters.expired += entry.expires_at <= now
        await pool._close_entry(entry)
    max_idle = pool._config.max_idle
    if max_idle is None:
        return
    # The left end of the deque holds the least recently used: expire from there, keeping
    # min_size open.
    while idle and pool._open_count() > pool._min_size and now - idle[0].last_used_at >= max_idle:
        counters.expired += 1
        await pool._close_entry(idle.popleft())


async def check_idle(pool: Pool[Any], now: float, *, everything: bool = False) -> None:
    """Check idle resources unused for ``health_check_interval``, oldest first.

    Each check holds a slot like any lease, so checks never push the pool past ``max_size``;
    when no slot is free the round is skipped (a busy pool has no idle resources to speak of).

    Args:
        pool: the pool.
        now: the pool clock's current reading.
        everything: check every idle resource, due or not (``Pool.check()``).
    """
    interval = pool._config.health_check_interval
    if interval is None and not everything:
        return
    due = [e for e in pool._idle if everything or now - e.last_used_at >= (interval or 0.0)]
    counters = pool._counters
    checked = failed = 0
    for entry in due:
        if entry not in pool._idle:  # handed out while an earlier check ran
            continue
        lease = pool._try_borrow()
        if lease is None:
            return
        pool._idle.remove(entry)
        lease.entry, lease.acquired_at = entry, now
        pool._leased.add(lease)
        counters.health_checks += 1
        checked += 1
        healthy = False
        try:
            with anyio.fail_after(pool._config.close_timeout):
                await pool._factory.check(entry.resource)
            healthy = True
        except Exception as exc:  # the resource failed its check: expected, handled, counted
            failed += 1
            counters.health_check_failures += 1
            counters.connections_lost += 1
            logger.debug("%s: health check failed: %r", pool.name, exc)
        finally:
            pool._leased.discard(lease)
            if healthy and pool._state == "open" and entry.generation == pool._generation:
                entry.last_used_at = pool._clock()
                pool._idle.append(entry)
            else:
                await pool._close_entry(entry)
            pool._limiter.release_on_behalf_of(lease)
            pool._notify_changed()
    if checked:  # a round with a failed check leaves the pool DEGRADED until a clean round
        pool._check_failed_recently = failed > 0
        pool._update_health()


def _detect_leaks(pool: Pool[Any], now: float) -> None:
    threshold = pool._config.leak_threshold
    if threshold is None:
        return
    for lease in pool._leased:
        if lease.leak_reported or lease.stack is None or now - lease.acquired_at < threshold:
            continue
        lease.leak_reported = True
        pool._counters.leaks_detected += 1
        logger.warning(
            "%s: a resource has been leased by task %r for %.1fs (leak_threshold=%ss); "
            "it was acquired at:\n%s",
            pool.name, lease.task_name, now - lease.acquired_at, threshold,
            "".join(lease.stack.format()),
        )  # fmt: skip


async def _refill(pool: Pool[Any]) -> float:
    """Open resources up to ``min_size``.  Returns the seconds until a retry is due (inf: none)."""
    if pool._open_count() >= pool._min_size:
        return math.inf
    breaker = pool._breaker
    if breaker.state is BreakerState.OPEN:
        return breaker.retry_in()
    wait = pool._next_refill_at - pool._clock()
    if wait > 0:
        return wait
    limiter, counters = pool._limiter, pool._counters
    while pool._state == "open" and pool._open_count() < pool._min_size:
        lease = pool._try_borrow()
        if lease is None:
            return math.inf  # every slot is taken: the pool is at work, not short
        counters.reconnect_attempts += 1
        try:
            entry = await pool._open()
        except Exception as exc:
            limiter.release_on_behalf_of(lease)
            pool._refill_failures += 1
            backoff = pool._config.reconnect_backoff
            delay = backoff_delay(
                pool._refill_failures, base=backoff.base, cap=backoff.cap,
                jitter=backoff.jitter, rand=pool._rand,
            )  # fmt: skip
            pool._next_refill_at = pool._clock() + delay
            logger.debug("%s: refill failed (%r); retrying in %.2fs", pool.name, exc, delay)
            return delay
        except BaseException:
            limiter.release_on_behalf_of(lease)
            raise
        pool._refill_failures = 0
        if pool._state == "open":
            pool._idle.append(entry)
        else:
            await pool._close_entry(entry)
        limiter.release_on_behalf_of(lease)
        pool._notify_changed()
    return math.inf
