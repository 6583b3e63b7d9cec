"""anypool's exception hierarchy.

Every anypool exception derives from :class:`AnyPoolError`, which itself derives from
``redis.exceptions.RedisError``; each leaf also derives from the matching ``redis.exceptions``
class, so code written for redis-py (``except redis.exceptions.ConnectionError``) keeps working.

The groups answer "whose fault, and what now?":

* :class:`ConnectionError` -- the connection could not be made or broke (the cause is chained);
* :class:`TimeoutError` -- a command took longer than its timeout (the connection is discarded);
* :class:`ProtocolError` -- the bytes from the server are not valid RESP (or too large);
* :class:`ConfigError` -- a configuration value is wrong (names the field, never a password);
* :class:`PoolError` -- the pool itself refused: closed, timed out, too many waiters, breaker open.

Errors the *server* sent (``WRONGTYPE``, ``NOSCRIPT``...) are redis-py's own
``ResponseError`` family, built by redis-py's parser table (see ``_compat.server_error``).
This module imports nothing from anypool.
"""

from __future__ import annotations

from typing import Any

import anyio
import redis.asyncio.sentinel as _async_sentinel
import redis.exceptions as _r
import redis.sentinel as _sentinel

ResponseError = _r.ResponseError

__all__ = [
    "AnyPoolError",
    "AuthenticationError",
    "ClusterError",
    "CommandNotAllowed",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionError",
    "ConnectionLost",
    "ConnectionRetired",
    "CrossSlotError",
    "InvalidArgument",
    "MessagesLost",
    "PoolClosed",
    "PoolError",
    "PoolExhausted",
    "PoolTimeout",
    "PoolUnavailable",
    "PrimaryNotFound",
    "ProtocolError",
    "ReplicaNotFound",
    "ReplyDecodeError",
    "ResponseError",
    "SlowConsumer",
    "TimeoutError",
    "TooManyWaiters",
]


class AnyPoolError(_r.RedisError):
    """Root of every exception anypool raises itself."""


# --- the connection ---------------------------------------------------------------------------


class ConnectionError(AnyPoolError, _r.ConnectionError):
    """The connection could not be established, or it broke.  The cause is chained."""


class MessagesLost(ConnectionError):
    """Pub/sub delivery was interrupted and has resumed (redis-py's PubSub API): messages
    published in the gap may be lost.  The subscription is already restored; the next call
    delivers what was published after the gap.

    Attributes:
        gap: the :class:`anypool.Reconnected` event (``gap_start``, ``gap_end``, ``error``).
    """

    def __init__(self, message: str, gap: Any) -> None:
        super().__init__(message)
        self.gap = gap


class SubscriptionLost(ConnectionError):
    """The server ended a subscription that anypool could not restore, so the subscription has
    ended (consumers get this after the messages buffered before it): a cluster node
    unsubscribed a sharded channel whose slot moved, on a pool that talks to that one node; or
    resubscribing after a reconnect was refused (an ACL changed).  Subscribe again once the
    cause is fixed; ``anypool.RedisCluster`` follows sharded channels across nodes itself.

    Attributes:
        kind: ``"channel"``, ``"pattern"`` or ``"shard"``.
        names: the channels or patterns the server would not keep.
    """

    def __init__(self, message: str, *, kind: str = "channel", names: Any = ()) -> None:
        super().__init__(message)
        self.kind = kind
        self.names = list(names)

    def __reduce__(self) -> Any:
        return (_subscription_lost, (str(self), self.kind, self.names))


def _subscription_lost(message: str, kind: str, names: Any) -> SubscriptionLost:
    return SubscriptionLost(message, kind=kind, names=names)


class ConnectError(ConnectionError):
    """Connecting failed: refused, unreachable, unknown host, or TLS handshake rejected."""


class ConnectTimeout(ConnectError, _r.TimeoutError):
    """Connecting (TCP, TLS and the Redis handshake) took longer than ``connect_timeout``."""


class ConnectionLost(ConnectionError):
    """The server closed the connection, or the network broke it, while it was in use."""


class ConnectionClosed(ConnectionError):
    """The connection was already closed by anypool (after an error, a cancellation or close)."""


