"""A Hypothesis state machine for auto-pipelining: many tasks on few shared connections, on a
real server, on every backend.

The guarantee: every caller gets its own reply, or a clear error that the machine can explain
(it was cancelled; or a fault struck while its command was out: the server paused past
``socket_timeout``, or killed), and nothing leaks: between steps no shared connection is left,
nothing is in flight, queued or waiting, and every pool slot is back.

Rules start batches of tasks (ECHO of their own token, INCR of their own counter, a BLPOP that
gets an exclusive connection, an MGET of their own keys), cancel some of them at whatever await
they are in (before their write, while queued, while reading for others, while parked), stall
the server with commands in flight and cancel some there, and kill and restart the server with
commands in flight.  Runs with few shared connections and a small in-flight bound, so callers
also wait for room.  ``AUTOPIPELINE_MACHINE_EXAMPLES`` / ``..._STEPS`` scale it (``nox -s soak``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import anypool
from anypool import RedisPool
from anypool.testing import RedisServer

from .backends import backend_params, run_machine, start_portal, together_cancelled_after

EXAMPLES = int(os.environ.get("AUTOPIPELINE_MACHINE_EXAMPLES", "8"))
STEPS = int(os.environ.get("AUTOPIPELINE_MACHINE_STEPS", "25"))
HANG = 30.0  # bounds that only catch hangs


@dataclass
class _Call:
    token: str
    kind: str
    scope: anyio.CancelScope | None = None
    cancel_asked: bool = False
    faulted: bool = False  # a fault struck while it was out
    future: concurrent.futures.Future[Any] | None = None
    counter: int = 0


@dataclass
class _World:
    server: RedisServer
    portal: Any
    redis: RedisPool
    counters: dict[str, int] = field(default_factory=dict)


async def _run(redis: RedisPool, call: _Call) -> tuple[str, Any]:
    with anyio.CancelScope() as scope:
        call.scope = scope
        if call.cancel_asked:
            scope.cancel()
        try:
            if call.kind == "echo":
                return "ok", await redis.echo(call.token)
            if call.kind == "incr":
                return "ok", await redis.incr(f"apm:counter:{call.token}")
            if call.kind == "mget":
                return "ok", await redis.mget([f"apm:a:{call.token}", f"apm:b:{call.token}"])
            return "ok", await redis.blpop([f"apm:empty:{call.token}"], timeout=0.01)
        except (anypool.ConnectionError, anypool.TimeoutError, anypool.PoolError) as exc:
            return "error", exc
    return "cancelled", None


def _expected(call: _Call) -> Any:
    if call.kind == "echo":
        return call.token.encode()
    if call.kind == "incr":
        return call.counter
    if call.kind == "mget":
        return [None, None]
    return None


class AutopipelineMachine(RuleBasedStateMachine):
    world: _World

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []
        self.serial = 0
        self.run = uuid.uuid4().hex[:8]  # the server outlives examples: fresh keys each one

    # --- helpers ------------------------------------------------------------------------------

    def _start(self, kind: str) -> _Call:
        self.serial += 1
        call = _Call(token=f"{self.run}:{self.serial}", kind=kind)
        if kind == "incr":
            # each counter is its own: the expected value is 1 unless a fault makes it unknown
            call.counter = 1
        call.future = self.world.portal.start_task_soon(_run, self.world.redis, call)
        self.calls.append(call)
        return call

    def _out(self) -> list[_Call]:
        return [c for c in self.calls if c.future is not None and not c.future.done()]

    def _stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.world.portal.call(
            lambda: _sync(self.world.redis.autopipeline_statistics)
        )
        return stats

    def _all_out(self, calls: list[_Call]) -> bool:
        """Whether every call in ``calls`` is on a shared connection or waiting for room (the
        only calls out, after a settle)."""
        if not all(call.scope is not None for call in calls):
            return False
        shared = self.world.redis.autopipeline_statistics()
        return shared["in_flight"] + shared["queued"] + shared["waiting_for_room"] == len(calls)

    def _wait_for(self, condition: Any, what: str) -> None:
        async def wait() -> None:
            with anyio.fail_after(HANG):
                while not condition():
                    await anyio.sleep(0.005)

        try:
            self.world.portal.call(wait)
        except TimeoutError:
            shared = self.world.redis.autopipeline_statistics()
            raise AssertionError(
                f"gave up waiting for {what}: {self.world.redis.statistics()}, {shared}"
            ) from None

    # --- rules --------------------------------------------------------------------------------

    @rule(
        kinds=st.lists(st.sampled_from(["echo", "echo", "incr", "mget", "blpop"]), min_size=1,
                       max_size=12),
    )  # fmt: skip
    def start_calls(self, kinds: list[str]) -> None:
        for kind in kinds:
            self._start(kind)

    @precondition(lambda self: bool(self.calls))  # not whether they are done: timing
    @rule(data=st.data())
    def cancel_some(self, data: st.DataObject) -> None:
        calls = self.calls
        chosen = data.draw(st.lists(st.sampled_from(calls), min_size=1, max_size=len(calls)))
        for call in chosen:
            call.cancel_asked = True
            if call.scope is not None:
                self.world.portal.call(call.scope.cancel)

    @rule(
        kinds=st.lists(st.sampled_from(["echo", "incr", "mget", "blpop"]), min_size=1,
                       max_size=6),
        checkpoints=st.integers(0, 30),
    )  # fmt: skip
    def cancel_at_a_checkpoint(self, kinds: list[str], checkpoints: int) -> None:
        """Calls started together and cancelled together after ``checkpoints`` scheduling
        passes: wherever that lands (picking a lane, opening one, waiting for room, writing,
        reading for others, parked), each gets its own reply or is cancelled."""
        calls = []
        for kind in kinds:
            self.serial += 1
            call = _Call(token=f"{self.run}:{self.serial}", kind=kind, cancel_asked=True)
            call.counter = 1
            calls.append(call)
        redis = self.world.redis
        runs = [functools.partial(_run, redis, call) for call in calls]
        outcomes = self.world.portal.call(together_cancelled_after, checkpoints, runs)
        for call, result in zip(calls, outcomes, strict=True):
            outcome, value = result or ("cancelled", None)
            self._check(call, outcome, value)

    def _stall(self, count: int) -> list[_Call]:
        """Pause the server (with min_size connections open) and put ``count`` calls out: in
        flight, queued, or waiting for room.  The caller resumes or kills the server."""
        self.settle()
        self._ready()
        self.world.server.pause()
        started = [self._start("echo") for _ in range(count)]
        self._wait_for(lambda: self._all_out(started), "the stalled calls to be out")
        return started

    @rule(count=st.integers(1, 12), cancel=st.integers(0, 12))
    def stall_with_commands_in_flight(self, count: int, cancel: int) -> None:
        """Pause the server, put commands in flight (and in the queue, and waiting for room),
        cancel some while the server is stalled, then resume: the rest complete normally."""
        try:
            for call in self._stall(count)[:cancel]:
                call.cancel_asked = True
                self.world.portal.call(call.scope.cancel)  # type: ignore[union-attr]
        finally:
            self.world.server.resume()
        self.settle()

    @rule(count=st.integers(1, 12))
    def kill_with_commands_in_flight(self, count: int) -> None:
        server = self.world.server
        try:
            self._stall(count)
            for call in self._out():
                call.faulted = True
            server.kill()
            self.settle()
        finally:
            if server.running:
                server.resume()
            else:
                server.restart()
            self._heal()

    @rule()
    def settle(self) -> None:
        """Wait for every call out, and check what each one got."""
        for call in list(self.calls):
            assert call.future is not None
            try:
                outcome, value = call.future.result(timeout=HANG)
            except concurrent.futures.TimeoutError:
                raise AssertionError(f"{call.kind} {call.token} hangs") from None
            self._check(call, outcome, value)
        self.calls.clear()

    # --- checks -------------------------------------------------------------------------------

    def _check(self, call: _Call, outcome: str, value: Any) -> None:
        if outcome == "ok":
            expected = _expected(call)
            if call.kind == "blpop":
                assert value is None, f"BLPOP on an empty list returned {value!r}"
            elif call.kind == "incr" and (call.faulted or call.cancel_asked):
                assert isinstance(value, int) and value >= 1
            else:
                assert value == expected, f"{call.kind} {call.token} got {value!r}"
        elif outcome == "cancelled":
            assert call.cancel_asked, f"{call.kind} {call.token} was cancelled unasked"
        else:
            assert call.faulted, f"{call.kind} {call.token} failed with no fault: {value!r}"
            assert str(value), "an error without a message"

    def _ready(self) -> None:
        """Before a stall: min_size connections are open, idle and checked alive (a connect
        to a stalled server would time out, which is not what the stall tests).  Counting
        them is not enough: an idle connection a kill left dead is counted until a lease
        finds it dead (the stalled call would then connect), and one leased by a health
        check is busy."""
        pool = self.world.redis.pool
        wanted = pool.config.min_size

        async def ready() -> None:
            with anyio.fail_after(HANG):
                while True:
                    await pool.check()  # every idle one PINGed now: dead ones closed
                    await pool.wait(timeout=HANG)  # and replaced
                    stats = pool.statistics()
                    if stats.pool_available >= wanted and (stats.in_use, stats.opening) == (0, 0):
                        return
                    await anyio.sleep(0.01)

        self.world.portal.call(ready)

    def _heal(self) -> None:
        """After a restart: commands work again within a bounded time."""

        async def heal() -> None:
            with anyio.fail_after(HANG):
                while True:
                    try:
                        assert await self.world.redis.echo("healed") == b"healed"
                        break
                    except (anypool.ConnectionError, anypool.PoolError, anypool.TimeoutError):
                        await anyio.sleep(0.05)
                await self.world.redis.pool.wait(timeout=HANG)  # min_size connections again

        self.world.portal.call(heal)

    @invariant()
    def nothing_leaks_once_settled(self) -> None:
        if self._out():
            return
        redis = self.world.redis

        def quiet() -> bool:
            # the pool's own refill to min_size leases briefly too: wait for it, bounded
            stats = redis.statistics()
            return (stats.in_use, stats.opening, stats.requests_waiting) == (0, 0, 0)

        self._wait_for(quiet, "every pool slot back")
        shared = self._stats()
        assert (
            shared["lanes"],
            shared["in_flight"],
            shared["queued"],
            shared["waiting_for_room"],
        ) == (0, 0, 0, 0), shared

    def teardown(self) -> None:
        self.settle()


async def _sync(function: Any) -> Any:
    return function()


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[_World]:
    backend = request.param
    with RedisServer() as server, start_portal(backend) as portal:
        redis = RedisPool.from_url(
            server.url, min_size=2, max_size=4, autopipeline_connections=2,
            autopipeline_max_in_flight=4, socket_timeout=10, connect_timeout=5, timeout=HANG,
        )  # fmt: skip
        portal.call(redis.open)
        # Connections exist before any stall (a connect to a stalled server would time out).
        portal.call(lambda: redis.pool.wait(timeout=HANG))
        try:
            yield _World(server, portal, redis)
        finally:
            portal.call(redis.aclose)


# The whole run is bounded by its size (the machine bounds each step itself, HANG): on a
# loaded machine, or with the soak's examples, 120 s is not enough for a healthy run.
@pytest.mark.timeout(max(300, EXAMPLES * STEPS))
@pytest.mark.parametrize("world", backend_params(), indirect=True)
def test_autopipeline_machine(world: _World) -> None:
    AutopipelineMachine.world = world
    run_machine(AutopipelineMachine, examples=EXAMPLES, steps=STEPS)
