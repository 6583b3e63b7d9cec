"""The generic pool over a fake factory, on asyncio and trio: every behaviour of issue 3."""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import Any

import anyio
import pytest

import anypool
from anypool import Health, Pool
from anypool import _health as health

from .fakes import FakeFactory, FakeResource

pytestmark = pytest.mark.anyio

QUIET = {"health_check_interval": None, "max_idle": None, "max_lifetime": None}


async def _no_maintenance(pool: Pool[Any]) -> None:
    """Stands in for the background task, so that a test drives the rounds by hand."""


@pytest.fixture
def manual_maintenance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "run", _no_maintenance)


def assert_balanced(pool: Pool[Any], factory: FakeFactory) -> None:
    """Nothing waiting, nothing leased, and every open resource accounted for as idle."""
    stats = pool.statistics()
    assert stats.requests_waiting == 0
    assert stats.in_use == 0
    assert stats.opening == 0
    assert pool._limiter.borrowed_tokens == 0
    assert sorted(r.id for r in factory.open_resources) == sorted(e.resource.id for e in pool._idle)


async def test_acquire_release_and_lifo_reuse() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=3, **QUIET) as pool:
        async with pool.acquire() as a, pool.acquire() as b:  # several leases in one task
            assert a is not b
        async with pool.acquire() as c:
            assert c is a  # b went back first, a last: LIFO hands out a
        stats = pool.statistics()
        assert (stats.requests_num, stats.connections_num, stats.pool_available) == (3, 2, 2)
        assert_balanced(pool, factory)
    assert not factory.open_resources  # leaving the pool closed everything


def test_a_pool_can_be_built_outside_an_event_loop() -> None:
    pool = Pool(FakeFactory(), max_size=2, **QUIET)  # e.g. at module level
    pool.resize(max_size=3)
    assert pool.statistics().pool_max == 3
    assert "new" in repr(pool)

    async def use() -> None:
        async with pool, pool.acquire() as resource:
            assert isinstance(resource, FakeResource)

    anyio.run(use)


async def test_use_before_enter_and_after_close_is_a_clear_error() -> None:
    pool = Pool(FakeFactory(), **QUIET)
    with pytest.raises(anypool.PoolClosed, match="not open yet"):
        await pool.lease()
    async with pool:
        pass
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        async with pool.acquire():
            pass
    with pytest.raises(RuntimeError, match="opens once"):
        async with pool:
            pass


async def test_waiters_are_served_first_come_first_served() -> None:
    factory = FakeFactory()
    order: list[int] = []
    async with Pool(factory, max_size=1, **QUIET) as pool:
        lease = await pool.lease()
        async with anyio.create_task_group() as tg:

            async def wait(n: int) -> None:
                async with pool.acquire():
                    order.append(n)

            for n in range(5):
                tg.start_soon(wait, n)
                await anyio.wait_all_tasks_blocked()
            assert pool.statistics().requests_waiting == 5
            await pool.release(lease)
        assert order == [0, 1, 2, 3, 4]
        assert pool.statistics().requests_queued == 5
        assert_balanced(pool, factory)


async def test_acquire_nowait_refuses_at_once_and_never_overtakes() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=1, **QUIET) as pool:
        held = await pool.lease()
        with pytest.raises(anypool.PoolExhausted) as info:
            async with pool.acquire_nowait():
                pass
        assert isinstance(info.value, anyio.WouldBlock)
        async with anyio.create_task_group() as tg:
            got: list[str] = []

            async def waiter() -> None:
                async with pool.acquire():
                    got.append("waiter")

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await pool.release(held)
            # the slot now belongs to the waiter, even before it runs: nowait must not take it
            with pytest.raises(anypool.PoolExhausted):
                await pool.lease(nowait=True)
        assert got == ["waiter"]
        assert_balanced(pool, factory)


