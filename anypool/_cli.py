"""The ``anypool`` command: demo, bench, ping, clients.

Parsing is argparse (standard library); terminal output is rich (the ``cli`` extra).  Every
error becomes one line on stderr and a non-zero exit code, never a traceback, and URLs are
always shown with the password redacted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from redis.exceptions import RedisError

from . import __version__
from ._client import RedisPool
from ._cluster import SLOTS, Node, RedisCluster
from ._config import redact_url, split_url
from ._connection import Connection
from ._errors import AnyPoolError
from ._pubsub import Message, Reconnected, Subscription
from ._sentinel import is_sentinel_url
from .testing import RedisCluster as ClusterServers
from .testing import RedisSentinel as SentinelServers
from .testing import RedisServer, RedisServerError

T = TypeVar("T")
Backend = Literal["asyncio", "uvloop", "trio"]
BACKENDS: tuple[Backend, ...] = ("asyncio", "uvloop", "trio")


def _console(stderr: bool = False) -> Any:
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - the cli extra installs rich
        raise SystemExit("the anypool command needs rich: pip install 'anypool[cli]'") from None
    # soft_wrap: lines are never broken up (an error stays one line when captured or piped)
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class CommandError(Exception):
    """A failure to report as one line (the message says what went wrong and what to do)."""


# --- ping ---------------------------------------------------------------------------------------


def _cluster_enabled(info: Any) -> bool:
    """Whether an ``INFO cluster`` reply (parsed, or as the server sent it) is a cluster
    node's."""
    if isinstance(info, dict):
        return str(info.get("cluster_enabled")) == "1"
    text = info.decode() if isinstance(info, bytes) else str(info)
    return any(line.strip() == "cluster_enabled:1" for line in text.splitlines())


def _open_cluster(url: str, timeout: float) -> RedisCluster:
    """A cluster client for the tools: one connection per node, nothing in the background."""
    return RedisCluster.from_url(
        url, max_size=1, health_check_interval=None, autopipeline=False,
        connect_timeout=timeout, socket_timeout=timeout,
    )  # fmt: skip


async def _ping_nodes(url: str, timeout: float) -> tuple[str, int]:
    """PING every node of the cluster ``url`` is a node of: one line, and the exit code."""
    async with _open_cluster(url, timeout) as cluster:
        table = await cluster.refresh_topology()
        times: list[float] = []
        failing: list[str] = []
        for node in table.nodes:
            try:
                with anyio.fail_after(timeout):
                    started = time.perf_counter()
                    await cluster.execute_command("PING", target_nodes=node)
                    times.append(time.perf_counter() - started)
            except (AnyPoolError, RedisError, TimeoutError) as exc:
                failing.append(f"{node} ({_one_line(exc)})")
    line = (
        f"cluster: {len(times)} of {len(table.nodes)} nodes answered"
        + (f", slowest in {max(times) * 1000:.2f} ms" if times else "")
        + f"; {table.covered} of {SLOTS} slots covered"
        + (f"; failing: {', '.join(failing)}" if failing else "")
    )
    return line, 0 if not failing and table.covered == SLOTS else 1


async def _ping_sentinel(url: str, timeout: float) -> tuple[list[str], int]:
    """PING the primary of a ``redis+sentinel://`` URL's service (found through its
    sentinels, checked with ROLE) and say what each sentinel names; exit 1 unless every
    sentinel answered and they agree."""
    pool = RedisPool.from_url(
        url, max_size=1, health_check_interval=None, autopipeline=False,
        connect_timeout=timeout, socket_timeout=timeout,
    )  # fmt: skip
    async with pool:
        started = time.perf_counter()
        reply = await pool.ping()
        elapsed = time.perf_counter() - started
        stats = pool.sentinel_statistics()
        views = await pool.sentinel_views()
    pong = "PONG" if reply is True else repr(reply)
    lines = [
        f"{pong} from the primary {stats['primary']} of "
        f"{stats['service']!r} in {elapsed * 1000:.2f} ms (asking the sentinels, connecting "
        "and the ROLE check included)"
    ]
    lines += [f"  sentinel {sentinel}: {view}" for sentinel, view in views.items()]
    agree = set(views.values()) == {stats["primary"]}
    if not agree:
        lines.append("the sentinels do not all name that primary")
    return lines, 0 if agree else 1


