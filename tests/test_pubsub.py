"""Pub/sub on asyncio and trio against a real server: fan-out, recovery, backpressure,
cancellation and supervised listeners."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, contextmanager

import anyio
import pytest

import anypool
import anypool.testing
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
        assert redis.pubsub_statistics()["connections"] == 0  # left at once...
        with anyio.fail_after(10):  # ...and the server sees it soon after
            while await numsub(redis, "news") or await numsub(redis, "weather"):
                await anyio.sleep(0.01)


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
        stats = redis.pubsub_statistics()
        assert (stats["connections"], stats["subscriptions"]) == (0, 0)
        with anyio.fail_after(10):  # the server notices the closed connection
            while await numsub(redis, "gone") or await redis.client_list(_type="pubsub"):
                await anyio.sleep(0.01)


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
            with anyio.fail_after(60):  # until the failure past the budget closes the pool
                await anyio.sleep_forever()
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
        else:  # the server's error about SSUBSCRIBE (issue 10, defect 16), at once
            with (
                anyio.fail_after(2),
                pytest.raises(anypool.ResponseError, match=r"(?i)unknown command .?ssubscribe"),
            ):
                async with redis.ssubscribe("shard"):
                    pass
        assert redis.pubsub_statistics()["connections"] == 0


async def test_sharded_pub_sub_on_valkey(valkey_server: RedisServer, protocol: int) -> None:
    """SSUBSCRIBE end to end on a server that has it, also across a reconnection."""
    async with (
        RedisPool.from_url(
            valkey_server.url, protocol=protocol,
            reconnect_backoff=anypool.BackoffPolicy(0.01, 0.05, 0.1),
        ) as redis,
        redis.ssubscribe("shard:a") as sub,
    ):  # fmt: skip
        await sub.ssubscribe("shard:b")
        await redis.spublish("shard:a", "1")
        await redis.spublish("shard:b", "2")
        got = [await sub.get(timeout=5), await sub.get(timeout=5)]
        assert [(m.kind, m.channel, m.data) for m in got] == [  # type: ignore[union-attr]
            ("smessage", b"shard:a", b"1"), ("smessage", b"shard:b", b"2"),
        ]  # fmt: skip
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert isinstance(await sub.get(timeout=10), Reconnected)
        await redis.spublish("shard:b", "3")  # resubscribed before the gap event came
        assert (await sub.get(timeout=5)).data == b"3"  # type: ignore[union-attr]
        await sub.sunsubscribe("shard:b")
        await redis.spublish("shard:b", "ignored")
        await redis.spublish("shard:a", "4")
        assert (await sub.get(timeout=5)).data == b"4"  # type: ignore[union-attr]


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


# --- issue 10: what an independent fault suite broke ------------------------------------------


async def wait_until(condition: Callable[[], bool], *, seconds: float = 10.0) -> None:
    """Wait for a state (polling); the bound only catches a hang."""
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.005)


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """The block must finish within ``seconds`` (generous: it only catches a hang).  Measured,
    since shielded cleanup cannot be interrupted by a deadline and would hide the wait."""
    started = anyio.current_time()
    with anyio.fail_after(seconds):
        yield
    assert anyio.current_time() - started < seconds


async def drain(sub: anypool.Subscription) -> list[Message | Reconnected]:
    """Everything buffered now, without waiting."""
    events: list[Message | Reconnected] = []
    while True:
        try:
            events.append(await sub.get(timeout=0))
        except anypool.TimeoutError:
            return events


async def test_a_cancelled_or_timed_out_consumer_loses_nothing(
    server: RedisServer, protocol: int
) -> None:
    """Issue 10, defect 4: ``__anext__`` took a message and then checked for cancellation;
    ``get(timeout=0)`` dropped what it polled."""
    async with (
        RedisPool.from_url(server.url, protocol=protocol) as redis,
        redis.subscribe("d4") as sub,
    ):
        for i in range(4):
            await redis.publish("d4", i)
        await wait_until(lambda: sub.received == 4)
        for _ in range(3):
            with anyio.CancelScope() as scope:  # cancelled before the call: takes nothing
                scope.cancel()
                await sub.__anext__()
            assert scope.cancelled_caught
            with anyio.move_on_after(0) as expired:  # a deadline already passed
                await sub.get()
            assert expired.cancelled_caught
        assert (await sub.get(timeout=0)).data == b"0"  # type: ignore[union-attr]
        assert [e.data for e in await drain(sub)] == [b"1", b"2", b"3"]  # type: ignore[union-attr]
        with pytest.raises(anypool.TimeoutError):
            await sub.get(timeout=0)

        async def waiting_consumer() -> None:
            await sub.get()

        async with anyio.create_task_group() as tg:  # cancelled while waiting: takes nothing
            tg.start_soon(waiting_consumer)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        await redis.publish("d4", "after")
        assert (await sub.get(timeout=5)).data == b"after"  # type: ignore[union-attr]


async def test_a_malformed_push_is_a_counted_protocol_error_not_a_crash() -> None:
    """Issue 10, defect 5: ``*1\\r\\n*0\\r\\n`` after a SUBSCRIBE ack raised IndexError out of
    the pool's task group.  Bad server input: reconnect, count it, keep the pool."""
    ack = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nd5\r\n:1\r\n"
    async with anypool.testing.ScriptedServer([ack + b"*1\r\n*0\r\n"]) as fake:
        config = anypool.RedisConfig(
            host="127.0.0.1", port=fake.port, protocol=2, connect_timeout=2
        )
        async with RedisPool(
            config, health_check_interval=None,
            reconnect_backoff=anypool.BackoffPolicy(0.01, 0.05, 0.1),
        ) as redis:  # fmt: skip
            async with redis.subscribe("d5") as sub:
                await wait_until(lambda: redis.pubsub_statistics()["protocol_errors"] >= 2)
                assert isinstance(await sub.get(timeout=5), Reconnected)
            assert redis.pubsub_statistics()["connection_failures"] >= 2


