"""Where a command goes in a cluster, and how the replies of a command split across nodes are put
back together.  Pure: no I/O (the slot table and the command table are given).

* A command with keys goes to the shard that owns their slot.  Keys in different slots are
  refused before anything is sent (:class:`CrossSlotError` names each key's slot), except for
  the commands that redis-py's cluster client splits: ``MGET``, ``MSET``, ``DEL``, ``UNLINK``,
  ``EXISTS``, ``TOUCH``, run as one command per slot and merged as redis-py merges them (so
  across slots they are not atomic; within a slot they are).
* A command without keys goes where redis-py's cluster client sends it (its ``COMMAND_FLAGS``
  table: one node, every primary, every node...), and the replies of several nodes are merged
  with redis-py's ``RESULT_CALLBACKS``; commands neither names go to one primary.  ``KEYS``
  and ``DBSIZE`` go to every primary (redis-py 8 asks one node, which knows a third of the
  keys of a three-shard cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._compat import cluster_tables
from .._errors import CrossSlotError, InvalidArgument
from ._keys import CommandTable, key_positions
from ._slots import SLOTS, key_slot

__all__ = [
    "ALL_NODES",
    "DEFAULT_NODE",
    "PRIMARIES",
    "RANDOM",
    "REPLICAS",
    "SLOT_ID",
    "Part",
    "Route",
    "command_name",
    "merge",
    "merger",
    "node_flag",
    "route",
    "single_key_command",
]

PRIMARIES, REPLICAS, ALL_NODES, RANDOM, DEFAULT_NODE, SLOT_ID = (
    "primaries", "replicas", "all", "random", "default-node", "slot-id",
)  # fmt: skip
NODE_FLAGS = frozenset({PRIMARIES, REPLICAS, ALL_NODES, RANDOM, DEFAULT_NODE})

_FLAGS, _MERGES = cluster_tables()
# redis-py 8 sends KEYS and DBSIZE to one node, which answers for its own slots only; they
# mean the whole data set, so they go to every primary and are merged with redis-py's own
# merge (concatenated, summed).
_FLAGS.update({"KEYS": PRIMARIES, "DBSIZE": PRIMARIES})

# Multi-key commands run per slot when their keys span slots: how keys sit in the arguments
# (every argument, or key-value pairs), and how the replies are merged.
_SPLIT_KEYS = {"MGET": 1, "DEL": 1, "UNLINK": 1, "EXISTS": 1, "TOUCH": 1, "MSET": 2}


@dataclass(frozen=True, slots=True)
class Part:
    """One slot's share of a split command: its arguments, and where its keys were."""

    slot: int
    args: tuple[Any, ...]
    positions: tuple[int, ...]  # for MGET: the indices of its keys in the original order


@dataclass(frozen=True, slots=True)
class Route:
    """Where a command goes: ``slot`` (one slot's shard), ``flag`` (nodes named by a redis-py
    node flag), or ``parts`` (one command per slot, then merged)."""

    name: str
    slot: int | None = None
    flag: str | None = None
    parts: tuple[Part, ...] = ()
    readonly: bool = False


def command_name(args: Sequence[Any]) -> str:
    """``"CLUSTER SETSLOT"`` for a container command redis-py's tables name with its
    subcommand, else the command's own name; upper-case."""
    first = _word(args[0])
    if " " in first:
        return first
    if len(args) > 1 and isinstance(args[1], str | bytes):
        both = f"{first} {_word(args[1])}"
        if both in _FLAGS or both in _MERGES:
            return both
    return first