async def _ping(url: str, timeout: float) -> tuple[list[str], int]:
    """PING the server of ``url``; if it is a cluster node, every node of its cluster too.
    Returns the lines to print and the exit code."""
    if is_sentinel_url(url):
        return await _ping_sentinel(url, timeout)
    # split_url: a URL written for redis-py may carry pool options (max_connections...), which
    # mean nothing to one connection and are not an error here.
    config, _ = split_url(url, connect_timeout=timeout, socket_timeout=timeout)
    started = time.perf_counter()
    connection = await Connection.connect(config)
    try:
        connected = time.perf_counter()
        reply = await connection.execute("PING")
        answered = time.perf_counter()
        cluster = _cluster_enabled(await connection.execute("INFO", "cluster"))
        version = connection.server_version
        if version is None:  # RESP2 fallback: ask INFO
            info = await connection.execute("INFO", "server")
            text = info.decode() if isinstance(info, bytes) else str(info)
            version = next(
                (line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("redis_version:")),
                "unknown",
            )  # fmt: skip
    finally:
        await connection.aclose()
    pong = reply.decode() if isinstance(reply, bytes) else str(reply)
    lines = [
        f"{pong} from {split_url(url)[0].to_url()} "
        f"in {(answered - connected) * 1000:.2f} ms "
        f"(connect {(connected - started) * 1000:.2f} ms, Redis {version})"
    ]
    if not cluster:
        return lines, 0
    line, code = await _ping_nodes(url, timeout)
    return [*lines, line], code