async def test_closing_the_pool_ends_every_consumer_with_pool_closed(server: RedisServer) -> None:
    """Issue 10, defect 6: the reader closed its socket, and consumers waited forever."""
    outcome: list[str] = []
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        async with RedisPool.from_url(server.url) as redis:
            sub = await stack.enter_async_context(redis.subscribe("d6"))

            async def consume() -> None:
                try:
                    async for _ in sub:
                        outcome.append("message")
                    outcome.append("ended")
                except anypool.PoolClosed:
                    outcome.append("PoolClosed")

            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
        await wait_until(lambda: bool(outcome), seconds=5)
        assert outcome == ["PoolClosed"]
        with pytest.raises(anypool.PoolClosed):
            await sub.get(timeout=1)


async def test_leaving_is_bounded_whatever_the_server_does() -> None:
    """Issue 10, defect 7: leaving waited ``connect_timeout`` for acknowledgements that could
    never come: any pool with a listener took that long to close, and leaving while the
    server was down took it too, even when cancelled."""

    async def handler(event: Message | Reconnected) -> None:
        pass

    with RedisServer() as server:
        with bounded(5):  # connect_timeout is 30 s
            async with RedisPool.from_url(server.url, connect_timeout=30) as redis:
                await redis.start_listener(handler, channels=["d7"])
                async with redis.subscribe("d7b"):
                    pass
        async with RedisPool.from_url(server.url, connect_timeout=30) as redis:
            first, second = redis.subscribe("d7c"), redis.subscribe("d7d")
            await first.__aenter__()
            await second.__aenter__()
            server.kill()
            with bounded(5):
                await first.__aexit__(None, None, None)
            with bounded(5), anyio.CancelScope() as scope:
                scope.cancel()
                await second.__aexit__(None, None, None)
            server.restart()


async def test_drop_oldest_never_evicts_the_gap_event(server: RedisServer) -> None:
    """Issue 10, defect 8: the docs say a Reconnected event is always delivered."""
    async with (
        RedisPool.from_url(
            server.url, reconnect_backoff=anypool.BackoffPolicy(0.01, 0.05, 0.1)
        ) as redis,
        redis.subscribe("d8", buffer=2, policy="drop_oldest") as sub,
    ):
        await redis.publish("d8", "a")
        await redis.publish("d8", "b")
        await wait_until(lambda: sub.received == 2)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_until(lambda: redis.pubsub_statistics()["gap_events"] >= 1)
        await wait_until(lambda: redis.pubsub_statistics()["resubscribes"] >= 1)
        with anyio.fail_after(10):
            while await numsub(redis, "d8") != 1:
                await anyio.sleep(0.01)
        await redis.publish("d8", "c")
        await redis.publish("d8", "d")
        await wait_until(lambda: sub.received == 4)
        events = await drain(sub)
        assert [type(e).__name__ for e in events] == ["Reconnected", "Message", "Message"]
        assert [e.data for e in events[1:]] == [b"c", b"d"]  # type: ignore[union-attr]
        assert sub.dropped == 2


