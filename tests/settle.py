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
