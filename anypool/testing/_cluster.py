"""A real, throw-away Redis (or Valkey) cluster for tests (see :mod:`anypool.testing`)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from .._cluster._slots import Node, parse_cluster_slots
from ._server import RedisServer, RedisServerError, find_redis_server

__all__ = ["RedisCluster"]

SLOTS = 16384
_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def _free_cluster_port(host: str, taken: set[int]) -> int:
    """A port that is free, as is its cluster-bus port (+10000)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port + _BUS_OFFSET >= 65536 or port in taken or port + _BUS_OFFSET in taken:
            continue
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.bind((host, port + _BUS_OFFSET))
        except OSError:
            continue
        return port
    raise RedisServerError(f"no free pair of ports (port, port + {_BUS_OFFSET}) on {host}")


class RedisCluster:
    """A real Redis Cluster on loopback: ``primaries`` primaries with ``replicas`` replicas
    each, every node a :class:`RedisServer` started with ``--cluster-enabled yes`` and wired
    with ``CLUSTER`` commands (no ``redis-cli`` needed).  A sync context manager.

    The slots are split evenly among the primaries, in order.  Entering returns once every
    node agrees on the slot table, the cluster state is ``ok`` everywhere and every replica's
    link to its primary is up.

    Args:
        primaries: how many primaries (at least 1).
        replicas: how many replicas each primary has.
        binary: path of ``redis-server`` or ``valkey-server`` (default: see
            :func:`find_redis_server`).
        host: loopback address the nodes listen on.
        password: ``requirepass`` and ``masterauth`` of every node.
        node_timeout: ``cluster-node-timeout`` in milliseconds: how long before a silent node
            is considered failed (and its replica promoted).
        args: extra ``redis-server`` arguments for every node.
        startup_timeout: seconds the whole cluster may take to form.

    Raises:
        RedisServerError: no binary, a node did not start, or the cluster did not form in
            time (the message says what was still missing).
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        node_timeout: int = 1000,
        args: Sequence[str] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        if primaries < 1:
            raise ValueError(f"primaries must be at least 1, not {primaries}")
        if replicas < 0:
            raise ValueError(f"replicas must be 0 or more, not {replicas}")
        self.binary = binary or find_redis_server()
        self.host = host
        self.password = password
        self.node_timeout = node_timeout
        self.startup_timeout = startup_timeout
        self._primaries = primaries
        self._replicas = replicas
        self._args = tuple(args)
        self.nodes: list[RedisServer] = []
        self._unsettled: str | None = None  # what the last stability check found missing

    # --- facts ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node (a client discovers the others from it)."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node."""
        return [(node.host, node.port) for node in self.nodes]

    def call(self, node: RedisServer, *args: Any, timeout: float = 10.0) -> Any:
        """Send one command to ``node`` on a fresh connection and return its reply (bytes,
        as the server sent it).  Error replies are raised as redis-py's exceptions."""
        return node.call(*args, timeout=timeout)

    def node_id(self, node: RedisServer) -> str:
        """The node's cluster id (``CLUSTER MYID``)."""
        reply = self.call(node, "CLUSTER", "MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def view(self, node: RedisServer | None = None) -> list[dict[str, Any]]:
        """``CLUSTER NODES`` as seen by ``node`` (default: the first running node), one dict
        per node: ``id``, ``host``, ``port``, ``flags`` (a set), ``primary`` (the id a replica
        follows, else None), ``slots`` (a list of ``(first, last)``)."""
        asked = node or next(n for n in self.nodes if n.running)
        text = self.call(asked, "CLUSTER", "NODES").decode()
        described = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            address = parts[1].split("@")[0].split(",")[0]
            host, _, port = address.rpartition(":")
            slots = []
            for item in parts[8:]:
                if item.startswith("["):
                    continue  # a slot being migrated or imported
                first, _, last = item.partition("-")
                slots.append((int(first), int(last or first)))
            described.append(
                {
                    "id": parts[0],
                    "host": host or asked.host,
                    "port": int(port) if port else 0,
                    "flags": set(parts[2].split(",")),
                    "primary": None if parts[3] == "-" else parts[3],
                    "link": parts[7],
                    "slots": slots,
                }
            )
        return described

    def primaries(self) -> list[RedisServer]:
        """The running nodes that are primaries now (roles change with failovers)."""
        return [n for n in self.nodes if n.running and self._role(n) == "master"]

    def replicas(self, primary: RedisServer) -> list[RedisServer]:
        """The running nodes that replicate ``primary`` now, as the first running node sees
        it (a replica the cluster marked failed is left out)."""
        return self._replicas_by_view(primary)

    def node_for_slot(self, slot: int) -> RedisServer:
        """The node serving ``slot`` as a primary, as the first running node sees it."""
        for described in self.view():
            if "master" in described["flags"] and any(
                first <= slot <= last for first, last in described["slots"]
            ):
                return self._server(described["port"])
        raise RedisServerError(f"no node serves slot {slot}")

    def key_slot(self, key: str | bytes) -> int:
        """``CLUSTER KEYSLOT key``, as the server computes it."""
        return int(self.call(self.nodes[0], "CLUSTER", "KEYSLOT", key))

    def _server(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def _role(self, node: RedisServer) -> str:
        return str(self._info(node, "replication").get("role", ""))

    def _info(self, node: RedisServer, section: str) -> dict[str, str]:
        return self._fields(self.call(node, "INFO", section))

    @staticmethod
    def _fields(reply: bytes) -> dict[str, str]:
        text = reply.decode()
        fields = {}
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields[name] = value.strip()
        return fields

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every node, assign the slots, introduce the nodes, attach the replicas, and
        wait until the cluster is whole."""
        if self.nodes:
            raise RedisServerError("the cluster is already running")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        taken: set[int] = set()
        total = self._primaries * (1 + self._replicas)
        for _ in range(total):
            self.nodes.append(self._start_node(taken))
        primaries = self.nodes[: self._primaries]
        ids = [self.node_id(node) for node in self.nodes]
        per = SLOTS // self._primaries
        for index, node in enumerate(primaries):
            # Distinct epochs before meeting, as redis-cli does, so no two primaries collide.
            self.call(node, "CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            first = index * per
            last = SLOTS - 1 if index == self._primaries - 1 else first + per - 1
            self.call(node, "CLUSTER", "ADDSLOTS", *range(first, last + 1))
        for node in self.nodes[1:]:
            self.call(node, "CLUSTER", "MEET", self.nodes[0].host, self.nodes[0].port)
        self._wait(
            deadline,
            "every node to know every other node",
            lambda: all(self._knows_all(node, set(ids)) for node in self.nodes),
        )
        for index, node in enumerate(self.nodes[self._primaries :]):
            primary_id = ids[index // self._replicas]
            self.call(node, "CLUSTER", "REPLICATE", primary_id)
        self.wait_until_stable(timeout=max(1.0, deadline - time.monotonic()))

    def _start_node(self, taken: set[int]) -> RedisServer:
        for _attempt in range(5):
            port = _free_cluster_port(self.host, taken)
            server = RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout),
                *(("--masterauth", self.password) if self.password is not None else ()),
                *self._args,
                binary=self.binary,
                host=self.host,
                port=port,
                password=self.password,
            )  # fmt: skip
            try:
                server.start()
            except RedisServerError as exc:
                if "Address already in use" in str(exc):
                    continue  # another process took the port between the probe and the bind
                raise
            taken.update((port, port + _BUS_OFFSET))
            return server
        raise RedisServerError(f"could not start a cluster node on {self.host}")

    def stop(self) -> None:
        """Stop every node and delete their directories."""
        nodes, self.nodes = self.nodes, []
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def _knows_all(self, node: RedisServer, ids: set[str]) -> bool:
        seen = {d["id"]: d for d in self.view(node)}
        return ids <= set(seen) and not any(
            "handshake" in seen[i]["flags"] or "noaddr" in seen[i]["flags"] for i in ids
        )

    def wait_until_stable(self, timeout: float = 60.0) -> None:
        """Wait until every running node reports ``cluster_state:ok``, they all describe the
        same primaries with the same slots, every slot is served, every running primary serves
        slots (so do not migrate a primary's last slot away) and every running replica's link
        to its primary is up.

        Raises:
            RedisServerError: not within ``timeout`` seconds (says what was still missing).
        """
        self._wait(time.monotonic() + timeout, "the cluster to settle", self._stable)

    def _stable(self) -> bool:
        self._unsettled = self._why_unsettled()
        return self._unsettled is None

    def _why_unsettled(self) -> str | None:
        """None when the cluster is stable, else what is not yet."""
        running = [n for n in self.nodes if n.running]
        alive = {Node(n.host, n.port) for n in running}
        tables = set()
        for node in running:
            state = self._fields(self.call(node, "CLUSTER", "INFO")).get("cluster_state")
            if state != "ok":
                return f"{node!r} reports cluster_state:{state}"
            # CLUSTER SLOTS leaves out replicas still loading and nodes marked failed.
            table = parse_cluster_slots(self.call(node, "CLUSTER", "SLOTS"), node.host)
            if table.covered != SLOTS:
                return f"{node!r} sees {table.covered} of {SLOTS} slots served"
            if set(table.nodes) != alive:
                return (
                    f"{node!r} sees {sorted(map(str, table.nodes))} serving slots, while "
                    f"{sorted(map(str, alive))} run"
                )
            tables.add(table)
            info = self._info(node, "replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return f"{node!r}: its link to its primary is {info.get('master_link_status')}"
        if len(tables) != 1:
            return f"the nodes describe {len(tables)} different slot tables"
        # Every node has heard of the latest epoch, and no two primaries share one: else a
        # node that bumps its epoch next (closing a migration) may pick one already taken,
        # and the collision's resolution can hand a slot back to its previous owner.
        epochs = {
            self._fields(self.call(n, "CLUSTER", "INFO")).get("cluster_current_epoch")
            for n in running
        }
        if len(epochs) != 1:
            return f"the nodes know different current epochs: {sorted(map(str, epochs))}"
        config_epochs = [
            line.split()[6]
            for line in self.call(running[0], "CLUSTER", "NODES").decode().splitlines()
            if len(line.split()) > 8 and "master" in line.split()[2]
        ]
        if len(set(config_epochs)) != len(config_epochs):
            return f"two primaries share a config epoch: {config_epochs}"
        return None

    def _wait(self, deadline: float, what: str, check: Callable[[], bool]) -> None:
        last_error = "not yet"
        self._unsettled = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
                last_error = self._unsettled or "not yet"
            except (OSError, ConnectionError) as exc:
                last_error = repr(exc)
            except Exception as exc:  # an error reply while the cluster forms
                last_error = repr(exc)
            time.sleep(0.05)
        raise RedisServerError(f"timed out waiting for {what} (last: {last_error})")

    # --- faults -----------------------------------------------------------------------------

    def kill(self, node: RedisServer) -> None:
        """SIGKILL ``node``.  Its replica (if any) is promoted once the others have marked it
        failed (after ``node_timeout``); see :meth:`wait_until_stable`."""
        node.kill()

    def restart(self, node: RedisServer) -> None:
        """Start ``node`` again (SIGKILL first if it runs), on the same port with the same
        cluster identity (its ``nodes.conf`` is kept) and an empty data set.  A primary that
        was failed over rejoins as a replica of its successor."""
        node.restart()

    def failover(self, primary: RedisServer, *, timeout: float = 60.0) -> RedisServer:
        """Promote one of ``primary``'s replicas with ``CLUSTER FAILOVER`` (``FORCE`` when
        ``primary`` is down) and wait until the cluster is stable again; returns the new
        primary.

        Raises:
            RedisServerError: ``primary`` has no replica, or the promotion did not complete.
        """
        deadline = time.monotonic() + timeout
        candidates = self._replicas_by_view(primary)
        if not candidates:
            raise RedisServerError(f"{primary!r} has no running replica to promote")
        chosen = candidates[0]
        described = next(d for d in self.view() if d["port"] == primary.port)
        if not described["slots"]:
            raise RedisServerError(f"{primary!r} serves no slots")
        slot = described["slots"][0][0]
        # The server gives a manual failover a fixed window (5 s) and then drops it, and the
        # other primaries refuse to vote for a replica of a shard they voted on within
        # 2 * node_timeout; on a loaded machine, or right after an earlier failover of the
        # same shard, the window can pass with the replica still a replica.  And INFO's role
        # is no witness: a replica reports "master" for a moment when the failover begins,
        # then goes back to following.  So: ask, wait until the replica serves the shard's
        # slots in its own view, wait until every node agrees, and check it still serves
        # them; else ask again, until the overall deadline.
        attempt_window = 5.0 + 3.0 * max(1.0, self.node_timeout / 1000)
        last = "no attempt made"
        for _ in range(1_000):
            if time.monotonic() >= deadline:
                break
            if not self._serves(chosen, slot):  # (a late win of the last attempt: no ask)
                if primary.running:
                    self.call(chosen, "CLUSTER", "FAILOVER")
                else:
                    self.call(chosen, "CLUSTER", "FAILOVER", "FORCE")
            try:
                self._wait(
                    min(deadline, time.monotonic() + attempt_window),
                    f"{chosen!r} to serve slot {slot}",
                    lambda: self._serves(chosen, slot),
                )
                self.wait_until_stable(timeout=max(1.0, deadline - time.monotonic()))
            except RedisServerError as exc:
                last = str(exc)
                continue
            if self.node_for_slot(slot).port == chosen.port:
                return chosen
            last = f"{chosen!r} was elected, then followed again"
        raise RedisServerError(
            f"timed out waiting for {chosen!r} to become a primary in place of {primary!r}"
            f" (last: {last})"
        )

    def _serves(self, node: RedisServer, slot: int) -> bool:
        """``node`` says it is a primary serving ``slot``."""
        mine = next(d for d in self.view(node) if "myself" in d["flags"])
        return "master" in mine["flags"] and any(
            first <= slot <= last for first, last in mine["slots"]
        )

    def _replicas_by_view(self, primary: RedisServer) -> list[RedisServer]:
        view = self.view(next(n for n in self.nodes if n.running))
        primary_id = next((d["id"] for d in view if d["port"] == primary.port), None)
        ports = [d["port"] for d in view if d["primary"] == primary_id and "fail" not in d["flags"]]
        return [self._server(port) for port in ports if self._server(port).running]

    def begin_migration(self, slot: int, target: RedisServer) -> RedisServer:
        """Wait until the cluster is stable, then mark ``slot`` as migrating from its owner to
        ``target`` (importing there); keys stay where they are until :meth:`move_keys`.
        Returns the source node.  Meanwhile the source answers ``ASK`` for keys it no longer
        has."""
        self.wait_until_stable()
        source = self.node_for_slot(slot)
        if source.port == target.port:
            raise RedisServerError(f"slot {slot} is already served by {target!r}")
        self.call(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def move_keys(
        self, slot: int, source: RedisServer, target: RedisServer, count: int = 100
    ) -> int:
        """``MIGRATE`` up to ``count`` keys of ``slot`` from ``source`` to ``target``; returns
        how many moved (0: none left)."""
        keys = self.call(source, "CLUSTER", "GETKEYSINSLOT", slot, count)
        if not keys:
            return 0
        auth = ("AUTH", self.password) if self.password is not None else ()
        self.call(source, "MIGRATE", target.host, target.port, "", 0, 10000, *auth, "KEYS", *keys)
        return len(keys)

    def finish_migration(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """Move the remaining keys, give ``slot`` to ``target`` on every node (the target
        first, as redis-cli does, so it never serves a slot it does not know it owns), and
        wait until the cluster is stable (every node agrees, epochs settled)."""
        for _ in range(1_000_000):
            if not self.move_keys(slot, source, target, 1000):
                break
        target_id = self.node_id(target)
        self.call(target, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.call(source, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.nodes:
            if node.running and node not in (source, target):
                with contextlib.suppress(Exception):  # it learns from gossip then
                    self.call(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_until_stable()

    def migrate_slot(self, slot: int, target: RedisServer) -> None:
        """Move ``slot`` and its keys to the primary ``target``, as redis-cli's reshard does:
        mark it, move the keys, assign it."""
        source = self.begin_migration(slot, target)
        self.finish_migration(slot, source, target)

    def __repr__(self) -> str:
        return f"<RedisCluster {len(self.nodes)} nodes {self.startup_nodes}>"