async def test_a_stalled_listener_handler_recovers_and_keeps_the_pool(server: RedisServer) -> None:
    """Issue 10, defect 9: with ``block`` and a handler that stalled once, SlowConsumer was
    "restarted" on the dead subscription until the budget ran out, and an ExceptionGroup left
    the pool's block.  The listener resumes, told of the gap, and its budget is untouched."""
    stalled, release = anyio.Event(), anyio.Event()
    seen: list[Message | Reconnected] = []

    async def handler(event: Message | Reconnected) -> None:
        if isinstance(event, Message) and event.data == b"0":
            stalled.set()
            await release.wait()
        seen.append(event)

    async with RedisPool.from_url(server.url) as redis:
        listener = await redis.start_listener(
            handler, channels=["d9"], buffer=1, policy="block", block_timeout=0.2,
            restart=RestartPolicy(max_restarts=0),
        )  # fmt: skip
        await redis.publish("d9", 0)
        await stalled.wait()
        for i in range(1, 4):  # 1 is buffered; 2 waits block_timeout, then the overflow
            await redis.publish("d9", i)
        await wait_until(lambda: redis.pubsub_statistics()["slow_consumers"] >= 1)
        release.set()
        # Published once the listener has resumed (counted and resumed in one step): before
        # that, the stopped subscription drops it, and counts it.
        await wait_until(lambda: listener.statistics()["overflows"] == 1)
        await redis.publish("d9", "after")
        await wait_until(lambda: any(getattr(e, "data", None) == b"after" for e in seen))
        kinds = [type(e).__name__ for e in seen]
        assert kinds[:2] == ["Message", "Message"]  # 0, then 1 which was buffered
        assert "Reconnected" in kinds  # told of the gap, in band, before what came after
        assert kinds.index("Reconnected") < len(kinds) - 1
        stats = listener.statistics()
        assert (stats["failures"], stats["restarts"]) == (0, 0)
        assert stats["overflows"] == 1


async def test_leaving_a_full_blocking_subscription_never_starves_its_siblings(
    server: RedisServer,
) -> None:
    """Issue 10, defect 10: leaving waited for an unsubscribe ack while the reader was blocked
    writing into the very buffer being left, for block_timeout, and the sibling starved."""
    async with (
        RedisPool.from_url(server.url) as redis,
        redis.subscribe("d10-sibling") as sibling,
    ):
        full = redis.subscribe("d10", buffer=1, policy="block", block_timeout=30)
        sub = await full.__aenter__()
        for i in range(3):  # 0 fills the buffer; the reader blocks on 1
            await redis.publish("d10", i)
        await wait_until(lambda: sub.received == 1)
        with bounded(5):
            await full.__aexit__(None, None, None)
        await redis.publish("d10-sibling", "not starved")
        with anyio.fail_after(5):
            assert (await sibling.get()).data == b"not starved"  # type: ignore[union-attr]


async def test_pub_sub_before_open_and_after_close_is_pool_closed(server: RedisServer) -> None:
    """Issue 10, defect 12: anyio's "task group is not active", or a bare AssertionError."""

    async def handler(event: Message | Reconnected) -> None:
        pass

    redis = RedisPool.from_url(server.url)
    for phase in ("not open yet", "is closed"):
        with pytest.raises(anypool.PoolClosed, match=phase):
            await redis.get("d12")
        with pytest.raises(anypool.PoolClosed, match=phase):
            async with redis.subscribe("d12"):
                pass
        with pytest.raises(anypool.PoolClosed, match=phase):
            async with redis.psubscribe("d12*"):
                pass
        with pytest.raises(anypool.PoolClosed, match=phase):
            await redis.start_listener(handler, channels=["d12"])
        if phase == "not open yet":
            async with redis:
                pass


