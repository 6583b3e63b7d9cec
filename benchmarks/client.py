"""anypool against redis.asyncio and coredis, on one server, in one run: ops/s and ratios.

    python benchmarks/client.py [--url redis://...] [--seconds 2] [--pin]

Workloads: sequential GET, N concurrent tasks doing GETs (1/16/64/256, max_size=16), and
pipelines of 100 SETs (commands/s).  Without --url an embedded redis-server is started (and
stopped).  Every loop is bounded in time.  With --pin, the client process pins itself and the
server to CPU 0 (stable CPU-efficiency figures on a 2-core machine; see DESIGN.md).
Clients that are not installed are skipped and said so.
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

Work = Callable[[], Awaitable[None]]


async def timed(work: Work, seconds: float, ops_per_call: int) -> float:
    """Run ``work`` repeatedly for about ``seconds``; return operations per second."""
    await work()  # warm up (connections, scripts)
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await work()
        calls += 1
    return calls * ops_per_call / (time.perf_counter() - started)


async def concurrent(get: Callable[[], Awaitable[Any]], tasks: int, seconds: float) -> float:
    """``tasks`` tasks doing GETs for ``seconds``; total GETs per second."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await get()
            count += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    return count / (time.perf_counter() - started)


async def workloads(client: Any, seconds: float, one_pipeline: Work) -> dict[str, float]:
    await client.set("bench:key", "x" * 100)

    async def one_get() -> None:
        await client.get("bench:key")

    results = {"sequential GET": await timed(one_get, seconds, 1)}
    for tasks in (1, 16, 64, 256):
        results[f"{tasks} tasks GET"] = await concurrent(
            lambda: client.get("bench:key"), tasks, seconds
        )
    results["100x100 pipeline (cmds/s)"] = await timed(one_pipeline, seconds, 100)
    return results


async def execute_100_sets(pipe: Any) -> None:
    for i in range(100):
        pipe.set(f"bench:p{i}", i)
    await pipe.execute()


async def bench_anypool(url: str, seconds: float) -> dict[str, float]:
    async with anypool.RedisPool.from_url(url, max_size=16, health_check_interval=None) as redis:
        return await workloads(redis, seconds, lambda: execute_100_sets(redis.pipeline(False)))


async def bench_redis_py(url: str, seconds: float) -> dict[str, float]:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, max_connections=16)
    try:
        # redis-py's default pool raises when exhausted; the blocking pool waits like ours.
        client.connection_pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=16
        )
        return await workloads(client, seconds, lambda: execute_100_sets(client.pipeline(False)))
    finally:
        await client.aclose()


async def bench_coredis(url: str, seconds: float) -> dict[str, float]:
    import coredis

    client = coredis.Redis.from_url(url, max_connections=16)

    async def pipeline() -> None:  # coredis 6 sends the pipeline when the block exits
        async with client.pipeline(transaction=False) as pipe:
            for i in range(100):
                pipe.set(f"bench:p{i}", i)

    async with client:
        return await workloads(client, seconds, pipeline)


def run(name: str, fn: Callable[[str, float], Awaitable[dict[str, float]]], backend: str,
        url: str, seconds: float) -> dict[str, float] | None:  # fmt: skip
    try:
        return anyio.run(fn, url, seconds, backend=backend)
    except ImportError as exc:
        print(f"({name} on {backend} skipped: {exc})")
    except Exception as exc:  # a peer that fails on a backend is reported, not fatal
        print(f"({name} on {backend} failed: {type(exc).__name__}: {exc})")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--pin", action="store_true")
    options = parser.parse_args()
    server = None
    if options.url is None:
        server = RedisServer()
        server.start()
        url = server.url
    else:
        url = options.url
    try:
        if options.pin:
            os.sched_setaffinity(0, {0})
            if server is not None:
                os.sched_setaffinity(server.pid, {0})
        table: dict[str, dict[str, float]] = {}
        for name, fn, backend in [
            ("anypool", bench_anypool, "asyncio"),
            ("anypool", bench_anypool, "trio"),
            ("redis.asyncio", bench_redis_py, "asyncio"),
            ("coredis", bench_coredis, "asyncio"),
            ("coredis", bench_coredis, "trio"),
        ]:
            result = run(name, fn, backend, url, options.seconds)
            if result is not None:
                table[f"{name} ({backend})"] = result
        print_table(table)
    finally:
        if server is not None:
            server.stop()


def print_table(table: dict[str, dict[str, float]]) -> None:
    clients = list(table)
    workloads_ = list(next(iter(table.values())))
    print(f"{'workload':28s}" + "".join(f"{c:>22s}" for c in clients))
    for workload in workloads_:
        print(f"{workload:28s}" + "".join(f"{table[c][workload]:>20,.0f}/s" for c in clients))
    print("\nratios (anypool / peer):")
    for ours in [c for c in clients if c.startswith("anypool")]:
        for peer in [c for c in clients if not c.startswith("anypool")]:
            ratios = ", ".join(
                f"{w.split(' (')[0]} x{table[ours][w] / table[peer][w]:.2f}" for w in workloads_
            )
            print(f"  {ours} vs {peer}: {ratios}")


if __name__ == "__main__":
    main()
