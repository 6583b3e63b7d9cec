"""RedisPool on asyncio and trio: construction, refusals, acquire(), pipelines, scripts, locks,
and cancellation at the level users see."""

from __future__ import annotations

import math
import random
import uuid

import anyio
import pytest
import redis.exceptions as redis_exceptions
from redis.exceptions import LockError, LockNotOwnedError, WatchError

import anypool
import anypool.testing
from anypool import RedisConfig, RedisPool
from anypool.testing import RedisServer

from .settle import client_at_rest

pytestmark = pytest.mark.anyio


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return redis_server.url


def test_construction_and_options(url: str) -> None:
    pool = RedisPool.from_url(
        url + "?max_connections=7&health_check_interval=3", decode_responses=True
    )
    assert pool.pool.config.max_size == 7
    assert pool.pool.config.health_check_interval == 3.0
    assert pool.config.decode_responses
    with pytest.raises(anypool.ConfigError, match="colour"):
        RedisPool(colour="blue")
    env = {"REDIS_URL": url, "REDIS_MAX_CONNECTIONS": "5", "REDIS_SOCKET_TIMEOUT": "2"}
    from_env = RedisPool.from_env(env, min_size=1)
    assert (from_env.pool.config.max_size, from_env.pool.config.min_size) == (5, 1)
    assert from_env.config.socket_timeout == 2.0
    secret = RedisPool.from_url("redis://:hunter2@localhost:6379/0")
    assert "hunter2" not in repr(secret)


async def test_connection_state_commands_are_refused_on_the_pool(url: str) -> None:
    async with RedisPool.from_url(url) as redis:
        for call, advice in [
            (lambda: redis.select(1), "config or URL"),
            (lambda: redis.execute_command("MULTI"), "pipeline"),
            (lambda: redis.execute_command("WATCH", "k"), "pipeline"),
            (lambda: redis.client_setname("x"), "client_name"),
            (lambda: redis.execute_command("CLIENT", "TRACKING", "on"), "acquire"),
            (lambda: redis.execute_command("SUBSCRIBE", "ch"), "pub/sub"),
            (lambda: redis.execute_command("HELLO", "3"), "config"),
            (lambda: redis.readonly(), "acquire"),
        ]:
            with pytest.raises(anypool.CommandNotAllowed, match=advice):
                await call()
        assert redis.statistics().connections_num == 0  # refused before borrowing anything


async def test_acquire_retires_a_connection_left_in_another_state(url: str) -> None:
    async with RedisPool.from_url(url, max_size=2) as redis:
        await redis.set("acq:k", "db0")
        async with redis.acquire() as conn:
            first = conn.connection
            assert await conn.blpop(["acq:empty"], timeout=0.05) is None
        async with redis.acquire() as conn:
            assert conn.connection is first  # clean: reused
            await conn.select(5)
            assert await conn.get("acq:k") is None
        assert first.closed  # left on db 5: closed, not reused
        assert await redis.get("acq:k") == b"db0"
        async with redis.acquire() as conn:
            with pytest.raises(anypool.CommandNotAllowed):
                await conn.execute_command("SUBSCRIBE", "ch")


async def test_pipeline_watch_conflict_and_transaction_retry(url: str) -> None:
    async with RedisPool.from_url(url) as redis:
        await redis.set("w:k", 1)
        async with redis.pipeline() as pipe:
            await pipe.watch("w:k")
            value = int(await pipe.get("w:k"))
            await redis.set("w:k", 100)  # someone else writes in between
            pipe.multi()
            pipe.set("w:k", value + 1)
            with pytest.raises(WatchError):
                await pipe.execute()
        assert await redis.get("w:k") == b"100"

        attempts = 0

        async def bump(pipe: anypool.Pipeline) -> int:
            nonlocal attempts
            attempts += 1
            current = int(await pipe.get("w:k"))
            if attempts == 1:
                await redis.set("w:k", current + 10)  # force one conflict
            pipe.multi()
            pipe.set("w:k", current + 1)
            return current + 1

        result = await redis.transaction(bump, "w:k", value_from_callable=True)
        assert result == 111
        assert attempts == 2
        assert await redis.get("w:k") == b"111"
        stats = redis.statistics()
        assert (stats.in_use, stats.requests_waiting) == (0, 0)


