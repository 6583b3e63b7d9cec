"""Pub/sub on a cluster: where each kind of subscription lives, and how it follows the cluster.

The subscriptions themselves are the pool's (``anypool._pubsub``): the same hub, subscriber
connections, buffers, backpressure, gap events and listeners.  What a cluster adds is *where*
a hub's connection goes, a :class:`~anypool._pubsub.Placement`:

* classic channels and patterns: any node hears every PUBLISH of the cluster, so one hub
  connects to a node of the table and, when that node fails, to the next one;
* sharded channels: a channel lives on the primary that owns its slot, so there is one hub
  per slot with subscriptions, connected to that slot's owner.  When the slot migrates or its
  primary is demoted, the server sends SUNSUBSCRIBE on its own; the hub then reads the
  topology again and moves its connection to the new owner, resubscribes, and reports the gap
  with a :class:`~anypool.Reconnected` event, as after any reconnect.  A failed primary is a
  broken connection, handled the same way once a replica is promoted.

One SSUBSCRIBE names channels of one slot (the server's rule); a subscription here keeps to
one slot for its whole life, so it never has to be split when slots move apart.
"""

from __future__ import annotations

from typing import Any

from .. import _pubsub
from .._config import PoolConfig, RedisConfig
from .._errors import ClusterError, CrossSlotError, InvalidArgument
from ._slots import Node, key_slot
from ._topology import Topology

__all__ = ["ClusterHubs", "shard_slot"]


def shard_slot(keys: list[Any], encoding: str) -> int:
    """The one slot of sharded channel names (as the hub keeps them: str or bytes).

    Raises:
        InvalidArgument: no channel was named.
        CrossSlotError: the channels hash to different slots (names each slot).
    """
    if not keys:
        raise InvalidArgument(
            "ssubscribe() on a cluster needs at least one channel (the channel's slot decides "
            "which node serves the subscription)"
        )
    slots: dict[int, list[Any]] = {}
    for key in keys:
        raw = key.encode(encoding) if isinstance(key, str) else bytes(key)
        slots.setdefault(key_slot(raw), []).append(key)
    if len(slots) > 1:
        detail = "; ".join(f"slot {slot}: {names!r:.60}" for slot, names in sorted(slots.items()))
        raise CrossSlotError(
            f"sharded channels of one subscription must hash to one slot, as SSUBSCRIBE "
            f"requires ({detail}): give them a common {{hash tag}}, or subscribe to each slot "
            "separately"
        )
    (slot,) = slots
    return slot


class _AnyNode:
    """Classic channels and patterns: any node of the cluster; the next one after a failure."""

    def __init__(self, topology: Topology, config: RedisConfig) -> None:
        self._topology = topology
        self._config = config
        self._node: Node | None = None

    def check(self, kind: _pubsub.Kind, keys: list[Any]) -> None:
        if kind == "shard":
            raise InvalidArgument(
                "sharded channels are served by the owner of their slot: subscribe to them "
                "with RedisCluster.ssubscribe(), not on a subscription of classic channels"
            )

    def serves(self, config: RedisConfig) -> bool:
        return True  # a move is a server's refusal or end, seen on the connection itself

    async def locate(self, moved: bool) -> RedisConfig:
        if moved:
            await self._topology.wait_for_refresh()
        table = await self._topology.ready()
        nodes = table.primaries or table.nodes
        if not nodes:
            raise ClusterError("the cluster has no node to subscribe on")
        node = self._node
        if node is None or node not in nodes:
            node = nodes[0]
        elif moved:  # the last one failed: the next (every node hears every PUBLISH)
            node = nodes[(nodes.index(node) + 1) % len(nodes)]
        self._node = node
        return self._config.replace(host=node.host, port=node.port)


class _SlotOwner:
    """Sharded channels of one slot: the primary that owns it."""

    def __init__(self, topology: Topology, config: RedisConfig, slot: int) -> None:
        self._topology = topology
        self._config = config
        self.slot = slot

    def check(self, kind: _pubsub.Kind, keys: list[Any]) -> None:
        if kind != "shard":
            raise InvalidArgument(
                "a subscription of sharded channels takes sharded channels only: subscribe "
                "to classic channels and patterns with RedisCluster.subscribe()/psubscribe()"
            )
        slot = shard_slot(keys, self._config.encoding) if keys else self.slot
        if slot != self.slot:
            raise CrossSlotError(
                f"this subscription's sharded channels hash to slot {self.slot}; "
                f"{keys!r:.60} hash to slot {slot}: subscribe to them separately (or give "
                "them the same {hash tag})"
            )

    def serves(self, config: RedisConfig) -> bool:
        return True  # a move is a server's refusal or end, seen on the connection itself

    async def locate(self, moved: bool) -> RedisConfig:
        if moved:
            await self._topology.wait_for_refresh()
        table = await self._topology.ready()
        shard = table.shard(self.slot)
        if shard is None:
            raise ClusterError(f"slot {self.slot} has no owner in the cluster now")
        node = shard.primary
        return self._config.replace(host=node.host, port=node.port)


class ClusterHubs:
    """The cluster client's pub/sub hubs: one for classic channels and patterns, one per slot
    with sharded subscriptions (made on first use)."""

    def __init__(
        self,
        host: _pubsub.HubHost,
        topology: Topology,
        config: RedisConfig,
        pool_config: PoolConfig,
    ) -> None:
        self._host = host
        self._topology = topology
        self._config = config
        self._pool_config = pool_config
        self._classic: _pubsub.Hub | None = None
        self._shards: dict[int, _pubsub.Hub] = {}

    def _hub(self, placement: _pubsub.Placement) -> _pubsub.Hub:
        return _pubsub.Hub(
            self._config, self._host, per_connection=100,
            keepalive=self._pool_config.health_check_interval,
            backoff=self._pool_config.reconnect_backoff, placement=placement,
        )  # fmt: skip

    def classic(self) -> _pubsub.Hub:
        """The hub of classic channels and patterns."""
        if self._classic is None:
            self._classic = self._hub(_AnyNode(self._topology, self._config))
        return self._classic

    def for_channels(self, channels: tuple[Any, ...]) -> _pubsub.Hub:
        """The hub of the slot ``channels`` (sharded, all of one slot) hash to.

        Raises:
            InvalidArgument, CrossSlotError: see :func:`shard_slot`.
        """
        key = self.classic().key  # the names as every hub keeps them
        slot = shard_slot([key(name) for name in channels], self._config.encoding)
        hub = self._shards.get(slot)
        if hub is None:
            hub = self._shards[slot] = self._hub(_SlotOwner(self._topology, self._config, slot))
        return hub

    def each(self) -> list[_pubsub.Hub]:
        return [hub for hub in (self._classic, *self._shards.values()) if hub is not None]

    def close(self) -> None:
        """End every subscription (PoolClosed) and stop every connection task."""
        for hub in self.each():
            hub.close()
