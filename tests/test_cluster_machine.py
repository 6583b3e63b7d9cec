"""A Hypothesis state machine for RedisCluster on a real cluster (three primaries with a replica
each), on every backend and both servers.

The guarantee: every caller gets its own reply; or, only when a fault struck while its command
was out (a primary killed), a clear ConnectionError, TimeoutError or ClusterError.  Slots that
move (with ASK and MOVED on the way) and graceful failovers never surface to a caller.  Nothing
leaks: between steps no node pool has a connection leased.

Rules start batches of tasks (INCR of their own counter, SET then GET, MGET across slots, a
pipeline across nodes, a transaction on one slot), cancel some of them at whatever await they
are in, and, with calls in flight: move a slot (keys migrated one by one), fail a primary over
gracefully, or kill a primary (its replica is promoted; it comes back as a replica).
``CLUSTER_MACHINE_EXAMPLES`` / ``..._STEPS`` scale it (``nox -s soak``).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import anypool
from anypool import RedisCluster
from anypool._cluster._slots import key_slot
from anypool.testing import RedisCluster as ClusterServers
from anypool.testing import find_valkey_server

from .backends import backend_params, run_machine, start_portal, together_cancelled_after

EXAMPLES = int(os.environ.get("CLUSTER_MACHINE_EXAMPLES", "4"))
STEPS = int(os.environ.get("CLUSTER_MACHINE_STEPS", "12"))
HANG = 90.0  # bounds that only catch hangs
KINDS = ["incr", "setget", "mget", "pipe", "tx"]


@dataclass
class _Call:
    token: str
    kind: str
    scope: anyio.CancelScope | None = None
    cancel_asked: bool = False
    faulted: bool = False  # a primary was killed while it was out
    future: concurrent.futures.Future[Any] | None = None


@dataclass
class _World:
    servers: ClusterServers
    portal: Any
    redis: RedisCluster


async def _body(redis: RedisCluster, call: _Call) -> Any:
    t = call.token
    if call.kind == "incr":
        return await redis.incr(f"cm:n:{t}")
    if call.kind == "setget":
        await redis.set(f"cm:s:{t}", t)
        return await redis.get(f"cm:s:{t}")
    if call.kind == "mget":
        return await redis.mget([f"cm:a:{t}", f"cm:b:{t}", f"cm:c:{t}"])
    if call.kind == "pipe":
        pipe = redis.pipeline()
        pipe.incr(f"cm:p1:{t}").incr(f"cm:p2:{t}").get(f"cm:p1:{t}")
        return await pipe.execute()
    pipe = redis.pipeline(transaction=True)
    pipe.incr(f"cm:{{{t}}}:x").incr(f"cm:{{{t}}}:y")
    return await pipe.execute()


def _expected(call: _Call) -> Any:
    return {
        "incr": 1,
        "setget": call.token.encode(),
        "mget": [None, None, None],
        "pipe": [1, 1, b"1"],
        "tx": [1, 1],
    }[call.kind]


async def _run(redis: RedisCluster, call: _Call) -> tuple[str, Any]:
    with anyio.CancelScope() as scope:
        call.scope = scope
        if call.cancel_asked:
            scope.cancel()
        try:
            return "ok", await _body(redis, call)
        except (anypool.ConnectionError, anypool.TimeoutError, anypool.ClusterError) as exc:
            return "error", exc
    return "cancelled", None


class ClusterMachine(RuleBasedStateMachine):
    world: _World

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []
        self.serial = 0
        self.run = uuid.uuid4().hex[:8]  # the cluster outlives examples: fresh keys each one
        self.rng = random.Random(self.run)

    # --- helpers ------------------------------------------------------------------------------

    def _start(self, kind: str) -> _Call:
        self.serial += 1
        call = _Call(token=f"{self.run}:{self.serial}", kind=kind)
        call.future = self.world.portal.start_task_soon(_run, self.world.redis, call)
        self.calls.append(call)
        return call

    def _out(self) -> list[_Call]:
        return [c for c in self.calls if c.future is not None and not c.future.done()]

    def _check(self, call: _Call, outcome: str, value: Any) -> None:
        if outcome == "cancelled":
            assert call.cancel_asked, f"{call.kind} {call.token} was cancelled by nobody"
        elif outcome == "ok":
            expected = _expected(call)
            if call.faulted and call.kind == "setget" and value is None:
                return  # the SET was acknowledged by a primary that died before copying it
            assert value == expected, (call.kind, call.token, value, expected)
        else:
            assert call.faulted, f"{call.kind} {call.token} failed with no fault: {value!r}"
            assert str(value), "an error without a message"

    def _finish(self, calls: list[_Call]) -> None:
        for call in calls:
            assert call.future is not None
            outcome, value = call.future.result(HANG)
            self._check(call, outcome, value)

    def _servers(self, what: Any) -> Any:
        return self.world.portal.call(lambda: anyio.to_thread.run_sync(what))

    # --- rules --------------------------------------------------------------------------------

    @rule(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=12))
    def commands(self, kinds: list[str]) -> None:
        self._finish([self._start(kind) for kind in kinds])

    @rule(
        kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=8),
        checkpoints=st.integers(0, 40),
    )
    def cancel_at_a_checkpoint(self, kinds: list[str], checkpoints: int) -> None:
        calls = [_Call(token=f"{self.run}:c{self.serial}:{i}", kind=k) for i, k in enumerate(kinds)]
        self.serial += 1
        redis = self.world.redis
        runs = [functools.partial(_run, redis, call) for call in calls]
        outcomes = self.world.portal.call(together_cancelled_after, checkpoints, runs)
        for call, outcome in zip(calls, outcomes, strict=True):
            if outcome is not None:  # the ones that finished before the cancellation
                call.cancel_asked = True  # (a cancelled one records "cancelled")
                self._check(call, *outcome)

    @rule(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=8), keys=st.integers(1, 5))
    def move_a_slot_under_load(self, kinds: list[str], keys: int) -> None:
        servers = self.world.servers
        token = f"{self.run}:m{self.serial}"
        self.serial += 1
        moving = [f"cm:{{{token}}}:{i}" for i in range(keys)]
        slot = key_slot(moving[0].encode())
        redis = self.world.redis
        self.world.portal.call(lambda: redis.mset(dict.fromkeys(moving, "v")))
        calls = [self._start(kind) for kind in kinds]
        # reads of the moving keys go on throughout: ASK and MOVED on the way
        readers = [self.world.portal.start_task_soon(redis.mget, moving) for _ in range(4)]

        def move() -> None:
            source = servers.node_for_slot(slot)
            target = self.rng.choice([n for n in servers.primaries() if n.port != source.port])
            servers.begin_migration(slot, target)
            while servers.move_keys(slot, source, target, 1):
                pass
            servers.finish_migration(slot, source, target)

        self._servers(move)
        self._finish(calls)
        for reader in readers:
            assert reader.result(HANG) == [b"v"] * keys
        assert self.world.portal.call(lambda: redis.mget(moving)) == [b"v"] * keys

    @rule(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=8))
    def graceful_failover_under_load(self, kinds: list[str]) -> None:
        servers = self.world.servers
        calls = [self._start(kind) for kind in kinds]
        self._servers(lambda: servers.failover(self.rng.choice(servers.primaries())))
        self._finish(calls)

    @rule(kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=8))
    def kill_a_primary_under_load(self, kinds: list[str]) -> None:
        servers = self.world.servers
        calls = [self._start(kind) for kind in kinds]
        for call in calls:
            call.faulted = True
        victim = self.rng.choice(servers.primaries())

        def kill_and_heal() -> None:
            servers.kill(victim)
            servers.wait_until_stable()  # its replica promoted
            servers.restart(victim)  # back as a replica of its successor
            servers.wait_until_stable()

        self._servers(kill_and_heal)
        self._finish(calls)

        async def healed() -> None:
            with anyio.fail_after(HANG):
                while True:
                    try:
                        await self.world.redis.set(f"cm:healed:{self.run}", 1)
                        return
                    except (anypool.ConnectionError, anypool.ClusterError, anypool.PoolError):
                        await anyio.sleep(0.05)

        self.world.portal.call(healed)

    @invariant()
    def nothing_leaks_once_settled(self) -> None:
        if self._out():
            return
        redis = self.world.redis

        async def quiet() -> None:
            with anyio.fail_after(HANG):
                while any(s.in_use or s.requests_waiting for s in redis.node_statistics().values()):
                    await anyio.sleep(0.005)

        try:
            self.world.portal.call(quiet)
        except TimeoutError:
            raise AssertionError(f"a node pool kept leases: {redis.node_statistics()}") from None

    def teardown(self) -> None:
        self._finish(self._out())


@pytest.fixture(params=["redis", "valkey"])
def world(request: pytest.FixtureRequest, anyio_backend_id: str) -> Iterator[_World]:
    binary = find_valkey_server() if request.param == "valkey" else None
    with ClusterServers(3, 1, binary=binary) as servers, start_portal(anyio_backend_id) as portal:
        redis = RedisCluster(
            startup_nodes=servers.startup_nodes[:1], connect_timeout=5, socket_timeout=10,
            timeout=HANG, max_size=4,
        )  # fmt: skip
        portal.call(redis.open)
        try:
            yield _World(servers, portal, redis)
        finally:
            portal.call(redis.aclose)


@pytest.fixture(params=backend_params())
def anyio_backend_id(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# A kill-and-heal step alone takes seconds; the bound grows with the run (the soak's is 25x
# the default) and only catches hangs.
@pytest.mark.timeout(max(1200, EXAMPLES * STEPS * 5))
def test_cluster_machine(world: _World) -> None:
    ClusterMachine.world = world
    run_machine(ClusterMachine, examples=EXAMPLES, steps=STEPS)
