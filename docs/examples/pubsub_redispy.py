"""redis-py pub/sub code, unchanged but for the import and the constructor."""

import asyncio
import os

import anypool


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    async with anypool.RedisPool.from_url(url, decode_responses=True) as r, r.pubsub() as p:
        await p.subscribe("news")
        await p.psubscribe(**{"audit:*": lambda m: print("audit:", m["data"])})
        await r.publish("news", "hello")
        await r.publish("audit:login", "ada")
        for _ in range(4):  # two acks, a message, and None (the handler took it)
            print(await p.get_message(timeout=5))


asyncio.run(main())
