"""Testing your own Redis code with anypool's pytest plugin (CI runs this file)."""

from typing import Any

import pytest

import anypool

pytestmark = pytest.mark.anyio  # anyio's plugin runs the tests (asyncio, trio, uvloop)


async def count_visit(redis: anypool.RedisPool, page: str) -> int:
    """The code under test."""
    return int(await redis.hincrby("visits", page, 1))


async def test_counts_visits(anypool_redis: anypool.RedisPool) -> None:
    assert await count_visit(anypool_redis, "/home") == 1
    assert await count_visit(anypool_redis, "/home") == 2
    assert await anypool_redis.hgetall("visits") == {b"/home": b"2"}


async def test_every_test_starts_on_a_clean_database(anypool_redis: anypool.RedisPool) -> None:
    assert await anypool_redis.dbsize() == 0


@pytest.fixture
async def seeded(anypool_redis: anypool.RedisPool) -> anypool.RedisPool:
    """A fixture of your own on top of anypool_redis runs on every backend too."""
    await anypool_redis.hset("visits", mapping={"/about": 41})
    return anypool_redis


async def test_with_your_own_fixture(seeded: anypool.RedisPool) -> None:
    assert await count_visit(seeded, "/about") == 42


class TestDecoded:
    @pytest.fixture
    def anypool_redis_options(self) -> dict[str, Any]:
        """Override the options of the pools (here for this class only)."""
        return {"decode_responses": True}

    async def test_replies_are_str(self, anypool_redis: anypool.RedisPool) -> None:
        await anypool_redis.set("greeting", "hello")
        assert await anypool_redis.get("greeting") == "hello"


def test_sync_code(anypool_blocking_redis: anypool.BlockingRedisPool) -> None:
    anypool_blocking_redis.set("greeting", "hello")
    assert anypool_blocking_redis.get("greeting") == b"hello"
