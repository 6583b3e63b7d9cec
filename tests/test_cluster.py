"""RedisCluster against real clusters (Redis 6.2 and Valkey 9.1), on every backend: routing,
redirects while slots move, failover under load, cancellation, and nothing left behind."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import redis.exceptions as redis_exceptions

import anypool
from anypool import RedisCluster
from anypool._cluster._slots import key_slot
from anypool.testing import FaultProxy, RedisServer, find_valkey_server
from anypool.testing import RedisCluster as ClusterServers

from .conftest import open_fds
from .settle import nodes_at_rest

pytestmark = pytest.mark.anyio

KINDS = ["redis", "valkey"]


def binary(kind: str) -> str | None:
    return find_valkey_server() if kind == "valkey" else None


@pytest.fixture(scope="module", params=KINDS)
def shared_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterServers]:
    """Three primaries, no replicas, for the tests that do not change the cluster's shape
    (they may move slots: each test leaves every slot served)."""
    with ClusterServers(3, 0, binary=binary(request.param)) as servers:
        yield servers


@pytest.fixture(params=KINDS)
def own_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterServers]:
    """Three primaries with a replica each, for a test that kills or fails over nodes."""
    with ClusterServers(3, 1, binary=binary(request.param)) as servers:
        yield servers


def client(servers: ClusterServers, **options: Any) -> RedisCluster:
    return RedisCluster(startup_nodes=servers.startup_nodes[:1], connect_timeout=5.0, **options)


def other_primary(servers: ClusterServers, slot: int) -> tuple[RedisServer, RedisServer]:
    source = servers.node_for_slot(slot)
    target = next(n for n in servers.primaries() if n.port != source.port)
    return source, target


# --- routing -------------------------------------------------------------------------------------


async def test_commands_go_where_their_keys_are(shared_cluster: ClusterServers) -> None:
    async with client(shared_cluster) as redis:
        keys = [f"route:{i}" for i in range(40)]
        for key in keys:
            assert await redis.set(key, key)
        for key in keys:  # each key is on the node the cluster says, and only there
            owner = shared_cluster.node_for_slot(key_slot(key.encode()))
            assert shared_cluster.call(owner, "GET", key) == key.encode()
        assert await redis.mget(keys) == [k.encode() for k in keys]
        assert await redis.exists(*keys, "route:missing") == len(keys)
        assert await redis.delete(*keys[:10]) == 10
        assert await redis.mget(keys[:12]) == [None] * 10 + [k.encode() for k in keys[10:12]]
        assert await redis.mset({f"{{t}}:{i}": i for i in range(5)}) is True
        assert await redis.mget([f"{{t}}:{i}" for i in range(5)]) == [b"0", b"1", b"2", b"3", b"4"]
        assert await redis.unlink(*keys) == len(keys) - 10
        await nodes_at_rest(redis.node_statistics)


async def test_keys_in_different_slots_are_refused_naming_them(
    shared_cluster: ClusterServers,
) -> None:
    async with client(shared_cluster) as redis:
        with pytest.raises(anypool.CrossSlotError, match=r"'a' \(slot 15495\), 'b' \(slot 3300\)"):
            await redis.eval("return 1", 2, "a", "b")
        with pytest.raises(anypool.CrossSlotError, match="hash tag"):
            await redis.rename("a", "b")
        assert await redis.eval("return #KEYS", 2, "{x}a", "{x}b") == 2


async def test_scripts_and_streams_find_their_keys(shared_cluster: ClusterServers) -> None:
    """EVAL and XREAD's keys move with their arguments: found from the server's key specs
    (Valkey) or COMMAND GETKEYS (Redis 6.2)."""
    async with client(shared_cluster) as redis:
        await redis.delete(*[f"counter:{i}" for i in range(10)], "stream:1")
        for i in range(10):
            key = f"counter:{i}"
            assert await redis.eval("return redis.call('INCR', KEYS[1])", 1, key) == 1
            owner = shared_cluster.node_for_slot(key_slot(key.encode()))
            assert shared_cluster.call(owner, "GET", key) == b"1"
        await redis.xadd("stream:1", {"f": "v"})
        reply = await redis.xread({"stream:1": 0}, count=5)
        assert reply[0][0] == b"stream:1"


async def test_keyless_commands_go_where_redis_py_sends_them(
    shared_cluster: ClusterServers,
) -> None:
    async with client(shared_cluster) as redis:
        await redis.mset({f"size:{i}": i for i in range(30)})
        total = sum(int(shared_cluster.call(n, "DBSIZE")) for n in shared_cluster.primaries())
        assert await redis.dbsize() == total  # summed over the primaries
        assert await redis.ping() is True
        found = await redis.keys("size:*")
        assert sorted(found) == sorted(f"size:{i}".encode() for i in range(30))
        per_node = await redis.execute_command("DBSIZE", target_nodes="primaries")
        assert per_node == total or sum(per_node.values()) == total
        await redis.delete(*[f"size:{i}" for i in range(30)])


# --- redirects ----------------------------------------------------------------------------------


async def test_ask_sends_asking_with_the_command_on_one_connection(
    shared_cluster: ClusterServers,
) -> None:
    """A slot half-way through a migration: keys already moved are answered with ASK by the
    source; the client sends ASKING and the command together to the target (else the target
    would answer MOVED, and the request would end in "too many redirects")."""
    async with client(shared_cluster) as redis:
        key = "ask:{moving}"
        slot = key_slot(key.encode())
        await redis.set(key, "before")
        source, target = other_primary(shared_cluster, slot)
        await anyio.to_thread.run_sync(shared_cluster.begin_migration, slot, target)
        try:
            assert (
                await anyio.to_thread.run_sync(shared_cluster.move_keys, slot, source, target) == 1
            )
            assert await redis.get(key) == b"before"  # ASK, then ASKING + GET at the target
            assert await redis.set(key, "after") is True
            assert await redis.set("new:{moving}", "x") is True  # a new key: created there
            assert shared_cluster.call(target, "ASKING") == b"OK"
        finally:
            await anyio.to_thread.run_sync(shared_cluster.finish_migration, slot, source, target)
        assert await redis.get(key) == b"after"  # now MOVED: the table learns the owner
        assert redis.topology is not None
        shard = redis.topology.shard(slot)
        assert shard is not None and shard.primary.port == target.port
        await redis.delete(key, "new:{moving}")


async def test_live_resharding_under_load_loses_and_repeats_nothing(
    shared_cluster: ClusterServers,
) -> None:
    """Tasks INCR their own counters while slots move between primaries (keys migrated in
    batches, with ASK and MOVED on the way): no error reaches a caller, and every counter
    equals the number of INCRs acknowledged (none applied twice, none lost)."""
    rng = random.Random(1)
    tasks = 16
    keys = [f"reshard:{i}" for i in range(tasks)]
    slots = sorted({key_slot(k.encode()) for k in keys})
    acknowledged = dict.fromkeys(keys, 0)
    async with client(shared_cluster) as redis:
        await redis.delete(*keys)
        done = anyio.Event()

        async def work(key: str) -> None:
            while not done.is_set():
                assert await redis.incr(key) == acknowledged[key] + 1
                acknowledged[key] += 1
                assert int(await redis.get(key)) == acknowledged[key]

        def reshard() -> None:
            for slot in rng.sample(slots, min(6, len(slots))):
                source, target = other_primary(shared_cluster, slot)
                shared_cluster.begin_migration(slot, target)
                while shared_cluster.move_keys(slot, source, target, 1):
                    pass
                shared_cluster.finish_migration(slot, source, target)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as task_group:
                for key in keys:
                    task_group.start_soon(work, key)
                await anyio.to_thread.run_sync(reshard)
                done.set()
        for key in keys:
            assert int(await redis.get(key)) == acknowledged[key] > 0
        await nodes_at_rest(redis.node_statistics)
        await redis.delete(*keys)


# --- failover -----------------------------------------------------------------------------------


async def test_failover_under_load(own_cluster: ClusterServers) -> None:
    """32 tasks write (INCR, then WAIT for the replica, in one pipeline); a primary is
    SIGKILLed; its replica is promoted.  Commands that may have run on the dead node fail
    with ConnectionError or TimeoutError (never retried); nothing else surfaces; every
    acknowledged write is readable afterwards, none applied twice; the client heals on its
    own; nothing hangs."""
    acknowledged: dict[str, int] = {}
    uncertain: dict[str, int] = {}
    succeeded: dict[str, int] = {}
    async with client(own_cluster, socket_timeout=5.0) as redis:
        stop = anyio.Event()
        healed = anyio.Event()

        async def work(index: int) -> None:
            key = f"failover:{index}"
            acknowledged[key] = uncertain[key] = succeeded[key] = 0
            while not stop.is_set():
                pipe = redis.pipeline()
                # Acknowledged = applied and copied to the replica (replication is
                # asynchronous: a write the primary acknowledged alone may die with it).
                pipe.incr(key).execute_command("WAIT", 1, 2000)
                try:
                    _, replicas = await pipe.execute()
                except (anypool.ConnectionError, anypool.TimeoutError):
                    uncertain[key] += 1  # may have run on the node that died
                    continue
                succeeded[key] += 1
                if replicas >= 1:
                    acknowledged[key] += 1
                else:  # applied, not yet copied (a promoted replica has no replica of its own)
                    uncertain[key] += 1
                await anyio.lowlevel.checkpoint()

        victim = own_cluster.node_for_slot(key_slot(b"failover:0"))
        with anyio.fail_after(180):
            async with anyio.create_task_group() as task_group:
                for index in range(32):
                    task_group.start_soon(work, index)
                await anyio.sleep(0.2)
                await anyio.to_thread.run_sync(own_cluster.kill, victim)
                await anyio.to_thread.run_sync(own_cluster.wait_until_stable)
                # Healed: a write to the failed slot succeeds without help.
                while True:
                    before = succeeded["failover:0"]
                    await anyio.sleep(0.05)
                    if succeeded["failover:0"] > before:
                        healed.set()
                        break
                stop.set()
        assert healed.is_set()
        for key, count in acknowledged.items():
            value = int(await redis.get(key) or 0)
            assert count <= value <= count + uncertain[key], (key, count, value, uncertain[key])
        await nodes_at_rest(redis.node_statistics)


# --- cancellation and clean-up ------------------------------------------------------------------


async def test_cancellation_storm_mismatches_nothing(shared_cluster: ClusterServers) -> None:
    """Many tasks with random deadlines, on keys across every node: each reply that arrives
    is the caller's own; afterwards no connection is leased on any node."""
    rng = random.Random(7)
    async with client(shared_cluster) as redis:
        keys = [f"storm:{i}" for i in range(24)]
        for key in keys:
            await redis.set(key, key)

        async def one(key: str, deadline: float) -> None:
            for _ in range(30):
                with anyio.move_on_after(deadline):
                    assert await redis.get(key) == key.encode()
                    assert await redis.mget([key, keys[0]]) == [key.encode(), keys[0].encode()]

        async with anyio.create_task_group() as task_group:
            for key in keys:
                task_group.start_soon(one, key, rng.choice([0, 0.0001, 0.001, 0.01]))
        for key in keys:
            assert await redis.get(key) == key.encode()
        await nodes_at_rest(redis.node_statistics)
        await redis.delete(*keys)