async def test_timeout_and_max_waiting() -> None:
    async with Pool(FakeFactory(), max_size=1, max_waiting=1, **QUIET) as pool:
        held = await pool.lease()
        with pytest.raises(anypool.PoolTimeout, match=r"within 0.05s") as info:
            await pool.lease(timeout=0.05)
        assert pool.name in str(info.value)
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(pool.lease, timeout=None))
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(anypool.TooManyWaiters):
                await pool.lease(timeout=1)
            tg.cancel_scope.cancel()
        await pool.release(held)
        stats = pool.statistics()
        assert stats.requests_errors == 2
        assert stats.requests_waiting == 0


async def test_waiter_cancelled_at_hand_off_returns_the_slot() -> None:
    """The releaser hands the slot to the waiter; the waiter is cancelled before it runs."""
    factory = FakeFactory()
    async with Pool(factory, max_size=1, **QUIET) as pool:
        held = await pool.lease()
        outcome: list[str] = []
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def waiter() -> None:
                with scope:
                    lease = await pool.lease(timeout=None)
                    outcome.append("acquired")
                    await pool.release(lease)
                outcome.append("cancelled" if scope.cancelled_caught else "done")

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await pool.release(held)  # hand-off: the waiter owns the token now...
            scope.cancel()  # ...and is cancelled before it could run
        assert outcome == ["cancelled"]
        assert_balanced(pool, factory)
        async with pool.acquire_nowait() as resource:  # the slot came back
            assert resource is held.resource


async def test_many_tasks_random_deadlines_leave_every_slot_free() -> None:
    factory = FakeFactory()
    rng = random.Random(1234)
    async with Pool(factory, max_size=4, **QUIET) as pool:
        async with anyio.create_task_group() as tg:

            async def user() -> None:
                with anyio.move_on_after(rng.uniform(0, 0.02)):
                    async with pool.acquire(timeout=None) as resource:
                        await anyio.sleep(rng.uniform(0, 0.005))
                        resource.owes = rng.random() < 0.1

            for _ in range(500):
                tg.start_soon(user)
        assert_balanced(pool, factory)
        assert len(factory.open_resources) <= 4


async def test_release_with_replies_owed_closes_and_frees_the_slot() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=1, **QUIET) as pool:
        async with pool.acquire() as first:
            first.owes = True
        assert first.closed
        async with pool.acquire() as second:
            assert second is not first
        assert pool.statistics().returns_bad == 1
        assert_balanced(pool, factory)


async def test_cancelled_while_holding_still_returns() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=1, **QUIET) as pool:
        with anyio.move_on_after(0.01):
            async with pool.acquire():
                await anyio.sleep(10)
        assert_balanced(pool, factory)
        assert pool.statistics().pool_available == 1


async def test_double_release_is_refused() -> None:
    async with Pool(FakeFactory(), **QUIET) as pool:
        lease = await pool.lease()
        await pool.release(lease)
        with pytest.raises(RuntimeError, match="already released"):
            await pool.release(lease)


async def test_dead_idle_resource_is_skipped() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=2, **QUIET) as pool:
        async with pool.acquire() as first:
            pass
        first.dead = True
        async with pool.acquire() as second:
            assert second is not first
        assert first.closed
        assert pool.statistics().connections_lost == 1


async def test_close_wakes_waiters_and_closes_everything() -> None:
    factory = FakeFactory()
    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        async with Pool(factory, max_size=1, close_timeout=0.2, **QUIET) as pool:
            held = await pool.lease()

            async def waiter() -> None:
                try:
                    await pool.lease(timeout=None)
                except anypool.PoolClosed as exc:
                    errors.append(exc)

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
        # left the pool with a lease still out: it was closed after close_timeout
        assert held.resource.closed
        await pool.release(held)  # returning it later is harmless
    assert len(errors) == 1
    assert not factory.open_resources


async def test_close_waits_for_leases_to_come_back() -> None:
    factory = FakeFactory()
    async with anyio.create_task_group() as tg:
        async with Pool(factory, max_size=2, close_timeout=5, **QUIET) as pool:
            lease = await pool.lease()

            async def give_back_later() -> None:
                await anyio.sleep(0.05)
                await pool.release(lease)

            tg.start_soon(give_back_later)
        assert lease.released  # the exit waited for it
    assert not factory.open_resources


