"""anypool against valkey-glide, redis.asyncio, coredis and a raw anyio floor: one server, one run.

    python benchmarks/concurrency.py [--duration 2] [--concurrency 1,16,64,256]
                                     [--pin | --both] [--cpu 0] [--clients anypool,glide,...]
                                     [--no-memory] [--json FILE]

The measurements issue 12 asks for, side by side, printed as one table with ratios:

- sequential GET (one task), ops/s;
- N tasks doing GETs on a pool of 16 (``--concurrency``): ops/s, the latency of each request
  (p50, p99, p99.9) and the fewest and most requests any one task completed (fairness);
- pipelines of 100 SETs (non-transactional), commands/s;
- GET of a 1 MiB value, ops/s and MB/s;
- the raw anyio floor: a hand-written client on an anyio socket stream that sends a pre-encoded
  ``GET bench:key`` and parses the bulk reply minimally (sequential GET only), on each backend;
- anypool's memory per waiting task and per connection (see ``measure_memory``).

Clients: anypool on asyncio, asyncio+uvloop and trio (``RedisPool.from_url(url, max_size=16,
health_check_interval=None)``, and again with ``autopipeline=False`` where RedisPool takes that
keyword); redis.asyncio with a ``BlockingConnectionPool(max_connections=16)`` (asyncio,
uvloop); coredis (asyncio, trio) and valkey-glide's ``GlideClient`` (asyncio, uvloop, trio) when
installed (``pip install anypool[bench]``).  A client that is not installed is skipped and said so.

One embedded redis-server (``anypool.testing.RedisServer``, loopback) serves every client.  Each
client runs in a fresh subprocess, so one client's allocations, threads and imports cannot
affect another's.  With ``--pin`` the client process (all its threads) and every server thread
run on CPU 0 (or ``--cpu N``): CPU efficiency, stable on a quiet machine (on a busy one, pick
the idler CPU).  Without it nothing is pinned.  ``--both`` runs pinned, then unpinned, in the
same invocation against the same server.  The memory figures are taken once, unpinned.

Latency is taken around each ``await get()`` with ``time.perf_counter()`` in every client alike
(its cost is in every column).  Not a test: figures depend on the machine; compare the ratios
printed by one run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

KEY = "bench:key"
BIG_KEY = "bench:big"
VALUE = b"x" * 100
BIG_VALUE = b"y" * (1 << 20)
POOL_SIZE = 16
WAITING_TASKS = 1000
CONNECTIONS = 100
# The floor client's whole request, encoded once: GET bench:key.
FLOOR_REQUEST = b"*2\r\n$3\r\nGET\r\n$9\r\nbench:key\r\n"

# (client, backend) in column order; "uvloop" is asyncio on uvloop's event loop.
CLIENTS: list[tuple[str, str]] = [
    ("anypool", "asyncio"), ("anypool", "uvloop"), ("anypool", "trio"),
    ("anypool-noap", "asyncio"), ("anypool-noap", "uvloop"), ("anypool-noap", "trio"),
    ("glide", "asyncio"), ("glide", "uvloop"), ("glide", "trio"),
    ("redis.asyncio", "asyncio"), ("redis.asyncio", "uvloop"),
    ("coredis", "asyncio"), ("coredis", "trio"),
    ("floor", "asyncio"), ("floor", "uvloop"), ("floor", "trio"),
]  # fmt: skip
# What each client name is, for the legend under the table.
LEGEND = {
    "anypool": "anypool RedisPool(max_size=16), autopipeline at its default",
    "anypool-noap": "anypool RedisPool(max_size=16, autopipeline=False)",
    "glide": "valkey-glide GlideClient (one multiplexed connection, its default)",
    "redis.asyncio": "redis.asyncio Redis on BlockingConnectionPool(max_connections=16)",
    "coredis": "coredis Redis(max_connections=16)",
    "floor": "raw anyio floor: pre-encoded GET on one anyio socket stream, minimal parse",
}
PACKAGES = ["anypool", "redis", "hiredis", "anyio", "trio", "uvloop", "valkey-glide", "coredis"]
IMPORTS = {"glide": "glide", "coredis": "coredis", "redis.asyncio": "redis"}


# --- the clients, each as "ops" the workloads drive ---------------------------------------------


@dataclass
class Ops:
    """What a workload can ask of a client.  ``pipeline`` sends 100 SETs in one pipeline;
    ``full`` is False for the floor, which only does the sequential GET."""

    get: Callable[[str], Awaitable[Any]]
    pipeline: Callable[[], Awaitable[Any]] | None = None
    full: bool = True


@contextlib.asynccontextmanager
async def open_anypool(url: str, extra: dict[str, Any]) -> AsyncIterator[Ops]:
    import anypool

    options: dict[str, Any] = {"max_size": POOL_SIZE, "health_check_interval": None, **extra}
    async with anypool.RedisPool.from_url(url, **options) as redis:

        async def pipeline() -> None:
            pipe = redis.pipeline(transaction=False)
            for i in range(100):
                pipe.set(f"bench:p{i}", i)
            await pipe.execute()

        yield Ops(redis.get, pipeline)


@contextlib.asynccontextmanager
async def open_redis_py(url: str, extra: dict[str, Any]) -> AsyncIterator[Ops]:
    import redis.asyncio

    # redis-py's default pool raises when exhausted; its blocking pool waits, as anypool does
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE)
    client = redis.asyncio.Redis(connection_pool=pool)
    try:

        async def pipeline() -> None:
            pipe = client.pipeline(transaction=False)
            for i in range(100):
                pipe.set(f"bench:p{i}", i)
            await pipe.execute()

        yield Ops(client.get, pipeline)
    finally:
        await client.aclose()
        await pool.disconnect()  # redis-py does not close a pool it was given


@contextlib.asynccontextmanager
async def open_coredis(url: str, extra: dict[str, Any]) -> AsyncIterator[Ops]:
    import coredis

    client = coredis.Redis.from_url(url, max_connections=POOL_SIZE)

    async def pipeline() -> None:  # coredis 6 sends a pipeline when its block exits
        async with client.pipeline(transaction=False) as pipe:
            for i in range(100):
                pipe.set(f"bench:p{i}", i)

    async with client:
        yield Ops(client.get, pipeline)


@contextlib.asynccontextmanager
async def open_glide(url: str, extra: dict[str, Any]) -> AsyncIterator[Ops]:
    from glide import Batch, GlideClient, GlideClientConfiguration, NodeAddress

    parts = urlsplit(url)
    # glide's default request timeout (250 ms) can expire under 256 tasks on one core: a
    # benchmark measures throughput, not glide's timeouts.
    config = GlideClientConfiguration(
        [NodeAddress(parts.hostname or "127.0.0.1", parts.port or 6379)], request_timeout=30_000
    )
    client = await GlideClient.create(config)
    try:

        async def pipeline() -> None:
            batch = Batch(is_atomic=False)
            for i in range(100):
                batch.set(f"bench:p{i}", str(i))
            await client.exec(batch, raise_on_error=True)

        yield Ops(client.get, pipeline)
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def open_floor(url: str, extra: dict[str, Any]) -> AsyncIterator[Ops]:
    import anyio

    parts = urlsplit(url)
    stream = await anyio.connect_tcp(parts.hostname or "127.0.0.1", parts.port or 6379)
    send, receive = stream.send, stream.receive

    async def get(key: str) -> bytes:
        if key != KEY:
            raise ValueError(f"the floor client only sends GET {KEY}, not GET {key}")
        await send(FLOOR_REQUEST)
        buffer = await receive()
        while True:  # a bulk string: b"$<length>\r\n<data>\r\n"
            end = buffer.find(b"\r\n")
            if end > 0:
                if buffer[0] != 0x24:  # "$"
                    raise RuntimeError(f"the floor client expected a bulk reply, got {buffer!r}")
                total = end + 4 + int(buffer[1:end])
                if len(buffer) >= total:
                    return buffer[end + 2 : total - 2]
            buffer += await receive()

    async with stream:
        yield Ops(get, full=False)


OPENERS: dict[str, Callable[[str, dict[str, Any]], contextlib.AbstractAsyncContextManager[Ops]]] = {
    "anypool": open_anypool,
    "anypool-noap": lambda url, extra: open_anypool(url, {**extra, "autopipeline": False}),
    "glide": open_glide,
    "redis.asyncio": open_redis_py,
    "coredis": open_coredis,
    "floor": open_floor,
}


# --- the workloads ------------------------------------------------------------------------------


async def timed(call: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Calls per second of ``call`` awaited one after another for ``seconds``."""
    await call()  # warm up: connections, scripts, first-use imports
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await call()
        calls += 1
    return calls / (time.perf_counter() - started)


