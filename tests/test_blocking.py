"""BlockingRedisPool: the command surface for threads, on an asyncio or trio helper loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import anypool
from anypool import BlockingRedisPool
from anypool.testing import RedisServer

from .backends import backend_name, backend_options, backend_params


def on(backend: str) -> dict[str, Any]:
    """BlockingRedisPool's keywords for a backend id."""
    return {"backend": backend_name(backend), "backend_options": backend_options(backend)}


@pytest.mark.parametrize("backend", backend_params())
def test_commands_pipelines_connections_locks(redis_server: RedisServer, backend: str) -> None:
    with BlockingRedisPool.from_url(redis_server.url, **on(backend), max_size=4) as redis:
        assert redis.set(f"b:{backend}", "v") is True
        assert redis.get(f"b:{backend}") == b"v"
        with redis.pipeline() as pipe:
            pipe.set(f"b:{backend}:n", 1).incr(f"b:{backend}:n")
            assert len(pipe) == 2
            assert pipe.execute() == [True, 2]
        with redis.acquire() as conn:
            assert conn.ping() is True
        with redis.lock(f"b:{backend}:lock", timeout=5):
            assert redis.exists(f"b:{backend}:lock") == 1
        script = redis.register_script("return ARGV[1]")
        assert script(args=["x"]) == b"x"
        keys = sorted(redis.scan_iter(match=f"b:{backend}*"))
        assert keys == [f"b:{backend}".encode(), f"b:{backend}:n".encode()]
        with pytest.raises(anypool.CommandNotAllowed):
            redis.select(1)
        channel = f"b:{backend}:news"
        with redis.subscribe(channel) as sub:
            redis.publish(channel, "hi")
            assert sub.get(timeout=2) == anypool.Message("message", channel.encode(), b"hi")
            redis.publish(channel, "again")
            assert next(iter(sub)).data == b"again"
        assert redis.statistics().in_use == 0
    with pytest.raises(anypool.PoolClosed, match="inside `with"):
        redis.get("x")


def test_many_threads_share_one_pool(redis_server: RedisServer) -> None:
    threads, ops = 8, 1000
    errors: list[BaseException] = []
    with BlockingRedisPool.from_url(redis_server.url, max_size=4) as redis:
        redis.delete("bt:counter")

        def worker(n: int) -> None:
            try:
                for i in range(ops // 2):
                    redis.incr("bt:counter")
                    redis.set(f"bt:{n}", i)
                    if int(redis.get(f"bt:{n}")) != i:
                        raise AssertionError(f"thread {n} read another value")
            except BaseException as exc:
                errors.append(exc)

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=120)
        assert errors == []
        assert int(redis.get("bt:counter")) == threads * ops // 2
        stats = redis.statistics()
        shared = redis.autopipeline_statistics()
        # Commands: the pool's leases, but a shared connection's lease carries many commands.
        commands = stats.requests_num - shared.get("lanes_opened", 0) + shared.get("requests", 0)
        assert commands >= threads * ops * 3 // 2
        assert (stats.in_use, stats.requests_waiting) == (0, 0)
        assert stats.pool_size <= 4


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.timeout(60)
def test_closing_leaves_blocks_that_were_never_left(
    redis_server: RedisServer, backend: str
) -> None:
    """Found by the adversarial review: an acquire() or subscribe() block never left kept a
    task in the portal waiting for its exit, and closing the pool hung forever."""
    redis = BlockingRedisPool.from_url(redis_server.url, **on(backend), close_timeout=1)
    with redis:
        conn = redis.acquire().__enter__()
        assert conn.ping() is True
        sub = redis.subscribe(f"never-left:{backend}").__enter__()
        redis.publish(f"never-left:{backend}", "x")
        assert sub.get(timeout=5).data == b"x"
    # the with block returned: both were left, the pool is closed
    with pytest.raises(anypool.PoolClosed):
        redis.get("k")


def test_pubsub_is_refused_clearly_on_the_sync_pool(redis_server: RedisServer) -> None:
    """It returned the async PubSub: sync calls returned coroutines and subscribed nothing
    (found by the final adversarial review)."""
    with BlockingRedisPool.from_url(redis_server.url) as redis:
        with pytest.raises(NotImplementedError, match=r"redis\.subscribe"):
            redis.pubsub()
        with redis.subscribe("sync:refused") as sub:  # what the message points to works
            assert redis.publish("sync:refused", "hi") == 1
            assert next(iter(sub)).data == b"hi"
