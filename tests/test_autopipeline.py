"""Auto-pipelining on real servers, on every backend: commands of concurrent tasks share a
connection, and every caller gets its own reply or a clear error, whatever is cancelled or
breaks.  The state machine in test_autopipeline_machine.py drives the same guarantees through
random interleavings."""

from __future__ import annotations

import random
from collections import Counter

import anyio
import anyio.lowlevel
import pytest

import anypool
from anypool import ConfigError, RedisPool
from anypool._compat import response_callbacks
from anypool._rules import needs_own_connection
from anypool._transport import _asyncio_protocol_wanted
from anypool.testing import RedisServer

from .settle import client_at_rest

pytestmark = pytest.mark.anyio

HANG = 30  # bounds that only catch hangs


async def _wait_until(condition: object, what: str) -> None:
    """Wait (polling, bounded) until ``condition()`` holds: a state, not a duration."""
    with anyio.fail_after(HANG):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_concurrent_commands_share_a_connection_and_get_their_own_replies(
    redis_server: RedisServer,
) -> None:
    async with RedisPool.from_url(redis_server.url, max_size=8) as redis:
        mismatches = 0

        async def worker(n: int) -> None:
            nonlocal mismatches
            for i in range(50):
                token = f"{n}:{i}"
                if await redis.echo(token) != token.encode():
                    mismatches += 1
                if await redis.incr(f"ap:counter:{n}") != i + 1:
                    mismatches += 1

        await redis.delete(*(f"ap:counter:{n}" for n in range(200)))
        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(worker, n)
        assert mismatches == 0
        shared = redis.autopipeline_statistics()
        assert shared["requests"] >= 200 * 100
        # 200 tasks start together: all but the first find the connection busy and are
        # queued, then written together.
        assert shared["writes"] < shared["requests"]
        assert shared["largest_write"] > 1
        assert shared["lanes_failed"] == 0
        stats = redis.statistics()
        assert (stats.in_use, stats.opening, stats.requests_waiting) == (0, 0, 0)
        assert stats.connections_num == 1  # one shared connection carried everything


async def test_a_cancellation_storm_never_mismatches_and_never_reconnects(
    redis_server: RedisServer,
) -> None:
    """500 tasks, random deadlines (none, expired, cutting, lenient) over ECHO of their own
    token and over BLPOP (which gets its own connection): no caller ever gets another's reply,
    cancelled callers' replies are read and discarded, and the shared connection survives."""
    rng = random.Random(12)
    async with RedisPool.from_url(redis_server.url, max_size=8, timeout=None) as redis:
        counts: Counter[str] = Counter()

        async def worker(n: int) -> None:
            for i in range(60):
                token = f"{n}:{i}"
                kind = rng.random()
                if kind < 0.05:
                    deadline = float("inf")
                    counts["must_complete"] += 1
                elif kind < 0.10:
                    deadline = 0.0
                    counts["must_cancel"] += 1
                elif kind < 0.55:
                    deadline = rng.uniform(0, 0.005)
                else:
                    deadline = rng.uniform(0.05, 0.5)
                with anyio.move_on_after(deadline) as scope:
                    if rng.random() < 0.05:
                        await redis.blpop([f"ap:storm:empty:{n}"], timeout=0.01)
                        counts["blpop"] += 1
                    else:
                        reply = await redis.echo(token)
                        counts["echo"] += 1
                        if reply != token.encode():
                            counts["mismatch"] += 1
                counts["cancelled"] += scope.cancelled_caught

        with anyio.fail_after(HANG * 4):
            async with anyio.create_task_group() as tg:
                for n in range(500):
                    tg.start_soon(worker, n)
        assert counts["mismatch"] == 0
        assert counts["echo"] + counts["blpop"] >= counts["must_complete"] > 0
        assert counts["cancelled"] >= counts["must_cancel"] > 0
        # the last cancelled callers' replies may still be read and discarded in the background
        _, shared = await client_at_rest(redis)
        if not _anyio_asyncio_streams():
            # A cancelled caller never costs a reconnect.  (anyio's own asyncio streams yield
            # before they write, so a cancellation landing there fails the connection: safely,
            # but at a reconnect's cost.  anypool's default asyncio transport does not.)
            assert shared["lanes_failed"] == 0
        assert (shared["lanes"], shared["in_flight"], shared["queued"]) == (0, 0, 0)
        assert shared["lanes_opened"] == shared["lanes_returned"] + shared["parked"]
        assert await redis.echo("after") == b"after"


