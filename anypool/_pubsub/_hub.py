"""The pool's pub/sub: dedicated subscriber connections, each served by a supervised task.

Theory of operation
-------------------
Subscriptions are placed on subscriber connections, up to ``per_connection`` each.  Each
connection is served by one task in the pool's task group (never in the user's ``async with``),
which for as long as a socket lives runs two children: the *writer*, the only one to write to
the socket (commands that subscribers queued, keepalive PINGs), which records each command in
the :class:`AckBook` just before writing it; and the *reader*, the only one to read, which
routes every published message to the subscriptions of its channel or pattern, and completes
the commands that acknowledgements, pongs and error replies answer.

User tasks never touch the socket.  Subscribing routes the names at once, queues the command
and waits (at most ``connect_timeout``) for the acknowledgement; cancelled or refused, it is
undone.  Unsubscribing and leaving are synchronous: the routes change at once (nothing more is
delivered), an UNSUBSCRIBE is queued for names nobody else wants, and a connection left without
subscriptions is closed.  So leaving takes no time whatever the server is doing, and never
waits on the reader, which may itself be waiting for room in the buffer being left.

When the socket breaks (the server closed it, the network did, a keepalive PING got no answer,
a write could not finish, or the server sent a frame that is not valid subscribed-mode RESP)
the task reconnects with jittered backoff, subscribes again to every route (those
acknowledgements complete the subscribes that were waiting), and reports the gap to every
subscription with a :class:`Reconnected` event.  Closing the pool ends every subscription with
PoolClosed and stops every task.

The server may also end a subscription on its own: a cluster node sends SUNSUBSCRIBE for the
sharded channels of a slot that migrated away, or of every slot when it stops being a primary,
and a resubscription after a reconnect may be refused (the slot moved, an ACL changed).  A hub
with a :class:`Placement` (the cluster's) treats both like a broken socket: it asks the
placement where to connect now and moves the whole connection there, with the gap reported.
A hub without one (a pool talks to one server) ends the subscriptions that held the lost names
with :class:`SubscriptionLost`: never a subscription that silently receives nothing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from .._backoff import backoff_delay
from .._config import BackoffPolicy, RedisConfig
from .._connection import Connection
from .._errors import (
    AnyPoolError,
    ConnectionLost,
    InvalidArgument,
    PoolClosed,
    ProtocolError,
    ReplyDecodeError,
    ResponseError,
    SubscriptionLost,
    TimeoutError,
)
from ._subscription import (
    Message,
    Policy,
    Reconnected,
    Subscription,
    discard_buffered,
    end,
    offer,
    offer_blocking,
    report_gap,
)
from ._wire import (
    SUBSCRIBE,
    UNSUBSCRIBE,
    Ack,
    AckBook,
    Completion,
    ErrorReply,
    Kind,
    Pong,
    Published,
    Sent,
    classify,
)

__all__ = ["Hub", "HubHost", "Placement", "SubscriberConnection", "subscription"]

logger = logging.getLogger("anypool.pubsub")

_KINDS: tuple[Kind, ...] = ("channel", "pattern", "shard")
# Refusals that mean "this node is not the one to ask" (a cluster's redirects and transients):
# redis-py's parser gives them these classes (their text drops the "MOVED "... prefix).
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


class HubHost(Protocol):
    """What a hub needs from the client that owns it (a pool, or a cluster client)."""

    @property
    def name(self) -> str: ...

    def check_open(self) -> None: ...

    def closed_error(self, message: str) -> PoolClosed: ...

    async def start_task(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None
    ) -> Any: ...


class Placement(Protocol):
    """Where a hub's connections go when the server to ask may change (a cluster's slot
    owner, or any node for classic channels)."""

    def check(self, kind: Kind, keys: list[Any]) -> None:
        """Raise a clear error unless names of ``kind`` can be subscribed through this hub."""

    async def locate(self, moved: bool) -> RedisConfig:
        """Where to connect now; ``moved``: the last server failed, refused or ended a
        subscription, so the topology is to be read again first."""
        ...

    def serves(self, config: RedisConfig) -> bool:
        """Whether the server a connection was made to (``config``) is still where the
        subscriptions belong: it may have stopped while the connection was being made (a
        failover), and the connection then moves before subscribing."""
        ...


class _Waiter:
    """A subscriber waiting for its command's answer."""

    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: BaseException | None = None

    def complete(self, error: BaseException | None) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class LeftWhileSubscribing(AnyPoolError, RuntimeError):
    """Internal: the subscription was left (by another task) while a subscribe waited."""