async def concurrent(get: Callable[[str], Awaitable[Any]], tasks: int, seconds: float) -> Any:
    """``tasks`` tasks doing GETs for ``seconds``: throughput, latency percentiles (us) and the
    fewest/most requests a task completed.  A short untimed round of the same shape first
    opens the pool's connections."""
    import anyio

    pc = time.perf_counter

    async def round_of(duration: float) -> tuple[float, list[list[float]]]:
        latencies: list[list[float]] = [[] for _ in range(tasks)]
        deadline = pc() + duration

        async def worker(mine: list[float]) -> None:
            append = mine.append
            while (started := pc()) < deadline:
                await get(KEY)
                append(pc() - started)

        started = pc()
        async with anyio.create_task_group() as tg:
            for mine in latencies:
                tg.start_soon(worker, mine)
        return pc() - started, latencies

    await round_of(min(0.5, max(0.1, seconds / 10)))
    elapsed, latencies = await round_of(seconds)
    every = sorted(value for mine in latencies for value in mine)
    counts = [len(mine) for mine in latencies]

    def percentile(p: float) -> float:
        if not every:
            return math.nan
        return every[min(len(every) - 1, math.ceil(p / 100 * len(every)) - 1)] * 1e6

    return {
        "ops": len(every) / elapsed,
        "p50": percentile(50),
        "p99": percentile(99),
        "p99.9": percentile(99.9),
        "min": min(counts),
        "max": max(counts),
    }