async def test_scripts_recover_from_noscript_also_in_pipelines(url: str) -> None:
    async with RedisPool.from_url(url) as redis:
        script = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        await redis.delete("sc:n")
        assert await script(keys=["sc:n"], args=[2]) == 2
        await redis.script_flush()
        assert await script(keys=["sc:n"], args=[3]) == 5  # NOSCRIPT, loaded, retried
        await redis.script_flush()
        async with redis.pipeline() as pipe:
            await script(keys=["sc:n"], args=[10], client=pipe)
            pipe.get("sc:n")
            assert await pipe.execute() == [15, b"15"]


async def test_contended_lock_waits_on_both_backends(url: str) -> None:
    """redis-py's asyncio Lock sleeps with asyncio and fails on trio once contended."""
    async with RedisPool.from_url(url, max_size=4) as redis:
        await redis.delete("lk:resource")
        order: list[str] = []
        holder = redis.lock("lk:resource", timeout=5, sleep=0.01)
        assert await holder.acquire()
        assert await holder.owned()
        async with anyio.create_task_group() as tg:

            async def contender() -> None:
                async with redis.lock("lk:resource", timeout=5, sleep=0.01):
                    order.append("contender")

            tg.start_soon(contender)
            await anyio.sleep(0.1)  # the contender polls meanwhile
            order.append("holder releases")
            await holder.release()
        assert order == ["holder releases", "contender"]
        assert not await holder.locked()


async def test_lock_errors_timeouts_and_extend(url: str) -> None:
    async with RedisPool.from_url(url) as redis:
        unheld = redis.lock("lk:unheld")
        with pytest.raises(LockError, match="not held"):
            await unheld.release()
        busy = redis.lock("lk:busy", timeout=5)
        assert await busy.acquire()
        assert not await redis.lock("lk:busy", sleep=0.01, blocking_timeout=0.1).acquire()
        assert not await redis.lock("lk:busy").acquire(blocking=False)
        with pytest.raises(LockError, match="could not acquire"):
            async with redis.lock("lk:busy", sleep=0.01, blocking_timeout=0.05):
                pass
        assert await busy.extend(5)
        assert await redis.pttl("lk:busy") > 5000
        await busy.release()
        assert not await busy.locked()


async def test_expired_lock_is_not_owned(url: str) -> None:
    async with RedisPool.from_url(url) as redis:
        lock = redis.lock("lk:short", timeout=0.05)
        assert await lock.acquire()
        await anyio.sleep(0.1)
        assert not await lock.owned()
        with pytest.raises(LockNotOwnedError):
            await lock.release()


async def test_cancelled_blocking_command_consumes_nothing(url: str) -> None:
    async with RedisPool.from_url(url, max_size=1) as redis:
        await redis.delete("cx:jobs")
        with anyio.move_on_after(0.1) as scope:
            await redis.blpop(["cx:jobs"], timeout=0)
        assert scope.cancelled_caught
        clients = await redis.client_list()
        assert not any(c.get("cmd") == "blpop" for c in clients)
        await redis.lpush("cx:jobs", "job")
        assert await redis.lrange("cx:jobs", 0, -1) == [b"job"]
        assert redis.statistics().in_use == 0


async def test_get_under_a_storm_of_deadlines_never_returns_another_keys_value(url: str) -> None:
    """Random deadlines cut GETs short anywhere; some GETs have no deadline (so they must
    complete) and some an expired one (so they must be cancelled): what the test proves does
    not depend on how fast the machine is."""
    rng = random.Random(7)
    async with RedisPool.from_url(url, max_size=8) as redis:
        await redis.mset({f"storm:{i}": f"value-{i}" for i in range(300)})
        wrong: list[tuple[int, object]] = []
        done = cancelled = 0

        async def reader(i: int) -> None:
            nonlocal done, cancelled
            kind = i % 3  # 0: no deadline, 1: already expired, 2: random 0-50 ms
            deadline = math.inf if kind == 0 else 0.0 if kind == 1 else rng.uniform(0, 0.05)
            with anyio.move_on_after(deadline) as scope:
                value = await redis.get(f"storm:{i}")
                if value != f"value-{i}".encode():
                    wrong.append((i, value))
                done += 1
            cancelled += scope.cancelled_caught

        for _ in range(3):
            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(reader, i)
        assert wrong == []
        assert done >= 3 * 100  # every GET without a deadline completed
        assert cancelled >= 3 * 100  # every GET with an expired deadline was cancelled
        await client_at_rest(redis)  # cancelled callers' replies are read in the background


