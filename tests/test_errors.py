"""The exception hierarchy: anypool's own base, and redis-py's classes for redis-py users."""

from __future__ import annotations

import pytest
import redis.exceptions as rex

import anypool
from anypool._compat import server_error


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (anypool.ConnectionError, rex.ConnectionError),
        (anypool.ConnectError, rex.ConnectionError),
        (anypool.ConnectTimeout, rex.TimeoutError),
        (anypool.ConnectionLost, rex.ConnectionError),
        (anypool.ConnectionClosed, rex.ConnectionError),
        (anypool.AuthenticationError, rex.AuthenticationError),
        (anypool.TimeoutError, rex.TimeoutError),
        (anypool.ProtocolError, rex.InvalidResponse),
        (anypool.InvalidArgument, rex.DataError),
        (anypool.InvalidArgument, TypeError),
        (anypool.ConfigError, ValueError),
        (anypool.ReplyDecodeError, ValueError),
        (anypool.PoolTimeout, rex.ConnectionError),
        (anypool.PoolTimeout, rex.TimeoutError),
        (anypool.PoolUnavailable, rex.ConnectionError),
    ],
)
def test_each_error_is_also_the_redis_py_error(ours: type, theirs: type) -> None:
    assert issubclass(ours, anypool.AnyPoolError)
    assert issubclass(ours, theirs)
    assert issubclass(ours, rex.RedisError)


def test_pool_errors_share_a_base() -> None:
    for cls in (anypool.PoolTimeout, anypool.PoolClosed, anypool.TooManyWaiters,
                anypool.PoolUnavailable):  # fmt: skip
        assert issubclass(cls, anypool.PoolError)


def test_response_error_is_redis_py_s() -> None:
    assert anypool.ResponseError is rex.ResponseError


def _moved_class() -> type:
    from redis._parsers.base import BaseParser

    return rex.MovedError if "MOVED" in BaseParser.EXCEPTION_CLASSES else rex.ResponseError


@pytest.mark.parametrize(
    ("message", "cls", "text"),
    [
        ("ERR unknown command 'FOO'", rex.ResponseError, "unknown command 'FOO'"),
        ("WRONGTYPE Operation against a key", rex.ResponseError,
         "WRONGTYPE Operation against a key"),
        ("NOSCRIPT No matching script", rex.NoScriptError, "No matching script"),
        ("WRONGPASS invalid username-password pair", rex.AuthenticationError,
         "invalid username-password pair"),
        ("NOPERM this user has no permissions", rex.NoPermissionError,
         "this user has no permissions"),
        ("EXECABORT Transaction discarded", rex.ExecAbortError, "Transaction discarded"),
        ("READONLY You can't write", rex.ReadOnlyError, "You can't write"),
        # redis-py's table decides, and it differs by version (redis-py 5 has no MOVED entry)
        ("MOVED 3999 127.0.0.1:6381", _moved_class(), None),
        ("MOVED garbage", rex.ResponseError, "MOVED garbage"),  # redis-py would raise here
    ],
)  # fmt: skip
def test_server_errors_match_redis_py(message: str, cls: type, text: str | None) -> None:
    error = server_error(message)
    assert type(error) is cls
    if text is not None:
        assert str(error) == text
    assert server_error(message.encode()).args == error.args
