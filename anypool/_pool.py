"""The generic pool: an anyio task group paired with a CapacityLimiter.  No Redis code here.

Theory of operation
-------------------
The CapacityLimiter holds ``max_size`` tokens.  A token is a right to *hold or make* one
resource: every lease borrows one (``acquire_on_behalf_of`` with the lease as the borrower, so
one task may hold several leases), and so does every resource being created.  Idle resources
hold no token.  Hence, at every step between awaits::

    tokens borrowed == len(leased) + opening          (health checks lease like anyone else)
    open == len(idle) + len(leased) + opening <= max_size

and a task waits for a token only while every slot is leased or being opened: no waiter is
parked while an idle resource exists.  The limiter's queue is first-come first-served, and it
owns the hand-off race: a waiter woken with a token but cancelled at that instant gives the token
straight back (anyio and trio both guarantee it), so no slot is lost.

A resource is in exactly one place: idle, leased (to a user or to a health check), or
closing (taken out of every other place in the same step that decided to close it, until its
close returns).  Nothing is ever picked out of a place across an await: every decision and the
move it makes are one synchronous step, so maintenance and user tasks interleave safely.

A lease ends exactly once (``_release``): the resource goes back to idle only if the pool is
open, the resource is not retired or expired, and the factory's ``reset()`` says it is reusable.
Otherwise it is closed under a shield before its token is released.  Idle resources are reused
LIFO (the warmest first); the background maintenance (``_health``, through the small
``_Upkeep`` interface) checks them oldest first.

The pool's task group (opened by ``async with``) runs the maintenance task.  Leaving the block
wakes every waiter with PoolClosed, closes idle resources, waits up to ``close_timeout`` for
leased ones to come back, closes the rest, and cancels the maintenance: nothing is left running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio import AsyncContextManagerMixin

from . import _health
from ._backoff import BreakerState, CircuitBreaker, backoff_delay, uniform
from ._config import PoolConfig
from ._errors import PoolClosed, PoolExhausted, PoolTimeout, PoolUnavailable, TooManyWaiters
from ._owner import Owner
from ._stats import Health, PoolStatistics

__all__ = ["DEFAULT", "Pool", "ResourceFactory"]

logger = logging.getLogger("anypool.pool")

R = TypeVar("R")


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()
"""Use the pool's configured value (as opposed to None, which means "no limit")."""


class ResourceFactory(Generic[R]):
    """What a :class:`Pool` needs to know about its resources.  Subclass it.

    ``create`` and ``close`` are required; the others have defaults that suit resources with no
    state worth checking.
    """

    async def create(self) -> R:
        """Make a new resource.  Raise if it cannot be made; clean up if cancelled."""
        raise NotImplementedError

    async def close(self, resource: R) -> None:
        """Close a resource at once, without waiting on its peer.  Must not raise."""
        raise NotImplementedError

    async def check(self, resource: R) -> None:
        """Prove an idle resource still works (a round trip, e.g. PING); raise if it does not."""

    async def reset(self, resource: R) -> bool:
        """Prepare a returned resource for its next holder; False means close it instead."""
        return True

    def looks_alive(self, resource: R) -> bool:
        """A cheap, synchronous look at an idle resource before it is handed out."""
        return True


class _Entry(Generic[R]):
    """A pooled resource and the facts the pool keeps about it."""

    __slots__ = ("closed", "created_at", "expires_at", "generation", "last_used_at", "resource")

    def __init__(self, resource: R, now: float, expires_at: float, generation: int) -> None:
        self.resource = resource
        self.closed = False  # closed by the pool (e.g. force-closed at shutdown while leased)
        self.created_at = now
        self.last_used_at = now
        self.expires_at = expires_at
        self.generation = generation


class Lease(Generic[R]):
    """One acquisition: the CapacityLimiter's borrower token, and the resource once assigned."""

    __slots__ = (
        "_owner", "acquired_at", "entry", "leak_reported", "released", "stack", "task_name",
    )  # fmt: skip

    def __init__(self, owner: object = None) -> None:
        self._owner = owner  # the pool that made it
        self.entry: _Entry[R] | None = None
        self.acquired_at = 0.0
        self.released = False
        self.leak_reported = False
        self.task_name: str | None = None
        self.stack: traceback.StackSummary | None = None

    @property
    def resource(self) -> R:
        """The leased resource."""
        if self.entry is None:
            raise RuntimeError("this lease holds no resource")
        return self.entry.resource


@dataclasses.dataclass(slots=True)
class _Counters:
    """Mutable counters behind :class:`PoolStatistics` (same names, same meanings)."""

    requests_num: int = 0
    requests_queued: int = 0
    requests_wait_ms: int = 0
    requests_errors: int = 0
    returns_bad: int = 0
    connections_num: int = 0
    connections_ms: int = 0
    connections_errors: int = 0
    connections_lost: int = 0
    usage_ms: int = 0
    reconnect_attempts: int = 0
    leaks_detected: int = 0
    health_checks: int = 0
    health_check_failures: int = 0
    health_transitions: int = 0
    expired: int = 0