async def test_closing_leaves_no_socket_and_no_task(shared_cluster: ClusterServers) -> None:
    before = open_fds()
    async with client(shared_cluster) as redis:
        await redis.mset({f"close:{i}": i for i in range(20)})
        assert open_fds() > before
    assert open_fds() == before
    with pytest.raises(anypool.PoolClosed):
        await redis.get("close:1")


async def test_no_reachable_node_is_a_cluster_error_naming_them() -> None:
    with socket_closed_port() as port:
        redis = RedisCluster(startup_nodes=[("127.0.0.1", port)], connect_timeout=1.0)
        async with redis:
            with anyio.fail_after(60), pytest.raises(anypool.ClusterError, match=str(port)):
                await redis.get("x")


def socket_closed_port() -> Any:
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed() -> Iterator[int]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        yield port

    return closed()


# --- pipelines ----------------------------------------------------------------------------------


async def test_a_pipeline_across_nodes_returns_replies_in_order(
    shared_cluster: ClusterServers,
) -> None:
    async with client(shared_cluster) as redis:
        keys = [f"pipe:{i}" for i in range(30)]
        await redis.delete(*keys)
        async with redis.pipeline() as pipe:
            for i, key in enumerate(keys):
                pipe.set(key, i).incr(key).get(key)
            pipe.lpush(keys[0], "x")  # WRONGTYPE: an error in its place
            replies = await pipe.execute(raise_on_error=False)
        expected: list[Any] = []
        for i in range(len(keys)):
            expected += [True, i + 1, str(i + 1).encode()]
        assert replies[:-1] == expected
        assert isinstance(replies[-1], redis_exceptions.ResponseError)
        pipe = redis.pipeline()
        pipe.get(keys[1]).lpush(keys[0], "x").get(keys[2])
        with pytest.raises(redis_exceptions.ResponseError, match="Command # 2"):
            await pipe.execute()
        assert redis.cluster_statistics()["gave_up"] == 0
        await nodes_at_rest(redis.node_statistics)


