"""A pool opened by a pytest-asyncio fixture with `await pool.open()` and closed at teardown
with `await pool.aclose()` (pytest-asyncio tears fixtures down in another task than it set them
up in, so `async with` cannot span the two).  Run as users run it: pytest in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anypool.testing import RedisServer

pytest.importorskip("pytest_asyncio")

USER_TESTS = """
import os

import pytest
import pytest_asyncio

import anypool


async def open_pool():
    redis = anypool.RedisPool.from_url(os.environ["REDIS_URL"], min_size=1)
    await redis.open()
    await redis.pool.wait(timeout=30)
    return redis


async def close_pool(redis):
    await redis.aclose()
    assert redis.statistics().pool_size == 0  # every connection closed
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await redis.ping()


@pytest_asyncio.fixture
async def redis():
    redis = await open_pool()
    yield redis
    await close_pool(redis)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_redis():
    redis = await open_pool()
    yield redis
    await close_pool(redis)


@pytest.mark.asyncio
async def test_function_fixture(redis):
    await redis.set("pytest-asyncio", "1")
    assert await redis.get("pytest-asyncio") == b"1"


@pytest.mark.asyncio(loop_scope="module")
async def test_module_fixture_first(shared_redis):
    assert await shared_redis.incr("pytest-asyncio-shared") >= 1


@pytest.mark.asyncio(loop_scope="module")
async def test_module_fixture_second(shared_redis):
    assert await shared_redis.incr("pytest-asyncio-shared") >= 2
"""


def test_open_and_aclose_in_a_pytest_asyncio_fixture(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONPATH=os.pathsep.join(sys.path),  # this checkout's anypool
        REDIS_URL=redis_server.url.rsplit("/", 1)[0] + "/8",  # a database no other test uses
    )
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "pytest_asyncio.plugin", "-p",
            "no:cacheprovider", "-W", "error", "-v", "-o", "asyncio_mode=strict", "-o",
            "asyncio_default_fixture_loop_scope=function",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert "different task" not in result.stdout + result.stderr
