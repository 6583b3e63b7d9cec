"""redis-py's asyncio ``PubSub`` API over one supervised subscription.

Theory of operation
-------------------
A :class:`PubSub` owns at most one :class:`Subscription` (made on first use, placed by the hub
like any other).  What redis-py reads off its own connection, this class rebuilds from two
sources, in one order:

* the subscription's events (messages and gap events), and
* the replies redis-py would read on its dedicated connection (subscribe/unsubscribe
  acknowledgements, pongs), made here once the hub has done the work.

Those replies are queued in ``_queue``.  So that a reply lands *after* every message that
preceded it on the server, the subscription's buffered events are moved into the queue first,
in the same synchronous step (``_pump``): the hub completes a subscribe, or a PING, only after
the reader has put everything that came before it into the buffer.  The counts in
acknowledgements are those the server would give a connection of this object alone (its
channels plus patterns; its shard channels for the sharded kind), since redis-py gives every
PubSub its own connection while anypool shares one between many.

A gap (a reconnection, or the subscription falling behind its policy) is never silent: by
default ``get_message()`` raises :class:`MessagesLost` at its place in the stream; ``on_gap``
chooses a message dict or a callback instead.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
from redis.exceptions import PubSubError

from .._errors import (
    AnyPoolError,
    ConnectionError,
    InvalidArgument,
    MessagesLost,
    PoolClosed,
    SlowConsumer,
    TimeoutError,
)
from ._hub import LeftWhileSubscribing
from ._subscription import Message, Policy, Reconnected, Subscription

if TYPE_CHECKING:
    from ._hub import Hub
    from ._wire import Kind

__all__ = ["PubSub"]

Handler = Callable[[dict[str, Any]], Any]
GapHandler = Callable[[Reconnected], Any]
_ACK = {
    ("channel", True): "subscribe", ("pattern", True): "psubscribe",
    ("shard", True): "ssubscribe", ("channel", False): "unsubscribe",
    ("pattern", False): "punsubscribe", ("shard", False): "sunsubscribe",
}  # fmt: skip
_UNSUBSCRIBE_KIND: dict[str, Kind] = {
    "unsubscribe": "channel", "punsubscribe": "pattern", "sunsubscribe": "shard",
}  # fmt: skip


def _flatten(args: tuple[Any, ...]) -> list[Any]:
    """redis-py's ``list_or_args``: the first argument may be a list of names."""
    if not args:
        return []
    first, rest = args[0], list(args[1:])
    if isinstance(first, str | bytes | bytearray | memoryview):
        return [first, *rest]
    try:
        return [*first, *rest]
    except TypeError:
        return [first, *rest]


def _deprecated(name: str) -> None:
    warnings.warn(
        f"PubSub.{name}() is deprecated (as in redis-py since 5.0.1): use aclose() instead",
        DeprecationWarning,
        stacklevel=3,
    )


def _lost(gap: Reconnected) -> MessagesLost:
    """The error that reports ``gap`` where it is raised (get_message(), listen(), run())."""
    return MessagesLost(
        f"pub/sub delivery was interrupted ({gap.error}); messages published between "
        f"{gap.gap_start:.3f} and {gap.gap_end:.3f} may be lost. The subscriptions are "
        "restored: the next get_message() goes on (pubsub(on_gap=...) reports gaps "
        "another way)",
        gap,
    )


