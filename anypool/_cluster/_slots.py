"""The cluster's slot table: which shard owns each of the 16384 hash slots.  Pure: no I/O.

A table is built from a node's answer to ``CLUSTER SHARDS`` (Redis 7+, Valkey) or ``CLUSTER
SLOTS`` (older servers), and is never changed in place: a redirect (``MOVED``) gives a new
table, so a task routing a command always reads one consistent table, whatever a refresh does
meanwhile.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from .._errors import ProtocolError

__all__ = [
    "SLOTS",
    "Node",
    "Shard",
    "SlotTable",
    "key_slot",
    "parse_cluster_shards",
    "parse_cluster_slots",
]

SLOTS = 16384


def key_slot(key: bytes | bytearray | memoryview) -> int:
    """The hash slot of an encoded key, as the server computes it: CRC16 (XMODEM) modulo 16384
    of the key, or of its hash tag (the bytes between the first ``{`` and the next ``}``, when
    there is at least one byte between them)."""
    if type(key) is not bytes:
        key = bytes(key)  # a memoryview or bytearray, as the encoder passes them on
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


class Node(NamedTuple):
    """A node's address, as clients reach it."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Shard(NamedTuple):
    """A primary and its replicas, which serve the same slots."""

    primary: Node
    replicas: tuple[Node, ...] = ()

    @property
    def nodes(self) -> tuple[Node, ...]:
        return (self.primary, *self.replicas)


