"""A Hypothesis state machine over the Sentinel connection factory's decisions: which node a new
connection goes to, as lookups, ROLE checks, failover announcements and READONLY replies
interleave in every order Hypothesis can find.

No server: the sentinels and data nodes are a model (what the sentinels name, what each node's
ROLE says), and every lookup and connect parks at a gate until a rule lets it go on, so each
interleaving is reproducible.  The factory's decision code is the production code.

The guarantees checked after every step:

- a connection is only ever handed out to a node that said ROLE master when it was made;
- once the pool was told a node is no longer the primary (a promotion begun away from it, a
  promotion or switch announced, READONLY), no connection to it is handed out afterwards
  (unless a later announcement names it again), and every live connection to it refuses to
  send;
- connections the factory considers serving go to the node it believes is the primary;
- a create that fails says why (PrimaryNotFound, ConnectError), and none hangs once the
  model lets every operation finish.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import anypool
from anypool import RedisConfig
from anypool._sentinel import SentinelConnectionFactory
from anypool._sentinel import _factory as factory_module
from anypool._sentinel import settings as sentinel_settings
from anypool._sentinel._discovery import NotTheRole

from .backends import UVLOOP, needs_uvloop, start_portal

Address = tuple[str, int]
NODES: list[Address] = [("10.9.0.1", 6379), ("10.9.0.2", 6379), ("10.9.0.3", 6379)]
SENTINEL: Address = ("10.9.0.9", 26379)
ROLES = ["master", "slave", "down"]


def _show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class FakeConnection:
    """What the factory keeps of a connection: its address, and refuse()."""

    def __init__(self, address: Address, config: RedisConfig) -> None:
        self.config = config.replace(host=address[0], port=address[1])
        self.refused: str | None = None
        self.closed = False
        self.auth_generation = 0

    def refuse(self, reason: str) -> None:
        if self.refused is None:
            self.refused = reason

    async def aclose(self) -> None:
        self.closed = True


class World:
    """The model: what the sentinels name, each node's ROLE, and the gates operations park at."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.named: Address | None = NODES[0]
        self.roles: dict[Address, str] = {NODES[0]: "master", NODES[1]: "slave", NODES[2]: "slave"}
        self.gates: list[tuple[str, anyio.Event]] = []
        self.made: list[tuple[FakeConnection, str]] = []  # every connection, and its node's ROLE
        self.progress = 0

    async def gate(self, what: str) -> None:
        event = anyio.Event()
        entry = (what, event)
        self.gates.append(entry)
        self.progress += 1
        try:
            await event.wait()
        finally:
            if entry in self.gates:
                self.gates.remove(entry)
            self.progress += 1