async def test_a_pipeline_follows_a_slot_that_moves(shared_cluster: ClusterServers) -> None:
    """Commands of a pipeline answered ASK (keys already moved) or MOVED (slot handed over)
    did not run: they are sent again where the slot now is, and the replies stay in order."""
    async with client(shared_cluster) as redis:
        keys = [f"{{pmove}}:{i}" for i in range(10)]
        slot = key_slot(keys[0].encode())
        await redis.mset({k: k for k in keys})
        source, target = other_primary(shared_cluster, slot)
        await anyio.to_thread.run_sync(shared_cluster.begin_migration, slot, target)
        try:
            await anyio.to_thread.run_sync(shared_cluster.move_keys, slot, source, target, 5)
            pipe = redis.pipeline()
            for key in keys:
                pipe.get(key)
            assert await pipe.execute() == [k.encode() for k in keys]
        finally:
            await anyio.to_thread.run_sync(shared_cluster.finish_migration, slot, source, target)
        pipe = redis.pipeline()
        for key in keys:
            pipe.append(key, "!")
        assert await pipe.execute() == [len(k) + 1 for k in keys]
        assert redis.cluster_statistics()["ask"] + redis.cluster_statistics()["moved"] > 0
        await redis.delete(*keys)


async def test_transactions_run_on_one_slot(shared_cluster: ClusterServers) -> None:
    async with client(shared_cluster) as redis:
        await redis.delete("{acct}:a", "{acct}:b")
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set("{acct}:a", 10).decrby("{acct}:a", 3).incrby("{acct}:b", 3)
            assert await pipe.execute() == [True, 7, 3]
        pipe = redis.pipeline(transaction=True)
        pipe.set("a", 1).set("b", 2)
        with pytest.raises(anypool.CrossSlotError, match=r"slots 3300, 15495"):
            await pipe.execute()
        assert await redis.exists("a", "b") == 0  # nothing was sent
        pipe = redis.pipeline()
        pipe.keys("*")
        with pytest.raises(anypool.CommandNotAllowed, match="several nodes"):
            await pipe.execute()


