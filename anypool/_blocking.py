"""BlockingRedisPool and BlockingRedisCluster: the async clients' command surface for
synchronous code.

The async pool runs in a helper thread, on an anyio blocking portal (asyncio or trio); every
call from any thread is handed to that event loop and waited for.  The portal is thread-safe, so
one BlockingRedisPool serves many threads at once, sharing one pool.  Leaving its ``with`` block
closes the pool and stops the thread.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, ExitStack
from types import TracebackType
from typing import Any, Literal, NoReturn, Self, TypeVar

import anyio.from_thread
from anyio.from_thread import BlockingPortal

from ._client import Lock, Pipeline, RedisPool, Script
from ._cluster import ClusterPipeline, RedisCluster
from ._config import RedisConfig
from ._errors import PoolClosed
from ._pubsub import Event
from ._stats import Health, PoolStatistics

__all__ = ["BlockingRedisCluster", "BlockingRedisPool"]

Backend = Literal["asyncio", "trio"]
V = TypeVar("V")


class _Blocking:
    """Calls the wrapped async object's methods through the portal, wrapping what they return."""

    def __init__(self, portal: BlockingPortal, target: Any) -> None:
        self._portal = portal
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return _run(self._portal, self, attribute, args, kwargs)

        call.__name__ = name
        call.__doc__ = attribute.__doc__
        return call


def _run(portal: BlockingPortal, owner: Any, function: Any, args: Any, kwargs: Any) -> Any:
    """Run ``function`` in the event loop; await what it returns there; wrap the result."""
    result = portal.call(lambda: function(*args, **kwargs))
    if inspect.isawaitable(result):  # e.g. a pipeline's immediate command after WATCH
        awaitable = result
        result = portal.call(lambda: awaitable)
    return _wrap(portal, owner, result)


def _wrap(portal: BlockingPortal, owner: Any, result: Any) -> Any:
    if isinstance(owner, _Blocking) and result is owner._target:
        return owner  # chaining: pipe.set(...).get(...)
    if isinstance(result, Pipeline | ClusterPipeline):
        return BlockingPipeline(portal, result)
    if isinstance(result, Lock):
        return BlockingLock(portal, result)
    if isinstance(result, Script):
        return BlockingScript(portal, result)
    if inspect.isasyncgen(result):
        return _iterate(portal, result)
    return result


def _iterate(portal: BlockingPortal, generator: Any) -> Iterator[Any]:
    """An async generator (scan_iter...) as a plain iterator."""
    while True:
        try:
            yield portal.call(generator.__anext__)
        except StopAsyncIteration:
            return


class BlockingPipeline(_Blocking):
    """A :class:`Pipeline` for synchronous code: ``with redis.pipeline() as pipe: ...``."""

    def __enter__(self) -> BlockingPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._portal.call(self._target.reset)

    def __len__(self) -> int:
        return len(self._target)


class BlockingLock(_Blocking):
    """A :class:`Lock` for synchronous code: ``with redis.lock("name"): ...``."""

    def __enter__(self) -> BlockingLock:
        self._portal.call(self._target.__aenter__)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._portal.call(self._target.release)


class BlockingScript(_Blocking):
    """A :class:`Script` for synchronous code: ``script(keys=[...], args=[...])``."""

    def __call__(self, keys: Any = (), args: Any = (), client: Any = None) -> Any:
        if isinstance(client, _Blocking):
            client = client._target
        return _run(self._portal, self, self._target, (keys, args, client), {})


class BlockingConnection(_Blocking):
    """An exclusive :class:`RedisConnection` for synchronous code."""


class BlockingSubscription(_Blocking):
    """A :class:`Subscription` for synchronous code: iterate it, or ``get(timeout)``."""

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self._portal.call(self._target.__anext__)
            except StopAsyncIteration:
                return

    def get(self, timeout: float | None = None) -> Event:
        """The next message or event; ``anypool.TimeoutError`` after ``timeout`` seconds."""
        event: Event = self._portal.call(lambda: self._target.get(timeout))
        return event


