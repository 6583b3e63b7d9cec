"""A FastAPI (or Starlette) app that opens one pool for its whole life."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anypool


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    # min_size=1: one connection is opened at start and kept open.
    async with anypool.RedisPool.from_env(min_size=1, max_size=32) as redis:  # REDIS_URL...
        # Fail fast if Redis is down: pool.wait() returns once min_size connections are open
        # (with the default min_size=0 it would return at once, proving nothing).  If they
        # cannot be opened within 5 s it raises PoolTimeout naming the last connect error
        # ("connection to ... refused"), and the app does not start.
        await redis.pool.wait(timeout=5)
        app.state.redis = redis
        yield


async def hits(app: Any) -> dict[str, int]:
    return {"hits": await app.state.redis.incr("hits")}


def create_app() -> Any:
    from fastapi import FastAPI, Request

    app = FastAPI(lifespan=lifespan)

    @app.get("/hits")
    async def hits_endpoint(request: Request) -> dict[str, int]:
        return await hits(request.app)

    return app