# --- the same answers as redis-py's cluster client ----------------------------------------------


def redis_py_answers(port: int, script: str) -> list[Any]:
    """What redis.asyncio.cluster.RedisCluster answers, in its own asyncio loop (a thread)."""
    import asyncio

    from redis.asyncio.cluster import RedisCluster as RedisPyCluster

    async def run() -> list[Any]:
        r = RedisPyCluster(host="127.0.0.1", port=port)
        try:
            return await differential_calls(r, script)
        finally:
            await r.aclose()

    return asyncio.run(run())


async def differential_calls(r: Any, prefix: str) -> list[Any]:
    keys = [f"{prefix}:{i}" for i in range(12)]
    out: list[Any] = []
    await r.delete(*keys)
    for i, key in enumerate(keys):
        out.append(await r.set(key, i, ex=100))
    out.append(await r.mget_nonatomic(keys))
    out.append(await r.exists(*keys))
    out.append(await r.touch(*keys))
    out.append(await r.hset(f"{prefix}:h", mapping={"a": 1, "b": 2}))
    out.append(await r.hgetall(f"{prefix}:h"))
    out.append(await r.zadd(f"{prefix}:z", {"a": 1.5, "b": 2}))
    out.append(await r.zrange(f"{prefix}:z", 0, -1, withscores=True))
    out.append(await r.eval("return {KEYS[1], ARGV[1]}", 1, keys[0], "arg"))
    sha = await r.script_load("return redis.call('GET', KEYS[1])")
    out.append(await r.evalsha(sha, 1, keys[3]))
    out.append(await r.ping())
    pipe = r.pipeline()
    for key in keys[:6]:
        pipe.incr(key)
    pipe.get(keys[0])
    out.append(await pipe.execute())
    out.append(await r.unlink(*keys[6:]))
    out.append(await r.delete(*keys, f"{prefix}:h", f"{prefix}:z"))
    return out


