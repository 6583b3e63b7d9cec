"""Pub/sub on trio: a subscription and a supervised listener."""

import os

import trio

import anypool


async def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    async with anypool.RedisPool.from_url(url) as redis:
        received = trio.Event()

        async def handle(event: anypool.Message | anypool.Reconnected) -> None:
            if isinstance(event, anypool.Message):
                print("listener:", event.data)  # listener: b'order 1'
                received.set()

        listener = await redis.start_listener(handle, channels=["orders"])
        async with redis.subscribe("news") as sub:
            await redis.publish("news", "hello")
            await redis.publish("orders", "order 1")
            event = await sub.get(timeout=5)
            print("subscription:", event)
            await received.wait()
        listener.cancel()


trio.run(main)
