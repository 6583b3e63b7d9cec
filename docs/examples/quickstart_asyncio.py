"""Quick start on asyncio: hashes, decoded replies."""

import asyncio
import os

import anypool


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    async with anypool.RedisPool.from_url(url, decode_responses=True) as redis:
        await redis.hset("user:1", mapping={"name": "Ada", "lang": "en"})
        print(await redis.hgetall("user:1"))  # {'name': 'Ada', 'lang': 'en'}


asyncio.run(main())