class ConnectionRetired(ConnectionClosed):
    """Nothing was sent: the connection's server stopped serving what the pool is for (a
    failover demoted the primary).  Sending the command again is safe; a Sentinel pool does
    it once on its own."""


class AuthenticationError(ConnectionError, _r.AuthenticationError):
    """The server rejected the credentials (wrong password, unknown or disabled ACL user)."""


# --- Sentinel ---------------------------------------------------------------------------------


class PrimaryNotFound(
    ConnectError, _async_sentinel.MasterNotFoundError, _sentinel.MasterNotFoundError
):
    """No sentinel named a primary for the service that answered as one (``ROLE``).  The
    message names every sentinel asked and why it did not help (down, timed out, refused the
    credentials, does not know the service, named a node that is not primary).

    Also redis-py's ``MasterNotFoundError`` (asyncio's and the sync one).

    Attributes:
        attempts: ``(sentinel address, why)`` for every sentinel asked, in order.
    """

    def __init__(self, message: str, attempts: Any = ()) -> None:
        super().__init__(message)
        self.attempts = list(attempts)

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.attempts))


class ReplicaNotFound(
    ConnectError, _async_sentinel.SlaveNotFoundError, _sentinel.SlaveNotFoundError
):
    """No usable replica of the service: the sentinels list none that is up and linked to
    its primary, or none of those could be connected to.  The message says what was tried.

    Also redis-py's ``SlaveNotFoundError`` (asyncio's and the sync one).
    """


# --- the cluster ------------------------------------------------------------------------------


class ClusterError(AnyPoolError, _r.ClusterError):
    """A cluster command found no node to run it: its slot has no reachable owner, or the
    redirects and retries allowed ran out.  The message names the slot, the node and the
    redirects seen; the command was not sent again after anything that may have run it."""


class CrossSlotError(AnyPoolError, _r.ClusterCrossSlotError):
    """A command's keys are in different slots of a cluster (nothing was sent); the message
    names each key's slot."""


class TimeoutError(AnyPoolError, _r.TimeoutError):
    """A command did not complete within its timeout; its connection was closed, not reused."""


# --- the protocol -----------------------------------------------------------------------------


class ProtocolError(AnyPoolError, _r.InvalidResponse):
    """The server sent bytes that are not valid RESP, or a reply larger than allowed.

    Raised by the parser, which then stays failed: the connection is discarded.
    """


class ReplyDecodeError(AnyPoolError, ValueError):
    """A reply could not be decoded with the configured ``encoding``/``encoding_errors``."""


class SlowConsumer(AnyPoolError):
    """A subscription fell behind: its buffer was full under the ``error`` policy, or stayed
    full for ``block_timeout`` under ``block``.  Messages already buffered were delivered."""


class CommandNotAllowed(AnyPoolError, _r.DataError):
    """The command would change a shared connection's state; the message says what to use."""


class InvalidArgument(AnyPoolError, _r.DataError, TypeError):
    """A command argument has a type Redis cannot take (it names the position and the type)."""


# --- configuration ----------------------------------------------------------------------------


class ConfigError(AnyPoolError, ValueError):
    """A configuration value is invalid.

    Attributes:
        field: the name of the offending setting (``"port"``, ``"db"``, ``"url"``...).
        value: the offending value, with any password replaced by ``"***"``.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"invalid {field} {value!r}: {reason}")


# --- the pool ---------------------------------------------------------------------------------


class PoolError(AnyPoolError):
    """The pool refused the request."""


class PoolClosed(PoolError):
    """The pool was used before ``async with`` entered it, or after it closed."""


class PoolTimeout(PoolError, _r.ConnectionError, _r.TimeoutError):
    """No connection became available within the acquire timeout."""


class PoolExhausted(PoolError, anyio.WouldBlock):
    """``acquire_nowait()`` found no free slot (it never waits).  Also an ``anyio.WouldBlock``."""


class TooManyWaiters(PoolError):
    """``max_waiting`` tasks are already queued for a connection."""


class PoolUnavailable(PoolError, _r.ConnectionError):
    """The circuit breaker is open: Redis has been unreachable, so requests fail fast."""
