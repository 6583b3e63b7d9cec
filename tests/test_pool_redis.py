"""The pool over real Redis connections, on asyncio and trio: the named regressions of issue 3."""

from __future__ import annotations

import math
import random
import time

import anyio
import pytest

import anypool
from anypool import BackoffPolicy, BreakerPolicy, Health, Pool, RedisConfig
from anypool._connection import Connection, ConnectionFactory
from anypool.testing import RedisServer

from .settle import at_rest

pytestmark = pytest.mark.anyio


def redis_pool(config: RedisConfig, **options: object) -> Pool[Connection]:
    options.setdefault("health_check_interval", None)
    return Pool(ConnectionFactory(config), **options)  # type: ignore[arg-type]


async def test_cancelled_blpop_gives_its_slot_back(config: RedisConfig) -> None:
    """The coredis 6.9 leak: max_size=1, a BLPOP cancelled by move_on_after, then a GET."""
    async with redis_pool(config, max_size=1) as pool:
        with anyio.move_on_after(0.1) as scope:
            async with pool.acquire() as conn:
                await conn.execute("BLPOP", "pool:regression:jobs", 0)
        assert scope.cancelled_caught
        assert conn.closed  # a reply was owed: never reused
        started = time.monotonic()
        async with pool.acquire(timeout=1) as conn:
            assert await conn.execute("SET", "pool:regression:k", "v") == b"OK"
            assert await conn.execute("GET", "pool:regression:k") == b"v"
        assert time.monotonic() - started < 1.0
        stats = pool.statistics()
        assert (stats.in_use, stats.requests_waiting, stats.returns_bad) == (0, 0, 1)


async def test_waiter_cancelled_at_hand_off_returns_the_connection(config: RedisConfig) -> None:
    async with redis_pool(config, max_size=1) as pool:
        held = await pool.lease()
        outcome: list[str] = []
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def waiter() -> None:
                with scope:
                    async with pool.acquire(timeout=None):
                        outcome.append("acquired")
                outcome.append("cancelled" if scope.cancelled_caught else "done")

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await pool.release(held)
            scope.cancel()
        assert outcome == ["cancelled"]
        async with pool.acquire_nowait() as conn:
            assert conn is held.resource  # the same connection came back to idle
            assert await conn.execute("PING") == b"PONG"


async def test_random_deadlines_never_mismatch_and_free_every_slot(config: RedisConfig) -> None:
    rng = random.Random(42)
    async with redis_pool(config, max_size=4) as pool:
        async with pool.acquire() as conn:
            await conn.execute_many([("SET", f"pool:rd:{i}", f"value-{i}") for i in range(500)])
        mismatches: list[tuple[int, object]] = []
        completed = 0

        async def user(i: int) -> None:
            nonlocal completed
            # every fifth user has no deadline, so completions are certain on any machine
            deadline = math.inf if i % 5 == 0 else rng.uniform(0.0, 0.05)
            with anyio.move_on_after(deadline):
                async with pool.acquire(timeout=None) as conn:
                    reply = await conn.execute("GET", f"pool:rd:{i}")
                    if reply != f"value-{i}".encode():
                        mismatches.append((i, reply))
                    completed += 1

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(user, i)
        assert mismatches == []
        assert completed >= 100
        stats = pool.statistics()
        assert (stats.in_use, stats.opening, stats.requests_waiting) == (0, 0, 0)
        assert pool._limiter.borrowed_tokens == 0
        assert stats.pool_size <= 4


async def test_server_killed_breaker_opens_then_pool_heals_on_its_own() -> None:
    with RedisServer() as server:
        config = RedisConfig.from_url(server.url, connect_timeout=1.0)
        async with redis_pool(
            config,
            min_size=2,
            max_size=4,
            breaker=BreakerPolicy(failure_threshold=3, reset_timeout=2.0),
            reconnect_backoff=BackoffPolicy(base=0.05, cap=0.2, jitter=0.1),
            health_check_interval=0.2,
        ) as pool:
            await pool.wait(timeout=5)
            server.kill()
            # every acquire fails with a clear error until the breaker opens...
            with anyio.fail_after(10):
                while pool.health is not Health.UNAVAILABLE:
                    try:
                        async with pool.acquire(timeout=1) as conn:
                            await conn.execute("PING")
                    except (anypool.ConnectionError, anypool.PoolUnavailable):
                        pass
            # ...then fail fast, naming the cause
            before = pool.statistics()
            with pytest.raises(anypool.PoolUnavailable, match="refused"):
                async with pool.acquire(timeout=5):
                    pass
            after = pool.statistics()  # failed fast: no connection tried
            assert after.connections_errors == before.connections_errors
            assert after.connections_num == before.connections_num
            assert pool.statistics().breaker_state in ("open", "half_open")
            server.restart()  # same port
            # the pool heals by itself: the breaker probes, the refill restores min_size
            with anyio.fail_after(10):
                while pool.health is not Health.HEALTHY or pool.statistics().pool_size < 2:
                    await anyio.sleep(0.05)
            async with pool.acquire(timeout=2) as conn:
                assert await conn.execute("PING") == b"PONG"
            stats = pool.statistics()
            assert stats.connections_errors >= 3
            assert stats.reconnect_attempts >= 1
            assert stats.health_transitions >= 2