_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"


class Pool(Generic[R], AsyncContextManagerMixin):
    """A pool of resources made by a :class:`ResourceFactory`, for structured concurrency.

    ::

        async with Pool(factory, min_size=2, max_size=16) as pool:
            async with pool.acquire(timeout=2.0) as resource:
                ...

    The pool lives exactly as long as its ``async with`` block: entering starts the background
    maintenance (keepalive checks, expiry, refill to ``min_size``, leak detection) in the
    pool's own task group; leaving stops it, wakes every waiter with :class:`PoolClosed`, and
    closes every resource.  A pool opens once.  Code that cannot hold one ``async with`` block
    in one task uses :meth:`open` and :meth:`aclose` instead.

    Args:
        factory: makes, checks, resets and closes the resources.
        config: the settings (see :class:`PoolConfig`); keyword ``options`` override it.
        clock: monotonic time source for expiry and statistics (injected by tests).
        rand: uniform random source for lifetime jitter (injected by tests).
        **options: any :class:`PoolConfig` field.
    """

    def __init__(
        self,
        factory: ResourceFactory[R],
        config: PoolConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = uniform,
        **options: Any,
    ) -> None:
        config = config or PoolConfig()
        if options:
            config = config.replace(**options)
        self._factory = factory
        self._config = config
        self._clock = clock
        self._rand = rand
        self.name = config.name or f"pool-{id(self):x}"
        self._min_size = config.min_size
        self._max_size = config.max_size
        # Where each resource is (invariants in the module docstring).
        self._idle: deque[_Entry[R]] = deque()
        self._leased: set[Lease[R]] = set()
        # Leases their holders keep between uses (park()): still leased, but counted as idle,
        # and taken back (to the idle set) whenever the pool needs them.
        self._parked: dict[Lease[R], None] = {}
        self._closing: set[_Entry[R]] = set()  # taken out of every other place, being closed
        self._opening = 0
        self._generation = 0  # bumped by reset(): older resources are retired
        self._state = _NEW
        self._waiter_scopes: set[anyio.CancelScope] = set()
        # Event-loop objects are made on entering (_bind): a pool may be built outside a loop,
        # e.g. at module level, and entered later.
        self._limiter: anyio.CapacityLimiter
        # Set whenever a resource moves, then dropped; made only when someone waits on it, since
        # an Event costs ~1 us and the release path is hot.
        self._changed: anyio.Event | None = None
        self._wake_maintenance: anyio.Event
        self._maintenance_scope: anyio.CancelScope
        self._refill_failures = 0  # consecutive failed background refills (for the backoff)
        self._next_refill_at = -math.inf
        self._breaker = CircuitBreaker(
            config.breaker.failure_threshold, config.breaker.reset_timeout, clock
        )
        self._health = Health.HEALTHY
        self._check_failed_recently = False
        self._counters = _Counters()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._upkeep = _Upkeep(self)
        # A background task's failure, recorded the moment it is raised (so calls made while
        # the pool shuts down name it), then what the task group raised on closing.
        self._failure: BaseException | None = None
        self._loop: object = None  # the asyncio (uvloop) event loop it was opened in
        self._owner = Owner(self.name, lambda: self)  # for open()/aclose()

    # --- life cycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[Pool[R]]:
        if self._state is not _NEW:
            raise RuntimeError(
                f"{self.name} was already opened, and a pool opens once (`async with pool:` or "
                f"`await pool.open()`): make a new one to open again"
            )
        self._limiter = anyio.CapacityLimiter(self._max_size)
        self._loop = asyncio._get_running_loop()  # None on trio
        self._wake_maintenance = anyio.Event()
        self._maintenance_scope = anyio.CancelScope()
        body_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                self._state = _OPEN
                task_group.start_soon(
                    self._recording_failure, self._maintain, name=f"{self.name} maintenance"
                )
                try:
                    yield self
                except BaseException as exc:
                    # Raised by the user's block: re-raised as it is once the task group has
                    # exited (inside it, it would come out wrapped in an ExceptionGroup).  A
                    # failure of the pool's own background tasks propagates from the task group.
                    body_error = exc
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._shutdown()
                    task_group.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            self._failure = exc  # a background task failed: later calls say so (check_open)
            raise
        if body_error is not None:
            raise body_error

    async def open(self) -> None:
        """Open the pool without an ``async with`` block; close it with :meth:`aclose`.

        For code that cannot open and close in one task: a pytest-asyncio fixture, a
        framework's startup and shutdown hooks.  ``async with pool:`` stays the recommended
        way.  The pool's task group then lives in an owner task that anypool starts on the
        running event loop (trio: a system task); a failure of a background task closes the
        pool, is raised by :meth:`aclose`, and makes every later call raise
        :class:`PoolClosed` naming it.  If the event loop ends before :meth:`aclose`, the pool
        is closed as the loop cancels its tasks, and a warning is logged.

        Opening does no I/O (``min_size`` resources are opened in the background:
        ``await pool.wait()`` waits for them).  Calling it again while open does nothing.

        Raises:
            RuntimeError: the pool was closed (a pool opens once: make a new one), is open in
                an ``async with`` block, or was opened in another event loop.

        Cancellation: a task cancelled during ``open()`` closes the pool again before the
        cancellation propagates; the pool is then closed.
        """
        if not self._owner.used and self._state is not _NEW:
            raise RuntimeError(
                f"{self.name} was already opened by `async with` (it closes when the block "
                f"ends), or closed; a pool opens once: make a new one to open again"
            )
        await self._owner.open()

    async def aclose(self) -> None:
        """Close a pool opened with :meth:`open`: as leaving ``async with`` does, wake every
        waiter with :class:`PoolClosed`, close idle resources, wait up to ``close_timeout``
        for leased ones, close the rest, stop the maintenance.

        Does nothing if the pool was never opened or is closed already; a second call made
        while the first runs waits for it.  May be called from any task of the event loop
        that opened the pool.  Calls made meanwhile by other tasks fail with
        :class:`PoolClosed`; leases they hold are waited for as above.  Called from a task the
        pool runs (a :meth:`start_task` task), which the close must wait for, it begins the
        close and returns at once, raising nothing; that task is then cancelled.

        Raises:
            BaseExceptionGroup: a background task of the pool failed (as ``async with`` would
                raise it; raised once, by the first ``aclose()`` after the failure).
            RuntimeError: the pool is open in an ``async with`` block (leave the block
                instead), or was opened in another event loop.

        Cancellation: shielded, like leaving ``async with``; the cancellation takes effect
        once the pool is closed (bounded by ``close_timeout``).
        """
        if not self._owner.used:
            if self._state is _OPEN:
                raise RuntimeError(
                    f"{self.name} is open in an `async with` block: it closes when the block "
                    f"ends (aclose() closes pools opened with open())"
                )
            return
        await self._owner.close()

    async def _recording_failure(self, function: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run a task of the pool's task group; record what it raises as the pool's failure."""
        try:
            await function()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            self._failure = self._failure or exc
            raise

    async def _run_started(
        self,
        func: Callable[..., Coroutine[Any, Any, Any]],
        *args: Any,
        task_status: anyio.abc.TaskStatus[Any],
    ) -> None:
        """Run ``func`` for :meth:`start_task`; once started, what it raises is a background
        failure of the pool (before that, ``start()`` raises it to the caller)."""
        started = False

        def record_started(value: Any = None) -> None:
            nonlocal started
            started = True
            task_status.started(value)

        status = _TaskStatus(record_started)
        try:
            await func(*args, task_status=status)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            if started:
                self._failure = self._failure or exc
            raise

    async def _maintain(self) -> None:
        with self._maintenance_scope:
            await _health.run(self._upkeep)

    async def _shutdown(self) -> None:
        self.reclaim_parked()
        self._state = _CLOSING
        self._maintenance_scope.cancel()  # a check in progress returns its resource (closed)
        for scope in list(self._waiter_scopes):
            scope.cancel()  # waiters raise PoolClosed
        while self._idle:
            await self._close_entry(self._idle.pop())
        with anyio.move_on_after(self._config.close_timeout):
            while self._leased or self._opening:
                await self._wait_changed()
        for lease in list(self._leased):
            # Still held after close_timeout: close it under its holder, who will get errors.
            # The lease leaves the books now; its token goes back when the holder releases it.
            self._leased.discard(lease)
            if lease.entry is not None:
                logger.warning(
                    "%s: closing a resource still leased by %s after close_timeout (%ss)",
                    self.name, lease.task_name or "a task", self._config.close_timeout,
                )  # fmt: skip
                await self._close_entry(lease.entry)
        for entry in [e for e in self._closing if not e.closed]:  # e.g. resize()'s, not started
            await self._close_entry(entry)
        self._state = _CLOSED
        self._notify_changed()

    def check_open(self) -> None:
        """Raise :class:`PoolClosed` (saying whether it is not open yet or closed) unless the
        pool is open and was opened in the running event loop.

        Raises:
            PoolClosed: not open; if a background task failed, the message names the failure
                and the exception chains it.
            RuntimeError: called from another asyncio event loop than the pool's (its
                connections belong to that loop: they would wait forever here).
        """
        if self._state is not _OPEN:
            if self._state is _NEW:
                raise PoolClosed(
                    f"{self.name} is not open yet: use `async with pool:` (or `await "
                    f"pool.open()` and, at the end, `await pool.aclose()`) first"
                )
            raise self.closed_error(f"{self.name} is closed")
        loop = self._loop
        if loop is not None and asyncio._get_running_loop() is not loop:
            raise RuntimeError(
                f"{self.name} was opened in another event loop than the one running this call; "
                f"a pool and its connections belong to the loop that opened it: use it from "
                f"that loop only (with pytest, mark tests that use anypool's fixtures "
                f"`@pytest.mark.anyio`, not `@pytest.mark.asyncio`)"
            )

    def closed_error(self, message: str) -> PoolClosed:
        """A :class:`PoolClosed` with ``message``; if a background task failed, the message
        names that failure and the exception chains it (``__cause__``)."""
        failure = self._failure
        if failure is None:
            return PoolClosed(message)
        error = PoolClosed(f"{message}: a background task failed ({failure!r:.200})")
        error.__cause__ = failure
        return error

    async def start_task(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None
    ) -> Any:
        """Start ``func(*args, task_status=...)`` as a child task of the pool's task group.

        As ``TaskGroup.start()``: returns the value the task passes to
        ``task_status.started()``, and raises what the task raises before that.  The task lives
        at most as long as the pool: it is cancelled when the pool closes, and an exception it
        raises later propagates out of the pool's ``async with`` block.

        Raises:
            PoolClosed: the pool is not open (not entered yet, closing, or closed).

        Cancellation: cancelling the caller while the task starts cancels the task.
        """
        self.check_open()
        assert self._task_group is not None
        return await self._task_group.start(self._run_started, func, *args, name=name)

    # --- acquiring ----------------------------------------------------------------------------

    def acquire(self, *, timeout: float | _Default | None = DEFAULT) -> _Acquisition[R]:
        """Lease a resource for the duration of an ``async with`` block.

        Args:
            timeout: seconds to wait for a free slot (``DEFAULT``: the pool's ``timeout``;
                None waits forever).

        Raises:
            PoolTimeout: no slot became free in time.
            TooManyWaiters: ``max_waiting`` tasks are already waiting.
            PoolUnavailable: the circuit breaker is open (Redis unreachable).
            PoolClosed: the pool is not open.
            Exception: whatever the factory raised creating a resource.

        Cancellation: a task cancelled while waiting leaves the queue with nothing held; one
        cancelled at the instant a slot is handed to it gives the slot back.  The resource is
        returned when the block exits, however it exits.
        """
        return _Acquisition(self, timeout, nowait=False)

    def acquire_nowait(self) -> _Acquisition[R]:
        """Like :meth:`acquire`, but fail at once with :class:`PoolExhausted` instead of
        waiting for a slot (a resource may still have to be created)."""
        return _Acquisition(self, 0.0, nowait=True)

    async def lease(
        self, *, timeout: float | _Default | None = DEFAULT, nowait: bool = False
    ) -> Lease[R]:
        """Acquire without a context manager; the caller must :meth:`release` exactly once.

        Raises and cancellation: as :meth:`acquire`.
        """
        self.check_open()
        await anyio.lowlevel.checkpoint_if_cancelled()
        lease: Lease[R] = Lease(self)
        counters = self._counters
        waited = False
        try:
            if self._waiter_scopes:
                # Earlier callers wait (one may have been handed a slot it has not taken yet):
                # first come, first served.
                raise anyio.WouldBlock
            try:
                self._limiter.acquire_on_behalf_of_nowait(lease)
            except anyio.WouldBlock:
                if not self._parked:
                    raise
                self.reclaim_parked()  # slots kept between uses come back for this caller
                self._limiter.acquire_on_behalf_of_nowait(lease)
        except anyio.WouldBlock:
            if nowait:
                counters.requests_errors += 1
                raise PoolExhausted(
                    f"{self.name} has no free slot ({self._max_size} in use or being opened)"
                ) from None
            await self._wait_for_slot(lease, timeout)
            waited = True
        # The lease holds a token now: it must be released on every path below.
        try:
            entry = await self._take_idle()
            if entry is None and self._parked:
                self.reclaim_parked()  # a resource kept between uses rather than a new one
                entry = await self._take_idle()
            if entry is None:
                entry = await self._open()
            try:
                if self._state is not _OPEN:
                    raise self.closed_error(
                        f"{self.name} closed while a resource was being acquired"
                    )
                if waited:
                    # A waiter handed a slot at the instant it was cancelled gives it all back
                    # (on trio the hand-off completes the wait; the cancellation is pending).
                    await anyio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                if self._state is _OPEN:
                    self._idle.append(entry)
                else:
                    await self._close_entry(entry)
                raise
        except BaseException:
            self._limiter.release_on_behalf_of(lease)
            counters.requests_errors += 1
            self._notify_changed()
            raise
        lease.entry = entry
        lease.acquired_at = self._clock()
        self._leased.add(lease)
        counters.requests_num += 1
        if self._config.leak_threshold is not None:
            lease.task_name = anyio.get_current_task().name
            lease.stack = traceback.StackSummary.from_list(traceback.extract_stack(limit=16)[:-1])
        return lease

    async def _wait_for_slot(self, lease: Lease[R], timeout: float | _Default | None) -> None:
        counters = self._counters
        max_waiting = self._config.max_waiting
        if max_waiting is not None and len(self._waiter_scopes) >= max_waiting:
            counters.requests_errors += 1
            raise TooManyWaiters(f"{self.name} already has {max_waiting} tasks waiting")
        if isinstance(timeout, _Default):
            timeout = self._config.timeout
        counters.requests_queued += 1
        started = self._clock()
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        with anyio.CancelScope(deadline=deadline) as scope:
            self._waiter_scopes.add(scope)
            try:
                await self._limiter.acquire_on_behalf_of(lease)
            finally:
                self._waiter_scopes.discard(scope)
        counters.requests_wait_ms += int((self._clock() - started) * 1000)
        if scope.cancelled_caught:
            counters.requests_errors += 1
            if self._state is not _OPEN:
                raise self.closed_error(f"{self.name} closed while this task waited for a resource")
            raise PoolTimeout(
                f"{self.name}: no resource became free within {timeout}s "
                f"(max_size={self._max_size}, {len(self._leased)} in use)"
            )

    async def _take_idle(self) -> _Entry[R] | None:
        """The warmest usable idle resource, closing stale ones on the way (LIFO)."""
        idle, counters = self._idle, self._counters
        while idle:
            entry = idle.pop()
            if entry.generation != self._generation:
                pass  # retired by reset()
            elif entry.expires_at <= self._clock():
                counters.expired += 1
            elif not self._factory.looks_alive(entry.resource):
                counters.connections_lost += 1
            else:
                return entry
            await self._close_entry(entry)
        return None

    def _try_borrow(self) -> Lease[R] | None:
        """A lease holding a token if one is free right now (for maintenance work), else None."""
        lease: Lease[R] = Lease(self)
        try:
            self._limiter.acquire_on_behalf_of_nowait(lease)
        except anyio.WouldBlock:
            return None
        return lease

    async def _open(self) -> _Entry[R]:
        """Create a resource through the circuit breaker (a token must already be held)."""
        breaker = self._breaker
        if not breaker.allow():
            error = breaker.last_error
            raise PoolUnavailable(
                f"{self.name}: the circuit breaker is open after {breaker.consecutive_failures}"
                f" failed connects; next try in {breaker.retry_in():.1f}s; last error: {error}"
            ) from error
        counters = self._counters
        self._opening += 1
        started = self._clock()
        try:
            resource = await self._factory.create()
        except Exception as exc:
            counters.connections_errors += 1
            breaker.record_failure(exc)
            self._update_health()
            raise
        except BaseException:
            breaker.abandon_probe()  # cancelled: it proved nothing either way
            raise
        finally:
            self._opening -= 1
            self._notify_changed()
        now = self._clock()
        counters.connections_num += 1
        counters.connections_ms += int((now - started) * 1000)
        breaker.record_success()
        self._update_health()
        lifetime = self._config.max_lifetime
        expires_at = math.inf
        if lifetime is not None:
            expires_at = now + lifetime * (1.0 - self._config.lifetime_jitter * self._rand())
        return _Entry(resource, now, expires_at, self._generation)

    # --- releasing ----------------------------------------------------------------------------

    async def release(self, lease: Lease[R]) -> None:
        """Return a lease from :meth:`lease`.  Exactly once per lease.

        Cancellation: the resource is closed (not reused) if the caller is cancelled while it
        is being reset; the slot is freed either way.
        """
        if lease._owner is not self:
            raise RuntimeError(f"this lease is not from {self.name}: release it to its own pool")
        if lease.released:
            raise RuntimeError("this lease was already released")
        lease.released = True
        entry = lease.entry
        assert entry is not None
        now = self._clock()
        counters = self._counters
        counters.usage_ms += int((now - lease.acquired_at) * 1000)
        # Retired (reset(), expired, pool shrunk or closing): closed without asking the factory.
        retire = self._retired(entry, now)
        keep = False
        try:
            if not retire:
                keep = await self._factory.reset(entry.resource)
        finally:
            counters.returns_bad += not retire and not keep
            await self._end_lease(lease, keep=keep)

    def park(self, lease: Lease[R]) -> None:
        """Keep ``lease`` without using it for now, the slot still held: the pool counts its
        resource as idle (available) and takes it back the moment it needs it (another caller
        needs a resource and none is idle, a maintenance round, ``reset()``, ``resize()``,
        closing).  Call
        :meth:`unpark` before using it again.  For holders that use a resource in bursts (the
        multiplexing engine): a lease and a release per burst cost more than the burst.

        Raises:
            RuntimeError: the lease is not from this pool, or was released.
        """
        entry = lease.entry
        if lease._owner is not self or lease.released or entry is None:
            raise RuntimeError(f"only a lease held from {self.name} can be parked")
        entry.last_used_at = self._clock()
        self._parked[lease] = None
        if self._waiter_scopes:
            # Callers already wait for a slot: they come first (a parked lease would keep
            # them waiting until the next maintenance round, or starve them).
            self.reclaim_parked()

    @property
    def waiting(self) -> int:
        """How many callers wait for a slot now."""
        return len(self._waiter_scopes)

    def is_parked(self, lease: Lease[R]) -> bool:
        """Whether ``lease`` is parked (and not taken back by the pool)."""
        return lease in self._parked

    def unpark(self, lease: Lease[R]) -> bool:
        """Take a parked lease back into use.  False if the pool took it back meanwhile: it
        is then released (its resource back in the idle set), and must not be used."""
        if lease in self._parked:
            del self._parked[lease]
            return True
        return False

    def reclaim_parked(self) -> int:
        """Take back every parked lease now: each resource goes to the idle set (the usual
        checks apply before it is handed out again) and its slot is free.  Returns how many."""
        return self._reclaim(close_surplus=True)

    def _reclaim(self, *, close_surplus: bool) -> int:
        count = 0
        while self._parked:
            lease, _ = self._parked.popitem()
            entry = lease.entry
            assert entry is not None
            lease.released = True
            self._counters.usage_ms += int((entry.last_used_at - lease.acquired_at) * 1000)
            self._leased.discard(lease)
            if not entry.closed:  # (while closing, shutdown closes what is idle)
                # Retired ones (reset, expired) are closed when picked from idle, or by the
                # next maintenance round; surplus ones (the pool shrank) just below.
                self._idle.append(entry)
            self._limiter.release_on_behalf_of(lease)
            count += 1
        if count:
            if close_surplus and self._state is _OPEN:
                self._close_surplus_idle()
            self._notify_changed()
        return count

    def _close_surplus_idle(self) -> None:
        """Take idle resources beyond ``max_size`` out of use now (so none is handed out or
        makes a waiter wait beside it); they are closed in the pool's task group."""
        while self._idle and self._open_count() > self._max_size:
            entry = self._idle.popleft()
            self._closing.add(entry)
            assert self._task_group is not None
            self._task_group.start_soon(self._close_entry, entry)

    def is_retired(self, lease: Lease[R]) -> bool:
        """Whether the resource of ``lease`` (still leased) would be closed rather than kept
        if it came back now: the pool was reset or is closing, its lifetime is over, or the
        pool shrank.  For holders that keep a lease long (the multiplexing engine)."""
        entry = lease.entry
        if entry is None or entry.closed:
            return True
        if self._state is not _OPEN or entry.generation != self._generation:
            return True
        return entry.expires_at <= self._clock() or self._open_count() > self._max_size

    def _retired(self, entry: _Entry[R], now: float) -> bool:
        """Whether an entry coming back from a lease (still in ``_leased``) must be closed
        rather than kept.  Counts a lifetime expiry."""
        if self._state is not _OPEN or entry.generation != self._generation:
            return True
        if entry.expires_at <= now:
            self._counters.expired += 1
            return True
        return self._open_count() > self._max_size  # shrunk: this one is surplus

    async def _end_lease(self, lease: Lease[R], *, keep: bool) -> None:
        """Put a leased entry back in idle (``keep``, if the pool is still open) or close it,
        then give its token back.  Until then the lease stays in ``_leased``: every token
        borrowed is a lease or a resource being opened, at every step."""
        entry = lease.entry
        assert entry is not None
        try:
            if keep and self._state is _OPEN and not entry.closed:
                entry.last_used_at = self._clock()
                self._idle.append(entry)
            else:
                await self._close_entry(entry, leased=True)
        finally:
            self._leased.discard(lease)
            self._limiter.release_on_behalf_of(lease)
            self._notify_changed()

    async def _close_entry(self, entry: _Entry[R], *, leased: bool = False) -> None:
        """Close a resource, whatever the caller's state.

        Until the close returns, the entry stays where it is: its lease (``leased``), or
        ``_closing`` (any other entry, which is then in no other place).
        """
        if entry.closed:  # e.g. force-closed at shutdown while leased
            return
        entry.closed = True
        if not leased:
            self._closing.add(entry)
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._config.close_timeout):
                await self._factory.close(entry.resource)
        finally:
            self._closing.discard(entry)
        self._wake_maintenance.set()  # the refill may have work now

    def _notify_changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_changed(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # --- run-time control ---------------------------------------------------------------------

    async def wait(self, timeout: float | None = None) -> None:
        """Wait until ``min_size`` resources are open: the fail-fast start.

        Raises:
            PoolTimeout: not ready within ``timeout`` (the message names the last error).
            PoolClosed: the pool is not open.
        """
        self.check_open()
        self._wake_maintenance.set()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while self._open_count() - self._opening < self._min_size:
                await self._wait_changed()
                self.check_open()
            return
        error = self._breaker.last_error
        raise PoolTimeout(
            f"{self.name}: {self._open_count() - self._opening} of min_size={self._min_size} "
            f"resources ready after {timeout}s; last error: {error}"
        ) from error

    async def check(self) -> None:
        """Check every idle resource now (``factory.check``); close the broken ones.

        Cancellation: a resource whose check is cancelled is closed, not returned to idle.
        """
        self.check_open()
        self.reclaim_parked()
        await _health.check_idle(self._upkeep, self._clock(), everything=True)

    async def run_maintenance(self) -> float:
        """Run one round of the background maintenance now: close stale idle resources, check
        the ones due, report leaks, refill to ``min_size``.

        The background task runs the same rounds by itself; this is for tests (with an injected
        ``clock``) and for callers who want the work done before going on.

        Returns:
            Seconds until the next round is due.

        Cancellation: as :meth:`check`; a resource being opened is not kept.
        """
        self.check_open()
        return await _health.maintenance_round(self._upkeep)

    async def reset(self) -> None:
        """Close every idle resource and retire every leased one on return; start afresh.

        Cancellation: the closes are shielded (each bounded by ``close_timeout``), so the call
        completes; a cancellation takes effect after it.
        """
        self.check_open()
        self.reclaim_parked()
        self._generation += 1
        entries = list(self._idle)
        self._idle.clear()
        self._closing.update(entries)
        self._wake_maintenance.set()
        for entry in entries:
            await self._close_entry(entry)

    def probe_now(self) -> None:
        """The server may be reachable again (a failover was announced, a new address is
        known): if the circuit breaker is open, the next connect is tried at once (one probe,
        as after ``reset_timeout``), and maintenance refills now."""
        self._breaker.probe_now()
        self._update_health()
        self._wake_maintenance.set()

    def resize(self, *, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change the size limits at run time.

        Shrinking takes surplus idle resources out of use at once (they are closed in the
        pool's task group) and retires leased ones as they come back; growing lets waiters
        through at once.

        Raises:
            ConfigError: the new sizes are invalid (e.g. min_size above max_size).
        """
        config = self._config.replace(
            min_size=self._min_size if min_size is None else min_size,
            max_size=self._max_size if max_size is None else max_size,
        )
        self._config = config
        self._min_size, self._max_size = config.min_size, config.max_size
        if self._state is not _NEW:
            self.reclaim_parked()
            self._limiter.total_tokens = config.max_size
            self._close_surplus_idle()
            self._wake_maintenance.set()

    # --- observation --------------------------------------------------------------------------

    def _open_count(self) -> int:
        return len(self._idle) + len(self._leased) + self._opening

    @property
    def health(self) -> Health:
        """HEALTHY, DEGRADED (recent failures, still working) or UNAVAILABLE (breaker open)."""
        return self._health

    @property
    def config(self) -> PoolConfig:
        """The settings in force (``resize`` changes the sizes)."""
        return self._config

    def _update_health(self) -> None:
        breaker = self._breaker.state
        if breaker is not BreakerState.CLOSED:
            health = Health.UNAVAILABLE
        elif self._breaker.consecutive_failures or self._check_failed_recently:
            health = Health.DEGRADED
        else:
            health = Health.HEALTHY
        if health is self._health:
            return
        log = logger.warning if health is not Health.HEALTHY else logger.info
        log("%s: health %s -> %s", self.name, self._health.value, health.value)
        self._health = health
        self._counters.health_transitions += 1

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool's gauges and counters."""
        return PoolStatistics(
            pool_min=self._min_size,
            pool_max=self._max_size,
            pool_size=self._open_count(),
            pool_available=len(self._idle) + len(self._parked),
            requests_waiting=len(self._waiter_scopes),
            in_use=len(self._leased) - len(self._parked),
            opening=self._opening,
            health=self._health.value,
            breaker_state=self._breaker.state.value,
            **dataclasses.asdict(self._counters),  # the counters have the statistics' names
        )

    def __repr__(self) -> str:
        return (
            f"<Pool {self.name} {self._state} idle={len(self._idle)} in_use={len(self._leased)}"
            f" opening={self._opening} max={self._max_size} health={self._health.value}>"
        )


class _TaskStatus(anyio.abc.TaskStatus[Any]):
    """Forwards ``started()`` to a callback (see :meth:`Pool._run_started`)."""

    __slots__ = ("_started",)

    def __init__(self, started: Callable[[Any], None]) -> None:
        self._started = started

    def started(self, value: Any = None) -> None:
        self._started(value)


class _Acquisition(Generic[R]):
    """The async context manager returned by :meth:`Pool.acquire`."""

    __slots__ = ("_lease", "_nowait", "_pool", "_timeout")

    def __init__(self, pool: Pool[R], timeout: float | _Default | None, *, nowait: bool) -> None:
        self._pool = pool
        self._timeout = timeout
        self._nowait = nowait
        self._lease: Lease[R] | None = None

    async def __aenter__(self) -> R:
        if self._lease is not None:
            raise RuntimeError("this acquire() context was already entered")
        self._lease = await self._pool.lease(timeout=self._timeout, nowait=self._nowait)
        return self._lease.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._lease is not None
        await self._pool.release(self._lease)


class _Upkeep(Generic[R]):
    """The pool as maintenance (``_health``) sees it: see :class:`_health.Maintained`.

    Every method that picks resources moves them out of the idle set in the same synchronous
    step, so no user task can take them while maintenance awaits.
    """

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool[R]) -> None:
        self._pool = pool

    @property
    def name(self) -> str:
        return self._pool.name

    @property
    def config(self) -> PoolConfig:
        return self._pool._config

    def now(self) -> float:
        return self._pool._clock()

    # --- expiry -------------------------------------------------------------------------------

    def take_stale(self, now: float) -> Sequence[_Entry[R]]:
        pool = self._pool
        # Every round sees parked resources too (checks, expiry); the surplus ones are taken
        # just below, in this round.
        pool._reclaim(close_surplus=False)
        idle, counters = pool._idle, pool._counters
        taken: list[_Entry[R]] = []
        while idle and pool._open_count() > pool._max_size:  # shrunk by resize()
            taken.append(idle.popleft())
        kept: list[_Entry[R]] = []
        for entry in idle:
            if entry.generation != pool._generation:
                taken.append(entry)
            elif entry.expires_at <= now:
                counters.expired += 1
                taken.append(entry)
            else:
                kept.append(entry)
        if len(kept) != len(idle):
            idle.clear()
            idle.extend(kept)
        max_idle = pool._config.max_idle
        if max_idle is not None:
            # The left end holds the least recently used: expire from there, keeping min_size.
            while (
                idle
                and pool._open_count() > pool._min_size
                and now - idle[0].last_used_at >= max_idle
            ):
                counters.expired += 1
                taken.append(idle.popleft())
        pool._closing.update(taken)
        return taken

    async def close(self, entry: _Entry[R]) -> None:
        await self._pool._close_entry(entry)

    # --- keepalive checks ---------------------------------------------------------------------

    def lease_for_check(self, now: float, seen: set[Any], *, everything: bool) -> Lease[R] | None:
        pool = self._pool
        if pool._state is not _OPEN:
            return None
        interval = pool._config.health_check_interval or 0.0
        for entry in pool._idle:  # oldest first
            if entry not in seen and (everything or now - entry.last_used_at >= interval):
                break
        else:
            return None
        lease = pool._try_borrow()
        if lease is None:
            return None  # every slot is in use: the pool is busy, not idle
        pool._idle.remove(entry)
        seen.add(entry)
        lease.entry, lease.acquired_at = entry, now
        pool._leased.add(lease)
        pool._counters.health_checks += 1
        return lease

    async def check(self, lease: Lease[R]) -> None:
        await self._pool._factory.check(lease.resource)

    async def end_check(self, lease: Lease[R], *, healthy: bool) -> None:
        pool = self._pool
        entry = lease.entry
        assert entry is not None
        if not healthy:
            pool._counters.health_check_failures += 1
            pool._counters.connections_lost += 1
        keep = healthy and not pool._retired(entry, pool._clock())
        await pool._end_lease(lease, keep=keep)

    def record_check_round(self, checked: int, failed: int) -> None:
        # a round with a failed check leaves the pool DEGRADED until a clean round
        self._pool._check_failed_recently = failed > 0
        self._pool._update_health()

    # --- leaks --------------------------------------------------------------------------------

    def overdue_leases(self, now: float) -> Sequence[tuple[str | None, float, str]]:
        pool = self._pool
        threshold = pool._config.leak_threshold
        if threshold is None:
            return ()
        overdue = []
        for lease in pool._leased:
            if lease.leak_reported or lease.stack is None or now - lease.acquired_at < threshold:
                continue
            lease.leak_reported = True
            pool._counters.leaks_detected += 1
            overdue.append(
                (lease.task_name, now - lease.acquired_at, "".join(lease.stack.format()))
            )
        return overdue

    # --- refill -------------------------------------------------------------------------------

    def refill_wait(self) -> float:
        pool = self._pool
        if pool._state is not _OPEN or pool._open_count() >= pool._min_size:
            return math.inf
        if pool._breaker.state is BreakerState.OPEN:
            return pool._breaker.retry_in()
        return max(0.0, pool._next_refill_at - pool._clock())

    def lease_for_refill(self) -> Lease[R] | None:
        pool = self._pool
        if pool._state is not _OPEN or pool._open_count() >= pool._min_size:
            return None
        lease = pool._try_borrow()
        if lease is not None:
            pool._counters.reconnect_attempts += 1
        return lease

    async def refill(self, lease: Lease[R]) -> None:
        pool = self._pool
        try:
            entry = await pool._open()
            pool._refill_failures = 0
            if pool._state is _OPEN:
                pool._idle.append(entry)
            else:
                await pool._close_entry(entry)
        finally:
            pool._limiter.release_on_behalf_of(lease)
            pool._notify_changed()

    def refill_failed(self, error: Exception) -> float:
        pool = self._pool
        pool._refill_failures += 1
        backoff = pool._config.reconnect_backoff
        delay = backoff_delay(
            pool._refill_failures, base=backoff.base, cap=backoff.cap, jitter=backoff.jitter,
            rand=pool._rand,
        )  # fmt: skip
        pool._next_refill_at = pool._clock() + delay
        return delay

    # --- health and scheduling ----------------------------------------------------------------

    def update_health(self) -> None:
        self._pool._update_health()

    async def wait_for_work(self, delay: float) -> None:
        pool = self._pool
        with anyio.move_on_after(delay):
            await pool._wake_maintenance.wait()
        pool._wake_maintenance = anyio.Event()