def run_on(backend: str, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run`` on a backend named as the command line names it ("uvloop": asyncio's
    event loop replaced by uvloop's)."""
    if backend == "uvloop":
        if not _have_uvloop():
            raise CommandError(
                "--backend uvloop needs uvloop: pip install uvloop (or anypool[uvloop])"
            )
        return anyio.run(func, *args, backend="asyncio", backend_options={"use_uvloop": True})
    return anyio.run(func, *args, backend=backend)


def cmd_ping(args: argparse.Namespace) -> int:
    lines, code = run_on(args.backend, _ping, args.url, args.timeout)
    console = _console()
    for line in lines:
        console.print(line)
    return code


# --- clients ------------------------------------------------------------------------------------


async def _client_lists(url: str) -> list[tuple[str, list[dict[str, Any]], Any]]:
    """The server's connections without this tool's own, as [("", clients, None)]; for a
    cluster node, every node's, as [(node name, clients, node), ...]."""
    pool = RedisPool.from_url(url, max_size=1, health_check_interval=None)
    async with pool, pool.acquire() as conn:
        own_id = await conn.client_id()
        clients = [c for c in await conn.client_list() if int(c["id"]) != own_id]
        cluster = _cluster_enabled(await conn.execute_command("INFO", "cluster"))
    if not cluster:
        return [("", clients, None)]
    found: list[tuple[str, list[dict[str, Any]], Any]] = []
    async with _open_cluster(url, 5.0) as nodes:
        table = await nodes.refresh_topology()
        for node in table.nodes:
            own = await nodes.execute_command("CLIENT ID", target_nodes=node)
            listed = await nodes.execute_command("CLIENT LIST", target_nodes=node)
            found.append((str(node), [c for c in listed if int(c["id"]) != own], node))
    return found


async def _clients(args: argparse.Namespace) -> int:
    console = _console()
    lists = await _client_lists(args.url)
    per_node = lists[0][2] is not None
    clients = [dict(c, node=node) for node, members, _ in lists for c in members]
    async with contextlib.AsyncExitStack() as stack:
        selected = [
            c for c in clients
            if str(c.get("name", "")).startswith(args.name or "")
            and (args.idle_above is None or int(c["idle"]) >= args.idle_above)
        ]  # fmt: skip
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for client in selected:
            name = str(client.get("name") or "(no name)")
            groups.setdefault((client["node"], name), []).append(client)
        from rich.table import Table

        kind = "cluster" if per_node else "clients"
        where = (
            f"the primary of {redact_url(args.url)}"
            if is_sentinel_url(args.url)
            else split_url(args.url)[0].to_url()
        )
        table = Table(title=f"{kind} of {where}")
        columns = ("name", "count", "idle min s", "idle max s", "pub/sub", "addresses")
        for column in ("node", *columns) if per_node else columns:
            table.add_column(column)
        for (node, name), members in sorted(groups.items()):
            idles = [int(c["idle"]) for c in members]
            pubsub = sum(
                1 for c in members
                if int(c.get("sub", 0)) or int(c.get("psub", 0)) or int(c.get("ssub", 0))
            )  # fmt: skip
            addresses = ", ".join(str(c["addr"]) for c in members[:3])
            if len(members) > 3:
                addresses += ", ..."
            row = (name, str(len(members)), str(min(idles)), str(max(idles)), str(pubsub),
                   addresses)  # fmt: skip
            table.add_row(*((node, *row) if per_node else row))
        console.print(table)
        where = f" on {len(lists)} nodes" if per_node else ""
        console.print(f"{len(selected)} of {len(clients)} connections selected{where}")
        if not args.kill or not selected:
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                raise CommandError(
                    "refusing to kill connections without --yes (stdin is not a TTY)"
                )
            answer = console.input(f"kill {len(selected)} connections? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                console.print("nothing killed")
                return 0
        killed = 0
        if per_node:
            cluster = await stack.enter_async_context(_open_cluster(args.url, 5.0))
            nodes = {str(node): node for _, _, node in lists}
            for client in selected:
                killed += int(
                    await cluster.execute_command(
                        "CLIENT", "KILL", "ID", client["id"], target_nodes=nodes[client["node"]]
                    )
                    or 0
                )
        else:
            pool = await stack.enter_async_context(
                RedisPool.from_url(args.url, max_size=1, health_check_interval=None)
            )
            for client in selected:
                killed += int(await pool.client_kill_filter(_id=client["id"]) or 0)
        console.print(f"killed {killed} connections")
        return 0


def cmd_clients(args: argparse.Namespace) -> int:
    result: int = run_on(args.backend, _clients, args)
    return result


# --- cluster ---------------------------------------------------------------------------------


def _slot_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges[:4])
    return shown + (f" (+{len(ranges) - 4} more)" if len(ranges) > 4 else "")


async def _cluster(args: argparse.Namespace) -> int:
    console = _console()
    async with RedisCluster.from_url(
        args.url, max_size=1, health_check_interval=None, autopipeline=False,
        connect_timeout=args.timeout, socket_timeout=args.timeout,
    ) as cluster:  # fmt: skip
        table = await cluster.refresh_topology()
        by_primary: dict[Node, list[tuple[int, int]]] = {}
        for first, last, shard in table.ranges():
            if shard is not None:
                by_primary.setdefault(shard.primary, []).append((first, last))
        from rich.table import Table

        view = Table(title=f"cluster of {split_url(args.url)[0].to_url()}")
        for column in ("node", "role", "slots", "health"):
            view.add_column(column)
        failing = 0
        for shard in table.shards:
            for node in shard.nodes:
                try:
                    with anyio.fail_after(args.timeout):
                        started = time.perf_counter()
                        await cluster.execute_command("PING", target_nodes=node)
                        health = f"ok ({(time.perf_counter() - started) * 1000:.2f} ms)"
                except (AnyPoolError, RedisError, TimeoutError) as exc:
                    failing += 1
                    health = f"failing: {_one_line(exc)}"
                role = "primary" if node == shard.primary else f"replica of {shard.primary}"
                slots = by_primary.get(node, []) if node == shard.primary else []
                count = sum(b - a + 1 for a, b in slots)
                shown = f"{count} ({_slot_ranges(slots)})" if slots else "-"
                view.add_row(str(node), role, shown, health)
        console.print(view)
        uncovered = table.uncovered()
        console.print(
            f"{len(table.shards)} shards, {len(table.nodes)} nodes; "
            f"{table.covered} of {SLOTS} slots covered"
            + (f"; uncovered: {_slot_ranges(uncovered)}" if uncovered else "")
        )
        return 0 if not uncovered and not failing else 1


def cmd_cluster(args: argparse.Namespace) -> int:
    result: int = run_on(args.backend, _cluster, args)
    return result


# --- bench --------------------------------------------------------------------------------------

Work = Callable[[], Awaitable[None]]


async def _timed(work: Work, seconds: float, ops_per_call: int) -> float:
    await work()  # warm up: connections, scripts
    calls = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await work()
        calls += 1
    return calls * ops_per_call / (time.perf_counter() - started)


async def _concurrent(get: Callable[[], Awaitable[Any]], tasks: int, seconds: float) -> float:
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


async def _workloads(
    client: Any, seconds: float, concurrency: Sequence[int], pipeline: Work,
    advance: Callable[[], None],
) -> dict[str, float]:  # fmt: skip
    await client.set("bench:key", "x" * 100)

    async def one_get() -> None:
        await client.get("bench:key")

    results = {"sequential GET": await _timed(one_get, seconds, 1)}
    advance()
    for tasks in concurrency:
        results[f"{tasks} tasks GET"] = await _concurrent(
            lambda: client.get("bench:key"), tasks, seconds
        )
        advance()
    results["100x100 pipeline (cmds/s)"] = await _timed(pipeline, seconds, 100)
    advance()
    return results


async def _sets_on(pipe: Any) -> None:
    for i in range(100):
        pipe.set(f"bench:p{i}", i)
    await pipe.execute()


async def _bench_anypool(url: str, seconds: float, concurrency: Sequence[int], advance: Any) -> Any:
    async with RedisPool.from_url(url, max_size=16, health_check_interval=None) as client:
        return await _workloads(
            client, seconds, concurrency, lambda: _sets_on(client.pipeline(False)), advance
        )


async def _bench_redis_py(
    url: str, seconds: float, concurrency: Sequence[int], advance: Any
) -> Any:
    import redis.asyncio

    # redis-py's default pool raises when exhausted; its blocking pool waits, as anypool does
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=16)
    client = redis.asyncio.Redis(connection_pool=pool)
    try:
        return await _workloads(
            client, seconds, concurrency, lambda: _sets_on(client.pipeline(False)), advance
        )
    finally:
        await client.aclose()
        await pool.disconnect()  # redis-py does not close a pool it was given


async def _bench_coredis(url: str, seconds: float, concurrency: Sequence[int], advance: Any) -> Any:
    import coredis

    client = coredis.Redis.from_url(url, max_connections=16)

    async def pipeline() -> None:  # coredis 6 sends a pipeline when its block exits
        async with client.pipeline(transaction=False) as pipe:
            for i in range(100):
                pipe.set(f"bench:p{i}", i)

    async with client:
        return await _workloads(client, seconds, concurrency, pipeline, advance)


# "uvloop" is asyncio on uvloop's event loop (what uvicorn runs when uvloop is installed).
PEERS: list[tuple[str, Any, Backend]] = [
    ("anypool", _bench_anypool, "asyncio"),
    ("anypool", _bench_anypool, "uvloop"),
    ("anypool", _bench_anypool, "trio"),
    ("redis.asyncio", _bench_redis_py, "asyncio"),
    ("redis.asyncio", _bench_redis_py, "uvloop"),
    ("coredis", _bench_coredis, "asyncio"),
    ("coredis", _bench_coredis, "trio"),
]


def _bench_backends() -> list[str]:
    """Every backend ``bench`` runs by default: uvloop's too where it is installed."""
    return ["asyncio", "uvloop", "trio"] if _have_uvloop() else ["asyncio", "trio"]


def _have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def run_benchmark(
    url: str, seconds: float, concurrency: Sequence[int], backends: Sequence[str],
    progress: Callable[[str], Any],
) -> tuple[dict[str, dict[str, float]], list[str]]:  # fmt: skip
    """Run every available client; returns the table and notes about skipped peers."""
    table: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for name, bench, backend in PEERS:
        if backend not in backends and (name == "anypool" or backend == "uvloop"):
            continue
        label = f"{name} ({backend})"
        advance = progress(label)
        try:
            table[label] = run_on(backend, bench, url, seconds, concurrency, advance)
        except ImportError as exc:
            notes.append(f"{label} skipped: {exc.name or exc} is not installed")
        except Exception as exc:  # a peer that fails is reported, not fatal
            notes.append(f"{label} failed: {type(exc).__name__}: {exc}")
    return table, notes


def cmd_bench(args: argparse.Namespace) -> int:
    console = _console()
    try:
        concurrency = [int(part) for part in args.concurrency.split(",") if part.strip()]
    except ValueError:
        concurrency = []
    if not concurrency or any(n < 1 for n in concurrency):
        raise CommandError(f"--concurrency must list positive integers, not {args.concurrency!r}")
    if not (math.isfinite(args.duration) and args.duration > 0):
        raise CommandError(f"--duration must be a positive number of seconds, not {args.duration}")
    backends = [args.backend] if args.backend else _bench_backends()
    server = None
    url = args.url
    if url is None:
        server = RedisServer()
        server.start()
        url = server.url
    try:
        if args.pin:
            os.sched_setaffinity(0, {0})
            if server is not None:
                os.sched_setaffinity(server.pid, {0})
        steps = len(concurrency) + 2
        if console.is_terminal:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as bar:

                def progress(label: str) -> Callable[[], None]:
                    task = bar.add_task(label, total=steps)
                    return lambda: bar.advance(task)

                table, notes = run_benchmark(url, args.duration, concurrency, backends, progress)
        else:

            def plain(label: str) -> Callable[[], None]:
                print(f"running {label} ...", flush=True)
                return lambda: None

            table, notes = run_benchmark(url, args.duration, concurrency, backends, plain)
    finally:
        if server is not None:
            server.stop()
    _print_bench(console, table, notes)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"results": table, "notes": notes}, file, indent=2)
    return 0


