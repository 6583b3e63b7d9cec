"""Shared fixtures: both anyio backends, and a real redis-server for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from anypool import RedisConfig
from anypool.testing import RedisServer, find_valkey_server

settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs once on asyncio and once on trio."""
    return str(request.param)


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
    """Open file descriptors of this process (Linux), to catch leaked sockets."""
    return len(os.listdir("/proc/self/fd"))
