"""Pub/sub: subscriptions on dedicated connections, read by supervised tasks in the pool's group.

Theory of operation
-------------------
A subscription is an async iterator over a bounded memory stream.  The messages are read by one
task per *subscriber connection*; many subscriptions share a connection, up to
``per_connection`` of them, and the reader fans each message out to the subscriptions of its
channel or pattern.  Reader tasks live in the pool's task group, not in the user's
``async with``, so leaving a subscription never cancels a reader that others depend on.

The reader owns the socket's reading side: acknowledgements of SUBSCRIBE/UNSUBSCRIBE and the
answers to its keepalive PINGs all come through it.  Writers (subscribe/unsubscribe from user
tasks, the keepalive) take turns under a lock.

When the connection breaks (server killed, CLIENT KILL, network cut, a missed keepalive), the
reader reconnects with jittered backoff, subscribes again to everything its subscriptions want,
and puts a :class:`Reconnected` event into every subscription's stream: messages published in
the gap may have been lost, and the consumer is told so in-band.

Backpressure is per subscription, chosen at subscribe time: ``block`` (the reader waits, at most
``block_timeout`` seconds, then fails that subscription so the others are not starved),
``drop_oldest`` and ``drop_newest`` (counted), ``error`` (the subscription raises
:class:`SlowConsumer`), or ``unbounded`` (asked for by name).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._backoff import backoff_delay
from ._connection import Connection
from ._errors import AnyPoolError, ConnectionError, SlowConsumer, TimeoutError
from ._resp import Push

if TYPE_CHECKING:
    from ._client import RedisPool

__all__ = ["Listener", "Message", "Reconnected", "RestartPolicy", "Subscription"]

logger = logging.getLogger("anypool.pubsub")

Policy = Literal["block", "drop_oldest", "drop_newest", "error", "unbounded"]
_POLICIES = ("block", "drop_oldest", "drop_newest", "error", "unbounded")
Kind = Literal["channel", "pattern", "shard"]
_SUBSCRIBE = {"channel": "SUBSCRIBE", "pattern": "PSUBSCRIBE", "shard": "SSUBSCRIBE"}
_UNSUBSCRIBE = {"channel": "UNSUBSCRIBE", "pattern": "PUNSUBSCRIBE", "shard": "SUNSUBSCRIBE"}
_ACKS: dict[str, tuple[Kind, bool]] = {
    "subscribe": ("channel", True), "unsubscribe": ("channel", False),
    "psubscribe": ("pattern", True), "punsubscribe": ("pattern", False),
    "ssubscribe": ("shard", True), "sunsubscribe": ("shard", False),
}  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A published message.

    Attributes:
        kind: ``"message"``, ``"pmessage"`` (matched a pattern) or ``"smessage"`` (sharded).
        channel: the channel it was published to.
        data: the payload (``str`` with ``decode_responses``).
        pattern: the pattern that matched, for ``pmessage``.
    """

    kind: str
    channel: bytes | str
    data: bytes | str
    pattern: bytes | str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Reconnected:
    """The subscription's connection broke and was restored: messages may have been lost.

    Attributes:
        gap_start: ``time.time()`` when the connection was found broken.
        gap_end: ``time.time()`` when the subscriptions were sent again.
        error: what broke it.
    """

    gap_start: float
    gap_end: float
    error: str


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """How often a listener's handler may fail before the error propagates.

    Attributes:
        max_restarts: restarts allowed within ``window`` seconds; one more failure propagates.
        window: seconds over which restarts are counted.
        delay: seconds to wait before a restart.
    """

    max_restarts: int = 5
    window: float = 60.0
    delay: float = 0.1


Event = Message | Reconnected
_YIELD_EVERY = 64


