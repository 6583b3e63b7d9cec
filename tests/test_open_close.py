"""`await pool.open()` / `await pool.aclose()`: a pool opened in one task and closed in another.

The generic pool over a fake factory pins the semantics (open twice, close twice, open after
close, cancellation, a failing background task, the event loop ending); RedisPool and the sync
facade are then checked against a real server.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from typing import Any

import anyio
import pytest

import anypool
from anypool import Pool, RedisPool
from anypool import _health as health
from anypool.testing import RedisServer

from .fakes import FakeFactory

pytestmark = pytest.mark.anyio

QUIET = {"health_check_interval": None, "max_idle": None, "max_lifetime": None}


async def wait_for_failure(pool: Pool[Any]) -> None:
    """Wait until the owner task has closed the pool after a background failure (a state,
    reached after the pool's shutdown: polled, since nothing else can be waited on)."""
    while True:
        try:
            pool.check_open()
        except anypool.PoolClosed as exc:
            if "background task failed" in str(exc):
                return
        await anyio.sleep(0.01)


async def test_open_in_one_task_aclose_in_another() -> None:
    factory = FakeFactory()
    pool = Pool(factory, min_size=1, **QUIET)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.open)  # a task that ends once the pool is open
        await pool.wait()
        async with pool.acquire() as resource:
            assert not resource.closed
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.aclose)
    assert not factory.open_resources
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await pool.lease()


async def test_calls_before_open_say_how_to_open() -> None:
    pool = Pool(FakeFactory(), **QUIET)
    with pytest.raises(anypool.PoolClosed, match="not open yet") as info:
        await pool.lease()
    assert "`async with pool:`" in str(info.value)
    assert "`await pool.open()`" in str(info.value)


async def test_open_twice_does_nothing_and_one_aclose_closes() -> None:
    factory = FakeFactory()
    pool = Pool(factory, **QUIET)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:  # concurrent opens: one pool, open once
            tg.start_soon(pool.open)
            tg.start_soon(pool.open)
        await pool.open()
        async with pool.acquire():
            pass
        async with anyio.create_task_group() as tg:  # concurrent closes: both wait for it
            tg.start_soon(pool.aclose)
            tg.start_soon(pool.aclose)
        await pool.aclose()
    assert not factory.open_resources
    assert "closed" in repr(pool)


async def test_aclose_without_open_does_nothing_and_the_pool_still_opens() -> None:
    pool = Pool(FakeFactory(), **QUIET)
    await pool.aclose()
    with pytest.raises(anypool.PoolClosed, match="not open yet"):
        await pool.lease()
    await pool.open()
    async with pool.acquire():
        pass
    await pool.aclose()


async def test_open_after_aclose_is_refused() -> None:
    pool = Pool(FakeFactory(), **QUIET)
    await pool.open()
    await pool.aclose()
    with pytest.raises(RuntimeError, match="opens once: make a new one"):
        await pool.open()
    with pytest.raises(RuntimeError, match="opens once"):
        async with pool:
            pass


async def test_open_and_async_with_do_not_mix() -> None:
    pool = Pool(FakeFactory(), **QUIET)
    async with pool:
        with pytest.raises(RuntimeError, match="by `async with`"):
            await pool.open()
        with pytest.raises(RuntimeError, match="open in an `async with` block"):
            await pool.aclose()
        async with pool.acquire():  # both refusals left the pool as it was
            pass
    await pool.aclose()  # closed already: nothing to do
    opened = Pool(FakeFactory(), **QUIET)
    await opened.open()
    with pytest.raises(RuntimeError, match="already"):  # anyio's AsyncContextManagerMixin
        async with opened:
            pass
    await opened.aclose()