async def test_decode_responses_and_dump_stays_bytes(url: str) -> None:
    async with RedisPool.from_url(url, decode_responses=True) as redis:
        await redis.delete("dec:k2")
        await redis.set("dec:k", "é")
        assert await redis.get("dec:k") == "é"
        dumped = await redis.dump("dec:k")
        assert isinstance(dumped, bytes)
        await redis.restore("dec:k2", 0, dumped)
        assert await redis.get("dec:k2") == "é"


async def test_config_object(redis_server: RedisServer) -> None:
    config = RedisConfig.from_url(redis_server.url, db=4)
    async with RedisPool(config, max_size=2) as redis:
        await redis.set("cfg:k", "v")
        async with redis.acquire() as conn:
            info = await conn.client_info()
            assert info["db"] == 4


# --- issue 10: pipelines and connection state; errors; locks ----------------------------------


@pytest.mark.parametrize("transaction", [False, True], ids=["pipeline", "transaction"])
async def test_pipelines_refuse_what_would_change_a_pooled_connection(
    url: str, transaction: bool
) -> None:
    """Issue 10, defect 3: the same rule as single commands (CLIENT REPLY OFF used to hang)."""
    async with RedisPool.from_url(url, max_size=1) as redis:
        for queue in [
            lambda p: p.select(1),
            lambda p: p.execute_command("SELECT", 1),
            lambda p: p.execute_command("MULTI"),
            lambda p: p.execute_command("EXEC"),
            lambda p: p.execute_command("HELLO", 2),
            lambda p: p.execute_command("AUTH", "x"),
            lambda p: p.client_reply("OFF"),
            lambda p: p.client_setname("renamed"),
            lambda p: p.execute_command("CLIENT SETNAME", "renamed"),
            lambda p: p.execute_command(b"client", b"tracking", b"on"),
            lambda p: p.readonly(),
            lambda p: p.execute_command("RESET"),
            lambda p: p.execute_command("MONITOR"),
            lambda p: p.execute_command("SUBSCRIBE", "ch"),
        ]:
            pipe = redis.pipeline(transaction=transaction)
            pipe.set("state:k", 1)
            with pytest.raises(anypool.CommandNotAllowed):
                queue(pipe)
            assert await pipe.execute() == [True]  # what was queued before still runs
        async with redis.acquire() as conn:  # the one connection is still in its first state
            info = await conn.client_info()
            assert (info["db"], info["name"], info["multi"]) == (0, "", -1)
        assert redis.statistics().connections_num == 1


async def test_immediate_commands_while_watching_follow_the_same_rule(url: str) -> None:
    async with RedisPool.from_url(url, max_size=1) as redis:
        async with redis.pipeline() as pipe:
            await pipe.watch("state:w")
            with pytest.raises(anypool.CommandNotAllowed):
                await pipe.select(2)
            with pytest.raises(anypool.CommandNotAllowed):
                await pipe.client_setname("renamed")
            assert await pipe.get("state:w") is None  # reads still run at once
        async with redis.acquire() as conn:
            info = await conn.client_info()
            assert (info["db"], info["name"]) == (0, "")


async def test_a_pipeline_after_watch_returns_its_connection_unwatched(url: str) -> None:
    """Issue 10, defect 3: ``pipeline(transaction=False)`` after ``watch()`` handed back a
    connection still WATCHing (redis-py sends UNWATCH); the next transaction on that
    connection failed with WatchError for a key it never watched."""
    async with RedisPool.from_url(url, max_size=1) as redis:
        pipe = redis.pipeline(transaction=False)
        await pipe.watch("state:watched")
        assert await pipe.set("state:other", 1)  # while watching, commands run at once
        assert await pipe.execute() == []
        await redis.set("state:watched", "changed")  # would abort a transaction still watching
        async with redis.pipeline(transaction=True) as tx:
            tx.incr("state:counter")
            assert len(await tx.execute()) == 1
        assert redis.statistics().connections_num == 1  # UNWATCHed and reused, not closed


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"-LOADING Redis is loading the dataset in memory\r\n", "BusyLoadingError"),
        (b"-ERR max number of clients reached\r\n", "ConnectionError"),
    ],
)
@pytest.mark.parametrize("raise_on_error", [True, False])
async def test_pipeline_raises_errors_redis_py_raises(
    reply: bytes, error: str, raise_on_error: bool
) -> None:
    """Issue 10, defect 11: errors redis-py maps to ConnectionError subclasses were returned
    as values; redis-py raises them, whatever raise_on_error says."""
    async with anypool.testing.ScriptedServer([b"+OK\r\n" + reply, b"+PONG\r\n"]) as fake:
        config = RedisConfig(host="127.0.0.1", port=fake.port, protocol=2, socket_timeout=2)
        async with RedisPool(config, max_size=1, health_check_interval=None) as redis:
            pipe = redis.pipeline(transaction=False)
            pipe.set("k", 1)
            pipe.get("k")
            with pytest.raises(getattr(redis_exceptions, error)) as info:
                await pipe.execute(raise_on_error=raise_on_error)
            assert type(info.value).__name__ == error
            assert "Command # 2" in str(info.value)
            assert await redis.ping()  # every reply was read: the connection is still in step
            assert redis.statistics().connections_num == 1


