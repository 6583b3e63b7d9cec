"""The helper objects as redis.asyncio's, call for call on the same server: ``lock()``'s
``lock_class``/``thread_local``/``raise_on_release_error``; ``Pipeline.watching``, ``aclose()``,
``discard()``; a queued command with nothing to act on (``mget([])``); command names sent as
ASCII whatever the arguments' ``encoding``.

The redis.asyncio side runs in a worker thread with its own asyncio loop, so the anypool side
runs on every backend."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
import redis.asyncio
import redis.asyncio.lock

import anypool
from anypool import RedisPool
from anypool.testing import RedisServer

pytestmark = pytest.mark.anyio

Scenario = Callable[[Any, str], Awaitable[Any]]


async def outcome(call: Awaitable[Any]) -> Any:
    """What a call gave: its value, or its exception's type name (messages may differ)."""
    try:
        return await call
    except Exception as exc:
        return ("raised", type(exc).__name__)


async def both(server: RedisServer, scenario: Scenario, **options: Any) -> tuple[Any, Any]:
    """(redis.asyncio's result, anypool's) for ``scenario(client, library)``."""

    def redispy_side() -> Any:
        async def main() -> Any:
            client = redis.asyncio.Redis.from_url(server.url, **options)
            try:
                await client.flushdb()
                return await scenario(client, "redis-py")
            finally:
                await client.aclose()

        return asyncio.run(main())

    with anyio.fail_after(60):
        expected = await anyio.to_thread.run_sync(redispy_side)
        async with RedisPool.from_url(server.url, **options) as client:
            await client.flushdb()
            got = await scenario(client, "anypool")
    return expected, got


# --- lock -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raise_on_release_error", [True, False])
async def test_lock_release_error_on_leaving(
    redis_server: RedisServer, raise_on_release_error: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(client: Any, _: str) -> Any:
        async def body() -> str:
            async with client.lock("L", raise_on_release_error=raise_on_release_error) as lock:
                await client.delete("L")  # expired, say: no longer owned on leaving
                assert lock.token is not None if hasattr(lock, "token") else True
            return "left quietly"

        return await outcome(body()), await client.exists("L")

    with caplog.at_level(logging.WARNING):
        expected, got = await both(redis_server, scenario)
    assert got == expected
    if raise_on_release_error:
        assert got == (("raised", "LockNotOwnedError"), 0)
    else:
        assert got == ("left quietly", 0)
        assert any("no longer owned" in r.getMessage() for r in caplog.records)


async def test_lock_class_is_called_as_redis_py_calls_it(redis_server: RedisServer) -> None:
    class Recorder:
        def __init__(self, client: Any, name: str, **options: Any) -> None:
            self.seen = (name, sorted(options.items()))

    async def scenario(client: Any, _: str) -> Any:
        return [
            client.lock("a", lock_class=Recorder).seen,
            client.lock("b", 5, 0.5, False, 2.0, Recorder, False, False).seen,
        ]

    expected, got = await both(redis_server, scenario)
    assert got == expected
    assert ("thread_local", True) in got[0][1] and ("raise_on_release_error", True) in got[0][1]


@pytest.mark.parametrize("thread_local", [True, False])
async def test_lock_thread_local_token(redis_server: RedisServer, thread_local: bool) -> None:
    async def scenario(client: Any, _: str) -> Any:
        lock = client.lock("T", thread_local=thread_local)
        assert await lock.acquire()
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(getattr(lock.local, "token", None)))
        thread.start()
        thread.join()
        local_type = type(lock.local)
        await lock.release()
        return local_type, seen[0] is None, await client.exists("T")

    expected, got = await both(redis_server, scenario)
    assert got == expected
    assert got == ((threading.local, True, 0) if thread_local else (SimpleNamespace, False, 0))


async def test_anypool_lock_subclass_as_lock_class(redis_server: RedisServer) -> None:
    class Mine(anypool.Lock):
        pass

    async with RedisPool.from_url(redis_server.url) as client:
        lock = client.lock("S", lock_class=Mine, timeout=10)
        assert type(lock) is Mine
        async with lock:
            assert await lock.owned()
        assert not await lock.locked()


async def test_redis_py_lock_class_on_asyncio(
    redis_server: RedisServer, anyio_backend_name: str
) -> None:
    if anyio_backend_name != "asyncio":
        pytest.skip("redis-py's Lock sleeps with asyncio")
    async with RedisPool.from_url(redis_server.url) as client:
        lock = client.lock("R", lock_class=redis.asyncio.lock.Lock, timeout=10)
        assert type(lock) is redis.asyncio.lock.Lock
        async with lock:
            assert await lock.owned()
        assert not await lock.locked()


