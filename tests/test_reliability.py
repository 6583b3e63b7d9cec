"""The bad day, on asyncio and trio: cancellation storms, server crashes and hangs, network
faults, hostile replies, password hygiene, and resource hygiene.

CI runs the fast profile; ``ANYPOOL_SOAK=1`` (``nox -s soak``) runs the same tests longer.
Every loop is bounded in count and time, and all traffic stays on loopback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections import Counter

import anyio
import pytest

import anypool
from anypool import BackoffPolicy, BreakerPolicy, Health, RedisConfig, RedisPool
from anypool._connection import Connection
from anypool.testing import FaultProxy, RedisServer, ScriptedServer

from .conftest import open_fds
from .settle import at_rest, client_at_rest

pytestmark = pytest.mark.anyio

SOAK = os.environ.get("ANYPOOL_SOAK") == "1"
STORM_TASKS = 1000
STORM_OPS_PER_TASK = 300 if SOAK else 100  # >= 100,000 operations per backend
CRASH_LOAD_SECONDS = 10.0 if SOAK else 4.0
HYGIENE_CYCLES = 5000 if SOAK else 1000


# --- cancellation storm -----------------------------------------------------------------------


async def test_cancellation_storm_never_mismatches(redis_server: RedisServer) -> None:
    """1,000 tasks with random deadlines over GETs and blocking BLPOPs, max_size=8: every GET
    returns its own key's value or is cancelled; every slot comes back."""
    rng = random.Random(2026)
    # no health checks: every token the limiter lends at the end is a caller's (see below)
    async with RedisPool.from_url(
        redis_server.url, max_size=8, timeout=None, health_check_interval=None
    ) as redis:
        await redis.mset({f"storm:{i}": f"value-{i}" for i in range(1000)})
        counts: Counter[str] = Counter()

        async def worker() -> None:
            for _ in range(STORM_OPS_PER_TASK):
                i = rng.randrange(1000)
                # 5% have no deadline (they must complete) and 5% an expired one (they must be
                # cancelled), whatever the machine's speed; of the rest, half the deadlines cut
                # commands short and half mostly let them finish.
                kind = rng.random()
                if kind < 0.05:
                    deadline, counts["must_complete"] = math.inf, counts["must_complete"] + 1
                elif kind < 0.10:
                    deadline, counts["must_cancel"] = 0.0, counts["must_cancel"] + 1
                elif kind < 0.55:
                    deadline = rng.uniform(0, 0.005)
                else:
                    deadline = rng.uniform(0.05, 0.5)
                with anyio.move_on_after(deadline) as scope:
                    if rng.random() < 0.1:
                        await redis.blpop([f"storm:empty:{i}"], timeout=0.01)
                        counts["blpop"] += 1
                    else:
                        value = await redis.get(f"storm:{i}")
                        counts["get"] += 1
                        if value != f"value-{i}".encode():
                            counts["mismatch"] += 1
                counts["cancelled"] += scope.cancelled_caught

        async with anyio.create_task_group() as tg:
            for _ in range(STORM_TASKS):
                tg.start_soon(worker)
        operations = STORM_TASKS * STORM_OPS_PER_TASK
        assert operations >= 100_000
        assert counts["mismatch"] == 0
        assert counts["get"] + counts["blpop"] >= counts["must_complete"] > 0
        assert counts["cancelled"] >= counts["must_cancel"] > 0
        stats, _ = await client_at_rest(redis)  # cancelled callers' replies drained
        redis.pool.reclaim_parked()  # the shared connection, kept between commands
        assert redis.pool._limiter.borrowed_tokens == 0
        assert stats.pool_size <= 8
        logging.getLogger("anypool.reliability").warning(
            "storm: %d operations, %s", operations, dict(counts)
        )


# --- the server crashes, or hangs -------------------------------------------------------------


