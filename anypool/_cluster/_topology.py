"""Topology discovery: the cluster's slot table, kept current by one supervised background task.

The task asks a node for ``CLUSTER SHARDS`` (``CLUSTER SLOTS`` on servers without it) at start,
every ``refresh_interval`` seconds, and whenever a caller asks (:meth:`Topology.request`: a
redirect, a node that failed).  However many callers ask at once, one refresh runs; they all
see its result.  A refresh asks the nodes it knows (primaries first, then replicas, then the
startup nodes) in turn, on connections of its own, and takes the first answer that covers every
slot (else the one that covers most).  Commands never wait for a refresh unless their slot has
no owner or their node failed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from .._backoff import backoff_delay
from .._config import RedisConfig
from .._connection import Connection
from .._errors import ClusterError, PoolClosed, ResponseError
from ._keys import CommandTable
from ._slots import SLOTS, Node, SlotTable, parse_cluster_shards, parse_cluster_slots

__all__ = ["Topology"]

logger = logging.getLogger("anypool.cluster")


class Topology:
    """The current slot table and command table, and the task that keeps them current."""

    def __init__(
        self,
        config: RedisConfig,
        seeds: Sequence[Node],
        *,
        refresh_interval: float,
        on_refresh: Callable[[SlotTable], None] | None = None,
        rand: random.Random | None = None,
    ) -> None:
        if not seeds:
            raise ValueError("a cluster needs at least one startup node")
        self._config = config
        self._seeds = list(dict.fromkeys(seeds))
        self._refresh_interval = refresh_interval
        self._on_refresh = on_refresh  # told each table a refresh found (sync, no I/O)
        self._rand = rand or random.Random()
        self.table: SlotTable | None = None
        self.commands: CommandTable | None = None
        self.generation = 0  # +1 per refresh that ended, successful or not
        self.last_error: BaseException | None = None
        self.refreshes = 0
        self.failed_refreshes = 0
        self._asked = anyio.Event()
        self._ended = anyio.Event()  # set (and replaced) each time a refresh ends
        self._use_shards: bool | None = None  # None: not known yet whether CLUSTER SHARDS exists
        self._refreshing = False
        self.stopped = False  # the task ended (the client closed): nobody waits for it

    # --- for callers ------------------------------------------------------------------------

    def request(self) -> None:
        """Ask for a refresh soon (coalesced with any already asked for)."""
        self._asked.set()

    def learn_moved(self, slot: int, node: Node) -> None:
        """What a ``MOVED`` taught: applied to the table at once (the next command to that slot
        goes to the right node without waiting), and a refresh is asked for."""
        table = self.table
        if table is not None:
            self.table = table.moved(slot, node)
        self.request()

    async def wait_for_refresh(self) -> None:
        """Ask for a refresh and wait until one that began after this call has ended
        (successful or not: see :attr:`last_error`).

        Raises:
            PoolClosed: the client closed first.

        Cancellation: nothing to undo."""
        target = self.generation + (2 if self._refreshing else 1)
        self.request()
        while self.generation < target:
            self._check_running()
            await self._ended.wait()

    def _check_running(self) -> None:
        if self.stopped:
            raise PoolClosed(
                "the cluster client closed while this call waited for its topology to be read"
            )

    async def ready(self) -> SlotTable:
        """The slot table, waiting for the first refresh if none ended yet.

        Raises:
            ClusterError: the first refresh found no node that answers (names the last error).
            PoolClosed: the client closed first.
        """
        table = self.table
        if table is not None:
            return table
        while self.table is None:
            generation = self.generation
            if generation > 0 and self.table is None:
                raise ClusterError(
                    f"no cluster node answered (asked {', '.join(map(str, self._seeds))}): "
                    f"{self.last_error}"
                )
            self._check_running()
            await self._ended.wait()
        return self.table

    # --- the task ---------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Refresh now, then every ``refresh_interval`` and when asked, until cancelled.  A
        refresh that fails is retried after a jittered backoff (0.05 s doubling to 2 s),
        however many callers ask meanwhile: a cluster that is down is not hammered."""
        task_status.started()
        try:
            await self._refresh_until_cancelled()
        finally:
            self.stopped = True
            self._ended.set()  # whoever waits for a refresh learns there will be none

    async def _refresh_until_cancelled(self) -> None:
        failures = 0
        while True:
            self._asked = anyio.Event()
            self._refreshing = True
            try:
                await self._refresh()
            except Exception as exc:  # every node failed to answer: counted, logged, retried
                failures += 1
                self.failed_refreshes += 1
                self.last_error = exc
                logger.warning("cluster topology refresh failed: %s", exc)
            else:
                failures = 0
                self.last_error = None
                if self._on_refresh is not None and self.table is not None:
                    self._on_refresh(self.table)
            finally:
                self._refreshing = False
            self.generation += 1
            ended, self._ended = self._ended, anyio.Event()
            ended.set()
            if failures:
                await anyio.sleep(backoff_delay(failures, base=0.05, cap=2.0, jitter=0.5))
            else:
                with anyio.move_on_after(self._refresh_interval):
                    await self._asked.wait()

    def _candidates(self) -> list[Node]:
        table = self.table
        known: list[Node] = []
        if table is not None:
            primaries = list(table.primaries)
            replicas = [n for n in table.nodes if n not in primaries]
            self._rand.shuffle(primaries)
            known = primaries + replicas
        return list(dict.fromkeys([*known, *self._seeds]))

    async def _refresh(self) -> None:
        best: SlotTable | None = None
        errors: list[str] = []
        for node in self._candidates():
            try:
                table = await self._ask(node)
            except Exception as exc:
                errors.append(f"{node}: {exc}")
                continue
            if best is None or table.covered > best.covered:
                best = table
            if table.covered == SLOTS:
                break
        if best is None:
            raise ClusterError("; ".join(errors) or "no node to ask")
        if best != self.table:
            if self.table is not None:
                logger.info("cluster topology changed: %r", best)
            self.table = best
        self.refreshes += 1

    async def _ask(self, node: Node) -> SlotTable:
        config = self._config.replace(host=node.host, port=node.port)
        connection = await Connection.connect(config)
        try:
            if self.commands is None:
                self.commands = CommandTable.from_reply(
                    await connection.execute("COMMAND", decode=False)
                )
            if self._use_shards is not False:
                try:
                    reply = await connection.execute("CLUSTER", "SHARDS", decode=False)
                except ResponseError:  # Redis 6.2: unknown subcommand (or an ACL refusal)
                    self._use_shards = False
                else:
                    self._use_shards = True
                    return parse_cluster_shards(reply, node.host)
            return parse_cluster_slots(
                await connection.execute("CLUSTER", "SLOTS", decode=False), node.host
            )
        finally:
            await connection.aclose()
