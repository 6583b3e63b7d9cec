"""A FastAPI (or Starlette) app that opens one pool for its whole life."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anypool


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    async with anypool.RedisPool.from_env(max_size=32) as redis:  # REDIS_URL...
        await redis.pool.wait(timeout=5)  # fail fast if Redis is down
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
