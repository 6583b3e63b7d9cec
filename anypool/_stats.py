"""Frozen statistics records and the pool's health states.  A leaf: no I/O, no anypool imports."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

__all__ = ["Health", "PoolStatistics"]


class Health(enum.Enum):
    """How the pool is doing.  Changes are logged once each, and counted."""

    HEALTHY = "healthy"
    """Connections are being made and checks pass."""
    DEGRADED = "degraded"
    """Recent connects or health checks failed, but the pool still works."""
    UNAVAILABLE = "unavailable"
    """The circuit breaker is open: Redis is unreachable and requests fail fast."""


@dataclasses.dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool's counters, from :meth:`Pool.statistics`.

    Key names follow psycopg_pool where they mean the same thing.  Gauges describe the moment
    of the snapshot; ``*_num``, ``*_errors``, ``*_ms`` and the other counters accumulate from
    the pool's start.

    Attributes:
        pool_min: ``min_size`` now.
        pool_max: ``max_size`` now.
        pool_size: open resources: idle + in use + being opened.
        pool_available: idle resources, ready to hand out.
        requests_waiting: tasks waiting for a resource now.
        requests_num: acquisitions that succeeded.
        requests_queued: acquisitions that had to wait.
        requests_wait_ms: total milliseconds spent waiting by queued acquisitions.
        requests_errors: acquisitions that failed (timeout, too many waiters, breaker open,
            connect error, pool closed).
        returns_bad: resources returned unusable (the factory's ``reset()`` said no or failed,
            e.g. replies still owed) and closed.  Retired ones are not counted here.
        connections_num: resources created.
        connections_ms: total milliseconds spent creating them.
        connections_errors: failed creations.
        connections_lost: resources found broken by a health check or on use, and closed.
        usage_ms: total milliseconds resources spent leased.
        in_use: resources leased now (health checks included).
        opening: resources being created now.
        health: the current :class:`Health`, as its value.
        breaker_state: ``"closed"``, ``"open"`` or ``"half_open"``.
        reconnect_attempts: background refill attempts, successful or not.
        leaks_detected: leases held longer than ``leak_threshold``.
        health_checks: health checks run.
        health_check_failures: health checks that failed.
        health_transitions: changes of ``health``.
        expired: idle resources closed for ``max_idle`` or ``max_lifetime``.
    """

    pool_min: int
    pool_max: int
    pool_size: int
    pool_available: int
    requests_waiting: int
    requests_num: int
    requests_queued: int
    requests_wait_ms: int
    requests_errors: int
    returns_bad: int
    connections_num: int
    connections_ms: int
    connections_errors: int
    connections_lost: int
    usage_ms: int
    in_use: int
    opening: int
    health: str
    breaker_state: str
    reconnect_attempts: int
    leaks_detected: int
    health_checks: int
    health_check_failures: int
    health_transitions: int
    expired: int

    def as_dict(self) -> dict[str, Any]:
        """The statistics as a plain dict (for logging, JSON, metrics exporters)."""
        return dataclasses.asdict(self)