async def test_callers_during_aclose_are_refused_or_waited_for() -> None:
    """aclose() wakes waiters with PoolClosed, refuses new calls, and waits (up to
    close_timeout) for a lease held by another task."""
    factory = FakeFactory()
    pool = Pool(factory, max_size=1, close_timeout=30, **QUIET)
    await pool.open()
    outcomes: list[str] = []
    held = await pool.lease()
    closing_done = anyio.Event()

    async def waiter() -> None:
        try:
            await pool.lease(timeout=None)
        except anypool.PoolClosed:
            outcomes.append("waiter: PoolClosed")

    async def closer() -> None:
        await pool.aclose()
        closing_done.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(closer)
            await anyio.wait_all_tasks_blocked()  # closer waits for `held` to come back
            assert outcomes == ["waiter: PoolClosed"]
            assert not closing_done.is_set()
            with pytest.raises(anypool.PoolClosed, match="is closed"):
                await pool.lease()
            assert not held.resource.closed  # still in use by this task
            await pool.release(held)
        assert closing_done.is_set()
    assert not factory.open_resources


async def test_cancelled_open_closes_the_pool_again() -> None:
    factory = FakeFactory()
    pool = Pool(factory, min_size=2, **QUIET)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pool.open()
    assert scope.cancelled_caught
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await pool.lease()
    assert not factory.open_resources
    await pool.aclose()  # nothing left to do


async def test_a_cancelled_second_open_leaves_the_pool_open() -> None:
    """Only the call that opened the pool closes it when cancelled."""
    factory = FakeFactory()
    pool = Pool(factory, **QUIET)
    await pool.open()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pool.open()
    assert scope.cancelled_caught
    async with pool.acquire():
        pass
    await pool.aclose()
    assert not factory.open_resources


async def test_open_while_aclose_runs_is_refused() -> None:
    pool = Pool(FakeFactory(), max_size=1, close_timeout=30, **QUIET)
    await pool.open()
    held = await pool.lease()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.aclose)
            await anyio.wait_all_tasks_blocked()  # aclose() waits for `held`
            with pytest.raises(RuntimeError, match="is closed"):
                await pool.open()
            await pool.release(held)


async def test_cancelled_aclose_still_closes() -> None:
    factory = FakeFactory()
    pool = Pool(factory, min_size=2, **QUIET)
    await pool.open()
    await pool.wait(timeout=30)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pool.aclose()
    assert scope.cancelled_caught  # the cancellation took effect after the close
    assert len(factory.created) == 2
    assert not factory.open_resources
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await pool.lease()


async def test_a_failed_background_task_surfaces_on_the_next_call_and_on_aclose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = anyio.Event()

    def broken(pool: Any, now: float) -> None:
        failed.set()
        raise ZeroDivisionError("a bug in anypool")

    monkeypatch.setattr(health, "_report_leaks", broken)
    factory = FakeFactory()
    pool = Pool(factory, **QUIET)
    await pool.open()
    with anyio.fail_after(30):
        await failed.wait()
        await wait_for_failure(pool)
    with pytest.raises(anypool.PoolClosed, match="background task failed") as info:
        await pool.lease()
    assert isinstance(info.value.__cause__, BaseExceptionGroup)
    assert info.value.__cause__.subgroup(ZeroDivisionError) is not None
    with pytest.raises(BaseExceptionGroup) as group:
        await pool.aclose()
    assert group.group_contains(ZeroDivisionError)
    await pool.aclose()  # reported once; closing again does nothing
    with pytest.raises(anypool.PoolClosed, match="background task failed"):
        await pool.lease()  # every later call still says why
    assert not factory.open_resources


async def test_aclose_from_another_event_loop_is_refused(anyio_backend: str) -> None:
    pool = Pool(FakeFactory(), **QUIET)
    await pool.open()
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            anyio.run(pool.aclose, backend="asyncio")
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    await anyio.to_thread.run_sync(thread.join)
    assert len(errors) == 1
    assert "another event loop" in str(errors[0])
    async with pool.acquire():  # still open, in its own loop
        pass
    await pool.aclose()


