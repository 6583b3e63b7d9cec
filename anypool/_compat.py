"""Every import of redis-py internals, in one place.

anypool reuses redis-py's public exceptions freely, but anything under ``redis._*`` or otherwise
not part of redis-py's documented API is imported here only, with a shim per supported major
version, so an upgrade of redis-py breaks (at most) this module.

Supported: redis-py 5.x, 6.x, 7.x and 8.x.
"""

from __future__ import annotations

import redis
from redis._parsers.base import BaseParser as _BaseParser
from redis.exceptions import RedisError, ResponseError

__all__ = ["REDIS_PY_VERSION", "server_error"]

REDIS_PY_VERSION: tuple[int, ...] = tuple(
    int(part) for part in redis.__version__.split(".")[:2] if part.isdigit()
)


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
