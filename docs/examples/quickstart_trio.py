"""Quick start on trio: commands and a transaction."""

import os

import trio

import anypool


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    async with anypool.RedisPool.from_url(url, max_size=16) as redis:
        await redis.set("greeting", "hello", ex=60)
        print(await redis.get("greeting"))  # b'hello'
        async with redis.pipeline() as pipe:
            pipe.set("visits", 0)
            pipe.incr("visits")
            print(await pipe.execute())  # [True, 1]


trio.run(main)