async def test_min_size_prewarm_and_wait() -> None:
    factory = FakeFactory()
    async with Pool(factory, min_size=3, max_size=5, **QUIET) as pool:
        await pool.wait(timeout=5)
        assert pool.statistics().pool_size == 3
        assert pool.statistics().pool_available == 3


async def test_wait_fails_fast_when_resources_cannot_be_made() -> None:
    factory = FakeFactory()
    factory.fail_always = True
    async with Pool(factory, min_size=1, **QUIET) as pool:
        with pytest.raises(anypool.PoolTimeout, match="connection refused"):
            await pool.wait(timeout=0.3)


async def test_resize(manual_maintenance: None) -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=1, **QUIET) as pool:
        await pool.lease()  # hold the only slot
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(pool.lease, timeout=None))
            await anyio.wait_all_tasks_blocked()
            pool.resize(max_size=2)  # growing lets the waiter through
        assert pool.statistics().in_use == 2
        for lease in list(pool._leased):
            await pool.release(lease)
        assert pool.statistics().pool_available == 2
        pool.resize(max_size=1)
        assert pool.statistics().pool_size == 1  # the surplus left the idle list at once...
        await anyio.wait_all_tasks_blocked()
        assert len(factory.open_resources) == 1  # ...and was closed in the pool's task group
        with pytest.raises(anypool.ConfigError, match="min_size"):
            pool.resize(min_size=5)
        assert pool.config.max_size == 1


async def test_shrinking_retires_leased_resources_on_return() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=2, **QUIET) as pool:
        a, b = await pool.lease(), await pool.lease()
        pool.resize(max_size=1)
        await pool.release(a)
        assert a.resource.closed  # would have made 2 open with max_size 1
        await pool.release(b)
        assert not b.resource.closed
        assert pool.statistics().returns_bad == 0  # retired, not bad


async def test_reset_retires_everything() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=3, **QUIET) as pool:
        leased = await pool.lease()
        async with pool.acquire() as idle_one:
            pass
        await pool.reset()
        assert idle_one.closed
        await pool.release(leased)
        assert leased.resource.closed
        async with pool.acquire() as fresh:
            assert fresh not in (idle_one, leased.resource)


async def test_check_closes_broken_idle_resources() -> None:
    factory = FakeFactory()
    async with Pool(factory, max_size=3, **QUIET) as pool:
        leases = [await pool.lease() for _ in range(3)]
        for lease in leases:
            await pool.release(lease)
        leases[0].resource.broken = True
        await pool.check()
        stats = pool.statistics()
        assert (stats.health_checks, stats.health_check_failures) == (3, 1)
        assert leases[0].resource.closed
        assert stats.pool_available == 2
        assert pool.health is Health.DEGRADED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_keepalive_checks_only_due_resources_oldest_first(manual_maintenance: None) -> None:
    factory, clock = FakeFactory(), Clock()
    async with Pool(
        factory, max_size=3, clock=clock, health_check_interval=30, max_idle=None,
        max_lifetime=None,
    ) as pool:  # fmt: skip
        a, b = await pool.lease(), await pool.lease()
        await pool.release(a)
        clock.now += 20
        await pool.release(b)
        clock.now += 15  # a unused for 35 s (due), b for 15 s (not due)
        checks = factory.checks
        await pool.run_maintenance()
        assert factory.checks == checks + 1
        assert pool._idle[-1].resource is a.resource  # checked: now the most recently used


async def test_expiry_by_idle_time_and_lifetime(manual_maintenance: None) -> None:
    factory, clock = FakeFactory(), Clock()
    async with Pool(
        factory, min_size=1, max_size=3, clock=clock, rand=lambda: 0.0, max_idle=60,
        max_lifetime=600, health_check_interval=None,
    ) as pool:  # fmt: skip
        await pool.run_maintenance()  # the refill opens min_size
        assert pool.statistics().pool_size == 1
        extra = [await pool.lease() for _ in range(3)]
        for lease in extra:
            await pool.release(lease)
        assert pool.statistics().pool_size == 3
        clock.now += 61
        await pool.run_maintenance()
        assert pool.statistics().pool_size == 1  # idle past max_idle, down to min_size
        clock.now += 600
        await pool.run_maintenance()  # past max_lifetime: replaced, min_size kept
        stats = pool.statistics()
        assert stats.pool_size == 1
        assert stats.expired == 3
        assert stats.connections_num == 4