def _print_bench(console: Any, table: dict[str, dict[str, float]], notes: list[str]) -> None:
    from rich.table import Table

    if not table:
        raise CommandError("no client could be benchmarked")
    clients = list(table)
    out = Table(title="operations per second")
    out.add_column("workload")
    for client in clients:
        out.add_column(client, justify="right")
    for workload in next(iter(table.values())):
        out.add_row(workload, *(f"{table[c][workload]:,.0f}" for c in clients))
    console.print(out)
    for ours in (c for c in clients if c.startswith("anypool")):
        for peer in (c for c in clients if not c.startswith("anypool")):
            ratios = ", ".join(
                f"{w.split(' (')[0]} {_ratio(table[ours][w], table[peer][w])}" for w in table[ours]
            )
            console.print(f"{ours} vs {peer}: {ratios}")
    for note in notes:
        console.print(f"({note})")


# --- demo ---------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().splitlines()[0])


async def _tour(url: str, server: RedisServer | None) -> None:
    console = _console()
    say = console.print
    capture = _Capture()
    logging.getLogger("anypool").addHandler(capture)
    try:
        async with RedisPool.from_url(
            url, min_size=2, max_size=8, leak_threshold=0.3, health_check_interval=0.2,
            connect_timeout=1.0, decode_responses=True,
        ) as redis:  # fmt: skip
            await redis.pool.wait(timeout=5)
            say(f"[bold]anypool {__version__}[/] on {anyio.get_current_task().name or 'main'}: "
                f"connected to {redis.config.to_url()}")  # fmt: skip

            say("\n[bold]1. Commands and a transaction[/]")
            await redis.set("demo:greeting", "hello", ex=60)
            say(f"  GET demo:greeting -> {await redis.get('demo:greeting')!r}")
            async with redis.pipeline(transaction=True) as pipe:
                pipe.set("demo:visits", 0)
                pipe.incr("demo:visits")
                pipe.incr("demo:visits")
                say(f"  MULTI SET INCR INCR EXEC -> {await pipe.execute()}")

            say("\n[bold]2. Pub/sub fan-out and a supervised listener[/]")
            heard: list[str] = []
            all_heard = anyio.Event()

            async def listener(event: Message | Reconnected) -> None:
                if isinstance(event, Message):
                    heard.append(str(event.data))
                    if len(heard) == 100:
                        all_heard.set()

            handle = await redis.start_listener(listener, channels=["demo:news"])
            async with redis.subscribe("demo:news") as a, redis.subscribe("demo:news") as b:
                for n in range(100):
                    await redis.publish("demo:news", f"story {n}")
                got_a = [await a.get(timeout=5) for _ in range(100)]
                got_b = [await b.get(timeout=5) for _ in range(100)]
                with anyio.fail_after(5):
                    await all_heard.wait()
                say(f"  100 messages published: subscriber A got {len(got_a)}, B got "
                    f"{len(got_b)}, the listener handled {handle.handled}")  # fmt: skip

            say("\n[bold]3. Leak detection[/]")
            async with redis.acquire():
                # Held past leak_threshold=0.3s, until a maintenance round reports it (a
                # loaded machine may take longer than the threshold to run that round).
                for _ in range(200):  # at most ~10 s
                    if any("leased by task" in m for m in capture.messages):
                        break
                    await anyio.sleep(0.05)
            leak = next((m for m in capture.messages if "leased by task" in m), None)
            say(f"  a connection held past 0.3s was reported: {leak or 'no warning seen'}")

            if server is None:
                say("\n[dim]4. (skipped: the server is not ours to kill; run without --url)[/]")
            else:
                say("\n[bold]4. The server dies and comes back[/]")
                async with redis.subscribe("demo:live") as live:
                    server.kill()
                    say("  redis-server killed (SIGKILL)")
                    try:
                        await redis.get("demo:greeting")
                    except (AnyPoolError, RedisError) as exc:
                        say(f"  a command now fails clearly: {type(exc).__name__}: {exc}")
                    await anyio.sleep(0.5)
                    say(f"  pool health: {redis.health.value}")
                    server.restart()
                    say("  redis-server restarted on the same port")
                    event = await live.get(timeout=15)
                    say(f"  the subscription was told about the gap: {type(event).__name__}")
                    with anyio.fail_after(15):
                        while True:
                            try:
                                await redis.set("demo:after", "restart")
                                break
                            except (AnyPoolError, RedisError):
                                await anyio.sleep(0.1)
                    message = await _publish_until_received(redis, live, "after the restart")
                    say(f"  commands work again, and the subscription receives: {message.data!r}")
                    with anyio.fail_after(15):
                        while redis.health.value != "healthy":  # noqa: ASYNC110 - pool state
                            await anyio.sleep(0.05)
                    say(f"  pool health: {redis.health.value}")
            handle.cancel()

            say("\n[bold]5. Statistics[/]")
            from rich.table import Table

            table = Table()
            table.add_column("statistic")
            table.add_column("value", justify="right")
            for key, value in redis.statistics().as_dict().items():
                table.add_row(key, str(value))
            for key, value in redis.pubsub_statistics().items():
                table.add_row(f"pubsub.{key}", str(value))
            say(table)
    finally:
        logging.getLogger("anypool").removeHandler(capture)