def _word(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace").upper()
    return str(value).upper()


def node_flag(name: str) -> str | None:
    """redis-py's routing flag for a keyless command, or None."""
    return _FLAGS.get(name)


def route(
    args: tuple[Any, ...],
    encoded: Sequence[bytes],
    commands: CommandTable,
    known_keys: Sequence[bytes] | None = None,
) -> Route:
    """Where ``args`` go.  ``encoded`` are the same arguments as bytes (as the server reads
    them); ``known_keys`` the keys when the caller had to ask the server (``COMMAND
    GETKEYS``), else they are found from ``commands``.

    Raises:
        CrossSlotError: keys in different slots, for a command that cannot be split.
        LookupError: the key positions need ``COMMAND GETKEYS`` (the message says so); the
            caller asks the server and calls again with ``keys``.
    """
    name = command_name(args)
    flag = _FLAGS.get(name)
    info = commands.get(encoded) if encoded else None
    readonly = info is not None and info.readonly
    if flag == SLOT_ID:
        return Route(name, slot=_slot_argument(name, encoded))
    if flag is not None:
        return Route(name, flag=flag, readonly=readonly)
    keys: Sequence[bytes]
    if known_keys is None:
        if info is None:
            # Not a command this server has: any node answers "unknown command".
            return Route(name, flag=DEFAULT_NODE)
        found = key_positions(info, encoded)
        if not isinstance(found, list):  # ASK_SERVER
            raise LookupError(f"{name}: its keys are known to the server only")
        keys = [encoded[i] for i in found]
    else:
        keys = known_keys
    if not keys:
        return Route(name, flag=DEFAULT_NODE, readonly=readonly)
    slots = [key_slot(key) for key in keys]
    first = slots[0]
    if all(slot == first for slot in slots):
        return Route(name, slot=first, readonly=readonly)
    step = _SPLIT_KEYS.get(name)
    if step is not None and (len(encoded) - 1) % step == 0:  # else: the server says why
        return Route(name, parts=_split(args, encoded, step), readonly=readonly)
    raise CrossSlotError(_cross_slot_message(name, keys, slots))


def _slot_argument(name: str, args: Sequence[bytes]) -> int:
    """The slot a ``CLUSTER ... slot`` command names (``args``: encoded, one word each)."""
    words = len(name.split())
    try:
        slot = int(args[words] if len(args) > words else "")
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name} needs a slot number as its first argument") from None
    if not 0 <= slot < SLOTS:
        raise InvalidArgument(f"{name}: slot {slot} is outside 0-{SLOTS - 1}")
    return slot


def _split(args: tuple[Any, ...], encoded: Sequence[bytes], step: int) -> tuple[Part, ...]:
    by_slot: dict[int, tuple[list[Any], list[int]]] = {}
    for index in range(1, len(args), step):
        slot = key_slot(encoded[index])
        group, positions = by_slot.setdefault(slot, ([args[0]], []))
        group.extend(args[index : index + step])
        positions.append((index - 1) // step)
    return tuple(
        Part(slot, tuple(group), tuple(positions)) for slot, (group, positions) in by_slot.items()
    )


def _cross_slot_message(name: str, keys: Sequence[bytes], slots: Sequence[int]) -> str:
    shown = ", ".join(
        f"{key.decode('utf-8', 'replace')!r} (slot {slot})"
        for key, slot in list(zip(keys, slots, strict=True))[:6]
    )
    more = f" and {len(keys) - 6} more" if len(keys) > 6 else ""
    return (
        f"{name}: its keys are in different slots: {shown}{more}; in a cluster one command "
        f"runs on one slot: give the keys a common hash tag, e.g. '{{user:1}}:name' and "
        f"'{{user:1}}:email'"
    )


def merge(route_: Route, replies: Sequence[Any]) -> Any:
    """The reply of a split command, from its parts' replies (in ``route_.parts`` order)."""
    name = route_.name
    if name == "MGET":
        total = sum(len(part.positions) for part in route_.parts)
        values: list[Any] = [None] * total
        for part, reply in zip(route_.parts, replies, strict=True):
            for position, value in zip(part.positions, reply, strict=True):
                values[position] = value
        return values
    if name == "MSET":
        return all(replies)
    return sum(replies)


def merger(name: str) -> Callable[[str, dict[str, Any]], Any] | None:
    """redis-py's merge of a command's replies from several nodes (``{node name: reply}``),
    or None: then the caller gets that dict, as from redis-py."""
    return _MERGES.get(name)


def single_key_command(name: str, commands: CommandTable) -> int:
    """0 unless ``name`` is a command with exactly one key, its first argument, whatever
    else it is given (GET, SET, INCR, HSET...): then 1, or 2 when it only reads.  Such a
    command is routed by its first argument alone (the client's fast path).  Not for names
    redis-py routes by a flag, containers (subcommands), nor names with spaces."""
    if " " in name or name.upper() in _FLAGS or name.upper() in _SPLIT_KEYS:
        return 0
    info = commands.get([name])
    if info is None or info.subcommands:
        return 0
    if info.key_specs is not None:
        if len(info.key_specs) != 1:
            return 0
        spec = info.key_specs[0]
        simple = (
            spec.begin == ("index", 1) and spec.find[:3] == ("range", 0, 1) and not spec.incomplete
        )
    else:
        simple = not info.movable_keys and info.first_key == 1 and info.last_key == 1
    if not simple:
        return 0
    return 2 if info.readonly else 1