async def test_lifetime_jitter_spreads_expiry() -> None:
    factory, clock = FakeFactory(), Clock()
    values = iter([0.0, 1.0])
    async with Pool(
        factory, max_size=2, clock=clock, rand=lambda: next(values), max_lifetime=100,
        lifetime_jitter=0.1, health_check_interval=None, max_idle=None,
    ) as pool:  # fmt: skip
        a, b = await pool.lease(), await pool.lease()
        assert (a.entry.expires_at, b.entry.expires_at) == (clock.now + 100, clock.now + 90)
        await pool.release(a)
        await pool.release(b)


async def test_breaker_opens_fails_fast_then_heals() -> None:
    factory, clock = FakeFactory(), Clock()  # the breaker's window: no real-time race
    factory.fail_always = True
    async with Pool(
        factory, max_size=4, breaker=anypool.BreakerPolicy(3, 0.2), clock=clock, **QUIET
    ) as pool:
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                await pool.lease()
        assert pool.health is Health.UNAVAILABLE
        calls = factory.create_calls
        with pytest.raises(anypool.PoolUnavailable, match="connection refused"):
            await pool.lease()
        assert factory.create_calls == calls  # failed fast: no connect attempted
        clock.now += 0.1
        with pytest.raises(anypool.PoolUnavailable):  # still within the reset timeout
            await pool.lease()
        assert factory.create_calls == calls
        factory.fail_always = False
        clock.now += 0.15  # past the reset timeout: one probe goes through
        async with pool.acquire():
            pass
        assert pool.health is Health.HEALTHY
        stats = pool.statistics()
        assert stats.breaker_state == "closed"
        assert stats.connections_errors == 3
        assert stats.health_transitions == 3  # healthy -> degraded -> unavailable -> healthy


async def test_health_transitions_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    factory = FakeFactory()
    factory.fail_always = True
    caplog.set_level(logging.INFO, logger="anypool.pool")
    async with Pool(factory, breaker=anypool.BreakerPolicy(2, 60), **QUIET) as pool:
        for _ in range(6):
            with pytest.raises((ConnectionRefusedError, anypool.PoolUnavailable)):
                await pool.lease()
    messages = [r.getMessage() for r in caplog.records if "health" in r.getMessage()]
    assert messages == [
        f"{pool.name}: health healthy -> degraded",
        f"{pool.name}: health degraded -> unavailable",
    ]


async def test_refill_backs_off_and_recovers(manual_maintenance: None) -> None:
    factory, clock = FakeFactory(), Clock()
    factory.fail_next = 2
    async with Pool(
        factory, min_size=2, max_size=2, clock=clock, rand=lambda: 0.5,
        reconnect_backoff=anypool.BackoffPolicy(1.0, 8.0, 0.0), **QUIET,
    ) as pool:  # fmt: skip
        assert await pool.run_maintenance() == pytest.approx(1.0)
        assert await pool.run_maintenance() == pytest.approx(1.0)  # not due yet
        clock.now += 1.0
        assert await pool.run_maintenance() == pytest.approx(2.0)  # second failure
        clock.now += 2.0
        await pool.run_maintenance()
        stats = pool.statistics()
        assert stats.pool_size == 2
        assert stats.reconnect_attempts == 4
        assert stats.connections_errors == 2


