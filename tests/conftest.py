"""Shared fixtures: the anyio backends (asyncio, asyncio+uvloop, trio), and a real redis-server
for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from anypool import RedisConfig
from anypool.testing import RedisServer, find_valkey_server

from .backends import BACKEND_PARAMS

settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

if os.environ.get("ANYPOOL_TEST_AUTOPIPELINE") == "0":
    # The whole suite over exclusive connections (nox -s autopipeline_off): every guarantee
    # holds with auto-pipelining on (the default) and off.
    import anypool._client

    anypool._client.AUTOPIPELINE_DEFAULT = False


@pytest.fixture(params=BACKEND_PARAMS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """Every async test runs on asyncio, on asyncio with uvloop's event loop, and on trio.

    The value is what anyio's pytest plugin takes: a backend name, or (name, options).
    """
    return request.param


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (tests that kill or pause make their own)."""
    with RedisServer(unix_socket=True) as server:
        yield server


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    """One real valkey-server 9.1 for the session (sharded pub/sub, CLIENT INFO's watch/resp)."""
    with RedisServer(binary=find_valkey_server()) as server:
        yield server


@pytest.fixture
def config(redis_server: RedisServer) -> RedisConfig:
    return RedisConfig.from_url(redis_server.url, connect_timeout=5.0)


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private redis-server, for tests that kill, pause or reconfigure it."""
    with RedisServer() as server:
        yield server


def open_fds() -> int:
    """Open sockets of this process (Linux), to catch leaked ones.

    Only sockets count: an event loop may open other descriptors of its own once, lazily
    (uvloop's libuv opens /dev/null on its first connection).
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:  # closed while listing (the listing's own descriptor, for one)
            pass
    return count
