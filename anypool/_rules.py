"""Which commands would change a connection's state, and what anypool does about each.

A pooled connection must go back to the idle set in its configured state (database, protocol,
reply mode, name, no MULTI, no WATCH, no tracking, no debugger...): the next user inherits it.
So every command is one of three kinds:

* **harmless**: it runs anywhere;
* **stateful** (SELECT, CLIENT SETNAME, WATCH, READONLY...): refused on the pool and in
  pipelines, with a message saying what to use instead; allowed on an exclusive connection
  (``acquire()``), which is then closed on return instead of being reused;
* **contract-breaking** (the SUBSCRIBE family, MONITOR, CLIENT REPLY, SCRIPT DEBUG, SYNC...):
  the reply becomes a stream, or there is none, or a debugging session; refused everywhere.

Container commands (CLIENT, SCRIPT) are judged by their subcommand against an allow-list of
the harmless ones: a subcommand anypool does not know (a newer server's, say Valkey's CLIENT
CAPA) is treated as stateful.  Names are read the way the packer writes them: ``str``,
``bytes``, ``bytearray`` or ``memoryview``, in any case, and redis-py's multi-word first
argument (``"CLIENT SETNAME"``) is split into words.  No I/O here.
"""

from __future__ import annotations

from typing import Any

from ._errors import CommandNotAllowed, InvalidArgument

__all__ = [
    "command_words", "judge_on_connection", "name_of", "needs_own_connection", "refuse_on_pool",
    "shareable_name", "wire_args",
]  # fmt: skip

_USE_CONFIG = "it would change one random pooled connection; set it in the config or URL"
_USE_ACQUIRE = "it would change one random pooled connection; use `async with redis.acquire()`"
_USE_PIPELINE = "transactions need one connection throughout: use redis.pipeline(transaction=True)"
_IN_PIPELINE = "use the pipeline's own watch(), multi() and execute()"
_USE_SUBSCRIBE = "pub/sub needs a dedicated connection: use `async with redis.subscribe(...)`"
_NO_REPLY = "anypool reads one reply per command, and CLIENT REPLY OFF/SKIP sends none"
_STREAMS = "the connection would then stream every command the server runs; use redis-cli"
_DEBUGGER = "the connection would turn into a Lua debugging session; use redis-cli --ldb"
_REPLICATION = "the connection would turn into a replication stream"

# Stateful commands, and what to use instead on the pool.
_STATEFUL: dict[str, str] = {
    "SELECT": "set db in the config or URL, or use `async with redis.acquire()`",
    "AUTH": _USE_CONFIG,
    "HELLO": _USE_CONFIG,
    "RESET": _USE_ACQUIRE,
    "READONLY": _USE_ACQUIRE,
    "READWRITE": _USE_ACQUIRE,
    "QUIT": "the pool manages connection lifetimes",
    "WATCH": _USE_PIPELINE,
    "MULTI": _USE_PIPELINE,
}
# Meaningless on the pool (they end a WATCH or a MULTI another command began, on a connection
# the next command may not get), harmless on an exclusive connection (they restore its state).
_POOL_ONLY: dict[str, str] = dict.fromkeys(("UNWATCH", "EXEC", "DISCARD"), _USE_PIPELINE)
_PIPELINE_METHODS = dict.fromkeys(("WATCH", "UNWATCH", "MULTI", "EXEC", "DISCARD"), _IN_PIPELINE)
# Contract-breaking commands, refused everywhere.
_BREAKING: dict[str, str] = {
    **dict.fromkeys(
        ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"),
        _USE_SUBSCRIBE,
    ),
    "MONITOR": _STREAMS,
    "SYNC": _REPLICATION,
    "PSYNC": _REPLICATION,
    "REPLCONF": _REPLICATION,
}
# Container commands: the harmless subcommands, and the contract-breaking ones; any other
# subcommand is stateful (with the advice given, or _USE_ACQUIRE).
_HARMLESS_SUBCOMMANDS: dict[str, frozenset[str]] = {
    "CLIENT": frozenset({
        "ID", "INFO", "LIST", "GETNAME", "GETREDIR", "TRACKINGINFO", "KILL", "PAUSE",
        "UNPAUSE", "UNBLOCK", "HELP",
    }),
    "SCRIPT": frozenset({"LOAD", "EXISTS", "FLUSH", "KILL", "HELP"}),
}  # fmt: skip
_BREAKING_SUBCOMMANDS: dict[tuple[str, str], str] = {
    ("CLIENT", "REPLY"): _NO_REPLY,
    ("SCRIPT", "DEBUG"): _DEBUGGER,
}
_STATEFUL_SUBCOMMAND_ADVICE: dict[tuple[str, str], str] = {
    ("CLIENT", "SETNAME"): (
        "set client_name in the config or URL, or use `async with redis.acquire()`"
    ),
    ("CLIENT", "SETINFO"): _USE_CONFIG,
}


def name_of(arg: Any) -> str:
    """A command or subcommand name, upper-case, from any argument type the packer takes."""
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg).decode("ascii", "replace").upper()
    return str(arg).upper()


def command_words(args: tuple[Any, ...]) -> tuple[str, str]:
    """("CLIENT", "SETNAME") for ("CLIENT SETNAME", "x") and ("CLIENT", "SETNAME", "x"); the
    subcommand is "" for a command that is not a container.

    Raises:
        InvalidArgument: no command at all.
    """
    words = name_of(args[0]).split() if args else []
    if not words:
        raise InvalidArgument(f"no command given: {args!r}")
    name = words[0]
    if name not in _HARMLESS_SUBCOMMANDS:
        return name, ""
    if len(words) > 1:
        return name, words[1]
    return name, name_of(args[1]) if len(args) > 1 else ""


