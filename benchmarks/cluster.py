"""anypool's RedisCluster against redis-py's, coredis's and valkey-glide's cluster clients: one
local cluster, one run.

    python benchmarks/cluster.py [--duration 2] [--tasks 64] [--pin] [--cpu 0]
                                 [--clients anypool,redis.asyncio,coredis,glide] [--json FILE]

Workloads (keys spread over every slot range, so every node serves its share):

- sequential GET (one task), ops/s;
- ``--tasks`` tasks doing GETs, ops/s;
- pipelines of 100 GETs whose keys span the slots (non-transactional), commands/s.

One cluster (``anypool.testing.RedisCluster``: 3 primaries, no replicas, loopback) serves every
client.  Each client runs in a fresh subprocess.  With ``--pin`` the client process and every
node run on CPU 0 (or ``--cpu N``): CPU efficiency, stable on a quiet machine.  Without it
nothing is pinned.  A client that is not installed is skipped and said so.  Not a test: compare
the ratios printed by one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

KEYS = [f"bench:{i}" for i in range(512)]
VALUE = b"x" * 100
BACKENDS = {"anypool": ["asyncio", "uvloop", "trio"], "redis.asyncio": ["asyncio", "uvloop"],
            "coredis": ["asyncio", "trio"], "glide": ["asyncio", "uvloop", "trio"]}  # fmt: skip


async def timed(call: Callable[[], Awaitable[Any]], seconds: float, per_call: int = 1) -> float:
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        await call()
        done += per_call
    return done / elapsed


async def measure(client: str, port: int, seconds: float, tasks: int) -> dict[str, float]:
    import anyio

    if client == "anypool":
        import anypool

        cluster: Any = anypool.RedisCluster(
            startup_nodes=[("127.0.0.1", port)], health_check_interval=None
        )
        await cluster.open()
        close = cluster.aclose
        pipe_of = cluster.pipeline
    elif client == "redis.asyncio":
        from redis.asyncio.cluster import RedisCluster as RedisPyCluster

        cluster = RedisPyCluster(host="127.0.0.1", port=port)
        await cluster.initialize()
        close = cluster.aclose
        pipe_of = cluster.pipeline
    elif client == "glide":
        from glide import (
            ClusterBatch,
            GlideClusterClient,
            GlideClusterClientConfiguration,
            NodeAddress,
        )

        # glide's default request timeout (250 ms) can expire under load on one core: this
        # measures throughput, not glide's timeouts.
        config = GlideClusterClientConfiguration(
            [NodeAddress("127.0.0.1", port)], request_timeout=30_000
        )
        glide = await GlideClusterClient.create(config)
        cluster = glide
        close = glide.close

        class _GlidePipe:
            def __init__(self) -> None:
                self.batch = ClusterBatch(is_atomic=False)

            def get(self, key: str) -> None:
                self.batch.get(key)

            async def execute(self) -> Any:
                return await glide.exec(self.batch, raise_on_error=True)

        pipe_of = _GlidePipe
    else:
        import coredis

        cluster = coredis.RedisCluster(host="127.0.0.1", port=port)
        await cluster.__aenter__()

        async def close() -> None:
            await cluster.__aexit__(None, None, None)

        pipe_of = cluster.pipeline
    try:
        for key in KEYS:
            await cluster.set(key, VALUE)
        results: dict[str, float] = {}

        async def one_get() -> None:
            await cluster.get(KEYS[7])

        results["sequential GET"] = await timed(one_get, seconds)
        counts = [0] * tasks
        stop = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            key = KEYS[index % len(KEYS)]
            while time.perf_counter() < stop:
                await cluster.get(key)
                counts[index] += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            for index in range(tasks):
                group.start_soon(worker, index)
        results[f"{tasks} tasks GET"] = sum(counts) / (time.perf_counter() - start)

        async def pipeline() -> None:
            if client == "coredis":
                async with pipe_of(transaction=False) as pipe:
                    for key in KEYS[:100]:
                        pipe.get(key)
                return
            pipe = pipe_of()
            for key in KEYS[:100]:
                pipe.get(key)
            await pipe.execute()

        results["pipeline 100 GET"] = await timed(pipeline, seconds, 100)
        return results
    finally:
        await close()


def child(raw: str) -> int:
    spec = json.loads(raw)
    import anyio

    backend = spec["backend"]
    options = {"use_uvloop": True} if backend == "uvloop" else {}
    name = "asyncio" if backend == "uvloop" else backend
    results = anyio.run(
        measure, spec["client"], spec["port"], spec["seconds"], spec["tasks"],
        backend=name, backend_options=options,
    )  # fmt: skip
    print(json.dumps(results))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per workload")
    parser.add_argument("--tasks", type=int, default=64, help="tasks in the concurrent workload")
    parser.add_argument("--pin", action="store_true", help="client and nodes on one CPU")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU --pin uses")
    parser.add_argument("--clients", default="anypool,redis.asyncio,coredis,glide")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        return child(options.child)
    from anypool.testing import RedisCluster

    have_uvloop = importlib.util.find_spec("uvloop") is not None
    table: dict[str, dict[str, float]] = {}
    with RedisCluster(3, 0) as servers:
        if options.pin:
            for node in servers.nodes:
                os.sched_setaffinity(node.pid, {options.cpu})
        for client in options.clients.split(","):
            module = {"redis.asyncio": "redis"}.get(client, client)
            if importlib.util.find_spec(module) is None:
                print(f"{client}: not installed, skipped")
                continue
            for backend in BACKENDS.get(client, []):
                if backend == "uvloop" and not have_uvloop:
                    continue
                spec = {"client": client, "backend": backend, "port": servers.nodes[0].port,
                        "seconds": options.duration, "tasks": options.tasks}  # fmt: skip
                command = [sys.executable, __file__, "--child", json.dumps(spec)]
                if options.pin:
                    command = ["taskset", "-c", str(options.cpu), *command]
                done = subprocess.run(command, capture_output=True, text=True, timeout=600)
                label = f"{client} {backend}"
                if done.returncode != 0:
                    print(f"{label}: failed: {done.stderr.strip().splitlines()[-1:]}")
                    continue
                table[label] = json.loads(done.stdout.strip().splitlines()[-1])
    workloads = sorted({w for row in table.values() for w in row})
    print(f"{'client':24}" + "".join(f"{w:>22}" for w in workloads))
    for label, row in table.items():
        print(f"{label:24}" + "".join(f"{row.get(w, 0):>22,.0f}" for w in workloads))
    for backend in ("asyncio", "uvloop", "trio"):
        ours = table.get(f"anypool {backend}")
        for peer in ("redis.asyncio asyncio", "coredis asyncio", f"glide {backend}"):
            theirs = table.get(peer)
            if ours and theirs:
                ratios = "  ".join(
                    f"{w}: x{ours[w] / theirs[w]:.2f}" for w in workloads if theirs.get(w)
                )
                print(f"anypool {backend} / {peer}: {ratios}")
    if options.json:
        with open(options.json, "w") as out:
            json.dump(table, out, indent=2)
    return 0


if __name__ == "__main__":
    if sys.platform == "win32":  # pragma: no cover
        asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())
    sys.exit(main(sys.argv[1:]))
