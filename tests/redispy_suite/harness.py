"""anypool's stand-in for redis-py's ``tests/test_asyncio/conftest.py`` (copied there by
``assemble.py``; the upstream file becomes ``upstream_conftest.py``).

Every helper of the upstream conftest is re-exported unchanged; only the client fixtures
(``create_redis``, ``r``, ``r2``, ``decoded_r``) are replaced: they give an
``anypool.RedisPool`` built from the server URL with the keywords the upstream fixture passes
to redis-py (``decode_responses``, ``protocol``, ``encoding``...), passed through unchanged, so a
keyword anypool refuses shows up as a failure.  Upstream runs each test twice, on a client with
one dedicated connection (``single``) and on a pooled one (``pool``); a RedisPool has no dedicated
connection, so only the ``pool`` run is kept (same test ids).

redis-py's shape helpers (``tests.conftest.get_protocol_version``, ``expected_response_shape``)
read ``protocol``/``legacy_responses`` from a redis-py client's connection kwargs; they are
taught to read the keywords the fixture gave the anypool pool, so a test expects exactly what
redis-py would give for the same arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis_asyncio

import tests.conftest as upstream_root
from anypool import RedisPool

from .upstream_conftest import *  # noqa: F403  (wait_for_command & co., and their fixtures)

# What each pool was asked for, as redis-py's connection_kwargs would hold it.
_REQUESTED: dict[int, dict[str, Any]] = {}
_upstream_raw_protocol = upstream_root._get_raw_protocol
_upstream_legacy_responses = upstream_root.get_legacy_responses


def _raw_protocol(client: Any) -> Any:
    if isinstance(client, RedisPool):
        return _REQUESTED.get(id(client), {}).get("protocol")
    return _upstream_raw_protocol(client)


def _legacy_responses(client: Any) -> Any:
    if isinstance(client, RedisPool):
        return _REQUESTED.get(id(client), {}).get("legacy_responses", True)
    return _upstream_legacy_responses(client)


upstream_root._get_raw_protocol = _raw_protocol
upstream_root.get_legacy_responses = _legacy_responses


async def open_pool(pool: RedisPool) -> Callable[[], Awaitable[None]]:
    """Open ``pool`` and return the coroutine function that closes it, from any task.

    pytest-asyncio may run a fixture's setup and teardown in different tasks, so the pool
    cannot be held with ``async with`` across the ``yield``.  With anypool's own
    ``open()``/``aclose()`` that is what they are for; until they exist, an owner task holds
    ``async with pool`` until it is told to leave (delete this fallback when they land).
    """
    if hasattr(pool, "open"):
        await pool.open()
        return pool.aclose  # type: ignore[no-any-return]

    opened = asyncio.Event()
    leave = asyncio.Event()

    async def hold() -> None:
        async with pool:
            opened.set()
            await leave.wait()

    owner = asyncio.create_task(hold(), name=f"owner of {pool!r}")
    waiter = asyncio.create_task(opened.wait())
    await asyncio.wait({owner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not opened.is_set():
        waiter.cancel()
        await owner  # raises why the pool could not open
        raise RuntimeError(f"{pool!r} left `async with` before opening")

    async def close() -> None:
        leave.set()
        await owner  # raises what failed inside the pool's task group

    return close


@pytest_asyncio.fixture(params=[pytest.param(False, id="pool")])
async def create_redis(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The upstream factory's signature and teardown, with an anypool pool as the client."""
    teardowns: list[Callable[[], Awaitable[None]]] = []

    async def client_factory(
        url: str = request.config.getoption("--redis-url"),
        cls: Any = redis_asyncio.Redis,
        flushdb: bool = True,
        **kwargs: Any,
    ) -> RedisPool:
        if cls is not redis_asyncio.Redis:
            raise NotImplementedError(f"the harness has no anypool stand-in for {cls!r}")
        protocol = request.config.getoption("--protocol")
        if "protocol" not in url and kwargs.get("protocol") is None and protocol:
            # redis-py takes the option's string as it is; anypool wants the number.
            kwargs["protocol"] = int(protocol)
        legacy = request.config.getoption("--legacy-responses")
        if "legacy_responses" not in kwargs and legacy and legacy != "default":
            kwargs["legacy_responses"] = legacy.lower() == "true"
        pool = RedisPool.from_url(url, **kwargs)
        close = await open_pool(pool)
        _REQUESTED[id(pool)] = kwargs

        async def teardown() -> None:
            try:
                if flushdb and "username" not in kwargs:
                    await pool.flushdb()
            finally:
                _REQUESTED.pop(id(pool), None)
                await close()

        teardowns.append(teardown)
        return pool

    yield client_factory

    errors: list[BaseException] = []
    for teardown in teardowns:
        try:
            await teardown()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


@pytest_asyncio.fixture()
async def r(create_redis: Any) -> Any:
    return await create_redis()


@pytest_asyncio.fixture()
async def r2(create_redis: Any) -> Any:
    """A second client for tests that need multiple."""
    return await create_redis()


@pytest_asyncio.fixture()
async def decoded_r(create_redis: Any) -> Any:
    return await create_redis(decode_responses=True)