def _anyio_asyncio_streams() -> bool:
    """Whether this asyncio run uses anyio's streams (``ANYPOOL_TRANSPORT=anyio``)."""
    import sniffio

    return sniffio.current_async_library() == "asyncio" and not _asyncio_protocol_wanted()


async def test_a_killed_server_fails_every_request_on_the_connection_clearly() -> None:
    """Requests owed on a shared connection when the server dies each get a ConnectionError
    saying their command may have run; nothing hangs, and the pool heals after a restart."""
    with RedisServer() as server:
        async with RedisPool.from_url(server.url, max_size=4, connect_timeout=2) as redis:
            await redis.set("ap:kill", "v")
            server.pause()
            errors: list[BaseException] = []

            async def get() -> None:
                try:
                    await redis.get("ap:kill")
                except anypool.ConnectionError as exc:
                    errors.append(exc)

            with anyio.fail_after(HANG):
                async with anyio.create_task_group() as tg:
                    for _ in range(50):
                        tg.start_soon(get)
                    await _wait_until(
                        lambda: (
                            redis.autopipeline_statistics()["in_flight"]
                            + redis.autopipeline_statistics()["queued"]
                            == 50
                        ),
                        "50 requests on the shared connection",
                    )
                    server.kill()
            assert len(errors) == 50
            for error in errors:
                assert "may have run" in str(error) or "was not sent" in str(error), error
            assert any("may have run" in str(error) for error in errors)
            await anyio.to_thread.run_sync(server.restart)
            with anyio.fail_after(HANG):
                while True:
                    try:
                        assert await redis.set("ap:kill", "again") is True
                        break
                    except (anypool.ConnectionError, anypool.PoolError):
                        await anyio.sleep(0.05)
            assert await redis.get("ap:kill") == b"again"
            stats = redis.statistics()
            assert (stats.in_use, stats.requests_waiting) == (0, 0)


async def test_socket_timeout_fails_a_stalled_shared_connection_and_the_next_one_works() -> None:
    with RedisServer() as server:
        async with RedisPool.from_url(server.url, max_size=4, socket_timeout=0.5) as redis:
            assert await redis.echo("warm") == b"warm"  # connected before the server stalls
            server.pause()
            errors: list[BaseException] = []
            try:

                async def get() -> None:
                    try:
                        await redis.get("ap:stalled")
                    except (anypool.ConnectionError, anypool.TimeoutError) as exc:
                        errors.append(exc)

                with anyio.fail_after(HANG):
                    async with anyio.create_task_group() as tg:
                        for _ in range(20):
                            tg.start_soon(get)
            finally:
                server.resume()
            assert len(errors) == 20
            for error in errors:  # sent: it may have run; queued: never sent
                if isinstance(error, anypool.TimeoutError):
                    assert "may have run" in str(error)
                else:
                    assert "was not sent" in str(error)
            assert any(isinstance(error, anypool.TimeoutError) for error in errors)
            assert await redis.echo("back") == b"back"
            shared = redis.autopipeline_statistics()
            assert shared["lanes_failed"] == 1


