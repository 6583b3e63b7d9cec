"""Checked by `nox -s typecheck` (mypy --strict), not run: what user code sees statically."""

from __future__ import annotations

from typing import Any, assert_type

import anypool


async def commands_type_check() -> None:
    async with anypool.RedisPool.from_url("redis://localhost") as redis:
        assert_type(await redis.get("k"), bytes | str | None)
        assert_type(await redis.incr("n"), int)
        assert_type(await redis.set("k", "v", ex=10), bool | str | bytes | None)
        async with redis.pipeline() as pipe:
            pipe.set("a", 1)
            assert_type(await pipe.execute(), list[Any])
        async with redis.acquire() as conn:
            assert_type(await conn.get("k"), bytes | str | None)