async def test_a_cancelled_lock_release_keeps_the_lock_and_can_be_retried(
    redis_server: RedisServer,
) -> None:
    """Issue 10, defect 13: the token was cleared before the release script ran, so a release
    cancelled mid-flight kept the key forever and a retry raised LockError.

    On exclusive connections: the cancelled release closes its connection (the proxy drops the
    bytes it held).  The shared-connection case is the next test."""
    async with (
        anypool.testing.FaultProxy(redis_server.port) as proxy,
        RedisPool.from_url(proxy.url, socket_timeout=5, autopipeline=False) as redis,
    ):
        lock = redis.lock("state:lock")  # no timeout: held until released
        assert await lock.acquire()
        proxy.cut("upstream")  # the release script never reaches the server
        with anyio.move_on_after(0.2) as scope:
            await lock.release()
        assert scope.cancelled_caught
        proxy.heal()
        assert await lock.owned()  # still held, and this object still knows it
        await lock.release()  # the retry works
        assert not await redis.exists("state:lock")
        with pytest.raises(LockError):
            await lock.release()  # now it really is not held
        assert await lock.acquire()
        await redis.delete("state:lock")  # someone else removed it meanwhile
        with pytest.raises(LockNotOwnedError):
            await lock.release()
        with pytest.raises(LockError):
            await lock.release()  # not owned: forgotten after the server said so


async def test_a_cancelled_lock_release_lost_on_a_shared_connection_is_bounded(
    redis_server: RedisServer,
) -> None:
    """Auto-pipelined, a cancelled release stays on the shared connection (its reply is owed
    and will be discarded).  When its bytes are lost (the proxy drops them: a one-way black
    hole), the connection stalls until socket_timeout, then fails with a clear error; after it
    the lock is still held by this object and the retry works."""
    async with (
        anypool.testing.FaultProxy(redis_server.port) as proxy,
        RedisPool.from_url(proxy.url, socket_timeout=1, autopipeline=True) as redis,
    ):
        lock = redis.lock("state:shared-lock")
        assert await lock.acquire()
        proxy.cut("upstream")
        with anyio.move_on_after(0.2) as scope:
            await lock.release()
        assert scope.cancelled_caught
        proxy.heal()
        failures: list[str] = []
        with anyio.fail_after(30):
            while True:
                try:
                    owned = await lock.owned()
                    break
                except (anypool.TimeoutError, anypool.ConnectionError) as exc:
                    failures.append(str(exc))
        assert all("socket_timeout" in f for f in failures)  # the stalled connection, only it
        assert owned
        await lock.release()
        assert not await redis.exists("state:shared-lock")
        assert redis.autopipeline_statistics()["lanes_failed"] == 1


