"""Which arguments of a command are keys, from the server's own ``COMMAND`` metadata.  Pure.

A cluster routes a command by the slots of its keys, so it must know which arguments are keys.
That is not a list written here: the server describes every command it has.

* Servers with *key specifications* (Redis 7+, Valkey) describe each group of keys as a place
  to start (an index, or the argument after a keyword) and a way to find the keys from there (a
  range, or a count given in the arguments).  :func:`key_positions` interprets them exactly as
  the server does (``getKeysUsingKeySpecs``), so commands whose keys move (``EVAL``, ``XREAD
  STREAMS``, ``ZUNIONSTORE``...) are found without asking.
* Older servers (Redis 6.2) give only ``first key, last key, step``, which is exact unless the
  command is flagged ``movablekeys``.  For those, :func:`key_positions` answers
  :data:`ASK_SERVER`: the caller asks ``COMMAND GETKEYS`` (one round trip) -- except the
  scripting commands, whose shape is fixed by the protocol (``name script numkeys key...``);
  redis-py reads their keys the same way.

Subcommands (``OBJECT ENCODING key``, ``XINFO STREAM key``) have metadata of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .._errors import ProtocolError

__all__ = ["ASK_SERVER", "CommandInfo", "CommandTable", "KeySpec", "key_positions"]

# The fields of each find_keys type, in the order key_positions() reads them.
_FIND_FIELDS: dict[bytes, tuple[bytes, ...]] = {
    b"range": (b"lastkey", b"keystep", b"limit"),
    b"keynum": (b"keynumidx", b"firstkey", b"keystep"),
}


class _AskServer:
    def __repr__(self) -> str:
        return "ASK_SERVER"


ASK_SERVER: Final = _AskServer()
"""The metadata cannot say where this command's keys are; ``COMMAND GETKEYS`` can."""

# Commands whose keys follow a count: "name <script|sha|function> numkeys key... arg...".
# The protocol fixes that shape; it is how redis-py finds their keys too.
_NUMKEYS_AT_2 = frozenset({b"eval", b"evalsha", b"eval_ro", b"evalsha_ro", b"fcall", b"fcall_ro"})


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key specification (see the module's documentation).

    ``begin`` is ``("index", position)`` or ``("keyword", keyword, startfrom)``; ``find`` is
    ``("range", lastkey, keystep, limit)`` or ``("keynum", keynumidx, firstkey, keystep)``;
    anything else is ``("unknown",)``.  ``incomplete``: the server says the spec may miss keys.
    """

    begin: tuple[Any, ...]
    find: tuple[Any, ...]
    incomplete: bool = False


@dataclass(frozen=True, slots=True)
class CommandInfo:
    name: bytes
    arity: int
    flags: frozenset[bytes]
    first_key: int
    last_key: int
    step: int
    key_specs: tuple[KeySpec, ...] | None  # None: the server has no key specifications
    subcommands: Mapping[bytes, CommandInfo] = field(default_factory=dict)

    @property
    def movable_keys(self) -> bool:
        return b"movablekeys" in self.flags

    @property
    def readonly(self) -> bool:
        return b"readonly" in self.flags


class CommandTable:
    """The server's commands, by lower-case name; built from the reply to ``COMMAND``."""

    __slots__ = ("_commands",)

    def __init__(self, commands: Mapping[bytes, CommandInfo]) -> None:
        self._commands = dict(commands)

    @classmethod
    def from_reply(cls, reply: Any) -> CommandTable:
        """Parse the reply to ``COMMAND`` (RESP2 or RESP3, bytes or str).

        Raises:
            ProtocolError: the reply does not describe commands.
        """
        commands = {}
        for entry in _array(reply, "the COMMAND reply"):
            info = _command(entry)
            commands[info.name] = info
        return cls(commands)

    def get(self, args: Sequence[Any]) -> CommandInfo | None:
        """The metadata for ``args`` (the subcommand's, where it has one), or None when the
        server does not know the command."""
        info = self._commands.get(_lower(args[0]))
        if info is not None and info.subcommands and len(args) > 1:
            sub = info.subcommands.get(_lower(args[0]) + b"|" + _lower(args[1]))
            if sub is not None:
                return sub
        return info

    def names(self) -> list[bytes]:
        """Every command's lower-case name."""
        return list(self._commands)

    def __len__(self) -> int:
        return len(self._commands)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, bytes | str) and _lower(name) in self._commands


def key_positions(info: CommandInfo, args: Sequence[bytes]) -> list[int] | _AskServer:
    """The positions in ``args`` (``args[0]`` is the command name, everything encoded) that
    hold keys, in the order the server reads them; or :data:`ASK_SERVER`."""
    argc = len(args)
    if info.key_specs is not None:
        positions: list[int] = []
        for spec in info.key_specs:
            if spec.incomplete:
                return ASK_SERVER
            found = _spec_positions(spec, args)
            if found is None:
                return ASK_SERVER
            positions.extend(found)
        return positions
    if info.movable_keys:
        if info.name in _NUMKEYS_AT_2:
            return _numkeys_positions(args)
        return ASK_SERVER
    if info.first_key <= 0:
        return []
    last = info.last_key if info.last_key >= 0 else argc + info.last_key
    step = max(info.step, 1)
    return [j for j in range(info.first_key, last + 1, step) if j < argc]


