"""`await pool.open()` / `await pool.aclose()`: a pool opened in one task and closed in another.

The generic pool over a fake factory pins the semantics (open twice, close twice, open after
close, cancellation, a failing background task, the event loop ending); RedisPool and the sync
facade are then checked against a real server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
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


def _holds(error: BaseException | None, kind: type[BaseException]) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(kind) is not None
    return isinstance(error, kind)


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
    # Chained from the failure itself while the pool shuts down, from the group the task group
    # raised once it has: either way the ZeroDivisionError is there.
    assert _holds(info.value.__cause__, ZeroDivisionError)
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


# --- regressions: aclose() from a pool task, cancelled first open(), failure windows, loops -----


async def test_aclose_from_a_task_the_pool_runs_begins_the_close_and_returns() -> None:
    """It used to wait for the close, which waits for that very task: a deadlock (and on trio
    a run that never ended)."""
    factory = FakeFactory()
    pool = Pool(factory, min_size=1, **QUIET)
    await pool.open()
    returned = anyio.Event()

    async def closer(task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await pool.aclose()  # begins the close; this task is cancelled as the pool closes
        returned.set()
        await anyio.sleep_forever()

    with anyio.fail_after(30):
        await pool.wait()
        await pool.start_task(closer)
        await returned.wait()
        await pool.aclose()  # from outside: waits for the close begun above
    assert not factory.open_resources
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await pool.lease()


async def test_aclose_from_a_listener_handler_closes_the_redis_pool(
    redis_server: RedisServer,
) -> None:
    redis = RedisPool.from_url(redis_server.url)
    await redis.open()
    returned = anyio.Event()

    async def handler(event: Any) -> None:
        await redis.aclose()
        returned.set()

    with anyio.fail_after(30):
        await redis.start_listener(handler, channels=["open-close-shutdown"])
        await redis.publish("open-close-shutdown", "shutdown")
        await returned.wait()
        await redis.aclose()
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await redis.ping()


async def test_a_second_open_fails_when_the_first_was_cancelled_and_closed_the_pool() -> None:
    factory = FakeFactory()
    pool = Pool(factory, **QUIET)
    outcome: list[BaseException | None] = []

    async def second() -> None:
        try:
            await pool.open()
        except RuntimeError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as scope:
                scope.cancel()
                tg.start_soon(second)
                await pool.open()  # the first call, cancelled: it closes the pool again
    assert len(outcome) == 1
    assert isinstance(outcome[0], RuntimeError)
    assert "first open() was cancelled" in str(outcome[0])
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        await pool.lease()
    assert not factory.open_resources


async def test_calls_made_while_a_failed_pool_shuts_down_name_the_failure() -> None:
    """The failure is recorded when it is raised, not when the task group exits: a call made
    while the shutdown waits for a held lease says why (on trio it said only "is closed")."""
    factory = FakeFactory()
    pool = Pool(factory, close_timeout=30, **QUIET)
    await pool.open()

    async def boom(task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        raise KeyError("boom")

    with anyio.fail_after(30):
        held = await pool.lease()  # keeps the shutdown waiting, up to close_timeout
        await pool.start_task(boom)
        while True:  # the first PoolClosed seen, from inside the shutdown window
            try:
                pool.check_open()
            except anypool.PoolClosed as exc:
                first = exc
                break
            await anyio.sleep(0.01)
        assert "background task failed" in str(first)
        assert "KeyError" in str(first)
        assert first.__cause__ is not None
        with pytest.raises(anypool.PoolClosed, match="background task failed") as info:
            await pool.lease()
        assert info.value.__cause__ is not None
        await pool.release(held)
        with pytest.raises(BaseExceptionGroup) as group:
            await pool.aclose()
    assert group.group_contains(KeyError)
    assert not factory.open_resources


async def test_a_subscription_ended_by_a_background_failure_names_it(
    redis_server: RedisServer,
) -> None:
    redis = RedisPool.from_url(redis_server.url)
    await redis.open()
    pubsub = redis.pubsub(ignore_subscribe_messages=True)

    async def boom(task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        raise KeyError("boom")

    with anyio.fail_after(30):
        await pubsub.subscribe("open-close-bgfail")
        await redis.pool.start_task(boom)
        with pytest.raises(anypool.PoolClosed, match="background task failed") as info:
            while True:  # bounded by fail_after: ends with the pool
                await pubsub.get_message(timeout=None)
        assert "KeyError" in str(info.value)
        assert info.value.__cause__ is not None
        with pytest.raises(BaseExceptionGroup) as group:
            await redis.aclose()
    assert group.group_contains(KeyError)


@pytest.mark.parametrize(
    "use_uvloop", [False, True] if importlib.util.find_spec("uvloop") else [False]
)
def test_a_call_from_another_asyncio_loop_fails_at_once(
    use_uvloop: bool, redis_server: RedisServer
) -> None:
    """It hung forever, and asyncio.wait_for could not end it."""
    import asyncio

    def new_loop() -> asyncio.AbstractEventLoop:
        if use_uvloop:
            import uvloop

            return uvloop.new_event_loop()
        return asyncio.new_event_loop()

    redis = RedisPool.from_url(redis_server.url)
    home, other = new_loop(), new_loop()
    try:
        home.run_until_complete(redis.open())
        assert home.run_until_complete(redis.ping())

        async def from_the_other_loop() -> None:
            with pytest.raises(RuntimeError, match="another event loop") as info:
                await asyncio.wait_for(redis.get("open-close-loop"), 30)
            assert "@pytest.mark.anyio" in str(info.value)

        other.run_until_complete(from_the_other_loop())
        assert home.run_until_complete(redis.ping())  # the pool is unharmed
        home.run_until_complete(redis.aclose())
    finally:
        other.close()
        home.close()


def _hold_blocking_open(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[threading.Event, threading.Event]:
    """Make a BlockingRedisPool's open() stop as it starts its event loop thread: ``opening``
    is set when it gets there, and it goes on when ``proceed`` is set."""
    opening, proceed = threading.Event(), threading.Event()
    real = anyio.from_thread.start_blocking_portal

    @contextlib.contextmanager
    def slow_portal(*args: Any, **kwargs: Any) -> Iterator[Any]:
        opening.set()
        assert proceed.wait(30)
        with real(*args, **kwargs) as portal:
            yield portal

    monkeypatch.setattr(anyio.from_thread, "start_blocking_portal", slow_portal)
    return opening, proceed


def test_concurrent_blocking_opens_wait_for_the_first(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They failed with "was closed, and a pool opens once" while the first was opening."""
    opening, proceed = _hold_blocking_open(monkeypatch)
    redis = anypool.BlockingRedisPool.from_url(redis_server.url)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            redis.open()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    threads[0].start()
    assert opening.wait(30)  # the first open() is in progress
    for thread in threads[1:]:
        thread.start()
    proceed.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    try:
        assert errors == []
        assert redis.ping()
    finally:
        redis.close()


def test_a_blocking_close_racing_an_open_leaves_it_closed(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() used to return at once while open() ran, and the pool then stayed open."""
    opening, proceed = _hold_blocking_open(monkeypatch)
    redis = anypool.BlockingRedisPool.from_url(redis_server.url)
    opener = threading.Thread(target=redis.open)
    opener.start()
    assert opening.wait(30)  # open() is in progress
    closer = threading.Thread(target=redis.close)
    closer.start()
    proceed.set()
    opener.join(30)
    closer.join(30)
    assert not opener.is_alive() and not closer.is_alive()
    with pytest.raises(anypool.PoolClosed, match="is closed"):
        redis.ping()