async def test_blocking_commands_get_a_connection_of_their_own(redis_server: RedisServer) -> None:
    async with RedisPool.from_url(redis_server.url, max_size=4) as redis:
        await redis.delete("ap:queue")
        got: list[object] = []

        async def consumer() -> None:
            got.append(await redis.blpop(["ap:queue"], timeout=0))

        with anyio.fail_after(HANG):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await _wait_until(lambda: redis.statistics().in_use == 1, "BLPOP leased")
                # Shared commands go on while BLPOP blocks its own connection.
                for i in range(100):
                    assert await redis.echo(str(i)) == str(i).encode()
                await redis.rpush("ap:queue", "job")
        assert [list(item) for item in got] == [[b"ap:queue", b"job"]]  # type: ignore[call-overload]


async def test_callers_beyond_the_in_flight_bound_wait_their_turn_in_order() -> None:
    with RedisServer() as server:
        async with RedisPool.from_url(
            server.url, max_size=2, autopipeline_max_in_flight=1
        ) as redis:
            assert await redis.echo("warm") == b"warm"  # connected before the server stalls
            server.pause()
            order: list[int] = []
            try:

                async def echo(n: int) -> None:
                    assert await redis.echo(str(n)) == str(n).encode()
                    order.append(n)

                with anyio.fail_after(HANG):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(echo, 0)
                        await _wait_until(
                            lambda: redis.autopipeline_statistics()["in_flight"] == 1, "first"
                        )
                        for n in range(1, 6):
                            tg.start_soon(echo, n)
                            await _wait_until(
                                lambda n=n: (
                                    redis.autopipeline_statistics()["waiting_for_room"] == n
                                ),
                                f"caller {n} waiting",
                            )
                        server.resume()
            finally:
                server.resume()
            assert order == [0, 1, 2, 3, 4, 5]
            assert redis.autopipeline_statistics()["waited_for_room"] >= 5


async def test_a_cancelled_waiter_for_room_gives_its_turn_to_the_next() -> None:
    with RedisServer() as server:
        async with RedisPool.from_url(
            server.url, max_size=2, autopipeline_max_in_flight=1
        ) as redis:
            assert await redis.echo("warm") == b"warm"
            server.pause()
            results: dict[int, object] = {}
            try:
                with anyio.fail_after(HANG):
                    async with anyio.create_task_group() as tg:
                        scopes: dict[int, anyio.CancelScope] = {}

                        async def echo(n: int) -> None:
                            with anyio.CancelScope() as scope:
                                scopes[n] = scope
                                results[n] = await redis.echo(str(n))
                                return
                            results[n] = "cancelled"

                        for n in range(3):
                            tg.start_soon(echo, n)
                            await _wait_until(
                                lambda n=n: (
                                    redis.autopipeline_statistics()["waiting_for_room"] == n
                                ),
                                f"caller {n} waiting",
                            )
                        scopes[1].cancel()
                        await _wait_until(lambda: 1 in results, "caller 1 left")
                        server.resume()
            finally:
                server.resume()
            assert results == {0: b"0", 1: "cancelled", 2: b"2"}
            shared = redis.autopipeline_statistics()
            assert (shared["waiting_for_room"], shared["lanes_failed"]) == (0, 0)


async def test_a_parked_shared_connection_never_keeps_a_waiting_caller_waiting(
    redis_server: RedisServer,
) -> None:
    """max_size=1: shared commands keep coming while acquire() waits for the only slot.  The
    shared connection, parked between commands, goes to the waiting caller first.  (Each new
    command took the parked connection back, so acquire() waited until the load stopped: the
    review found it starved for 12 s.)"""
    async with RedisPool.from_url(redis_server.url, max_size=1, timeout=None) as redis:
        got_it = anyio.Event()
        cut_short: list[int] = []  # loads that saw acquire() get in before their last GET

        async def shared_load() -> None:
            for i in range(3000):
                if got_it.is_set():
                    cut_short.append(i)
                    return
                await redis.get("ap:park")
                await anyio.lowlevel.checkpoint()

        async def exclusive() -> None:
            await _wait_until(lambda: redis.autopipeline_statistics()["requests"] > 50, "load")
            async with redis.acquire() as conn:
                assert await conn.ping() is True
            got_it.set()

        with anyio.fail_after(HANG * 2):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(shared_load)
                tg.start_soon(exclusive)
        assert cut_short, "acquire() got the slot only once the shared load had stopped"
        stats = redis.statistics()
        assert (stats.in_use, stats.requests_waiting) == (0, 0)


