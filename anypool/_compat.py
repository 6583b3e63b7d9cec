"""Every import of redis-py internals, in one place.

anypool reuses redis-py's public exceptions freely, but anything under ``redis._*`` or otherwise
not part of redis-py's documented API is imported here only, with a shim per supported major
version, so an upgrade of redis-py breaks (at most) this module.

Supported: redis-py 5.x, 6.x, 7.x and 8.x.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis._parsers.base import BaseParser as _BaseParser
from redis._parsers.encoders import Encoder
from redis.asyncio.client import Pipeline as _RedisPipeline
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.commands.core import AsyncCoreCommands
from redis.exceptions import RedisError, ResponseError
from redis.lock import Lock as _RedisLock

from ._backoff import uniform

try:  # redis-py 8: the tables moved, and a selector picks one per (protocol, legacy_responses)
    from redis._parsers.response_callbacks import get_response_callbacks as _get_callbacks

    HAS_LEGACY_RESPONSES_OPTION = True

    def _select_callbacks(protocol: int | None, wire: int, legacy: bool) -> dict[str, Any]:
        # The selector takes what the user asked for; over a RESP2 wire redis-py's client
        # would have been asked for 2, whatever this one was asked for.
        asked = protocol if wire == 3 else 2
        return dict(_get_callbacks(user_protocol=asked, legacy_responses=legacy))

except ImportError:  # redis-py 5, 6, 7: one table per protocol, the legacy shapes only
    from redis._parsers.helpers import (  # type: ignore[attr-defined,unused-ignore]
        _RedisCallbacks,
        _RedisCallbacksRESP2,
        _RedisCallbacksRESP3,
    )

    HAS_LEGACY_RESPONSES_OPTION = False

    def _select_callbacks(protocol: int | None, wire: int, legacy: bool) -> dict[str, Any]:
        if not legacy:  # RedisConfig refuses it first
            raise ValueError(
                f"legacy_responses=False needs redis-py 8 or later; redis-py "
                f"{redis.__version__} is installed"
            )
        table = dict(_RedisCallbacks)
        table.update(_RedisCallbacksRESP3 if wire == 3 else _RedisCallbacksRESP2)
        return table


__all__ = [
    "EMPTY_RESPONSE",
    "LOCK_EXTEND_SCRIPT",
    "LOCK_REACQUIRE_SCRIPT",
    "LOCK_RELEASE_SCRIPT",
    "NEVER_DECODE",
    "REDIS_PY_VERSION",
    "REDIS_PY_VERSION_TEXT",
    "DEFAULT_WIRE_PROTOCOL",
    "HAS_LEGACY_RESPONSES_OPTION",
    "AsyncCoreCommands",
    "Encoder",
    "annotate_pipeline_error",
    "make_encoder",
    "response_callbacks",
    "server_error",
]

Callback = Callable[..., Any]

# redis-py's lock scripts (public class attributes), so anypool's lock interoperates with
# redis-py's locks on the same key.
LOCK_RELEASE_SCRIPT: str = _RedisLock.LUA_RELEASE_SCRIPT
LOCK_EXTEND_SCRIPT: str = _RedisLock.LUA_EXTEND_SCRIPT
LOCK_REACQUIRE_SCRIPT: str = _RedisLock.LUA_REACQUIRE_SCRIPT

REDIS_PY_VERSION: tuple[int, ...] = tuple(
    int(part) for part in redis.__version__.split(".")[:2] if part.isdigit()
)

REDIS_PY_VERSION_TEXT: str = redis.__version__

# HAS_LEGACY_RESPONSES_OPTION (above): whether the installed redis-py has ``legacy_responses=``
# (redis-py 8 and later).

DEFAULT_WIRE_PROTOCOL: int = 3 if HAS_LEGACY_RESPONSES_OPTION else 2
"""The RESP version the installed redis-py speaks when it is given no ``protocol``: redis-py 8
sends ``HELLO 3`` (and shapes RESP3 replies as RESP2 ones); redis-py 5-7 speak RESP2."""


def server_error(message: str | bytes) -> RedisError:
    """Build, without raising, the exception redis-py would build for an error reply.

    Using redis-py's own table keeps ``type(error)`` and ``str(error)`` identical to what
    redis-py users see (``NoScriptError``, ``AuthenticationError``, the ``ERR`` prefix stripped...)
    across redis-py versions, whose tables differ.

    Args:
        message: the error line the server sent, without the leading ``-`` or ``!``.

    Never raises: a message redis-py's classes cannot take becomes a plain ``ResponseError``.
    """
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    try:
        error: RedisError = _BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    except Exception:
        # redis-py's cluster error classes parse their text and raise on a malformed one
        # ("MOVED x"); a parser must return the error, not fail on it.
        return ResponseError(message)
    return error


def response_callbacks(
    protocol: int | None, wire: int, legacy_responses: bool = True
) -> dict[str, Callback]:
    """redis-py's reply callbacks, keyed by upper-case command name.

    These are the tables redis-py's own client picks for the same ``protocol=`` and
    ``legacy_responses=`` arguments, so replies have exactly the shapes redis-py users get.

    Args:
        protocol: what the user asked for: None (redis-py's default), 2 or 3.
        wire: the RESP version the connection actually speaks (2 after a fallback from a
            server without ``HELLO``).  The table always matches the wire: a RESP2 connection
            gets the table redis-py uses when given ``protocol=2`` and the same
            ``legacy_responses`` (its unified shapes when that is False, which do not depend
            on the protocol; its legacy RESP2 shapes otherwise).
        legacy_responses: redis-py 8's option; False selects its unified shapes.  Must be True
            on redis-py 5-7, which have only the legacy shapes.
    """
    table = _select_callbacks(protocol, wire, legacy_responses)
    return {name.upper(): callback for name, callback in table.items()}


def make_encoder(encoding: str, errors: str, decode_responses: bool) -> Encoder:
    """redis-py's argument/reply encoder (its helpers, such as Script, ask the client for one)."""
    return Encoder(encoding, errors, decode_responses)  # type: ignore[no-untyped-call]


def annotate_pipeline_error(error: Exception, number: int, command: Iterable[object]) -> None:
    """Rewrite ``error``'s message the way redis-py's pipelines do ("Command # 2 (...) of
    pipeline caused error: ..."), whose wording differs between redis-py versions."""
    _RedisPipeline.annotate_exception(None, error, number, command)  # type: ignore[arg-type]


def raise_pipeline_errors(
    queue: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], results: Sequence[Any],
    raise_on_error: bool,
) -> None:  # fmt: skip
    """Raise as redis-py's pipelines do, annotated with its position and command: the first
    error that is not a server's error reply (its ConnectionError family: LOADING, max
    clients...), whatever ``raise_on_error`` says; else, with ``raise_on_error``, the first
    error reply.  ``queue`` holds each command's (args, options)."""
    errors = [(i, r) for i, r in enumerate(results) if isinstance(r, Exception)]
    for i, error in errors:
        if not isinstance(error, ResponseError):
            annotate_pipeline_error(error, i + 1, queue[i][0])
            raise error
    if raise_on_error and errors:
        i, error = errors[0]
        annotate_pipeline_error(error, i + 1, queue[i][0])
        raise error


