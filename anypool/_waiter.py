"""Parking one task until another wakes it, with the event loop's own primitives.

The multiplexing engine parks a task per request in flight and wakes it when its reply has
been read.  ``anyio.Event`` costs 1.3-1.8x more per park than the loop's native tools, so this
seam uses them: an asyncio future on asyncio (and uvloop), ``wait_task_rescheduled`` and
``reschedule`` on trio.  Both are cancellable: a parked task that is cancelled raises the
cancellation as any other await would.

A waiter is used once: one ``wait()`` (possibly after ``wake()``), then it is dropped.
``wake()`` may come before, during or after ``wait()``, and more than once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Waiter", "cancellation_probe", "waiter_factory"]


class Waiter(Protocol):
    """One park and one (or more) wake-ups."""

    async def wait(self) -> None:
        """Return once :meth:`wake` was called (at once if it already was).

        Cancellation: raises the cancellation; a wake-up that came at the same instant is
        then lost to this waiter (the engine hands its role to another task).
        """

    def wake(self) -> None:
        """Let :meth:`wait` return; does nothing after the first call."""


class _AsyncioWaiter:
    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    async def wait(self) -> None:
        await self._future

    def wake(self) -> None:
        future = self._future
        if not future.done():
            future.set_result(None)


class _TrioWaiter:
    __slots__ = ("_task", "_woken")

    def __init__(self) -> None:
        self._task: Any = None
        self._woken = False

    async def wait(self) -> None:
        import trio

        if self._woken:
            return
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> Any:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        task = self._task
        if task is not None:
            import trio

            self._task = None
            trio.lowlevel.reschedule(task)


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio (uvloop) loop, or None: anyio then runs on trio."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def waiter_factory() -> Callable[[], Waiter]:
    """How to make waiters for the event loop running now (call it from that loop)."""
    loop = _running_asyncio_loop()
    if loop is None:
        return _TrioWaiter
    return lambda: _AsyncioWaiter(loop)


def cancellation_probe() -> Callable[[], bool] | None:
    """For the event loop running now: a cheap synchronous test of whether the running task
    has a cancellation delivered to it (asyncio: ``Task.cancelling()``), or None where the
    loop has nothing cheaper than ``anyio.lowlevel.checkpoint_if_cancelled()`` (trio, whose
    check is cheap already).  anyio's own check costs ~1.5 us on asyncio; this one misses only
    a scope the task cancelled itself a moment ago (anyio delivers that at the task's next
    await)."""
    loop = _running_asyncio_loop()
    if loop is None:
        return None
    current_task = asyncio.current_task

    def delivered() -> bool:
        task = current_task(loop)
        return task is not None and task.cancelling() > 0

    return delivered