async def _publish_until_received(redis: RedisPool, live: Subscription, text: str) -> Message:
    """Publish ``text`` on demo:live until the subscription receives it: a loaded machine can
    make the keepalive miss once more right after the restart, and a message published during
    that second gap is reported as a gap (another Reconnected), not delivered."""
    for _ in range(10):
        await redis.publish("demo:live", text)
        event = await live.get(timeout=15)
        if isinstance(event, Message):
            return event
    raise RuntimeError("the subscription kept reconnecting after the restart")


async def _cluster_tour(servers: ClusterServers) -> None:
    say = _console().print
    async with RedisCluster.from_url(
        servers.url, connect_timeout=1.0, socket_timeout=5.0, decode_responses=True,
        cluster_refresh_interval=1.0,
    ) as redis:  # fmt: skip
        table = await redis.refresh_topology()
        say(f"[bold]anypool {__version__}[/]: RedisCluster found {len(table.shards)} shards, "
            f"{len(table.nodes)} nodes, {table.covered} slots covered")  # fmt: skip

        say("\n[bold]1. Commands go where their keys are[/]")
        keys = [f"demo:{i}" for i in range(100)]
        await redis.mset({key: i for i, key in enumerate(keys)})
        values = await redis.mget(keys)
        slots = {redis.keyslot(key) for key in keys}
        say(f"  MSET and MGET of 100 keys in {len(slots)} slots on "
            f"{len(redis.node_statistics())} nodes: split per slot, merged in order: "
            f"{values[:3]}...{values[-1:]}")  # fmt: skip
        pipe = redis.pipeline()
        for key in keys[:50]:
            pipe.incr(key)
        replies = await pipe.execute()
        say(f"  a pipeline of 50 INCRs across nodes, one write per node: {replies[:5]}...")

        say("\n[bold]2. A slot moves to another primary under load[/]")
        counters = [f"demo:{{load}}:{i}" for i in range(16)]
        stop = anyio.Event()
        done = [0] * len(counters)

        async def worker(index: int) -> None:
            while not stop.is_set():
                await redis.incr(counters[index])
                done[index] += 1
                await anyio.lowlevel.checkpoint()

        slot = redis.keyslot(counters[0])
        source = servers.node_for_slot(slot)
        target = next(n for n in servers.primaries() if n.port != source.port)
        async with anyio.create_task_group() as tg:
            for index in range(len(counters)):
                tg.start_soon(worker, index)
            await anyio.to_thread.run_sync(servers.migrate_slot, slot, target)
            stop.set()
        counts = [int(v or 0) for v in await redis.mget(counters)]
        stats = redis.cluster_statistics()
        say(f"  slot {slot} moved from port {source.port} to {target.port} while 16 tasks "
            f"ran {sum(done)} INCRs: {stats['moved']} MOVED and {stats['ask']} ASK followed, "
            f"every counter exact: {counts == done}")  # fmt: skip

        say("\n[bold]3. A primary dies; its replica takes over[/]")
        victim = servers.node_for_slot(slot)
        started = time.perf_counter()
        await anyio.to_thread.run_sync(servers.kill, victim)
        say(f"  primary on port {victim.port} killed (SIGKILL)")
        try:
            await redis.incr(counters[0])
            say(f"  an INCR of its slot sent right after waited for the promotion (it could "
                f"not have run: no connection) and succeeded after "
                f"{time.perf_counter() - started:.1f}s")  # fmt: skip
        except (AnyPoolError, RedisError) as exc:
            say(f"  an INCR of its slot sent right after failed clearly: {_one_line(exc)}")
        await anyio.to_thread.run_sync(servers.wait_until_stable)
        with anyio.fail_after(60):
            while True:
                try:
                    await redis.incr(counters[0])
                    break
                except (AnyPoolError, RedisError):
                    await anyio.sleep(0.1)
        shard = redis.topology.shard(slot) if redis.topology is not None else None
        promoted = shard.primary if shard else "a replica"
        say(f"  {promoted} was promoted; the client healed on its own after "
            f"{time.perf_counter() - started:.1f}s (the cluster's node timeout)")  # fmt: skip

        say("\n[bold]4. Statistics[/]")
        from rich.table import Table

        view = Table()
        view.add_column("statistic")
        view.add_column("value", justify="right")
        for key, value in redis.cluster_statistics().items():
            view.add_row(key, str(value))
        say(view)