class FakeDiscovery:
    """The Discovery interface over the model (one consolidated sentinel)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.counters = {"primary_lookups": 0, "replica_lookups": 0, "sentinel_failures": 0}

    @property
    def sentinels(self) -> list[Address]:
        return [SENTINEL]

    async def primary(self, refuse: Any = None) -> tuple[Address, FakeConnection]:
        self.counters["primary_lookups"] += 1
        await self.world.gate("lookup")
        named = self.world.named
        if named is None:
            raise anypool.PrimaryNotFound("the sentinel knows no primary", [])
        why = refuse(named) if refuse is not None else None
        if why is not None:
            raise anypool.PrimaryNotFound(f"named {_show(named)}, but {why}", [])
        return named, await self.connect_checked(named, "master")

    async def connect_checked(self, address: Address, role: str) -> FakeConnection:
        await self.world.gate(f"connect {_show(address)}")
        said = self.world.roles[address]
        if said == "down":
            raise anypool.ConnectError(f"{_show(address)} refused")
        if said != role:
            raise NotTheRole(f"{_show(address)} says ROLE {said}, not {role}")
        connection = FakeConnection(address, self.world.config)
        self.world.made.append((connection, said))
        return connection

    async def replicas(self) -> list[Address]:
        raise anypool.ReplicaNotFound("not modelled")


class SentinelMachine(RuleBasedStateMachine):
    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self._saved_limit = factory_module._PAUSE_LIMIT
        factory_module._PAUSE_LIMIT = 3600.0  # the machine's steps, not the clock, end a pause
        self._exit = contextlib.ExitStack()
        self.portal = self._exit.enter_context(start_portal(self.backend))
        config = RedisConfig()
        self.world = World(config)
        settings = sentinel_settings([SENTINEL], "svc", config)
        self.factory = SentinelConnectionFactory(config, settings)
        self.factory.discovery = FakeDiscovery(self.world)  # type: ignore[assignment]
        self.creates: list[Any] = []  # futures of create() calls under way
        self.lookups: list[Any] = []  # futures of lookups nobody waits on
        self.handed: list[FakeConnection] = []  # connections create() returned
        # Nodes a failover announcement (a promotion begun or done away from them) said are
        # not the primary: no connection to them may be handed out until one names them again.
        self.told_not_primary: set[Address] = set()
        # Connections handed out before their node was said not to be the primary (by an
        # announcement, or READONLY): they must send nothing more.
        self.must_refuse: list[FakeConnection] = []
        self.demotions = 0  # the factory's wrong_role + readonly counts, last seen
        self.errors: list[BaseException] = []
        # The pool starts having found the primary (a first lookup went through).
        self.call(self.factory.adopt, NODES[0], "the first lookup")

    # --- helpers ---------------------------------------------------------------------------

    def call(self, fn: Any, *args: Any) -> Any:
        return self.portal.call(fn, *args)

    def settle(self) -> None:
        """Run the loop until nothing moves: every create is done or parked (at a gate, or
        waiting for a promotion)."""
        world = self.world

        async def quiet() -> None:
            with anyio.fail_after(30):
                still = 0
                seen = (world.progress, sum(f.done() for f in self.creates + self.lookups))
                while still < 20:
                    await anyio.lowlevel.checkpoint()
                    now = (world.progress, sum(f.done() for f in self.creates + self.lookups))
                    still = still + 1 if now == seen else 0
                    seen = now

        self.call(quiet)
        self.harvest()

    def harvest(self) -> None:
        demotions = self.factory.counters["wrong_role"] + self.factory.counters["readonly"]
        if demotions != self.demotions:
            # The primary adopted last said it is not one (ROLE, READONLY): a node replaced
            # before it may legitimately be primary again (docs: a missed failback).
            self.demotions = demotions
            self.told_not_primary.clear()
        for future in [f for f in self.lookups if f.done()]:
            self.lookups.remove(future)
            future.result()  # raises what the lookup did not expect
        for future in [f for f in self.creates if f.done()]:
            self.creates.remove(future)
            error = future.exception()
            if error is None:
                connection = future.result()
                address = (connection.config.host, connection.config.port)
                # Handed out now: never to a node the pool was told is not the primary.
                assert address not in self.told_not_primary, (address, self.told_not_primary)
                self.handed.append(connection)
            else:
                assert isinstance(error, anypool.PrimaryNotFound | anypool.ConnectError), error
                self.errors.append(error)

    def told(self, address: Address | None, *, announced: bool = True) -> None:
        if address is None:
            return
        if announced:
            self.told_not_primary.add(address)
        self.must_refuse += [
            c for c in self.handed if (c.config.host, c.config.port) == address and not c.closed
        ]

    def adopted(self, address: Address) -> None:
        self.told_not_primary.discard(address)

    def announce(self, channel: str, data: str) -> None:
        async def send() -> None:
            await self.factory._announced(channel, data, SENTINEL)

        self.call(send)
        self.settle()

    # --- the model changes -----------------------------------------------------------------

    @rule(node=st.sampled_from([*NODES, None]))
    def sentinels_name(self, node: Address | None) -> None:
        self.world.named = node

    @rule(node=st.sampled_from(NODES), role=st.sampled_from(ROLES))
    def node_says(self, node: Address, role: str) -> None:
        self.world.roles[node] = role

    # --- what the pool does ----------------------------------------------------------------

    @precondition(lambda self: len(self.creates) < 4)
    @rule()
    def start_create(self) -> None:
        self.creates.append(self.portal.start_task_soon(self.factory.create))
        self.settle()

    @precondition(lambda self: len(self.lookups) < 2)
    @rule()
    def start_lookup(self) -> None:
        """A lookup no caller waits on: a sentinel listener catching up after it
        (re)subscribed, or a subscription moving."""

        async def lookup() -> None:
            with contextlib.suppress(anypool.PrimaryNotFound, anypool.ConnectError):
                _, connection = await self.factory.find_primary()
                if connection is not None:
                    await connection.aclose()

        self.lookups.append(self.portal.start_task_soon(lookup))
        self.settle()

    @precondition(lambda self: bool(self.world.gates))
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One parked lookup or connect goes on."""
        _, event = data.draw(st.sampled_from(self.world.gates))
        self.call(event.set)
        self.settle()

    @precondition(lambda self: bool(self.handed))
    @rule(data=st.data())
    def readonly(self, data: st.DataObject) -> None:
        """A command on a handed-out connection was answered READONLY."""
        connection = data.draw(st.sampled_from(self.handed))
        address = (connection.config.host, connection.config.port)
        if self.world.roles[address] == "master":
            return  # a primary does not answer READONLY
        self.call(self.factory.note_readonly, connection)
        # The node says it is a replica now; it may be promoted again later, and a lookup
        # that finds it saying ROLE master may take it back.
        self.told(address, announced=False)
        self.settle()

    # --- what the sentinels announce -------------------------------------------------------

    @precondition(lambda self: self.factory.known is not None)
    @rule(node=st.sampled_from(NODES))
    def promotion_begins(self, node: Address) -> None:
        old = self.factory.known
        assert old is not None
        if node == old:
            return
        self.announce(
            "+failover-state-send-slaveof-noone",
            f"slave {_show(node)} {node[0]} {node[1]} @ svc {old[0]} {old[1]}",
        )
        self.told(old)

    @rule(node=st.sampled_from(NODES))
    def promoted(self, node: Address) -> None:
        old = self.factory.known or self.factory._leaving
        self.announce(
            "+promoted-slave", f"slave {_show(node)} {node[0]} {node[1]} @ svc 10.9.0.1 6379"
        )
        if old is not None and old != node:
            self.told(old)
        self.adopted(node)

    @rule(node=st.sampled_from(NODES))
    def switch_master(self, node: Address) -> None:
        old = self.factory.known or self.factory._leaving
        self.announce("+switch-master", f"svc 10.9.0.1 6379 {node[0]} {node[1]}")
        if old is not None and old != node:
            self.told(old)
        self.adopted(node)

    @rule()
    def failover_aborted(self) -> None:
        """The failover that began ended without a promotion: the old primary still is one."""
        leaving = self.factory._leaving if self.factory._promoting is not None else None
        self.announce("-failover-abort-slave-timeout", "master svc 10.9.0.1 6379")
        if leaving is not None:
            self.adopted(leaving)

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    def every_connection_was_made_to_a_master(self) -> None:
        for _, role in self.world.made:
            assert role == "master"

    @invariant()
    def nothing_is_sent_to_a_node_known_not_primary(self) -> None:
        for connection in self.must_refuse:
            assert connection.refused is not None, connection.config.address
            assert not self.factory.serves(connection)  # type: ignore[arg-type]

    @invariant()
    def the_pool_never_believes_in_a_replaced_primary(self) -> None:
        assert self.factory.known not in self.told_not_primary, self.factory.known
        assert self.factory.primary not in self.told_not_primary, self.factory.primary

    @invariant()
    def what_serves_goes_to_the_known_primary(self) -> None:
        for connection in self.handed:
            if self.factory.serves(connection):  # type: ignore[arg-type]
                address = (connection.config.host, connection.config.port)
                assert address == self.factory.known

    def teardown(self) -> None:
        try:
            # Let everything finish: every node that is named says master, gates open.
            self.world.roles = dict.fromkeys(NODES, "slave")
            target = self.world.named or NODES[0]
            self.world.named = target
            self.world.roles[target] = "master"
            self.told_not_primary.discard(target)
            if self.factory._promoting is not None:
                self.announce("+switch-master", f"svc 10.9.0.1 6379 {target[0]} {target[1]}")
            for _ in range(100):
                if not self.creates and not self.lookups:
                    break
                for _, event in list(self.world.gates):
                    self.call(event.set)
                self.settle()
            assert not self.creates, "a create() never finished"
            assert not self.lookups, "a lookup never finished"
        finally:
            self._exit.close()
            factory_module._PAUSE_LIMIT = self._saved_limit