async def test_the_same_answers_as_redis_pys_cluster_client(
    shared_cluster: ClusterServers,
) -> None:
    port = shared_cluster.nodes[0].port
    theirs = await anyio.to_thread.run_sync(redis_py_answers, port, "diff")
    async with client(shared_cluster) as redis:
        mine = await differential_calls(redis, "diff")
    assert mine == theirs


# --- helpers: scan_iter, scripts, locks ---------------------------------------------------------


async def test_scan_iter_sees_every_key_of_every_primary(shared_cluster: ClusterServers) -> None:
    async with client(shared_cluster) as redis:
        keys = {f"scan:{i}".encode() for i in range(200)}
        await redis.mset(dict.fromkeys(keys, 1))
        found = [key async for key in redis.scan_iter(match="scan:*", count=17)]
        assert sorted(found) == sorted(keys)
        await redis.delete(*keys)


async def test_scripts_load_where_they_are_missing(shared_cluster: ClusterServers) -> None:
    async with client(shared_cluster) as redis:
        await redis.script_flush()
        double = redis.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1]) * 2")
        for i in range(12):
            key = f"script:{i}"
            await redis.delete(key)
            assert await double(keys=[key], args=[5]) == 10
        await redis.delete(*[f"script:{i}" for i in range(12)])


async def test_locks_work_on_a_cluster(shared_cluster: ClusterServers) -> None:
    async with client(shared_cluster) as redis:
        lock = redis.lock("cluster-lock", timeout=10, blocking_timeout=5)
        assert await lock.acquire()
        assert await redis.lock("cluster-lock", blocking=False).acquire() is False
        assert await lock.owned()
        await lock.release()
        assert not await lock.locked()


# --- replica reads ------------------------------------------------------------------------------


def replica_gets(servers: ClusterServers) -> int:
    """GETs the replicas served since their statistics were reset."""
    total = 0
    for primary in servers.primaries():
        for replica in servers.replicas(primary):
            text = servers.call(replica, "INFO", "commandstats").decode()
            for line in text.splitlines():
                if line.startswith("cmdstat_get:"):
                    total += int(line.split("calls=")[1].split(",")[0])
    return total


@pytest.mark.parametrize("preference", ["primary", "prefer-replica", "any"])
async def test_reads_go_where_the_read_preference_says(
    own_cluster: ClusterServers, preference: str
) -> None:
    async with client(own_cluster, read_preference=preference) as redis:
        keys = [f"read:{i}" for i in range(30)]
        for key in keys:
            pipe = redis.pipeline()
            pipe.set(key, key).execute_command("WAIT", 1, 5000)
            assert (await pipe.execute())[1] == 1  # on the replica before it is read there
        for node in own_cluster.nodes:
            own_cluster.call(node, "CONFIG", "RESETSTAT")
        for key in keys:
            assert await redis.get(key) == key.encode()
            assert await redis.incr(f"{key}:n") == 1  # writes: to primaries, no MOVED
        served = replica_gets(own_cluster)
        if preference == "primary":
            assert served == 0
        elif preference == "prefer-replica":
            assert served == len(keys)
        else:
            assert 0 < served < len(keys)
        assert redis.cluster_statistics()["moved"] == 0


