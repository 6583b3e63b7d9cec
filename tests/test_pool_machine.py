"""Hypothesis state machines driving the pool: over fake resources and over real Redis.

Rules are synchronous; each drives the pool inside an anyio blocking portal (one event loop in a
helper thread, asyncio or trio), so acquisitions, waiters, cancellations and hand-offs
interleave exactly as the rules say.  The background maintenance task is replaced by a no-op:
maintenance rounds happen when a rule runs one, with a fake clock, so every step is
reproducible.  After every step the invariants of DESIGN.md are checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import pytest
from anyio.abc import TaskStatus
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import anypool
from anypool import BreakerPolicy, Lease, Pool, RedisConfig
from anypool import _health as health
from anypool._connection import Connection, ConnectionFactory
from anypool.testing import RedisServer

from .fakes import FakeFactory, FakeResource

# What a factory's create() may raise in these machines (fake refusal, or a real one).
CREATE_ERRORS = (ConnectionRefusedError, anypool.ConnectError)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _no_maintenance(pool: Pool[Any]) -> None:
    """Replaces the background task: the machine runs maintenance rounds itself."""


# --- drivers: how to make faults happen to each kind of resource ------------------------------


class FakeDriver:
    """Faults on fake resources are flags."""

    def __init__(self) -> None:
        self.factory = FakeFactory()

    def open_resources(self) -> list[Any]:
        return self.factory.open_resources

    def is_closed(self, resource: FakeResource) -> bool:
        return resource.closed

    def fail_next_create(self) -> None:
        self.factory.fail_next += 1

    def creates_fail(self) -> bool:
        return self.factory.fail_next > 0

    def after_create_failure(self) -> None:
        pass

    async def kill(self, resource: FakeResource) -> None:
        resource.dead = resource.broken = True

    async def make_owe(self, resource: FakeResource) -> None:
        resource.owes = True

    def close(self) -> None:
        pass


class RecordingConnectionFactory(ConnectionFactory):
    """A real ConnectionFactory that remembers what it made and can be pointed at a dead port."""

    def __init__(self, config: RedisConfig, dead_port: int) -> None:
        super().__init__(config, check_timeout=2.0)
        self.good_config = config
        self.dead_config = config.replace(port=dead_port)
        self.created: list[Connection] = []

    async def create(self) -> Connection:
        connection = await super().create()
        self.created.append(connection)
        return connection


class RedisDriver:
    """Faults on real connections: refused connects, CLIENT KILL, a command cut short."""

    def __init__(self, server: RedisServer) -> None:
        with contextlib.closing(__import__("socket").socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            dead_port = probe.getsockname()[1]
        self.config = RedisConfig.from_url(server.url)
        self.factory = RecordingConnectionFactory(self.config, dead_port)

    def open_resources(self) -> list[Any]:
        return [c for c in self.factory.created if not c.closed]

    def is_closed(self, resource: Connection) -> bool:
        return resource.closed

    def fail_next_create(self) -> None:
        self.factory.config = self.factory.dead_config

    def creates_fail(self) -> bool:
        return self.factory.config is self.factory.dead_config

    def after_create_failure(self) -> None:
        self.factory.config = self.factory.good_config

    async def kill(self, resource: Connection) -> None:
        admin = await Connection.connect(self.config)
        try:
            await admin.execute("CLIENT", "KILL", "ID", resource.client_id)
        finally:
            await admin.aclose()
        with anyio.fail_after(5):  # wait until the FIN has arrived
            while resource.looks_alive():
                await anyio.sleep(0.001)

    async def make_owe(self, resource: Connection) -> None:
        with anyio.move_on_after(0.005):
            await resource.execute("BLPOP", "machine:nothing", 0)

    def close(self) -> None:
        pass


# --- the machine ------------------------------------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    backend = "asyncio"
    driver_factory: Any = FakeDriver

    def __init__(self) -> None:
        super().__init__()
        self._saved_run = health.run
        health.run = _no_maintenance
        self.clock = Clock()
        self.driver = self.driver_factory()
        self._exit = contextlib.ExitStack()
        self.portal = self._exit.enter_context(
            anyio.from_thread.start_blocking_portal(self.backend)
        )
        self.pool: Pool[Any] = Pool(
            self.driver.factory,
            max_size=3,
            clock=self.clock,
            rand=lambda: 0.5,
            health_check_interval=30,
            max_idle=100,
            max_lifetime=1000,
            lifetime_jitter=0.0,
            breaker=BreakerPolicy(failure_threshold=1000, reset_timeout=1),
            close_timeout=1,
        )
        self._exit.enter_context(self.portal.wrap_async_context_manager(self.pool))
        self.leases: list[Lease[Any]] = []
        self.waiters: list[dict[str, Any]] = []
        self.acquired = 0

    # helpers

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def settle(self) -> None:
        """Run the loop until every waiter has finished or is parked in the limiter's queue,
        and nothing is being opened (a real connect takes many scheduling passes)."""

        async def until_quiet() -> None:
            with anyio.fail_after(10):
                while True:
                    for _ in range(5):
                        await anyio.lowlevel.checkpoint()
                    pending = sum(not w["future"].done() for w in self.waiters)
                    parked = self.pool._limiter.statistics().tasks_waiting
                    if pending == parked and not self.pool._opening:
                        return
                    await anyio.sleep(0.001)

        self.call(until_quiet)
        self.harvest()

    def harvest(self) -> None:
        for waiter in list(self.waiters):
            if not waiter["future"].done():
                continue
            self.waiters.remove(waiter)
            if "lease" in waiter:
                self.leases.append(waiter["lease"])
                self.acquired += 1
                continue
            error = waiter["future"].exception()
            if error is not None:  # a waiter may be the one whose create fails
                assert isinstance(error, CREATE_ERRORS), error
                self.driver.after_create_failure()

    # rules

    @rule()
    def acquire_nowait(self) -> None:
        fails = self.driver.creates_fail()
        full = self.pool._limiter.available_tokens <= 0 or self.pool.statistics().requests_waiting
        factory = self.driver.factory
        live_idle = sum(factory.looks_alive(e.resource) for e in self.pool._idle)
        try:
            lease = self.call(partial(self.pool.lease, nowait=True))
        except anypool.PoolExhausted:
            assert full
        except CREATE_ERRORS:
            assert fails
            assert not live_idle
            self.driver.after_create_failure()
        else:
            assert not full
            self.leases.append(lease)
            self.acquired += 1

    @rule()
    def acquire_with_short_timeout(self) -> None:
        full = self.pool._limiter.available_tokens <= 0 or self.pool.statistics().requests_waiting
        fails = self.driver.creates_fail()
        try:
            lease = self.call(partial(self.pool.lease, timeout=0.01))
        except anypool.PoolTimeout:
            assert full
        except CREATE_ERRORS:
            assert fails
            self.driver.after_create_failure()
        else:
            self.leases.append(lease)
            self.acquired += 1
        self.settle()

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), owe=st.booleans())
    def release(self, data: st.DataObject, owe: bool) -> None:
        lease = data.draw(st.sampled_from(self.leases))
        self.leases.remove(lease)
        if owe:
            self.call(self.driver.make_owe, lease.resource)
        self.call(self.pool.release, lease)
        if owe:
            assert self.driver.is_closed(lease.resource)
        self.settle()

    @precondition(lambda self: len(self.waiters) < 4)
    @rule()
    def start_waiter(self) -> None:
        box: dict[str, Any] = {}

        async def waiter(*, task_status: TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                box["lease"] = await self.pool.lease(timeout=None)

        future, scope = self.portal.start_task(waiter)
        box["future"], box["scope"] = future, scope
        self.waiters.append(box)
        self.settle()

    @precondition(lambda self: self.waiters)
    @rule(data=st.data())
    def cancel_waiter(self, data: st.DataObject) -> None:
        waiter = data.draw(st.sampled_from(self.waiters))
        self.call(waiter["scope"].cancel)
        self.settle()

    @precondition(lambda self: self.leases and self.waiters)
    @rule(data=st.data())
    def cancel_waiter_at_hand_off(self, data: st.DataObject) -> None:
        """Release, and cancel the first waiter in the same step, before it can run."""
        lease = data.draw(st.sampled_from(self.leases))
        self.leases.remove(lease)
        waiting = [w for w in self.waiters if not w["future"].done()]

        async def release_and_cancel() -> None:
            await self.pool.release(lease)
            for waiter in waiting:
                waiter["scope"].cancel()

        self.call(release_and_cancel)
        self.settle()
        for waiter in waiting:  # every one of them was cancelled before it could run
            assert "lease" not in waiter

    @rule()
    def fail_next_create(self) -> None:
        self.driver.fail_next_create()

    @precondition(lambda self: isinstance(self.driver, FakeDriver))
    @rule()
    def create_hangs_until_cancelled(self) -> None:
        """A create() that never returns, cancelled by its caller: its slot must come back."""
        pool = self.pool
        live_idle = any(pool._factory.looks_alive(e.resource) for e in pool._idle)
        if live_idle or pool._limiter.available_tokens <= 0 or self.waiters:
            return  # the acquisition would not create
        factory = self.driver.factory
        factory.hang, factory.unhang = True, self.call(anyio.Event)
        box: dict[str, Any] = {}

        async def hanging(*, task_status: TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                box["lease"] = await pool.lease(timeout=None)

        future, scope = self.portal.start_task(hanging)

        async def until_opening() -> None:
            with anyio.fail_after(5):
                while not pool._opening:
                    await anyio.sleep(0.001)

        self.call(until_opening)
        self.call(scope.cancel)
        future.exception(timeout=5)  # the task ended (cancelled inside its own scope)
        factory.hang = False
        assert "lease" not in box
        assert self.call(lambda: pool._opening) == 0

    @precondition(lambda self: self.pool._idle)
    @rule(data=st.data())
    def kill_idle_resource(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(list(self.pool._idle)))
        self.call(self.driver.kill, entry.resource)

    @rule(seconds=st.sampled_from([0, 10, 31, 101, 1001]))
    def advance_clock_and_maintain(self, seconds: int) -> None:
        self.clock.now += seconds
        self.call(health.maintenance_round, self.pool)
        self.driver.after_create_failure()
        self.settle()

    @rule(max_size=st.integers(1, 4))
    def resize(self, max_size: int) -> None:
        self.call(partial(self.pool.resize, max_size=max_size))
        self.settle()

    @rule()
    def reset(self) -> None:
        self.call(self.pool.reset)
        self.settle()

    @rule()
    def check(self) -> None:
        self.call(self.pool.check)
        self.settle()

    # invariants

    @invariant()
    def accounting(self) -> None:
        def snapshot() -> dict[str, Any]:
            pool = self.pool
            return {
                "idle": [e.resource for e in pool._idle],
                "leased": [lease.resource for lease in pool._leased],
                "opening": pool._opening,
                "borrowed": pool._limiter.borrowed_tokens,
                "waiting": pool._limiter.statistics().tasks_waiting,
                "max_size": pool._max_size,
                "stats": pool.statistics(),
            }

        state = self.call(snapshot)
        idle, leased, borrowed = state["idle"], state["leased"], state["borrowed"]
        # every lease and every resource being opened holds exactly one token
        assert borrowed == len(leased) + state["opening"]
        # open never exceeds max_size (after a shrink, leases out beyond it are retired on return)
        if borrowed <= state["max_size"]:
            assert len(idle) + borrowed <= state["max_size"]
        # no waiter parked while a reusable idle resource exists
        if state["waiting"]:
            assert not idle
        # each resource in exactly one place, none of them closed, none lost
        ids = [id(r) for r in idle + leased]
        assert len(ids) == len(set(ids))
        assert not any(self.driver.is_closed(r) for r in idle + leased)
        if not state["opening"]:
            assert {id(r) for r in self.driver.open_resources()} == set(ids)
        # the statistics agree with what the machine saw
        stats = state["stats"]
        assert stats.pool_size == len(idle) + len(leased) + state["opening"]
        assert stats.in_use == len(leased)
        assert stats.requests_num == self.acquired
        assert {id(lease.resource) for lease in self.leases} <= set(ids)

    def teardown(self) -> None:
        try:
            for waiter in self.waiters:
                self.call(waiter["scope"].cancel)
            self.settle()
            for lease in list(self.leases):
                self.call(self.pool.release, lease)
            self.leases.clear()
            self._exit.close()  # leaves the pool: waiters get PoolClosed, everything closes
            assert not self.waiters
            assert not self.driver.open_resources()
            stats = self.pool.statistics()
            assert (stats.pool_size, stats.in_use, stats.requests_waiting) == (0, 0, 0)
        finally:
            health.run = self._saved_run
            self.driver.close()


fake_settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class FakeAsyncio(PoolMachine):
    backend = "asyncio"


class FakeTrio(PoolMachine):
    backend = "trio"


TestFakePoolAsyncio = fake_settings(FakeAsyncio).TestCase
TestFakePoolTrio = fake_settings(FakeTrio).TestCase


@pytest.fixture(scope="module")
def machine_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


redis_settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pool_machine_over_real_redis(backend: str, machine_server: RedisServer) -> None:
    class RealRedis(PoolMachine):
        pass

    RealRedis.backend = backend
    RealRedis.driver_factory = staticmethod(lambda: RedisDriver(machine_server))
    redis_settings(RealRedis).TestCase("runTest").runTest()