async def test_server_crash_under_load_heals_by_itself() -> None:
    with RedisServer() as server:
        async with RedisPool.from_url(
            server.url, min_size=2, max_size=8, timeout=2, connect_timeout=5.0,
            breaker=BreakerPolicy(failure_threshold=3, reset_timeout=0.3),
            reconnect_backoff=BackoffPolicy(0.05, 0.3, 0.2), health_check_interval=0.2,
        ) as redis:  # fmt: skip
            await redis.mset({f"crash:{i}": f"v{i}" for i in range(100)})
            errors: Counter[str] = Counter()
            ok = mismatches = 0
            last_error_at = 0.0
            deadline = time.monotonic() + CRASH_LOAD_SECONDS

            async def load(n: int) -> None:
                nonlocal ok, mismatches, last_error_at
                rng = random.Random(n)
                while time.monotonic() < deadline:
                    i = rng.randrange(100)
                    try:
                        with anyio.fail_after(5):  # nothing may hang
                            value = await redis.get(f"crash:{i}")
                        # the restarted server is empty (persistence is off): None is fine,
                        # another key's value never is
                        if value not in (f"v{i}".encode(), None):
                            mismatches += 1
                        ok += 1
                    except (anypool.ConnectionError, anypool.PoolUnavailable,
                            anypool.PoolTimeout) as exc:  # fmt: skip
                        errors[type(exc).__name__] += 1
                        last_error_at = time.monotonic()
                        await anyio.sleep(0.01)

            restarted_at = 0.0

            async def chaos() -> None:
                nonlocal restarted_at
                await anyio.sleep(CRASH_LOAD_SECONDS / 3)
                server.kill()
                await anyio.sleep(1.0)
                await anyio.to_thread.run_sync(server.restart)
                restarted_at = time.monotonic()  # measured, not estimated from the schedule

            async with anyio.create_task_group() as tg:
                for n in range(16):
                    tg.start_soon(load, n)
                tg.start_soon(chaos)
            assert restarted_at > 0
            assert mismatches == 0
            assert sum(errors.values()) > 0  # the crash was felt...
            assert last_error_at - restarted_at < 2.0  # ...and healed within 2 s of the restart
            assert ok > 0
            with anyio.fail_after(5):
                while redis.health is not Health.HEALTHY:
                    await anyio.sleep(0.05)
            await at_rest(redis.statistics, opening=False)  # health checks lease for a moment
            logging.getLogger("anypool.reliability").warning(
                "crash: %d ok, errors %s, healed %.2fs after restart",
                ok, dict(errors), max(0.0, last_error_at - restarted_at),
            )  # fmt: skip


async def test_hung_server_times_out_opens_the_breaker_then_closes_it() -> None:
    with RedisServer() as server:
        async with RedisPool.from_url(
            server.url, socket_timeout=0.2, connect_timeout=0.2, max_size=4, timeout=1,
            breaker=BreakerPolicy(failure_threshold=2, reset_timeout=2.0),
            health_check_interval=None,
        ) as redis:  # fmt: skip
            assert await redis.ping()
            server.pause()
            try:
                started = time.monotonic()
                with pytest.raises(anypool.TimeoutError):
                    await redis.get("hung")
                assert time.monotonic() - started < 1.0  # at socket_timeout, not forever
                with anyio.fail_after(10):
                    while redis.health is not Health.UNAVAILABLE:
                        with contextlib.suppress(
                            anypool.ConnectionError, anypool.TimeoutError, anypool.PoolUnavailable
                        ):
                            await redis.get("hung")
                before = redis.statistics()
                with pytest.raises(anypool.PoolUnavailable):
                    await redis.get("hung")
                after = redis.statistics()  # failed fast: nothing tried on the hung server
                assert (after.connections_num, after.connections_errors) == (
                    before.connections_num, before.connections_errors,
                )  # fmt: skip
            finally:
                server.resume()
            with anyio.fail_after(10):
                while True:
                    try:
                        assert await redis.ping()
                        break
                    except (anypool.ConnectionError, anypool.PoolUnavailable, anypool.TimeoutError):
                        await anyio.sleep(0.05)
            assert redis.health is Health.HEALTHY
            assert redis.statistics().breaker_state == "closed"


# --- network faults through the proxy ---------------------------------------------------------