class PubSub:
    """redis-py's asyncio ``PubSub`` (``redis.pubsub()``), on anypool's supervised subscriptions.

    Existing redis-py code works unchanged: ``subscribe``/``psubscribe``/``ssubscribe`` (names,
    lists of names, ``name=handler`` keywords, redis-py's ``Subscription`` objects), the ``un``
    variants, ``get_message(ignore_subscribe_messages=, timeout=)``, ``listen()``, ``run()``,
    ``ping()``, ``connect()``, ``aclose()`` (and its deprecated old names ``reset()`` and
    ``close()``), ``async with``, and the
    ``channels``, ``patterns``, ``shard_channels`` and ``subscribed`` attributes, with redis-py's
    message dicts (``{'type', 'pattern', 'channel', 'data'}``; acknowledgements carry the
    subscription count as ``data``).

    What anypool adds: the connection is shared and supervised; when it breaks it is restored
    and every subscription is sent again, and the gap is reported (see ``on_gap``).  Subscribing
    returns once the server has acknowledged it (so a refusal is raised there, not later).

    Args:
        hub: the pool's pub/sub hub (use ``RedisPool.pubsub()``).
        ignore_subscribe_messages: drop (un)subscribe acknowledgements, as redis-py.
        on_gap: how a gap (messages lost to a reconnection, or to falling behind ``policy``)
            is reported, in its place in the stream: ``"raise"`` (default) raises
            :class:`MessagesLost` (a ``ConnectionError``) from ``get_message()``/``listen()``
            once, and the next call goes on with what came after; ``"message"`` returns
            ``{'type': 'reconnected', 'pattern': None, 'channel': None, 'data': Reconnected}``
            (never dropped by ``ignore_subscribe_messages``); a callable is called with the
            :class:`Reconnected` event (awaited if it returns an awaitable) and
            ``get_message()`` returns None for it, as for a message with a handler.
        buffer, policy, block_timeout: the subscription's backpressure (see
            ``RedisPool.subscribe``); a subscription stopped by ``SlowConsumer`` is resumed at
            once, and the messages dropped meanwhile are reported as a gap.
    """

    PUBLISH_MESSAGE_TYPES = ("message", "pmessage", "smessage")
    UNSUBSCRIBE_MESSAGE_TYPES = ("unsubscribe", "punsubscribe", "sunsubscribe")

    def __init__(
        self,
        hub: Hub,
        *,
        ignore_subscribe_messages: bool = False,
        on_gap: Literal["raise", "message"] | GapHandler = "raise",
        buffer: int = 1000,
        policy: Policy = "block",
        block_timeout: float = 5.0,
    ) -> None:
        if on_gap not in ("raise", "message") and not callable(on_gap):
            raise ValueError(f"on_gap must be 'raise', 'message' or a callable, not {on_gap!r}")
        Subscription(hub, buffer=buffer, policy=policy, block_timeout=block_timeout)  # checks
        self._hub = hub
        self.ignore_subscribe_messages = ignore_subscribe_messages
        self.on_gap = on_gap
        self._options = {"buffer": buffer, "policy": policy, "block_timeout": block_timeout}
        self._sub: Subscription | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None  # leaves _sub if dropped
        self._closes = 0  # aclose() calls so far (a call that spans one gives up)
        self._attaching: anyio.Lock | None = None
        # Replies redis-py would read, after the events that preceded them (see _pump).
        self._queue: deque[dict[str, Any] | Message | Reconnected] = deque()
        self._waiting: anyio.CancelScope | None = None  # a get_message() waiting on _sub
        # What the server holds for this object, in order (for the counts in acks).
        self._server: dict[Kind, dict[Any, None]] = {"channel": {}, "pattern": {}, "shard": {}}
        # Names unsubscribed but still routed until their fence (see _unsubscribe), with the
        # unsubscribe call they belong to.
        self._leaving: dict[Kind, dict[Any, object]] = {"channel": {}, "pattern": {}, "shard": {}}
        self.channels: dict[Any, Handler | None] = {}
        self.patterns: dict[Any, Handler | None] = {}
        self.shard_channels: dict[Any, Handler | None] = {}
        self.pending_unsubscribe_channels: set[Any] = set()
        self.pending_unsubscribe_patterns: set[Any] = set()
        self.pending_unsubscribe_shard_channels: set[Any] = set()

    async def __aenter__(self) -> PubSub:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def subscribed(self) -> bool:
        """Whether any channel, pattern or shard channel is subscribed (an unsubscribe counts
        once its acknowledgement has been read, as in redis-py)."""
        return bool(self.channels or self.patterns or self.shard_channels)

    async def connect(self) -> None:
        """Make sure this object has its place on a pub/sub connection, before any subscribe
        (redis-py's ``PubSub.connect()``); a no-op once it has one.

        Afterwards :meth:`get_message` waits (up to its ``timeout``) instead of raising
        ``RuntimeError`` when nothing is subscribed yet, as in redis-py.  The connection is
        the pool's shared, supervised one: if it breaks, it is restored by the pool.

        Raises:
            ConnectionError: no connection could be made (as the pool's commands raise it).
            PoolClosed: the pool is closed.

        Cancellation: a cancelled connect leaves the object as it was (unplaced); the next
        call, or the first subscribe, places it.  It is always a checkpoint, so a retry loop
        around it can be cancelled.
        """
        if self._sub is None:
            await self._attach()
        else:
            await anyio.lowlevel.checkpoint()

    # --- subscribing ----------------------------------------------------------------------------

    async def subscribe(self, *args: Any, **kwargs: Handler) -> None:
        """Subscribe to channels: names (or a list), ``channel=handler`` keywords, or redis-py
        ``Subscription(name, handler)`` objects.  A channel with a handler has its messages
        passed to the handler instead of returned.

        Returns once the server has acknowledged; the acknowledgements are then read with
        :meth:`get_message` like redis-py's.

        Raises:
            ResponseError: the server refused.  TimeoutError: no acknowledgement within
            ``connect_timeout``.  InvalidArgument: a name that is not str/bytes/number.

        Cancellation: a subscribe cancelled before the acknowledgement is undone (no ack is
        delivered, ``channels`` is unchanged); one that subscribed nothing new is
        acknowledged all the same.
        """
        await self._subscribe("channel", args, kwargs)

    async def psubscribe(self, *args: Any, **kwargs: Handler) -> None:
        """Subscribe to glob-style patterns (see :meth:`subscribe`)."""
        await self._subscribe("pattern", args, kwargs)

    async def ssubscribe(self, *args: Any, target_node: Any = None, **kwargs: Handler) -> None:
        """Subscribe to sharded channels, Redis >= 7 (see :meth:`subscribe`)."""
        await self._subscribe("shard", args, kwargs)

    async def unsubscribe(self, *args: Any) -> None:
        """Unsubscribe from channels (all when none are named), as in redis-py: the messages
        published before this call are still delivered, then the acknowledgements (read with
        :meth:`get_message`); nothing published after the server has handled it is.  A channel
        leaves ``channels`` when its acknowledgement is read.

        Returns once the unsubscribe is on the wire (as redis-py), never waiting for the
        server's answer.

        Cancellation: only a cancellation before the call starts undoes it; later, it only
        cuts short the wait for the write (the unsubscribe stands).
        """
        await self._unsubscribe("channel", args)

    async def punsubscribe(self, *args: Any) -> None:
        """Unsubscribe from patterns (all when none are named), as :meth:`unsubscribe`."""
        await self._unsubscribe("pattern", args)

    async def sunsubscribe(self, *args: Any, target_node: Any = None) -> None:
        """Unsubscribe from sharded channels (all when none are named), as :meth:`unsubscribe`."""
        await self._unsubscribe("shard", args)

    async def ping(self, message: Any = None) -> None:
        """PING the server on the subscription's connection; the pong is read with
        :meth:`get_message` (``{'type': 'pong', ..., 'data': message or b''}``), after every
        message published before it.

        Raises:
            ConnectionLost: the connection broke first (the gap is reported as ``on_gap`` says).
            TimeoutError: no answer within ``connect_timeout``.

        Cancellation: a cancelled ping delivers no pong.
        """
        data = b"" if message is None else self._hub.key(message)
        if message is None and self._hub.decode:
            data = ""
        sub = await self._attach()
        await self._hub.ping(sub)
        self._pump_then({"type": "pong", "pattern": None, "channel": None, "data": data})

    def _handlers(self, kind: Kind) -> dict[Any, Handler | None]:
        return {"channel": self.channels, "pattern": self.patterns, "shard": self.shard_channels}[
            kind
        ]

    def _pending(self, kind: Kind) -> set[Any]:
        return {
            "channel": self.pending_unsubscribe_channels,
            "pattern": self.pending_unsubscribe_patterns,
            "shard": self.pending_unsubscribe_shard_channels,
        }[kind]

    async def _subscribe(self, kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        wanted: dict[Any, Handler | None] = {}
        for arg in _flatten(args):
            if hasattr(arg, "name") and hasattr(arg, "handler"):  # redis.typing.Subscription
                wanted[self._hub.key(arg.name)] = arg.handler
            else:
                wanted[self._hub.key(arg)] = None
        for name, handler in kwargs.items():
            if handler is not None and not callable(handler):
                raise InvalidArgument(f"the handler for {name!r} must be callable, not {handler!r}")
            wanted[self._hub.key(name)] = handler
        if not wanted:
            raise InvalidArgument(f"{_ACK[kind, True]}() needs at least one name")
        sub = await self._attach()
        closes = self._closes
        # Names being unsubscribed are still routed: take them back before their fence
        # removes them (undone below if this subscribe is not).
        leaving = self._leaving[kind]
        taken = {key: leaving.pop(key) for key in wanted if key in leaving}
        done = False
        try:
            try:
                sent = await self._hub.add(sub, kind, list(wanted))
            except LeftWhileSubscribing:
                raise self._closed_while("subscribe") from None
            if not sent:
                # Subscribed on the connection already, so nothing was sent and the
                # subscription stands whatever happens next.  A PING puts every message that
                # came before this call into the buffer, ahead of the acknowledgement.
                with contextlib.suppress(AnyPoolError):  # broke (a gap follows) or closed
                    await self._hub.ping(sub)
            if self._closes != closes:
                raise self._closed_while("subscribe")
            done = True
        finally:
            if self._closes == closes and taken and not done:
                # Not subscribed after all: those names go on leaving, at once.
                self._hub.remove(sub, kind, list(taken), leaving=True)
            if done:
                self._subscribed(kind, wanted)

    def _subscribed(self, kind: Kind, wanted: dict[Any, Handler | None]) -> None:
        """Acknowledged: record it and queue the acks (synchronous, so nothing splits it)."""
        server = self._server[kind]
        acks = []
        for key in wanted:
            server[key] = None
            acks.append(self._ack(kind, True, key))
        self._pump_then(*acks)
        self._handlers(kind).update(wanted)
        self._pending(kind).difference_update(wanted)

    async def _unsubscribe(self, kind: Kind, args: tuple[Any, ...]) -> None:
        keys = [self._hub.key(name) for name in _flatten(args)]
        await anyio.lowlevel.checkpoint_if_cancelled()
        sub = await self._attach()
        server = self._server[kind]
        named = keys or list(server)
        self._pending(kind).update(keys or self._handlers(kind))
        acks = []
        for key in named:
            server.pop(key, None)
            acks.append(self._ack(kind, False, key))
        if not named:  # the server answers an UNSUBSCRIBE of nothing with one null ack
            acks.append(self._ack(kind, False, None))
        # As redis-py's connection would: what was published before this call is delivered,
        # then the acks.  The names stay routed until a PING sent now is answered (so every
        # message before it has been read into the buffer); then they are removed and the acks
        # queued, in one synchronous step of the reader.  A subscribe meanwhile takes a name
        # back (see _subscribe).  Never waits.
        token = object()
        leaving = self._leaving[kind]
        for key in named:
            leaving[key] = token

        def fenced(error: BaseException | None) -> None:
            if self._sub is not sub:  # closed (or closed and reopened) meanwhile
                return
            keys = [key for key in named if leaving.get(key) is token]
            for key in keys:
                del leaving[key]
            if keys:
                self._hub.remove(sub, kind, keys, leaving=True)  # owed nothing more
            if not isinstance(error, PoolClosed):
                self._pump_then(*acks)

        written = self._hub.fence(sub, fenced)
        # Return once the PING is on the wire, as redis-py returns once its UNSUBSCRIBE is:
        # a message published after this call returned comes after it.  Bounded by the
        # writer's timeout (past it the connection is dropped, which calls fenced()).
        with anyio.move_on_after(2 * self._hub.write_timeout):
            await written.wait()

    def _ack(self, kind: Kind, subscribe: bool, key: Any) -> dict[str, Any]:
        server = self._server
        count = (
            len(server["shard"])
            if kind == "shard"
            else len(server["channel"]) + len(server["pattern"])
        )
        return {"type": _ACK[kind, subscribe], "pattern": None, "channel": key, "data": count}

    async def _attach(self) -> Subscription:
        """The subscription, placed on a connection on first use."""
        if self._sub is not None:
            return self._sub
        if self._attaching is None:
            self._attaching = anyio.Lock()
        closes = self._closes
        async with self._attaching:
            if self._closes != closes:
                raise self._closed_while("subscribe")
            if self._sub is None:
                sub = Subscription(self._hub, **self._options)  # type: ignore[arg-type]
                await self._hub.attach(sub)
                if self._closes != closes:  # aclose() was called while it connected
                    self._hub.detach(sub)
                    raise self._closed_while("subscribe")
                self._sub = sub
                # Dropped without aclose(), this object leaves its channels (as redis-py's
                # frees its connection) instead of holding them, and maybe its connection's
                # reader, until the pool closes.
                self._finalizer = weakref.finalize(self, self._hub.abandon, sub)
                self._finalizer.atexit = False
            return self._sub

    def _closed_while(self, what: str) -> ConnectionError:
        return ConnectionError(
            f"this PubSub was closed (aclose()) by another task while {what}() waited; "
            "nothing was subscribed"
            if what == "subscribe"
            else f"this PubSub was closed (aclose()) by another task while {what}() waited"
        )

    def _pump_then(self, *replies: dict[str, Any]) -> None:
        """Queue ``replies`` after every event the subscription has buffered (synchronous)."""
        sub = self._sub
        if sub is not None:
            self._queue.extend(sub.take_buffered())
            if sub.stopped:  # it fell behind before these replies: its gap comes first
                sub.resume()
                self._queue.extend(sub.take_buffered())
        self._queue.extend(replies)
        if self._waiting is not None:  # a get_message() waits on the subscription: wake it
            self._waiting.cancel()

    # --- reading --------------------------------------------------------------------------------

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None:
        """The next message dict, or None.

        Args:
            ignore_subscribe_messages: return None for (un)subscribe acknowledgements.
            timeout: seconds to wait for one; ``0`` (default, as redis-py) takes only what has
                arrived already; ``None`` waits until something arrives.

        Returns None also when the message went to its channel's handler (or ``on_gap``'s),
        or was ignored, as in redis-py: each call consumes at most one item.

        Raises:
            RuntimeError: nothing was ever subscribed (as redis-py).
            MessagesLost: a gap, with ``on_gap="raise"`` (the next call continues after it).
            PoolClosed: the pool closed (after what was buffered).

        Cancellation: a get_message cancelled or timed out takes nothing: every message stays
        for the next call.
        """
        item = await self._next(timeout)
        if item is None:
            return None
        return await self._handle(item, ignore_subscribe_messages)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Yield message dicts while subscribed (as redis-py's ``listen()``).

        Cancellation: as :meth:`get_message`; it is a checkpoint even when nothing is
        subscribed (so it ends at once), so a loop around it can be cancelled."""
        await anyio.lowlevel.checkpoint()
        while self.subscribed:
            item = await self._next(None)
            if item is None:  # pragma: no cover - only a timeout returns None
                continue
            response = await self._handle(item, False)
            if response is not None:
                yield response

    async def run(
        self,
        *,
        exception_handler: Callable[[BaseException, PubSub], Any] | None = None,
        poll_timeout: float = 1.0,
        pubsub: PubSub | None = None,
    ) -> None:
        """Pass every message to its handler until cancelled (as redis-py's ``run()``).

        Every channel and pattern needs a handler (redis-py's ``PubSubError`` otherwise).
        An error (including :class:`MessagesLost` for a gap, unless ``on_gap`` is a callable)
        goes to ``exception_handler(error, pubsub)``, awaited if it returns an awaitable;
        without one, it is raised.  With ``on_gap="message"`` a gap is raised here too,
        since ``run()`` drops what ``get_message()`` returns.

        Cancellation: the way to stop it; nothing is lost (what was not handled stays).
        """
        for kind in ("channel", "pattern"):
            for name, handler in self._handlers(kind).items():
                if handler is None:  # redis-py's words, exactly
                    raise PubSubError(f"{kind.capitalize()}: '{name}' has no handler registered")
        source = pubsub or self
        await self._attach()
        cancelled = anyio.get_cancelled_exc_class()
        while True:
            try:
                # Through get_message(), as redis-py's run(): code that wraps or patches it
                # sees every read.
                response = await source.get_message(
                    ignore_subscribe_messages=True, timeout=poll_timeout
                )
                if response is not None and response["type"] == "reconnected":
                    raise _lost(response["data"])  # on_gap="message": run() drops returns
            except cancelled:
                raise
            except Exception as exc:
                if exception_handler is None:
                    raise
                result = exception_handler(exc, self)
                if inspect.isawaitable(result):
                    await result
            await anyio.lowlevel.checkpoint()

    async def _next(self, timeout: float | None) -> dict[str, Any] | Reconnected | Message | None:
        """Take the next item (None after ``timeout``); checks cancellation before taking."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._sub is None and not self._queue:
            raise RuntimeError(
                "pubsub connection not set: did you forget to call subscribe() or psubscribe()?"
            )
        deadline = None if timeout is None else anyio.current_time() + timeout
        while True:
            if self._queue:
                return self._queue.popleft()
            sub = self._sub
            if sub is None:  # closed by aclose() from another task meanwhile (as redis-py)
                raise self._closed_while("get_message")
            left = None if deadline is None else max(0.0, deadline - anyio.current_time())
            with anyio.CancelScope() as scope:
                self._waiting = scope
                try:
                    return await sub.get(timeout=left)
                except TimeoutError:
                    return None
                except StopAsyncIteration:  # left by aclose() from another task
                    raise self._closed_while("get_message") from None
                except SlowConsumer:
                    # Fell behind its policy: deliver again; the gap event reports the drops.
                    sub.resume()
                finally:
                    self._waiting = None
            # woken by _pump_then (the replies are queued now), or resumed: look again

    async def _handle(
        self, item: dict[str, Any] | Reconnected | Message, ignore: bool
    ) -> dict[str, Any] | None:
        if isinstance(item, Reconnected):
            return await self._gap(item)
        if isinstance(item, Message):
            message = {
                "type": item.kind, "pattern": item.pattern, "channel": item.channel,
                "data": item.data,
            }  # fmt: skip
            if item.kind == "pmessage":
                handler = self.patterns.get(item.pattern)
            elif item.kind == "smessage":
                handler = self.shard_channels.get(item.channel)
            else:
                handler = self.channels.get(item.channel)
            if handler:
                result = handler(message)
                if inspect.isawaitable(result):
                    await result
                return None
            return message
        kind_of_ack = _UNSUBSCRIBE_KIND.get(item["type"])
        if kind_of_ack is not None:
            pending = self._pending(kind_of_ack)
            if item["channel"] in pending:
                pending.discard(item["channel"])
                self._handlers(kind_of_ack).pop(item["channel"], None)
        if item["type"] != "pong" and (ignore or self.ignore_subscribe_messages):
            return None
        return item

    async def _gap(self, gap: Reconnected) -> dict[str, Any] | None:
        on_gap = self.on_gap
        if callable(on_gap):
            result = on_gap(gap)
            if inspect.isawaitable(result):
                await result
            return None
        if on_gap == "message":
            return {"type": "reconnected", "pattern": None, "channel": None, "data": gap}
        raise _lost(gap)

    # --- closing --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Unsubscribe from everything and forget it (at once; the server is told in the
        background).  The object can subscribe again afterwards, as in redis-py.

        Another task waiting in :meth:`get_message`/:meth:`listen` gets ``ConnectionError``
        (as in redis-py), and one waiting in :meth:`subscribe` for the acknowledgement too
        (nothing was subscribed).  Dropped without ``aclose()``, a PubSub leaves its channels
        once garbage-collected (counted as ``abandoned`` in ``pubsub_statistics()``).

        Cancellation: it completes whatever happens (it never waits)."""
        self._closes += 1
        sub, self._sub = self._sub, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if sub is not None:
            self._hub.detach(sub)
        self._queue.clear()
        if self._waiting is not None:
            self._waiting.cancel()
        for kind in ("channel", "pattern", "shard"):
            self._server[kind].clear()
            self._leaving[kind].clear()
            self._handlers(kind).clear()
            self._pending(kind).clear()
        await anyio.lowlevel.checkpoint()

    async def reset(self) -> None:
        """redis-py's old name for :meth:`aclose`: deprecated there (since 5.0.1) and here,
        with the same ``DeprecationWarning``."""
        _deprecated("reset")
        await self.aclose()

    async def close(self) -> None:
        """redis-py's old name for :meth:`aclose`: deprecated there (since 5.0.1) and here,
        with the same ``DeprecationWarning``."""
        _deprecated("close")
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"<PubSub channels={list(self.channels)} patterns={list(self.patterns)}"
            f" shard_channels={list(self.shard_channels)} queued={len(self._queue)}>"
        )
