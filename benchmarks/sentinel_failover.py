"""What a Sentinel failover costs a writing application: anypool's Sentinel pool against
redis-py's (``redis.asyncio.sentinel``), both writing during the same failover.

    python benchmarks/sentinel_failover.py [--servers redis,valkey] [--how graceful,sigkill]
                                           [--backend trio] [--tasks 16] [--rounds 1]

Each round starts a fresh ``anypool.testing.RedisSentinel`` (a primary, one replica, three
sentinels; down-after 2 s), starts ``--tasks`` writers in each client (unique keys, SET), then
fails the primary over (``SENTINEL FAILOVER``, or SIGKILL), waits until the old primary is
demoted (graceful) or the new one serves (SIGKILL), and counts, per client:

- ``switch``: seconds from the start of the failover until anypool adopted the new primary (its
  log record); redis-py has no such moment (it learns on a new connection);
- ``gap``: the longest time without an acknowledged write, from the start of the failover on
  (the outage the application saw: anypool pauses writes while the replica is promoted);
- ``errors``: calls that raised during the round;
- ``lost``: acknowledged writes missing on the new primary at the end (once the old primary was
  demoted and resynced: what the application believed written and is not).

Not a test: one run's figures, printed as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import threading
import time
from typing import Any

import anyio
import anyio.to_thread
import redis.asyncio.sentinel

from anypool import AnyPoolError, RedisPool
from anypool.testing import RedisSentinel, find_redis_server, find_valkey_server


class _Switch(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.at is None and "the primary moved" in record.getMessage():
            self.at = time.monotonic()


def _redis_py(setup: RedisSentinel, tasks: int, stop: threading.Event, out: dict[str, Any]) -> None:
    acked: list[tuple[str, float]] = []
    errors = 0

    async def writer(client: Any, index: int) -> None:
        nonlocal errors
        n = 0
        while not stop.is_set():
            key = f"rp:{index}:{n}"
            n += 1
            try:
                await client.set(key, 1)
            except Exception:
                errors += 1
                await asyncio.sleep(0.05)
                continue
            acked.append((key, time.monotonic()))

    async def main() -> None:
        sentinel = redis.asyncio.sentinel.Sentinel(
            setup.sentinel_addresses, socket_timeout=5, password=setup.password
        )
        client = sentinel.master_for(setup.service_name, socket_timeout=5)
        try:
            await asyncio.gather(*(writer(client, i) for i in range(tasks)))
        finally:
            await client.aclose()
            for each in sentinel.sentinels:
                await each.aclose()

    asyncio.run(main())
    out.update(acked=acked, errors=errors)


async def _round(setup: RedisSentinel, how: str, tasks: int) -> dict[str, dict[str, Any]]:
    switch = _Switch()
    logging.getLogger("anypool.sentinel").addHandler(switch)
    stop = threading.Event()
    theirs: dict[str, Any] = {}
    thread = threading.Thread(target=_redis_py, args=(setup, tasks, stop, theirs), daemon=True)
    thread.start()
    acked: list[tuple[str, float]] = []
    errors = 0
    try:
        async with RedisPool.from_url(setup.url, socket_timeout=5.0) as pool:

            async def writer(index: int) -> None:
                nonlocal errors
                n = 0
                while not stop.is_set():
                    key = f"ap:{index}:{n}"
                    n += 1
                    try:
                        await pool.set(key, 1)
                    except AnyPoolError:
                        errors += 1
                        await anyio.sleep(0.05)
                        continue
                    acked.append((key, time.monotonic()))

            async with anyio.create_task_group() as tg:
                for index in range(tasks):
                    tg.start_soon(writer, index)
                await anyio.sleep(1.0)
                old = setup.primary
                started = time.monotonic()
                fail = setup.failover if how == "graceful" else setup.kill_primary
                new = await anyio.to_thread.run_sync(fail)

                def settled() -> None:
                    deadline = time.monotonic() + 120
                    while how == "graceful" and time.monotonic() < deadline:
                        if setup.role(old) == "slave":
                            return
                        time.sleep(0.1)

                await anyio.to_thread.run_sync(settled)
                await anyio.sleep(1.0)
                stop.set()
    finally:
        stop.set()
        thread.join(120)
        logging.getLogger("anypool.sentinel").removeHandler(switch)
    await anyio.to_thread.run_sync(lambda: setup.wait_ready(120))

    def figures(keys: list[tuple[str, float]], errors: int) -> dict[str, Any]:
        names = [k for k, _ in keys]
        present: set[str] = set()
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            values = setup.call(new, "MGET", *chunk)
            present.update(k for k, v in zip(chunk, values, strict=True) if v is not None)
        times = sorted([started] + [t for _, t in keys if t > started])
        return {
            "acked": len(keys),
            "lost": len(keys) - len(present),
            "errors": errors,
            "gap": max((b - a for a, b in itertools.pairwise(times)), default=None),
        }

    ours = figures(acked, errors)
    ours["switch"] = None if switch.at is None else switch.at - started
    return {"anypool": ours, "redis-py": figures(theirs.get("acked", []), theirs.get("errors", 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="redis,valkey")
    parser.add_argument("--how", default="graceful,sigkill")
    parser.add_argument("--backend", default="trio", choices=["asyncio", "uvloop", "trio"])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    binaries = {"redis": find_redis_server, "valkey": find_valkey_server}
    rows = []
    for kind in args.servers.split(","):
        for how in args.how.split(","):
            for _ in range(args.rounds):
                with RedisSentinel(1, 3, binary=binaries[kind](), password="pw") as setup:
                    backend = "asyncio" if args.backend == "uvloop" else args.backend
                    options = {"use_uvloop": True} if args.backend == "uvloop" else {}
                    result = anyio.run(
                        _round, setup, how, args.tasks, backend=backend, backend_options=options
                    )
                for client, figures in result.items():
                    rows.append((kind, how, client, figures))
    print(f"backend {args.backend}, {args.tasks} writers per client")
    print(f"{'server':7} {'failover':9} {'client':9} {'switch s':>9} {'gap s':>8} "
          f"{'errors':>7} {'acked':>8} {'lost':>7}")  # fmt: skip
    for kind, how, client, f in rows:
        switch = "-" if f.get("switch") is None else f"{f['switch']:.2f}"
        gap = "-" if f["gap"] is None else f"{f['gap']:.2f}"
        print(f"{kind:7} {how:9} {client:9} {switch:>9} {gap:>8} {f['errors']:>7} "
              f"{f['acked']:>8} {f['lost']:>7}")  # fmt: skip


if __name__ == "__main__":
    main()