class SlotTable:
    """Which shard serves each slot; slots nobody serves are *uncovered*.  Immutable."""

    __slots__ = ("_owners", "_shards")

    def __init__(self, assignments: Iterable[tuple[int, int, Shard]]) -> None:
        """``assignments``: ``(first, last, shard)`` slot ranges, both ends included.  A
        shard named twice (same primary) is one shard; a range may not overlap another."""
        shards: list[Shard] = []
        index: dict[Node, int] = {}
        owners = [-1] * SLOTS
        for first, last, shard in assignments:
            if not 0 <= first <= last < SLOTS:
                raise ValueError(f"slot range {first}-{last} is outside 0-{SLOTS - 1}")
            position = index.get(shard.primary)
            if position is None:
                position = index[shard.primary] = len(shards)
                shards.append(shard)
            elif shards[position] != shard:
                raise ValueError(
                    f"{shard.primary} is described twice with different replicas: "
                    f"{shards[position].replicas} and {shard.replicas}"
                )
            for slot in range(first, last + 1):
                if owners[slot] != -1 and owners[slot] != position:
                    raise ValueError(
                        f"slot {slot} is claimed by both {shards[owners[slot]].primary} and "
                        f"{shard.primary}"
                    )
                owners[slot] = position
        self._shards: tuple[Shard, ...] = tuple(shards)
        self._owners: tuple[int, ...] = tuple(owners)

    # --- questions ------------------------------------------------------------------------

    def shard(self, slot: int) -> Shard | None:
        """The shard serving ``slot``, or None when no shard serves it."""
        position = self._owners[slot]
        return None if position < 0 else self._shards[position]

    @property
    def shards(self) -> tuple[Shard, ...]:
        """Every shard that serves at least one slot, in the order they were first named."""
        return self._shards

    @property
    def primaries(self) -> tuple[Node, ...]:
        return tuple(shard.primary for shard in self._shards)

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every node, primaries first."""
        return self.primaries + tuple(n for shard in self._shards for n in shard.replicas)

    @property
    def covered(self) -> int:
        """How many slots a shard serves (16384 when the cluster is fully covered)."""
        return SLOTS - self._owners.count(-1)

    def ranges(self) -> Iterator[tuple[int, int, Shard | None]]:
        """``(first, last, shard)`` for each run of slots with the same owner (None for a run
        of uncovered slots), in slot order."""
        owners = self._owners
        first = 0
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or owners[slot] != owners[first]:
                position = owners[first]
                yield first, slot - 1, None if position < 0 else self._shards[position]
                first = slot

    def uncovered(self) -> list[tuple[int, int]]:
        return [(first, last) for first, last, shard in self.ranges() if shard is None]

    # --- what a redirect teaches ----------------------------------------------------------

    def moved(self, slot: int, node: Node) -> SlotTable:
        """The table after ``MOVED slot node``: ``node`` now serves ``slot`` as a primary.

        * ``node`` is already a shard's primary: the slot joins that shard (resharding);
        * ``node`` is a replica of the slot's shard: it was promoted (failover); it becomes
          the shard's primary for every slot of the shard, and the old primary is dropped from
          the shard (until a refresh says what it is now), so no write goes to it;
        * otherwise the slot gets a shard of its own with ``node`` alone.
        """
        current = self.shard(slot)
        if current is not None and current.primary == node:
            return self
        assignments = list(self._assignments())
        if current is not None and node in current.replicas:
            promoted = Shard(node, tuple(r for r in current.replicas if r != node))
            return SlotTable(
                (first, last, promoted if shard == current else shard)
                for first, last, shard in assignments
            )
        target = next((s for s in self._shards if s.primary == node), None)
        if target is None:
            # A node this table does not know as a primary; any replica role it had elsewhere
            # is stale (a node serves slots as a primary or not at all).
            target = Shard(node)
            assignments = [
                (first, last, Shard(s.primary, tuple(r for r in s.replicas if r != node)))
                for first, last, s in assignments
            ]
        return SlotTable(_reassign(assignments, slot, target))

    def _assignments(self) -> Iterator[tuple[int, int, Shard]]:
        for first, last, shard in self.ranges():
            if shard is not None:
                yield first, last, shard

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SlotTable):
            return NotImplemented
        return list(self._assignments()) == list(other._assignments())

    def __hash__(self) -> int:
        return hash(tuple(self._assignments()))

    def __repr__(self) -> str:
        return f"<SlotTable {len(self._shards)} shards, {self.covered}/{SLOTS} slots covered>"


def _reassign(
    assignments: Sequence[tuple[int, int, Shard]], slot: int, target: Shard
) -> Iterator[tuple[int, int, Shard]]:
    """``assignments`` with ``slot`` taken from its range and given to ``target``."""
    for first, last, shard in assignments:
        if first <= slot <= last:
            if first < slot:
                yield first, slot - 1, shard
            if slot < last:
                yield slot + 1, last, shard
        else:
            yield first, last, shard
    yield slot, slot, target


# --- what the server says ---------------------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ProtocolError(f"CLUSTER reply: {what} should be a string, not {value!r}")


def _integer(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes | str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ProtocolError(f"CLUSTER reply: {what} should be an integer, not {value!r}")


def _sequence(value: Any, what: str) -> Sequence[Any]:
    if isinstance(value, list | tuple):
        return value
    raise ProtocolError(f"CLUSTER reply: {what} should be an array, not {value!r}")


def _fields(value: Any, what: str) -> dict[str, Any]:
    """A RESP3 map, or RESP2's flat ``[name, value, name, value...]`` array, keyed by text."""
    if isinstance(value, Mapping):
        return {_text(k, f"a field name in {what}"): v for k, v in value.items()}
    items = _sequence(value, what)
    if len(items) % 2:
        raise ProtocolError(f"CLUSTER reply: {what} has an odd number of fields: {value!r}")
    return {
        _text(items[i], f"a field name in {what}"): items[i + 1] for i in range(0, len(items), 2)
    }


def _host(value: Any, asked: str, what: str) -> str | None:
    """A node's host as announced; empty means "the address you asked me on", and ``?`` (or
    nothing) means the node does not know it (then it cannot be reached: None)."""
    if value is None:
        return None
    host = _text(value, what)
    if host == "":
        return asked
    if host == "?":
        return None
    return host


def _slot(value: Any, what: str) -> int:
    slot = _integer(value, what)
    if not 0 <= slot < SLOTS:
        raise ProtocolError(f"CLUSTER reply: {what} {slot} is outside 0-{SLOTS - 1}")
    return slot


