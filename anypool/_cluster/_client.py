"""RedisCluster: redis-py's command API over a Redis Cluster, one anypool pool per node.

One task group holds everything: the topology task (see ``_topology``) and one
:class:`~anypool.RedisPool` per node, each with its own health checks, breaker and
auto-pipelining.  A command is routed (``_routing``) by the slot table of the moment and sent
to its node's pool; what the node answers decides what happens next:

* ``MOVED``: the table learns the slot's new owner at once (and a refresh is asked for); the
  command goes there.  ``ASK``: it goes once to the node named, preceded by ``ASKING`` in the
  same write on the same connection.  Neither closes any connection: other tasks' commands in
  flight are never touched.
* ``TRYAGAIN`` and ``CLUSTERDOWN``: the command is sent again after a jittered backoff (the
  server refused it, so it did not run).
* The node cannot be reached, or its pool refuses (breaker open, no slot in time): the
  command was not sent; a refresh is asked for, and it is sent where the table then says.
* The connection failed after the command was written: it may have run; the error is raised
  as it is, never retried here.

Every loop is bounded: ``cluster_max_redirects`` redirects and ``cluster_retry_timeout``
seconds, after which :class:`~anypool.ClusterError` names the slot, the node and what was seen.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from anyio import AsyncContextManagerMixin
from redis.exceptions import (
    AskError,
    ClusterDownError,
    DataError,
    MovedError,
    RedisError,
    TryAgainError,
    WatchError,
)

from .. import _pubsub
from .._backoff import backoff_delay
from .._client import Lock, Pipeline, RedisErrorInPipeline, RedisPool, _Commands, _Queued
from .._compat import raise_pipeline_errors, response_callbacks
from .._config import PoolConfig, RedisConfig, split_url_over
from .._errors import (
    ClusterError,
    CommandNotAllowed,
    ConfigError,
    ConnectError,
    CrossSlotError,
    InvalidArgument,
    PoolClosed,
    PoolTimeout,
    PoolUnavailable,
    ResponseError,
)
from .._errors import ConnectionError as AnyPoolConnectionError
from .._errors import TimeoutError as AnyPoolTimeoutError
from .._keywords import sort_options
from .._owner import Owner
from .._retry import Sent
from .._rules import refuse_on_pool, wire_args
from .._stats import PoolStatistics
from ._keys import CommandTable
from ._pubsub import ClusterHubs
from ._routing import (
    ALL_NODES,
    DEFAULT_NODE,
    NODE_FLAGS,
    PRIMARIES,
    RANDOM,
    REPLICAS,
    Route,
    merge,
    merger,
    route,
    single_key_command,
)
from ._slots import SLOTS, Node, Shard, SlotTable, key_slot
from ._topology import Topology

__all__ = ["ClusterPipeline", "RedisCluster"]

_READ_PREFERENCES = ("primary", "prefer-replica", "any")
_COUNTERS = ("moved", "ask", "tryagain", "clusterdown", "not_sent_retries", "gave_up")

# Failures that prove the command was not sent: the node's pool gave no connection.
# (PoolClosed: a node pool closed as its node left the cluster; the cluster client's own close
# is told apart by its state.)
_NOT_SENT = (ConnectError, PoolTimeout, PoolUnavailable, PoolClosed)
# Failures that may or may not come after the write: the attempt's Sent record decides (a
# command queued on a shared connection that broke before its turn was never written).
_MAYBE_SENT = (*_NOT_SENT, AnyPoolConnectionError, AnyPoolTimeoutError)


class _NodePool:
    """A node's pool, running as a task in the cluster's task group until :meth:`close`."""

    def __init__(self, node: Node, pool: RedisPool) -> None:
        self.node = node
        self.pool = pool
        self.ready = anyio.Event()
        self.stop = anyio.Event()
        self.failed: BaseException | None = None

    async def run(self) -> None:
        try:
            async with self.pool:
                self.ready.set()
                await self.stop.wait()
        except Exception as exc:  # pragma: no cover - a node pool's own background failure
            self.failed = exc
            raise
        finally:
            self.ready.set()


async def _all(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``calls`` concurrently and return their results in order.  Once all have ended, the
    first failure (in call order) is raised as it is: a command split across slots or nodes
    fails as one command would, not with an exception group.

    Cancellation: every call is cancelled with the caller."""
    if len(calls) == 1:
        return [await calls[0]()]
    results: list[Any] = [None] * len(calls)
    errors: list[Exception | None] = [None] * len(calls)

    async def one(index: int) -> None:
        try:
            results[index] = await calls[index]()
        except Exception as exc:
            errors[index] = exc

    async with anyio.create_task_group() as task_group:
        for index in range(len(calls)):
            task_group.start_soon(one, index)
    for error in errors:
        if error is not None:
            raise error
    return results


def _node_of(value: Any, field: str = "startup_nodes") -> Node:
    """A node from redis-py's ``ClusterNode``, a ``(host, port)`` pair or ``"host:port"``.

    Raises:
        ConfigError: (``field`` named) anything else, an empty host, or a port outside
            1-65535.
    """
    host: Any = None
    port: Any = None
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        host = host.strip("[]") if sep else None
    elif isinstance(value, tuple | list) and len(value) == 2:
        host, port = value
    elif hasattr(value, "host") and hasattr(value, "port"):
        host, port = value.host, value.port
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if (
        isinstance(host, str)
        and host
        and isinstance(port, int)
        and not isinstance(port, bool)
        and 1 <= port <= 65535
    ):
        return Node(host, port)
    raise ConfigError(
        field, value,
        "each node must be (host, port), 'host:port' or a ClusterNode, with a host and a "
        "port from 1 to 65535",
    )  # fmt: skip