async def check_values(ops: Ops) -> None:
    """The values the parent stored come back whole (a benchmark of wrong answers is void)."""
    got = await ops.get(KEY)
    if bytes(got) != VALUE:
        raise RuntimeError(f"GET {KEY} returned {bytes(got)[:40]!r}..., not the stored value")
    if ops.full:
        big = await ops.get(BIG_KEY)
        if bytes(big) != BIG_VALUE:
            raise RuntimeError(f"GET {BIG_KEY} returned {len(big)} bytes, not the 1 MiB stored")


async def measure_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    seconds = spec["duration"]
    results: dict[str, Any] = {}
    async with OPENERS[spec["client"]](spec["url"], {}) as ops:
        await check_values(ops)
        results["sequential GET"] = {"ops": await timed(lambda: ops.get(KEY), seconds)}
        if not ops.full or ops.pipeline is None:
            return results
        for tasks in spec["concurrency"]:
            results[f"{tasks} tasks GET"] = await concurrent(ops.get, tasks, seconds)
        results["pipeline"] = {"ops": 100 * await timed(ops.pipeline, seconds)}
        big = await timed(lambda: ops.get(BIG_KEY), seconds)
        results["1 MiB GET"] = {"ops": big, "MB/s": big * len(BIG_VALUE) / 1e6}
    return results


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """anypool's memory, by tracemalloc (Python allocations) and RSS.

    - per connection: a pool with ``min_size=100, max_size=100``, ``await pool.wait()``: RSS
      growth / 100 (first, before anything else has grown the heap), then traced bytes / 100
      with a second such pool (tracemalloc's own overhead would inflate the RSS figure).
      Valid if the server then counts at least 100 clients;
    - per task waiting for a connection: a pool of 1 whose connection a BLPOP holds
      (``acquire()``, exclusive); 1000 tasks call ``GET`` and block; traced bytes / 1000;
    - per task waiting for a reply: a pool of 16 with its connections open, the server paused
      by ``CLIENT PAUSE 3000 ALL``; 1000 tasks call ``GET``; traced bytes / 1000 (without
      autopipelining most of them wait for a connection, not a reply: that is what users get).
      Valid only if no waiting GET completed before the snapshot;
    - for reference, per bare task blocked on an ``anyio.Event`` (1000 again): the part of
      the two rows above that any waiting task costs, whatever it waits for.

    tracemalloc counts Python allocations only (not hiredis's buffers or the kernel's socket
    buffers).  RSS is page-granular and reuses heap that imports freed, so it undercounts.

    A pool of 1 runs a GET first, so first-use costs (imports, caches) are not counted.
    """
    import anyio

    import anypool

    url = spec["url"]
    extra: dict[str, Any] = {"autopipeline": False} if spec["client"] == "anypool-noap" else {}
    options: dict[str, Any] = {"health_check_interval": None, **extra}
    results: dict[str, Any] = {}

    async def waiting(max_size: int, pause: bool) -> tuple[float, bool]:
        done = 0

        async def waiter(redis: Any) -> None:
            nonlocal done
            await redis.get(KEY)
            done += 1

        async with anypool.RedisPool.from_url(url, max_size=max_size, **options) as redis:
            async with anyio.create_task_group() as tg:
                for _ in range(max_size):  # open the connections, warm the GET path
                    tg.start_soon(waiter, redis)
            done = 0
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    if pause:
                        await redis.client_pause(3000, all=True)
                    else:
                        held = anyio.Event()

                        async def holder() -> None:
                            async with redis.acquire() as conn:
                                held.set()
                                await conn.blpop(["bench:nothing"], timeout=0)

                        tg.start_soon(holder)
                        await held.wait()
                    await anyio.wait_all_tasks_blocked()
                    gc.collect()
                    tracemalloc.start()
                    before = tracemalloc.get_traced_memory()[0]
                    for _ in range(WAITING_TASKS):
                        tg.start_soon(waiter, redis)
                    await anyio.wait_all_tasks_blocked()
                    grown = tracemalloc.get_traced_memory()[0] - before
                    tracemalloc.stop()
                    valid = done == 0
                    tg.cancel_scope.cancel()
        return grown / WAITING_TASKS, valid

    async def bare_tasks() -> float:
        """The same count of tasks blocked on an anyio Event: what any waiting task costs,
        so the difference to the rows above is anypool's own."""
        event = anyio.Event()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(event.wait)  # warm anyio's own first-use paths
                await anyio.wait_all_tasks_blocked()
                gc.collect()
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
                for _ in range(WAITING_TASKS):
                    tg.start_soon(event.wait)
                await anyio.wait_all_tasks_blocked()
                grown = tracemalloc.get_traced_memory()[0] - before
                tracemalloc.stop()
                event.set()
        return grown / WAITING_TASKS

    async def connections(traced: bool) -> tuple[float, bool]:
        gc.collect()
        if traced:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
        async with anypool.RedisPool.from_url(
            url, min_size=CONNECTIONS, max_size=CONNECTIONS, **options
        ) as redis:
            with anyio.fail_after(60):
                await redis.pool.wait()
            after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
            if traced:
                tracemalloc.stop()
            # the server's count, this pool's connections included: proof they are open
            clients = int((await redis.info("clients"))["connected_clients"])
        return (after - before) / CONNECTIONS, clients >= CONNECTIONS

    # RSS first, before anything has grown the heap (freed memory is reused, not returned);
    # a pool of 1 first warms the code paths (imports, caches) so they are not counted.
    async with anypool.RedisPool.from_url(url, max_size=1, **options) as redis:
        await redis.get(KEY)
    for name, traced in (("connection (RSS)", False), ("connection (traced)", True)):
        per_connection, valid = await connections(traced)
        results[name] = {"bytes": per_connection, "valid": valid}
    per_task, valid = await waiting(1, pause=False)
    results["task waiting for a connection"] = {"bytes": per_task, "valid": valid}
    per_task, valid = await waiting(POOL_SIZE, pause=True)
    results["task waiting for a reply"] = {"bytes": per_task, "valid": valid}
    results["bare task waiting on an Event"] = {"bytes": await bare_tasks(), "valid": True}
    with anyio.fail_after(30):  # the pause lifts by itself; wait for it before going on
        async with anypool.RedisPool.from_url(url, max_size=1, **options) as redis:
            await redis.ping()
    return results


