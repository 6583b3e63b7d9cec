"""A Hypothesis state machine for pub/sub over a real server, on asyncio and on trio.

Rules are synchronous; each drives the pool inside an anyio blocking portal (one event loop in
a helper thread), as in ``test_pool_machine.py``.  The machine holds a model of every
subscription (its routes over time, what its consumers took), of every message published (each
carries a unique sequence number) and of every fault it caused (CLIENT KILL, a server restart,
a server down or paused), and checks DESIGN.md invariant 9 after every step:

* each subscription's stream (what its consumers took, then what is buffered) has every message
  at most once, in publish order, only on a channel or pattern it asked for (and never one
  published after it last unsubscribed from it);
* every message it should see (published after its subscribe returned, before its unsubscribe
  or leave was called) is in it, or is counted in ``dropped``, or was published during a fault
  and a gap marker (Reconnected, or the end of the stream) stands where it would be;
* taken + buffered == received (- dropped, for drop_oldest): a consumer cancelled or timed out
  loses nothing; ``get(timeout=0)`` returns what is buffered;
* after a fault, every subscription attached through it gets a Reconnected event, and a
  Reconnected event once seen never disappears (drop_oldest evicts only messages);
* SlowConsumer, StopAsyncIteration and PoolClosed come only after what was buffered, and only
  when they should; closing the pool ends every consumer with PoolClosed, within a bound;
* leaving, unsubscribing and cancelling a listener take a bounded time, whatever the server is
  doing; ``sub.names`` and ``pubsub_statistics()`` agree with the model; a listener's handled,
  failures and restarts agree with what its handler did; the pool's block never ends by itself.

Waiting without timing assumptions: a *fence* is a throw-away subscription to a fresh channel on
the subscriber connection.  The server acknowledges it after every message it delivered to that
connection before, and the reader handles frames in order (including a ``block`` wait for room),
so once the fence is acknowledged every message published earlier has been routed: buffered,
dropped and counted, or lost in a gap (then the fence waits for the resubscription, and the gap
has been reported).  Every bound below only catches a hang.

Settings: ``PUBSUB_MACHINE_EXAMPLES`` and ``PUBSUB_MACHINE_STEPS`` (soak runs),
``PUBSUB_MACHINE_SHRINK=0`` (report the first failure as found), ``PUBSUB_MACHINE_STATS=1``
(print what the runs exercised).  The library bugs this machine found are fixed; each is a
deterministic regression test at the end of this file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fnmatch
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import anypool
import anypool._backoff as _backoff
from anypool import Message, PoolClosed, Reconnected, RedisPool, RestartPolicy, SlowConsumer
from anypool._pubsub import _hub
from anypool._pubsub._subscription import Subscription
from anypool.testing import RedisServer, find_valkey_server

from .backends import backend_params, start_portal

EXAMPLES = int(os.environ.get("PUBSUB_MACHINE_EXAMPLES", "30"))
STEPS = int(os.environ.get("PUBSUB_MACHINE_STEPS", "40"))

BOUND = 10.0  # seconds: catches a hang, never a slow machine
LEAVE_BOUND = 5.0  # leaving must not wait for anything like connect_timeout (BOUND)
CLOSE_BOUND = 10.0
MAX_SUBS = 5
MAX_LISTENERS = 2
MAX_CONSUMERS = 4
MAX_FAULTS = 3  # restarts + server downs, and pauses, per example (a start costs ~0.1 s)

CHANNELS = ("c0", "c1", "c2")
PATTERNS = ("c*", "c[01]", "*2", "z*")
SHARDS = ("c0", "c1")  # the same names: sharded channels are a namespace of their own
POLICIES = ("block", "drop_oldest", "drop_newest", "error", "unbounded")
NAMES = {"channel": CHANNELS, "pattern": PATTERNS, "shard": SHARDS}
# (policy, buffer, block_timeout): small buffers, so that every policy gets to act
SUBSCRIPTION_OPTIONS = st.tuples(
    st.sampled_from(POLICIES), st.sampled_from([1, 3, 1000]), st.sampled_from([0.05, 0.2])
)

Route = tuple[str, str]  # (kind, channel or pattern)

# What the machine saw, over a test (printed with PUBSUB_MACHINE_STATS=1): is it testing much?
SEEN: collections.Counter[str] = collections.Counter()


def text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


@dataclasses.dataclass
class Pub:
    seq: int
    channel: str
    sharded: bool
    known: bool = True  # PUBLISH returned (else it may or may not have happened)
    required: set[tuple[int, Route]] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True)
class Stopped:
    """In a stream: the consumer saw SlowConsumer (delivery stopped)."""

    error: BaseException


@dataclasses.dataclass(frozen=True)
class Ended:
    """In a stream: the consumer saw the end (StopAsyncIteration or PoolClosed)."""

    kind: type


@dataclasses.dataclass
class Window:
    """A fault (CLIENT KILL, restart, server down) until the fence after it: messages published
    since the fence before it may be lost, if a gap marker in the stream stands in their place."""

    start: int  # the fence sequence number when the fault happened
    fault_time: float  # time.time() just before the fault
    failures: int  # hub connection_failures before the fault
    affected: set[int]  # subscriptions attached when it happened
    end: int | None = None


@dataclasses.dataclass
class Consumer:
    mode: str
    limit: int
    future: Future[Any] | None = None
    scope: anyio.CancelScope | None = None
    got: int = 0
    timeouts: int = 0
    cancelled: bool = False


class SubModel:
    """What the machine knows of one subscription (or of a listener's subscription)."""

    def __init__(
        self, ident: int, sub: Subscription, cm: Any, policy: str, listener: Any = None
    ) -> None:
        self.ident = ident
        self.sub = sub
        self.cm = cm
        self.policy = policy
        self.listener = listener
        # route -> [start, end) intervals of sequence numbers while it was asked for; an empty
        # interval records a subscribe that was cancelled or refused
        self.intervals: dict[Route, list[list[int | None]]] = {}
        self.stream: list[Any] = []  # what consumers took, in order, with Stopped/Ended
        self.left = False  # left its block (a listener: cancelled)
        self.left_first = False  # left before the pool closed
        self.closed = False  # the pool closed while it was attached
        self.consumers: list[Consumer] = []
        # (gap_start, gap_end) of every Reconnected event seen so far
        self.gaps: set[tuple[float, float]] = set()
        # route -> [start, end): published before it was removed, maybe not routed by then
        self.unrouted_early: dict[Route, list[tuple[int, int]]] = {}
        # listeners only
        self.calls = 0
        self.raised = 0
        self.fail_next = 0
        self.stall: anyio.Event | None = None  # the handler waits on it (made by a rule)
        self.in_handler = False  # the handler is waiting on ``stall``

    @property
    def attached(self) -> bool:
        return not self.left and not self.closed

    def active(self) -> set[Route]:
        return {r for r, spans in self.intervals.items() if spans and spans[-1][1] is None}

    def open_route(self, route: Route, seq: int) -> None:
        spans = self.intervals.setdefault(route, [])
        if not spans or spans[-1][1] is not None:
            spans.append([seq, None])

    def close_route(self, route: Route, seq: int) -> None:
        spans = self.intervals.get(route)
        if spans and spans[-1][1] is None:
            spans[-1][1] = seq

    def tried_route(self, route: Route, seq: int) -> None:
        """A subscribe that did not happen (cancelled): an empty interval."""
        if route not in self.active():
            self.intervals.setdefault(route, []).append([seq, seq])

    def legal(self, route: Route, seq: int) -> bool:
        """May a message of ``seq`` arrive on ``route``?  Only if the subscription asked for
        the route at some point, and it was not published after the route was removed for the
        last time (unsubscribing stops delivery at once).  One published before the subscribe
        may arrive: the server had the name for another subscription on the connection, and
        the reader had not routed it yet when the route was added."""
        spans = self.intervals.get(route)
        if not spans:
            return False
        end = spans[-1][1]
        return end is None or seq < end

    def __repr__(self) -> str:
        kind = "listener" if self.listener else "sub"
        return f"<{kind} {self.ident} {self.policy} {sorted(self.active())}>"


def matches(route: Route, pub: Pub) -> bool:
    kind, name = route
    if pub.sharded:
        return kind == "shard" and name == pub.channel
    if kind == "channel":
        return name == pub.channel
    return kind == "pattern" and fnmatch.fnmatchcase(pub.channel, name)


class PubSubMachine(RuleBasedStateMachine):
    backend = "asyncio"
    server: RedisServer
    sharded = False  # the server has SSUBSCRIBE/SPUBLISH

    def __init__(self) -> None:
        super().__init__()
        self._exit = contextlib.ExitStack()
        self.portal = self._exit.enter_context(start_portal(self.backend))
        if not self.server.running:
            self.server.start()
        self.server_up = True
        self.paused = False  # SIGSTOP: the server answers nothing, its sockets stay open
        self.pauses = 0
        self.faults = 0
        self.redis: RedisPool | None = None
        self.pool_future: Future[Any] | None = None
        self.pool_open = False
        self.close_event: anyio.Event | None = None
        self.subs: list[SubModel] = []
        self.pubs: list[Pub] = []
        self.windows: list[Window] = []
        self.fence_seq = 0  # every message with a smaller sequence number has been routed
        self.fences = 0
        self.idents = 0
        self.leave_times: list[float] = []
        self.loop_errors: list[BaseException] = []  # the machine's checks that failed in a handler

    # --- helpers ------------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return len(self.pubs)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
        """Run ``fn`` in the event loop; a hang fails the test instead of the whole run."""
        future = self.portal.start_task_soon(fn, *args)
        try:
            return future.result(timeout)
        except BaseException:
            if not future.done():
                future.cancel()
                raise AssertionError(f"{fn!r} hung for {timeout}s") from None
            raise

    def kinds(self) -> tuple[str, ...]:
        return ("channel", "pattern", "shard") if self.sharded else ("channel", "pattern")

    def attached(self) -> list[SubModel]:
        return [sm for sm in self.subs if sm.attached]

    def plain(self) -> list[SubModel]:
        return [sm for sm in self.subs if sm.listener is None]

    def can_talk(self) -> bool:
        return self.pool_open and self.server_up and not self.paused

    def hub(self) -> Any:
        assert self.redis is not None
        return self.redis._pubsub

    def connection_failures(self) -> int:
        hub = self.hub()
        return 0 if hub is None else int(hub.counters["connection_failures"])

    # --- the fence ----------------------------------------------------------------------------

    def settle(self) -> None:
        """Fence: once it returns, every message published so far has been routed, and every
        gap caused so far has been reported."""
        assert self.can_talk()
        assert self.redis is not None
        redis = self.redis
        seq = self.seq
        self.fences += 1
        name = f"fence:{self.fences}"

        async def fence() -> None:
            hub = redis._pubsub
            if hub is None or not hub.connections:
                return  # nothing attached: nothing in flight for anyone
            with anyio.fail_after(BOUND * 2):
                async with redis.subscribe(name, policy="unbounded"):
                    pass
            self.check_gaps_reported(seq)

        self.call(fence)
        self.fence_seq = seq
        for window in self.windows:
            if window.end is None:
                window.end = seq

    def check_gaps_reported(self, seq: int) -> None:
        """In the loop, right after a fence: every subscription that was attached when its
        connection broke, and still is, has a Reconnected event after everything before the
        fault (or is stopped by SlowConsumer: it gets one when it resumes)."""
        failures = self.connection_failures()
        for window in self.windows:
            if window.end is not None or failures == window.failures:
                continue  # closed already, or nothing broke (e.g. nothing to kill)
            for sm in self.subs:
                if sm.ident not in window.affected or not sm.attached:
                    continue
                end = sm.sub._end
                if isinstance(end, SlowConsumer):
                    continue
                assert end is None, (sm, end)
                items = self.view(sm)
                seqs = [self.parse(sm, e)[1] if type(e) is Message else None for e in items]
                found = False
                for index, item in enumerate(items):
                    if isinstance(item, Reconnected) and item.gap_end >= window.fault_time:
                        after = [s for s in seqs[index + 1 :] if s is not None]
                        if all(s >= window.start for s in after):
                            found = True
                assert found, (
                    f"{sm} was attached when its connection broke (fault at seq "
                    f"{window.start}) but has no Reconnected event for it: {items[-8:]}"
                )

    def open_window(self, affected: set[int], failures: int, fault_time: float) -> None:
        for window in self.windows:
            if window.end is None:
                window.affected |= affected
                return
        self.windows.append(Window(self.fence_seq, fault_time, failures, set(affected)))

    # --- streams ------------------------------------------------------------------------------

    def view(self, sm: SubModel) -> list[Any]:
        """(In the loop.)  What the subscription's consumers took, then what is buffered, then
        how it ended, if it did."""
        items = list(sm.stream) + list(sm.sub._items)
        end = sm.sub._end
        if isinstance(end, SlowConsumer):
            if not (items and isinstance(items[-1], Stopped) and items[-1].error is end):
                items.append(Stopped(end))
        elif end is not None:
            kind = PoolClosed if isinstance(end, PoolClosed) else StopAsyncIteration
            if not (items and isinstance(items[-1], Ended)):
                items.append(Ended(kind))
        return items

    def parse(self, sm: SubModel, message: Message) -> tuple[Route, int]:
        """The route and sequence number of a delivered message; fails on a foreign one."""
        data, channel = text(message.data), text(message.channel)
        assert isinstance(data, str) and data.startswith("m") and data[1:].isdigit(), message
        seq = int(data[1:])
        assert seq < len(self.pubs), f"{sm} got a message never published: {message}"
        pub = self.pubs[seq]
        assert channel == pub.channel, (sm, message, pub)
        if message.kind == "message":
            assert message.pattern is None and not pub.sharded, (sm, message, pub)
            route: Route = ("channel", channel)
        elif message.kind == "pmessage":
            pattern = text(message.pattern)
            assert fnmatch.fnmatchcase(channel, pattern) and not pub.sharded, (sm, message)
            route = ("pattern", pattern)
        else:
            assert message.kind == "smessage" and pub.sharded, (sm, message, pub)
            route = ("shard", channel)
        return route, seq

    def observe(self, sm: SubModel, event: Any) -> None:
        """(In the loop.)  A consumer took ``event``."""
        assert not (sm.stream and isinstance(sm.stream[-1], Ended)), (sm, "event after the end")
        assert isinstance(event, Message | Reconnected), (sm, event)
        sm.stream.append(event)

    def observe_end(self, sm: SubModel, error: BaseException) -> None:
        """(In the loop.)  A consumer saw SlowConsumer, StopAsyncIteration or PoolClosed: only
        after everything buffered."""
        assert not sm.sub._items, (sm, error, "raised before what was buffered")
        if isinstance(error, SlowConsumer):
            # once left, StopAsyncIteration, even if it was stopped when it was left
            # (test_a_left_subscription_stays_ended)
            assert not sm.left_first, (sm, error, "after leaving")
            if not (sm.stream and isinstance(sm.stream[-1], Stopped)):
                sm.stream.append(Stopped(error))
            else:
                assert sm.stream[-1].error is error
            return
        kind = PoolClosed if isinstance(error, PoolClosed) else StopAsyncIteration
        expected = StopAsyncIteration if sm.left_first else PoolClosed
        assert not sm.attached and kind is expected, (sm, error, sm.left, sm.closed)
        if sm.stream and isinstance(sm.stream[-1], Ended):
            assert sm.stream[-1].kind is kind
        else:
            sm.stream.append(Ended(kind))

    def check_sub(self, sm: SubModel) -> None:
        """(In the loop.)  One subscription's invariants."""
        sub = sm.sub
        buffered = sum(type(e) is Message for e in sub._items)
        assert buffered == sub._messages, sm
        for a, b in zip(list(sub._items), list(sub._items)[1:], strict=False):
            assert not (type(a) is Reconnected and type(b) is Reconnected), "unmerged gaps"
        if sm.policy != "unbounded":
            assert buffered <= sub._capacity, sm
        items = self.view(sm)
        # a gap event is never dropped: one seen stays, or is merged into one that spans it
        # (two gaps with nothing left between them arrive as one)
        gaps = {(e.gap_start, e.gap_end) for e in items if type(e) is Reconnected}
        vanished = {
            (start, end) for start, end in sm.gaps
            if not any(s <= start and end <= e for s, e in gaps)
        }  # fmt: skip
        assert not vanished, (sm, "a Reconnected event vanished", vanished)
        sm.gaps = gaps
        taken = sum(type(e) is Message for e in sm.stream)
        # nothing buffered is lost: every message put in was taken or is still there
        if sm.policy == "drop_oldest":
            assert taken + buffered == sub.received - sub.dropped, (sm, taken, buffered)
        else:
            assert taken + buffered == sub.received, (sm, taken, buffered, sub.received)
        if sm.policy == "unbounded":
            assert sub.dropped == 0, sm
        # each message once, in publish order, only on a route the subscription asked for
        seen: set[tuple[Route, int]] = set()
        last, last_on = -1, dict[Route, int]()
        seqs: list[int | None] = []
        for item in items:
            if type(item) is Reconnected:
                assert item.gap_start <= item.gap_end, item
            if type(item) is not Message:
                seqs.append(None)
                continue
            route, seq = self.parse(sm, item)
            assert sm.legal(route, seq), f"{sm} got {item} (seq {seq}) it never asked for"
            assert (route, seq) not in seen, f"{sm} got {item} twice"
            seen.add((route, seq))
            assert seq >= last, f"{sm} got seq {seq} after {last}"
            assert seq > last_on.get(route, -1), f"{sm} got seq {seq} out of order on {route}"
            last, last_on[route] = seq, seq
            seqs.append(seq)
        # every message it should have seen (published before the last fence) is accounted for
        missing = [
            (route, pub.seq)
            for pub in self.pubs[: self.fence_seq]
            for ident, route in pub.required
            if ident == sm.ident
            and (route, pub.seq) not in seen
            and not any(a <= pub.seq < b for a, b in sm.unrouted_early.get(route, []))
        ]
        if not missing:
            return
        before_max, running = [], -1  # the largest seq before each item, the smallest after
        for s in seqs:
            before_max.append(running)
            running = max(running, -1 if s is None else s)
        after_min, running = [0] * len(seqs), 1 << 60
        for index in range(len(seqs) - 1, -1, -1):
            after_min[index] = running
            s = seqs[index]
            running = min(running, running if s is None else s)
        markers = [i for i, item in enumerate(items) if not isinstance(item, Message)]

        def in_a_gap(seq: int) -> bool:
            windows = [w for w in self.windows if w.start <= seq and (w.end is None or seq < w.end)]
            return bool(windows) and any(before_max[i] <= seq <= after_min[i] for i in markers)

        unexplained = [m for m in missing if not in_a_gap(m[1])]
        counted = sub.dropped + sub.discarded
        assert len(unexplained) <= counted, (
            f"{sm} lost messages it should have seen, beyond its {counted} counted drops "
            f"and outside any reported gap: {unexplained[:10]} (stream tail {items[-6:]})"
        )

    # --- rules: the pool ----------------------------------------------------------------------

    @initialize(
        protocol=st.sampled_from([2, 3]),
        decode=st.booleans(),
        first=st.lists(SUBSCRIPTION_OPTIONS, min_size=1, max_size=3),
        data=st.data(),
    )
    def open_pool(
        self,
        protocol: int,
        decode: bool,
        first: list[tuple[str, int, float]],
        data: st.DataObject,
    ) -> None:
        """Open the pool (RESP2 or RESP3, bytes or str) with a few subscriptions."""
        self.redis = redis = RedisPool.from_url(
            self.server.url,
            protocol=protocol,
            decode_responses=decode,
            connect_timeout=BOUND,  # the acknowledgement timeout: a hang, not a slow server
            reconnect_backoff=anypool.BackoffPolicy(0.01, 0.05, 0.1),
            max_size=4,
        )
        redis._pool._rand = JITTER.random  # see own_jitter()

        async def run_pool(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with redis:
                self.close_event = anyio.Event()
                task_status.started()
                await self.close_event.wait()

        self.pool_future, _ = self.portal.start_task(run_pool)
        self.pool_open = True
        for policy, buffer, block_timeout in first:
            self.new_subscription(data, policy, buffer, block_timeout, cancelled=False)

    @precondition(lambda self: self.pool_open)
    @rule()
    def close_pool(self) -> None:
        """Close mid-run (the server up, down or paused): every consumer ends with PoolClosed
        after what was buffered, in a bounded time, and leaving the pool raises nothing."""
        if self.can_talk():
            self.settle()
        self.close()

    def close(self) -> None:
        assert self.pool_future is not None and self.close_event is not None
        for sm in self.attached():
            sm.closed = True  # from now on, its consumers may see PoolClosed
        self.pool_open = False
        started = time.monotonic()
        self.call(self.close_event.set)
        self.pool_future.result(CLOSE_BOUND * 2)  # raises what left the pool's block
        elapsed = time.monotonic() - started
        assert elapsed < CLOSE_BOUND, f"closing the pool took {elapsed:.1f}s"
        assert self.redis is not None
        stats = self.redis.pubsub_statistics()
        assert (stats["connections"], stats["subscriptions"]) == (0, 0), stats

        async def consumers_end() -> None:
            with anyio.fail_after(BOUND):
                while any(not c.future.done() for sm in self.subs for c in sm.consumers):
                    await anyio.sleep(0.005)

        self.call(consumers_end)
        self.harvest()
        for sm in self.plain():
            self.call(self.drain, sm)
            if not sm.left_first:
                assert sm.stream and sm.stream[-1] == Ended(PoolClosed), sm

    # --- rules: subscriptions -----------------------------------------------------------------

    @precondition(lambda self: self.can_talk() and len(self.attached()) < MAX_SUBS)
    @rule(data=st.data(), options=SUBSCRIPTION_OPTIONS, cancelled=st.booleans())
    def subscribe(
        self, data: st.DataObject, options: tuple[str, int, float], cancelled: bool
    ) -> None:
        """``redis.(p|s)subscribe(...)``, entered with ``__aenter__``; or entered in a scope
        already cancelled (nothing is left behind)."""
        self.new_subscription(data, *options, cancelled=cancelled)

    @precondition(lambda self: self.can_talk() and len(self.attached()) < MAX_SUBS)
    @rule(data=st.data(), options=SUBSCRIPTION_OPTIONS)
    def subscribe_while_killed(self, data: st.DataObject, options: tuple[str, int, float]) -> None:
        """Subscribe, and ``CLIENT KILL TYPE pubsub`` while it waits for its acknowledgement:
        it completes with the resubscription (or before the kill)."""
        self.new_subscription(data, *options, cancelled=False, kill=True)

    def new_subscription(
        self,
        data: st.DataObject,
        policy: str,
        buffer: int,
        block_timeout: float,
        cancelled: bool,
        kill: bool = False,
    ) -> None:
        assert self.redis is not None
        kind = data.draw(st.sampled_from(self.kinds()))
        names = data.draw(st.lists(st.sampled_from(NAMES[kind]), min_size=1, max_size=2))
        method = {"channel": self.redis.subscribe, "pattern": self.redis.psubscribe,
                  "shard": self.redis.ssubscribe}[kind]  # fmt: skip
        cm = method(*names, buffer=buffer, policy=policy, block_timeout=block_timeout)

        async def enter() -> Subscription | None:
            with anyio.CancelScope() as scope:
                if cancelled:
                    scope.cancel()
                return await cm.__aenter__()
            return None

        async def enter_and_kill() -> Subscription | None:
            box: dict[str, Subscription | None] = {}

            async def subscribe() -> None:
                box["sub"] = await enter()

            async with anyio.create_task_group() as tg:
                tg.start_soon(subscribe)
                await anyio.lowlevel.checkpoint()  # it has routed its names, and queued them
                await self.kill_pubsub_clients()
            return box["sub"]

        seq = self.seq
        if kill:
            self.open_window({sm.ident for sm in self.attached()}, self.connection_failures(),
                             time.time())  # fmt: skip
        sub = self.call(enter_and_kill if kill else enter)
        if sub is None:
            assert cancelled
            return
        self.idents += 1
        sm = SubModel(self.idents, sub, cm, policy)
        for name in names:
            sm.open_route((kind, name), seq)
        self.subs.append(sm)

    @precondition(lambda self: self.can_talk() and any(not s.listener for s in self.attached()))
    @rule(data=st.data(), cancelled=st.booleans())
    def add_names(self, data: st.DataObject, cancelled: bool) -> None:
        """``sub.(p|s)subscribe(...)`` on an open subscription; cancelled: undone."""
        sm = data.draw(st.sampled_from([s for s in self.attached() if not s.listener]))
        kind = data.draw(st.sampled_from(self.kinds()))
        names = data.draw(st.lists(st.sampled_from(NAMES[kind]), min_size=1, max_size=2))
        method = {"channel": sm.sub.subscribe, "pattern": sm.sub.psubscribe,
                  "shard": sm.sub.ssubscribe}[kind]  # fmt: skip

        async def add() -> bool | None:
            with anyio.CancelScope() as scope:
                if cancelled:
                    scope.cancel()
                await method(*names)
            return scope.cancelled_caught

        seq = self.seq
        was_cancelled = self.call(add)
        if was_cancelled is None:
            return
        for name in names:
            if was_cancelled:
                sm.tried_route((kind, name), seq)
            else:
                sm.open_route((kind, name), seq)
        assert was_cancelled == cancelled

    def before_removal(
        self, sm: SubModel, routes: set[Route], settle_first: bool, *, leaving: bool = True
    ) -> None:
        """Leaving ends a subscription at once: what the reader has not routed yet, though
        published before, is owed nothing.  Fence first, or excuse what was published since
        the last fence on those routes.  (Unsubscribing while staying subscribed counts such
        messages in ``discarded``: test_unsubscribe_counts_messages_published_before_it.)"""
        if settle_first and self.can_talk():
            self.settle()
        elif leaving:
            for route in routes:
                sm.unrouted_early.setdefault(route, []).append((self.fence_seq, self.seq))

    @precondition(lambda self: self.pool_open and any(not s.listener for s in self.attached()))
    @rule(data=st.data(), every=st.booleans(), settle_first=st.booleans())
    def remove_names(self, data: st.DataObject, every: bool, settle_first: bool) -> None:
        """``sub.(p|s)unsubscribe(...)``: names, or all of a kind."""
        sm = data.draw(st.sampled_from([s for s in self.attached() if not s.listener]))
        kind = data.draw(st.sampled_from(self.kinds()))
        names = [] if every else data.draw(st.lists(st.sampled_from(NAMES[kind]), min_size=1))
        method = {"channel": sm.sub.unsubscribe, "pattern": sm.sub.punsubscribe,
                  "shard": sm.sub.sunsubscribe}[kind]  # fmt: skip
        gone = {r for r in sm.active() if r[0] == kind and (every or r[1] in names)}
        self.before_removal(sm, gone, settle_first, leaving=False)
        seq = self.seq

        async def remove() -> float:
            started = anyio.current_time()
            await method(*names)
            return anyio.current_time() - started

        elapsed = self.call(remove)
        assert elapsed < LEAVE_BOUND, f"unsubscribing took {elapsed:.1f}s"
        for route in gone:
            sm.close_route(route, seq)

    @precondition(lambda self: any(not s.listener and not s.left for s in self.subs))
    @rule(
        data=st.data(),
        how=st.sampled_from(["exit", "error", "cancelled"]),
        settle_first=st.booleans(),
    )
    def leave(self, data: st.DataObject, how: str, settle_first: bool) -> None:
        """Exit a subscription's block: normally, with an error, or in a cancelled scope.
        Bounded whatever the server is doing (and the reader: it may be waiting for room in
        this very buffer); also after the pool closed."""
        sm = data.draw(st.sampled_from([s for s in self.subs if not s.listener and not s.left]))
        self.before_removal(sm, sm.active(), settle_first)
        seq = self.seq

        async def exit_block() -> float:
            started = anyio.current_time()
            with anyio.CancelScope() as scope:
                if how == "cancelled":
                    scope.cancel()
                if how == "error":
                    error = RuntimeError("the block failed")
                    assert not await sm.cm.__aexit__(RuntimeError, error, None)
                else:
                    await sm.cm.__aexit__(None, None, None)
            return anyio.current_time() - started

        if sm.attached:
            sm.left_first = True
        sm.left = True  # from now on, its consumers may see the end
        for route in list(sm.active()):
            sm.close_route(route, seq)
        elapsed = self.call(exit_block)
        self.leave_times.append(elapsed)
        assert elapsed < LEAVE_BOUND, f"leaving took {elapsed:.1f}s"
        assert sm.sub.connection is None

    # --- rules: publishing --------------------------------------------------------------------

    @precondition(lambda self: self.can_talk())
    @rule(
        channel=st.sampled_from(CHANNELS),
        count=st.integers(1, 6),
        sharded=st.booleans(),
        then_settle=st.booleans(),
    )
    def publish(self, channel: str, count: int, sharded: bool, then_settle: bool) -> None:
        """PUBLISH (or SPUBLISH) ``count`` messages, one by one or in a pipeline."""
        assert self.redis is not None
        redis = self.redis
        sharded = sharded and self.sharded and channel in SHARDS
        pubs = []
        for _ in range(count):
            pub = Pub(self.seq, channel, sharded)
            for sm in self.attached():
                for route in sm.active():
                    if matches(route, pub):
                        pub.required.add((sm.ident, route))
            self.pubs.append(pub)
            pubs.append(pub)
        verb = "SPUBLISH" if sharded else "PUBLISH"

        async def send() -> None:
            if count == 1:
                await redis.execute_command(verb, channel, f"m{pubs[0].seq}")
                return
            pipe = redis.pipeline(transaction=False)
            for pub in pubs:
                pipe.execute_command(verb, channel, f"m{pub.seq}")
            await pipe.execute()

        try:
            self.call(send)
        except (anypool.ConnectionError, anypool.TimeoutError):
            # a pooled connection the restart broke: they may or may not have been published
            for pub in pubs:
                pub.known = False
                pub.required.clear()
        if then_settle:
            self.settle()

    @precondition(lambda self: self.can_talk())
    @rule(channel=st.sampled_from(CHANNELS), count=st.integers(2, 12), sharded=st.booleans())
    def publish_burst(self, channel: str, count: int, sharded: bool) -> None:
        """More messages than small buffers hold (a second rule: publishing is most of what
        happens)."""
        self.publish(channel, count, sharded, then_settle=False)

    @precondition(lambda self: self.can_talk())
    @rule()
    def settle_now(self) -> None:
        self.settle()

    @rule(seconds=st.sampled_from([0, 0.01, 0.05]))
    def let_time_pass(self, seconds: float) -> None:
        """The loop runs on its own for a while (what the reader and consumers do then)."""
        self.call(anyio.sleep, seconds)

    # --- rules: consumers ---------------------------------------------------------------------

    async def drain(self, sm: SubModel) -> int:
        for taken in range(100_000):
            buffered = bool(sm.sub._items)
            try:
                event = await sm.sub.get(timeout=0)
            except anypool.TimeoutError:
                # (what arrived while it looked is not taken, and stays buffered)
                assert not buffered, "get(timeout=0) took nothing though events were buffered"
                return taken
            except (SlowConsumer, PoolClosed, StopAsyncIteration) as error:
                self.observe_end(sm, error)
                return taken
            self.observe(sm, event)
        raise AssertionError("drain did not end")

    @precondition(lambda self: self.plain())
    @rule(data=st.data(), one=st.booleans())
    def consume_nowait(self, data: st.DataObject, one: bool) -> None:
        """``get(timeout=0)``: one event, or everything buffered."""
        sm = data.draw(st.sampled_from(self.plain()))

        async def get_one() -> None:
            buffered = bool(sm.sub._items)
            try:
                event = await sm.sub.get(timeout=0)
            except anypool.TimeoutError:
                assert not buffered, "get(timeout=0) took nothing though events were buffered"
            except (SlowConsumer, PoolClosed, StopAsyncIteration) as error:
                self.observe_end(sm, error)
            else:
                self.observe(sm, event)

        if one:
            self.call(get_one)
        else:
            self.call(self.drain, sm)

    # A consumer counts until it is cancelled, finished or not: preconditions must not depend
    # on timing, or Hypothesis cannot replay what it found.
    @precondition(
        lambda self: (
            sum(len(s.consumers) for s in self.subs) < MAX_CONSUMERS
            and any(not s.listener and len(s.consumers) < 2 for s in self.subs)
        )
    )
    @rule(
        data=st.data(),
        mode=st.sampled_from(["iterate", "get", "poll"]),
        limit=st.integers(1, 8),
    )
    def start_consumer(self, data: st.DataObject, mode: str, limit: int) -> None:
        """A task consuming up to ``limit`` events: ``async for``, ``get()``, or
        ``get(timeout=0.01)`` in a loop."""
        sm = data.draw(
            st.sampled_from([s for s in self.subs if not s.listener and len(s.consumers) < 2])
        )
        consumer = Consumer(mode, limit)

        async def consume(*, task_status: anyio.abc.TaskStatus[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                task_status.started(scope)
                try:
                    if mode == "iterate":
                        async for event in sm.sub:
                            self.observe(sm, event)
                            consumer.got += 1
                            if consumer.got >= limit:
                                return
                        self.observe_end(sm, StopAsyncIteration())
                    elif mode == "get":
                        while consumer.got < limit:
                            self.observe(sm, await sm.sub.get())
                            consumer.got += 1
                    else:
                        for _ in range(200):
                            try:
                                event = await sm.sub.get(timeout=0.01)
                            except anypool.TimeoutError:
                                consumer.timeouts += 1
                                continue
                            self.observe(sm, event)
                            consumer.got += 1
                            if consumer.got >= limit:
                                return
                except (SlowConsumer, PoolClosed, StopAsyncIteration) as error:
                    self.observe_end(sm, error)

        consumer.future, consumer.scope = self.portal.start_task(consume)
        sm.consumers.append(consumer)

    @precondition(lambda self: any(s.consumers for s in self.subs))
    @rule(data=st.data())
    def cancel_consumer(self, data: st.DataObject) -> None:
        """Cancel a consumer by its scope, mid-iteration (it loses nothing buffered)."""
        consumer = data.draw(st.sampled_from([c for s in self.subs for c in s.consumers]))
        assert consumer.scope is not None and consumer.future is not None
        self.call(consumer.scope.cancel)
        consumer.cancelled = True
        consumer.future.result(BOUND)
        for sm in self.subs:
            if consumer in sm.consumers:
                sm.consumers.remove(consumer)

    def harvest(self) -> None:
        """A consumer that failed is a bug (in the library or in the machine)."""
        for sm in self.subs:
            for consumer in sm.consumers:
                assert consumer.future is not None
                if consumer.future.done():
                    consumer.future.result()
        if self.loop_errors:
            raise self.loop_errors[0]

    def resumable(self) -> list[SubModel]:
        # a subscription that was left cannot be resumed (test_a_left_subscription_...)
        return self.plain()

    @precondition(lambda self: self.resumable())
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """``sub.resume()``: only after SlowConsumer, while attached (then a Reconnected event
        comes first); else RuntimeError."""
        sm = data.draw(st.sampled_from(self.resumable()))

        async def resume() -> tuple[bool, bool]:
            stopped = isinstance(sm.sub._end, SlowConsumer)
            try:
                sm.sub.resume()
            except RuntimeError:
                return stopped, False
            assert sm.sub._end is None and type(sm.sub._items[-1]) is Reconnected
            return stopped, True

        stopped, resumed = self.call(resume)
        assert resumed == (stopped and sm.attached), (sm, stopped, resumed)

    # --- rules: faults ------------------------------------------------------------------------

    @precondition(lambda self: self.can_talk())
    @rule()
    def kill_connection(self) -> None:
        """``CLIENT KILL TYPE pubsub`` from the pool itself."""
        affected = {sm.ident for sm in self.attached()}
        failures, fault_time = self.connection_failures(), time.time()
        self.open_window(affected, failures, fault_time)

        self.call(self.kill_pubsub_clients)

    async def kill_pubsub_clients(self) -> int:
        assert self.redis is not None
        for attempt in range(3):
            try:
                return int(await self.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub"))
            except anypool.ConnectionError:  # a pooled connection a restart broke
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @precondition(lambda self: self.can_talk() and self.faults < MAX_FAULTS)
    @rule()
    def restart_server(self) -> None:
        """SIGKILL the server and start it again on the same port (empty)."""
        self.faults += 1
        self.open_window({sm.ident for sm in self.attached()}, self.connection_failures(),
                         time.time())  # fmt: skip
        self.server.restart()

    @precondition(lambda self: self.can_talk() and self.faults < MAX_FAULTS)
    @rule()
    def kill_server(self) -> None:
        """SIGKILL the server and leave it down: only consuming, leaving, unsubscribing and
        closing happen until it is back."""
        self.faults += 1
        self.open_window({sm.ident for sm in self.attached()}, self.connection_failures(),
                         time.time())  # fmt: skip
        self.server.kill()
        self.server_up = False

    @precondition(lambda self: self.can_talk() and self.pauses < MAX_FAULTS)
    @rule()
    def pause_server(self) -> None:
        """SIGSTOP the server: a hung host.  Only consuming, leaving and unsubscribing happen
        until it resumes (nothing breaks: the keepalive is far off)."""
        self.pauses += 1
        self.server.pause()
        self.paused = True

    @precondition(lambda self: self.paused)
    @rule()
    def resume_server(self) -> None:
        self.server.resume()
        self.paused = False

    @precondition(lambda self: not self.server_up)
    @rule()
    def start_server(self) -> None:
        self.server.start()
        self.server_up = True

    # --- rules: listeners ---------------------------------------------------------------------

    @precondition(
        lambda self: (
            self.can_talk()
            and sum(s.listener is not None and s.attached for s in self.subs) < MAX_LISTENERS
        )
    )
    @rule(
        channels=st.lists(st.sampled_from(CHANNELS), max_size=2, unique=True),
        patterns=st.lists(st.sampled_from(PATTERNS), max_size=2, unique=True),
        policy=st.sampled_from(POLICIES),
        buffer=st.sampled_from([1, 3, 1000]),
        block_timeout=st.sampled_from([0.05, 0.2]),
    )
    def start_listener(
        self,
        channels: list[str],
        patterns: list[str],
        policy: str,
        buffer: int,
        block_timeout: float,
    ) -> None:
        """``await redis.start_listener(handler, ...)`` with a handler the machine can make
        fail (restarted within a budget too large to run out) or stall."""
        assert self.redis is not None
        redis = self.redis
        if not channels and not patterns:  # nothing to listen to: refused at once
            with pytest.raises(ValueError, match="channels or patterns"):
                self.call(partial(redis.start_listener, print))
            return
        self.idents += 1
        sm = SubModel(self.idents, None, None, policy)  # type: ignore[arg-type]

        async def handler(event: Message | Reconnected) -> None:
            try:
                self.observe(sm, event)
            except BaseException as error:  # the listener would count it as a failure
                self.loop_errors.append(error)
                raise
            sm.calls += 1
            if sm.fail_next:
                sm.fail_next -= 1
                sm.raised += 1
                raise ValueError("the handler failed (on purpose)")
            stall = sm.stall
            if stall is not None:
                sm.in_handler = True
                await stall.wait()
                sm.in_handler = False

        async def start() -> tuple[Any, Subscription]:
            def subs() -> set[Subscription]:
                hub = redis._pubsub
                if hub is None:
                    return set()
                return {s for c in hub.connections for s in c.subscriptions}

            before = subs()
            listener = await redis.start_listener(
                handler, channels=channels, patterns=patterns, buffer=buffer, policy=policy,
                block_timeout=block_timeout,
                restart=RestartPolicy(max_restarts=1_000_000, window=60, delay=0),
            )  # fmt: skip
            (sub,) = subs() - before
            return listener, sub

        for name in channels:
            sm.open_route(("channel", name), self.seq)
        for name in patterns:
            sm.open_route(("pattern", name), self.seq)
        sm.listener, sm.sub = self.call(start)
        self.subs.append(sm)

    def listeners(self) -> list[SubModel]:
        return [s for s in self.subs if s.listener is not None and s.attached]

    @precondition(lambda self: self.can_talk() and any(s.stall is None for s in self.listeners()))
    @rule(data=st.data(), count=st.integers(2, 12))
    def listener_falls_behind(self, data: st.DataObject, count: int) -> None:
        """Stall a handler, publish more than its buffer holds, release it: under ``block`` or
        ``error`` its subscription is stopped, and the listener resumes it (a Reconnected
        event, its budget untouched)."""
        sm = data.draw(st.sampled_from([s for s in self.listeners() if s.stall is None]))
        routes = sm.active()
        channels = [c for c in CHANNELS if any(matches(r, Pub(0, c, False)) for r in routes)]
        self.stall_listener_now(sm)
        self.publish(data.draw(st.sampled_from(channels or ["c0"])), count, False, True)
        self.release(sm)

    @precondition(lambda self: self.listeners())
    @rule(data=st.data(), times=st.integers(1, 3))
    def fail_listener(self, data: st.DataObject, times: int) -> None:
        """The handler raises on its next ``times`` events."""
        data.draw(st.sampled_from(self.listeners())).fail_next += times

    @precondition(lambda self: any(s.stall is None for s in self.listeners()))
    @rule(data=st.data())
    def stall_listener(self, data: st.DataObject) -> None:
        """From its next event on, the handler waits until the machine releases it."""
        sm = data.draw(st.sampled_from([s for s in self.listeners() if s.stall is None]))
        self.stall_listener_now(sm)

    def stall_listener_now(self, sm: SubModel) -> None:
        sm.stall = self.call(anyio.Event)

    @precondition(lambda self: any(s.stall is not None for s in self.listeners()))
    @rule(data=st.data())
    def release_listener(self, data: st.DataObject) -> None:
        sm = data.draw(st.sampled_from([s for s in self.listeners() if s.stall is not None]))
        self.release(sm)

    def release(self, sm: SubModel) -> None:
        stall, sm.stall = sm.stall, None
        if stall is not None:
            self.call(stall.set)

    def release_stalls(self) -> None:
        for sm in self.subs:
            self.release(sm)

    @precondition(lambda self: self.listeners())
    @rule(data=st.data(), settle_first=st.booleans())
    def cancel_listener(self, data: st.DataObject, settle_first: bool) -> None:
        """``listener.cancel()``: it leaves its subscription, at once."""
        sm = data.draw(st.sampled_from(self.listeners()))
        self.before_removal(sm, sm.active(), settle_first)
        seq = self.seq

        async def cancel() -> float:
            started = anyio.current_time()
            sm.listener.cancel()
            with anyio.fail_after(BOUND):
                while sm.sub.connection is not None:
                    await anyio.sleep(0.001)
            return anyio.current_time() - started

        sm.left = sm.left_first = True
        for route in list(sm.active()):
            sm.close_route(route, seq)
        elapsed = self.call(cancel)
        assert elapsed < LEAVE_BOUND, f"cancelling a listener took {elapsed:.1f}s"

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def pool_is_up(self) -> None:
        SEEN["steps"] += 1
        if self.pool_open:
            assert self.pool_future is not None
            if self.pool_future.done():
                self.pool_future.result()
                raise AssertionError("the pool's block ended by itself")

    @invariant()
    def subscriptions_are_consistent(self) -> None:
        if self.redis is None:
            return
        self.harvest()

        async def check() -> None:
            for sm in self.subs:
                self.check_sub(sm)
                if sm.attached:
                    names = {k: {text(n) for n in v} for k, v in sm.sub.names.items()}
                    expected: dict[str, set[str]] = {"channel": set(), "pattern": set(),
                                                     "shard": set()}  # fmt: skip
                    for kind, name in sm.active():
                        expected[kind].add(name)
                    connection = sm.sub.connection
                    assert names == expected, (
                        sm, names, expected, connection and connection.routes,
                        connection and connection.confirmed, connection and connection._outbox,
                        connection and list(connection._book._sent),
                    )  # fmt: skip
                if sm.listener is not None:
                    stats = sm.listener.statistics()
                    assert stats["failures"] == sm.raised, (stats, sm.raised)
                    assert stats["restarts"] in (sm.raised, sm.raised - 1), stats
                    if sm.attached:
                        assert stats["handled"] == sm.calls - sm.raised - sm.in_handler, stats
            if self.pool_open:
                assert self.redis is not None
                stats = self.redis.pubsub_statistics()
                attached = len(self.attached())
                assert stats["subscriptions"] == attached, (stats, self.attached())
                assert stats["connections"] == min(1, attached), stats

        self.call(check)

    def tally(self) -> None:
        """(In the loop, at the end.)  Count what this example exercised."""
        SEEN["examples"] += 1
        SEEN["messages published"] += len(self.pubs)
        SEEN["messages of unknown fate"] += sum(not p.known for p in self.pubs)
        SEEN["faults"] += len(self.windows)
        SEEN["fences"] += self.fences
        required = collections.Counter(i for p in self.pubs for i, _ in p.required)
        for sm in self.subs:
            SEEN["listeners" if sm.listener else "subscriptions"] += 1
            SEEN[f"policy {sm.policy}"] += 1
            items = self.view(sm)
            SEEN["deliveries required"] += required[sm.ident]
            SEEN["deliveries observed"] += sum(type(e) is Message for e in items)
            SEEN["Reconnected events"] += sum(type(e) is Reconnected for e in items)
            SEEN["SlowConsumer stops seen"] += sum(type(e) is Stopped for e in items)
            SEEN["drops counted"] += sm.sub.dropped
            SEEN[f"drops counted under {sm.policy}"] += sm.sub.dropped
            SEEN["ended with PoolClosed"] += Ended(PoolClosed) in items
            SEEN["ended with StopAsyncIteration"] += Ended(StopAsyncIteration) in items
            if sm.listener:
                SEEN["listener failures"] += sm.listener.failures
                SEEN["listener overflows"] += sm.listener.overflows
        SEEN["leaves"] += len(self.leave_times)
        SEEN["slowest leave (ms)"] = max(
            SEEN["slowest leave (ms)"], int(1000 * max(self.leave_times, default=0))
        )

    def teardown(self) -> None:
        try:
            if self.redis is not None:
                self.release_stalls()
                if self.paused:
                    self.resume_server()
                if self.pool_open:
                    if not self.server_up:
                        self.server.start()
                        self.server_up = True
                    self.settle()
                    for sm in self.plain()[::2]:  # what they end with before the close
                        self.call(self.drain, sm)
                    self.subscriptions_are_consistent()
                    self.close()
                self.subscriptions_are_consistent()
                self.call(self.tally)
        except BaseException as error:
            # whatever is left in the loop (the pool, consumers) is cancelled, not waited for
            with contextlib.suppress(BaseException):
                self._exit.__exit__(type(error), error, error.__traceback__)
            raise
        else:
            self._exit.close()
        finally:
            if self.paused:
                self.server.resume()
            if not self.server.running:
                self.server.start()


@pytest.fixture(autouse=True)
def quiet_pubsub_logs() -> Iterator[None]:
    """Handlers fail and connections break on purpose, hundreds of times."""
    logger = logging.getLogger("anypool.pubsub")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# Backoff jitter from the event loop's thread must not touch the global random module while
# Hypothesis draws in the machine's thread (it seeds it, and warns when a draw changed it).
JITTER = random.Random(0)


@pytest.fixture
def own_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    def backoff_delay(attempt: int, **options: Any) -> float:
        return _backoff.backoff_delay(attempt, rand=JITTER.random, **options)

    monkeypatch.setattr(_hub, "backoff_delay", backoff_delay)


@pytest.fixture(scope="module")
def redis_machine_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def valkey_machine_server() -> Iterator[RedisServer]:
    with RedisServer(binary=find_valkey_server()) as server:
        yield server


machine_settings = settings(
    max_examples=EXAMPLES,
    # no explain phase (it replays the failure many times, at a second or more each); set
    # PUBSUB_MACHINE_SHRINK=0 to report the first failure as found
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    + ([Phase.shrink] if os.environ.get("PUBSUB_MACHINE_SHRINK") != "0" else []),
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.timeout(max(300, EXAMPLES * STEPS))
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("flavour", ["redis", "valkey"])
@pytest.mark.usefixtures("own_jitter")
def test_pubsub_machine(backend: str, flavour: str, request: pytest.FixtureRequest) -> None:
    class Machine(PubSubMachine):
        pass

    Machine.backend = backend
    Machine.server = request.getfixturevalue(f"{flavour}_machine_server")
    Machine.sharded = flavour == "valkey"
    SEEN.clear()
    started = time.monotonic()
    machine_settings(Machine).TestCase("runTest").runTest()
    if os.environ.get("PUBSUB_MACHINE_STATS") == "1":
        print(f"\n{flavour} on {backend}: {time.monotonic() - started:.1f}s")
        for key, count in sorted(SEEN.items()):
            print(f"  {key}: {count}")


# --- what the machine found: library bugs (all fixed), each as a deterministic regression test --


async def _wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND):
        while not condition():
            await anyio.sleep(0.005)


async def _fence(redis: RedisPool, name: str) -> None:
    """Every message published before this returns has been routed (see the module doc)."""
    async with redis.subscribe(name):
        pass


@pytest.mark.anyio
async def test_cancelled_subscribe_to_a_shared_name_is_undone(
    redis_machine_server: RedisServer,
) -> None:
    """Machine: subscribe(["a"]), subscribe(["b"]), add_names(sub 2, "a", cancelled=True)."""
    async with (
        RedisPool.from_url(redis_machine_server.url) as redis,
        redis.subscribe("shared") as first,
        redis.subscribe("own") as second,
    ):
        with anyio.CancelScope() as scope:
            scope.cancel()
            await second.subscribe("shared")
        assert scope.cancelled_caught  # the call was cancelled: "what it added is removed"
        await redis.publish("shared", "not for the second subscription")
        await _fence(redis, "fence")
        assert (await first.get(timeout=0)).data == b"not for the second subscription"  # type: ignore[union-attr]
        assert second.names["channel"] == {b"own"}  # fails: {b"own", b"shared"}
        assert second.received == 0  # and it gets the message


@pytest.mark.anyio
async def test_a_left_subscription_stays_ended(redis_machine_server: RedisServer) -> None:
    """Machine: a subscription with policy error and buffer 1 overflows; leave it; consume."""
    async with RedisPool.from_url(redis_machine_server.url) as redis:
        async with redis.subscribe("x", buffer=1, policy="error") as sub:
            await redis.publish("x", "1")
            await redis.publish("x", "2")  # the buffer is full: SlowConsumer
            await _wait_until(lambda: sub.dropped == 1)
        assert (await sub.get(timeout=0)).data == b"1"  # type: ignore[union-attr]
        with pytest.raises(StopAsyncIteration):  # "StopAsyncIteration once left"
            await sub.get(timeout=0)  # fails: SlowConsumer


@pytest.mark.anyio
async def test_a_left_subscription_cannot_be_resumed(redis_machine_server: RedisServer) -> None:
    """Found by the machine: as above, then resume(sub 1), consume."""
    async with RedisPool.from_url(redis_machine_server.url) as redis:
        async with redis.subscribe("x", buffer=1, policy="error") as sub:
            await redis.publish("x", "1")
            await redis.publish("x", "2")
            await _wait_until(lambda: sub.dropped == 1)
        assert (await sub.get(timeout=0)).data == b"1"  # type: ignore[union-attr]
        try:
            sub.resume()  # should raise RuntimeError: it was left
        except RuntimeError:
            return
        assert isinstance(await sub.get(timeout=0), Reconnected)
    with anyio.move_on_after(1) as hung:
        await sub.get()  # the pool is closed: PoolClosed or StopAsyncIteration, at once
    assert not hung.cancelled_caught, "get() on a resumed left subscription waits forever"


@pytest.mark.anyio
async def test_unsubscribe_counts_messages_published_before_it(
    redis_machine_server: RedisServer,
) -> None:
    """Found by the machine: a message published before unsubscribe() and read after it
    vanished without trace.  It is not delivered (unsubscribing stops delivery at once) and
    is counted in ``discarded``."""
    async with (
        RedisPool.from_url(redis_machine_server.url) as redis,
        redis.subscribe("full", buffer=1, policy="block", block_timeout=30) as full,
        redis.subscribe("news", "other") as news,
    ):
        await redis.publish("full", "0")  # fills its buffer
        await redis.publish("full", "1")  # the reader waits for room (up to 30 s)
        await redis.publish("news", "published before the unsubscribe")
        await _wait_until(lambda: redis.pubsub_statistics()["messages"] >= 2)
        await news.unsubscribe("news")
        assert (await full.get(timeout=0)).data == b"0"  # type: ignore[union-attr]
        await _fence(redis, "fence")  # the reader has routed everything published so far
        assert full.received == 2
        assert (news.received, news.buffered, news.discarded) == (0, 0, 1)


@pytest.mark.anyio
async def test_gaps_merge_under_drop_oldest(redis_machine_server: RedisServer) -> None:
    """Machine: a drop_oldest subscription with buffer 1; publish, kill_connection, publish,
    kill_connection, publish; consume."""
    async with (
        RedisPool.from_url(
            redis_machine_server.url, reconnect_backoff=anypool.BackoffPolicy(0.01, 0.05, 0.1)
        ) as redis,
        redis.subscribe("g", buffer=1, policy="drop_oldest") as sub,
    ):
        for i, data in enumerate(["a", "b", "c"]):
            if i:
                await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                await _fence(redis, f"fence{i}")  # resubscribed, the gap reported
            await redis.publish("g", data)
            await _fence(redis, f"fence{i}b")
        events = [await sub.get(timeout=0) for _ in range(sub.buffered)]
        kinds = [type(e).__name__ for e in events]
        assert kinds == ["Reconnected", "Message"], kinds  # fails: two Reconnected in a row
        assert sub.dropped == 2
