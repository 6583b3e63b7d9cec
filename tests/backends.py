"""The event loops every Redis-facing test runs on, by id: asyncio, asyncio+uvloop, trio.

Tests that start their own loop (state machines, blocking portals, ``anyio.run``) take an id
from ``BACKENDS`` and pass ``backend_options(id)`` along with ``backend_name(id)``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from anyio.from_thread import BlockingPortal

T = TypeVar("T")

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None

UVLOOP = "asyncio+uvloop"
"""The id of asyncio with uvloop's event loop: it contains "asyncio", so ``-k asyncio``
selects it with plain asyncio (the nox session that reruns asyncio over anyio's streams)."""

BACKENDS = ["asyncio", UVLOOP, "trio"]

_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    UVLOOP: ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}

needs_uvloop = pytest.mark.skipif(
    not HAVE_UVLOOP, reason="uvloop is not installed (it does not exist on Windows)"
)


def backend_name(backend: str) -> str:
    """anyio's name for a backend id: "asyncio" or "trio"."""
    return _OPTIONS[backend][0]


def backend_options(backend: str) -> dict[str, Any]:
    """anyio's ``backend_options`` for a backend id (a fresh dict)."""
    return dict(_OPTIONS[backend][1])


def run(func: Callable[..., Awaitable[T]], *args: Any, backend: str) -> T:
    """``anyio.run`` on a backend id."""
    return anyio.run(
        func, *args, backend=backend_name(backend), backend_options=backend_options(backend)
    )


def start_portal(backend: str) -> AbstractContextManager[BlockingPortal]:
    """An event loop of a backend id in a thread, for sync code (state machines) to call into."""
    return anyio.from_thread.start_blocking_portal(backend_name(backend), backend_options(backend))


def backend_params() -> list[Any]:
    """``BACKENDS`` as pytest params, uvloop's skipped where it is not installed."""
    return [pytest.param(b, id=b, marks=[needs_uvloop]) if b == UVLOOP else b for b in BACKENDS]


# For the anyio_backend fixture: the values anyio's pytest plugin takes, with the same ids.
BACKEND_PARAMS = [
    pytest.param(
        _OPTIONS[b] if b == UVLOOP else b, id=b, marks=[needs_uvloop] if b == UVLOOP else []
    )
    for b in BACKENDS
]


async def cancel_after(checkpoints: int, body: Callable[[], Awaitable[None]]) -> bool:
    """Run ``body``; a sibling task cancels it after ``checkpoints`` scheduling passes.  Returns
    whether it ran to completion.  Where the cancellation lands depends on the loop; every
    outcome must satisfy the invariants."""
    completed = False
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as group:

            async def canceller() -> None:
                for _ in range(checkpoints):
                    await anyio.lowlevel.checkpoint()
                scope.cancel()

            group.start_soon(canceller)
            await body()
            completed = True
            group.cancel_scope.cancel()
    return completed


async def together_cancelled_after(
    checkpoints: int, calls: Sequence[Callable[[], Awaitable[T]]]
) -> list[T | None]:
    """Start every call in one task group and cancel them all after ``checkpoints`` scheduling
    passes (see :func:`cancel_after`); each call's result, or None for one that did not
    return."""
    outcomes: list[T | None] = [None] * len(calls)

    async def one(index: int) -> None:
        outcomes[index] = await calls[index]()

    async def all_of_them() -> None:
        async with anyio.create_task_group() as group:
            for index in range(len(calls)):
                group.start_soon(one, index)

    await cancel_after(checkpoints, all_of_them)
    return outcomes


def run_machine(machine: Any, *, examples: int, steps: int) -> None:
    """Run a Hypothesis state machine over a live world (servers and a client opened by the
    test's fixture): no deadline (a step may wait on a real server) and no health check (a
    slow example is the servers' doing, not the strategy's)."""
    from hypothesis import HealthCheck, settings

    case = machine.TestCase
    case.settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    case().runTest()