async def _sentinel_tour(setup: SentinelServers) -> None:
    say = _console().print
    async with RedisPool.from_url(setup.url, decode_responses=True, socket_timeout=10.0) as redis:
        await redis.set("demo:greeting", "hello")
        stats = redis.sentinel_statistics()
        say(f"[bold]anypool {__version__}[/]: the sentinels name {stats['primary']} as the "
            f"primary of {stats['service']!r}; it said ROLE master: "
            f"{await redis.get('demo:greeting')!r}")  # fmt: skip

        say("\n[bold]1. Reads from the replicas[/]")
        copies = await redis.execute_command("WAIT", len(setup.servers) - 1, 5000)
        value = await redis.replica.get("demo:greeting")
        used = ", ".join(redis.replica.sentinel_statistics()["replicas"])
        say(f"  WAIT: {copies} replicas have the write; redis.replica.get() -> {value!r} "
            f"(replicas used: {used})")  # fmt: skip

        say("\n[bold]2. SENTINEL FAILOVER while 16 tasks write[/]")
        stop = anyio.Event()
        acknowledged: list[str] = []
        errors: list[str] = []

        async def writer(index: int) -> None:
            n = 0
            while not stop.is_set():
                key = f"demo:w:{index}:{n}"
                n += 1
                try:
                    await redis.set(key, 1)
                    acknowledged.append(key)
                except (AnyPoolError, RedisError) as exc:
                    errors.append(_one_line(exc))
                    await anyio.sleep(0.05)

        old = redis.sentinel_statistics()["primary"]
        async with anyio.create_task_group() as tg:
            for index in range(16):
                tg.start_soon(writer, index)
            await anyio.sleep(0.3)
            started = time.perf_counter()
            new = await anyio.to_thread.run_sync(setup.failover)
            for _ in range(3000):  # at most ~30 s
                if redis.sentinel_statistics()["primary"] == f"{new.host}:{new.port}":
                    break
                await anyio.sleep(0.01)
            moved = time.perf_counter() - started
            await anyio.sleep(0.5)
            stop.set()
        present = 0
        for start in range(0, len(acknowledged), 500):
            chunk = acknowledged[start : start + 500]
            present += sum(v is not None for v in await redis.mget(chunk))
        say(f"  the pool moved from {old} to {new.host}:{new.port} {moved:.1f}s after the "
            f"failover began, on the sentinels' announcement (writes waited while the replica "
            f"was promoted); {len(acknowledged)} writes acknowledged, {len(errors)} errors, "
            f"{len(acknowledged) - present} acknowledged writes missing on the new "
            "primary")  # fmt: skip
        say("  (a client that waits to be told by the old primary keeps writing to it for "
            "about 10 s, until the sentinels demote it: those writes are lost)")  # fmt: skip

        say("\n[bold]3. Statistics[/]")
        from rich.table import Table

        view = Table()
        view.add_column("statistic")
        view.add_column("value", justify="right")
        for key, stat in redis.sentinel_statistics().items():
            view.add_row(key, str(stat))
        say(view)


