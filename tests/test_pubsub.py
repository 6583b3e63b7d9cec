"""Pub/sub on asyncio and trio against a real server: fan-out, recovery, backpressure,
cancellation and supervised listeners."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

import anypool
from anypool import Message, Reconnected, RedisPool, RestartPolicy
from anypool.testing import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def numsub(redis: RedisPool, channel: str) -> int:
    return int((await redis.pubsub_numsub(channel))[0][1])


async def test_subscribe_publish_patterns_and_changes(server: RedisServer, protocol: int) -> None:
    async with RedisPool.from_url(server.url, protocol=protocol, decode_responses=True) as redis:
        async with redis.subscribe("news") as sub, redis.psubscribe("n*") as patterns:
            assert await numsub(redis, "news") == 1  # acknowledged before entering returned
            assert await redis.publish("news", "hello") == 2
            assert await sub.get(timeout=2) == Message("message", "news", "hello")
            assert await patterns.get(timeout=2) == Message("pmessage", "news", "hello", "n*")
            await sub.subscribe("weather")
            await sub.unsubscribe("news")
            await redis.publish("news", "ignored")
            await redis.publish("weather", "sunny")
            assert await sub.get(timeout=2) == Message("message", "weather", "sunny")
            assert sub.received == 2
        assert await numsub(redis, "news") == 0
        assert await numsub(redis, "weather") == 0
        assert redis.pubsub_statistics()["connections"] == 0


async def test_fan_out_every_subscriber_gets_every_message_in_order(server: RedisServer) -> None:
    subscribers, messages = 200, 20_000
    async with RedisPool.from_url(server.url, max_size=4) as redis:
        received = [0] * subscribers
        out_of_order: list[int] = []
        async with anyio.create_task_group() as tg:
            ready = anyio.Event()
            entered = 0

            async def subscriber(n: int) -> None:
                nonlocal entered
                async with redis.subscribe("fan", buffer=2000) as sub:
                    entered += 1
                    if entered == subscribers:
                        ready.set()
                    async for message in sub:
                        assert isinstance(message, Message)
                        if int(message.data) != received[n]:
                            out_of_order.append(n)
                        received[n] += 1
                        if received[n] == messages:
                            return

            for n in range(subscribers):
                tg.start_soon(subscriber, n)
            with anyio.fail_after(60):
                await ready.wait()
                assert redis.pubsub_statistics()["connections"] == 2  # 100 per connection
                for start in range(0, messages, 1000):
                    pipe = redis.pipeline(transaction=False)
                    for i in range(start, start + 1000):
                        pipe.publish("fan", i)
                    await pipe.execute()
        assert out_of_order == []
        assert received == [messages] * subscribers
        assert redis.pubsub_statistics()["connections"] == 0


async def test_server_restart_gives_a_gap_event_then_new_messages(
    server: RedisServer, protocol: int
) -> None:
    async with RedisPool.from_url(
        server.url, protocol=protocol, reconnect_backoff=anypool.BackoffPolicy(0.05, 0.2, 0.1)
    ) as redis:
        async with redis.subscribe("live") as sub:
            await redis.publish("live", "before")
            assert (await sub.get(timeout=2)).data == b"before"  # type: ignore[union-attr]
            server.kill()
            await anyio.sleep(0.2)
            server.restart()
            event = await sub.get(timeout=10)
            assert isinstance(event, Reconnected)
            assert event.gap_end >= event.gap_start
            with anyio.fail_after(10):  # the pool's own connections recover too
                while True:
                    try:
                        if await numsub(redis, "live") == 1:
                            break
                    except anypool.ConnectionError:
                        pass
                    await anyio.sleep(0.05)
            await redis.publish("live", "after")
            assert (await sub.get(timeout=2)).data == b"after"  # type: ignore[union-attr]
        stats = redis.pubsub_statistics()
        assert stats["connection_failures"] >= 1
        assert stats["resubscribes"] >= 1
        assert stats["gap_events"] >= 1


async def test_client_kill_type_pubsub_recovers(server: RedisServer, protocol: int) -> None:
    async with (
        RedisPool.from_url(server.url, protocol=protocol) as redis,
        redis.subscribe("killed") as sub,
    ):
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert isinstance(await sub.get(timeout=10), Reconnected)
        await redis.publish("killed", "still here")
        assert (await sub.get(timeout=2)).data == b"still here"  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "error", "block"])
async def test_slow_consumer_policies_and_others_keep_receiving(
    server: RedisServer, policy: anypool._pubsub.Policy
) -> None:
    async with (
        RedisPool.from_url(server.url) as redis,
        redis.subscribe("slow", buffer=5, policy=policy, block_timeout=0.2) as slow,
        redis.subscribe("slow", buffer=100) as healthy,
    ):
        for i in range(20):
            await redis.publish("slow", i)
        got = [int((await healthy.get(timeout=2)).data) for _ in range(20)]  # type: ignore[union-attr]
        assert got == list(range(20))  # the healthy subscriber on the same connection
        values: list[int] = []
        if policy == "error" or policy == "block":
            with pytest.raises(anypool.SlowConsumer):
                async for message in slow:
                    values.append(int(message.data))  # type: ignore[union-attr]
            assert values == list(range(5))  # what was buffered is still delivered
        else:
            with anyio.move_on_after(0.3):
                async for message in slow:
                    values.append(int(message.data))  # type: ignore[union-attr]
            expected = list(range(15, 20)) if policy == "drop_oldest" else list(range(5))
            assert values == expected
            assert slow.dropped == 15


async def test_cancelled_subscriber_leaves_nothing_behind(server: RedisServer) -> None:
    async with RedisPool.from_url(server.url) as redis:
        with anyio.move_on_after(0.2) as scope:
            async with redis.subscribe("gone") as sub:
                async for _ in sub:
                    pass
        assert scope.cancelled_caught
        assert await numsub(redis, "gone") == 0
        stats = redis.pubsub_statistics()
        assert (stats["connections"], stats["subscriptions"]) == (0, 0)
        clients = await redis.client_list(_type="pubsub")
        assert clients == []


async def test_listener_restarts_then_propagates_past_its_budget(server: RedisServer) -> None:
    handled: list[bytes] = []

    async def flaky(event: anypool.Message | Reconnected) -> None:
        assert isinstance(event, Message)
        if event.data == b"boom":
            raise ValueError("handler failed")
        handled.append(event.data)  # type: ignore[arg-type]

    with pytest.raises(BaseExceptionGroup) as info:
        async with RedisPool.from_url(server.url) as redis:
            listener = await redis.start_listener(
                flaky, channels=["jobs"], restart=RestartPolicy(max_restarts=2, delay=0.01)
            )
            await redis.publish("jobs", "one")
            await redis.publish("jobs", "boom")  # restart 1
            await redis.publish("jobs", "two")  # no wait: the subscription stays through restarts
            with anyio.fail_after(5):
                while handled != [b"one", b"two"]:
                    await anyio.sleep(0.01)
            for _ in range(3):  # restarts 2, then one failure too many
                await redis.publish("jobs", "boom")
                await anyio.sleep(0.1)
            await anyio.sleep(5)
    assert info.group_contains(ValueError, match="handler failed")
    assert listener.statistics()["failures"] == 3
    assert handled == [b"one", b"two"]


async def test_listener_cancel(server: RedisServer) -> None:
    seen: list[object] = []

    async def record(event: Message | Reconnected) -> None:
        seen.append(event)

    async with RedisPool.from_url(server.url) as redis:
        listener = await redis.start_listener(record, channels=["c"], patterns=["p*"])
        await redis.publish("c", "1")
        await redis.publish("pp", "2")
        with anyio.fail_after(5):
            while len(seen) < 2:
                await anyio.sleep(0.01)
        listener.cancel()
        with anyio.fail_after(5):
            while await numsub(redis, "c") != 0:
                await anyio.sleep(0.01)
        assert listener.statistics()["handled"] == 2


async def test_sharded_subscribe_needs_redis_7(server: RedisServer) -> None:
    async with RedisPool.from_url(server.url) as redis:
        if server.version >= (7, 0, 0):
            async with redis.ssubscribe("shard") as sub:
                await redis.spublish("shard", "x")
                assert (await sub.get(timeout=2)).kind == "smessage"  # type: ignore[union-attr]
        else:  # the server's error, at once, not a timeout
            with anyio.fail_after(2), pytest.raises(anypool.ResponseError, match=r"(?i)unknown"):
                async with redis.ssubscribe("shard"):
                    pass
        assert redis.pubsub_statistics()["connections"] == 0


async def test_bad_policy_is_refused(server: RedisServer) -> None:
    async with RedisPool.from_url(server.url) as redis:
        with pytest.raises(ValueError, match="policy"):
            async with redis.subscribe("x", policy="sometimes"):  # type: ignore[arg-type]
                pass
        with pytest.raises(ValueError, match="buffer"):
            async with redis.subscribe("x", buffer=0):
                pass


async def test_missed_keepalive_on_a_hung_server_reconnects(server: RedisServer) -> None:
    async with (
        RedisPool.from_url(
            server.url,
            health_check_interval=0.2,  # also the pub/sub keepalive interval
            connect_timeout=0.5,
            reconnect_backoff=anypool.BackoffPolicy(0.05, 0.2, 0.1),
        ) as redis,
        redis.subscribe("hung") as sub,
    ):
        server.pause()  # the socket stays open; nothing answers the keepalive PING
        try:
            with anyio.fail_after(10):
                while redis.pubsub_statistics()["connection_failures"] < 1:
                    await anyio.sleep(0.05)
        finally:
            server.resume()
        assert isinstance(await sub.get(timeout=10), Reconnected)
        await redis.publish("hung", "back")
        assert (await sub.get(timeout=2)).data == b"back"  # type: ignore[union-attr]