def test_read_preferences_are_checked() -> None:
    with pytest.raises(anypool.ConfigError, match="read_preference"):
        RedisCluster(read_preference="nearest")
    with pytest.raises(anypool.ConfigError, match="contradicts"):
        RedisCluster(read_from_replicas=True, read_preference="primary")
    with pytest.raises(anypool.ConfigError, match="read_from_replicas"):
        RedisCluster(read_from_replicas="yes")  # type: ignore[arg-type]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"startup_nodes": []}, "startup_nodes"),
        ({"startup_nodes": [("127.0.0.1", "x")]}, "startup_nodes"),
        ({"startup_nodes": [("127.0.0.1", 0)]}, "startup_nodes"),
        ({"startup_nodes": [("", 7000)]}, "startup_nodes"),
        ({"startup_nodes": ["127.0.0.1:99999"]}, "startup_nodes"),
        ({"host": "127.0.0.1", "port": 70000}, "host"),
        ({"retry_on_timeout": True}, "retry_on_timeout"),
        ({"cluster_max_redirects": 0}, "cluster_max_redirects"),
        ({"cluster_retry_timeout": -1}, "cluster_retry_timeout"),
        ({"db": 1}, "db"),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict[str, Any], field: str) -> None:
    with pytest.raises(anypool.ConfigError, match=field):
        RedisCluster(**options)


async def test_bad_commands_get_specific_errors_and_leave_nothing(
    shared_cluster: ClusterServers,
) -> None:
    async with client(shared_cluster) as redis:
        with pytest.raises(anypool.InvalidArgument, match="command name"):
            await redis.execute_command()
        await redis.delete("{m}a", "{n}b")
        for bad in (None, object()):  # checked before anything is sent: no slot written
            with pytest.raises(redis_exceptions.DataError, match=r"'\{n\}b'"):
                await redis.mset_nonatomic({"{m}a": 1, "{n}b": bad})
            assert await redis.exists("{m}a", "{n}b") == 0
        pipe = redis.pipeline()
        with pytest.raises(anypool.InvalidArgument, match="command name"):
            pipe.execute_command()
        assert await pipe.set("a", 1).execute() == [True]  # nothing else was queued
        with pytest.raises(anypool.InvalidArgument, match="outside 0-16383"):
            await redis.execute_command("CLUSTER COUNTKEYSINSLOT", 16384)
        with pytest.raises(anypool.InvalidArgument, match="target_nodes='nonsense'"):
            await redis.execute_command("PING", target_nodes="nonsense")
        with pytest.raises(anypool.ConfigError, match="target_nodes"):
            await redis.execute_command("PING", target_nodes=("127.0.0.1", "x"))
        await redis.delete("a", "b")
        # A malformed split command is not split: nothing of it runs.
        with pytest.raises(redis_exceptions.ResponseError):
            await redis.execute_command("MSET", "a", "1", "b")
        assert await redis.exists("a", "b") == 0
        await nodes_at_rest(redis.node_statistics)


async def test_errors_leave_the_block_as_they_are(shared_cluster: ClusterServers) -> None:
    with pytest.raises(anypool.CrossSlotError):
        async with client(shared_cluster) as redis:
            await redis.rename("a", "b")
    with pytest.raises(KeyError):
        async with client(shared_cluster):
            raise KeyError("mine")


async def test_pools_of_nodes_outside_the_cluster_are_closed(
    shared_cluster: ClusterServers,
) -> None:
    with socket_closed_port() as port:
        async with client(shared_cluster, cluster_refresh_interval=0.05) as redis:
            with pytest.raises(anypool.ConnectError):
                await redis.execute_command("PING", target_nodes=("127.0.0.1", port))
            assert redis.cluster_statistics()["nodes"] >= 1
            with anyio.fail_after(30):
                while any(node.port == port for node in redis.node_statistics()):
                    await anyio.sleep(0.02)
            assert await redis.ping() is True


# --- the sync facade ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_blocking_cluster_from_threads(shared_cluster: ClusterServers, backend: str) -> None:
    import concurrent.futures

    url = f"redis://127.0.0.1:{shared_cluster.nodes[0].port}"
    with anypool.BlockingRedisCluster.from_url(url, backend=backend) as redis:
        keys = [f"sync:{i}" for i in range(20)]
        redis.delete(*keys)

        def work(key: str) -> int:
            return int(redis.incr(key)) + int(redis.incr(key))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert list(pool.map(work, keys)) == [3] * len(keys)
        assert redis.mget(keys) == [b"2"] * len(keys)
        with redis.pipeline() as pipe:
            pipe.incr(keys[0]).get(keys[1])
            assert pipe.execute() == [3, b"2"]
        assert sorted(redis.scan_iter(match="sync:*")) == sorted(k.encode() for k in keys)
        assert redis.statistics()["gave_up"] == 0
        with pytest.raises(NotImplementedError, match="not offered"):
            redis.acquire()
        with redis.subscribe("sync:news") as sub:  # the cluster's pub/sub, synchronously
            redis.publish("sync:news", "x")
            event = sub.get(timeout=30)
            assert isinstance(event, anypool.Message) and event.data == b"x"
        redis.delete(*keys)
    with pytest.raises(anypool.PoolClosed):
        redis.get("sync:0")


