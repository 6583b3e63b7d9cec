"""What a subscriber holds: the events, and a subscription's buffer with its policy.

Theory of operation
-------------------
A :class:`Subscription` owns a bounded buffer of events.  The reader task of its connection
puts messages in (:func:`offer`, :func:`offer_blocking`), gap events (:func:`report_gap`) and,
once, the end (:func:`end`); consumers take them out.  The buffer is a plain deque: a consumer
takes an event in the same synchronous step in which it returns it, and checks for cancellation
only *before* taking, so a consumer cancelled or timed out leaves every event in place.

Every message routed to a subscription is accounted for: it is buffered (``received``), or
dropped and counted (``dropped``: by ``drop_oldest``/``drop_newest``, or while the
subscription is stopped by SlowConsumer), or lost with the connection inside a gap that a
:class:`Reconnected` event reports.  A message published before an ``unsubscribe()`` and read
after it is not delivered, and is counted in ``discarded``.  Gap events do not count against
the buffer's size and are never dropped: consecutive ones merge into one that spans them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel

from .._errors import SlowConsumer, TimeoutError

if TYPE_CHECKING:
    from ._hub import Hub, SubscriberConnection
    from ._wire import Kind

__all__ = [
    "Event", "Message", "Policy", "Reconnected", "Subscription", "discard_buffered", "end",
    "offer", "offer_blocking", "report_gap",
]  # fmt: skip

Policy = Literal["block", "drop_oldest", "drop_newest", "error", "unbounded"]
POLICIES = ("block", "drop_oldest", "drop_newest", "error", "unbounded")
_YIELD_EVERY = 64


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
    """Delivery was interrupted and has resumed: messages published in the gap may be lost.

    It follows every message delivered before the gap and precedes every one after it.  It
    comes after the subscription's connection broke and was restored (subscriptions sent
    again), and, for a supervised listener, after its subscription fell behind
    (SlowConsumer) and resumed.  Consecutive gaps arrive as one.

    Attributes:
        gap_start: ``time.time()`` when delivery stopped (the connection was found broken, or
            the subscription fell behind).
        gap_end: ``time.time()`` when delivery resumed.
        error: what interrupted it.
    """

    gap_start: float
    gap_end: float
    error: str


Event = Message | Reconnected


class _Ended(Exception):
    """Internal: the subscription was left (the consumer sees StopAsyncIteration)."""


class Subscription:
    """Messages for some channels and patterns: ``async for message in subscription``.

    Yields :class:`Message` and, after a gap (a reconnection), :class:`Reconnected`.  Raises
    :class:`SlowConsumer` if it fell behind under the ``error`` (or a timed-out ``block``)
    policy, and :class:`PoolClosed` once the pool has closed, each after the events already
    buffered.  :meth:`subscribe`/:meth:`unsubscribe` (and the ``p`` and ``s`` variants) change
    the set while it is open.

    Attributes:
        policy: what happens when the buffer is full (see ``RedisPool.subscribe``).
        block_timeout: with ``block``, seconds the reader waits for room.
        received: messages put into this subscription's buffer (less those an
            :meth:`unsubscribe` took out of it again, which count in ``discarded``).
        dropped: messages dropped (by ``drop_oldest``/``drop_newest``, or while stopped by
            SlowConsumer).
        discarded: messages for names this subscription unsubscribed from, published before
            :meth:`unsubscribe` and not consumed when it returned (buffered, or not yet read
            off the socket): not delivered, counted here.
        names: the channels, patterns and shard channels subscribed to, by kind.
    """

    def __init__(self, hub: Hub, *, buffer: int, policy: Policy, block_timeout: float) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if policy != "unbounded" and (
            isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1
        ):
            raise ValueError(f"buffer must be a positive number of messages, not {buffer!r}")
        if isinstance(block_timeout, bool) or not (
            isinstance(block_timeout, int | float) and block_timeout > 0
        ):
            raise ValueError(
                f"block_timeout must be a positive number of seconds, not {block_timeout!r}"
            )
        self._hub = hub
        self.policy = policy
        self.block_timeout = float(block_timeout)
        self._capacity = math.inf if policy == "unbounded" else buffer
        # The buffer.  Invariant: _messages == number of Message items in _items.
        self._items: deque[Event] = deque()
        self._messages = 0
        # Set once, when no more events will be put in: _Ended, SlowConsumer or PoolClosed.
        self._end: BaseException | None = None
        self._stopped_at: float | None = None  # time.time() when SlowConsumer stopped delivery
        self._readable: anyio.Event | None = None  # consumers wait on it (made on demand)
        self._writable: anyio.Event | None = None  # a blocked reader waits on it
        self._since_yield = 0
        self.names: dict[Kind, set[Any]] = {"channel": set(), "pattern": set(), "shard": set()}
        self.connection: SubscriberConnection | None = None  # set while attached (by the hub)
        self.received = 0
        self.dropped = 0
        self.discarded = 0

    # --- consuming ----------------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        # Cancellation is checked before taking, never after: an event taken is returned.
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._since_yield >= _YIELD_EVERY:
            # a busy consumer draining a backlog still lets other tasks run
            self._since_yield = 0
            await anyio.lowlevel.cancel_shielded_checkpoint()
        while not self._items:
            if self._end is not None:
                self._raise_end()
            await self._wait_readable()
            self._since_yield = 0
        self._since_yield += 1
        return self._take()

    async def get(self, timeout: float | None = None) -> Event:
        """The next event.

        Args:
            timeout: seconds to wait (None: forever; 0: only what is buffered now).

        Raises:
            TimeoutError: nothing arrived within ``timeout``.
            SlowConsumer, PoolClosed: as the iteration; StopAsyncIteration once left.

        Cancellation: a cancelled or timed-out get takes nothing; every event stays buffered.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while not self._items:
                if self._end is not None:
                    self._raise_end()
                await self._wait_readable()
            return self._take()
        raise TimeoutError(f"no message within {timeout}s")

    def take_buffered(self) -> list[Event]:
        """Take every event buffered now, without waiting; for a consumer that interleaves
        them with its own items in order (redis-py's PubSub API).  A stop or end stays for
        the next :meth:`get`."""
        taken = []
        while self._items:
            taken.append(self._take())
        return taken

    @property
    def buffered(self) -> int:
        """Events waiting to be consumed (messages and gap events)."""
        return len(self._items)

    @property
    def stopped(self) -> bool:
        """Whether :class:`SlowConsumer` stopped delivery (after the buffered events);
        :meth:`resume` starts it again."""
        return self._stopped_at is not None and isinstance(self._end, SlowConsumer)

    def resume(self) -> None:
        """After :class:`SlowConsumer`: deliver again.  A :class:`Reconnected` event comes
        first, covering the time delivery was stopped (the messages dropped meanwhile are
        counted in ``dropped``).

        Raises:
            RuntimeError: the subscription is not stopped by SlowConsumer (it was never
                stopped, or it was left, or the pool closed).
        """
        if not isinstance(self._end, SlowConsumer) or self._stopped_at is None:
            raise RuntimeError("this subscription was not stopped by SlowConsumer")
        if self.connection is None:  # pragma: no cover - leaving ends the stop (see end())
            raise RuntimeError("this subscription was left; subscribe again from the pool")
        error = f"{type(self._end).__name__}: {self._end}"
        self._end = None
        gap_start, self._stopped_at = self._stopped_at, None
        report_gap(self, Reconnected(gap_start, time.time(), error))

    def _take(self) -> Event:
        event = self._items.popleft()
        if type(event) is Message:
            self._messages -= 1
            if self._writable is not None and self._messages < self._capacity:
                self._writable.set()
                self._writable = None
        return event

    def _raise_end(self) -> None:
        end = self._end
        if isinstance(end, _Ended):
            raise StopAsyncIteration
        assert end is not None
        raise end

    async def _wait_readable(self) -> None:
        if self._readable is None:
            self._readable = anyio.Event()
        await self._readable.wait()

    def _wake_readers(self) -> None:
        if self._readable is not None:
            self._readable.set()
            self._readable = None

    # --- changing the set ---------------------------------------------------------------------

    async def subscribe(self, *channels: Any) -> None:
        """Add channels; returns once the server has acknowledged them.

        Cancellation: a subscribe cancelled before the acknowledgement is undone.
        """
        await self._hub.add(self, "channel", channels)

    async def psubscribe(self, *patterns: Any) -> None:
        """Add patterns; returns once the server has acknowledged them."""
        await self._hub.add(self, "pattern", patterns)

    async def ssubscribe(self, *channels: Any) -> None:
        """Add sharded channels (Redis >= 7); returns once the server has acknowledged them."""
        await self._hub.add(self, "shard", channels)

    async def unsubscribe(self, *channels: Any) -> None:
        """Remove channels (all when none are named).  Their messages stop at once: those
        not consumed yet (buffered, or published before this call and not yet read) are not
        delivered, and count in ``discarded``.  The server is told in the background."""
        await anyio.lowlevel.checkpoint()
        self._hub.remove(self, "channel", channels or tuple(self.names["channel"]))

    async def punsubscribe(self, *patterns: Any) -> None:
        """Remove patterns (all when none are named), as :meth:`unsubscribe`."""
        await anyio.lowlevel.checkpoint()
        self._hub.remove(self, "pattern", patterns or tuple(self.names["pattern"]))

    async def sunsubscribe(self, *channels: Any) -> None:
        """Remove sharded channels (all when none are named), as :meth:`unsubscribe`."""
        await anyio.lowlevel.checkpoint()
        self._hub.remove(self, "shard", channels or tuple(self.names["shard"]))

    def __repr__(self) -> str:
        names = {k: sorted(map(str, v)) for k, v in self.names.items() if v}
        return (
            f"<Subscription {names} policy={self.policy} received={self.received}"
            f" dropped={self.dropped} buffered={len(self._items)}>"
        )