def worker_main(raw: str) -> int:
    """The child process: pin itself (before any import starts a thread), run, print JSON."""
    spec = json.loads(raw)
    os.sched_setaffinity(0, set(spec["cpus"]))
    import anyio

    job = measure_memory if spec["kind"] == "memory" else measure_throughput
    backend_options = {"use_uvloop": True} if spec["backend"] == "uvloop" else {}
    backend = "asyncio" if spec["backend"] == "uvloop" else spec["backend"]
    result = anyio.run(job, spec, backend=backend, backend_options=backend_options)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --- the parent: server, pinning, subprocesses ---------------------------------------------------


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of a process, not only its main one (redis-server has I/O threads)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(server: Any) -> dict[str, Any]:
    import anypool

    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    source = Path(anypool.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(source), "describe", "--always", "--dirty"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "server": f"redis-server {'.'.join(map(str, server.version))} ({server.binary})",
        "anypool source": f"{source} at {commit or 'unknown commit'}",
        "versions": {package: version_of(package) for package in PACKAGES},
    }


def available(client: str, backend: str) -> str | None:
    """Why a client cannot run here, or None."""
    module = IMPORTS.get(client)
    if module and importlib.util.find_spec(module) is None:
        return f"{client} skipped: {module} is not installed"
    if backend == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return f"{client} ({backend}) skipped: uvloop is not installed"
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        return f"{client} ({backend}) skipped: trio is not installed"
    if client == "anypool-noap":
        import anypool

        try:
            anypool.RedisPool.from_url("redis://127.0.0.1:6379/0", autopipeline=False)
        except Exception as exc:
            return f"anypool-noap skipped: RedisPool takes no autopipeline keyword yet ({exc})"
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(
    spec: dict[str, Any], timeout: float, server_pid: int
) -> tuple[dict[str, Any] | None, str | None]:
    """Run one client in a fresh process.  The result also says how much CPU the child and the
    server used per second of wall time ("cpu share"): pinned to one CPU, a share well under
    1.0 means another process took the rest, and that column's figures are low."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before, started = cpu_seconds(server_pid), time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:  # run() has killed the child
        return None, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    used += cpu_seconds(server_pid) - server_before
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            result["cpu share"] = {"ops": used / wall}
            return result, None
    last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    return None, last


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per workload, the run with the most ops/s (its latency and fairness figures with it);
    the cpu share is the mean over the runs."""
    best: dict[str, Any] = {}
    for run in runs:
        for workload, figures in run.items():
            if workload != "cpu share" and figures["ops"] > best.get(workload, {"ops": -1})["ops"]:
                best[workload] = figures
    best["cpu share"] = {"ops": sum(run["cpu share"]["ops"] for run in runs) / len(runs)}
    return best


