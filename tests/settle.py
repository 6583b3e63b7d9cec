"""Waiting for a pool to be at rest before checking that its books balance.

``statistics().in_use`` counts every lease, the pool's own background work included (a health
check leases an idle connection for a round trip; a refill holds a slot while it opens one).
So "nothing leaked" is checked once that work is done: a leaked lease never comes back, so the
wait still fails on a leak, after a bound that only catches hangs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio

AT_REST_SECONDS = 10.0


def _busy(stats: Any, *, opening: bool) -> bool:
    return bool(stats.in_use or stats.requests_waiting or (opening and stats.opening))


async def at_rest(
    statistics: Callable[[], Any], *, opening: bool = True, seconds: float = AT_REST_SECONDS
) -> Any:
    """Wait until nothing is leased, waited for or (with ``opening``) being opened; return
    those statistics.  Raises AssertionError naming the last counts if that takes ``seconds``."""
    stats = statistics()
    with anyio.move_on_after(seconds):
        while _busy(stats, opening=opening):
            await anyio.sleep(0.01)
            stats = statistics()
    if _busy(stats, opening=opening):
        raise AssertionError(
            f"not at rest after {seconds} s: in_use={stats.in_use} "
            f"requests_waiting={stats.requests_waiting} opening={stats.opening}"
        )
    return stats


async def client_at_rest(redis: Any, *, seconds: float = AT_REST_SECONDS) -> tuple[Any, Any]:
    """:func:`at_rest` for a RedisPool, and its auto-pipelining quiet too: no lane in use,
    nothing in flight or queued.  (A caller cancelled after its command was written leaves
    its reply to the background upkeep, which reads and discards it, then parks the shared
    connection: until then the connection is leased.)  Returns both statistics."""
    shared: dict[str, int] = {}
    with anyio.move_on_after(seconds):
        while True:
            shared = redis.autopipeline_statistics()
            if not (shared["lanes"] or shared["in_flight"] or shared["queued"]):
                break
            await anyio.sleep(0.01)
    if shared["lanes"] or shared["in_flight"] or shared["queued"]:
        raise AssertionError(
            f"auto-pipelining not at rest after {seconds} s: lanes={shared['lanes']} "
            f"in_flight={shared['in_flight']} queued={shared['queued']}"
        )
    return await at_rest(redis.statistics, seconds=seconds), shared


async def nodes_at_rest(
    node_statistics: Callable[[], Mapping[Any, Any]], *, seconds: float = AT_REST_SECONDS
) -> None:
    """The same for every node pool of a cluster client (leases and waiters)."""
    busy: dict[str, tuple[int, int]] = {}
    with anyio.move_on_after(seconds):
        while True:
            busy = {
                str(node): (stats.in_use, stats.requests_waiting)
                for node, stats in node_statistics().items()
                if _busy(stats, opening=False)
            }
            if not busy:
                return
            await anyio.sleep(0.01)
    raise AssertionError(f"node pools not at rest after {seconds} s (in_use, waiting): {busy}")