async def test_keepalive_replaces_a_connection_killed_while_idle(config: RedisConfig) -> None:
    async with redis_pool(config, min_size=1, max_size=2, health_check_interval=0.1) as pool:
        await pool.wait(timeout=5)
        async with pool.acquire() as conn:
            victim_id = conn.client_id
        admin = await Connection.connect(config)
        await admin.execute("CLIENT", "KILL", "ID", victim_id)
        await admin.aclose()
        with anyio.fail_after(5):
            while pool.statistics().health_check_failures + pool.statistics().connections_lost < 1:
                await anyio.sleep(0.05)
        await pool.wait(timeout=5)  # min_size refilled
        async with pool.acquire() as conn:
            assert conn.client_id != victim_id
            assert await conn.execute("PING") == b"PONG"


# --- issue 10: maintenance interleaved with user calls ----------------------------------------


async def test_reset_while_maintenance_closes_idle_connections_keeps_the_pool(
    redis_server: RedisServer,
) -> None:
    """Issue 10, defect 1: reset() and maintenance's expiry both took the same idle entries;
    maintenance's ``idle.remove()`` raised ValueError out of the pool's task group.  (Eight
    connections, one per concurrent PING: auto-pipelining would share one.)"""
    async with anypool.RedisPool.from_url(
        redis_server.url, max_size=8, autopipeline=False
    ) as redis:
        for _ in range(5):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(redis.ping)
            assert redis.statistics().pool_available == 8
            await redis.pool.reset()
            assert await redis.ping()
        stats = redis.statistics()
        assert (stats.in_use, stats.opening, stats.requests_waiting) == (0, 0, 0)


async def test_max_lifetime_expiry_under_load_keeps_the_pool(redis_server: RedisServer) -> None:
    """Issue 10, defect 1: connections expire (max_lifetime) while idle between bursts of use;
    maintenance and the users both retire the same stale entries."""
    async with anypool.RedisPool.from_url(
        redis_server.url, max_size=8, max_lifetime=0.03, lifetime_jitter=0.0,
        health_check_interval=0.05,
    ) as redis:  # fmt: skip

        async def user(n: int) -> None:
            for i in range(40):
                assert await redis.ping()
                if (i + n) % 4 == 0:
                    await anyio.sleep(0.01)

        for _ in range(10):
            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(user, n)
        stats = await at_rest(redis.statistics)  # health checks lease for a moment
        assert stats.expired > 0  # connections did expire


async def test_background_work_never_draws_from_the_global_random_stream() -> None:
    """Jitter (connection lifetimes, reconnect backoff, pub/sub and cluster retries) comes from
    anypool's own stream: an application that seeds ``random`` (or Hypothesis, which checks
    that nothing advances it during a draw) sees it untouched by the pool's background work."""
    from anypool._backoff import backoff_delay
    from anypool._compat import default_retry

    random.seed(1234)
    before = random.getstate()
    with RedisServer() as server:
        config = RedisConfig.from_url(server.url, connect_timeout=1.0)
        async with redis_pool(
            config,
            min_size=2,
            max_size=4,
            max_lifetime=600.0,
            lifetime_jitter=0.5,
            reconnect_backoff=BackoffPolicy(base=0.01, cap=0.05, jitter=0.5),
            health_check_interval=0.05,
        ) as pool:
            await pool.wait(timeout=5)
            server.kill()
            with anyio.fail_after(30):  # the refill retries (with jitter) until it has tried
                while pool.statistics().reconnect_attempts < 3:
                    try:
                        async with pool.acquire(timeout=1) as conn:
                            await conn.execute("PING")
                    except (anypool.ConnectionError, anypool.PoolUnavailable):
                        await anyio.sleep(0.01)
            server.restart()
            with anyio.fail_after(30):  # new connections, each with a jittered lifetime
                while pool.health is not Health.HEALTHY or pool.statistics().pool_size < 2:
                    await anyio.sleep(0.05)
    assert backoff_delay(3, base=1.0, cap=10.0, jitter=0.5) > 0
    # the command retry anypool picks when given retry_on_error/retry_on_timeout alone
    assert default_retry()._backoff.compute(3) >= 0
    assert random.getstate() == before, "anypool advanced the application's random stream"