# --- the reader's side (the connection's reader task calls these) -----------------------------


def offer(subscription: Subscription, message: Message) -> bool:
    """Put ``message`` in without waiting, as the policy says.  False: the policy is ``block``
    and the buffer is full (call :func:`offer_blocking`)."""
    sub = subscription
    if sub._end is not None:
        sub.dropped += sub._stopped_at is not None  # stopped by SlowConsumer: counted
        return True
    if sub._messages < sub._capacity:
        _append(sub, message)
        return True
    policy = sub.policy
    if policy == "block":
        return False
    sub.dropped += 1
    if policy == "drop_oldest":
        _evict_oldest_message(sub)
        _append(sub, message)
    elif policy == "error":
        _stop(sub, SlowConsumer("the subscription's buffer is full (policy 'error')"))
    return True


async def offer_blocking(subscription: Subscription, message: Message) -> bool:
    """Wait (at most ``block_timeout``) for room, then put ``message`` in; past that, stop the
    subscription with SlowConsumer so the others on its connection keep receiving.

    Returns whether it had to stop the subscription.  Leaving, or the pool closing, wakes it.
    """
    sub = subscription
    with anyio.move_on_after(sub.block_timeout):
        while sub._end is None and sub._messages >= sub._capacity:
            if sub._writable is None:
                sub._writable = anyio.Event()
            await sub._writable.wait()
        offer(sub, message)
        return False
    sub.dropped += 1
    _stop(
        sub,
        SlowConsumer(
            f"the subscription's buffer stayed full for block_timeout ({sub.block_timeout}s); "
            "it was stopped so the other subscriptions on its connection keep receiving"
        ),
    )
    return True