async def test_listener_takes_plain_functions_and_refuses_nothing_to_listen_to(
    server: RedisServer,
) -> None:
    seen: list[object] = []
    async with RedisPool.from_url(server.url) as redis:
        with pytest.raises(ValueError, match="channels or patterns"):
            await redis.start_listener(seen.append)
        with pytest.raises(TypeError, match="callable"):
            await redis.start_listener("not a function", channels=["x"])  # type: ignore[arg-type]
        listener = await redis.start_listener(seen.append, channels=["plain"])
        await redis.publish("plain", "sync handler")
        await wait_until(lambda: listener.statistics()["handled"] == 1)
        assert seen == [Message("message", b"plain", b"sync handler")]


@pytest.mark.parametrize("stage", ["connecting", "acknowledging", "listener"])
async def test_closing_the_pool_ends_waiting_subscribers_at_once(
    redis_server: RedisServer, stage: str
) -> None:
    """A subscribe (or start_listener) waiting, in a task outside the pool's block, for its
    first connection or its acknowledgement when the pool closes gets PoolClosed at once, and
    the pool's exit does not wait for it (found by the adversarial review)."""
    outcome: list[str] = []
    async with (
        anypool.testing.FaultProxy(redis_server.port) as proxy,
        anyio.create_task_group() as tg,
    ):
        redis = RedisPool.from_url(proxy.url, connect_timeout=30)
        opened, close, waiting = anyio.Event(), anyio.Event(), anyio.Event()

        async def owner() -> None:
            async with redis:
                opened.set()
                await close.wait()

        async def subscriber() -> None:
            try:
                if stage == "connecting":
                    proxy.blackhole = True  # the first connect never completes
                    waiting.set()
                    async with redis.subscribe("never"):
                        outcome.append("entered")
                else:
                    async with redis.subscribe("warm"):  # the connection is up
                        proxy.cut("downstream", new_connections=False)  # acks never come
                        waiting.set()
                        if stage == "listener":
                            await redis.start_listener(print, channels=["never"])
                        else:
                            async with redis.subscribe("never"):
                                outcome.append("entered")
            except anypool.PoolClosed:
                outcome.append("PoolClosed")

        tg.start_soon(owner)
        await opened.wait()
        tg.start_soon(subscriber)
        await waiting.wait()
        await anyio.wait_all_tasks_blocked()
        with bounded(5):  # connect_timeout is 30 s
            close.set()
            await wait_until(lambda: bool(outcome), seconds=5)
        assert outcome == ["PoolClosed"]
        proxy.heal()


async def test_unsubscribe_takes_buffered_messages_back(server: RedisServer) -> None:
    """Review: messages buffered but not consumed when unsubscribe() returned were still
    delivered (``discarded`` stayed 0), though unsubscribing takes effect at once.  Only the
    route unsubscribed from loses them: the same messages matched by a pattern stay."""
    async with RedisPool.from_url(server.url) as redis, redis.subscribe("y", "z") as sub:
        await sub.psubscribe("y*")
        with anyio.fail_after(30):
            for data in ("y0", "y1"):
                await redis.publish("y", data)
            await redis.publish("z", "z0")
            while sub.buffered < 5:  # y0 and y1 twice (channel and pattern), z0
                await anyio.sleep(0.01)
            await sub.unsubscribe("y")
            assert (sub.received, sub.discarded, sub.buffered) == (3, 2, 3)
            got = [await sub.get(timeout=0) for _ in range(3)]
        assert got == [
            Message("pmessage", b"y", b"y0", b"y*"),
            Message("pmessage", b"y", b"y1", b"y*"),
            Message("message", b"z", b"z0"),
        ]
        with pytest.raises(anypool.TimeoutError):
            await sub.get(timeout=0)


async def test_unsubscribe_frees_room_for_a_waiting_reader(server: RedisServer) -> None:
    """The messages taken back free the buffer: a reader waiting for room (policy block) goes
    on at once."""
    async with (
        RedisPool.from_url(server.url) as redis,
        redis.subscribe("f:a", "f:b", buffer=2, block_timeout=60) as sub,
    ):
        with anyio.fail_after(30):
            await redis.publish("f:a", "1")
            await redis.publish("f:a", "2")  # full
            await redis.publish("f:b", "3")  # the reader waits for room
            while redis.pubsub_statistics()["messages"] < 3:
                await anyio.sleep(0.01)
            await sub.unsubscribe("f:a")
            assert await sub.get() == Message("message", b"f:b", b"3")
        assert (sub.discarded, sub.dropped) == (2, 0)
        assert redis.pubsub_statistics()["slow_consumers"] == 0