def wait_for_server(url: str) -> None:
    """Block until the server answers (a CLIENT PAUSE from a memory child lifts by itself)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        client.ping()
    finally:
        client.close()


def run_all(options: argparse.Namespace, server: Any, notes: list[str]) -> dict[str, Any]:
    every_cpu = sorted(os.sched_getaffinity(0))
    modes = ["pinned", "unpinned"] if options.both else ["pinned" if options.pin else "unpinned"]
    chosen = [(c, b) for c, b in CLIENTS if options.clients is None or c in options.clients]
    runnable = []
    for client, backend in chosen:
        reason = available(client, backend)
        if reason is None:
            runnable.append((client, backend))
        elif reason not in notes:
            notes.append(reason)
    steps = 4 + len(options.concurrency)
    timeout = 60 + steps * (options.duration + 0.5) * 3
    results: dict[str, Any] = {"modes": {}, "runs": {}, "memory": {}}
    for mode in modes:
        cpus = [options.cpu] if mode == "pinned" else every_cpu
        set_affinity(server.pid, set(cpus))
        runs: dict[str, list[dict[str, Any]]] = {f"{c} {b}": [] for c, b in runnable}
        for round_ in range(options.repeat):  # round-robin: a noisy moment hits every client
            for client, backend in runnable:
                label = f"{client} {backend}"
                print(f"[{mode} {round_ + 1}] {label} ...", file=sys.stderr, flush=True)
                spec = {
                    "kind": "throughput", "client": client, "backend": backend,
                    "url": server.url, "duration": options.duration,
                    "concurrency": options.concurrency, "cpus": cpus,
                }  # fmt: skip
                wait_for_server(server.url)
                result, error = run_child(spec, timeout, server.pid)
                if result is None:
                    notes.append(f"{label} ({mode}, round {round_ + 1}) failed: {error}")
                else:
                    runs[label].append(result)
        results["modes"][mode] = {label: best_of(got) for label, got in runs.items() if got}
        results["runs"][mode] = runs
    if not options.no_memory:
        set_affinity(server.pid, set(every_cpu))
        for client, backend in runnable:
            if not client.startswith("anypool"):
                continue
            label = f"{client} {backend}"
            print(f"[memory] {label} ...", file=sys.stderr, flush=True)
            spec = {
                "kind": "memory", "client": client, "backend": backend, "url": server.url,
                "cpus": every_cpu,
            }  # fmt: skip
            wait_for_server(server.url)
            result, error = run_child(spec, 180, server.pid)
            if result is None:
                notes.append(f"memory of {label} failed: {error}")
            else:
                result.pop("cpu share")
                results["memory"][label] = result
        wait_for_server(server.url)
    return results


# --- output -------------------------------------------------------------------------------------

SHORT = {"anypool-noap": "ap-noAP", "redis.asyncio": "redis-py"}
WIDTH = 11
FIRST = 34


def header(labels: Sequence[str], title: str) -> list[str]:
    names = [SHORT.get(label.split()[0], label.split()[0]) for label in labels]
    return [row(title, names), row("", [label.split()[1] for label in labels])]


def row(name: str, cells: Sequence[str]) -> str:
    return name.ljust(FIRST) + "".join(" " + cell.rjust(WIDTH - 1) for cell in cells)


def number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"


def workloads_of(table: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for result in table.values():
        for workload in result:
            if workload not in seen and workload != "cpu share":
                seen.append(workload)
    return seen


def value(table: dict[str, Any], label: str, workload: str, field: str = "ops") -> Any:
    result: Any = table.get(label, {}).get(workload, {}).get(field)
    return result


def print_mode(mode: str, table: dict[str, Any], concurrency: Sequence[int], cpu: int) -> None:
    labels = list(table)
    if not labels:
        print(f"\n== {mode}: no client ran ==")
        return
    what = f": client and every server thread on CPU {cpu}" if mode == "pinned" else ""
    print(f"\n== {mode}{what} ==")
    workloads = workloads_of(table)
    lines = header(labels, "ops/s")
    for workload in workloads:
        name = "pipeline of 100 SETs (cmds/s)" if workload == "pipeline" else workload
        lines.append(row(name, [number(value(table, lb, workload)) for lb in labels]))
        if workload == "1 MiB GET":
            mbs = [number(value(table, lb, workload, "MB/s")) for lb in labels]
            lines.append(row("1 MiB GET (MB/s)", mbs))
    if len(concurrency) > 1:
        first, last = f"{concurrency[0]} tasks GET", f"{concurrency[-1]} tasks GET"
        scaling = [ratio(value(table, lb, last), value(table, lb, first)) for lb in labels]
        lines.append(row(f"scaling {concurrency[-1]}/{concurrency[0]} tasks", scaling))
    shares = [number(value(table, lb, "cpu share"), 2) for lb in labels]
    lines.append(row("cpu share (client+server)/wall", shares))
    print("\n".join(lines))

    lines = header(labels, "per request (us) / per task (n)")
    for tasks in concurrency:
        workload = f"{tasks} tasks GET"
        for field in ("p50", "p99", "p99.9"):
            cells = [number(value(table, lb, workload, field)) for lb in labels]
            lines.append(row(f"{workload} latency {field}", cells))
        cells = [
            "-" if value(table, lb, workload, "min") is None
            else f"{value(table, lb, workload, 'min')}/{value(table, lb, workload, 'max')}"
            for lb in labels
        ]  # fmt: skip
        lines.append(row(f"{workload} min/max requests", cells))
    print("\n" + "\n".join(lines))

    ours = [label for label in labels if label.startswith("anypool")]
    if not ours:
        return

    def backend(label: str) -> str:
        return label.split()[1]

    peers: list[tuple[str, Callable[[str], str]]] = [
        ("glide asyncio", lambda label: "glide asyncio"),
        ("glide same backend", lambda label: f"glide {backend(label)}"),
        (
            "redis.asyncio (uvloop on uvloop)",
            lambda label: f"redis.asyncio {'uvloop' if backend(label) == 'uvloop' else 'asyncio'}",
        ),
        ("coredis same backend", lambda label: f"coredis {backend(label)}"),
    ]
    lines = header(ours, "ratios: anypool / peer")
    if any(label.startswith("floor") for label in labels):
        floor = [ratio(value(table, lb, "sequential GET"), value(table, f"floor {backend(lb)}",
                       "sequential GET")) for lb in ours]  # fmt: skip
        lines.append(row("sequential GET / floor", floor))
    for title, peer_of in peers:
        if not any(peer_of(label) in table for label in ours):
            continue
        lines.append(f"vs {title}:")
        for workload in workloads:
            cells = [
                ratio(value(table, lb, workload), value(table, peer_of(lb), workload))
                for lb in ours
            ]
            name = "pipeline of 100 SETs" if workload == "pipeline" else workload
            lines.append(row(f"  {name}", cells))
    print("\n" + "\n".join(lines))


def print_memory(memory: dict[str, Any]) -> None:
    if not memory:
        return
    labels = list(memory)
    lines = header(labels, "memory (KiB)")
    for measure in next(iter(memory.values())):
        cells = []
        for label in labels:
            got = memory[label].get(measure, {})
            text = number(got["bytes"] / 1024, 2) if "bytes" in got else "-"
            cells.append(text if got.get("valid", True) else f"{text}?")
        lines.append(row(f"per {measure}", cells))
    print("\n" + "\n".join(lines))
    print(
        "(measured once, unpinned, in a fresh process per column: connections by opening a pool\n"
        f" with min_size={CONNECTIONS}; waiting tasks as {WAITING_TASKS} GETs blocked behind a"
        " BLPOP holding a pool of 1,\n or while CLIENT PAUSE holds the server; tracemalloc counts"
        " Python allocations only,\n RSS is page-granular and undercounts; '?' marks a figure"
        " taken after a waiting GET completed)"
    )


def report(info: dict[str, Any], results: dict[str, Any], options: argparse.Namespace) -> None:
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}")
    print(f"python {info['python']}; {info['server']}")
    print(f"anypool from {info['anypool source']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        f"duration {options.duration} s per workload, pool of {POOL_SIZE}, "
        f"values of {len(VALUE)} bytes and 1 MiB, each client in a fresh process"
    )
    if options.repeat > 1:
        print(f"best of {options.repeat} round-robin runs per workload (all runs in --json)")
    print(
        "cpu share: CPU seconds of client and server per wall second; pinned, under ~0.9 means"
        " another\nprocess took part of the CPU and that column reads low"
    )
    for mode, table in results["modes"].items():
        print_mode(mode, table, options.concurrency, options.cpu)
    print_memory(results["memory"])
    print("\nclients:")
    for name, text in LEGEND.items():
        short = f" ({SHORT[name]})" if name in SHORT else ""
        print(f"  {name}{short}: {text}")
    for note in results["notes"]:
        print(f"({note})")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per workload")
    parser.add_argument("--concurrency", default="1,16,64,256", help="task counts, comma-separated")
    pinning = parser.add_mutually_exclusive_group()
    pinning.add_argument("--pin", action="store_true", help="pin client and server to --cpu")
    pinning.add_argument("--both", action="store_true", help="pinned, then unpinned")
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="run every client this many times, round-robin, and keep the best of each workload",
    )  # fmt: skip
    parser.add_argument("--cpu", type=int, default=0, help="the CPU --pin uses (default 0)")
    parser.add_argument("--clients", help=f"only these, comma-separated, of {', '.join(LEGEND)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measures")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    options = parser.parse_args(argv)
    try:
        options.concurrency = [int(part) for part in options.concurrency.split(",") if part]
    except ValueError:
        options.concurrency = []
    if not options.concurrency or any(n < 1 for n in options.concurrency):
        parser.error("--concurrency must list positive integers, e.g. 1,16,64,256")
    if not (math.isfinite(options.duration) and options.duration > 0):
        parser.error("--duration must be a positive number of seconds")
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")
    if options.cpu not in os.sched_getaffinity(0):
        parser.error(f"--cpu {options.cpu} is not one this process may run on")
    if options.clients is not None:
        options.clients = [name.strip() for name in options.clients.split(",") if name.strip()]
        unknown = sorted(set(options.clients) - set(LEGEND))
        if unknown:
            parser.error(f"unknown clients {unknown}: choose among {', '.join(LEGEND)}")
    return options


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    options = parse(argv)
    import redis

    from anypool.testing import RedisServer

    notes: list[str] = []
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        try:
            client.set(KEY, VALUE)
            client.set(BIG_KEY, BIG_VALUE)
        finally:
            client.close()
        info = machine(server)
        results = run_all(options, server, notes)
    results["notes"] = notes
    report(info, results, options)
    if options.json:
        with open(options.json, "w") as file:
            json.dump({"machine": info, **results}, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