class Subscription:
    """Messages for some channels and patterns: ``async for message in subscription``.

    Yields :class:`Message` and, after a reconnection, one :class:`Reconnected`.  Raises
    :class:`SlowConsumer` if it fell behind under the ``error`` (or a timed-out ``block``)
    policy.  Use :meth:`subscribe`/:meth:`unsubscribe` (and the ``p`` variants) to change the
    set while it is open.

    Attributes:
        received: messages put into this subscription's buffer.
        dropped: messages dropped by ``drop_oldest``/``drop_newest``.
    """

    def __init__(self, hub: _Hub, *, buffer: int, policy: Policy, block_timeout: float) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {', '.join(_POLICIES)}, not {policy!r}")
        if policy != "unbounded" and (isinstance(buffer, bool) or buffer < 1):
            raise ValueError(f"buffer must be a positive number of messages, not {buffer!r}")
        self._hub = hub
        self.policy = policy
        self.block_timeout = block_timeout
        size = math.inf if policy == "unbounded" else buffer
        self._send: MemoryObjectSendStream[Event]
        self._receive: MemoryObjectReceiveStream[Event]
        self._send, self._receive = anyio.create_memory_object_stream[Event](size)
        self.names: dict[Kind, set[Any]] = {"channel": set(), "pattern": set(), "shard": set()}
        self._connection: _SubscriberConnection | None = None
        self._failed: BaseException | None = None
        self._since_yield = 0
        self.received = 0
        self.dropped = 0

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        # A memory stream's receive() yields to the event loop on every item; when messages
        # are buffered, take them directly (checking for cancellation), yielding only every
        # _YIELD_EVERY messages so that a busy consumer cannot starve other tasks.
        try:
            if self._since_yield < _YIELD_EVERY:
                self._since_yield += 1
                try:
                    event = self._receive.receive_nowait()
                except anyio.WouldBlock:
                    pass
                else:
                    await anyio.lowlevel.checkpoint_if_cancelled()
                    return event
            self._since_yield = 0
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._failed is not None:
                raise self._failed from None
            raise StopAsyncIteration from None

    async def get(self, timeout: float | None = None) -> Event:
        """The next message or event; ``TimeoutError`` after ``timeout`` seconds."""
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            return await self.__anext__()
        raise TimeoutError(f"no message within {timeout}s")

    async def subscribe(self, *channels: Any) -> None:
        """Add channels; returns once the server has acknowledged them."""
        await self._hub.add(self, "channel", channels)

    async def unsubscribe(self, *channels: Any) -> None:
        """Remove channels (all when none are named)."""
        await self._hub.remove(self, "channel", channels or tuple(self.names["channel"]))

    async def psubscribe(self, *patterns: Any) -> None:
        """Add patterns; returns once the server has acknowledged them."""
        await self._hub.add(self, "pattern", patterns)

    async def punsubscribe(self, *patterns: Any) -> None:
        """Remove patterns (all when none are named)."""
        await self._hub.remove(self, "pattern", patterns or tuple(self.names["pattern"]))

    def _close_streams(self) -> None:
        self._send.close()
        self._receive.close()

    def _fail(self, error: BaseException) -> None:
        """Stop delivering: the consumer sees buffered messages, then ``error``."""
        if self._failed is None:
            self._failed = error
            self._send.close()

    def __repr__(self) -> str:
        names = {k: sorted(map(str, v)) for k, v in self.names.items() if v}
        return f"<Subscription {names} policy={self.policy} received={self.received}>"


async def _deliver(subscription: Subscription, event: Event, *, force: bool = False) -> None:
    """Put ``event`` into a subscription's buffer according to its policy.

    ``force`` (for Reconnected) makes room by dropping the oldest message if need be.
    """
    send = subscription._send
    try:
        send.send_nowait(event)
        subscription.received += isinstance(event, Message)
        return
    except anyio.WouldBlock:
        pass
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        return  # the consumer is gone, or the subscription failed
    policy = subscription.policy
    if force or policy == "drop_oldest":
        try:
            subscription._receive.receive_nowait()
            subscription.dropped += 1
            send.send_nowait(event)
            subscription.received += isinstance(event, Message)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
    elif policy == "drop_newest":
        subscription.dropped += 1
    elif policy == "block":
        with anyio.move_on_after(subscription.block_timeout):
            try:
                await send.send(event)
                subscription.received += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            return
        subscription._fail(
            SlowConsumer(
                f"the subscription's buffer stayed full for block_timeout "
                f"({subscription.block_timeout}s); it was stopped so the other subscriptions "
                "on its connection keep receiving"
            )
        )
    else:  # "error"
        subscription._fail(SlowConsumer("the subscription's buffer is full (policy 'error')"))


# The message kinds the reader routes, as the server sends them (bytes, or str with decoding).
_KINDS: dict[bytes | str, str] = {
    **{k: k for k in ("message", "pmessage", "smessage")},
    **{k.encode(): k for k in ("message", "pmessage", "smessage")},
}


