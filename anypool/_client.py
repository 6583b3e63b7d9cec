"""RedisPool: redis-py's command API over anypool's pool of cancellation-safe connections.

Every command method (``get``, ``hset``, ``zrange``...) comes from redis-py's command mixins,
which build the arguments and call ``self.execute_command``.  Here that borrows a connection
from the pool, runs the command, returns the connection, and applies redis-py's reply callback
chosen as redis-py chooses it (from ``protocol=``, ``legacy_responses=`` and the RESP version the
connection speaks), so results have exactly the shapes redis-py returns for the same arguments.

Commands that change a connection's state (SELECT, AUTH, WATCH, SUBSCRIBE...) would change a
random pooled connection; they are refused on the pool with a message saying what to use
instead.  On an exclusive connection from :meth:`RedisPool.acquire` they are allowed where they
make sense, and a connection left in a changed state is closed on return, not reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any, Literal, Self, TypeVar, overload

import anyio
from anyio import AsyncContextManagerMixin
from redis.exceptions import (
    LockError,
    LockNotOwnedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    WatchError,
)

from . import _pubsub, _sentinel
from ._compat import (
    EMPTY_RESPONSE,
    LOCK_EXTEND_SCRIPT,
    LOCK_REACQUIRE_SCRIPT,
    LOCK_RELEASE_SCRIPT,
    NEVER_DECODE,
    AsyncCoreCommands,
    Encoder,
    annotate_pipeline_error,
    lean_command_methods,
    make_encoder,
    raise_pipeline_errors,
    response_callbacks,
)
from ._config import PoolConfig, RedisConfig, split_url_over
from ._connection import Connection, ConnectionFactory
from ._errors import (
    CommandNotAllowed,
    ConfigError,
    ConnectionClosed,
    ConnectionRetired,
    PoolClosed,
    ProtocolError,
)
from ._keywords import connection_kwargs, sort_options
from ._multiplex import Multiplexer
from ._owner import Owner
from ._pool import DEFAULT, Lease, Pool, _Default
from ._retry import RetryRule, Sent
from ._rules import (
    judge_on_connection,
    name_of,
    needs_own_connection,
    refuse_on_pool,
    shareable_name,
    wire_args,
)
from ._stats import Health, PoolStatistics

__all__ = ["Lock", "Pipeline", "RedisConnection", "RedisPool", "Script"]

T = TypeVar("T")
logger = logging.getLogger("anypool.lock")


def _pop_options(options: dict[str, Any]) -> None:
    options.pop(NEVER_DECODE, None)
    options.pop(EMPTY_RESPONSE, None)
    options.pop("keys", None)


def _watched(value: Any, raised: list[BaseException]) -> Any:
    """``value``, and if it is a callable option (``score_cast_func``...), one that records in
    ``raised`` what it raises.  ``float``, redis-py's default cast, is left as it is: redis-py
    treats it specially, and its failure means a reply of the wrong shape."""
    if not callable(value) or value is float:
        return value

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return value(*args, **kwargs)
        except BaseException as exc:
            raised.append(exc)
            raise

    return call


_DECODED, _RAW = (True,), (False,)  # one command's decode flags, made once
# autopipeline_statistics()'s keys (all zero with autopipeline=False)
_AUTOPIPELINE_STATISTICS = (
    "requests", "writes", "largest_write", "abandoned", "withdrawn", "lanes_opened",
    "lanes_failed", "lanes_returned", "waited_for_room", "lanes", "parked", "in_flight",
    "queued", "waiting_for_room",
)  # fmt: skip

AUTOPIPELINE_DEFAULT = True
"""``autopipeline``'s default (the test suite's ``ANYPOOL_TEST_AUTOPIPELINE=0`` turns it off to
run every test over exclusive connections too)."""


def _unreadable(name: str, reply: Any, exc: Exception) -> ProtocolError:
    """redis-py's callback could not read the reply: the server sent a valid reply of a shape
    this command never has.  The connection is still in step.  The reply is described, not
    shown: it is the caller's data."""
    size = f" of {len(reply)} items" if isinstance(reply, list | tuple | dict) else ""
    return ProtocolError(
        f"{name}'s reply could not be read ({type(exc).__name__}): the server sent a reply of "
        f"an unexpected shape (a {type(reply).__name__}{size})"
    )


def _multiplexer(options: dict[str, Any], pool_config: PoolConfig) -> dict[str, Any] | None:
    """Take the auto-pipelining options out of ``options``: the Multiplexer's settings, or
    None when it is turned off.

    Raises:
        ConfigError: a value of the wrong type or range.
    """
    enabled = options.pop("autopipeline", AUTOPIPELINE_DEFAULT)
    connections = options.pop("autopipeline_connections", 1)
    max_in_flight = options.pop("autopipeline_max_in_flight", 1000)
    if not isinstance(enabled, bool):
        raise ConfigError("autopipeline", enabled, "must be True or False")
    for name, value in (
        ("autopipeline_connections", connections), ("autopipeline_max_in_flight", max_in_flight)
    ):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, value, "must be an integer of at least 1")
    if connections > pool_config.max_size:
        raise ConfigError(
            "autopipeline_connections", connections,
            f"cannot exceed max_size ({pool_config.max_size}): each shared connection is one "
            "of the pool's connections",
        )  # fmt: skip
    if not enabled:
        return None
    return {
        "connections": connections,
        "max_in_flight": max_in_flight,
        "check_every": pool_config.health_check_interval or 30.0,
    }