class RedisCluster(_Commands, _pubsub.PubSubMethods, AsyncContextManagerMixin):  # type: ignore[misc]  # as RedisPool
    """A Redis Cluster client with redis-py's command API, on trio and asyncio.

    ::

        async with anypool.RedisCluster.from_url("redis://127.0.0.1:7000") as redis:
            await redis.set("{user:1}:name", "Ada")
            print(await redis.mget("a", "b", "c"))      # split per slot, merged in order

    Args:
        host, port: one startup node (``startup_nodes`` gives several).
        startup_nodes: nodes to discover the cluster from: ``(host, port)`` pairs,
            ``"host:port"`` strings or redis-py ``ClusterNode`` objects.
        config: connection settings for every node (host and port are each node's own).
        pool_config: pool settings for each node's pool.
        cluster_max_redirects: ``MOVED``/``ASK`` redirects one command may follow (16, as
            redis-py's ``RedisClusterRequestTTL``).
        cluster_retry_timeout: seconds a command may wait, over all its retries, for its slot
            to have a reachable owner (a failover, ``CLUSTERDOWN``, ``TRYAGAIN``).
        cluster_refresh_interval: seconds between periodic topology refreshes.
        read_from_replicas: redis-py's option: True reads from the primary and its replicas
            in turn (as ``read_preference="any"``).
        read_preference: where commands that only read go: ``"primary"`` (the default),
            ``"prefer-replica"`` (the replicas in turn; the primary when it has none) or
            ``"any"``.  Writes always go to primaries; a replica that lags answers reads
            with what it has (Redis replication is asynchronous).
        **options: any option of :class:`~anypool.RedisPool` except the retry options, for
            every node's pool.

    Raises:
        ConfigError: an option is unknown or invalid, or there is no startup node.
    """

    def __init__(
        self,
        host: str | None = None,
        port: int = 6379,
        *,
        startup_nodes: Iterable[Any] | None = None,
        config: RedisConfig | None = None,
        pool_config: PoolConfig | None = None,
        cluster_max_redirects: int = 16,
        cluster_retry_timeout: float = 15.0,
        cluster_refresh_interval: float = 30.0,
        read_from_replicas: bool = False,
        read_preference: str | None = None,
        **options: Any,
    ) -> None:
        connection_options, pool_options, client_options = sort_options(options)
        for name in ("retry", "retry_on_error", "retry_on_timeout", "retry_may_have_run"):
            if name in client_options:
                raise ConfigError(
                    name, client_options[name],
                    "is not taken by RedisCluster: it retries what was redirected or provably "
                    "not sent itself (see cluster_retry_timeout and cluster_max_redirects)",
                )  # fmt: skip
        if (
            not isinstance(cluster_max_redirects, int)
            or isinstance(cluster_max_redirects, bool)
            or cluster_max_redirects < 1
        ):
            raise ConfigError(
                "cluster_max_redirects", cluster_max_redirects, "must be an integer >= 1"
            )
        for name, value, least in (
            ("cluster_retry_timeout", cluster_retry_timeout, 0.0),
            ("cluster_refresh_interval", cluster_refresh_interval, 0.01),
        ):
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not value > least
            ):
                raise ConfigError(name, value, f"must be a finite number of seconds > {least:g}")
        if not isinstance(read_from_replicas, bool):
            raise ConfigError("read_from_replicas", read_from_replicas, "must be True or False")
        if read_preference is None:
            read_preference = "any" if read_from_replicas else "primary"
        elif read_preference not in _READ_PREFERENCES:
            raise ConfigError(
                "read_preference", read_preference,
                f"must be one of {', '.join(map(repr, _READ_PREFERENCES))}",
            )  # fmt: skip
        elif read_from_replicas and read_preference == "primary":
            raise ConfigError(
                "read_preference", read_preference, "contradicts read_from_replicas=True"
            )
        self._read_preference = read_preference
        self._turn = 0
        config = config or RedisConfig()
        if connection_options:
            config = config.replace(**connection_options)
        if read_preference != "primary":
            # READONLY on every node's connections: a replica then serves reads of its
            # primary's slots (a primary ignores it), whatever role a node has next.
            config = config.replace(readonly=True)
        if startup_nodes is not None:
            seeds = [_node_of(n) for n in startup_nodes]
            if not seeds:
                raise ConfigError(
                    "startup_nodes", [], "is empty: name at least one node of the cluster"
                )
        else:
            seeds = []
        if host is not None:
            seeds.insert(0, _node_of((host, port), "host"))
        if not seeds:
            seeds = [Node(config.host, config.port)]
        if config.db != 0:
            raise ConfigError("db", config.db, "must be 0: a cluster has one database")
        self._config = config
        self._pool_config = (pool_config or PoolConfig()).replace(**pool_options)
        self._client_options = client_options
        self._max_redirects = cluster_max_redirects
        self._retry_timeout = float(cluster_retry_timeout)
        self._topology = Topology(
            config,
            seeds,
            refresh_interval=float(cluster_refresh_interval),
            on_refresh=self._prune,
        )
        self._callbacks = {
            wire: response_callbacks(config.protocol, wire, config.legacy_responses)
            for wire in (2, 3)
        }
        self._encoder = self.get_encoder()
        self._nodes: dict[Node, _NodePool] = {}
        self._task_group: anyio.abc.TaskGroup | None = None
        self._life = "new"
        self._rand = random.Random()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._single_key: dict[str, int] = {}  # see _learn_single_key
        self._owner = Owner("RedisCluster", lambda: self)  # open()/aclose()
        self._hubs = ClusterHubs(_Host(self), self._topology, config, self._pool_config)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisCluster:
        """A cluster client from a ``redis://`` or ``rediss://`` URL of one startup node (as
        :meth:`RedisPool.from_url <anypool.RedisPool.from_url>`: the URL wins over keywords)."""
        pool_config = options.pop("pool_config", None)
        cluster_options = {k: options.pop(k) for k in list(options) if k.startswith("cluster_")}
        startup_nodes = options.pop("startup_nodes", None)
        redis_options, pool_options, client_options = sort_options(options)
        config, url_options = split_url_over(url, redis_options)
        return cls(
            startup_nodes=startup_nodes,
            config=config,
            pool_config=pool_config,
            **cluster_options,
            **pool_options,
            **client_options,
            **url_options,
        )

    # --- life cycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncIterator[RedisCluster]:
        if self._life != "new":
            raise RuntimeError("a RedisCluster opens once: make a new one to open again")
        self._life = "open"
        body_error: BaseException | None = None
        topology_scope = anyio.CancelScope()

        async def topology(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with topology_scope:
                await self._topology.run(task_status=task_status)

        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                await task_group.start(topology, name="anypool cluster topology")
                try:
                    yield self
                except BaseException as exc:
                    # The user's block's own error: re-raised as it is once the task group
                    # has exited (inside, it would come out wrapped in an ExceptionGroup).
                    body_error = exc
                finally:
                    self._life = "closing"
                    self._hubs.close()
                    topology_scope.cancel()
                    # Each node pool closes as RedisPool does (leases get close_timeout).
                    for handle in list(self._nodes.values()):
                        handle.stop.set()
        finally:
            self._life = "closed"
            self._task_group = None
        if body_error is not None:
            raise body_error

    async def open(self) -> None:
        """Open the client without an ``async with`` block; close it with :meth:`aclose` (as
        :meth:`RedisPool.open <anypool.RedisPool.open>`: the task group lives in an owner task
        on the running event loop).  Opening does no I/O; the first command waits for the
        first topology refresh.

        Raises:
            RuntimeError: the client was opened before (it opens once), or in another loop.
        """
        if self._life != "new" and not self._owner.used:
            raise RuntimeError("a RedisCluster opens once: make a new one to open again")
        await self._owner.open()

    async def aclose(self) -> None:
        """Close a client opened with :meth:`open`, as leaving ``async with`` does (every node
        pool closes).  Does nothing if it was never opened or is closed already.

        Raises:
            RuntimeError: it is open in an ``async with`` block (leave the block instead).

        Cancellation: shielded; the cancellation takes effect once the client is closed.
        """
        if not self._owner.used:
            if self._life == "open":
                raise RuntimeError(
                    "the RedisCluster is open in an `async with` block: it closes when the "
                    "block ends (aclose() closes clients opened with open())"
                )
            return
        await self._owner.close()

    # --- nodes --------------------------------------------------------------------------------

    async def _pool_for(self, node: Node) -> RedisPool:
        handle = self._nodes.get(node)
        if handle is None:
            if self._life != "open" or self._task_group is None:
                raise PoolClosed("the cluster client is closed")
            config = self._config.replace(host=node.host, port=node.port)
            name = f"redis cluster node {node}"
            pool = RedisPool(
                config,
                pool_config=self._pool_config.replace(name=name),
                **self._client_options,
            )
            handle = self._nodes[node] = _NodePool(node, pool)
            self._task_group.start_soon(handle.run, name=name)
        if not handle.ready.is_set():
            await handle.ready.wait()
        if handle.failed is not None or handle.stop.is_set():
            raise PoolClosed(f"the pool of {node} is closed")
        return handle.pool

    def _prune(self, table: SlotTable) -> None:
        """After a refresh: close the pools of nodes that are no longer in the cluster (or
        were only named by ``target_nodes=``), once nothing is leased from them.  A command
        that took such a pool a moment before gets PoolClosed, which proves it was not sent:
        it goes where the table says."""
        current = set(table.nodes)
        for node, handle in list(self._nodes.items()):
            if node in current or not handle.ready.is_set():
                continue
            stats = handle.pool.statistics()
            if stats.in_use or stats.requests_waiting:
                continue
            del self._nodes[node]
            handle.stop.set()

    def _reader(self, shard: Shard) -> Node:
        """The node a read of ``shard``'s slots goes to, by the read preference (replicas in
        turn; "any" takes the primary in its turn too)."""
        preference = self._read_preference
        if preference == "primary" or not shard.replicas:
            return shard.primary
        candidates = shard.replicas if preference == "prefer-replica" else shard.nodes
        self._turn = (self._turn + 1) % 1_000_000_007
        return candidates[self._turn % len(candidates)]

    def _default_node(self, table: SlotTable) -> Node:
        return table.primaries[0]

    # --- commands -----------------------------------------------------------------------------

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command where the cluster serves it and return its parsed reply.

        ``target_nodes=`` (redis-py's keyword) sends it to given nodes instead: a node flag
        (``"primaries"``, ``"replicas"``, ``"all"``, ``"random"``, ``"default-node"``), a node
        (``(host, port)``, ``"host:port"``, a ``ClusterNode``) or a list of nodes.

        Raises:
            CrossSlotError: its keys are in different slots (nothing was sent).
            ClusterError: no node could be reached for it within ``cluster_retry_timeout``,
                or it was redirected more than ``cluster_max_redirects`` times.
            redis.exceptions.ResponseError: the server's error reply.
            ConnectionError, TimeoutError: as :class:`~anypool.RedisPool`, when the command
                may have run (it is never sent again then).

        Cancellation: as :class:`~anypool.RedisPool` on the node that had it.
        """
        if self._life != "open":
            raise PoolClosed(
                "the cluster client is not open: use `async with RedisCluster(...)`"
                if self._life == "new"
                else "the cluster client is closed"
            )
        if not args:
            raise InvalidArgument("execute_command() needs a command name")
        target_nodes = options.pop("target_nodes", None)
        table = await self._topology.ready()
        if target_nodes is not None:
            return await self._on_nodes(
                self._targets(target_nodes, table), args, options, name=None
            )
        first = args[0]
        fast = self._single_key.get(first) if type(first) is str and len(args) > 1 else None
        if fast is None and type(first) is str and len(args) > 1:
            fast = self._learn_single_key(first)
        if fast:  # the fast path: a one-key command, its key the first argument
            key = args[1]
            if type(key) is not bytes:
                key = self._encoder.encode(key)  # type: ignore[no-untyped-call]
            return await self._on_slot(key_slot(key), args, options, readonly=fast == 2)
        plan = await self._plan(args)
        if plan.slot is not None:
            return await self._on_slot(plan.slot, args, options, readonly=plan.readonly)
        if plan.parts:
            replies = await _all(
                [
                    functools.partial(self._on_slot, part.slot, part.args, dict(options))
                    for part in plan.parts
                ]
            )
            return merge(plan, replies)
        assert plan.flag is not None
        if plan.flag in (DEFAULT_NODE, RANDOM):
            return await self._on_one_node(plan.flag, args, options)
        if plan.flag in (PRIMARIES, ALL_NODES):
            table = await self._whole(plan.name)
        return await self._on_nodes(
            self._flag_nodes(plan.flag, table), args, options, name=plan.name
        )

    async def _whole(self, name: str) -> SlotTable:
        """The table once every slot has an owner: a command for every primary (KEYS, DBSIZE,
        FLUSHALL, SCAN...) means the whole data set, and an answer without a shard would be
        silently partial.  Waits for a failover within ``cluster_retry_timeout``.

        Raises:
            ClusterError: slots stayed without an owner (says how many).
        """
        deadline = time.monotonic() + self._retry_timeout
        seen: list[str] = []
        for waits in range(1_000_000):
            table = await self._topology.ready()
            if table.covered == SLOTS:
                return table
            seen.append(
                f"{SLOTS - table.covered} slots have no owner, so {name} for every node would "
                "miss their keys"
            )
            await self._wait(deadline, waits, None, seen, refresh=True)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _on_one_node(self, flag: str, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """A command any one node answers (``PING``, ``INFO``, ``WAIT``...): when its node
        cannot take it (the command was not sent), another primary does, after a refresh;
        bounded by ``cluster_retry_timeout``."""
        deadline = time.monotonic() + self._retry_timeout
        seen: list[str] = []
        tried: set[Node] = set()
        for waits in range(1_000_000):
            table = await self._topology.ready()
            choices = [n for n in self._flag_nodes(flag, table) if n not in tried]
            fallback = [n for n in table.primaries if n not in tried]
            if not choices and not fallback:
                tried.clear()
                await self._wait(deadline, waits, None, seen, refresh=True)
                continue
            node = (choices or fallback)[0]
            sent = Sent()
            try:
                pool = await self._pool_for(node)
                return await pool.execute_command_once(args, dict(options), sent)
            except _MAYBE_SENT as exc:
                if sent.value or self._life != "open":
                    raise  # it may have run: never sent again
                seen.append(f"{node}: {exc}")
                self._counts["not_sent_retries"] += 1
                tried.add(node)
                self._topology.request()
        raise AssertionError("unreachable")  # pragma: no cover

    def _learn_single_key(self, name: str) -> int:
        """Whether the command ``name`` (as given, one word) has exactly one key, its first
        argument, whatever its other arguments: 0 no (or not known yet), 1 yes, 2 yes and it
        only reads.  Remembered per name once the server's command table is known."""
        commands = self._topology.commands
        if commands is None:
            return 0
        verdict = single_key_command(name, commands)
        self._single_key[name] = verdict
        return verdict

    async def _plan(self, args: tuple[Any, ...]) -> Route:
        commands = self._topology.commands or CommandTable({})
        encode = self._encoder.encode
        encoded: list[bytes] = [encode(a) for a in wire_args(args)]  # type: ignore[no-untyped-call]
        try:
            return route(args, encoded, commands)
        except LookupError:
            keys = await self._server_keys(encoded)
            return route(args, encoded, commands, known_keys=keys)

    async def _server_keys(self, encoded: Sequence[bytes]) -> list[bytes]:
        """The keys ``COMMAND GETKEYS`` names (commands whose keys move, on servers without
        key specifications: one more round trip, as redis-py makes)."""
        table = await self._topology.ready()
        pool = await self._pool_for(self._default_node(table))
        async with pool.acquire() as held:  # the raw reply: redis-py's callback decodes it
            reply = await held.connection.execute("COMMAND", "GETKEYS", *encoded, decode=False)
        return [bytes(key) for key in reply]

    def _flag_nodes(self, flag: str, table: SlotTable) -> list[Node]:
        if flag == PRIMARIES:
            return list(table.primaries)
        if flag == ALL_NODES:
            return list(table.nodes)
        if flag == REPLICAS:
            return [n for shard in table.shards for n in shard.replicas]
        if flag == RANDOM:
            return [self._rand.choice(table.nodes)]
        return [self._default_node(table)]

    def _targets(self, target_nodes: Any, table: SlotTable) -> list[Node]:
        if isinstance(target_nodes, str) and target_nodes in NODE_FLAGS:
            return self._flag_nodes(target_nodes, table)
        if isinstance(target_nodes, str) and ":" not in target_nodes:
            raise InvalidArgument(
                f"target_nodes={target_nodes!r} is neither a node ('host:port') nor one of "
                f"{', '.join(map(repr, sorted(NODE_FLAGS)))}"
            )
        if isinstance(target_nodes, Mapping):
            target_nodes = list(target_nodes.values())
        if isinstance(target_nodes, list):
            return [_node_of(n, "target_nodes") for n in target_nodes]
        return [_node_of(target_nodes, "target_nodes")]

    async def _on_nodes(
        self, nodes: list[Node], args: tuple[Any, ...], options: dict[str, Any], name: str | None
    ) -> Any:

        async def one(node: Node) -> Any:
            pool = await self._pool_for(node)
            return await pool.execute_command(*args, **dict(options))

        values = await _all([functools.partial(one, node) for node in nodes])
        replies = {f"{n.host}:{n.port}": v for n, v in zip(nodes, values, strict=True)}
        merge_replies = merger(name) if name is not None else None
        if merge_replies is not None:
            return merge_replies(name or "", replies)
        if len(replies) == 1:
            return next(iter(replies.values()))
        return replies

    async def _on_slot(
        self, slot: int, args: tuple[Any, ...], options: dict[str, Any], *, readonly: bool = False
    ) -> Any:
        """Send the command to the owner of ``slot`` (a read to a replica, as the read
        preference says), following redirects and waiting out failovers, within the bounds."""
        topology = self._topology
        deadline = time.monotonic() + self._retry_timeout
        seen: list[str] = []
        redirects = 0
        waits = 0
        asking: Node | None = None
        moved_from: set[Node] = set()
        while True:
            node = asking
            if node is None:
                table = topology.table
                shard: Shard | None = table.shard(slot) if table is not None else None
                if shard is None:
                    seen.append("no node serves the slot")
                    await self._wait(deadline, waits, slot, seen, refresh=True)
                    waits += 1
                    continue
                node = self._reader(shard) if readonly and redirects == 0 else shard.primary
            sent = Sent()
            try:
                pool = await self._pool_for(node)
                return await pool.execute_command_once(
                    args, dict(options), sent, asking=asking is not None
                )
            except MovedError as exc:
                target = Node(exc.host or node.host, int(exc.port))
                seen.append(f"MOVED to {target} from {node}")
                self._counts["moved"] += 1
                topology.learn_moved(int(exc.slot_id), target)
                asking = None
                redirects += 1
                moved_from.add(node)
                if target in moved_from and redirects < self._max_redirects:
                    # Sent back to a node that sent us away: the nodes disagree for now (a
                    # migration closing, epochs settling).  Wait for them, not in a tight loop.
                    await self._wait(deadline, waits, slot, seen, refresh=True)
                    waits += 1
            except AskError as exc:
                asking = Node(exc.host or node.host, int(exc.port))
                seen.append(f"ASK {asking} from {node}")
                self._counts["ask"] += 1
                redirects += 1
                continue
            except (TryAgainError, ClusterDownError) as exc:
                refused = "CLUSTERDOWN" if isinstance(exc, ClusterDownError) else "TRYAGAIN"
                seen.append(f"{refused} from {node}")
                self._counts[refused.lower()] += 1
                asking = None
                await self._wait(
                    deadline, waits, slot, seen, refresh=isinstance(exc, ClusterDownError)
                )
                waits += 1
                continue
            except _MAYBE_SENT as exc:
                if sent.value or self._life != "open":
                    raise  # it may have run: never sent again
                seen.append(f"{node}: {exc}")
                self._counts["not_sent_retries"] += 1
                asking = None
                await self._wait(deadline, waits, slot, seen, refresh=True)
                waits += 1
                continue
            if redirects >= self._max_redirects:
                self._counts["gave_up"] += 1
                raise ClusterError(
                    f"slot {slot}: more than {self._max_redirects} redirects "
                    f"(cluster_max_redirects); seen: {'; '.join(seen[-8:])}"
                )

    async def _wait(
        self, deadline: float, waits: int, slot: int | None, seen: list[str], *, refresh: bool
    ) -> None:
        """Back off before trying ``slot`` (None: a keyless command) again; with ``refresh``,
        until a topology refresh has ended (or the backoff has passed, whichever is later).

        Raises:
            ClusterError: ``cluster_retry_timeout`` would pass.
        """
        delay = backoff_delay(waits + 1, base=0.01, cap=0.5, jitter=0.5)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self._counts["gave_up"] += 1
            subject = "the command" if slot is None else f"slot {slot}"
            raise ClusterError(
                f"{subject}: not served within cluster_retry_timeout "
                f"({self._retry_timeout}s); seen: {'; '.join(seen[-8:])}"
            )
        with anyio.move_on_after(min(remaining, max(delay, 2.0) if refresh else delay)):
            if refresh:
                await self._topology.wait_for_refresh()
            else:
                await anyio.sleep(delay)
        if refresh:
            await anyio.sleep(min(delay, max(0.0, deadline - time.monotonic())))

    async def mget_nonatomic(self, keys: Any, *args: Any) -> list[Any]:
        """redis-py's: MGET per slot, the values in the order of ``keys`` (not atomic across
        slots; ``mget`` does the same here)."""
        names = list(keys) if isinstance(keys, list | tuple) else [keys]
        return list(await self.execute_command("MGET", *names, *args))

    async def mset_nonatomic(self, mapping: Mapping[Any, Any]) -> list[bool]:
        """redis-py's: MSET per slot, one result per slot (not atomic across slots).

        Raises:
            redis.exceptions.DataError: a key or value the encoder cannot send (names the key);
                checked before anything is sent, so no slot is written.
        """
        encode = self._encoder.encode
        by_slot: dict[int, list[Any]] = {}
        for key, value in mapping.items():
            try:
                raw_key, raw_value = encode(key), encode(value)  # type: ignore[no-untyped-call]
            except DataError as exc:
                raise DataError(
                    f"mset_nonatomic(): the entry {key!r:.60} cannot be sent ({exc}); nothing "
                    "was written"
                ) from exc
            by_slot.setdefault(key_slot(raw_key), []).extend((raw_key, raw_value))
        replies = await _all(
            [
                functools.partial(self._on_slot, slot, ("MSET", *pairs), {})
                for slot, pairs in by_slot.items()
            ]
        )
        return [bool(reply) for reply in replies]

    async def scan_iter(  # type: ignore[override]  # an async generator, as redis-py's
        self,
        match: Any = None,
        count: int | None = None,
        _type: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Every key of the cluster (matching ``match``, of type ``_type``): each primary is
        scanned to the end in turn, as redis-py's cluster client does.  Keys whose slot moves
        during the scan may be seen twice or not at all (as with SCAN on one node across a
        resize)."""
        words: list[Any] = []
        if match is not None:
            words += ["MATCH", match]
        if count is not None:
            words += ["COUNT", count]
        if _type is not None:
            words += ["TYPE", _type]
        table = await self._whole("SCAN")
        for node in table.primaries:
            cursor = 0
            for _ in range(100_000_000):  # bounded: ends when the node's cursor comes back to 0
                cursor, keys = await self.execute_command(
                    "SCAN", cursor, *words, target_nodes=node, **kwargs
                )
                for key in keys:
                    yield key
                if int(cursor) == 0:
                    break

    def lock(
        self,
        name: str,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        lock_class: Any = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> Any:
        """A distributed lock on key ``name``, as :meth:`RedisPool.lock
        <anypool.RedisPool.lock>` (its scripts run on the key's primary)."""
        cls = Lock if lock_class is None else lock_class
        return cls(self, name, timeout=timeout, sleep=sleep, blocking=blocking,  # type: ignore[arg-type]
                   blocking_timeout=blocking_timeout, thread_local=thread_local,
                   raise_on_release_error=raise_on_release_error)  # fmt: skip

    def keyslot(self, key: Any) -> int:
        """The slot of ``key`` (encoded as the client encodes it), as ``CLUSTER KEYSLOT``."""
        return key_slot(self._encoder.encode(key))  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = False) -> ClusterPipeline:
        """A pipeline: commands queued, then sent per node at once (see
        :class:`ClusterPipeline`).  ``transaction=False`` by default, as redis-py's cluster
        client; ``True`` runs MULTI/EXEC on the one slot all the commands act on."""
        return ClusterPipeline(self, transaction)

    async def transaction(
        self,
        func: Callable[[ClusterPipeline], Awaitable[Any]],
        *watches: Any,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """Run ``func`` in an optimistic transaction on one slot, retrying while a watched key
        changes (or the slot moves: the retry runs where it is now).

        ``func`` receives a pipeline that already WATCHes ``watches`` (keys of one slot); it
        may read with immediate commands, then call ``pipe.multi()`` and queue the writes.

        Returns:
            the EXEC results, or ``func``'s return value with ``value_from_callable=True``.

        Raises:
            CrossSlotError: the keys are in different slots (nothing was sent).
            ClusterError: the slot kept moving for longer than ``cluster_retry_timeout``.
        """
        redirected: float | None = None  # when the first retry caused by the slot moving was
        seen: list[str] = []
        for waits in range(1_000_000):
            async with self.pipeline(transaction=True) as pipe:
                try:
                    if watches:
                        await pipe.watch(*watches)
                    value = await func(pipe)
                    results = await pipe.execute()
                    return value if value_from_callable else results
                except WatchError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, MovedError | AskError | TryAgainError | ClusterDownError):
                        # Not a key that changed: the slot is moving; back off, bounded.
                        redirected = redirected or time.monotonic()
                        seen.append(f"{type(cause).__name__}: {cause}")
                        slot = self.keyslot(watches[0]) if watches else None
                        deadline = redirected + self._retry_timeout
                        await self._wait(deadline, waits, slot, seen, refresh=True)
                    elif watch_delay:
                        await anyio.sleep(watch_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def refresh_topology(self) -> SlotTable:
        """Refresh the slot table now (one refresh however many ask) and return it.

        Raises:
            ClusterError: no node answered (names each node's error).
        """
        if self._life != "open":
            raise PoolClosed("the cluster client is not open")
        await self._topology.ready()
        await self._topology.wait_for_refresh()
        error = self._topology.last_error
        table = self._topology.table
        if error is not None or table is None:
            raise ClusterError(f"the topology refresh failed: {error}")
        return table

    async def initialize(self) -> RedisCluster:
        """redis-py's: wait until the slot table is known (the first refresh); returns the
        client.

        Raises:
            ClusterError: no startup node answered."""
        if self._life != "open":
            raise PoolClosed("the cluster client is not open")
        await self._topology.ready()
        return self

    # --- pub/sub (the API: _pubsub.PubSubMethods; where: ._pubsub) ----------------------------

    def _pubsub_hub(self, kind: _pubsub.Kind, names: tuple[Any, ...]) -> _pubsub.Hub:
        return self._hubs.for_channels(names) if kind == "shard" else self._hubs.classic()

    def _pubsub_hubs(self) -> list[_pubsub.Hub]:
        self._hubs.classic()  # so that every counter is there, zero or not
        return self._hubs.each()

    async def _start_pubsub_task(
        self, func: Callable[..., Coroutine[Any, Any, Any]], name: str
    ) -> Any:
        return await _Host(self).start_task(func, name=name)

    # --- facts --------------------------------------------------------------------------------

    def cluster_statistics(self) -> dict[str, int]:
        """Counters of the cluster client: redirects followed (``moved``, ``ask``), refusals
        waited out (``tryagain``, ``clusterdown``), commands sent again because their node
        could not take them (``not_sent_retries``), commands that ran out of redirects or time
        (``gave_up``); topology ``refreshes`` and ``failed_refreshes``; and, now, the
        ``nodes`` with a pool and the ``covered_slots``."""
        topology = self._topology
        table = topology.table
        return {
            **self._counts,
            "refreshes": topology.refreshes,
            "failed_refreshes": topology.failed_refreshes,
            "nodes": len(self._nodes),
            "covered_slots": table.covered if table is not None else 0,
        }

    def node_statistics(self) -> dict[Node, PoolStatistics]:
        """Each node pool's statistics (see :class:`~anypool.PoolStatistics`)."""
        return {node: handle.pool.statistics() for node, handle in list(self._nodes.items())}

    @property
    def topology(self) -> SlotTable | None:
        """The slot table of the moment (None before the first refresh)."""
        return self._topology.table

    def __repr__(self) -> str:
        return f"<RedisCluster {self._life} {self._topology.table!r}>"


class _Host:
    """The cluster client as the owner of its pub/sub hubs (``_pubsub.HubHost``)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster

    @property
    def name(self) -> str:
        return "RedisCluster"

    def check_open(self) -> None:
        if self._cluster._life != "open" or self._cluster._task_group is None:
            raise PoolClosed("the cluster client is not open")

    def closed_error(self, message: str) -> PoolClosed:
        return PoolClosed(message)

    async def start_task(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: str | None = None
    ) -> Any:
        self.check_open()
        task_group = self._cluster._task_group
        assert task_group is not None
        return await task_group.start(func, *args, name=name)


# --- pipelines ----------------------------------------------------------------------------------


class ClusterPipeline(_Queued):
    """Queued commands sent per node: each node gets its share in one write, all nodes at
    once (in a task group), and the replies come back in the order the commands were queued.

    A command without keys goes with the command queued before it (``pipe.incr(key)`` then
    ``pipe.execute_command("WAIT", 1, 100)`` waits for that write's replica), or to one
    primary when it comes first.

    A command answered ``MOVED``, ``ASK``, ``TRYAGAIN`` or ``CLUSTERDOWN`` did not run: it is
    sent again on its own, as a single command is (following the redirect, within the
    bounds).  A node whose pool could not take its share (it was not sent) has that share sent
    again the same way.  A node whose connection failed after the write gives each of its
    commands that error in its place (they may have run; never sent again).  Single-key
    commands on the same key keep their queued order, also when some are sent again (a key
    moves only from a slot's source to its target, so a later command on it is never served
    before an earlier one).  A multi-key command refused during a migration (``TRYAGAIN``:
    some of its keys moved) is sent again after the commands queued behind it on the same
    node have run.  Commands for different nodes run concurrently.

    With ``transaction=True`` every command must act on one slot (use a hash tag): the
    transaction runs on that slot's primary as MULTI/EXEC.  Keys in different slots are
    refused before anything is sent, naming the slots.

    ``watch(*keys)`` (keys of one slot) keeps a connection to that slot's primary until
    :meth:`execute`, :meth:`unwatch` or :meth:`reset`: until :meth:`multi`, commands run at
    once on it (reads the transaction depends on, on the same slot), then they are queued and
    :meth:`execute` runs them there as MULTI/EXEC, as redis-py's ``Pipeline``.  If the slot
    moves while watched, the transaction fails with ``WatchError`` (as when a watched key
    changes), so a retry loop or :meth:`RedisCluster.transaction` runs it again where the
    slot is now.
    """

    def __init__(self, cluster: RedisCluster, transaction: bool) -> None:
        self._cluster = cluster
        self._config = cluster._config
        self._callbacks = cluster._callbacks
        self._transaction = transaction
        self._queue: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        # From watch() to execute()/unwatch()/reset(): the watched slot and a transaction
        # pipeline of its primary's pool, which holds the connection the WATCH was sent on.
        self._watched: tuple[int, Pipeline] | None = None
        self._multi = False  # multi() was called

    def __bool__(self) -> bool:
        return True

    @property
    def watching(self) -> bool:
        """Whether a WATCH is in effect (from :meth:`watch` until execute/unwatch/reset)."""
        return self._watched is not None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue a command (``target_nodes=`` is refused: a pipeline's commands go where
        their keys are); while WATCHing before MULTI, run it now on the watched slot's
        connection (returns an awaitable).

        Raises:
            InvalidArgument: no command name (nothing is queued).
            CommandNotAllowed: ``target_nodes=`` was given, or a command that would change
                a pooled connection's state (SELECT, MULTI, WATCH...: use the pipeline's own
                methods), as in a :class:`~anypool.RedisPool` pipeline; nothing is queued.
        """
        if not args:
            raise InvalidArgument("execute_command() needs a command name (nothing was queued)")
        if "target_nodes" in options:
            raise CommandNotAllowed(
                "target_nodes= is not taken in a cluster pipeline: its commands go where "
                "their keys are; run a command for given nodes on the client itself"
            )
        refuse_on_pool(args, pipeline=True)
        if self._watched is not None and not self._multi:
            return self._immediate(args, options)
        self._queue.append((args, options))
        return self

    async def _immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        assert self._watched is not None
        slot, pipe = self._watched
        self._check_slot(slot, [await self._slot_of(args)])
        try:
            return await pipe.execute_command(*args, **options)
        except (MovedError, AskError, TryAgainError, ClusterDownError) as exc:
            raise self._moved_while_watched(slot, exc) from exc

    def _check_slot(self, slot: int, slots: Iterable[int | None]) -> None:
        others = sorted({s for s in slots if s is not None and s != slot})
        if others:
            raise CrossSlotError(
                f"this pipeline WATCHes slot {slot}; a command acts on slot(s) "
                f"{', '.join(map(str, others))}: a transaction runs on one slot (give the keys "
                "a common hash tag)"
            )

    def _moved_while_watched(self, slot: int, exc: BaseException) -> WatchError:
        if isinstance(exc, MovedError) and exc.host:
            self._cluster._topology.learn_moved(int(exc.slot_id), Node(exc.host, int(exc.port)))
        else:
            self._cluster._topology.request()
        return WatchError(
            f"slot {slot} is being moved or is served elsewhere now ({type(exc).__name__}: "
            f"{exc}); the WATCH no longer holds: run the transaction again"
        )

    async def watch(self, *names: Any) -> bool:  # type: ignore[override]  # as redis-py's
        """WATCH ``names`` (keys of one slot) on that slot's primary, on a connection this
        pipeline keeps until execute(), unwatch() or reset().

        Raises:
            InvalidArgument: no key was named.
            CrossSlotError: the keys (with any watched before) are in different slots.
            RedisErrorInPipeline: after :meth:`multi`.
            WatchError: the slot moved between two watch() calls (run the transaction again).
            ClusterError: the slot was not served within ``cluster_retry_timeout``.

        Cancellation: the WATCH may have been sent; the connection stays with the pipeline
        until reset() (leaving ``async with`` resets), which closes it.
        """
        if not names:
            raise InvalidArgument("watch() needs at least one key")
        if self._multi:
            raise RedisErrorInPipeline("WATCH must come before MULTI")
        slots = {self._cluster.keyslot(name) for name in names}
        if self._watched is not None:
            self._check_slot(self._watched[0], slots)
            slot, pipe = self._watched
            try:
                return await pipe.watch(*names)
            except (MovedError, AskError, TryAgainError, ClusterDownError) as exc:
                raise self._moved_while_watched(slot, exc) from exc
        if len(slots) > 1:
            raise CrossSlotError(
                f"watch(): the keys are in slots {', '.join(map(str, sorted(slots)))}; a "
                "transaction runs on one slot (give the keys a common hash tag)"
            )
        (slot,) = slots
        cluster = self._cluster
        if cluster._life != "open":
            raise PoolClosed("the cluster client is not open")
        deadline = time.monotonic() + cluster._retry_timeout
        seen: list[str] = []
        for waits in range(1_000_000):
            table = await cluster._topology.ready()
            shard = table.shard(slot)
            if shard is None:
                seen.append("no node serves the slot")
                await cluster._wait(deadline, waits, slot, seen, refresh=True)
                continue
            pipe = (await cluster._pool_for(shard.primary)).pipeline(transaction=True)
            try:
                reply = await pipe.watch(*names)
            except (MovedError, AskError, TryAgainError, ClusterDownError) as exc:
                await pipe.reset()
                self._moved_while_watched(slot, exc)  # what it taught the table
                seen.append(f"{type(exc).__name__} from {shard.primary}")
                await cluster._wait(
                    deadline, waits, slot, seen, refresh=not isinstance(exc, MovedError)
                )
                continue
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await pipe.reset()
                raise
            self._watched = (slot, pipe)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    async def unwatch(self) -> bool:  # type: ignore[override]  # as redis-py's
        """Forget the watched keys and give the connection back."""
        watched, self._watched = self._watched, None
        if watched is not None:
            await watched[1].reset()
        return True

    def multi(self) -> None:
        """Start queueing the transaction (after :meth:`watch` and immediate reads)."""
        if self._multi:
            raise RedisErrorInPipeline("MULTI was already called")
        if self._queue:
            raise RedisErrorInPipeline("commands without an initial WATCH were already queued")
        self._multi = True

    async def discard(self) -> None:
        """As redis-py's ``Pipeline.discard()``: while WATCHing before MULTI it runs at once;
        otherwise DISCARD is queued (so a transaction's execute() fails with "EXEC without
        MULTI"). To drop queued commands without an error, use :meth:`reset`."""
        if self._watched is not None and not self._multi:
            await self._immediate(("DISCARD",), {})
        else:
            self._queue.append((("DISCARD",), {}))

    async def reset(self) -> None:  # type: ignore[override]  # as redis-py's Pipeline
        """Forget the queued commands and any WATCH (its connection goes back, closed)."""
        self._queue = []
        self._multi = False
        await self.unwatch()

    async def aclose(self) -> None:
        """redis-py's other name for :meth:`reset`."""
        await self.reset()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands and return their parsed replies, in queued order.

        Raises:
            CrossSlotError: a command's keys are in different slots, or (in a transaction)
                the commands are; nothing was sent.
            CommandNotAllowed: a command that goes to several nodes (``KEYS``, ``FLUSHALL``...)
                was queued; nothing was sent.
            redis.exceptions.ResponseError: a command failed (with ``raise_on_error``;
                annotated with its position, as redis-py does).

        Cancellation: as a single command's, on each node that had commands in flight; the
        queue is emptied either way.
        """
        queue, self._queue = self._queue, []
        if self._watched is not None:
            try:
                results = await self._watched_transaction(queue)
            finally:
                await self.reset()
            raise_pipeline_errors(queue, results, raise_on_error)
            return results
        multi, self._multi = self._multi, False
        if not queue:
            return []
        cluster = self._cluster
        if cluster._life != "open":
            raise PoolClosed("the cluster client is not open")
        await cluster._topology.ready()
        slots = [await self._slot_of(args) for args, _ in queue]
        if self._transaction or multi:
            results = await self._transaction_on(slots, queue)
        else:
            results = await self._pipeline(slots, queue)
        raise_pipeline_errors(queue, results, raise_on_error)
        return results

    async def _watched_transaction(
        self, queue: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[Any]:
        """MULTI/EXEC on the watched slot's connection."""
        assert self._watched is not None
        slot, pipe = self._watched
        self._check_slot(slot, [await self._slot_of(args) for args, _ in queue])
        pipe.multi()  # the node pipeline queues from here
        for args, options in queue:
            pipe.execute_command(*args, **options)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (MovedError, AskError, TryAgainError, ClusterDownError) as exc:
            raise self._moved_while_watched(slot, exc) from exc
        for reply in results:
            if isinstance(reply, MovedError | AskError | TryAgainError | ClusterDownError):
                raise self._moved_while_watched(slot, reply) from reply
        return results

    async def _slot_of(self, args: tuple[Any, ...]) -> int | None:
        """The slot a queued command acts on (None: keyless, sent to the default node)."""
        plan = await self._cluster._plan(args)
        if plan.parts:
            raise CrossSlotError(
                f"{plan.name}: in a pipeline, one command's keys must share a slot (the client "
                f"splits {plan.name} across slots only when it runs on its own)"
            )
        if plan.flag is not None and plan.flag not in (DEFAULT_NODE, RANDOM):
            raise CommandNotAllowed(
                f"{plan.name} goes to several nodes ({plan.flag}); run it on the client, "
                f"not in a pipeline"
            )
        return plan.slot

    async def _pipeline(
        self, slots: list[int | None], queue: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[Any]:
        """Rounds: each sends the commands still pending, grouped by the node the table of the
        moment names, one write per node, all nodes at once.  Commands that did not run
        (redirected, refused, or their node's share not sent) are pending in the next round,
        in queued order, after a backoff; ``ASK`` ones are sent one by one with ``ASKING``.
        Bounded by ``cluster_retry_timeout`` and ``cluster_max_redirects`` rounds."""
        cluster = self._cluster
        results: list[Any] = [None] * len(queue)
        pending = list(range(len(queue)))
        deadline = time.monotonic() + cluster._retry_timeout
        seen: list[str] = []
        for rounds in range(cluster._max_redirects + 1):
            table = await cluster._topology.ready()
            again: list[int] = []
            asked: list[int] = []
            by_node: dict[Node, list[int]] = {}
            previous: Node | None = None
            for index in pending:
                slot = slots[index]
                shard = table.shard(slot) if slot is not None else None
                if slot is not None and shard is None:
                    again.append(index)
                    previous = None
                    continue
                # Keyless (WAIT, PING...): with the command before it, on the same connection
                # (WAIT counts the replicas of that connection's writes), else one primary.
                node = (
                    shard.primary if shard is not None else previous or cluster._default_node(table)
                )
                by_node.setdefault(node, []).append(index)
                previous = node

            async def send(
                node: Node, indices: list[int], again: list[int], asked: list[int]
            ) -> None:
                sent = Sent()
                try:
                    pool = await cluster._pool_for(node)
                    replies = await pool.execute_many_once([queue[i] for i in indices], sent)
                except RedisError as exc:
                    if isinstance(exc, _MAYBE_SENT) and not sent.value and cluster._life == "open":
                        seen.append(f"{node}: {exc}")  # not sent: in the next round
                        cluster._topology.request()
                        again.extend(indices)
                        return
                    for i in indices:
                        results[i] = exc  # it may have run: each command gets the error
                    return
                for i, reply in zip(indices, replies, strict=True):
                    if isinstance(reply, AskError):
                        asked.append(i)
                    elif isinstance(reply, MovedError | TryAgainError | ClusterDownError):
                        seen.append(f"{type(reply).__name__} from {node}")
                        if isinstance(reply, MovedError):
                            cluster._topology.learn_moved(
                                int(reply.slot_id), Node(reply.host or node.host, int(reply.port))
                            )
                        again.append(i)
                    else:
                        results[i] = reply

            await _all([functools.partial(send, n, i, again, asked) for n, i in by_node.items()])
            if asked:
                # Keys that moved mid-migration: one by one (ASKING precedes each), in order
                # within a slot, the slots concurrently.
                by_slot: dict[int | None, list[int]] = {}
                for index in sorted(asked):
                    by_slot.setdefault(slots[index], []).append(index)

                async def in_order(indices: list[int]) -> None:
                    for index in indices:
                        args, options = queue[index]
                        try:
                            results[index] = await cluster._on_slot(
                                slots[index] or 0, args, dict(options)
                            )
                        except RedisError as exc:
                            results[index] = exc

                await _all([functools.partial(in_order, i) for i in by_slot.values()])
            pending = sorted(again)
            if not pending:
                return results
            try:
                await cluster._wait(deadline, rounds, slots[pending[0]], seen, refresh=True)
            except ClusterError as exc:
                for index in pending:
                    results[index] = exc
                return results
        error = ClusterError(
            f"a pipeline's commands were redirected more than {cluster._max_redirects} times "
            f"(cluster_max_redirects); seen: {'; '.join(seen[-8:])}"
        )
        for index in pending:
            results[index] = error
        return results

    async def _transaction_on(
        self, slots: list[int | None], queue: list[tuple[tuple[Any, ...], dict[str, Any]]]
    ) -> list[Any]:
        keyed = {slot for slot in slots if slot is not None}
        if len(keyed) > 1:
            raise CrossSlotError(
                f"a transaction runs on one slot, and its commands act on slots "
                f"{', '.join(map(str, sorted(keyed)))}: give their keys a common hash tag"
            )
        cluster = self._cluster
        slot = keyed.pop() if keyed else None
        deadline = time.monotonic() + cluster._retry_timeout
        seen: list[str] = []
        for waits in range(1_000_000):
            table = await cluster._topology.ready()
            shard = table.shard(slot) if slot is not None else None
            if slot is not None and shard is None:
                seen.append("no node serves the slot")
                await cluster._wait(deadline, waits, slot, seen, refresh=True)
                continue
            node = shard.primary if shard is not None else cluster._default_node(table)
            pool = await cluster._pool_for(node)
            try:
                async with pool.pipeline(transaction=True) as pipe:
                    for args, options in queue:
                        pipe.execute_command(*args, **dict(options))
                    return await pipe.execute(raise_on_error=False)
            except (ResponseError, *_NOT_SENT) as exc:
                redirect = _redirect_in(exc)
                if redirect is None and not isinstance(exc, _NOT_SENT):
                    raise
                # Refused as a whole (EXECABORT after a MOVED or ASK, or not sent): nothing
                # ran; try again where the table then says.
                if isinstance(redirect, MovedError):
                    cluster._topology.learn_moved(
                        int(redirect.slot_id), Node(redirect.host or node.host, int(redirect.port))
                    )
                elif redirect is None or isinstance(redirect, ClusterDownError):
                    cluster._topology.request()
                # ASK (the slot is migrating, some of its keys moved): waited out until the
                # migration ends; a transaction is not sent with ASKING (yet).
                seen.append(f"{type(redirect or exc).__name__} from {node}")
                await cluster._wait(deadline, waits, slot, seen, refresh=redirect is None)
        raise AssertionError("unreachable")  # pragma: no cover


def _redirect_in(exc: BaseException) -> ResponseError | None:
    """The MOVED/ASK/TRYAGAIN/CLUSTERDOWN that aborted a transaction (a node pipeline raises
    the first error met while queueing, EXECABORT as its cause), or None."""
    if isinstance(exc, MovedError | AskError | TryAgainError | ClusterDownError):
        return exc
    return None