def report_gap(subscription: Subscription, gap: Reconnected) -> None:
    """Put a gap event in, whatever the buffer holds; it merges with a gap event just before
    it.  (A subscription stopped by SlowConsumer gets it when it resumes.)"""
    sub = subscription
    if sub._end is not None:
        return
    items = sub._items
    if items and type(items[-1]) is Reconnected:
        previous = items.pop()
        assert isinstance(previous, Reconnected)
        gap = Reconnected(previous.gap_start, gap.gap_end, gap.error)
    items.append(gap)
    sub._wake_readers()


def end(subscription: Subscription, error: BaseException | None = None) -> None:
    """No more events: after the buffered ones, consumers get ``error`` (StopAsyncIteration
    when None).  Leaving, or the pool closing, overrides a SlowConsumer stop: the
    subscription is over either way."""
    sub = subscription
    if sub._end is None or sub._stopped_at is not None:
        sub._end = _Ended() if error is None else error
        sub._stopped_at = None
    sub._wake_readers()
    if sub._writable is not None:
        sub._writable.set()
        sub._writable = None


def discard_buffered(subscription: Subscription, kind: Kind, keys: list[Any]) -> None:
    """Take the buffered messages of routes ``(kind, key)`` out of the buffer (unsubscribed
    from: not delivered); they move from ``received`` to ``discarded``."""
    sub = subscription
    wanted = set(keys)
    if not wanted or not sub._messages:
        return
    kept: deque[Event] = deque()
    for item in sub._items:
        if type(item) is Message and _route(item) == kind and _name(item) in wanted:
            sub._messages -= 1
            sub.received -= 1
            sub.discarded += 1
            continue
        if kept and type(item) is Reconnected and type(kept[-1]) is Reconnected:
            before = kept.pop()  # two gaps with nothing between them now arrive as one
            assert isinstance(before, Reconnected)
            assert isinstance(item, Reconnected)
            item = Reconnected(before.gap_start, item.gap_end, item.error)
        kept.append(item)
    sub._items = kept
    if sub._writable is not None and sub._messages < sub._capacity:
        sub._writable.set()
        sub._writable = None


def _route(message: Message) -> Kind:
    kind = message.kind
    return "pattern" if kind == "pmessage" else "shard" if kind == "smessage" else "channel"


def _name(message: Message) -> Any:
    return message.pattern if message.kind == "pmessage" else message.channel


def _append(sub: Subscription, message: Message) -> None:
    sub._items.append(message)
    sub._messages += 1
    sub.received += 1
    sub._wake_readers()


def _evict_oldest_message(sub: Subscription) -> None:
    items = sub._items
    for index, item in enumerate(items):
        if type(item) is Message:
            del items[index]
            sub._messages -= 1
            if 0 < index < len(items):  # two gaps with nothing between them now arrive as one
                before, after = items[index - 1], items[index]
                if isinstance(before, Reconnected) and isinstance(after, Reconnected):
                    del items[index]
                    items[index - 1] = Reconnected(before.gap_start, after.gap_end, after.error)
            return


def _stop(sub: Subscription, error: SlowConsumer) -> None:
    sub._hub.counters["slow_consumers"] += 1
    end(sub, error)
    sub._stopped_at = time.time()