async def test_latency_reset_blackhole_and_half_open(redis_server: RedisServer) -> None:
    async with FaultProxy(redis_server.port) as proxy, RedisPool.from_url(
        proxy.url, socket_timeout=1.0, connect_timeout=2.0, max_size=4,
        health_check_interval=None,
    ) as redis:  # fmt: skip
        await redis.set("fault:k", "v")
        proxy.latency = 0.05  # slower, still correct
        assert await redis.get("fault:k") == b"v"
        proxy.latency = 3.0  # past socket_timeout: a clear timeout, the connection closed
        with pytest.raises(anypool.TimeoutError):
            await redis.get("fault:k")
        proxy.heal()
        async with redis.acquire() as conn:  # a reset mid-command
            async with anyio.create_task_group() as tg:

                async def reset_soon() -> None:
                    await anyio.sleep(0.05)
                    await proxy.reset_all()

                tg.start_soon(reset_soon)
                with pytest.raises(anypool.ConnectionLost):
                    await conn.execute_command("BLPOP", "fault:nothing", 0)
        assert await redis.get("fault:k") == b"v"  # the pool replaced it
        proxy.blackhole = True  # new connections accepted and never answered
        await redis.pool.reset()  # force new connections
        with pytest.raises(anypool.ConnectTimeout):
            await redis.get("fault:k")
        proxy.heal()
        assert await redis.get("fault:k") == b"v"
        proxy.cut("downstream")  # half-open: requests arrive, replies never come back
        with pytest.raises(anypool.TimeoutError):
            await redis.get("fault:k")
        proxy.heal()
        assert await redis.get("fault:k") == b"v"
        stats = redis.statistics()
        assert (stats.in_use, stats.requests_waiting, stats.opening) == (0, 0, 0)


async def test_keepalive_finds_a_dead_idle_connection(redis_server: RedisServer) -> None:
    async with (
        FaultProxy(redis_server.port) as proxy,
        RedisPool.from_url(
            proxy.url, min_size=1, max_size=2, health_check_interval=0.1, socket_timeout=0.2
        ) as redis,
    ):
        await redis.pool.wait(timeout=5)
        # The idle connection silently stops answering; connections made later (the refill's
        # replacement) are not cut, so the replacement cannot race the fault.
        proxy.cut("downstream", new_connections=False)
        with anyio.fail_after(5):
            while redis.statistics().health_check_failures < 1:
                await anyio.sleep(0.05)
        await redis.pool.wait(timeout=5)  # replaced by the refill, through the same proxy
        assert await redis.ping()
        assert redis.statistics().connections_num >= 2


async def test_corrupted_reply_is_a_protocol_error_and_the_connection_is_dropped(
    redis_server: RedisServer,
) -> None:
    async with FaultProxy(redis_server.port) as proxy:
        async with RedisPool.from_url(proxy.url, max_size=1) as redis:
            await redis.set("corrupt:k", "v")
            proxy.corrupt_next_reply(b"?this is not RESP\r\n")
            with pytest.raises(anypool.ProtocolError):
                await redis.get("corrupt:k")
            assert await redis.get("corrupt:k") == b"v"  # a fresh connection
            proxy.truncate_next_reply(3)
            with pytest.raises(anypool.ConnectionLost):
                await redis.get("corrupt:k")
            assert await redis.get("corrupt:k") == b"v"
            assert redis.statistics().in_use == 0


# --- hostile servers --------------------------------------------------------------------------


async def test_unsolicited_bytes_on_an_idle_connection_retire_it(
    redis_server: RedisServer,
) -> None:
    """Issue 10, defect 2: on asyncio's Protocol transport the stray bytes were already in the
    transport's buffer, where a peek at the kernel socket could not see them, and the next
    caller's ECHO returned them.  Every transport must retire the connection instead."""
    async with (
        FaultProxy(redis_server.port) as proxy,
        RedisPool.from_url(proxy.url, max_size=1, health_check_interval=None) as redis,
    ):
        for attempt in range(3):
            async with redis.acquire() as conn:
                assert await conn.echo(f"warm-up-{attempt}") == f"warm-up-{attempt}".encode()
                connection = conn.connection
            assert await proxy.inject(b"$12\r\nsomeone-else\r\n") == 1
            for _ in range(10):  # let the event loop read the bytes into the transport
                await anyio.lowlevel.checkpoint()
            with anyio.fail_after(5):  # and wait until they are in the client's hands
                while connection.looks_alive():
                    await anyio.sleep(0.001)
            assert await redis.echo(f"the-real-me-{attempt}") == f"the-real-me-{attempt}".encode()
            assert connection.closed  # retired, not reused
        assert redis.statistics().connections_lost == 3


