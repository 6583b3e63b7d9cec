"""Pub/sub throughput: a pipelined publisher to one subscriber, end to end, in one run.

    python benchmarks/pubsub.py [--url redis://...] [--messages 50000] [--pin]

Publishes ``--messages`` messages in pipelines of 500 and times until the subscriber has
received the last one.  anypool (asyncio, trio, uvloop) against redis.asyncio's PubSub
(asyncio, uvloop) and coredis (asyncio, trio) on the same server; prints messages/s and ratios.
uvloop is asyncio on uvloop's event loop; without uvloop installed its rows fail and say so.
Bounded in count; each client gets 60 s at most.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

import anypool
from anypool.testing import RedisServer

BATCH = 500


async def publish_all(publish_batch: Callable[[range], Awaitable[None]], count: int) -> None:
    for start in range(0, count, BATCH):
        await publish_batch(range(start, min(count, start + BATCH)))


async def measure(
    receive_all: Callable[[], Awaitable[None]],
    publish_batch: Callable[[range], Awaitable[None]],
    count: int,
) -> float:
    started = time.perf_counter()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive_all)
            await publish_all(publish_batch, count)
    return count / (time.perf_counter() - started)


async def bench_anypool(url: str, count: int) -> float:
    async with (
        anypool.RedisPool.from_url(url, health_check_interval=None) as redis,
        redis.subscribe("bench:ps", buffer=10_000) as sub,
    ):

        async def receive_all() -> None:
            received = 0
            async for _ in sub:
                received += 1
                if received == count:
                    return

        async def publish_batch(numbers: range) -> None:
            pipe = redis.pipeline(transaction=False)
            for n in numbers:
                pipe.publish("bench:ps", n)
            await pipe.execute()

        return await measure(receive_all, publish_batch, count)


async def bench_redis_py(url: str, count: int) -> float:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe("bench:ps")
        await pubsub.get_message(timeout=1)  # the subscribe confirmation

        async def receive_all() -> None:
            received = 0
            async for message in pubsub.listen():
                if message["type"] == "message":
                    received += 1
                    if received == count:
                        return

        async def publish_batch(numbers: range) -> None:
            pipe = client.pipeline(transaction=False)
            for n in numbers:
                pipe.publish("bench:ps", n)
            await pipe.execute()

        return await measure(receive_all, publish_batch, count)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def bench_coredis(url: str, count: int) -> float:
    import coredis

    client = coredis.Redis.from_url(url)
    async with client, client.pubsub(channels=["bench:ps"], ignore_subscribe_messages=True) as ps:

        async def receive_all() -> None:
            received = 0
            async for message in ps:
                if message["type"] == "message":
                    received += 1
                    if received == count:
                        return

        async def publish_batch(numbers: range) -> None:
            async with client.pipeline(transaction=False) as pipe:
                for n in numbers:
                    pipe.publish("bench:ps", n)

        return await measure(receive_all, publish_batch, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--pin", action="store_true")
    options = parser.parse_args()
    server = None
    if options.url is None:
        server = RedisServer()
        server.start()
    url = options.url or server.url  # type: ignore[union-attr]
    try:
        if options.pin:
            os.sched_setaffinity(0, {0})
            if server is not None:
                os.sched_setaffinity(server.pid, {0})
        results: dict[str, float] = {}
        for name, fn, backend in [
            ("anypool", bench_anypool, "asyncio"),
            ("anypool", bench_anypool, "trio"),
            ("anypool", bench_anypool, "uvloop"),
            ("redis.asyncio", bench_redis_py, "asyncio"),
            ("redis.asyncio", bench_redis_py, "uvloop"),
            ("coredis", bench_coredis, "asyncio"),
            ("coredis", bench_coredis, "trio"),
        ]:
            label = f"{name} ({backend})"
            # uvloop: asyncio on uvloop's event loop (what uvicorn runs when it is installed)
            uvloop = backend == "uvloop"
            try:
                results[label] = anyio.run(
                    fn, url, options.messages,
                    backend="asyncio" if uvloop else backend,
                    backend_options={"use_uvloop": True} if uvloop else {},
                )  # fmt: skip
            except Exception as exc:  # a peer that fails on a backend is reported, not fatal
                print(f"({label} failed: {type(exc).__name__}: {exc})")
        for label, rate in results.items():
            print(f"{label:24s} {rate:>12,.0f} messages/s")
        baseline: dict[str, Any] = {k: v for k, v in results.items() if not k.startswith("anypool")}
        for ours in (k for k in results if k.startswith("anypool")):
            ratios = ", ".join(
                f"{peer} x{results[ours] / rate:.2f}" for peer, rate in baseline.items()
            )
            print(f"{ours} vs {ratios}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