async def test_leaving_a_cancelled_lock_block_releases_the_lock(redis_server: RedisServer) -> None:
    """A cancelled scope cancelled the release in __aexit__ before it was sent: a lock without a
    timeout stayed forever (found by the final adversarial review, on every backend)."""
    async with RedisPool.from_url(redis_server.url) as redis:
        name = f"cancelled:lock:{uuid.uuid4().hex}"
        with anyio.CancelScope() as scope:
            async with redis.lock(name):  # no timeout: held until released
                assert await redis.exists(name)
                scope.cancel()
                await anyio.sleep(30)  # cancelled here
        assert scope.cancelled_caught
        assert not await redis.exists(name)
        assert await redis.lock(name, blocking_timeout=1).acquire()  # free for the next holder
        assert redis.statistics().in_use == 0


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (("HGETALL", "h"), b":1\r\n"),
        (("TIME",), b"*0\r\n"),
        (("INFO",), b":5\r\n"),
        (("ZRANGE", "z", 0, -1, "WITHSCORES"), b"*2\r\n$1\r\na\r\n$3\r\nabc\r\n"),
    ],
)
async def test_a_reply_of_the_wrong_shape_is_a_protocol_error(
    command: tuple[object, ...], reply: bytes
) -> None:
    """A valid reply that the command never has (redis-py's callback cannot read it) is the
    server's fault: ProtocolError, not a TypeError or IndexError from deep in a callback
    (found by the adversarial review).  The connection stays in step."""
    async with anypool.testing.ScriptedServer([reply, b"+PONG\r\n"]) as fake:
        config = RedisConfig(host="127.0.0.1", port=fake.port, protocol=2, socket_timeout=2)
        async with RedisPool(config, max_size=1, health_check_interval=None) as redis:
            name = str(command[0])
            method = {"HGETALL": redis.hgetall, "TIME": redis.time, "INFO": redis.info}.get(name)
            with pytest.raises(anypool.ProtocolError, match="unexpected shape") as error:
                if name == "ZRANGE":
                    await redis.zrange("z", 0, -1, withscores=True)
                elif method is not None and len(command) > 1:
                    await method(command[1])
                else:
                    assert method is not None
                    await method()
            assert "abc" not in str(error.value)  # the reply is described, never shown
            assert await redis.ping()
            assert redis.statistics().connections_num == 1


async def test_pipeline_misuse_and_stale_connections_get_clear_errors(url: str) -> None:
    """Found by the reviews: a script run while WATCHing never ran (an un-awaited coroutine);
    two tasks watching through one pipeline lost a slot; a connection used after its
    acquire() block changed an idle pooled connection; SCRIPT DEBUG turned the next user's
    EVAL into a debugging session."""
    async with RedisPool.from_url(url, max_size=2) as redis:
        script = redis.register_script("return ARGV[1]")
        async with redis.pipeline() as pipe:
            await pipe.watch("misuse:k")
            assert await script(args=["now"], client=pipe) == b"now"  # runs at once
        pipe = redis.pipeline()
        with pytest.raises(BaseExceptionGroup) as group:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipe.watch, "misuse:a")
                tg.start_soon(pipe.watch, "misuse:b")
        assert group.group_contains(RuntimeError, match="one task at a time")
        await pipe.reset()
        async with redis.acquire() as conn:
            assert await conn.ping()
        with pytest.raises(anypool.ConnectionClosed, match="went back to the pool"):
            await conn.select(5)
        for call in (
            lambda: redis.execute_command("SCRIPT", "DEBUG", "YES"),
            lambda: redis.execute_command(memoryview(b"SELECT"), 5),
        ):
            with pytest.raises(anypool.CommandNotAllowed):
                await call()
        async with redis.acquire() as conn:
            with pytest.raises(anypool.CommandNotAllowed, match="debugging"):
                await conn.execute_command("SCRIPT", "DEBUG", "YES")
        stats = redis.statistics()
        assert (stats.in_use, stats.requests_waiting) == (0, 0)
        assert await redis.eval("return 7", 0) == 7


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_cast_function_s_own_error_propagates(url: str, protocol: int) -> None:
    """As redis-py: an exception raised by the caller's ``score_cast_func`` reaches the caller
    unchanged (not a ProtocolError); the connection stays usable, nothing is held."""
    refusal = ValueError("my cast refuses")

    def cast(value: object) -> float:
        raise refusal

    async with RedisPool.from_url(url, protocol=protocol, max_size=1) as redis:
        key = f"cast-{uuid.uuid4().hex}"
        await redis.zadd(key, {"a": 1.5})
        try:
            with pytest.raises(ValueError) as error:
                await redis.zrange(key, 0, -1, withscores=True, score_cast_func=cast)
            assert error.value is refusal and not isinstance(error.value, anypool.ProtocolError)
            with pytest.raises(ValueError) as error:
                await redis.zrangebyscore(key, 0, 10, withscores=True, score_cast_func=cast)
            assert error.value is refusal
            pairs = await redis.zrange(key, 0, -1, withscores=True, score_cast_func=int)
            assert [tuple(pair) for pair in pairs] == [(b"a", 1)]  # RESP3: lists, as redis-py
        finally:
            await redis.delete(key)
        assert await redis.ping()
        statistics = redis.statistics()
        assert statistics.in_use == 0 and statistics.connections_num == 1