# --- redis-py's Retry objects (their parts are private attributes, stable since redis-py 4) ---


def retry_parts(retry: Any) -> tuple[Any, int, tuple[type[BaseException], ...]] | None:
    """The backoff, retry count (negative: forever) and error classes of a redis-py ``Retry``
    (``redis.retry.Retry`` or ``redis.asyncio.retry.Retry``), or None if ``retry`` is not one."""
    backoff = getattr(retry, "_backoff", None)
    retries = getattr(retry, "_retries", None)
    errors = getattr(retry, "_supported_errors", None)
    if (
        not callable(getattr(backoff, "compute", None))
        or not isinstance(retries, int)
        or not isinstance(errors, tuple)
        or not all(isinstance(e, type) and issubclass(e, BaseException) for e in errors)
    ):
        return None
    return backoff, retries, errors


def default_retry() -> Any:
    """The Retry redis-py's client uses when given ``retry_on_error``/``retry_on_timeout``
    without ``retry``: redis-py 6+: 3 retries, exponential backoff with jitter (1 s base,
    10 s cap); redis-py 5: one retry at once."""
    from redis.asyncio.retry import Retry

    try:
        from redis.backoff import ExponentialWithJitterBackoff
    except ImportError:  # redis-py 5
        from redis.backoff import NoBackoff

        return Retry(NoBackoff(), 1)

    class _OwnStreamBackoff(ExponentialWithJitterBackoff):
        """redis-py's backoff (equal to it, same formula), drawing its jitter from anypool's
        own stream: redis-py's draws from the global ``random``, which belongs to the
        application."""

        def __init__(self, base: float, cap: float) -> None:
            super().__init__(base=base, cap=cap)
            self._own = (base, cap)

        def compute(self, failures: int) -> float:
            base, cap = self._own
            return float(min(cap, uniform() * base * 2**failures))

    return Retry(_OwnStreamBackoff(base=1, cap=10), 3)