def cmd_demo(args: argparse.Namespace) -> int:
    # The tour prints what matters: anypool's own log records stay quiet while it runs, and the
    # logger is left exactly as it was found (level, propagation) when it ends.
    log = logging.getLogger("anypool")
    level, propagate = log.level, log.propagate
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        if args.sentinel:
            if args.url is not None or args.cluster:
                raise CommandError(
                    "--sentinel starts its own servers (it fails one over): it takes neither "
                    "--url nor --cluster"
                )
            with SentinelServers(2, 3) as setup:
                _console().print("started an embedded primary, 2 replicas and 3 sentinels")
                run_on(args.backend, _sentinel_tour, setup)
            return 0
        if args.cluster:
            if args.url is not None:
                raise CommandError(
                    "--cluster starts its own nodes (it kills one): it does not take --url"
                )
            with ClusterServers(3, 1) as servers:
                _console().print(f"started an embedded cluster of {len(servers.nodes)} "
                                 "nodes (3 primaries, a replica each)")  # fmt: skip
                run_on(args.backend, _cluster_tour, servers)
            return 0
        if args.url is not None:
            run_on(args.backend, _tour, args.url, None)
            return 0
        with RedisServer() as server:
            version = ".".join(map(str, server.version))
            _console().print(f"started an embedded redis-server {version} on port {server.port}")
            run_on(args.backend, _tour, server.url, server)
        return 0
    finally:
        log.setLevel(level)
        log.propagate = propagate