BACKENDS: list[Any] = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("trio", {}), id="trio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="asyncio+uvloop",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
        ),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_loop_ending_without_aclose_closes_the_pool_and_warns(
    backend: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """No hang, nothing left open, and a warning that names the pool and the fix."""
    factory = FakeFactory()
    pool = Pool(factory, min_size=2, name="forgotten", **QUIET)

    async def main() -> None:
        await pool.open()
        await pool.wait(timeout=30)
        assert len(factory.open_resources) == 2

    name, options = backend
    with caplog.at_level(logging.WARNING, logger="anypool.pool"):
        anyio.run(main, backend=name, backend_options=options)
    assert not factory.open_resources
    assert "closed" in repr(pool)
    warnings = [r.getMessage() for r in caplog.records if "forgotten" in r.getMessage()]
    assert len(warnings) == 1
    assert "aclose()" in warnings[0]


# --- RedisPool and the sync facade, on a real server -------------------------------------------


async def test_redis_pool_open_and_aclose(redis_server: RedisServer) -> None:
    redis = RedisPool.from_url(redis_server.url)
    with pytest.raises(anypool.PoolClosed, match=r"await pool\.open\(\)"):
        await redis.ping()
    await redis.aclose()  # never opened: nothing to do
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(redis.open)
        await redis.open()  # again: nothing to do
        await redis.pool.wait(timeout=30)
        assert await redis.set("open-close", "1")
        async with redis.subscribe("open-close-news") as sub:
            async with anyio.create_task_group() as tg:
                tg.start_soon(redis.aclose)  # from another task, with a subscription open
            with pytest.raises(anypool.PoolClosed):
                await sub.get()  # closing ended the subscription
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await redis.get("open-close")
    with pytest.raises(RuntimeError, match="opens once"):
        await redis.open()
    assert redis.statistics().pool_size == 0


async def test_redis_pool_in_async_with_refuses_open_and_aclose(redis_server: RedisServer) -> None:
    async with RedisPool.from_url(redis_server.url) as redis:
        with pytest.raises(RuntimeError, match="by `async with`"):
            await redis.open()
        with pytest.raises(RuntimeError, match="open in an `async with` block"):
            await redis.aclose()
        assert await redis.ping()
    await redis.aclose()  # closed by the block: nothing to do


async def test_redis_pool_listener_failure_surfaces_on_aclose(redis_server: RedisServer) -> None:
    """A listener past its restart budget is a background failure: the pool closes, the next
    call says why, aclose() raises it."""
    redis = RedisPool.from_url(redis_server.url)
    await redis.open()

    def handler(event: Any) -> None:
        raise LookupError("handler bug")

    with anyio.fail_after(30):
        await redis.start_listener(
            handler, channels=["open-close-fail"],
            restart=anypool.RestartPolicy(max_restarts=0),
        )  # fmt: skip
        async with RedisPool.from_url(redis_server.url) as publisher:
            await publisher.publish("open-close-fail", "boom")
        await wait_for_failure(redis.pool)
    with pytest.raises(anypool.PoolClosed, match="background task failed"):
        await redis.ping()
    with pytest.raises(BaseExceptionGroup) as group:
        await redis.aclose()
    assert group.group_contains(LookupError)


def test_blocking_pool_open_and_close(redis_server: RedisServer) -> None:
    redis = anypool.BlockingRedisPool.from_url(redis_server.url)
    with pytest.raises(anypool.PoolClosed, match=r"redis\.open\(\)"):
        redis.ping()
    redis.close()  # never opened: nothing to do
    redis.open()
    redis.open()  # again: nothing to do
    try:
        assert redis.set("blocking-open", "1")
        assert redis.get("blocking-open") == b"1"
    finally:
        redis.close()
    redis.close()
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        redis.ping()
    with pytest.raises(RuntimeError, match="opens once"):
        redis.open()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])  # uvloop: with the generic pool above
def test_a_redis_pool_left_open_is_closed_when_the_loop_ends(
    backend: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis = RedisPool.from_url(redis_server.url, min_size=2, name="left-open")

    async def main() -> None:
        await redis.open()
        await redis.pool.wait(timeout=30)
        assert await redis.ping()

    with caplog.at_level(logging.WARNING, logger="anypool.pool"):
        anyio.run(main, backend=backend)
    assert redis.statistics().pool_size == 0
    assert any("left-open" in r.getMessage() for r in caplog.records)