class _Commands(AsyncCoreCommands):
    """redis-py's command methods, on top of one ``execute_command`` and the reply callbacks."""

    _is_async_client: Literal[True] = True  # redis-py's typing overloads pick async returns
    _event_dispatcher: Any = None  # required by redis-py's command protocol; never used here
    _config: RedisConfig
    _callbacks: dict[int, dict[str, Callable[..., Any]]]

    def get_encoder(self) -> Encoder:
        """redis-py's encoder for this client's ``encoding`` (used by redis-py's helpers)."""
        config = self._config
        return make_encoder(config.encoding, config.encoding_errors, config.decode_responses)

    def get_connection_kwargs(self) -> dict[str, Any]:
        """redis-py's ``get_connection_kwargs()``: the connection keywords redis-py's
        ``Redis()`` would hold for this client's config (``decode_responses``, ``host``...;
        read by redis-py's ``slowlog_get``).  A new dict each call: changing it changes
        nothing (make a new pool with other options instead)."""
        return connection_kwargs(self._config)

    def _shape(self, protocol: int, name: str, reply: Any, options: dict[str, Any]) -> Any:
        """redis-py's reply callback for ``name``, applied synchronously (none of redis-py's
        is a coroutine function; a test checks it)."""
        callback = self._callbacks[protocol].get(name)
        if callback is None or isinstance(reply, Exception):
            return reply
        if options:
            _pop_options(options)
        if not options:
            try:
                return callback(reply)
            except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
                raise _unreadable(name, reply, exc) from exc
        raised: list[BaseException] = []  # what the caller's callables (score_cast_func) raised
        options = {key: _watched(value, raised) for key, value in options.items()}
        try:
            return callback(reply, **options)
        except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
            if any(exc is error for error in raised):
                raise  # the caller's own callable failed: its exception, as in redis-py
            raise _unreadable(name, reply, exc) from exc

    def register_script(self, script: str | bytes) -> Script:  # type: ignore[override]
        """A :class:`Script` bound to this client: EVALSHA, loading the script on NOSCRIPT."""
        return Script(self, script)

    async def _run(
        self, connection: Connection, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        name = name_of(args[0])
        try:
            reply = await connection.execute(*wire_args(args), decode=NEVER_DECODE not in options)
        except ResponseError as exc:
            if isinstance(exc, ReadOnlyError):
                self._answered_readonly(connection)
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise
        return self._shape(connection.protocol, name, reply, options)

    def _answered_readonly(self, connection: Connection) -> None:
        """``connection``'s server answered READONLY (a Sentinel pool learns from it that its
        primary was demoted)."""


# redis-py 8's ``set`` inspects every call's arguments to warn about experimental ones: skip that
# when none is given (same results and warnings; see lean_command_methods).
for _name, _method in lean_command_methods(AsyncCoreCommands).items():
    setattr(_Commands, _name, _method)


class RedisPool(_Commands, _pubsub.PubSubMethods, AsyncContextManagerMixin):  # type: ignore[misc]  # as redis-py's
    """A pool of Redis connections with redis-py's whole command API, on trio and asyncio.

    ::

        async with anypool.RedisPool.from_url("redis://localhost:6379/0", max_size=16) as redis:
            await redis.set("greeting", "hello", ex=60)
            print(await redis.get("greeting"))

    Each command borrows a connection for its own duration.  A command cancelled or timed out
    mid-way closes its connection (its reply is still owed), so no other caller ever receives
    its reply, and a cancelled blocking command (BLPOP...) consumes nothing.

    Args:
        config: how to connect (default: localhost:6379, db 0).
        pool_config: how to pool (see :class:`PoolConfig`).
        sentinel: a pool of the primary (or replicas) of a service watched by Sentinel, which
            :meth:`from_sentinel` and a ``redis+sentinel://`` URL make; ``config``'s host and
            port are then not used (see docs/sentinel.md).
        **options: any :class:`RedisConfig` or :class:`PoolConfig` field, overriding the two
            records (``max_size=16``, ``decode_responses=True``, ``protocol=2``...), and
            redis-py's ``Redis()`` keywords with redis-py's meaning (``max_connections``,
            ``socket_connect_timeout``...; the table is in docs/configuration.md).  Retries
            are off unless asked for: ``retry=`` (a redis-py ``Retry``), ``retry_on_error=``,
            ``retry_on_timeout=`` retry a command on those errors only when it was provably
            never sent, and also when it may have run with ``retry_may_have_run=True``.

    Raises:
        ConfigError: an option is unknown (the error names the closest one), invalid, or
            asks for something anypool does not do (the error says what to use instead).
    """

    def __init__(
        self,
        config: RedisConfig | None = None,
        *,
        pool_config: PoolConfig | None = None,
        sentinel: _sentinel.SentinelSettings | None = None,
        **options: Any,
    ) -> None:
        connection_options, pool_options, client_options = sort_options(options)
        config = config or RedisConfig()
        if connection_options:
            config = config.replace(**connection_options)
        pool_config = (pool_config or PoolConfig()).replace(**pool_options)
        self._mux = _multiplexer(client_options, pool_config)  # before the retry options
        if pool_config.name is None:
            where = (
                config.address
                if sentinel is None
                else f"sentinel {sentinel.service_name!r} {sentinel.role}"
            )
            pool_config = pool_config.replace(name=f"redis {where}/{config.db}")
        self._retry = RetryRule.from_options(**client_options)
        self._config = config
        self._sentinel: _sentinel.SentinelConnectionFactory | None = None
        self._replica: RedisPool | None = None
        if sentinel is not None and sentinel.role == "primary":
            # The read pool over the replicas (``redis.replica``): connections on first use.
            self._replica = type(self)(
                config,
                pool_config=pool_config.replace(name=f"{pool_config.name} replicas", min_size=0),
                sentinel=dataclasses.replace(sentinel, role="replica"),
                **client_options,
            )
        if sentinel is not None:
            self._factory: ConnectionFactory = _sentinel.SentinelConnectionFactory(config, sentinel)
            self._sentinel = self._factory
        else:
            self._factory = ConnectionFactory(config)
        self._pool: Pool[Connection] = Pool(self._factory, pool_config)
        self._shared: Multiplexer | None = None
        if self._mux is not None:
            self._shared = Multiplexer(self._pool, self._factory, **self._mux)
        self._callbacks = {
            wire: response_callbacks(config.protocol, wire, config.legacy_responses)
            for wire in (2, 3)
        }
        self._pubsub: _pubsub.Hub | None = None
        self._life = "new"  # "open" inside `async with` (or open()), then "closed"
        self._owner = Owner(pool_config.name or "RedisPool", lambda: self)  # open()/aclose()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisPool:
        """Build a pool from a ``redis://``, ``rediss://`` or ``unix://`` URL.

        As redis-py's ``from_url``: what the URL says wins over the keyword ``options``
        (its scheme decides TLS; its host, port, database, user info and query options win
        over the same settings given as keywords, whatever name they use).  Keywords fill in
        what the URL leaves out.  Pool options in the URL (``max_connections``,
        ``health_check_interval``...) configure the pool.

        Raises:
            ConfigError: as :class:`RedisPool`, or the URL or an option in it is invalid (no
                part of a password is shown).
        """
        pool_config = options.pop("pool_config", None)  # RedisPool's own record, not a keyword
        if _sentinel.is_sentinel_url(url):
            return cls._from_sentinel_url(url, pool_config, options)
        redis_options, pool_options, client_options = sort_options(options)
        config, url_options = split_url_over(url, redis_options)
        merged = {**pool_options, **client_options, **url_options}
        return cls(config, pool_config=pool_config, **merged)

    @classmethod
    def _from_sentinel_url(
        cls, url: str, pool_config: PoolConfig | None, options: dict[str, Any]
    ) -> RedisPool:
        sentinel_options: dict[str, Any] = {
            name: options.pop(name)
            for name in ("role", "sentinel_username", "sentinel_password", "sentinel_options")
            if name in options
        }
        redis_options, pool_options, client_options = sort_options(options)
        sentinels, service, url_sentinel, config, url_options = _sentinel.split_sentinel_url(
            url, redis_options
        )
        sentinel_options.update(url_sentinel)  # what the URL says wins, as for the rest
        settings = _sentinel.settings(sentinels, service, config, **sentinel_options)
        merged = {**pool_options, **client_options, **url_options}
        return cls(config, pool_config=pool_config, sentinel=settings, **merged)

    @classmethod
    def from_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int] | str],
        service_name: str,
        role: str = "primary",
        *,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        sentinel_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RedisPool:
        """A pool of the primary (``role="primary"``) or of the healthy replicas
        (``role="replica"``) of ``service_name``, wherever the sentinels say they are, that
        follows failovers on its own.

        ::

            async with anypool.RedisPool.from_sentinel(
                [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)], "mymaster",
                password="data-node-secret", sentinel_password="sentinel-secret",
            ) as redis:
                await redis.set("k", "v")

        The same as a URL: ``redis+sentinel://:data-node-secret@10.0.0.1,10.0.0.2,10.0.0.3/
        mymaster?sentinel_password=sentinel-secret`` (:meth:`from_url`).

        Args:
            sentinels: ``(host, port)`` of each sentinel (or ``"host:port"``; port 26379 if
                left out), asked in turn, the last that answered first.
            service_name: the name the sentinels monitor the primary under.
            role: ``"primary"`` (reads and writes; redis-py's ``"master"`` too) or
                ``"replica"`` (reads spread over the replicas that are up and linked to the
                primary; the primary when there is none; redis-py's ``"slave"`` too).
            sentinel_username, sentinel_password: the sentinels' credentials (the data
                nodes' are ``username``/``password`` among ``options``: they are not sent to
                the sentinels, nor these to the data nodes).
            sentinel_options: any other :class:`RedisConfig` field for the connections to
                the sentinels (TLS files, timeouts...).  By default they use the data nodes'
                TLS settings, keepalive and client name, and allow 2 s (or the data nodes'
                shorter timeouts) to connect and to answer.
            **options: as :class:`RedisPool` (for the data nodes and the pool).

        Opening does no I/O.  The first connection asks the sentinels; each new connection
        is checked with ``ROLE``.  What a failover does is in docs/sentinel.md.

        Raises:
            ConfigError: an option is invalid.
        """
        pool_config = options.pop("pool_config", None)
        config = options.pop("config", None)
        redis_options, pool_options, client_options = sort_options(options)
        config = (config or RedisConfig()).replace(**redis_options)
        settings = _sentinel.settings(
            sentinels, service_name, config, role=role, sentinel_username=sentinel_username,
            sentinel_password=sentinel_password, sentinel_options=sentinel_options,
        )  # fmt: skip
        return cls(
            config, pool_config=pool_config, sentinel=settings, **pool_options, **client_options
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> RedisPool:
        """Build a pool from ``REDIS_URL``, ``REDIS_SOCKET_TIMEOUT``, ``REDIS_MAX_CONNECTIONS``
        and ``REDIS_HEALTH_CHECK_INTERVAL``; keyword ``options`` override them."""
        env = os.environ if environ is None else environ
        redis_fields = set(RedisConfig.__dataclass_fields__)
        config = RedisConfig.from_env(
            env, **{k: v for k, v in options.items() if k in redis_fields}
        )
        pool_config = PoolConfig.from_env(env)
        return cls(
            config,
            pool_config=pool_config,
            **{k: v for k, v in options.items() if k not in redis_fields},
        )

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[RedisPool]:
        self._life = "open"
        try:
            async with self._pool:
                shared = self._shared
                if shared is not None:
                    await self._pool.start_task(shared.run_upkeep, name="anypool autopipeline")
                if self._sentinel is not None:
                    await self._pool.start_task(
                        self._sentinel.run, self._node_left, self._pool.config.reconnect_backoff,
                        name="anypool sentinel watcher",
                    )  # fmt: skip
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        if self._replica is not None:
                            await stack.enter_async_context(self._replica)
                        yield self
                finally:
                    # First of all: every subscription ends with PoolClosed, its task stops.
                    if self._pubsub is not None:
                        self._pubsub.close()
                    if shared is not None:
                        await shared.aclose()  # idle shared connections back at once
        finally:
            self._life = "closed"

    async def open(self) -> None:
        """Open the pool without an ``async with`` block; close it with :meth:`aclose`.

        For code that cannot open and close in one task: a pytest-asyncio fixture, a
        framework's startup and shutdown hooks.  ``async with`` stays the recommended way.
        The pool's task group then lives in an owner task that anypool starts on the running
        event loop (asyncio, uvloop; trio: a system task).  A failure of a background task (a
        listener past its restart budget, a bug in maintenance) closes the pool, is raised
        by :meth:`aclose`, and makes every later call raise :class:`PoolClosed` naming it.
        If the event loop ends before :meth:`aclose`, the pool is closed as the loop cancels
        its tasks, and a warning is logged on the ``anypool.pool`` logger.

        Opening does no I/O: connections are made on first use, and ``min_size`` of them in
        the background (``await redis.pool.wait(timeout=5)`` fails fast if Redis is down).
        Calling it again while open does nothing.

        Raises:
            RuntimeError: the pool was closed (a pool opens once: make a new one), is open in
                an ``async with`` block, or was opened in another event loop.

        Cancellation: a task cancelled during ``open()`` closes the pool again before the
        cancellation propagates; the pool is then closed.
        """
        if self._life != "new" and not self._owner.used:
            raise RuntimeError(
                f"{self._pool.name} was already opened by `async with` (it closes when the "
                f"block ends), or closed; a pool opens once: make a new one to open again"
            )
        await self._owner.open()

    async def aclose(self) -> None:
        """Close a pool opened with :meth:`open`, as leaving ``async with`` does: end every
        subscription with :class:`PoolClosed`, wake waiters with :class:`PoolClosed`, wait up
        to ``close_timeout`` for connections in use, close every connection.

        Does nothing if the pool was never opened or is closed already; a second call made
        while the first runs waits for it.  May be called from any task of the event loop
        that opened the pool.  Commands other tasks start meanwhile fail with
        :class:`PoolClosed`; commands in flight get up to ``close_timeout`` to finish.
        Called from a task the pool runs (a listener's handler), which the close must wait
        for, it begins the close and returns at once, raising nothing; that task is then
        cancelled.

        Raises:
            BaseExceptionGroup: a background task failed (as ``async with`` would raise it;
                raised once, by the first ``aclose()`` after the failure).
            RuntimeError: the pool is open in an ``async with`` block (leave the block
                instead), or was opened in another event loop.

        Cancellation: shielded, like leaving ``async with``; the cancellation takes effect
        once the pool is closed (bounded by ``close_timeout``).
        """
        if not self._owner.used:
            if self._life == "open":
                raise RuntimeError(
                    f"{self._pool.name} is open in an `async with` block: it closes when the "
                    f"block ends (aclose() closes pools opened with open())"
                )
            return
        await self._owner.close()

    async def _node_left(self, address: tuple[str, int], reason: str) -> None:
        """A node stopped serving this Sentinel pool's role (a failover demoted the primary, a
        replica went down): close idle connections now and retire leased ones on return,
        stop queueing on shared connections to it, and move subscriptions away from it."""
        try:
            self._pool.probe_now()  # the breaker and health describe the service, not a node
            await self._pool.reset()
        except PoolClosed:
            return  # closing: every connection is being closed anyway
        if self._shared is not None:
            await self._shared.upkeep()
        if self._pubsub is not None:
            await self._pubsub.move_from(address, reason)

    @property
    def replica(self) -> RedisPool:
        """A Sentinel pool's read pool: the same command API on the service's replicas that
        are up and linked to the primary (each new connection is checked with ``ROLE``),
        spread across them; on the primary while there is none.  Opened and closed with this
        pool; its connections are made on first use.  ::

            await redis.set("k", "v")           # the primary
            value = await redis.replica.get("k")  # a replica: may not have "k" yet

        Consistency: replication is asynchronous.  A read on a replica may miss writes the
        primary acknowledged a moment ago (``WAIT`` on the primary first for read-your-
        writes), and after a failover a replica may serve data the new primary lost.
        Writes sent to it fail with ``ReadOnlyError``.

        Raises:
            RuntimeError: this pool is not a Sentinel pool of the primary.
        """
        if self._replica is None:
            raise RuntimeError(
                f"{self._pool.name} has no replica pool: only a Sentinel pool of the primary "
                "has one (from_sentinel(..., role='primary'), or a redis+sentinel:// URL)"
            )
        return self._replica

    async def sentinel_views(self) -> dict[str, str]:
        """Ask every sentinel of a Sentinel pool where the primary is now:
        ``{"host:port" of the sentinel: "host:port" of the primary it names}``, or why it
        could not answer (down, timed out, does not know the service).  They may disagree
        for a moment during a failover.

        Raises:
            RuntimeError: this pool is not managed by Sentinel.
        """
        if self._sentinel is None:
            raise RuntimeError(f"{self._pool.name} is not a Sentinel pool (see from_sentinel)")
        return await self._sentinel.discovery.views()

    def sentinel_statistics(self) -> dict[str, Any]:
        """A Sentinel pool's view (:meth:`from_sentinel`, ``redis+sentinel://``): ``service``,
        ``role``, ``primary`` (``"host:port"`` now, None before the first lookup),
        ``replicas`` used (role "replica"), ``sentinels`` (in the order they are asked), and
        counters: ``switches`` (primary changes followed), ``announcements`` (failover
        announcements acted on: a promotion begun, ``+promoted-slave``, ``+switch-master``),
        ``wrong_role`` (new connections whose ``ROLE`` was not
        the one asked for), ``readonly`` (``READONLY`` replies), ``primary_lookups``,
        ``replica_lookups``, ``sentinel_failures`` (a sentinel that could not answer a
        lookup), ``watch_failures`` (the listening connection to a sentinel failed).

        Raises:
            RuntimeError: this pool is not managed by Sentinel.
        """
        if self._sentinel is None:
            raise RuntimeError(f"{self._pool.name} is not a Sentinel pool (see from_sentinel)")
        return self._sentinel.statistics()

    def _answered_readonly(self, connection: Connection) -> None:
        if self._sentinel is not None:
            self._sentinel.note_readonly(connection)

    # --- commands -----------------------------------------------------------------------------

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command on a pooled connection and return its parsed reply.

        With ``retry=``, a failure on the Retry's errors is retried (after its backoff) when the
        command was provably never sent, or with ``retry_may_have_run=True`` in any case.

        Raises:
            CommandNotAllowed: a command that would change a pooled connection's state.
            redis.exceptions.ResponseError: the server's error reply.
            ConnectionError, TimeoutError, PoolTimeout...: see the pool and the connection
                (the last attempt's error, when retries ran out).

        Cancellation: the connection is closed if the reply was still owed; the pool slot is
        always returned; a cancelled retry sleep ends the call.
        """
        # A Sentinel pool sends a command once more when its connection was retired before
        # it was sent (its server is a primary a failover demoted): _run_shared, _attempt and
        # the end of this method.  The others pay nothing for it (no extra call layer).
        shared = self._shared
        if shared is not None:
            name = shareable_name(args)  # the fast path: decided by the name alone
            if name is None:
                refuse_on_pool(args)
                if not needs_own_connection(args):
                    args, name = wire_args(args), name_of(args[0])
            if name is not None:
                if self._retry is not None:
                    return await self._retry.call(
                        lambda sent: self._run_shared(name, args, options, sent)
                    )
                return await self._run_shared(name, args, options, None)
        else:
            refuse_on_pool(args)
        if self._retry is not None:
            resend = self._sentinel is not None
            return await self._retry.call(
                lambda sent: self._attempt(args, options, sent, resend=resend)
            )
        pool = self._pool
        lease = await pool.lease()
        try:
            return await self._run(lease.resource, args, options)
        except ConnectionRetired:
            if self._sentinel is None:
                raise
        finally:
            await pool.release(lease)
        # Not sent: once more, on a connection to where the primary is now.
        return await self._attempt(args, options, Sent(), resend=False)

    async def _run_shared(
        self, name: str, args: tuple[Any, ...], options: dict[str, Any], sent: Sent | None
    ) -> Any:
        """One command (``args``, as sent) auto-pipelined on a shared connection (see
        _multiplex.py)."""
        assert self._shared is not None
        decode = _RAW if NEVER_DECODE in options else _DECODED
        try:
            replies, connection = await self._shared.execute((args,), decode, sent)
        except ConnectionRetired:
            if self._sentinel is None:
                raise
            # Not sent (a Sentinel pool; see execute_command): once more, where the primary is.
            replies, connection = await self._shared.execute((args,), decode, sent)
        reply = replies[0]
        if isinstance(reply, Exception):
            if isinstance(reply, ReadOnlyError):
                self._answered_readonly(connection)
            if isinstance(reply, ResponseError) and EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise reply
        if sent is not None:
            options = dict(options)  # a retry would need them as they were
        return self._shape(connection.protocol, name, reply, options)

    def autopipeline_statistics(self) -> dict[str, int]:
        """Counters of auto-pipelining (see docs/performance.md): requests, writes and the
        most requests in one write, requests abandoned by cancelled callers (their replies read
        and discarded) or withdrawn before they were sent, shared connections opened, failed
        and returned to the pool, callers that waited for room; and, now, the shared
        connections, requests in flight and queued, and callers waiting.  All zero when
        ``autopipeline=False``."""
        if self._shared is None:
            return dict.fromkeys(_AUTOPIPELINE_STATISTICS, 0)
        return self._shared.statistics()

    async def _attempt(
        self, args: tuple[Any, ...], options: dict[str, Any], sent: Sent, *, resend: bool
    ) -> Any:
        """One try of a command on a connection of its own (under ``retry=``, or a Sentinel
        pool's second send); ``sent`` tells whether its write began.  With ``resend``, a
        connection retired before the command was sent is followed by one more try."""
        pool = self._pool
        lease = await pool.lease()
        try:
            connection = lease.resource
            writes = connection.writes
            try:
                return await self._run(connection, args, dict(options))
            except ConnectionRetired:
                if not resend:
                    raise
            finally:
                sent.value = connection.writes != writes
        finally:
            await pool.release(lease)
        return await self._attempt(args, options, sent, resend=False)  # see execute_command

    async def execute_command_once(
        self, args: tuple[Any, ...], options: dict[str, Any], sent: Sent, *, asking: bool = False
    ) -> Any:
        """One attempt of a command, whatever ``retry=`` says, recording in ``sent`` whether
        its write began (then it may have run): what a cluster client needs to decide, alone,
        whether a failed command may go to another node.  With ``asking``, ``ASKING`` goes just
        before it in the same write on the same connection (the one-time permission an ``ASK``
        redirect asks for; no other caller's command can come between them).

        Raises and cancellation: as :meth:`execute_command` with no retries.
        """
        refuse_on_pool(args)
        args = wire_args(args)
        name = name_of(args[0])
        commands: tuple[tuple[Any, ...], ...] = ((b"ASKING",), args) if asking else (args,)
        shared = self._shared
        if shared is not None and not needs_own_connection(args):
            decodes = (True, NEVER_DECODE not in options)
            replies, connection = await shared.execute(commands, decodes[-len(commands) :], sent)
            protocol = connection.protocol
        else:
            lease = await self._pool.lease()
            try:
                connection = lease.resource
                writes = connection.writes
                try:
                    replies = await connection.execute_many(
                        commands, decode=NEVER_DECODE not in options
                    )
                finally:
                    sent.value = connection.writes != writes
                protocol = connection.protocol
            finally:
                await self._pool.release(lease)
        reply = replies[-1]
        if isinstance(reply, Exception):
            if isinstance(reply, ResponseError) and EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise reply
        return self._shape(protocol, name, reply, dict(options))

    async def execute_many_once(
        self, queue: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], sent: Sent
    ) -> list[Any]:
        """Several commands in one write on one connection (not a transaction), their parsed
        replies in order with error replies in their places; one attempt, recording in
        ``sent`` whether the write began.  What a cluster pipeline sends to each node.

        Raises and cancellation: as a pipeline's ``execute(raise_on_error=False)``.
        """
        for args, _ in queue:
            refuse_on_pool(args, pipeline=True)
        commands = [wire_args(args) for args, _ in queue]
        decode = [NEVER_DECODE not in options for _, options in queue]
        lease = await self._pool.lease()
        try:
            connection = lease.resource
            writes = connection.writes
            try:
                replies = await connection.execute_many(commands, decode=decode)
            finally:
                sent.value = connection.writes != writes
            protocol = connection.protocol
        finally:
            await self._pool.release(lease)
        results = []
        for (args, options), reply in zip(queue, replies, strict=True):
            if isinstance(reply, ResponseError) and EMPTY_RESPONSE in options:
                reply = options[EMPTY_RESPONSE]
            results.append(self._shape(protocol, name_of(args[0]), reply, dict(options)))
        return results

    def acquire(self, *, timeout: float | _Default | None = DEFAULT) -> _ExclusiveAcquisition:
        """An exclusive connection for an ``async with`` block, with the same command API.

        Use it for blocking commands that should share a connection, CLIENT commands, SELECT,
        MONITOR... If the block leaves the connection in a changed state (another database,
        a name, a WATCH, READONLY...), it is closed on return instead of being reused.

        Args:
            timeout: seconds to wait for a free connection (``DEFAULT``: the pool's timeout).
        """
        return _ExclusiveAcquisition(self, timeout)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        """A pipeline: commands queue up and go out in one write on :meth:`Pipeline.execute`.

        Args:
            transaction: wrap the commands in MULTI/EXEC (default), so they run atomically.
        """
        return Pipeline(self, transaction)

    async def transaction(
        self,
        func: Callable[[Pipeline], Awaitable[T]],
        *watches: Any,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """Run ``func`` in an optimistic transaction, retrying while a watched key changes.

        ``func`` receives a pipeline that already WATCHes ``watches``; it may read with
        immediate commands, then call ``pipe.multi()`` and queue the writes.

        Returns:
            the EXEC results, or ``func``'s return value with ``value_from_callable=True``.
        """
        while True:
            async with self.pipeline(transaction=True) as pipe:
                try:
                    if watches:
                        await pipe.watch(*watches)
                    value = await func(pipe)
                    results = await pipe.execute()
                    return value if value_from_callable else results
                except WatchError:
                    if watch_delay:
                        await anyio.sleep(watch_delay)

    @overload
    def lock(
        self, name: str, timeout: float | None = None, sleep: float = 0.1,
        blocking: bool = True, blocking_timeout: float | None = None,
        lock_class: None = None, thread_local: bool = True, raise_on_release_error: bool = True,
    ) -> Lock: ...  # fmt: skip

    @overload
    def lock(
        self, name: str, timeout: float | None = None, sleep: float = 0.1,
        blocking: bool = True, blocking_timeout: float | None = None, *,
        lock_class: Callable[..., T], thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> T: ...  # fmt: skip

    def lock(
        self,
        name: str,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        lock_class: Callable[..., Any] | None = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> Any:
        """A distributed lock on key ``name`` that works on trio and asyncio (see :class:`Lock`).

        The arguments are redis-py's ``Redis.lock()``'s.  ``lock_class`` is called as redis-py
        calls it (``lock_class(self, name, timeout=..., sleep=..., blocking=...,
        blocking_timeout=..., thread_local=..., raise_on_release_error=...)``), so a subclass
        of :class:`Lock` or redis-py's own ``redis.asyncio.lock.Lock`` (asyncio only) works.
        """
        cls = Lock if lock_class is None else lock_class
        return cls(self, name, timeout=timeout, sleep=sleep, blocking=blocking,
                   blocking_timeout=blocking_timeout, thread_local=thread_local,
                   raise_on_release_error=raise_on_release_error)  # fmt: skip

    # --- pub/sub (the API: _pubsub.PubSubMethods) ---------------------------------------------

    def _hub(self) -> _pubsub.Hub:
        if self._pubsub is None:
            pool_config = self._pool.config
            self._pubsub = _pubsub.Hub(
                self._config, self._pool, per_connection=100,
                keepalive=pool_config.health_check_interval,
                backoff=pool_config.reconnect_backoff,
                placement=None if self._sentinel is None else self._sentinel.placement(),
            )  # fmt: skip
        return self._pubsub

    def _pubsub_hub(self, kind: _pubsub.Kind, names: tuple[Any, ...]) -> _pubsub.Hub:
        return self._hub()

    def _pubsub_hubs(self) -> list[_pubsub.Hub]:
        return [self._hub()]

    async def _start_pubsub_task(
        self, func: Callable[..., Coroutine[Any, Any, Any]], name: str
    ) -> Any:
        return await self._pool.start_task(func, name=name)

    # --- the pool -----------------------------------------------------------------------------

    @property
    def config(self) -> RedisConfig:
        """The connection settings."""
        return self._config

    @property
    def pool(self) -> Pool[Connection]:
        """The underlying generic pool (resize, reset, wait, check...)."""
        return self._pool

    @property
    def health(self) -> Health:
        """The pool's health (see :attr:`Pool.health`)."""
        return self._pool.health

    def statistics(self) -> PoolStatistics:
        """The pool's statistics (see :meth:`Pool.statistics`)."""
        return self._pool.statistics()

    def __repr__(self) -> str:
        if self._sentinel is not None:  # its config's host and port are not used
            where = f"sentinel {self._sentinel.service!r} {self._sentinel.role}"
            return f"<RedisPool {where} {self._pool!r}>"
        return f"<RedisPool {self._config.to_url()} {self._pool!r}>"


class RedisConnection(_Commands):
    """An exclusive connection leased from a :class:`RedisPool` (see :meth:`RedisPool.acquire`)."""

    def __init__(self, client: RedisPool, connection: Connection) -> None:
        self._config = client._config
        self._callbacks = client._callbacks
        self._connection = connection
        self.changed_state = False  # the connection will be closed on return
        self.returned = False  # the block ended: the connection is the pool's again

    @property
    def connection(self) -> Connection:
        """The underlying connection."""
        self._check_held()
        return self._connection

    def _check_held(self) -> None:
        if self.returned:
            raise ConnectionClosed(
                "this connection went back to the pool when its `async with redis.acquire()` "
                "block ended; acquire another one"
            )

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command on this connection and return its parsed reply.

        Raises:
            CommandNotAllowed: pub/sub commands and MONITOR (their replies are streams of
                pushes), CLIENT REPLY (OFF and SKIP send no reply at all).
        """
        self._check_held()
        if judge_on_connection(args):
            self.changed_state = True
        return await self._run(self._connection, args, options)


class _ExclusiveAcquisition:
    __slots__ = ("_client", "_lease", "_timeout", "_view")

    def __init__(self, client: RedisPool, timeout: float | _Default | None) -> None:
        self._client = client
        self._timeout = timeout
        self._lease: Lease[Connection] | None = None
        self._view: RedisConnection | None = None

    async def __aenter__(self) -> RedisConnection:
        self._lease = await self._client._pool.lease(timeout=self._timeout)
        self._view = RedisConnection(self._client, self._lease.resource)
        return self._view

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._lease is not None
        assert self._view is not None
        self._view.returned = True
        try:
            if self._view.changed_state:
                await self._lease.resource.aclose()  # closed, so the pool will not reuse it
        finally:
            await self._client._pool.release(self._lease)


class _Queued(_Commands):
    """What pipelines share: redis-py's commands queue ``(args, options)`` in ``_queue``; used as
    ``async with``, leaving the block resets the pipeline."""

    _queue: list[tuple[tuple[Any, ...], dict[str, Any]]]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.reset()

    def __len__(self) -> int:
        return len(self._queue)

    async def reset(self) -> None:  # type: ignore[override]  # as redis-py's Pipeline
        """Drop queued commands (and whatever the pipeline holds)."""
        raise NotImplementedError


class Pipeline(_Queued):
    """Queued commands sent in one write; a MULTI/EXEC transaction by default.

    Command methods queue and return the pipeline (so they chain); :meth:`execute` sends them
    and returns the replies in order, each parsed like the single command.  After
    :meth:`watch`, commands run immediately (to read what the transaction depends on) until
    :meth:`multi` starts queueing.

    Use it as ``async with redis.pipeline() as pipe:``; leaving the block resets it (a held
    connection is returned; one still WATCHing is closed, not reused).
    """

    def __init__(self, client: RedisPool, transaction: bool) -> None:
        self._client = client
        self._config = client._config
        self._callbacks = client._callbacks
        self._transaction = transaction
        self._queue: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._lease: Lease[Connection] | None = None  # held from watch() to execute()/reset()
        self._watching = False
        self._explicit_multi = False
        self._scripts: dict[str, Script] = {}  # loaded before execute(), like redis-py

    @property
    def watching(self) -> bool:
        """Whether a WATCH is in effect (from :meth:`watch` until execute/unwatch/reset)."""
        return self._watching

    def __bool__(self) -> bool:
        return True

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue a command (or, while WATCHing before MULTI, run it now: returns an awaitable).

        Raises:
            CommandNotAllowed: a command that would change the pooled connection's state
                (SELECT, MULTI, HELLO, CLIENT REPLY/SETNAME...), as on the pool itself.
        """
        refuse_on_pool(args, pipeline=True)
        if self._runs_at_once():
            return self._immediate(args, options)
        self._queue.append((args, options))
        return self

    def _adopt(self, lease: Lease[Connection]) -> bool:
        """Keep ``lease`` for the WATCH, unless the pipeline already holds one."""
        if self._lease is not None:
            return False
        self._lease = lease
        return True

    def _runs_at_once(self) -> bool:
        """While WATCHing before MULTI, commands run at once (to read what the transaction
        depends on) instead of being queued."""
        return self._watching and not self._explicit_multi

    async def _immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """A command run at once while WATCHing (already checked by execute_command)."""
        assert self._lease is not None
        return await self._run(self._lease.resource, args, options)

    async def watch(self, *names: Any) -> bool:  # type: ignore[override]  # as redis-py's
        """WATCH keys on a connection this pipeline keeps until execute() or reset()."""
        if self._explicit_multi:
            raise RedisErrorInPipeline("WATCH must come before MULTI")
        if self._lease is None:
            pool = self._client._pool
            lease = await pool.lease()
            if not self._adopt(lease):  # another task's watch() took one meanwhile
                await pool.release(lease)
                raise RuntimeError("a pipeline serves one task at a time; use one per task")
        assert self._lease is not None
        self._watching = True
        reply = await self._lease.resource.execute("WATCH", *names)
        return bool(reply in (b"OK", "OK"))

    async def unwatch(self) -> bool:  # type: ignore[override]  # as redis-py's
        """Forget the watched keys."""
        if self._lease is not None and self._watching:
            await self._lease.resource.execute("UNWATCH")
        self._watching = False
        return True

    def multi(self) -> None:
        """Start queueing the transaction (after :meth:`watch` and immediate reads)."""
        if self._explicit_multi:
            raise RedisErrorInPipeline("MULTI was already called")
        if self._queue:
            raise RedisErrorInPipeline("commands without an initial WATCH were already queued")
        self._explicit_multi = True

    async def discard(self) -> None:
        """DISCARD, exactly as redis-py's ``Pipeline.discard()``: while WATCHing before MULTI it
        runs at once (the server answers "DISCARD without MULTI"); otherwise it is queued, so
        a transaction's :meth:`execute` then fails with ResponseError ("EXEC without MULTI")
        and runs none of the commands queued before it.  To drop queued commands without an
        error, use :meth:`reset`.
        """
        if self._runs_at_once():
            await self._immediate(("DISCARD",), {})
        else:
            self._queue.append((("DISCARD",), {}))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands and return their parsed replies, in order.

        Args:
            raise_on_error: raise the first error reply (annotated with its position and
                command, like redis-py); with False, errors are returned in their places.

        Raises:
            WatchError: a watched key changed; nothing was executed.
            redis.exceptions.ResponseError: a command failed (with ``raise_on_error``).

        With the pool's ``retry=``, a pipeline that holds no WATCH is retried as one command
        would be: only when it provably was never sent, unless ``retry_may_have_run=True``.

        Cancellation: the connection is closed if replies were still owed, or if it may still
        be WATCHing (EXEC or UNWATCH never reached the server: an argument that cannot be
        sent, a script that does not load); the pipeline is reset either way.
        """
        retry = self._client._retry
        if retry is None or self._lease is not None or self._watching:
            return await self._execute(raise_on_error, None)
        queue, scripts, explicit_multi = self._queue, self._scripts, self._explicit_multi

        async def attempt(sent: Sent) -> list[Any]:
            # Each try sends the same commands (execute() resets the pipeline after a try).
            self._queue = [(args, dict(options)) for args, options in queue]
            self._scripts, self._explicit_multi = dict(scripts), explicit_multi
            return await self._execute(raise_on_error, sent)

        return await retry.call(attempt)

    async def _execute(self, raise_on_error: bool, sent: Sent | None) -> list[Any]:
        queue = self._queue
        pool = self._client._pool
        lease = self._lease or await pool.lease()
        self._lease = None
        writes = lease.resource.writes
        try:
            connection = lease.resource
            if not queue and not self._watching:
                return []
            if self._scripts:
                await self._load_scripts(connection)
            if self._transaction or self._explicit_multi:
                return await self._execute_transaction(connection, queue, raise_on_error)
            # EXEC would end a WATCH; without a transaction, UNWATCH does (in the same write),
            # so the connection goes back to the pool watching nothing.
            return await self._execute_pipeline(
                connection, queue, raise_on_error, unwatch=self._watching
            )
        finally:
            if sent is not None:
                sent.value = lease.resource.writes != writes
            if self._watching:  # the WATCH was not ended: closed, so the pool won't reuse it
                await lease.resource.aclose()
            self._queue = []
            self._scripts = {}
            self._watching = self._explicit_multi = False
            await pool.release(lease)

    async def _load_scripts(self, connection: Connection) -> None:
        """Make sure every script the queue runs by EVALSHA exists on the server."""
        scripts = list(self._scripts.values())
        exists = await connection.execute("SCRIPT", "EXISTS", *(s.sha for s in scripts))
        for script, present in zip(scripts, exists, strict=True):
            if not present:
                script.sha = _str(await connection.execute("SCRIPT", "LOAD", script.script))

    async def _execute_pipeline(
        self, connection: Connection, queue: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
        raise_on_error: bool, *, unwatch: bool = False,
    ) -> list[Any]:  # fmt: skip
        commands: list[Sequence[Any]] = [wire_args(args) for args, _ in queue]
        decode = [NEVER_DECODE not in o for _, o in queue]
        if unwatch:
            commands.append(("UNWATCH",))
            decode.append(True)
        replies = await connection.execute_many(commands, decode=decode)
        self._watching = False  # the server ran UNWATCH (or there was no WATCH)
        if unwatch:
            unwatched = replies.pop()
            if isinstance(unwatched, Exception):
                await connection.aclose()  # still watching, maybe: not reused
        results = []
        protocol, shape = connection.protocol, self._shape
        for (args, options), reply in zip(queue, replies, strict=True):
            if isinstance(reply, ResponseError) and EMPTY_RESPONSE in options:
                reply = options[EMPTY_RESPONSE]
            results.append(shape(protocol, name_of(args[0]), reply, options))
        raise_pipeline_errors(queue, results, raise_on_error)
        return results

    async def _execute_transaction(
        self, connection: Connection, queue: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
        raise_on_error: bool,
    ) -> list[Any]:  # fmt: skip
        # A command with nothing to act on (mget([])) is not sent, as in redis-py: its
        # EMPTY_RESPONSE takes its place in the results.
        sent = [(a, o) for a, o in queue if EMPTY_RESPONSE not in o]
        commands: list[Sequence[Any]] = [("MULTI",), *(wire_args(a) for a, _ in sent), ("EXEC",)]
        decode = [True, *(NEVER_DECODE not in o for _, o in sent), True]
        replies = await connection.execute_many(commands, decode=decode)
        self._watching = False  # the server ran EXEC, which ends a WATCH whatever it returns
        multi_reply, queued, exec_reply = replies[0], replies[1:-1], replies[-1]
        if len(sent) != len(queue):
            queued, exec_reply = _with_empty_responses(queue, queued, exec_reply)
        if isinstance(multi_reply, Exception):  # e.g. LOADING: nothing was queued
            raise multi_reply
        # Errors while queueing (wrong arity, unknown command) abort the whole transaction.
        queue_errors = [(i, r) for i, r in enumerate(queued) if isinstance(r, Exception)]
        for i, error in queue_errors:
            annotate_pipeline_error(error, i + 1, queue[i][0])
        if isinstance(exec_reply, Exception):
            if queue_errors:
                raise queue_errors[0][1] from exec_reply
            raise exec_reply
        if exec_reply is None:
            raise WatchError("Watched variable changed.")
        if len(exec_reply) != len(queue):
            await connection.aclose()
            raise ResponseError("Wrong number of response items from pipeline execution")
        protocol, shape = connection.protocol, self._shape
        results = [
            shape(protocol, name_of(args[0]), reply, options)
            for (args, options), reply in zip(queue, exec_reply, strict=True)
        ]
        raise_pipeline_errors(queue, results, raise_on_error)
        return results

    async def aclose(self) -> None:
        """redis-py's other name for :meth:`reset`."""
        await self.reset()

    async def reset(self) -> None:  # type: ignore[override]  # as redis-py's Pipeline
        """Drop queued commands and return a held connection (closed if still WATCHing)."""
        self._queue = []
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                if self._watching:
                    await lease.resource.aclose()  # forget the WATCH by not reusing it
            finally:
                await self._client._pool.release(lease)
        self._watching = self._explicit_multi = False


def _with_empty_responses(
    queue: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], queued: list[Any], exec_reply: Any
) -> tuple[list[Any], Any]:
    """Put back, in the places of the commands that were not sent, a QUEUED acknowledgement
    and their EMPTY_RESPONSE in EXEC's reply."""
    acks = iter(queued)
    replies = iter(exec_reply) if isinstance(exec_reply, list) else None
    full_queued, full_exec = [], []
    for _, options in queue:
        if EMPTY_RESPONSE in options:
            full_queued.append(b"QUEUED")
            full_exec.append(options[EMPTY_RESPONSE])
        else:
            full_queued.append(next(acks))
            if replies is not None:
                full_exec.append(next(replies))
    return full_queued, (full_exec if replies is not None else exec_reply)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Script:
    """A Lua script run with EVALSHA, loaded (once) when the server says NOSCRIPT.

    Inside a pipeline, the script is loaded before the pipeline is sent, so the queued EVALSHA
    cannot fail with NOSCRIPT.  Create one with ``redis.register_script(source)``.
    """

    def __init__(self, client: Any, script: str | bytes) -> None:
        self.registered_client = client
        self.script = script
        source = script.encode() if isinstance(script, str) else script
        self.sha = hashlib.sha1(source).hexdigest()  # Redis's own script id

    async def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        """Run the script.  With a pipeline as ``client``, queue it and return the pipeline."""
        client = client or self.registered_client
        if isinstance(client, Pipeline) and not client._runs_at_once():
            client._scripts[self.sha] = self  # loaded before execute() sends the queue
            return client.evalsha(self.sha, len(keys), *keys, *args)
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = _str(await client.script_load(self.script))
            return await client.evalsha(self.sha, len(keys), *keys, *args)


_RELEASE_ON_EXIT_TIMEOUT: float = 10.0
"""Seconds leaving a :class:`Lock`'s ``async with`` block may spend releasing it, cancelled or
not (the pool's wait for a connection and the release script together)."""


class Lock:
    """A distributed lock (one Redis key holding a random token), on trio and asyncio.

    Compatible with redis-py's ``Lock`` on the same key (same scripts and token scheme), but it
    waits with anyio, so it works on trio and is cancellable while contended.  Use one Lock
    object per holder.

    Cancellation: leaving ``async with`` releases the lock even when the block was cancelled
    (the release is shielded, for at most 10 s: past that, TimeoutError).

    Args:
        client: the RedisPool.
        name: the lock's key.
        timeout: seconds until the lock expires by itself (None: never).
        sleep: seconds between attempts while the lock is held by someone else.
        blocking: wait for the lock (default) rather than fail at once.
        blocking_timeout: most seconds to wait (None: forever).
        thread_local: keep the token in thread-local storage (redis-py's default), so a
            thread other than the one that acquired cannot release; False shares it.
        raise_on_release_error: leaving ``async with`` raises LockError when the lock was
            already released or expired (default); False logs a warning instead.
    """

    def __init__(
        self,
        client: RedisPool,
        name: str,
        *,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> None:
        self.client = client
        self.redis = client  # redis-py's name
        self.name = name
        self.timeout = timeout
        self.sleep = sleep
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self.thread_local = bool(thread_local)
        self.local: Any = threading.local() if self.thread_local else SimpleNamespace()
        self.local.token = None
        self.raise_on_release_error = raise_on_release_error
        self._release = client.register_script(LOCK_RELEASE_SCRIPT)
        self._extend = client.register_script(LOCK_EXTEND_SCRIPT)
        self._reacquire = client.register_script(LOCK_REACQUIRE_SCRIPT)

    async def __aenter__(self) -> Lock:
        if await self.acquire():
            return self
        raise LockError(f"could not acquire lock {self.name!r} within {self.blocking_timeout}s")

    async def __aexit__(self, *exc_info: object) -> None:
        # Leaving the block releases the lock even when the block was cancelled (a cancelled
        # scope would otherwise cancel the release before it is sent, and a lock without a
        # timeout would stay forever): shielded, for at most _RELEASE_ON_EXIT_TIMEOUT seconds.
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(_RELEASE_ON_EXIT_TIMEOUT):
                await self.release()
        except LockError:
            if self.raise_on_release_error:
                raise
            logger.warning(
                "lock %r was already released or no longer owned on leaving its block", self.name
            )

    @property
    def token(self) -> bytes | None:
        """The token this holder set (None: not held); thread-local with ``thread_local``."""
        token: bytes | None = getattr(self.local, "token", None)
        return token

    @token.setter
    def token(self, value: bytes | None) -> None:
        self.local.token = value

    async def acquire(
        self,
        blocking: bool | None = None,
        blocking_timeout: float | None = None,
        token: str | bytes | None = None,
    ) -> bool:
        """Take the lock, waiting (with anyio) while someone else holds it.

        Returns:
            True when acquired; False when not blocking, or after ``blocking_timeout``.

        Cancellation: a cancelled wait holds nothing; a cancellation that lands on the SET
        itself may leave the lock taken until its ``timeout`` (as with any client).
        """
        blocking = self.blocking if blocking is None else blocking
        blocking_timeout = self.blocking_timeout if blocking_timeout is None else blocking_timeout
        if token is None:
            token = uuid.uuid4().hex.encode()
        elif isinstance(token, str):
            config = self.client.config
            token = token.encode(config.encoding, config.encoding_errors)
        deadline = None if blocking_timeout is None else anyio.current_time() + blocking_timeout
        milliseconds = None if self.timeout is None else int(self.timeout * 1000)
        while True:
            if await self.client.set(self.name, token, nx=True, px=milliseconds):
                self.token = token
                return True
            if not blocking:
                return False
            if deadline is not None and anyio.current_time() + self.sleep > deadline:
                return False
            await anyio.sleep(self.sleep)

    async def locked(self) -> bool:
        """Whether anyone holds the lock."""
        return bool(await self.client.get(self.name) is not None)

    async def owned(self) -> bool:
        """Whether this object holds the lock."""
        stored = await self.client.get(self.name)
        if isinstance(stored, str):
            stored = stored.encode(self.client.config.encoding)
        return self.token is not None and stored == self.token

    async def release(self) -> None:
        """Release the lock.

        Raises:
            LockError: this object does not hold it.
            LockNotOwnedError: it expired, and someone else may hold it now.

        Cancellation: if cancelled (or failed) before the server answered, the lock may still
        be held, and this object still holds its token: call release() again.
        """
        token = self.token
        if token is None:
            raise LockError(f"cannot release lock {self.name!r}: it is not held")
        # The token is forgotten only once the server has answered: a release cancelled or
        # failed mid-flight leaves this object holding the lock, so it can be retried.
        released = await self._release(keys=[self.name], args=[token])
        self.token = None
        if not released:
            raise LockNotOwnedError(f"cannot release lock {self.name!r}: it is no longer owned")

    async def extend(self, additional_time: float, replace_ttl: bool = False) -> bool:
        """Add ``additional_time`` seconds to the lock's expiry (or set it, with replace_ttl)."""
        if self.token is None:
            raise LockError(f"cannot extend lock {self.name!r}: it is not held")
        args = [self.token, int(additional_time * 1000), "1" if replace_ttl else "0"]
        if not await self._extend(keys=[self.name], args=args):
            raise LockNotOwnedError(f"cannot extend lock {self.name!r}: it is no longer owned")
        return True

    async def reacquire(self) -> bool:
        """Reset the lock's expiry to ``timeout`` seconds from now."""
        if self.token is None or self.timeout is None:
            raise LockError(f"cannot reacquire lock {self.name!r}: not held, or no timeout")
        args = [self.token, int(self.timeout * 1000)]
        if not await self._reacquire(keys=[self.name], args=args):
            raise LockNotOwnedError(f"cannot reacquire lock {self.name!r}: it is no longer owned")
        return True


class RedisErrorInPipeline(CommandNotAllowed):
    """A pipeline method was called out of order (e.g. WATCH after MULTI)."""