# --- the parser ---------------------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an argument's default in ``--help`` when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line: every argument has help text, and ``--help`` shows its default."""
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="anypool", description="Redis pool for trio and asyncio: demo, benchmark, tools.",
        formatter_class=fmt,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"anypool {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backend_help = "event loop: asyncio, asyncio with uvloop's loop, or trio"
    url_help = (
        "redis://, rediss://, unix:// or redis+sentinel://h1,h2/service URL (default: $REDIS_URL)"
    )

    demo = commands.add_parser(
        "demo", help="a guided tour on an embedded redis-server", formatter_class=fmt
    )
    demo.add_argument("--backend", choices=BACKENDS, default="trio", help=backend_help)
    demo.add_argument(
        "--url", help="use this server instead of an embedded one (the kill/restart step is "
        "skipped)",
    )  # fmt: skip
    demo.add_argument(
        "--cluster", action="store_true",
        help="tour a cluster of embedded nodes instead (routing, a slot moving, a failover)",
    )  # fmt: skip
    demo.add_argument(
        "--sentinel", action="store_true",
        help="tour a primary with replicas and sentinels instead (replica reads, a failover "
        "under load)",
    )  # fmt: skip
    demo.set_defaults(func=cmd_demo)

    bench = commands.add_parser(
        "bench", help="anypool vs redis.asyncio and coredis", formatter_class=fmt
    )
    bench.add_argument("--url", help="server to use instead of an embedded one")
    bench.add_argument(
        "--backend", choices=BACKENDS, help="only this backend (default: every one installed)"
    )
    bench.add_argument("--concurrency", default="1,16,64,256", help="task counts, comma-separated")
    bench.add_argument("--duration", type=float, default=2.0, help="seconds per workload")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--pin", action="store_true", help="pin client and server to CPU 0")
    bench.set_defaults(func=cmd_bench)

    ping = commands.add_parser(
        "ping", help="connect, PING, report latency (exit 0/1)", formatter_class=fmt
    )
    ping.add_argument("url", nargs="?", help=url_help)
    ping.add_argument("--timeout", type=float, default=5.0, help="seconds for connect and PING")
    ping.add_argument("--backend", choices=BACKENDS, default="asyncio", help=backend_help)
    ping.set_defaults(func=cmd_ping)

    clients = commands.add_parser(
        "clients", help="the server's connections, grouped by name", formatter_class=fmt
    )
    clients.add_argument("url", nargs="?", help=url_help)
    clients.add_argument("--name", metavar="PREFIX", help="only names starting with PREFIX")
    clients.add_argument(
        "--idle-above", type=int, metavar="SECONDS", help="only connections idle this long"
    )
    clients.add_argument("--kill", action="store_true", help="close the selected connections")
    clients.add_argument("--yes", action="store_true", help="do not ask before killing")
    clients.add_argument("--backend", choices=BACKENDS, default="asyncio", help=backend_help)
    clients.set_defaults(func=cmd_clients)

    cluster = commands.add_parser(
        "cluster", help="a cluster's nodes, roles, slot coverage and health (exit 0/1)",
        formatter_class=fmt,
    )  # fmt: skip
    cluster.add_argument("url", nargs="?", help="any node's " + url_help)
    cluster.add_argument("--timeout", type=float, default=5.0, help="seconds per node")
    cluster.add_argument("--backend", choices=BACKENDS, default="asyncio", help=backend_help)
    cluster.set_defaults(func=cmd_cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``anypool`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("ping", "clients", "cluster") and args.url is None:
        # Read when the command runs, never at import or in --help (the URL may hold a password).
        args.url = os.environ.get("REDIS_URL") or None
        if args.url is None:
            parser.error(f"{args.command}: give a URL, or set REDIS_URL")
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except (CommandError, AnyPoolError, RedisError, RedisServerError,
            OSError, ValueError) as exc:  # fmt: skip
        _console(stderr=True).print(f"anypool {args.command}: error: {_one_line(exc)}")
        return 1


def _ratio(ours: float, theirs: float) -> str:
    return f"x{ours / theirs:.2f}" if theirs > 0 else "n/a (no peer operations)"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."