machine_settings = settings(
    max_examples=int(os.environ.get("ANYPOOL_SENTINEL_EXAMPLES", "100")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class SentinelAsyncio(SentinelMachine):
    backend = "asyncio"


class SentinelUvloop(SentinelMachine):
    backend = UVLOOP


class SentinelTrio(SentinelMachine):
    backend = "trio"


TestSentinelAsyncio = machine_settings(SentinelAsyncio).TestCase
TestSentinelUvloop = needs_uvloop(machine_settings(SentinelUvloop).TestCase)
TestSentinelTrio = machine_settings(SentinelTrio).TestCase


def test_the_model_can_fail() -> None:
    """The invariant that matters catches a factory that hands out a connection to a node it
    was told is no longer the primary (here: adopting it back without an announcement)."""
    machine = SentinelAsyncio()
    try:
        machine.start_create()
        machine.call(machine.world.gates[0][1].set)  # the connect (the primary is known)
        machine.settle()
        assert machine.factory.known == NODES[0] and len(machine.handed) == 1
        machine.promoted(NODES[1])
        assert machine.told_not_primary == {NODES[0]}
        machine.call(machine.factory.adopt, NODES[0], "a buggy lookup")  # never, in the factory
        machine.adopted(NODES[1])  # (the model still believes NODES[0] was replaced)
        machine.told_not_primary = {NODES[0]}
        machine.start_create()
        machine.call(machine.world.gates[0][1].set)
        with pytest.raises(AssertionError):
            machine.settle()
    finally:
        machine.creates.clear()
        machine._exit.close()
        factory_module._PAUSE_LIMIT = machine._saved_limit