async def test_closing_ends_callers_waiting_for_the_topology(
    shared_cluster: ClusterServers,
) -> None:
    """The first topology read hangs (the startup node accepts and never answers); callers
    waiting for the table, for a refresh, in a pipeline or a subscription all end with
    PoolClosed when the client closes, instead of waiting for a refresh that will never come."""
    host, port = shared_cluster.startup_nodes[0]
    async with FaultProxy(port, host) as proxy:
        proxy.blackhole = True
        redis = RedisCluster(startup_nodes=[("127.0.0.1", proxy.port)], connect_timeout=600.0)
        await redis.open()
        ended: list[str] = []

        async def call(what: str) -> None:
            with pytest.raises(anypool.PoolClosed):
                if what == "get":
                    await redis.get("k")
                elif what == "refresh":
                    await redis.refresh_topology()
                elif what == "pipeline":
                    await redis.pipeline().get("k").execute()
                else:
                    async with redis.ssubscribe("k"):
                        pass
            ended.append(what)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for what in ("get", "refresh", "pipeline", "ssubscribe"):
                    tg.start_soon(call, what)
                await anyio.wait_all_tasks_blocked()  # each is waiting for the table
                assert ended == []
                await redis.aclose()
        assert sorted(ended) == ["get", "pipeline", "refresh", "ssubscribe"]


async def test_watch_multi_exec_on_one_slot(shared_cluster: ClusterServers) -> None:
    """redis-py's optimistic transaction on a cluster: WATCH keys of one slot, read them at
    once, MULTI, queue, EXEC on that slot's primary; a watched key changed meanwhile fails it
    with WatchError and nothing runs; the connection goes back either way."""
    async with client(shared_cluster) as redis:
        await redis.delete("{w}log")  # the cluster outlives each test
        await redis.set("{w}balance", 10)
        async with redis.pipeline() as pipe:
            assert await pipe.watch("{w}balance", "{w}log") is True
            assert pipe.watching
            balance = int(await pipe.get("{w}balance"))
            pipe.multi()
            pipe.set("{w}balance", balance - 3).rpush("{w}log", "-3")
            assert await pipe.execute() == [True, 1]
            assert not pipe.watching
        assert await redis.get("{w}balance") == b"7"
        async with redis.pipeline() as pipe:
            await pipe.watch("{w}balance")
            await redis.set("{w}balance", 100)  # another client changes it
            pipe.multi()
            pipe.set("{w}balance", 0)
            with pytest.raises(redis_exceptions.WatchError):
                await pipe.execute()
        assert await redis.get("{w}balance") == b"100"
        async with redis.pipeline() as pipe:  # reset() gives a watching connection back
            await pipe.watch("{w}balance")
        await nodes_at_rest(redis.node_statistics)


async def test_transaction_helper_applies_each_update_once(shared_cluster: ClusterServers) -> None:
    """RedisCluster.transaction() retries on WatchError: 20 tasks adding to one counter with
    read-modify-write transactions end with every addition applied exactly once."""
    async with client(shared_cluster) as redis:
        await redis.set("{t}counter", 0)

        async def add_one(pipe: Any) -> None:
            value = int(await pipe.get("{t}counter"))
            pipe.multi()
            pipe.set("{t}counter", value + 1)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(redis.transaction, add_one, "{t}counter")
        assert await redis.get("{t}counter") == b"20"
        await nodes_at_rest(redis.node_statistics)