async def test_leak_detection_warns_once_with_task_and_stack(
    caplog: pytest.LogCaptureFixture, manual_maintenance: None
) -> None:
    factory, clock = FakeFactory(), Clock()
    caplog.set_level(logging.WARNING, logger="anypool.health")
    async with Pool(factory, clock=clock, leak_threshold=10, **QUIET) as pool:
        lease = await pool.lease()
        clock.now += 11
        await pool.run_maintenance()
        await pool.run_maintenance()
        await pool.release(lease)
    leaks = [r.getMessage() for r in caplog.records if "leased by task" in r.getMessage()]
    assert len(leaks) == 1
    assert "test_leak_detection_warns_once_with_task_and_stack" in leaks[0]
    assert pool.statistics().leaks_detected == 1


async def test_errors_from_the_block_come_out_unwrapped() -> None:
    """An exception raised inside `async with pool:` is not wrapped in an ExceptionGroup."""
    with pytest.raises(KeyError, match="user error"):
        async with Pool(FakeFactory(), **QUIET):
            raise KeyError("user error")
    with anyio.move_on_after(0.05) as scope:  # and cancellation passes through as usual
        async with Pool(FakeFactory(), **QUIET):
            await anyio.sleep(10)
    assert scope.cancelled_caught


async def test_a_bug_in_maintenance_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(pool: Pool[Any], now: float) -> None:
        raise ZeroDivisionError("a bug in anypool")

    monkeypatch.setattr(health, "_report_leaks", broken)
    with pytest.raises(BaseExceptionGroup) as info:
        async with Pool(FakeFactory(), **QUIET):
            await anyio.sleep(1)
    assert info.group_contains(ZeroDivisionError)


async def test_cancelled_create_frees_its_slot() -> None:
    factory = FakeFactory()
    factory.hang = True
    async with Pool(factory, max_size=1, **QUIET) as pool:
        with anyio.move_on_after(0.05):
            await pool.lease()
        assert pool.statistics().opening == 0
        factory.hang = False
        async with pool.acquire_nowait() as resource:
            assert isinstance(resource, FakeResource)


async def test_statistics_and_repr() -> None:
    factory = FakeFactory()
    async with Pool(factory, name="stats-pool", min_size=0, max_size=4, **QUIET) as pool:
        async with pool.acquire():
            assert "in_use=1" in repr(pool)
        record = pool.statistics()
        data = record.as_dict()
        for key in (
            "pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting",
            "requests_num", "requests_queued", "requests_wait_ms", "requests_errors",
            "returns_bad", "connections_num", "connections_ms", "connections_errors",
            "connections_lost", "usage_ms", "health", "breaker_state", "reconnect_attempts",
            "leaks_detected", "health_checks", "health_check_failures",
        ):  # fmt: skip
            assert key in data
        assert data["pool_max"] == 4
        assert data["health"] == "healthy"
        with pytest.raises(AttributeError):
            record.pool_max = 5  # type: ignore[misc]
        assert repr(pool).startswith("<Pool stats-pool open")


async def test_a_lease_released_to_another_pool_is_refused_untouched() -> None:
    """Found by the adversarial review: pool B took pool A's resource into its idle set."""
    factory_a, factory_b = FakeFactory(), FakeFactory()
    async with Pool(factory_a, max_size=1, **QUIET) as a, Pool(factory_b, max_size=1, **QUIET) as b:
        lease = await a.lease()
        with pytest.raises(RuntimeError, match="not from"):
            await b.release(lease)
        assert b.statistics().pool_available == 0
        await a.release(lease)  # still releasable where it belongs
        assert_balanced(a, factory_a)
        assert_balanced(b, factory_b)


async def test_probe_now_ends_the_breaker_wait_at_once() -> None:
    factory = FakeFactory()
    factory.fail_always = True
    async with Pool(factory, max_size=2, breaker=anypool.BreakerPolicy(2, 3600), **QUIET) as pool:
        for _ in range(2):
            with pytest.raises(ConnectionRefusedError):
                await pool.lease()
        with pytest.raises(anypool.PoolUnavailable):
            await pool.lease()
        factory.fail_always = False
        pool.probe_now()  # without it, the next try would be in an hour
        async with pool.acquire():
            pass
        assert pool.health is Health.HEALTHY
        assert pool.statistics().breaker_state == "closed"
