"""Hypothesis state machines driving the pool: over fake resources and over real Redis.

Rules are synchronous; each drives the pool inside an anyio blocking portal (one event loop in a
helper thread, asyncio or trio), so acquisitions, waiters, cancellations and hand-offs
interleave exactly as the rules say.

Maintenance runs as the concurrent task it is in production, not as an atomic step: a rule
starts a round (with a fake clock), and the round parks at each of its awaits (every create,
check and close it makes: a gate in the factory).  While it is parked, any other rule may run
(acquire, release, reset, resize, check, kill...), and a rule lets it take its next step.  So
every interleaving of maintenance with user calls that Hypothesis can find is explored, and
every one is reproducible.  After every step the invariants of DESIGN.md are checked, and
maintenance must not have crashed.
"""

from __future__ import annotations

import contextlib
import contextvars
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

from .backends import (
    UVLOOP,
    backend_params,
    needs_uvloop,
    start_portal,
)
from .fakes import FakeFactory, FakeResource

# What a factory's create() may raise in these machines (fake refusal, or a real one).
CREATE_ERRORS = (ConnectionRefusedError, anypool.ConnectError)

# True in the maintenance task only: its factory calls park at the machine's gate.
IN_MAINTENANCE = contextvars.ContextVar("IN_MAINTENANCE", default=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MaintenanceDriver:
    """Runs the pool's maintenance as its background task, one round per trigger, parking the
    round at every factory call it makes until the machine lets it go on."""

    def __init__(self) -> None:
        self.state = "idle"  # idle | running | parked
        self.where = ""
        self.rounds = 0
        self.crash: BaseException | None = None
        self.trigger: anyio.Event | None = None
        self.gate_open: anyio.Event | None = None
        self.free = False  # teardown: gates stay open

    async def run(self, upkeep: Any) -> None:
        """Replaces ``_health.run`` in the pool's task group."""
        IN_MAINTENANCE.set(True)
        while True:
            self.trigger = anyio.Event()
            self.state = "idle"
            await self.trigger.wait()
            self.state = "running"
            try:
                await health.maintenance_round(upkeep)
            except Exception as exc:
                # A bug: in production it propagates out of the pool's task group.  Here it is
                # kept for the invariant to report, and the pool stays up for the teardown.
                self.crash = exc
                self.state = "crashed"
                await anyio.sleep_forever()
            self.rounds += 1

    async def gate(self, where: str) -> None:
        if self.free or not IN_MAINTENANCE.get():
            return
        self.gate_open = anyio.Event()
        self.state, self.where = "parked", where
        await self.gate_open.wait()
        self.state, self.where = "running", ""

    def start_round(self) -> None:
        assert self.state == "idle" and self.trigger is not None
        self.state = "running"
        self.trigger.set()

    def step(self) -> None:
        assert self.state == "parked" and self.gate_open is not None
        self.state = "running"
        self.gate_open.set()

    def release_all(self) -> None:
        self.free = True
        if self.gate_open is not None:
            self.gate_open.set()


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
        self.gate: Any = None

    async def create(self) -> Connection:
        if self.gate is not None:
            await self.gate("create")
        connection = await super().create()
        self.created.append(connection)
        return connection

    async def check(self, resource: Connection) -> None:
        if self.gate is not None:
            await self.gate("check")
        await super().check(resource)

    async def close(self, resource: Connection) -> None:
        if self.gate is not None:
            await self.gate("close")
        await super().close(resource)


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


async def _sync(function: Any, *args: Any) -> Any:
    """Call a synchronous pool method in the pool's event loop (through the portal)."""
    return function(*args)


class PoolMachine(RuleBasedStateMachine):
    backend = "asyncio"
    driver_factory: Any = FakeDriver

    def __init__(self) -> None:
        super().__init__()
        self.maintenance = MaintenanceDriver()
        self._saved_run = health.run
        health.run = self.maintenance.run
        self.clock = Clock()
        self.driver = self.driver_factory()
        self.driver.factory.gate = self.maintenance.gate
        self._exit = contextlib.ExitStack()
        self.portal = self._exit.enter_context(start_portal(self.backend))
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
            # bounds a check and a close: far longer than any rule leaves maintenance parked
            close_timeout=60,
        )
        self._exit.enter_context(self.portal.wrap_async_context_manager(self.pool))
        self.leases: list[Lease[Any]] = []
        self.parked: list[Lease[Any]] = []  # leases the machine parked (park()), still its own
        self.waiters: list[dict[str, Any]] = []
        self.acquired = 0

    # helpers

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def settle(self) -> None:
        """Run the loop until every waiter has finished or is parked in the limiter's queue,
        nothing is being opened (a real connect takes many scheduling passes) except by a
        parked maintenance, and maintenance is idle or parked at a gate."""
        maintenance = self.maintenance

        async def until_quiet() -> None:
            with anyio.fail_after(10):
                while True:
                    for _ in range(5):
                        await anyio.lowlevel.checkpoint()
                    pending = sum(not w["future"].done() for w in self.waiters)
                    parked = self.pool._limiter.statistics().tasks_waiting
                    opening = self.pool._opening - (
                        maintenance.state == "parked" and maintenance.where == "create"
                    )
                    if (
                        pending == parked
                        and not opening
                        and maintenance.state in ("idle", "parked")
                    ):
                        return
                    if maintenance.state == "crashed":
                        return
                    await anyio.sleep(0.001)

        self.call(until_quiet)
        self.harvest()

    def usable_idle(self) -> int:
        """Idle resources an acquisition would take (alive, not expired, not retired)."""
        pool, factory = self.pool, self.driver.factory
        return sum(
            factory.looks_alive(e.resource)
            and e.expires_at > self.clock.now
            and e.generation == pool._generation
            for e in pool._idle
        )

    def harvest(self) -> None:
        # Parked leases the pool took back (another caller, maintenance, reset, resize, check)
        # are released: no longer the machine's.
        self.parked = [lease for lease in self.parked if self.pool.is_parked(lease)]
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

    def full(self) -> bool:
        """Whether a newcomer must wait: no free slot and none parked, or callers waiting."""
        limiter = self.pool._limiter
        # parked leases give their slots back, but a shrunk pool may still be over its size
        no_slot = limiter.borrowed_tokens - len(self.parked) >= limiter.total_tokens
        return bool(no_slot or self.pool.statistics().requests_waiting)

    @rule()
    def acquire_nowait(self) -> None:
        fails = self.driver.creates_fail()
        full = self.full()
        live_idle = self.usable_idle()
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
        self.harvest()

    @rule()
    def acquire_with_short_timeout(self) -> None:
        full = self.full()
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

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def park(self, data: st.DataObject) -> None:
        """A holder keeps a lease between uses (the multiplexing engine's idle lanes): the pool
        counts it as available, and takes it back at once if callers wait for a slot."""
        lease = data.draw(st.sampled_from(self.leases))
        self.leases.remove(lease)
        waiting = self.pool.statistics().requests_waiting
        self.call(_sync, self.pool.park, lease)
        if waiting:
            assert not self.pool.is_parked(lease)  # given to the waiters first
        else:
            self.parked.append(lease)
        self.settle()

    @precondition(lambda self: self.parked)
    @rule(data=st.data())
    def unpark(self, data: st.DataObject) -> None:
        lease = data.draw(st.sampled_from(self.parked))
        self.parked.remove(lease)
        if self.call(_sync, self.pool.unpark, lease):
            self.leases.append(lease)
        else:  # the pool took it back meanwhile (it is released)
            assert lease.released

    @rule()
    def reclaim_parked(self) -> None:
        count = self.call(_sync, self.pool.reclaim_parked)
        assert count == len(self.parked)
        self.settle()
        assert not self.parked

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

    # (with a lease parked, the pool would hand that out rather than create)
    @precondition(lambda self: isinstance(self.driver, FakeDriver) and not self.parked)
    @rule()
    def create_hangs_until_cancelled(self) -> None:
        """A create() that never returns, cancelled by its caller: its slot must come back."""
        pool = self.pool
        live_idle = self.usable_idle()
        if live_idle or pool._limiter.available_tokens <= 0 or self.waiters:
            return  # the acquisition would not create
        factory = self.driver.factory
        factory.hang, factory.unhang = True, self.call(anyio.Event)
        opening_before = self.call(lambda: pool._opening)  # maintenance may be parked opening
        box: dict[str, Any] = {}

        async def hanging(*, task_status: TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                box["lease"] = await pool.lease(timeout=None)

        future, scope = self.portal.start_task(hanging)

        async def until_opening() -> None:
            with anyio.fail_after(5):
                while pool._opening == opening_before:
                    await anyio.sleep(0.001)

        self.call(until_opening)
        self.call(scope.cancel)
        future.exception(timeout=5)  # the task ended (cancelled inside its own scope)
        factory.hang = False
        assert "lease" not in box
        assert self.call(lambda: pool._opening) == opening_before

    @precondition(lambda self: self.pool._idle)
    @rule(data=st.data())
    def kill_idle_resource(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(list(self.pool._idle)))
        self.call(self.driver.kill, entry.resource)

    @precondition(lambda self: self.maintenance.state == "idle")
    @rule(seconds=st.sampled_from([0, 10, 31, 101, 1001]))
    def advance_clock_and_start_maintenance(self, seconds: int) -> None:
        """Start a maintenance round in the background; it runs until its first await."""
        self.clock.now += seconds
        self.call(self.maintenance.start_round)
        self.settle()

    @precondition(lambda self: self.maintenance.state == "parked")
    @rule()
    def maintenance_step(self) -> None:
        """Let a parked maintenance round take its next step."""
        self.call(self.maintenance.step)
        self.settle()
        if self.maintenance.state == "idle":
            self.driver.after_create_failure()

    @rule(seconds=st.sampled_from([10, 31, 101, 1001]))
    def advance_clock(self, seconds: int) -> None:
        """Time passes while a round may be half done: what it decides next sees it."""
        self.clock.now += seconds

    @rule(max_size=st.integers(1, 4))
    def resize(self, max_size: int) -> None:
        self.call(partial(self.pool.resize, max_size=max_size))
        self.settle()

    @rule()
    def reset(self) -> None:
        self.call(self.pool.reset)
        self.settle()

    @rule()
    def run_maintenance_in_a_user_task(self) -> None:
        """A whole round called by a user (``Pool.run_maintenance``) while the background
        round may be parked half-way: two rounds interleaved."""
        self.call(self.pool.run_maintenance)
        self.driver.after_create_failure()
        self.settle()

    @rule()
    def check(self) -> None:
        self.call(self.pool.check)
        self.settle()

    # invariants

    @invariant()
    def maintenance_never_crashes(self) -> None:
        assert self.maintenance.crash is None, repr(self.maintenance.crash)

    @invariant()
    def accounting(self) -> None:
        def snapshot() -> dict[str, Any]:
            pool = self.pool
            return {
                "idle": [e.resource for e in pool._idle],
                "leased": [lease.resource for lease in pool._leased],
                # leases whose resource the pool is closing (a failed check, a retired return)
                "leased_closing": [
                    lease.resource for lease in pool._leased if lease.entry and lease.entry.closed
                ],
                "closing": [e.resource for e in pool._closing],
                "opening": pool._opening,
                "borrowed": pool._limiter.borrowed_tokens,
                "waiting": pool._limiter.statistics().tasks_waiting,
                "max_size": pool._max_size,
                "stats": pool.statistics(),
                "parked": [lease.resource for lease in pool._parked],
            }

        state = self.call(snapshot)
        idle, leased, borrowed = state["idle"], state["leased"], state["borrowed"]
        # every lease and every resource being opened holds exactly one token
        assert borrowed == len(leased) + state["opening"]
        # open never exceeds max_size (after a shrink, leases out beyond it are retired on return)
        if borrowed <= state["max_size"]:
            assert len(idle) + borrowed <= state["max_size"]
        # no waiter parked while a reusable idle resource exists, or a parked lease
        if state["waiting"]:
            assert not idle
            assert not state["parked"]
        # each resource in exactly one place (idle, leased, closing), none in use closed,
        # none lost
        closing = state["closing"]
        ids = [id(r) for r in idle + leased + closing]
        assert len(ids) == len(set(ids))
        in_use = [r for r in leased if not any(r is c for c in state["leased_closing"])]
        assert not any(self.driver.is_closed(r) for r in idle + in_use)
        if not state["opening"]:
            still_open = {id(r) for r in self.driver.open_resources()}
            assert {id(r) for r in idle + in_use} <= still_open <= set(ids)
        # the statistics agree with what the machine saw
        stats = state["stats"]
        assert stats.pool_size == len(idle) + len(leased) + state["opening"]
        assert stats.in_use == len(leased) - len(state["parked"])
        assert stats.pool_available == len(idle) + len(state["parked"])
        assert {id(r) for r in state["parked"]} == {id(lease.resource) for lease in self.parked}
        assert stats.requests_num == self.acquired
        assert {id(lease.resource) for lease in self.leases} <= set(ids)

    def teardown(self) -> None:
        try:
            self.call(self.maintenance.release_all)
            self.settle()
            for waiter in self.waiters:
                self.call(waiter["scope"].cancel)
            self.settle()
            for lease in self.parked:
                if self.call(_sync, self.pool.unpark, lease):
                    self.leases.append(lease)
            self.parked.clear()
            for lease in list(self.leases):
                self.call(self.pool.release, lease)
            self.leases.clear()
            self._exit.close()  # leaves the pool: waiters get PoolClosed, everything closes
            assert not self.waiters
            assert not self.driver.open_resources()
            stats = self.pool.statistics()
            assert (stats.pool_size, stats.in_use, stats.requests_waiting) == (0, 0, 0)
            assert self.maintenance.crash is None, repr(self.maintenance.crash)
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


class FakeUvloop(PoolMachine):
    backend = UVLOOP


class FakeTrio(PoolMachine):
    backend = "trio"


TestFakePoolAsyncio = fake_settings(FakeAsyncio).TestCase
TestFakePoolUvloop = needs_uvloop(fake_settings(FakeUvloop).TestCase)
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


@pytest.mark.parametrize("backend", backend_params())
def test_pool_machine_over_real_redis(backend: str, machine_server: RedisServer) -> None:
    class RealRedis(PoolMachine):
        pass

    RealRedis.backend = backend
    RealRedis.driver_factory = staticmethod(lambda: RedisDriver(machine_server))
    redis_settings(RealRedis).TestCase("runTest").runTest()