async def test_a_further_shared_connection_never_waits_for_the_pool(
    redis_server: RedisServer,
) -> None:
    """With the pool's other slots held, shared commands use the shared connection that has
    room instead of waiting for a slot for a second one (they failed with PoolTimeout)."""
    async with RedisPool.from_url(
        redis_server.url, max_size=2, autopipeline_connections=2, timeout=2
    ) as redis:
        async with redis.acquire():
            errors: list[BaseException] = []

            async def load() -> None:
                for _ in range(200):
                    try:
                        await redis.get("ap:spare")
                    except anypool.PoolError as exc:
                        errors.append(exc)

            with anyio.fail_after(HANG):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(load)
        assert errors == []


async def test_autopipelining_can_be_turned_off(redis_server: RedisServer) -> None:
    async with RedisPool.from_url(f"{redis_server.url}?autopipeline=false") as redis:
        assert await redis.echo("x") == b"x"
        off = redis.autopipeline_statistics()
        assert off and set(off.values()) == {0}  # every counter, at zero
        assert redis.statistics().requests_num == 1
    async with RedisPool.from_url(redis_server.url, autopipeline=False) as redis:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(redis.echo, "y")
        assert redis.statistics().requests_num == 10


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"autopipeline": "yes"}, "autopipeline.*True or False"),
        ({"autopipeline_connections": 0}, "autopipeline_connections.*at least 1"),
        ({"autopipeline_max_in_flight": 1.5}, "autopipeline_max_in_flight.*integer"),
        ({"autopipeline_connections": 5, "max_size": 4}, "cannot exceed max_size"),
    ],
)
def test_bad_autopipeline_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisPool(**options)  # type: ignore[arg-type]


def test_a_bad_autopipeline_url_option_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"autopipeline.*true or false"):
        RedisPool.from_url("redis://localhost?autopipeline=maybe")


@pytest.mark.parametrize(
    ("args", "own"),
    [
        (("GET", "k"), False),
        (("BLPOP", "q", 0), True),
        ((b"brpoplpush", "a", "b", 1), True),
        (("WAIT", 1, 0), True),
        (("XREAD", "COUNT", 1, "STREAMS", "s", "0"), False),
        (("XREAD", "BLOCK", 0, "STREAMS", "s", "$"), True),
        (("XREADGROUP", "GROUP", "g", "c", "block", 5, "STREAMS", "s", ">"), True),
        (("XREAD", "STREAMS", "BLOCK", "0"), False),  # a stream named BLOCK
        (("CLIENT KILL", "ID", 3), True),
        (("CLIENT", "LIST"), False),
        (("SCRIPT", "KILL"), True),
        (("SCRIPT LOAD", "return 1"), False),
        (("FUNCTION", "KILL"), True),
        (("SHUTDOWN",), True),
    ],
)
def test_which_commands_need_a_connection_of_their_own(args: tuple[object, ...], own: bool) -> None:
    assert needs_own_connection(args) is own


async def test_statistics_have_the_same_keys_on_and_off(redis_server: RedisServer) -> None:
    async with RedisPool.from_url(redis_server.url) as on:
        await on.ping()
        async with RedisPool.from_url(redis_server.url, autopipeline=False) as off:
            assert on.autopipeline_statistics().keys() == off.autopipeline_statistics().keys()


def test_no_reply_callback_is_a_coroutine_function() -> None:
    """The shared path applies redis-py's reply callbacks synchronously."""
    import inspect

    for protocol in (2, 3):
        for name, callback in response_callbacks(None, protocol, True).items():
            assert not inspect.iscoroutinefunction(callback), name