class BlockingRedisPool(_Blocking):
    """RedisPool's command API, synchronously, from any number of threads.

    ::

        with anypool.BlockingRedisPool.from_url("redis://localhost:6379/0") as redis:
            redis.set("greeting", "hello")
            print(redis.get("greeting"))
            with redis.pipeline() as pipe:
                pipe.set("a", 1).incr("a")
                print(pipe.execute())

    Args:
        config: as :class:`RedisPool`.
        backend: the event loop run in the helper thread, ``"asyncio"`` or ``"trio"``.
        backend_options: anyio's options for that backend, e.g. ``{"use_uvloop": True}`` to
            run asyncio on uvloop's event loop.
        client: an existing (not yet entered) RedisPool to run, instead of making one.
        **options: as :class:`RedisPool`.
    """

    def __init__(
        self,
        config: RedisConfig | None = None,
        *,
        backend: Backend = "asyncio",
        backend_options: Mapping[str, Any] | None = None,
        client: RedisPool | None = None,
        **options: Any,
    ) -> None:
        self._client = client if client is not None else RedisPool(config, **options)
        self._backend = backend
        self._backend_options = dict(backend_options or {})
        self._exit_stack: ExitStack | None = None
        self._held: set[_Held[Any]] = set()  # acquire()/subscribe() blocks not left yet
        self._held_lock = threading.Lock()
        self._used = False  # opened once already (a pool opens once)
        # Serializes opening and closing across threads: a second open() waits for the first,
        # a close() racing an open() runs after it.
        self._life_lock = threading.Lock()

    _client_class: Any = RedisPool  # what from_url() makes

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        backend: Backend = "asyncio",
        backend_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """As :meth:`RedisPool.from_url` (:meth:`RedisCluster.from_url` for a cluster)."""
        return cls(
            backend=backend,
            backend_options=backend_options,
            client=cls._client_class.from_url(url, **options),
        )

    @classmethod
    def from_sentinel(
        cls,
        sentinels: Sequence[tuple[str, int] | str],
        service_name: str,
        role: str = "primary",
        *,
        backend: Backend = "asyncio",
        backend_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Self:
        """As :meth:`RedisPool.from_sentinel`: the primary (or the replicas) of a service
        watched by Sentinel, following failovers (docs/sentinel.md)."""
        return cls(
            backend=backend,
            backend_options=backend_options,
            client=RedisPool.from_sentinel(sentinels, service_name, role, **options),
        )

    def open(self) -> None:
        """Open the pool without a ``with`` block (start the helper thread and its event loop,
        open the pool there); close it with :meth:`close`.  ``with`` stays the recommended
        way.  Thread-safe: calls made from other threads while one opens wait for it and
        return once the pool is open; calling it again while open does nothing.

        Raises:
            RuntimeError: the pool was closed (a pool opens once: make a new one).
            Exception: what opening raised (the pool is then closed, the thread stopped).
        """
        with self._life_lock:
            if self._exit_stack is None:
                self._enter()

    def close(self) -> None:
        """Close a pool opened with :meth:`open`, as leaving ``with`` does: leave every
        connection and subscription still held, close the pool, stop the helper thread.
        Does nothing if it is not open.  Callable from any thread but the helper's own.
        Thread-safe: a close() made while an :meth:`open` runs in another thread waits for it,
        then closes, so the pool ends closed; a second call does nothing.

        Raises:
            BaseExceptionGroup: a background task of the pool failed (what the async pool's
                ``async with`` would raise).
        """
        with self._life_lock:
            self._exit(None, None, None)

    def __enter__(self) -> BlockingRedisPool:
        with self._life_lock:
            return self._enter()

    def _enter(self) -> BlockingRedisPool:
        if self._exit_stack is not None:
            raise RuntimeError("this BlockingRedisPool is already open")
        if self._used:
            raise RuntimeError(
                "this BlockingRedisPool was closed, and a pool opens once: make a new one"
            )
        self._used = True  # from here on, whatever happens: a pool opens once
        stack = ExitStack()
        portal = stack.enter_context(
            anyio.from_thread.start_blocking_portal(self._backend, self._backend_options)
        )
        try:
            stack.enter_context(portal.wrap_async_context_manager(self._client))
        except BaseException:
            stack.close()
            raise
        super().__init__(portal, self._client)
        self._exit_stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._life_lock:
            self._exit(exc_type, exc, tb)

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            # A connection or subscription whose `with` block was never left holds a task in
            # the portal that waits for its exit, and the portal would wait for that task
            # forever: leave them first.
            for held in list(self._held):
                held.abandon()
            stack.__exit__(exc_type, exc, tb)

    def __getattr__(self, name: str) -> Any:
        if self._exit_stack is None:
            state = "closed" if self._used else "not open yet"
            raise PoolClosed(
                f"this BlockingRedisPool is {state}: use it inside `with BlockingRedisPool(...) "
                f"as redis:` (or call `redis.open()` first and `redis.close()` at the end)"
            )
        return super().__getattr__(name)

    def subscribe(
        self, *channels: Any, **options: Any
    ) -> AbstractContextManager[BlockingSubscription]:
        """``with redis.subscribe("news") as sub: for message in sub: ...`` (see
        :meth:`RedisPool.subscribe` for the options)."""
        return self._subscription(self._client.subscribe(*channels, **options))

    def psubscribe(
        self, *patterns: Any, **options: Any
    ) -> AbstractContextManager[BlockingSubscription]:
        """As :meth:`subscribe`, for patterns."""
        return self._subscription(self._client.psubscribe(*patterns, **options))

    def ssubscribe(
        self, *channels: Any, **options: Any
    ) -> AbstractContextManager[BlockingSubscription]:
        """As :meth:`subscribe`, for sharded channels (on a cluster: of one slot, followed
        across migrations and failovers)."""
        return self._subscription(self._client.ssubscribe(*channels, **options))

    def pubsub(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not offered on the synchronous pool (redis-py's sync ``PubSub`` has no counterpart
        yet): refused rather than handing sync code an async object whose calls would do
        nothing.

        Raises:
            NotImplementedError: always; it says what to use instead.
        """
        raise NotImplementedError(
            "BlockingRedisPool.pubsub() is not offered: in synchronous code use "
            "`with redis.subscribe(*channels) as sub: for message in sub: ...` (or psubscribe); "
            "redis-py's PubSub API is RedisPool.pubsub(), in async code"
        )

    def _subscription(self, context: Any) -> AbstractContextManager[BlockingSubscription]:
        return _Held(self, lambda: context, BlockingSubscription)

    def acquire(
        self, *, timeout: float | None = None
    ) -> AbstractContextManager[BlockingConnection]:
        """An exclusive connection for a ``with`` block (see :meth:`RedisPool.acquire`)."""
        kwargs = {} if timeout is None else {"timeout": timeout}
        return _Held(self, lambda: self._client.acquire(**kwargs), BlockingConnection)

    @property
    def replica(self) -> _Blocking:
        """As :attr:`RedisPool.replica`: the Sentinel pool's read pool over the replicas,
        synchronously (usable while this pool is open)."""
        if self._exit_stack is None:
            raise RuntimeError("open the pool (with ... or open()) before using its replicas")
        return _Blocking(self._portal, self._client.replica)

    @property
    def health(self) -> Health:
        """The pool's health."""
        return self._client.health

    def statistics(self) -> PoolStatistics:
        """The pool's statistics."""
        return self._client.statistics()

    def __repr__(self) -> str:
        return f"<BlockingRedisPool {self._backend} {self._client!r}>"


class _Held(AbstractContextManager[V]):
    """An async context manager (an exclusive connection, a subscription) entered through the
    portal for a ``with`` block; the pool leaves it itself if the block never ends."""

    def __init__(
        self,
        owner: BlockingRedisPool,
        make: Callable[[], AbstractAsyncContextManager[Any]],
        view: Callable[[BlockingPortal, Any], V],
    ) -> None:
        self._owner = owner
        self._make = make
        self._view = view
        self._context: Any = None

    def __enter__(self) -> V:
        portal = self._owner._portal
        self._context = portal.wrap_async_context_manager(self._make())
        value = self._context.__enter__()
        with self._owner._held_lock:
            self._owner._held.add(self)
        return self._view(portal, value)

    def __exit__(self, *exc_info: Any) -> bool | None:
        if self._release():
            result: bool | None = self._context.__exit__(*exc_info)
            return result
        return None

    def abandon(self) -> None:
        """The pool is closing and this block never ended: leave it now."""
        if self._release():
            self._context.__exit__(None, None, None)

    def _release(self) -> bool:
        """Whether this call is the one to leave the context (exactly once)."""
        with self._owner._held_lock:
            if self not in self._owner._held:
                return False
            self._owner._held.discard(self)
            return True


class BlockingRedisCluster(BlockingRedisPool):
    """RedisCluster's command API, synchronously, from any number of threads (as
    :class:`BlockingRedisPool`: the cluster client runs in a helper thread's event loop)::

        with anypool.BlockingRedisCluster.from_url("redis://127.0.0.1:7000") as redis:
            redis.set("{user:1}:name", "Ada")
            print(redis.mget(["{user:1}:name", "other"]))

    Args:
        host, port, options: as :class:`RedisCluster` (keyword options).
        backend, backend_options: as :class:`BlockingRedisPool`.
        client: an existing (not yet entered) RedisCluster to run, instead of making one.

    ``subscribe()``, ``psubscribe()`` and ``ssubscribe()`` are the cluster's (see
    :meth:`RedisCluster.ssubscribe`); ``acquire()`` is not offered on a cluster (it raises
    NotImplementedError saying so).
    """

    _client_class = RedisCluster

    def __init__(
        self,
        host: str | None = None,
        port: int = 6379,
        *,
        backend: Backend = "asyncio",
        backend_options: Mapping[str, Any] | None = None,
        client: RedisCluster | None = None,
        **options: Any,
    ) -> None:
        cluster = client if client is not None else RedisCluster(host, port, **options)
        super().__init__(
            backend=backend,
            backend_options=backend_options,
            client=cluster,  # type: ignore[arg-type]  # the same surface, run the same way
        )

    def _not_on_a_cluster(self, what: str) -> NoReturn:
        raise NotImplementedError(
            f"BlockingRedisCluster.{what}() is not offered: a cluster has no single connection "
            f"to hold; use the commands (and pipeline()) instead"
        )

    def acquire(self, *, timeout: float | None = None) -> NoReturn:
        """Not offered on a cluster (raises NotImplementedError)."""
        self._not_on_a_cluster("acquire")

    @property
    def health(self) -> NoReturn:
        """Not offered on a cluster: see :meth:`statistics` and each node's pool."""
        self._not_on_a_cluster("health")

    def statistics(self) -> dict[str, int]:  # type: ignore[override]
        """The cluster client's counters (:meth:`RedisCluster.cluster_statistics`)."""
        cluster: RedisCluster = self._client  # type: ignore[assignment]
        return cluster.cluster_statistics()

    def __repr__(self) -> str:
        return f"<BlockingRedisCluster {self._backend} {self._client!r}>"