async def test_a_stray_reply_right_after_a_reply_retires_the_connection(
    redis_server: RedisServer,
) -> None:
    """Issue 10, defect 2: bytes arriving just after a complete reply (here in the same
    chunk) are never read as the next caller's reply."""
    async with (
        FaultProxy(redis_server.port) as proxy,
        RedisPool.from_url(proxy.url, max_size=1, health_check_interval=None) as redis,
    ):
        assert await redis.echo("first") == b"first"
        for attempt in range(3):
            proxy.append_to_next_reply(b"$5\r\nstray\r\n")
            assert await redis.echo(f"one-{attempt}") == f"one-{attempt}".encode()
            assert await redis.echo(f"two-{attempt}") == f"two-{attempt}".encode()
        assert redis.statistics().connections_num == 4  # one retired per stray reply


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"$4294967296\r\nabc", "announced a 4294967296-byte string"),  # 4 GiB, never sent
        (b"*3\r\n:1\r\n", "replies owed"),  # stops mid-reply, then hangs up
        (b"-ERR fine\r\n+OK\r\n" * 0 + b"%1\r\n*1\r\n:1\r\n:2\r\n", "cannot hash"),
        (b":12x\r\n", "invalid integer"),
    ],
)
async def test_hostile_replies(reply: bytes, error: str) -> None:
    async with ScriptedServer([reply]) as fake:
        config = RedisConfig(host="127.0.0.1", port=fake.port, protocol=2, socket_timeout=2)
        connection = await Connection.connect(config)
        started = time.monotonic()
        with pytest.raises((anypool.ProtocolError, anypool.ConnectionLost), match=error):
            await connection.execute("GET", "k")
        assert time.monotonic() - started < 1.5  # no hang
        assert connection.closed


async def test_a_server_that_never_answers_is_bounded_by_socket_timeout() -> None:
    async with ScriptedServer([None]) as fake:
        config = RedisConfig(host="127.0.0.1", port=fake.port, protocol=2, socket_timeout=0.2)
        connection = await Connection.connect(config)
        with pytest.raises(anypool.TimeoutError):
            await connection.execute("GET", "k")
        assert connection.closed


# --- passwords never leak ---------------------------------------------------------------------

SECRET = "Zq9-very-SECRET-pw"


async def test_the_password_never_appears_anywhere(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with RedisServer(password="right-password") as server:
        url = f"redis://user:{SECRET}@127.0.0.1:{server.port}/0"
        for attempt in (
            lambda: Connection.connect(RedisConfig.from_url(url)),  # wrong password
            lambda: Connection.connect(RedisConfig.from_url(url.replace(str(server.port), "1"))),
        ):
            with pytest.raises(anypool.AnyPoolError) as info:
                await attempt()
            error: BaseException | None = info.value
            while error is not None:  # the error and everything chained to it
                seen += [str(error), repr(error)]
                error = error.__cause__ or error.__context__
        pool = RedisPool.from_url(url, min_size=1, connect_timeout=0.5)
        seen += [repr(pool), repr(pool.config), pool.config.to_url(), str(pool.statistics())]
        async with pool:
            with pytest.raises(anypool.PoolTimeout) as waited:
                await pool.pool.wait(timeout=0.5)
            seen += [str(waited.value), repr(waited.value)]
        with pytest.raises(anypool.ConfigError) as bad:
            RedisConfig.from_url(f"redis://user:{SECRET}@127.0.0.1:99999/0")
        seen += [str(bad.value), repr(bad.value)]
        from anypool._cli import main

        await anyio.to_thread.run_sync(main, ["ping", url, "--timeout", "1"])
    out, err = capsys.readouterr()
    seen += [out, err, caplog.text]
    assert all(SECRET not in text for text in seen)
    assert RedisConfig.from_url(url).to_url(redact=False).count(SECRET) == 1  # only when asked


# --- resource hygiene -------------------------------------------------------------------------


async def test_open_close_cycles_leave_nothing_behind(redis_server: RedisServer) -> None:
    async with RedisPool.from_url(redis_server.url, client_name="hygiene-observer") as observer:
        before_fds = open_fds()
        for _ in range(HYGIENE_CYCLES):
            async with RedisPool.from_url(redis_server.url, client_name="hygiene") as redis:
                await redis.ping()
        assert open_fds() == before_fds
        # The server notices the closed sockets.  (Counted by name: the shared server may
        # still list a connection an earlier test closed.)
        with anyio.fail_after(30):
            while [c for c in await observer.client_list() if c.get("name") == "hygiene"]:
                await anyio.sleep(0.02)