def _numkeys_positions(args: Sequence[bytes]) -> list[int]:
    if len(args) < 3:
        return []
    try:
        count = int(args[2])
    except ValueError:
        return []  # the server refuses it with its own error
    return list(range(3, min(3 + max(count, 0), len(args))))


def _spec_positions(spec: KeySpec, args: Sequence[bytes]) -> list[int] | None:
    """The positions one spec names, as the server finds them; None when the spec is one this
    code does not know, and [] when the arguments are malformed (the server will say why)."""
    argc = len(args)
    kind = spec.begin[0]
    if kind == "index":
        first = spec.begin[1]
    elif kind == "keyword":
        keyword, startfrom = spec.begin[1], spec.begin[2]
        start = startfrom if startfrom > 0 else argc + startfrom
        end = argc - 1 if startfrom > 0 else 1
        first = 0
        i = start
        while True:
            if i == end or i >= argc or i < 1:
                break
            if _lower(args[i]) == keyword:
                first = i + 1
                break
            i = i + 1 if start <= end else i - 1
        if not first:
            return []  # no keyword: this spec names no key
    else:
        return None
    how = spec.find[0]
    if how == "range":
        lastkey, step, limit = spec.find[1], spec.find[2], spec.find[3]
        if lastkey >= 0:
            last = first + lastkey
        elif not limit:
            last = argc + lastkey
        else:
            last = first + ((argc - first) // limit + lastkey)
    elif how == "keynum":
        keynumidx, firstkey, step = spec.find[1], spec.find[2], spec.find[3]
        if keynumidx >= argc - first:
            return []
        try:
            count = int(args[first + keynumidx])
        except ValueError:
            return []
        if count < 0:
            return []
        first += firstkey
        last = first + count - 1
    else:
        return None
    if last >= argc or last < first or first >= argc:
        return []
    return list(range(first, last + 1, max(step, 1)))


# --- parsing the COMMAND reply ---------------------------------------------------------------


def _lower(value: Any) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"a command name must be str or bytes, not {type(value).__name__}")
    return value.lower()


def _array(value: Any, what: str) -> Sequence[Any]:
    if isinstance(value, list | tuple):
        return value
    raise ProtocolError(f"COMMAND reply: {what} should be an array, not {value!r}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ProtocolError(f"COMMAND reply: {what} should be an integer, not {value!r}")


def _fields(value: Any, what: str) -> dict[bytes, Any]:
    if isinstance(value, Mapping):
        return {_lower(k): v for k, v in value.items()}
    items = _array(value, what)
    if len(items) % 2:
        raise ProtocolError(f"COMMAND reply: {what} has an odd number of fields")
    return {_lower(items[i]): items[i + 1] for i in range(0, len(items), 2)}


def _flags(value: Any, what: str) -> frozenset[bytes]:
    if isinstance(value, set | frozenset):  # RESP3 sets
        value = list(value)
    return frozenset(_lower(flag) for flag in _array(value, what))


def _command(entry: Any) -> CommandInfo:
    fields = _array(entry, "a command")
    if len(fields) < 6:
        raise ProtocolError(f"COMMAND reply: a command with {len(fields)} fields: {entry!r}")
    name = _lower(fields[0])
    specs: tuple[KeySpec, ...] | None = None
    subcommands: dict[bytes, CommandInfo] = {}
    if len(fields) >= 9:  # Redis 7+: tips, key specifications, subcommands
        specs = tuple(_key_spec(spec) for spec in _array(fields[8], "key specifications"))
    if len(fields) >= 10:
        for sub in _array(fields[9], "subcommands"):
            info = _command(sub)
            subcommands[info.name] = info
    return CommandInfo(
        name=name,
        arity=_int(fields[1], "arity"),
        flags=_flags(fields[2], "flags"),
        first_key=_int(fields[3], "first key"),
        last_key=_int(fields[4], "last key"),
        step=_int(fields[5], "key step"),
        key_specs=specs,
        subcommands=subcommands,
    )


def _key_spec(value: Any) -> KeySpec:
    fields = _fields(value, "a key specification")
    flags = _flags(fields.get(b"flags", []), "key specification flags")
    begin_fields = _fields(fields.get(b"begin_search", []), "begin_search")
    begin_type = _lower(begin_fields.get(b"type", b"unknown"))
    begin_spec = _fields(begin_fields.get(b"spec", []), "begin_search spec")
    begin: tuple[Any, ...]
    if begin_type == b"index":
        begin = ("index", _int(begin_spec.get(b"index"), "begin_search index"))
    elif begin_type == b"keyword":
        begin = (
            "keyword",
            _lower(begin_spec.get(b"keyword", b"")),
            _int(begin_spec.get(b"startfrom"), "begin_search startfrom"),
        )
    else:
        begin = ("unknown",)
    find_fields = _fields(fields.get(b"find_keys", []), "find_keys")
    find_type = _lower(find_fields.get(b"type", b"unknown"))
    find_spec = _fields(find_fields.get(b"spec", []), "find_keys spec")
    find: tuple[Any, ...] = ("unknown",)
    if find_type in _FIND_FIELDS:
        find = (
            find_type.decode(),
            *(
                _int(find_spec.get(name), f"find_keys {name.decode()}")
                for name in _FIND_FIELDS[find_type]
            ),
        )
    return KeySpec(begin, find, incomplete=b"incomplete" in flags)
