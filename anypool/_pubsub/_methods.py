"""The pub/sub methods of a client (``RedisPool``, ``RedisCluster``): one API over the hubs the
client provides (a pool has one hub; a cluster has one for classic channels and one per slot
of sharded channels)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from ._hub import Hub, subscription
from ._listener import Listener, RestartPolicy
from ._redispy import PubSub
from ._subscription import Event, Policy, Reconnected, Subscription
from ._wire import Kind

__all__ = ["PubSubMethods"]


class PubSubMethods:
    """Pub/sub for a client that provides :meth:`_pubsub_hub`, :meth:`_pubsub_hubs` and
    :meth:`_start_pubsub_task`."""

    # --- what the client provides ---------------------------------------------------------------

    def _pubsub_hub(self, kind: Kind, names: tuple[Any, ...]) -> Hub:
        """The hub that serves a subscription to ``names`` of ``kind``."""
        raise NotImplementedError

    def _pubsub_hubs(self) -> list[Hub]:
        """Every hub made so far."""
        raise NotImplementedError

    async def _start_pubsub_task(
        self, func: Callable[..., Coroutine[Any, Any, Any]], name: str
    ) -> Any:
        """``func`` as a child task of the client's task group (as ``TaskGroup.start``)."""
        raise NotImplementedError

    # --- the API --------------------------------------------------------------------------------

    def subscribe(
        self, *channels: Any, buffer: int = 1000, policy: Policy = "block",
        block_timeout: float = 5.0,
    ) -> AbstractAsyncContextManager[Subscription]:  # fmt: skip
        """Subscribe to channels: ``async with redis.subscribe("news") as sub:``.

        Entering returns once the server has acknowledged the subscriptions.  The subscription
        rides on a dedicated connection shared with other subscriptions of this client; a task
        in the client's task group reads it, reconnects it if it breaks (delivering a
        :class:`Reconnected` event) and fans messages out.  On a cluster the connection goes
        to one node, and to another one if that node fails (docs/cluster.md).

        Args:
            *channels: channel names.
            buffer: messages buffered for this subscription before ``policy`` applies.
            policy: ``block`` (default), ``drop_oldest``, ``drop_newest``, ``error`` or
                ``unbounded`` (no limit: must be asked for by name).
            block_timeout: with ``block``, seconds the reader waits for room before the
                subscription fails with SlowConsumer (so others are not starved).

        Cancellation: leaving the block (normally, by error or by cancellation) unsubscribes,
        bounded and shielded; it never hangs.
        """
        return subscription(
            self._pubsub_hub("channel", channels), "channel", channels, buffer=buffer,
            policy=policy, block_timeout=block_timeout,
        )  # fmt: skip

    def psubscribe(
        self, *patterns: Any, buffer: int = 1000, policy: Policy = "block",
        block_timeout: float = 5.0,
    ) -> AbstractAsyncContextManager[Subscription]:  # fmt: skip
        """Subscribe to glob-style patterns (see :meth:`subscribe`)."""
        return subscription(
            self._pubsub_hub("pattern", patterns), "pattern", patterns, buffer=buffer,
            policy=policy, block_timeout=block_timeout,
        )  # fmt: skip

    def ssubscribe(
        self, *channels: Any, buffer: int = 1000, policy: Policy = "block",
        block_timeout: float = 5.0,
    ) -> AbstractAsyncContextManager[Subscription]:  # fmt: skip
        """Subscribe to sharded channels (Redis >= 7; see :meth:`subscribe`).

        On a cluster, the subscription lives on the primary that owns the channels' slot and
        follows it when it migrates or fails over, with a :class:`Reconnected` event per move;
        its channels (here and in a later ``sub.ssubscribe()``) must hash to one slot, as
        SSUBSCRIBE requires.

        Raises:
            CrossSlotError: on a cluster, channels of different slots (names each slot).
        """
        return subscription(
            self._pubsub_hub("shard", channels), "shard", channels, buffer=buffer,
            policy=policy, block_timeout=block_timeout,
        )  # fmt: skip

    def pubsub(
        self, ignore_subscribe_messages: bool = False, *,
        on_gap: Literal["raise", "message"] | Callable[[Reconnected], Any] = "raise",
        buffer: int = 1000, policy: Policy = "block", block_timeout: float = 5.0,
        shard_hint: Any = None,
    ) -> PubSub:  # fmt: skip
        """redis-py's ``PubSub`` object (``p = redis.pubsub(); await p.subscribe("news")``),
        on this client's supervised subscriptions: reconnected when the connection breaks, with
        the gap reported as ``on_gap`` says (by default ``get_message()`` raises
        :class:`MessagesLost` once).  See :class:`anypool.PubSub` and docs/pubsub.md.  On a
        cluster it takes classic channels and patterns (sharded ones: :meth:`ssubscribe`).

        Args:
            ignore_subscribe_messages: drop (un)subscribe acknowledgements, as redis-py.
            on_gap: ``"raise"``, ``"message"`` or a callable (see :class:`anypool.PubSub`).
            buffer, policy, block_timeout: the subscription's backpressure (see
                :meth:`subscribe`).
            shard_hint: accepted for redis-py's signature; unused.
        """
        return PubSub(
            self._pubsub_hub("channel", ()), ignore_subscribe_messages=ignore_subscribe_messages,
            on_gap=on_gap, buffer=buffer, policy=policy, block_timeout=block_timeout,
        )  # fmt: skip

    async def start_listener(
        self,
        handler: Callable[[Event], Awaitable[Any] | Any],
        *,
        channels: Sequence[Any] = (),
        patterns: Sequence[Any] = (),
        restart: RestartPolicy | None = None,
        buffer: int = 1000,
        policy: Policy = "block",
        block_timeout: float = 5.0,
    ) -> Listener:
        """Run ``handler`` for every event, as a supervised child task of the client.

        Args:
            handler: called with each :class:`Message` or :class:`Reconnected`; a coroutine
                function or a plain function.
            channels, patterns: what to listen to (at least one).
            restart: how often the handler may fail (default :class:`RestartPolicy()`).
            buffer, policy, block_timeout: the subscription's backpressure (see
                :meth:`subscribe`).

        Returns once subscribed.  A handler that raises is restarted within ``restart``'s
        budget; past it, the error propagates out of the client's ``async with``.  A handler
        too slow for the policy is not a failure: the subscription resumes and the handler
        gets a :class:`Reconnected` event for the gap.  The listener ends when the client
        closes or on :meth:`Listener.cancel`.

        Raises:
            PoolClosed: the client is not open.
            ValueError, TypeError: no channels or patterns, a bad policy or buffer, a handler
                that is not callable.

        Cancellation: cancelling the caller before the subscription is acknowledged stops the
        listener; nothing is left subscribed.
        """
        hub = self._pubsub_hub("channel", tuple(channels))
        hub.check_open()
        listener = Listener(
            hub, handler, channels, patterns, restart or RestartPolicy(),
            {"buffer": buffer, "policy": policy, "block_timeout": block_timeout},
        )  # fmt: skip
        started: Listener = await self._start_pubsub_task(listener.run, "anypool listener")
        return started

    def pubsub_statistics(self) -> dict[str, int]:
        """Pub/sub counters, summed over the client's subscriber connections: messages,
        connection_failures, reconnect_failures, resubscribes, gap_events, protocol_errors
        (malformed frames from the server), slow_consumers (subscriptions stopped by
        SlowConsumer), abandoned (left by the garbage collector), ended_by_server (names the
        server unsubscribed on its own, or refused to restore), relocations (a cluster's
        subscriber connections moved to another node), and the subscriber connections and
        subscriptions open now."""
        total: dict[str, int] = {}
        for hub in self._pubsub_hubs():
            for name, value in hub.statistics().items():
                total[name] = total.get(name, 0) + value
        return total