def _closure(function: Any) -> dict[str, Any]:
    cells = getattr(function, "__closure__", None) or ()
    return {
        name: cell.cell_contents
        for name, cell in zip(function.__code__.co_freevars, cells, strict=True)
    }


def _warned_args(decorated: Any) -> list[str] | None:
    """The argument names redis-py's ``experimental_args``/``deprecated_args`` decorator
    watches on ``decorated`` (None: not such a decorator, or it watches every argument)."""
    cells = _closure(decorated)
    for value in (cells, *(_closure(v) for v in cells.values() if inspect.isfunction(v))):
        names = value.get("args_to_warn")
        if isinstance(names, list) and names and "*" not in names:
            return [str(n) for n in names]
    return None


def lean_command_methods(base: type) -> dict[str, Callable[..., Any]]:
    """Faster stand-ins for redis-py command methods that a decorator wraps only to warn when
    given certain arguments (redis-py 8's ``set``: ``@experimental_args``, which inspects every
    call's arguments, ~2 us a call).  Each stand-in calls the undecorated method when none of
    the watched arguments is given, and the decorated one (which warns, as in redis-py)
    otherwise: same arguments, same results, same warnings."""
    methods: dict[str, Callable[..., Any]] = {}
    for name in dir(base):
        decorated = getattr(base, name, None)
        undecorated = getattr(decorated, "__wrapped__", None)
        if not inspect.isfunction(undecorated) or not callable(decorated):
            continue
        watched = _warned_args(decorated)
        if watched is None:
            continue
        code = undecorated.__code__
        positional = code.co_varnames[: code.co_argcount]
        positions = [positional.index(n) for n in watched if n in positional]
        first = min(positions) if positions else len(positional)  # counting self

        def method(
            self: Any, *args: Any, _decorated: Any = decorated, _plain: Any = undecorated,
            _first: int = first, _watched: frozenset[str] = frozenset(watched), **kwargs: Any,
        ) -> Any:  # fmt: skip
            if len(args) >= _first or not _watched.isdisjoint(kwargs):
                return _decorated(self, *args, **kwargs)
            return _plain(self, *args, **kwargs)

        methods[name] = functools.wraps(decorated)(method)
    return methods


# --- the cluster client's routing tables (redis-py's RedisCluster class attributes) -----------


def cluster_tables() -> tuple[dict[str, str], dict[str, Callable[..., Any]]]:
    """redis-py's cluster routing for keyless commands, upper-case names: where each goes
    (``"primaries"``, ``"all"``, ``"replicas"``, ``"random"``, ``"default-node"``, or
    ``"slot-id"``) and how the replies of a command sent to several nodes are merged
    (``callback(command, {node_name: reply})``)."""
    from redis.cluster import AbstractRedisCluster

    flags = {str(k).upper(): str(v) for k, v in AbstractRedisCluster.COMMAND_FLAGS.items()}
    merges = {str(k).upper(): v for k, v in AbstractRedisCluster.RESULT_CALLBACKS.items()}
    return flags, merges
