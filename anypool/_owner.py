"""Holding an async context manager open in a task that anypool owns: ``open()``/``aclose()``.

``async with pool:`` is the way to open a pool.  Code that cannot hold one block in one task (a
pytest-asyncio fixture sets up in one task and tears down in another; a framework's startup and
shutdown hooks are two separate calls) uses ``await pool.open()`` and ``await pool.aclose()``:
the pool's context manager is then entered and left by an *owner task* started on the running
event loop (asyncio and uvloop: a task on the loop; trio: a system task), which waits between
the two.  The structure is kept: what the context manager's exit raises (a failed background
task) is kept and raised by ``aclose()``, and the owner task itself never raises anything but
a cancellation (a trio system task that raises crashes the whole run).

``aclose()`` called from a task the pool itself runs (a listener handler, a
``pool.start_task()`` task: a task under the owner task) cannot wait for the close, which waits
for that very task: it begins the close and returns at once; the task is cancelled as the pool
closes, and a failure is raised by no one but named by every later call.

When the event loop ends before ``aclose()`` (``asyncio.run()`` and ``anyio.run()`` cancel every
task left; trio cancels its system tasks), the owner is cancelled: it leaves the context manager
as ``async with`` would on cancellation, so nothing is left running and nothing hangs, and logs
a warning that ``aclose()`` was never called.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["Owner"]

logger = logging.getLogger("anypool.pool")

_NEW, _OPENING, _OPEN, _CLOSED = "new", "opening", "open", "closed"


def _current_loop() -> object:
    """The running event loop (asyncio, uvloop) or trio run, as an object to compare."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        import trio  # not on asyncio: anyio runs on trio

        return trio.lowlevel.current_trio_token()


def _spawn(function: Callable[[], Coroutine[Any, Any, None]], name: str) -> object:
    """Start ``function()`` as a task of the running loop, outside every task group.

    Returns what must be kept referenced while it runs (asyncio keeps only weak references).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        # A system task: not a child of the caller, cancelled when the run ends.
        trio.lowlevel.spawn_system_task(function, name=name, context=contextvars.copy_context())
        return None
    return loop.create_task(function(), name=name)


class Owner:
    """Enters ``make()`` in an owner task on :meth:`open` and leaves it on :meth:`close`.

    ``name`` names the owner task and the pool in messages.  Once closed, it stays closed.
    """

    __slots__ = (
        "_done", "_failure", "_loop", "_make", "_name", "_reported", "_settled", "_started",
        "_state", "_stop", "_task", "_task_id",
    )  # fmt: skip

    def __init__(self, name: str, make: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._name = name
        self._make = make
        self._state = _NEW
        self._loop: object = None
        self._task: object = None
        self._started: anyio.Event
        self._stop: anyio.Event
        self._done: anyio.Event
        self._settled: anyio.Event  # the first open() call has returned or raised
        self._task_id: int | None = None  # anyio's id of the owner task, while it runs
        self._failure: BaseException | None = None
        self._reported = False

    @property
    def used(self) -> bool:
        """Whether :meth:`open` was ever called."""
        return self._state is not _NEW

    async def open(self) -> None:
        """Enter the context in a new owner task; return once it is entered.

        A second call while open (or opening) waits for the first and returns; if the first
        call was cancelled (and so closed the context), or the context closed meanwhile, it
        raises RuntimeError saying so.  Raises what entering raised; RuntimeError once closed
        or closing, or from another event loop.  The first call, cancelled, closes the context
        again before the cancellation propagates.
        """
        if self._state is _CLOSED or (self._state is not _NEW and self._stop.is_set()):
            raise RuntimeError(
                f"{self._name} is closed, and a pool opens once: make a new one to open again"
            )
        first = self._state is _NEW
        if first:
            self._loop = _current_loop()
            self._state = _OPENING
            self._started, self._stop, self._done = anyio.Event(), anyio.Event(), anyio.Event()
            self._settled = anyio.Event()
            self._task = _spawn(self._own, f"{self._name} owner")
        else:
            self._check_loop("open")
            # Wait for the first call to settle: cancelled, it closes the context again.
            await self._settled.wait()
            if self._state is _CLOSED or self._stop.is_set():
                self._raise_failure()
                raise RuntimeError(
                    f"{self._name} was closed while this open() call waited for another one "
                    f"(that first open() was cancelled, or aclose() was called): it is closed, "
                    f"and a pool opens once"
                )
            return
        try:
            with anyio.CancelScope(shield=True):  # entering does no I/O: it is over at once
                await self._started.wait()
            if self._state is _CLOSED:  # entering failed, or the pool closed meanwhile
                self._raise_failure()
                raise RuntimeError(f"{self._name} was closed while it opened")
            try:
                await anyio.lowlevel.checkpoint_if_cancelled()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self.close()
                raise
        finally:
            self._settled.set()

    async def close(self) -> None:
        """Leave the context and wait until the owner task has ended; raise what leaving
        raised (once).  Does nothing if never opened; a second call waits for the first.

        Called from a task under the owner task (a task of the pool's own task group), it
        cannot wait for the close, which waits for that task: it begins the close and returns
        at once, raising nothing.

        Shielded: a cancellation takes effect once the context has been left.
        """
        if self._state is _NEW:
            return
        self._check_loop("close")
        self._stop.set()
        if self._called_from_inside():
            return
        with anyio.CancelScope(shield=True):
            await self._done.wait()
        self._raise_failure()
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancellation takes effect now

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is not None and not self._reported:
            self._reported = True
            raise failure

    def _called_from_inside(self) -> bool:
        """Whether the running task is the owner task or one of its descendants."""
        owner = self._task_id
        if owner is None:
            return False
        parents = {task.id: task.parent_id for task in anyio.get_running_tasks()}
        task: int | None = anyio.get_current_task().id
        for _ in range(len(parents) + 1):  # bounded: the parent links form a tree
            if task is None:
                return False
            if task == owner:
                return True
            task = parents.get(task)
        return False

    def _check_loop(self, what: str) -> None:
        if _current_loop() is not self._loop:
            raise RuntimeError(
                f"cannot {what} {self._name} from another event loop than the one that opened "
                f"it: open and close it in the same loop (for pytest-asyncio, give the fixture "
                f"and the tests the same loop_scope)"
            )

    async def _own(self) -> None:
        """The owner task: enter, wait for close(), leave; keep what leaving raised."""
        cancelled = anyio.get_cancelled_exc_class()
        self._task_id = anyio.get_current_task().id
        try:
            async with self._make():
                self._state = _OPEN
                self._started.set()
                await self._stop.wait()
        except cancelled:
            # Not from close(): the event loop is ending (or someone cancelled the task).
            if self._stop.is_set():
                raise  # close() had been called: the pool was closing anyway
            logger.warning(
                "%s was still open when its owner task was cancelled (the event loop ended?); "
                "it is closed now.  Close it with `await pool.aclose()`, or use `async with`",
                self._name,
            )
            raise  # a cancellation may leave a trio system task; anything else may not
        except BaseException as exc:  # kept for close() and for later calls
            self._failure = exc
        finally:
            self._state = _CLOSED
            self._task = None
            self._task_id = None
            self._started.set()
            self._done.set()