# --- pipeline ---------------------------------------------------------------------------------


async def test_pipeline_watching_and_aclose(redis_server: RedisServer) -> None:
    async def scenario(client: Any, _: str) -> Any:
        seen = []
        pipe = client.pipeline()
        seen.append(pipe.watching)
        await pipe.watch("w")
        seen.append(pipe.watching)
        await pipe.unwatch()
        seen.append(pipe.watching)
        await pipe.watch("w")
        pipe.multi()
        pipe.set("w", "1")
        seen.append(await pipe.execute())
        seen.append(pipe.watching)
        await pipe.watch("w")
        await pipe.aclose()
        seen.append(pipe.watching)
        pipe.set("w", "2")  # usable again after aclose(), as after reset()
        seen.append(await pipe.execute())
        return seen, await client.get("w")

    expected, got = await both(redis_server, scenario)
    assert got == expected
    assert got == ([False, True, False, [True], False, False, [True]], b"2")


async def test_pipeline_aclose_returns_the_connection(redis_server: RedisServer) -> None:
    async with RedisPool.from_url(redis_server.url) as client:
        pipe = client.pipeline()
        await pipe.watch("x")
        assert client.statistics().in_use == 1
        await pipe.aclose()
        assert client.statistics().in_use == 0


async def test_pipeline_discard_as_redis_py(redis_server: RedisServer) -> None:
    async def scenario(client: Any, _: str) -> Any:
        results = []
        pipe = client.pipeline()  # queued in a transaction: EXEC without MULTI, nothing runs
        pipe.set("d1", "1")
        await pipe.discard()
        results.append(await outcome(pipe.execute()))
        await pipe.reset()
        pipe = client.pipeline(transaction=False)  # without: DISCARD fails in its place
        pipe.set("d2", "1")
        await pipe.discard()
        results.append(await outcome(pipe.execute()))
        results.append(await outcome(pipe.execute()))  # the queue is empty now
        pipe = client.pipeline()  # while WATCHing before MULTI: at once
        await pipe.watch("d1")
        results.append(await outcome(pipe.discard()))
        await pipe.reset()
        pipe = client.pipeline()  # after WATCH and MULTI: queued
        await pipe.watch("d1")
        pipe.multi()
        pipe.set("d3", "1")
        await pipe.discard()
        results.append(await outcome(pipe.execute()))
        results.append(pipe.watching)
        await pipe.reset()
        results.append([await client.get(k) for k in ("d1", "d2", "d3")])
        return results

    expected, got = await both(redis_server, scenario)
    assert got == expected
    assert got[0] == ("raised", "ResponseError")
    assert got[-1] == [None, b"1", None]


@pytest.mark.parametrize("transaction", [True, False])
@pytest.mark.parametrize("raise_on_error", [True, False])
async def test_queued_command_with_no_arguments(
    redis_server: RedisServer, transaction: bool, raise_on_error: bool
) -> None:
    async def scenario(client: Any, _: str) -> Any:
        pipe = client.pipeline(transaction=transaction)
        pipe.set("m", "v")
        pipe.mget([])
        pipe.mget(["m"])
        pipe.mget([])
        pipe.get("m")
        results = await outcome(pipe.execute(raise_on_error=raise_on_error))
        async with client.pipeline(transaction=transaction) as only_empty:
            only_empty.mget([])
            results = [results, await outcome(only_empty.execute())]
        return results, await client.mget([])

    expected, got = await both(redis_server, scenario)
    assert got == expected
    assert got == ([[True, [], [b"v"], [], b"v"], [[]]], [])


# --- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1"])
async def test_command_names_are_ascii_whatever_the_encoding(
    redis_server: RedisServer, encoding: str
) -> None:
    async def scenario(client: Any, _: str) -> Any:
        out = [await client.set("ключ" if encoding != "latin-1" else "clé", "värde")]
        out.append(await client.get("ключ" if encoding != "latin-1" else "clé"))
        pipe = client.pipeline()
        pipe.set("k2", "v2")
        pipe.get("k2")
        out.append(await pipe.execute())
        out.append(await client.config_get("maxmemory-policy"))  # "CONFIG GET": two words
        out.append(sorted(await client.keys()))
        return out

    expected, got = await both(redis_server, scenario, encoding=encoding)
    assert got == expected
    assert got[1] == "värde".encode(encoding)
    # what is stored: the arguments in the encoding asked for
    async with RedisPool.from_url(redis_server.url) as raw:
        assert await raw.get("k2".encode(encoding)) == "v2".encode(encoding)