async def _fan_out(subscriptions: set[Subscription], event: Message) -> None:
    """Deliver to every subscription; the buffer-has-room case stays out of the slow path."""
    for subscription in list(subscriptions):
        try:
            subscription._send.send_nowait(event)
            subscription.received += 1
        except anyio.WouldBlock:
            await _deliver(subscription, event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


class _SubscriberConnection:
    """One dedicated connection and the task that reads it (see the module docstring)."""

    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.connection: Connection | None = None
        self.subscriptions: set[Subscription] = set()
        self.routes: dict[Kind, dict[Any, set[Subscription]]] = {
            "channel": {}, "pattern": {}, "shard": {},
        }  # fmt: skip
        self.write_lock = anyio.Lock()
        self.acks: dict[tuple[Kind, bool, Any], list[anyio.Event]] = {}
        self.error: BaseException | None = None  # an error reply to the last (UN)SUBSCRIBE
        self.scope = anyio.CancelScope()
        self.awaiting_pong = False

    # writers (user tasks, the keepalive, resubscription) -----------------------------------

    async def send(self, *args: Any) -> None:
        connection = self.connection
        if connection is None or connection.closed:
            return  # the reader will resubscribe everything when it reconnects
        async with self.write_lock:
            # a broken connection is the reader's business: it reconnects and resubscribes
            with contextlib.suppress(AnyPoolError):
                await connection.send_command(*args)

    async def change(self, kind: Kind, names: Iterable[Any], subscribe: bool) -> None:
        """Send (UN)SUBSCRIBE for ``names`` and wait for the acknowledgements."""
        names = list(names)
        if not names:
            return
        events = []
        for name in names:
            event = anyio.Event()
            self.acks.setdefault((kind, subscribe, self._key(name)), []).append(event)
            events.append(event)
        self.error = None
        command = _SUBSCRIBE[kind] if subscribe else _UNSUBSCRIBE[kind]
        await self.send(command, *names)
        with anyio.move_on_after(self.hub.ack_timeout):
            for event in events:
                await event.wait()
            if self.error is not None:
                raise self.error
            return
        raise TimeoutError(f"{command} was not acknowledged within {self.hub.ack_timeout}s")

    def _key(self, name: Any) -> Any:
        """Channel names as the server echoes them back (bytes, or str with decoding)."""
        if self.hub.decode:
            return name.decode(self.hub.encoding) if isinstance(name, bytes) else str(name)
        return name.encode(self.hub.encoding) if isinstance(name, str) else bytes(name)

    # the reader ------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Connect, then read until cancelled, reconnecting as often as it takes."""
        hub = self.hub
        started = False
        failures = 0
        gap_start = 0.0
        last_error = ""
        with self.scope:
            try:
                while True:
                    try:
                        self.connection = await Connection.connect(hub.config)
                    except (ConnectionError, AnyPoolError, OSError):
                        if not started:
                            raise
                        failures += 1
                        hub.counters["reconnect_failures"] += 1
                        policy = hub.backoff
                        await anyio.sleep(
                            backoff_delay(
                                failures, base=policy.base, cap=policy.cap, jitter=policy.jitter
                            )
                        )
                        continue
                    failures = 0
                    if started:
                        await self._resubscribe(gap_start, last_error)
                    else:
                        started = True
                        task_status.started()
                    try:
                        await self._read(self.connection)
                    except (ConnectionError, AnyPoolError, OSError) as exc:
                        gap_start = time.time()
                        last_error = f"{type(exc).__name__}: {exc}"
                        hub.counters["connection_failures"] += 1
                        logger.warning("pub/sub connection lost (%s); reconnecting", last_error)
                        with anyio.CancelScope(shield=True):
                            await self.connection.aclose()
            finally:
                if self.connection is not None:
                    with anyio.CancelScope(shield=True):
                        await self.connection.aclose()

    async def _resubscribe(self, gap_start: float, error: str) -> None:
        hub = self.hub
        for kind, routes in self.routes.items():
            if routes:
                await self.send(_SUBSCRIBE[kind], *routes)
        hub.counters["resubscribes"] += 1
        event = Reconnected(gap_start=gap_start, gap_end=time.time(), error=error)
        for subscription in list(self.subscriptions):
            hub.counters["gap_events"] += 1
            await _deliver(subscription, event, force=True)

    async def _read(self, connection: Connection) -> None:
        keepalive = self.hub.keepalive
        self.awaiting_pong = False
        while True:
            # One deadline per socket read, not per message: a burst is parsed in one go.
            with anyio.move_on_after(math.inf if keepalive is None else keepalive) as quiet:
                messages = await connection.read_messages()
            if quiet.cancelled_caught:  # nothing for a while: prove the server still answers
                if self.awaiting_pong:
                    raise TimeoutError(f"no answer to a keepalive PING within {keepalive}s")
                self.awaiting_pong = True
                await self.send("PING")
                continue
            for message in messages:
                await self._dispatch(message)

    async def _dispatch(self, message: Any) -> None:
        kind = _KINDS.get(message[0]) if isinstance(message, list) and message else None
        if kind == "message" or kind == "smessage":
            routes = self.routes["channel" if kind == "message" else "shard"]
            subscriptions = routes.get(message[1])
            if subscriptions:
                await _fan_out(subscriptions, Message(kind, message[1], message[2]))
            self.hub.counters["messages"] += 1
            return
        if kind == "pmessage":
            subscriptions = self.routes["pattern"].get(message[1])
            if subscriptions:
                event = Message(kind, message[2], message[3], message[1])
                await _fan_out(subscriptions, event)
            self.hub.counters["messages"] += 1
            return
        if not isinstance(message, list) or not message:
            if _text(message).lower() == "pong":
                self.awaiting_pong = False  # RESP3 answers PING with a plain reply
            elif isinstance(message, Exception):
                # an error reply answers the (UN)SUBSCRIBE just sent (e.g. SSUBSCRIBE on a
                # server without sharded pub/sub): fail everyone waiting rather than time out
                self.error = message
                for waiters in self.acks.values():
                    for waiter in waiters:
                        waiter.set()
                self.acks.clear()
            return
        kind = _text(message[0]).lower()
        if kind in _ACKS:
            route_kind, subscribed = _ACKS[kind]
            waiting = self.acks.get((route_kind, subscribed, message[1]))
            if waiting:
                waiting.pop(0).set()
                if not waiting:
                    del self.acks[(route_kind, subscribed, message[1])]
        elif kind == "pong":
            self.awaiting_pong = False  # RESP2 answers PING in subscribed mode with an array
        elif type(message) is not Push:
            logger.debug("pub/sub: unexpected reply %.80r", message)


class _Hub:
    """The pool's pub/sub: places subscriptions on connections, starts and stops readers."""

    def __init__(self, client: RedisPool, *, per_connection: int, keepalive: float | None) -> None:
        config = client.config
        self.client = client
        self.config = config
        self.decode = config.decode_responses
        self.encoding = config.encoding
        self.per_connection = per_connection
        self.keepalive = keepalive
        self.ack_timeout = config.connect_timeout or 10.0
        self.backoff = client.pool.config.reconnect_backoff
        self.connections: list[_SubscriberConnection] = []
        self.counters = {
            "connection_failures": 0, "reconnect_failures": 0, "resubscribes": 0,
            "gap_events": 0, "messages": 0,
        }  # fmt: skip
        self._placing = anyio.Lock()

    async def attach(self, subscription: Subscription) -> None:
        async with self._placing:
            for candidate in self.connections:
                if len(candidate.subscriptions) < self.per_connection:
                    connection = candidate
                    break
            else:
                connection = _SubscriberConnection(self)
                task_group = self.client.pool._task_group
                assert task_group is not None
                await task_group.start(connection.run, name="anypool pub/sub reader")
                self.connections.append(connection)
            connection.subscriptions.add(subscription)
            subscription._connection = connection

    async def add(self, subscription: Subscription, kind: Kind, names: Iterable[Any]) -> None:
        connection = subscription._connection
        assert connection is not None
        new = []
        for name in names:
            key = connection._key(name)
            subscription.names[kind].add(key)
            routes = connection.routes[kind].setdefault(key, set())
            if not routes:
                new.append(key)
            routes.add(subscription)
        await connection.change(kind, new, subscribe=True)

    async def remove(self, subscription: Subscription, kind: Kind, names: Iterable[Any]) -> None:
        connection = subscription._connection
        if connection is None:
            return
        gone = []
        for name in names:
            key = connection._key(name)
            subscription.names[kind].discard(key)
            routes = connection.routes[kind].get(key)
            if routes is not None:
                routes.discard(subscription)
                if not routes:
                    del connection.routes[kind][key]
                    gone.append(key)
        await connection.change(kind, gone, subscribe=False)

    async def detach(self, subscription: Subscription) -> None:
        """Unsubscribe everything ``subscription`` had; close its connection if now unused."""
        connection = subscription._connection
        if connection is None:
            return
        try:
            for kind in ("channel", "pattern", "shard"):
                await self.remove(subscription, kind, list(subscription.names[kind]))
        finally:
            connection.subscriptions.discard(subscription)
            subscription._connection = None
            subscription._send.close()
            if not connection.subscriptions:
                if connection in self.connections:
                    self.connections.remove(connection)
                connection.scope.cancel()


@asynccontextmanager
async def subscription(
    hub: _Hub,
    kind: Kind,
    names: Iterable[Any],
    *,
    buffer: int,
    policy: Policy,
    block_timeout: float,
) -> AsyncIterator[Subscription]:
    """Subscribe, wait for the acknowledgement, yield; always unsubscribe on the way out."""
    subscription = Subscription(hub, buffer=buffer, policy=policy, block_timeout=block_timeout)
    try:
        await hub.attach(subscription)
    except BaseException:
        subscription._close_streams()
        raise
    try:
        await hub.add(subscription, kind, names)
        yield subscription
    finally:
        try:
            await _leave(hub, subscription)
        finally:
            subscription._close_streams()


async def _leave(hub: _Hub, subscription: Subscription) -> None:
    """Unsubscribe, bounded and shielded: leaving never hangs, whatever the server does."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(hub.ack_timeout):
        try:
            await hub.detach(subscription)
        except AnyPoolError as exc:
            logger.warning("unsubscribing failed (%s); the connection will be dropped", exc)
            connection = subscription._connection
            if connection is not None:
                connection.scope.cancel()
    connection = subscription._connection
    if connection is not None:  # the bounded cleanup timed out: drop the connection instead
        connection.subscriptions.discard(subscription)
        connection.scope.cancel()


class Listener:
    """A handler run for each message, as a supervised child task of the pool.

    Returned by ``RedisPool.start_listener()``.  A handler that raises is restarted, on the
    same subscription (so no message is lost meanwhile), within its :class:`RestartPolicy`; one
    failure more and the error propagates out of the pool's ``async with``.

    Attributes:
        handled: messages the handler processed.
        failures: handler exceptions so far.
        restarts: restarts so far.
    """

    def __init__(
        self,
        client: RedisPool,
        handler: Callable[[Event], Awaitable[Any]],
        channels: Iterable[Any],
        patterns: Iterable[Any],
        restart: RestartPolicy,
        options: dict[str, Any],
    ) -> None:
        self._client = client
        self._handler = handler
        self._channels = list(channels)
        self._patterns = list(patterns)
        self._restart = restart
        self._options = options
        self._scope = anyio.CancelScope()
        self.handled = 0
        self.failures = 0
        self.restarts = 0

    def cancel(self) -> None:
        """Stop the listener (it unsubscribes on its way out)."""
        self._scope.cancel()

    def statistics(self) -> dict[str, int]:
        """handled, failures and restarts, as a dict."""
        return {"handled": self.handled, "failures": self.failures, "restarts": self.restarts}

    async def run(self, *, task_status: anyio.abc.TaskStatus[Listener]) -> None:
        recent: deque[float] = deque()
        hub = self._client._hub()
        with self._scope:
            # One subscription for the listener's whole life: a failing handler is restarted
            # on the same subscription, so nothing published meanwhile is lost.
            async with subscription(hub, "channel", self._channels, **self._options) as sub:
                if self._patterns:
                    await sub.psubscribe(*self._patterns)
                task_status.started(self)
                while True:
                    try:
                        async for event in sub:
                            await self._handler(event)
                            self.handled += 1
                        return
                    except Exception:
                        self.failures += 1
                        now = anyio.current_time()
                        recent.append(now)
                        while recent and now - recent[0] > self._restart.window:
                            recent.popleft()
                        if len(recent) > self._restart.max_restarts:
                            raise  # past the budget: out of the pool's task group
                        logger.exception("listener handler failed; restarting it")
                        await anyio.sleep(self._restart.delay)
                        self.restarts += 1