def wire_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """redis-py's mixins pass some commands as one string ("CLIENT SETNAME"); like redis-py's
    packer, send the words of the first argument separately, as UTF-8 whatever the arguments'
    encoding (they are the command's name)."""
    first = args[0]
    if isinstance(first, str) and " " in first:
        return (*first.encode().split(), *args[1:])
    if isinstance(first, bytes) and b" " in first:
        return (*first.split(), *args[1:])
    return args


def _judge(args: tuple[Any, ...]) -> tuple[str, str | None, str | None]:
    """(what to call it, advice if contract-breaking, advice if stateful)."""
    name, sub = command_words(args)
    if name in _HARMLESS_SUBCOMMANDS:
        label = f"{name} {sub}".strip()
        if sub in _HARMLESS_SUBCOMMANDS[name]:
            return label, None, None
        breaking = _BREAKING_SUBCOMMANDS.get((name, sub))
        if breaking is not None:
            return label, breaking, None
        return label, None, _STATEFUL_SUBCOMMAND_ADVICE.get((name, sub), _USE_ACQUIRE)
    return name, _BREAKING.get(name), _STATEFUL.get(name)


def refuse_on_pool(args: tuple[Any, ...], *, pipeline: bool = False) -> None:
    """Refuse, on the pool or queued in a pipeline, a command that would change the state of
    a pooled connection or break request/response.

    Raises:
        CommandNotAllowed: it would; the message says what to use instead.
    """
    label, breaking, stateful = _judge(args)
    advice = breaking or stateful or _POOL_ONLY.get(label)
    if advice is None:
        return
    where = "on the pool"
    if pipeline:
        where = "in a pipeline"
        advice = _PIPELINE_METHODS.get(label, advice)
    raise CommandNotAllowed(f"{label} is not allowed {where}: {advice}")


def judge_on_connection(args: tuple[Any, ...]) -> bool:
    """For an exclusive connection: refuse a contract-breaking command; otherwise return
    whether the command leaves the connection changed (closed on return, not reused).

    Raises:
        CommandNotAllowed: the command breaks request/response.
    """
    label, breaking, stateful = _judge(args)
    if breaking is not None:
        raise CommandNotAllowed(f"{label} is not supported on a connection: {breaking}")
    return stateful is not None


# Commands that must not share a connection with other callers' commands (auto-pipelining):
# they block the connection (every command queued behind them would wait as long), end it,
# or act on a long-running script that commands queued behind it would wait for.
_OWN_CONNECTION = frozenset({
    "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
    "WAIT", "WAITAOF", "SHUTDOWN", "DEBUG",
})  # fmt: skip
_OWN_CONNECTION_SUBCOMMANDS = frozenset(
    {("CLIENT", "KILL"), ("SCRIPT", "KILL"), ("FUNCTION", "KILL")}
)
_MAYBE_BLOCKING = frozenset({"XREAD", "XREADGROUP"})


def needs_own_connection(args: tuple[Any, ...]) -> bool:
    """Whether a command allowed on the pool must still run on a connection of its own rather
    than be auto-pipelined with other callers' commands: the blocking commands (BLPOP...,
    WAIT, XREAD/XREADGROUP with BLOCK), SHUTDOWN, DEBUG, and CLIENT/SCRIPT/FUNCTION KILL."""
    words = name_of(args[0]).split()
    name = words[0] if words else ""
    if name in _OWN_CONNECTION:
        return True
    if name in _MAYBE_BLOCKING:
        for arg in args[1:]:
            word = name_of(arg) if isinstance(arg, str | bytes) else ""
            if word == "BLOCK":
                return True
            if word == "STREAMS":
                return False  # what follows are stream names and ids
        return False
    if name in ("CLIENT", "SCRIPT", "FUNCTION"):
        sub = words[1] if len(words) > 1 else (name_of(args[1]) if len(args) > 1 else "")
        return (name, sub) in _OWN_CONNECTION_SUBCOMMANDS
    return False


_SHAREABLE: dict[str, str] = {}  # command name as given -> upper-case, for shareable_name


def shareable_name(args: tuple[Any, ...]) -> str | None:
    """The command's upper-case name if its name alone shows it is allowed on the pool and may
    be auto-pipelined (a plain ``str`` name of one word, not stateful, contract-breaking, a
    container, blocking or connection-ending); else None, and the full checks
    (:func:`refuse_on_pool`, :func:`needs_own_connection`) decide.  Remembered per name: this
    runs for every command."""
    first = args[0] if args else None
    if type(first) is not str:
        return None
    name = _SHAREABLE.get(first)
    if name is not None:
        return name
    name = first.upper()
    if (
        " " in name
        or not name
        or name in _HARMLESS_SUBCOMMANDS
        or name in _STATEFUL
        or name in _BREAKING
        or name in _POOL_ONLY
        or name in _OWN_CONNECTION
        or name in _MAYBE_BLOCKING
        or name in ("FUNCTION",)
    ):
        return None
    if len(_SHAREABLE) < 4096:  # bounded: names come from code, but callers may vary them
        _SHAREABLE[first] = name
    return name