async def test_watch_refuses_other_slots_and_state_commands_before_sending(
    shared_cluster: ClusterServers,
) -> None:
    async with client(shared_cluster) as redis:
        async with redis.pipeline() as pipe:
            with pytest.raises(anypool.CrossSlotError, match="slots"):
                await pipe.watch("a", "b")
            assert not pipe.watching
            await pipe.watch("{x}a")
            with pytest.raises(anypool.CrossSlotError, match="WATCHes slot"):
                await pipe.get("{y}b")
            with pytest.raises(anypool.CrossSlotError, match="WATCHes slot"):
                await pipe.watch("{y}b")
            pipe.multi()
            with pytest.raises(anypool.CommandNotAllowed, match="WATCH must come before MULTI"):
                await pipe.watch("{x}c")
            pipe.set("{y}b", 1)
            with pytest.raises(anypool.CrossSlotError, match="WATCHes slot"):
                await pipe.execute()
        assert await redis.exists("{y}b") == 0
        # Commands that would change a pooled connection are refused when queued, so a
        # pipeline spanning nodes never runs part of itself and then fails.
        for args in (("SELECT", 1), ("WATCH", "k"), ("MULTI",), ("SUBSCRIBE", "c")):
            pipe = redis.pipeline()
            pipe.set("{q}a", 1)
            with pytest.raises(anypool.CommandNotAllowed):
                pipe.execute_command(*args)
            await pipe.reset()
        assert await redis.exists("{q}a") == 0
        await nodes_at_rest(redis.node_statistics)


async def test_a_transaction_whose_slot_moves_runs_again_where_it_is(
    shared_cluster: ClusterServers,
) -> None:
    """The slot moves between WATCH and EXEC: the EXEC fails with WatchError (nothing ran),
    and transaction() runs it again on the slot's new owner."""
    async with client(shared_cluster) as redis:
        key = "{moving}n"
        slot = key_slot(key.encode())
        await redis.set(key, 1)
        moves = 0

        async def bump(pipe: Any) -> None:
            nonlocal moves
            value = int(await pipe.get(key))
            if moves == 0:  # move the slot once, while watched
                moves += 1
                owner = shared_cluster.node_for_slot(slot)
                target = next(n for n in shared_cluster.primaries() if n.port != owner.port)
                await anyio.to_thread.run_sync(shared_cluster.migrate_slot, slot, target)
            pipe.multi()
            pipe.set(key, value + 1)

        with anyio.fail_after(120):
            assert await redis.transaction(bump, key) == [True]
        assert await redis.get(key) == b"2"
        assert moves == 1
        await nodes_at_rest(redis.node_statistics)


@pytest.mark.parametrize("kind", KINDS)
async def test_commands_for_every_primary_refuse_a_partial_answer(kind: str) -> None:
    """A primary with no replica died, so its slots have no owner: DBSIZE, KEYS and SCAN mean
    the whole data set, and answering from the other shards would silently leave its keys
    out; they fail instead.  Valkey's CLUSTER SHARDS drops the dead shard, so the table has
    uncovered slots: a ClusterError says so (after cluster_retry_timeout); Redis 6.2's
    CLUSTER SLOTS still names the dead node, whose connection then fails."""
    with ClusterServers(3, 0, binary=binary(kind)) as servers:
        async with client(servers, cluster_retry_timeout=1.0) as redis:
            await redis.mset_nonatomic({f"{{p{i}}}k": i for i in range(30)})
            assert await redis.dbsize() == 30
            victim = next(n for n in servers.primaries() if n.port != servers.nodes[0].port)
            servers.kill(victim)
            with anyio.fail_after(120):  # until the others mark it failed
                while b"fail " not in _line_of(servers, victim):
                    await anyio.sleep(0.1)
            table = await redis.refresh_topology()
            expected: Any = anypool.ClusterError if table.covered < 16384 else anypool.ConnectError
            if kind == "valkey":
                assert table.covered < 16384
            said = "slots have no owner" if expected is anypool.ClusterError else None
            with pytest.raises(expected, match=said):
                await redis.dbsize()
            with pytest.raises(expected, match=said):
                await redis.keys("*")
            with pytest.raises(expected, match=said):
                async for _ in redis.scan_iter():
                    pass
            assert await redis.ping() is True  # the rest of the cluster still answers


def _line_of(servers: ClusterServers, node: RedisServer) -> bytes:
    """``node``'s line of CLUSTER NODES, as another node sees it."""
    other = next(n for n in servers.nodes if n.port != node.port and n.running)
    reply = servers.call(other, "CLUSTER", "NODES")
    text = reply if isinstance(reply, bytes) else str(reply).encode()
    return next((line for line in text.splitlines() if f":{node.port}@".encode() in line), b"")