def _threadsafe_call_soon() -> Any:
    """The running loop's "call this soon" that is safe from any thread and from a finalizer
    run by the garbage collector in the middle of anything (asyncio and uvloop:
    ``call_soon_threadsafe``; trio: ``TrioToken.run_sync_soon``)."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:
        import trio  # not on asyncio: anyio runs on trio

        return trio.lowlevel.current_trio_token().run_sync_soon


class Hub:
    """The pool's pub/sub: places subscriptions on connections; starts and stops their tasks.

    Args:
        config: how to connect (with a ``placement``: everything but the address).
        pool: the pool (or cluster client) whose task group runs the connection tasks.
        per_connection: subscriptions per connection.
        keepalive: seconds of silence before a PING (None: never).
        backoff: the reconnect backoff.
        placement: where to connect, for a hub whose server may change (None: ``config``'s).
    """

    def __init__(
        self,
        config: RedisConfig,
        pool: HubHost,
        *,
        per_connection: int,
        keepalive: float | None,
        backoff: BackoffPolicy,
        placement: Placement | None = None,
    ) -> None:
        self.config = config
        self.placement = placement
        self._pool = pool
        self.name = pool.name
        self.decode = config.decode_responses
        self.encoding = config.encoding
        self.encoding_errors = config.encoding_errors
        self.per_connection = per_connection
        self.keepalive = keepalive
        self.backoff = backoff
        self.ack_timeout = config.connect_timeout or 10.0
        self.write_timeout = config.socket_timeout or self.ack_timeout
        self.connections: list[SubscriberConnection] = []
        self._starting: set[SubscriberConnection] = set()  # connecting for the first time
        self.counters = {
            "messages": 0, "connection_failures": 0, "reconnect_failures": 0,
            "resubscribes": 0, "gap_events": 0, "protocol_errors": 0, "slow_consumers": 0,
            "abandoned": 0, "ended_by_server": 0, "relocations": 0,
        }  # fmt: skip
        self.closed = False
        self._placing: anyio.Lock | None = None  # made inside the event loop
        # Subscribes waiting for their acknowledgement, by subscription (woken by detach).
        self._adding: dict[Subscription, set[_Waiter]] = {}
        # Thread- and reentrancy-safe "call this soon on the loop" (for finalizers).
        self._call_soon: Any = None

    # --- names ----------------------------------------------------------------------------------

    def key(self, name: Any) -> Any:
        """A channel or pattern name as the server echoes it back (str with decoding, bytes
        without), checked now so that nothing invalid is ever queued.

        Raises:
            InvalidArgument: not a str, bytes or number, or not encodable as configured.
        """
        if isinstance(name, bool) or not isinstance(
            name, str | bytes | bytearray | memoryview | int | float
        ):
            raise InvalidArgument(
                f"a channel or pattern name must be str or bytes, not {type(name).__name__}"
            )
        if isinstance(name, int | float):
            name = str(name)
        try:
            if isinstance(name, str):
                encoded = name.encode(self.encoding, self.encoding_errors)
                return name if self.decode else encoded
            raw = bytes(name)
            return raw.decode(self.encoding, self.encoding_errors) if self.decode else raw
        except UnicodeError as exc:
            raise InvalidArgument(
                f"channel or pattern name {name!r:.60} cannot be coded as {self.encoding}: {exc}"
            ) from None

    async def connect(self, moved: bool) -> Connection:
        """A new connection to where this hub's subscriptions belong now."""
        config = self.config
        if self.placement is not None:
            config = await self.placement.locate(moved)
        return await Connection.connect(config)

    # --- placing, subscribing -------------------------------------------------------------------

    def check_open(self) -> None:
        """Raise PoolClosed, in the pool's own words, unless subscriptions can be made."""
        if self.closed:
            raise self._pool.closed_error(f"{self.name} is closed")
        self._pool.check_open()

    async def attach(self, sub: Subscription) -> None:
        """Place ``sub`` on a connection with room, opening one if needed.

        Raises:
            PoolClosed: the pool is not open.
            ConnectError...: a new connection could not be made.
        """
        self.check_open()
        if self._call_soon is None:
            self._call_soon = _threadsafe_call_soon()
        if self._placing is None:
            self._placing = anyio.Lock()
        async with self._placing:
            self.check_open()
            for connection in self.connections:
                if len(connection.subscriptions) < self.per_connection:
                    break
            else:
                connection = SubscriberConnection(self)
                # Until it has connected, the task runs in this caller's cancel scope, out of
                # reach of the pool's: close() stops it through _starting.
                self._starting.add(connection)
                try:
                    await self._pool.start_task(connection.run, name="anypool pub/sub connection")
                except Exception:
                    if self.closed:  # stopped by close(), or failed while the pool closed
                        error = self._pool.closed_error(f"{self.name} closed while subscribing")
                        raise error from error.__cause__
                    raise
                finally:
                    self._starting.discard(connection)
                if self.closed:  # the pool began closing just as it connected
                    connection.close()
                    raise self._pool.closed_error(f"{self.name} closed while subscribing")
                self.connections.append(connection)
            connection.subscriptions.add(sub)
            sub.connection = connection

    def _attached(self, sub: Subscription) -> SubscriberConnection:
        connection = sub.connection
        if connection is None:
            self.check_open()
            raise RuntimeError("this subscription was left; subscribe again from the pool")
        return connection

    async def add(self, sub: Subscription, kind: Kind, names: Iterable[Any]) -> bool:
        """Subscribe ``sub`` to more names; returns once the server acknowledged them.

        Returns whether it waited for the server (False: every name was subscribed on the
        connection already, so nothing was sent).

        Raises:
            ResponseError: the server refused (e.g. SSUBSCRIBE on a server without it).
            TimeoutError: no acknowledgement within ``connect_timeout``.

        Cancellation: what this call added is removed again (and unsubscribed if it may have
        reached the server).
        """
        connection = self._attached(sub)
        keys = [self.key(name) for name in names]
        if self.placement is not None:
            self.placement.check(kind, keys)
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled call changes nothing
        added = [key for key in dict.fromkeys(keys) if key not in sub.names[kind]]
        send = connection.route(sub, kind, added)
        if not send:  # already subscribed on this connection (by another subscription)
            return False
        waiter = _Waiter()
        connection.request(kind, True, send, [waiter.complete])
        waiting = self._adding.setdefault(sub, set())
        waiting.add(waiter)
        try:
            with anyio.move_on_after(self.ack_timeout):
                await waiter.event.wait()
            if not waiter.event.is_set():
                moved = connection.last_move
                raise TimeoutError(
                    f"{SUBSCRIBE[kind]} was not acknowledged within {self.ack_timeout}s"
                    + ("" if moved is None else f" (the connection kept moving; last: {moved})")
                )
            if waiter.error is not None:
                raise waiter.error
            return True
        except BaseException as exc:
            # Refused: the server subscribed to nothing.  Otherwise it may have: tell it.
            self.remove(
                sub, kind, added, tell_server=not isinstance(exc, ResponseError), leaving=True
            )
            raise
        finally:
            waiting.discard(waiter)
            if not waiting and self._adding.get(sub) is waiting:
                del self._adding[sub]

    async def ping(self, sub: Subscription) -> None:
        """PING on ``sub``'s connection; returns once the server answered, so every message
        published before this call has been read (and is in ``sub``'s buffer).

        Raises:
            TimeoutError: no answer within ``connect_timeout``.
            ConnectionLost: the connection broke first (a gap event follows).
            PoolClosed: the pool closed first.

        Cancellation: nothing to undo (the answer, when it comes, is ignored).
        """
        connection = self._attached(sub)
        await anyio.lowlevel.checkpoint_if_cancelled()
        waiter = _Waiter()
        connection.ping([waiter.complete])
        with anyio.move_on_after(self.ack_timeout):
            await waiter.event.wait()
        if not waiter.event.is_set():
            raise TimeoutError(f"PING was not answered within {self.ack_timeout}s")
        if waiter.error is not None:
            raise waiter.error

    def fence(self, sub: Subscription, callback: Completion) -> anyio.Event:
        """Call ``callback`` (from the reader, synchronously) once every message published
        before now has been read and routed: with None when the server answered a PING sent
        now, with ConnectionLost if the connection broke first (what was unread is inside the
        gap), with PoolClosed if it closed.  Synchronous.

        Returns an event set once that PING is on the wire (or ``callback`` was called), for a
        caller that must not return before the server can see it (as redis-py's commands)."""
        sent = anyio.Event()

        def done(error: BaseException | None) -> None:
            sent.set()
            callback(error)

        self._attached(sub).ping([done], written=sent.set)
        return sent

    def remove(
        self,
        sub: Subscription,
        kind: Kind,
        names: Iterable[Any],
        *,
        tell_server: bool = True,
        leaving: bool = False,
    ) -> None:
        """Unsubscribe ``sub`` from names, at once; the server is told in the background.

        Messages for those names that were published before this call and not consumed are
        not delivered: those buffered and those not yet read off the socket are counted in
        ``sub.discarded`` (unless ``leaving``: a subscription that has ended, or a caller that
        has had every message it was owed, is owed nothing more).
        """
        connection = sub.connection
        if connection is None:
            return
        removed, gone = connection.unroute(sub, kind, [self.key(name) for name in names])
        if gone and tell_server:
            connection.request(kind, False, gone, [])
        if removed and not leaving:
            connection.drain(sub, kind, removed)
            discard_buffered(sub, kind, removed)

    def detach(self, sub: Subscription) -> None:
        """Leave: unsubscribe everything ``sub`` had and end it; close its connection if it
        was the last one there.  Synchronous: it never waits on the server."""
        for waiter in self._adding.pop(sub, ()):  # subscribes still waiting: nothing to wait for
            waiter.complete(
                LeftWhileSubscribing(
                    "this subscription was left (by another task) while subscribe() waited for "
                    "the acknowledgement; nothing was subscribed"
                )
            )
        connection = sub.connection
        if connection is not None:
            last = connection.subscriptions == {sub}
            for kind in _KINDS:
                names = list(sub.names[kind])
                self.remove(sub, kind, names, tell_server=not last, leaving=True)
            connection.leave(sub)
            sub.connection = None
            if not connection.subscriptions:
                if connection in self.connections:
                    self.connections.remove(connection)
                connection.close()
        end(sub)

    def ended_error(self) -> PoolClosed:
        """What a subscription ended by the pool's closing raises: after a background
        failure, it names the failure and chains it."""
        return self._pool.closed_error(f"{self.name} closed; this subscription has ended")

    def abandon(self, sub: Subscription) -> None:
        """What owned ``sub`` was garbage-collected without leaving it: leave it soon, on the
        event loop.  Safe from a finalizer (any thread, any moment: it only schedules), a
        no-op once the pool closed or the loop ended; never raises."""
        try:
            if not self.closed and self._call_soon is not None:
                self._call_soon(self._leave_abandoned, sub)
        except Exception:  # the loop has ended (closed, or the trio run finished)
            pass

    def _leave_abandoned(self, sub: Subscription) -> None:
        try:
            if self.closed or sub.connection is None:
                return
            self.counters["abandoned"] += 1
            logger.warning(
                "%s: a pub/sub subscription was garbage-collected without aclose(); it has "
                "left its channels now (close it with aclose() or `async with`)",
                self.name,
            )
            self.detach(sub)
        except Exception:  # pragma: no cover - a callback of the loop must not raise
            logger.exception("%s: leaving an abandoned subscription failed", self.name)

    def close(self) -> None:
        """The pool is closing: end every subscription with PoolClosed, stop every task."""
        self.closed = True
        connections, self.connections = self.connections, []
        for connection in [*connections, *self._starting]:
            for sub in list(connection.subscriptions):
                end(sub, self.ended_error())
            connection.close()

    async def move_from(self, address: tuple[str, int], reason: str) -> int:
        """Move every subscriber connection to ``address`` (host, port) to where the
        placement says now: its socket is closed, and it reconnects, resubscribes and reports
        the gap (one :class:`~anypool.Reconnected` per subscription), as after any lost
        connection.  Returns how many were moved."""
        moved = 0
        for connection in [*self.connections, *self._starting]:
            if await connection.leave_server(address, reason):
                moved += 1
        return moved

    def statistics(self) -> dict[str, int]:
        return {
            **self.counters,
            "connections": len(self.connections),
            "subscriptions": sum(len(c.subscriptions) for c in self.connections),
        }


class SubscriberConnection:
    """One subscribed connection: its routes, its queued commands, and the task serving it."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.subscriptions: set[Subscription] = set()
        # kind -> name (as the server echoes it) -> the subscriptions that want it
        self.routes: dict[Kind, dict[Any, set[Subscription]]] = {k: {} for k in _KINDS}
        # (kind, name) the server acknowledged on the current socket
        self.confirmed: set[tuple[Kind, Any]] = set()
        # Commands waiting for the writer, with their arguments; recorded in the book when sent.
        self._outbox: list[tuple[Sent, tuple[Any, ...]]] = []
        self._outbox_ready: anyio.Event | None = None
        self._book = AckBook()
        self._write_failure: BaseException | None = None
        # After a reconnection: the gap, and the subscriptions not told of it yet.  Each is
        # told when the resubscription is acknowledged, or before its first message if that
        # comes sooner, so the event always sits between the messages before and after it.
        self._gap: tuple[float, str] = (0.0, "")
        self._gap_owed: set[Subscription] = set()
        # Routes a subscription just left, until the fence PING proves every message published
        # before that was read: what arrives for them is counted as discarded.
        self._draining: dict[tuple[Kind, Any], Counter[Subscription]] = {}
        # The server ended a route (or refused to restore one) while this socket served: raised
        # by the reader once the frames of that read are handled.
        self._lost: BaseException | None = None
        self._relocations = 0  # in a row, without a resubscription that went through
        self.last_move: str | None = None  # why the connection last moved, while it keeps moving
        # New subscriptions a node refused with a redirect (the placement's table was stale):
        # the resubscription at the node the placement names next answers them.
        self._redirected: list[Sent] = []
        # Waiters of a resubscription refused with a redirect: they wait for the next one.
        self._carried: list[Completion] = []
        self._scope = anyio.CancelScope()
        self._closed = False
        self._socket: Connection | None = None  # the connection served now

    # --- routes (synchronous; user tasks call these) -------------------------------------------

    def route(self, sub: Subscription, kind: Kind, keys: list[Any]) -> list[Any]:
        """Route ``keys`` to ``sub``; returns the keys to (re)subscribe: those nobody had, or
        whose subscription the server has not acknowledged yet (so ``sub`` waits for it)."""
        routes, send = self.routes[kind], []
        for key in keys:
            sub.names[kind].add(key)
            subs = routes.setdefault(key, set())
            if not subs or (kind, key) not in self.confirmed:
                send.append(key)
            subs.add(sub)
        return send

    def unroute(
        self, sub: Subscription, kind: Kind, keys: list[Any]
    ) -> tuple[list[Any], list[Any]]:
        """Stop routing ``keys`` to ``sub``; returns the keys it had, and those of them nobody
        wants any more."""
        routes, removed, gone = self.routes[kind], [], []
        for key in keys:
            sub.names[kind].discard(key)
            subs = routes.get(key)
            if subs is None or sub not in subs:
                continue
            subs.discard(sub)
            removed.append(key)
            if not subs:
                del routes[key]
                self.confirmed.discard((kind, key))
                gone.append(key)
        return removed, gone

    def drain(self, sub: Subscription, kind: Kind, keys: list[Any]) -> None:
        """Until the server has answered a PING sent now (so every message published before
        this moment has been read), count what arrives for ``keys`` as discarded for ``sub``."""
        for key in keys:
            self._draining.setdefault((kind, key), Counter())[sub] += 1

        def drained(_error: BaseException | None) -> None:
            for key in keys:
                counts = self._draining.get((kind, key))
                if counts is not None:
                    counts[sub] -= 1
                    if counts[sub] <= 0:
                        del counts[sub]
                    if not counts:
                        del self._draining[(kind, key)]

        if self._closed:
            return
        self._outbox.append((Sent(None, False, (), [drained]), ("PING",)))
        self._wake_writer()

    def request(self, kind: Kind, subscribe: bool, keys: list[Any], done: list[Completion]) -> None:
        """Queue (UN)SUBSCRIBE for the writer; ``done`` is called with its answer."""
        if self._closed:
            for callback in done:
                callback(PoolClosed(f"{self.hub.name}: the pub/sub connection was closed"))
            return
        command = (SUBSCRIBE if subscribe else UNSUBSCRIBE)[kind]
        self._outbox.append((Sent(kind, subscribe, keys, done), (command, *keys)))
        self._wake_writer()

    def ping(self, done: list[Completion], written: Callable[[], None] | None = None) -> None:
        """Queue a PING for the writer; ``done`` is called with its answer (ConnectionLost if
        the connection breaks first), and ``written`` once the writer has sent it."""
        if self._closed:
            for callback in done:
                callback(PoolClosed(f"{self.hub.name}: the pub/sub connection was closed"))
            return
        sent = Sent(None, False, (), done)
        sent.written = written
        self._outbox.append((sent, ("PING",)))
        self._wake_writer()

    def leave(self, sub: Subscription) -> None:
        """``sub`` (unrouted already) is no longer on this connection."""
        self.subscriptions.discard(sub)
        self._gap_owed.discard(sub)

    def close(self) -> None:
        """Stop the task (it closes the socket); nothing more is sent, and whoever waits for
        an answer gets PoolClosed."""
        self._closed = True
        self._scope.cancel()
        waiting = self._book.take_all() + [sent for sent, _ in self._outbox]
        self._outbox = []
        for sent in waiting:
            sent.complete(PoolClosed(f"{self.hub.name}: the pub/sub connection was closed"))

    def _wake_writer(self) -> None:
        if self._outbox_ready is not None:
            self._outbox_ready.set()
            self._outbox_ready = None

    # --- the task -------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Connect (a failure goes to the subscriber that started this), then serve the
        connection until closed, reconnecting as often as it takes."""
        hub = self.hub
        with self._scope:
            try:
                try:
                    connection = await hub.connect(moved=False)
                except (AnyPoolError, OSError):
                    if hub.placement is None:
                        raise
                    # The node the table names may be gone (a failover nobody has seen yet):
                    # read the topology again, once, and connect where it says.
                    connection = await hub.connect(moved=True)
                task_status.started()
                gap: tuple[float, str] | None = None
                while True:
                    failure = await self._serve(connection, gap)
                    gap = (time.time(), f"{type(failure).__name__}: {failure}")
                    if isinstance(failure, _Relocate):
                        hub.counters["relocations"] += 1
                        self._relocations += 1
                        self.last_move = str(failure)
                        logger.warning("pub/sub: %s; moving the connection", failure)
                        if self._relocations > 1:  # the topology has not settled: pace it
                            policy = hub.backoff
                            await anyio.sleep(
                                backoff_delay(
                                    self._relocations - 1, base=policy.base, cap=policy.cap,
                                    jitter=policy.jitter,
                                )
                            )  # fmt: skip
                    else:
                        hub.counters["connection_failures"] += 1
                        if isinstance(failure, ProtocolError | ReplyDecodeError):
                            hub.counters["protocol_errors"] += 1
                        logger.warning("pub/sub connection lost (%s); reconnecting", gap[1])
                    connection = await self._reconnect()
            finally:
                self._closed = True
                for sub in list(self.subscriptions):  # a safety net: hub.close() does this first
                    end(sub, hub.ended_error())

    async def _serve(self, connection: Connection, gap: tuple[float, str] | None) -> BaseException:
        """Read and write until the socket fails; returns why.  Always closes it."""
        self._write_failure = None
        self._socket = connection
        failure: BaseException | None = None
        placement = self.hub.placement
        if placement is not None and not placement.serves(connection.config):
            # Its server stopped serving while it was being connected (move_from() could not
            # reach it): move it before anything is subscribed there.
            await connection.aclose()
            return ConnectionLost(
                f"{connection.config.address} stopped serving these subscriptions while the "
                "connection was being made"
            )
        try:
            if gap is not None:
                self._resubscribe(*gap)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, connection, name="anypool pub/sub writer")
                try:
                    await self._read(connection)
                except (AnyPoolError, OSError) as exc:  # the socket's failure or the server's
                    failure = exc
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await connection.aclose()
        assert failure is not None  # _read returns only by raising
        return self._write_failure or failure

    async def leave_server(self, address: tuple[str, int], reason: str) -> bool:
        """If this connection's server is ``address``, close its socket (``reason`` is the
        gap's error): the task reconnects where the placement says.  Whether it did."""
        socket = self._socket
        if socket is None or socket.closed:
            return False
        if (socket.config.host, socket.config.port) != address:
            return False
        await socket.abandon(reason)
        return True

    async def _reconnect(self) -> Connection:
        hub = self.hub
        failures = 0
        while True:
            try:
                return await hub.connect(moved=True)
            except (AnyPoolError, OSError) as exc:
                failures += 1
                hub.counters["reconnect_failures"] += 1
                policy = hub.backoff
                delay = backoff_delay(
                    failures, base=policy.base, cap=policy.cap, jitter=policy.jitter
                )
                logger.debug("pub/sub reconnect failed (%r); retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)

    def _resubscribe(self, gap_start: float, error: str) -> None:
        """A new socket: subscribe again to every route; the gap is reported once that is
        acknowledged (see ``_gap_owed``)."""
        self.hub.counters["resubscribes"] += 1
        if self._gap_owed:  # the last gap was never reported: this one extends it
            gap_start = self._gap[0]
        # A subscription whose every name was refused with a redirect on the old socket never
        # received anything: it has no gap to hear of.
        redirected = {
            (sent.kind, key) for sent in self._redirected if sent.kind for key in sent.pending
        }
        owed = {sub for sub in self.subscriptions if not self._only(sub, redirected)}
        self._gap, self._gap_owed = (gap_start, error), owed
        # Whoever waited for an answer on the old socket waits for the resubscription instead.
        unanswered = self._redirected + self._book.take_all() + [sent for sent, _ in self._outbox]
        self._redirected = []
        waiting = [cb for sent in unanswered if sent.subscribe for cb in self._waiters(sent.done)]
        waiting, self._carried = self._carried + waiting, []
        # A PING sent on the old socket is answered by nothing: its caller learns of the break.
        pings = [sent for sent in unanswered if sent.kind is None]
        waiting.append(lambda _error: self._report_gap(list(self._gap_owed)))
        self._outbox = []
        self.confirmed.clear()
        self._draining.clear()  # what was in flight is inside the gap
        for sent in pings:
            sent.complete(ConnectionLost(f"the connection broke before PING was answered: {error}"))
        requests = [(kind, list(routes)) for kind, routes in self.routes.items() if routes]
        for index, (kind, keys) in enumerate(requests):
            last = index == len(requests) - 1
            then = waiting if last else []
            self.request(
                kind, True, keys, [functools.partial(self._restored, kind, keys, last, then)]
            )
        if not requests:
            for callback in waiting:
                callback(None)

    @staticmethod
    def _only(sub: Subscription, routes: set[tuple[Kind, Any]]) -> bool:
        """Whether ``sub`` has names, all of them among ``routes``."""
        names = [(kind, key) for kind in _KINDS for key in sub.names[kind]]
        return bool(names) and all(route in routes for route in names)

    def _waiters(self, done: list[Completion]) -> list[Completion]:
        """The callbacks of an unanswered (re)subscription that must hear of its successor: an
        earlier resubscription's bookkeeping is replaced by the new one, but whoever it held
        back still waits."""
        waiters: list[Completion] = []
        for callback in done:
            if self._is_restore(callback):
                assert isinstance(callback, functools.partial)
                waiters.extend(callback.args[3])
            else:
                waiters.append(callback)
        return waiters

    def _is_restore(self, callback: Completion) -> bool:
        return isinstance(callback, functools.partial) and callback.func == self._restored

    def _restored(
        self,
        kind: Kind,
        keys: list[Any],
        last: bool,
        then: list[Completion],
        error: BaseException | None,
    ) -> None:
        """The server answered a resubscription (from the reader); ``then`` hear of it after."""
        command = SUBSCRIBE[kind]
        if error is None:
            if last:
                self._relocations, self.last_move = 0, None
        elif self.hub.placement is not None and isinstance(error, _REDIRECTS):
            # Another node serves these now: move the connection (see _Relocate); whoever
            # waited hears of the resubscription there instead.
            self._lost = self._lost or _Relocate(
                f"resubscribing with {command} {_names(keys)} was refused ({error})"
            )
            self._carried.extend(then)
            return
        elif len(keys) > 1:
            # One refused name refuses the whole command (an ACL rule, say): ask for each name
            # alone, so that only the subscriptions holding a refused name end (they learn of
            # it by SubscriptionLost; whoever waited hears of success).
            then = [functools.partial(_succeeded, callback) for callback in then]
            for index, key in enumerate(keys):
                final = index == len(keys) - 1
                retry = functools.partial(
                    self._restored, kind, [key], last and final, then if final else []
                )
                self.request(kind, True, [key], [retry])
            return
        else:
            logger.warning("pub/sub: resubscribing with %s was refused: %s", command, error)
            self._end_routes(
                kind, keys,
                f"resubscribing to {_names(keys)} ({command}) after a reconnect was refused by "
                f"the server ({error}); the subscription has ended (subscribe again once the "
                "cause is fixed)",
                error,
            )  # fmt: skip
        for callback in then:
            callback(error)

    def _ended_by_server(self, kind: Kind, key: Any) -> None:
        """The server unsubscribed ``key`` without being asked (from the reader)."""
        self.hub.counters["ended_by_server"] += 1
        command = UNSUBSCRIBE[kind]
        if self.hub.placement is not None:
            self._lost = self._lost or _Relocate(
                f"the server ended the subscription to {_names([key])} ({command} nobody sent: "
                "its slot moved to another node, or the node is no longer a primary)"
            )
            return
        logger.warning("pub/sub: the server ended the subscription to %r (%s)", key, command)
        self._end_routes(
            kind, [key],
            f"the server ended the subscription to {_names([key])} ({command} nobody sent: on "
            "a cluster, the channel's slot moved to another node or the node is no longer a "
            "primary); a pool talks to one server, so the subscription has ended (subscribe "
            "through anypool.RedisCluster to follow a sharded channel across nodes)",
            None,
        )  # fmt: skip

    def _end_routes(
        self, kind: Kind, keys: list[Any], message: str, cause: BaseException | None
    ) -> None:
        """End every subscription that held one of ``keys``: it receives nothing more for
        them, and its consumers get SubscriptionLost after what is buffered."""
        ended: set[Subscription] = set()
        for key in keys:
            ended.update(self.routes[kind].get(key, ()))
        for sub in ended:
            self.unroute(sub, kind, keys)
            self._gap_owed.discard(sub)  # it ends instead: no Reconnected for it
            error = SubscriptionLost(message, kind=kind, names=keys)
            error.__cause__ = cause
            end(sub, error)

    def _report_gap(self, subs: Iterable[Subscription]) -> None:
        gap_start, error = self._gap
        event = Reconnected(gap_start=gap_start, gap_end=time.time(), error=error)
        for sub in subs:
            if sub in self._gap_owed:
                self._gap_owed.discard(sub)
                self.hub.counters["gap_events"] += 1
                report_gap(sub, event)

    async def _write(self, connection: Connection) -> None:
        """The only writer: sends what was queued, in order, recording it first."""
        timeout = self.hub.write_timeout
        while True:
            while not self._outbox:
                self._outbox_ready = anyio.Event()
                await self._outbox_ready.wait()
            batch, self._outbox = self._outbox, []
            for sent, _ in batch:
                self._book.record(sent)
            try:
                await connection.send_commands([args for _, args in batch], timeout=timeout)
            except AnyPoolError as exc:  # the connection is closed now: the reader sees it
                self._write_failure = exc
                return
            for sent, _ in batch:
                if sent.written is not None:
                    written, sent.written = sent.written, None
                    written()

    async def _read(self, connection: Connection) -> None:
        """The only reader: routes messages, answers commands, sends keepalive PINGs."""
        keepalive = self.hub.keepalive
        while True:
            # One deadline per socket read, not per message: a burst is handled in one go.
            with anyio.move_on_after(math.inf if keepalive is None else keepalive) as quiet:
                frames = await connection.read_messages()
            if quiet.cancelled_caught:  # nothing for a while: prove the server still answers
                if self._book.pings or any(s.kind is None for s, _ in self._outbox):
                    raise TimeoutError(f"no answer to a keepalive PING within {keepalive}s")
                self._outbox.append((Sent(None, False, (), []), ("PING",)))
                self._wake_writer()
                continue
            for frame in frames:
                await self._handle(frame)
            if self._lost is not None:
                lost, self._lost = self._lost, None
                raise lost

    async def _handle(self, frame: Any) -> None:
        event = classify(frame)  # ProtocolError: the server's fault; reconnect
        kind = type(event)
        if kind is Published:
            assert isinstance(event, Published)
            hub = self.hub
            hub.counters["messages"] += 1
            route_kind, key = event.route
            if self._draining:
                for sub in self._draining.get((route_kind, key), ()):
                    sub.discarded += 1  # published before it unsubscribed, read after
            subs = self.routes[route_kind].get(key)
            if not subs:
                return
            if self._gap_owed:
                self._report_gap(subs)
            message = Message(event.kind, event.channel, event.data, event.pattern)
            full = [sub for sub in subs if not offer(sub, message)]
            for sub in full:  # policy "block", buffer full: wait for room (bounded)
                await offer_blocking(sub, message)
        elif kind is Ack:
            assert isinstance(event, Ack)
            if (
                not event.subscribe
                and event.name in self.routes[event.kind]
                and not self._book.awaits(event)
            ):
                self._ended_by_server(event.kind, event.name)
                return
            if event.subscribe and event.name in self.routes[event.kind]:
                self.confirmed.add((event.kind, event.name))
            sent = self._book.on_ack(event)
            if sent is not None:
                sent.complete(None)
        elif kind is Pong:
            sent = self._book.on_pong()
            if sent is not None:
                sent.complete(None)
        elif kind is ErrorReply:
            assert isinstance(event, ErrorReply)
            sent = self._book.on_error(event.error)  # ProtocolError if it answers nothing
            if (
                self.hub.placement is not None
                and sent.subscribe
                and sent.kind is not None
                and isinstance(event.error, _REDIRECTS)
                and not any(self._is_restore(callback) for callback in sent.done)
            ):
                # A new subscription reached a node that does not serve it now: move the
                # connection; its caller waits for the resubscription there (within its own
                # acknowledgement deadline).
                self._redirected.append(sent)
                self._lost = self._lost or _Relocate(
                    f"{SUBSCRIBE[sent.kind]} was refused ({type(event.error).__name__}: "
                    f"{event.error})"
                )
                return
            if not sent.done:
                what = "PING" if sent.kind is None else SUBSCRIBE[sent.kind]
                logger.warning("pub/sub: the server refused %s: %s", what, event.error)
            sent.complete(event.error)
        else:
            logger.debug("pub/sub: ignored a frame of an unknown kind: %.80r", frame)


class _Relocate(ConnectionLost):
    """The server ended a route, or refused to restore one, on a hub with a placement: the
    connection moves to where the placement says now."""


def _succeeded(callback: Completion, _error: BaseException | None) -> None:
    callback(None)


def _names(keys: Iterable[Any]) -> str:
    return ", ".join(repr(key) for key in keys)


@asynccontextmanager
async def subscription(
    hub: Hub,
    kind: Kind,
    names: Iterable[Any],
    *,
    buffer: int,
    policy: Policy,
    block_timeout: float,
) -> AsyncIterator[Subscription]:
    """Subscribe, wait for the acknowledgement, yield; leave (at once) on the way out."""
    sub = Subscription(hub, buffer=buffer, policy=policy, block_timeout=block_timeout)
    names = list(names)
    keys = [hub.key(name) for name in names]  # invalid names fail here, before connecting
    if hub.placement is not None:
        hub.placement.check(kind, keys)
    await hub.attach(sub)
    try:
        await hub.add(sub, kind, names)
        yield sub
    finally:
        hub.detach(sub)