def parse_cluster_slots(reply: Any, asked: str) -> SlotTable:
    """A table from ``CLUSTER SLOTS``: ``[[first, last, [host, port, id, ...], replicas...]...]``.

    ``asked`` is the host of the node that answered (an empty host in the reply means it).
    Replicas whose address is unknown are left out; the others are sorted (nodes list them in
    their own order, and tables from two nodes should compare equal).

    Raises:
        ProtocolError: the reply does not have that shape, or ranges overlap.
    """
    assignments: list[tuple[int, int, Shard]] = []
    for entry in _sequence(reply, "the CLUSTER SLOTS reply"):
        fields = _sequence(entry, "a CLUSTER SLOTS entry")
        if len(fields) < 3:
            raise ProtocolError(f"CLUSTER SLOTS entry without a primary: {entry!r}")
        first = _slot(fields[0], "first slot")
        last = _slot(fields[1], "last slot")
        nodes: list[Node] = []
        for described in fields[2:]:
            parts = _sequence(described, "a node in CLUSTER SLOTS")
            if len(parts) < 2:
                raise ProtocolError(f"CLUSTER SLOTS node without host and port: {described!r}")
            host = _host(parts[0], asked, "a node's host")
            port = _integer(parts[1], "a node's port")
            if host is not None:
                nodes.append(Node(host, port))
            elif not nodes:
                raise ProtocolError(
                    f"CLUSTER SLOTS: the primary of slots {first}-{last} has no known address"
                )
        if last < first:
            raise ProtocolError(f"CLUSTER SLOTS: slot range {first}-{last} is empty")
        assignments.append((first, last, Shard(nodes[0], tuple(sorted(nodes[1:])))))
    return _table(assignments, "CLUSTER SLOTS")


def parse_cluster_shards(reply: Any, asked: str) -> SlotTable:
    """A table from ``CLUSTER SHARDS``: a list of shards, each with ``slots`` (a flat list of
    range ends) and ``nodes`` (each with ``endpoint``/``ip``, ``port``, ``role``, ``health``).

    A shard's primary is its node with role ``master`` and health ``online``; a shard with
    slots but no such node leaves its slots uncovered (the cluster is failing over).  Replicas
    that are not ``online`` are left out.  ``asked`` is as for :func:`parse_cluster_slots`.

    Raises:
        ProtocolError: the reply does not have that shape, or ranges overlap.
    """
    assignments: list[tuple[int, int, Shard]] = []
    for described in _sequence(reply, "the CLUSTER SHARDS reply"):
        shard_fields = _fields(described, "a CLUSTER SHARDS shard")
        bounds = [_slot(s, "a slot") for s in _sequence(shard_fields.get("slots", []), "slots")]
        if len(bounds) % 2:
            raise ProtocolError(f"CLUSTER SHARDS: odd slot bounds {bounds!r}")
        primary: Node | None = None
        replicas: list[Node] = []
        for node_described in _sequence(shard_fields.get("nodes", []), "nodes"):
            node_fields = _fields(node_described, "a CLUSTER SHARDS node")
            host = _host(
                node_fields.get("endpoint", node_fields.get("ip")), asked, "a node's endpoint"
            )
            if host is None:
                continue
            port = _integer(node_fields.get("port", node_fields.get("tls-port")), "a port")
            if _text(node_fields.get("health", b"online"), "health") != "online":
                continue
            role = _text(node_fields.get("role", b""), "role")
            if role == "master":
                primary = Node(host, port)
            elif role in ("replica", "slave"):
                replicas.append(Node(host, port))
        if primary is None or not bounds:
            continue
        shard = Shard(primary, tuple(sorted(replicas)))
        for i in range(0, len(bounds), 2):
            if bounds[i + 1] < bounds[i]:
                raise ProtocolError(
                    f"CLUSTER SHARDS: slot range {bounds[i]}-{bounds[i + 1]} is empty"
                )
            assignments.append((bounds[i], bounds[i + 1], shard))
    return _table(assignments, "CLUSTER SHARDS")


def _table(assignments: list[tuple[int, int, Shard]], source: str) -> SlotTable:
    try:
        return SlotTable(assignments)
    except ValueError as exc:
        raise ProtocolError(f"{source}: {exc}") from None
