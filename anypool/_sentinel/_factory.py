"""Connections to where the sentinels say a service's primary (or a healthy replica) is, and
the background task that follows the sentinels' announcements.

What the pool sees is an ordinary connection factory: ``create()`` makes a connection that
said ``ROLE`` master (or a linked replica), and a connection to a node that no longer serves
the role is *stale*: the pool does not hand it out from idle, closes it when it comes back,
and the multiplexing engine stops queueing on it.  A connection to a demoted primary is also
*refused* at once: whoever holds it cannot send anything more on it.

Where the primary is, is asked of the sentinels (one lookup at a time, however many callers
need it) when nothing is known yet, when a node said it is not the primary (``ROLE`` on a new
connection, or ``READONLY`` to a command), and when connecting to it failed.  A supervised
task also listens to the sentinels' ``+switch-master``, so the pool moves as soon as they
announce a failover, before the old primary is demoted (about 8-10 s later), during which it
would still accept writes that the failover then loses.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from redis.exceptions import RedisError, ResponseError

from .._backoff import backoff_delay
from .._config import BackoffPolicy, RedisConfig
from .._connection import Connection, ConnectionFactory
from .._errors import (
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    PrimaryNotFound,
    ReplicaNotFound,
)
from ._discovery import Address, Discovery, NotTheRole, show
from ._settings import SentinelSettings, is_port

__all__ = ["SentinelConnectionFactory"]

logger = logging.getLogger("anypool.sentinel")


class _SentinelRefused(ResponseError):
    """A sentinel refused what following it needs (its announcements' channels)."""


# Sentinel events the watcher listens to (names kept from the "slave" days, on Valkey too).
# +promoted-slave comes from the sentinel leading a failover as soon as the replica answers as
# primary (the point of no return), up to a second before +switch-master: writes the old
# primary takes after it are lost, so the pool moves on whichever it hears first.
# +failover-state-send-slaveof-noone: the leader is promoting a replica; writes the old primary
# takes from then on will be lost, so a primary pool stops writing until the promotion is
# announced (or the failover aborts, or _PAUSE_LIMIT passes).
_ABORTS = (
    "-failover-abort-not-elected", "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout", "+failover-end-for-timeout",
)  # fmt: skip
_EVENTS = (
    "+switch-master", "+promoted-slave", "+failover-state-send-slaveof-noone", *_ABORTS,
    "+sdown", "-sdown", "+slave", "+slave-reconf-done",
)  # fmt: skip
_PAUSE_LIMIT = 5.0
_PROMOTION_POLL = 0.05  # while paused: how often the replica being promoted is asked ROLE
_REPLICA_REFRESH = 5.0  # a replica pool asks for the healthy replicas this often
# How long a primary a failover replaced is not taken back from a lookup: a sentinel that has
# not caught up still names it, and it still says ROLE master until the sentinels demote it
# (8-10 s later).  Only an announcement (+switch-master...) brings it back sooner.
_LEFT_MEMORY = 60.0
_KEEPALIVE = 5.0  # seconds of silence from the sentinel before a PING (twice: reconnect)
Mover = Callable[[Address, str], Awaitable[None]]


class _Flight:
    """One lookup of the primary that other callers wait for instead of asking again."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.address: Address | None = None
        self.error: Exception | None = None


class SentinelConnectionFactory(ConnectionFactory):
    """A :class:`ConnectionFactory` whose server is wherever the sentinels say the service's
    primary (``settings.role == "primary"``) or a healthy replica is.

    Args:
        config: how to connect to a data node (its host and port are not used).
        settings: the sentinels, the service and the role.
    """

    def __init__(self, config: RedisConfig, settings: SentinelSettings) -> None:
        super().__init__(config)
        self.settings = settings
        self.role = settings.role
        self.service = settings.service_name
        self.discovery = Discovery(settings, config)
        # The primary: ``known`` is the last one adopted (connections to it serve);
        # ``primary`` is None when it must be asked for again before connecting.
        self.known: Address | None = None
        self.primary: Address | None = None
        self.replicas: list[Address] = []  # healthy replicas (role "replica")
        self._turn = 0
        self._flight: _Flight | None = None
        self._live: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._moves: list[tuple[Address, str]] = []  # demoted nodes the mover must act on
        self._moved: anyio.Event | None = None
        self._replicas_stale = True
        self._refreshing: anyio.Event | None = None  # set when the replica refresh running ends
        self._subscribed: dict[Address, bool] = {}  # sentinels listened to since last failure
        # Set while a failover promotes a replica: new primary connections wait for it.
        self._promoting: anyio.Event | None = None
        self._leaving: Address | None = None  # the primary a failover is replacing
        self._selected: Address | None = None  # the replica it is promoting
        self._pause_deadline = 0.0  # when a pause ends without an announcement
        self._pause_began = anyio.Event()  # wakes the promotion poll (made in the loop)
        self._wanted = anyio.Event()  # set by the first connection wanted: starts the watch
        self._left: dict[Address, float] = {}  # primaries failovers replaced, and when
        # Counts what the sentinels announced (a promotion begun or done): a lookup that
        # began before one does not override it.
        self._announced_count = 0
        self.counters = {
            "switches": 0, "wrong_role": 0, "readonly": 0, "watch_failures": 0,
            "announcements": 0,
        }  # fmt: skip

    # --- what serves ------------------------------------------------------------------------

    def serves(self, connection: Connection) -> bool:
        """Whether ``connection`` goes to a node that serves this factory's role now (and
        was not refused: see :meth:`Connection.refuse`)."""
        if connection.refused is not None:
            return False
        return self.serves_address((connection.config.host, connection.config.port))

    def serves_address(self, address: Address) -> bool:
        """Whether a connection to ``address`` would serve this factory's role now."""
        if self.role == "primary":
            return address == self.known
        return address in self.replicas if self.replicas else address == self.known

    def is_stale(self, resource: Connection) -> bool:
        return not self.serves(resource) or super().is_stale(resource)

    async def check(self, resource: Connection) -> None:
        if not self.serves(resource):
            raise ConnectionClosed(f"{resource.config.address} no longer serves {self._what()}")
        await super().check(resource)

    async def reset(self, resource: Connection) -> bool:
        if not self.serves(resource):
            return False
        return await super().reset(resource)

    def _what(self) -> str:
        return f"as {self.role} of {self.service!r}"

    # --- making connections -----------------------------------------------------------------

    async def create(self) -> Connection:
        self._wanted.set()
        generation = self.credentials_generation
        if self.role == "primary":
            connection = await self._primary_connection()
        else:
            connection = await self._replica_connection()
        connection.auth_generation = generation
        self._live.add(connection)
        return connection

    async def _wait_promotion(self) -> None:
        """While a failover promotes a replica, wait (bounded) for its announcement."""
        promoting = self._promoting
        if promoting is not None:
            with anyio.move_on_at(self._pause_deadline):
                await promoting.wait()
            self._pause_expired(promoting)

    def _pause_expired(self, promoting: anyio.Event) -> None:
        """End the pause ``promoting`` if it is still on and past its deadline."""
        if self._promoting is promoting and anyio.current_time() >= self._pause_deadline:
            logger.warning(
                "%s: no promotion announced within %ss of the failover's start; asking the "
                "sentinels", self.service, _PAUSE_LIMIT,
            )  # fmt: skip
            self._promoted()

    def _promoted(self) -> None:
        promoting, self._promoting = self._promoting, None
        if promoting is not None:
            promoting.set()

    async def _primary_connection(self) -> Connection:
        moves = 0
        for _ in range(1000):  # bounded; each pass waits for a lookup or a connect
            if moves >= 4:  # the primary would have had to move at every step
                break
            # A failover may begin at any step (an announcement): wait for its promotion
            # before each lookup, not only the first.
            await self._wait_promotion()
            address = self.primary
            if address is None:
                try:
                    address, connection = await self.find_primary()
                except PrimaryNotFound:
                    if self._promoting is None:
                        raise
                    # The sentinels still name the primary a failover begun meanwhile is
                    # replacing (refused): wait for the promotion, then look again.
                    continue
                if address is None:
                    # The lookup waited for was cancelled (its caller left), or a failover
                    # began meanwhile: look up again (not a move).
                    continue
                if connection is not None:
                    if self.known == address:
                        return connection
                    await connection.aclose()
                    moves += 1
                    continue
            try:
                connection = await self.discovery.connect_checked(address, "master")
            except NotTheRole as exc:
                self.counters["wrong_role"] += 1
                self.demoted(address, str(exc))
                moves += 1
                continue
            except (RedisError, OSError):
                self.forget(address)  # down, or failed over: the next attempt asks
                raise
            if self.known != address:  # it moved while we connected
                await connection.aclose()
                moves += 1
                continue
            return connection
        raise ConnectError(
            f"the primary of {self.service!r} moved at every attempt to connect to it; "
            "the sentinels may still be failing over"
        )

    async def find_primary(self) -> tuple[Address | None, Connection | None]:
        """Ask the sentinels where the primary is (or wait for the lookup under way) and adopt
        the answer.  Returns the address and, for the caller that asked, a connection to it
        that said ``ROLE`` master (None for those that waited); ``(None, None)`` if the lookup
        waited for was cancelled.

        Raises:
            PrimaryNotFound: no sentinel named a primary that answered as one.
        """
        flight = self._flight
        if flight is not None:
            await flight.done.wait()
            if isinstance(flight.error, PrimaryNotFound):
                error = flight.error
                raise PrimaryNotFound(str(error), error.attempts) from None
            if flight.error is not None:
                raise ConnectError(f"looking up the primary failed: {flight.error}")
            return flight.address, None
        flight = self._flight = _Flight()
        announced = self._announced_count
        found: Address | None
        connection: Connection | None
        try:
            found, connection = await self.discovery.primary(self._replaced)
            if self._announced_count != announced:
                # A failover was announced while the sentinels were asked: the answer may
                # predate it.  What was announced stands; the caller connects there.
                await connection.aclose()
                found, connection = self.primary, None
            flight.address = found
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            self._flight = None
            flight.done.set()
        if found is not None and connection is not None:
            why_not = self._replaced(found)  # a failover began while the sentinels were asked
            if why_not is not None:
                await connection.aclose()
                return None, None
            self.adopt(found, "named by the sentinels and checked with ROLE")
        return found, connection

    async def _replica_connection(self) -> Connection:
        if self._replicas_stale or not self.replicas:
            await self.refresh_replicas()
        if not self.replicas:  # none healthy: reads go to the primary (as redis-py's)
            return await self._primary_connection()
        candidates = list(self.replicas)
        failures = []
        # Taken before connecting: connections opened together go to different replicas.
        start = self._turn % len(candidates)
        self._turn = (start + 1) % len(candidates)
        for i in range(len(candidates)):
            address = candidates[(start + i) % len(candidates)]
            try:
                connection = await self.discovery.connect_checked(address, "slave")
            except (RedisError, OSError) as exc:
                failures.append(f"{show(address)}: {type(exc).__name__}: {exc}")
                continue
            return connection
        self._replicas_stale = True
        raise ReplicaNotFound(
            f"no replica of {self.service!r} the sentinels listed could be used "
            f"({'; '.join(failures)})"
        )

    async def refresh_replicas(self) -> None:
        """Ask the sentinels for the healthy replicas, and keep those that say so themselves
        (``ROLE``: a replica with its link to the primary up; the sentinels notice a broken
        link only at their next INFO, up to 10 s later).  With none, reads go to the
        primary.

        One refresh at a time: a caller that comes while one runs waits for it and takes its
        result (connections opened together ask the sentinels once).  A refresh that fails
        or is cancelled leaves the list as it was, and the next caller asks again.
        """
        running = self._refreshing
        if running is not None:
            await running.wait()
            return
        self._refreshing = done = anyio.Event()
        try:
            await self._refresh_replicas()
        finally:
            self._refreshing = None
            done.set()

    async def _refresh_replicas(self) -> None:
        try:
            listed = await self.discovery.replicas()
        except ReplicaNotFound as exc:
            if self.replicas:
                logger.warning("%s: %s; reads go to the primary", self.service, exc)
            listed = []
        replicas = []
        for address in listed:
            try:
                connection = await self.discovery.connect_checked(address, "slave")
            except (RedisError, OSError) as exc:
                logger.info("%s: not reading from %s: %s", self.service, show(address), exc)
                continue
            await connection.aclose()
            replicas.append(address)
        if listed and not replicas and self.replicas:
            logger.warning(
                "%s: no replica is linked to the primary; reads go to the primary", self.service
            )
        self._replicas_stale = False
        if replicas != self.replicas:
            removed = set(self.replicas) - set(replicas)
            self.replicas = replicas
            for address in removed:
                self._queue_move(address, f"{show(address)} is no longer a healthy replica")
        if not replicas and self.known is None and self._promoting is None:
            # (During a promotion the primary is not asked for: it is announced, and what
            # falls back to it waits for that.)
            _, checked = await self.find_primary()
            if checked is not None:
                await checked.aclose()

    # --- subscriptions ----------------------------------------------------------------------

    def placement(self) -> _Placement:
        """Where the pool's pub/sub connections go (the pub/sub hub's placement)."""
        return _Placement(self)

    async def locate(self, moved: bool) -> RedisConfig:
        """Where a subscriber connection goes now: the primary (role "primary", or no healthy
        replica), else the next healthy replica.  ``moved``: the last one failed or stopped
        serving, so the sentinels are asked again first."""
        self._wanted.set()
        if self.role == "replica":
            if moved or self._replicas_stale or not self.replicas:
                await self.refresh_replicas()
            if self.replicas:
                address = self.replicas[self._turn % len(self.replicas)]
                self._turn = (self._turn + 1) % len(self.replicas)
                return self.discovery.data_config(address)
        for _ in range(3):  # a failover's pause, a cancelled lookup waited for, our own
            await self._wait_promotion()
            found = self.primary
            if found is None or moved:
                try:
                    found, connection = await self.find_primary()
                except PrimaryNotFound:
                    if self._promoting is not None:
                        continue  # a failover began: wait for its promotion
                    if self.known is None:
                        raise
                    # The sentinels have not caught up with the failover the pool followed
                    # (they still name the node it replaced, which is refused): the primary
                    # adopted stands, rather than backing off until they agree.
                    found, connection = self.known, None
                if connection is not None:
                    await connection.aclose()
            if found is not None:
                return self.discovery.data_config(found)
            moved = True  # the lookup waited for was cancelled: ask ourselves
        raise ConnectError(f"the primary of {self.service!r} is not known yet")

    # --- what changes where -----------------------------------------------------------------

    def adopt(self, address: Address, why: str) -> None:
        """``address`` is the primary now: new connections go there; connections to the
        previous one are refused and closed (see :meth:`demoted`)."""
        old = self.known if self.known is not None else self._leaving
        self.known, self.primary, self._leaving = address, address, None
        self._left.pop(address, None)
        self._promoted()
        if old is not None and old != address:
            self.counters["switches"] += 1
            self._left[old] = anyio.current_time()
            logger.warning(
                "%s: the primary moved from %s to %s (%s)", self.service, show(old),
                show(address), why,
            )  # fmt: skip
            self._retire(old, f"{show(old)} is no longer the primary of {self.service!r}: {why}")

    def _replaced(self, address: Address) -> str | None:
        """Why a lookup must not take ``address`` back (see _LEFT_MEMORY), or None."""
        if self._promoting is not None and address == self._leaving:
            return "a failover is promoting a replica in its place"
        left = self._left.get(address)
        if left is None:
            return None
        age = anyio.current_time() - left
        if age >= _LEFT_MEMORY:
            del self._left[address]
            return None
        return f"a failover replaced it {age:.1f}s ago (that sentinel has not caught up)"

    def forget(self, address: Address) -> None:
        """Connecting to ``address`` failed: ask the sentinels before the next connection.
        Connections to it are left alone (if it is still the primary, they work)."""
        if self.primary == address:
            self.primary = None

    def demoted(self, address: Address, why: str) -> None:
        """``address`` said it is not the primary (``ROLE``, or ``READONLY`` to a command):
        nothing more is sent to it, and the sentinels are asked again."""
        self.forget(address)
        if self.known == address:
            self.known = None
            # The primary adopted last is not one any more: a node replaced before it may
            # legitimately be primary again (a failback whose announcement was missed).
            self._left.clear()
            self._retire(address, f"{show(address)} is not the primary of {self.service!r}: {why}")

    def note_readonly(self, connection: Connection) -> None:
        """A command on ``connection`` was answered ``READONLY``: its node is a replica now."""
        if self.role == "primary":
            self.counters["readonly"] += 1
            address = (connection.config.host, connection.config.port)
            self.demoted(address, "it answered READONLY")

    def _retire(self, address: Address, reason: str) -> None:
        for connection in list(self._live):
            if (connection.config.host, connection.config.port) == address:
                connection.refuse(reason)
        self._queue_move(address, reason)

    def _queue_move(self, address: Address, reason: str) -> None:
        self._moves.append((address, reason))
        if self._moved is not None:
            self._moved.set()

    # --- the background task ----------------------------------------------------------------

    async def run(
        self, on_move: Mover, backoff: BackoffPolicy, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Until cancelled: listen to the sentinels' announcements (one sentinel at a time,
        the next after a failure, with ``backoff``), and call ``on_move(address, reason)``
        for each node that stopped serving (the pool closes its idle connections there and
        moves its subscriptions)."""
        self._moved = anyio.Event()
        self._pause_began = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._move_loop, on_move)
            tg.start_soon(self._promotion_loop)
            task_status.started()
            # Nothing to follow until a connection is wanted: a pool never used (a primary
            # pool's ``replica`` nobody reads from) opens no connection to the sentinels.
            await self._wanted.wait()
            if self.role == "replica":
                tg.start_soon(self._replica_loop)
            await self._listen_loop(backoff)

    async def _promotion_loop(self) -> None:
        """While a failover promotes a replica, ask that replica ``ROLE`` every
        ``_PROMOTION_POLL`` s: as soon as it says master it is adopted (the leader announces
        it only after its next INFO, up to a second later), and writes resume there."""
        while True:
            await self._pause_began.wait()
            self._pause_began = anyio.Event()
            promoting, target = self._promoting, self._selected
            if promoting is None or target is None:
                continue
            with anyio.move_on_at(self._pause_deadline):
                while self._promoting is promoting:
                    try:
                        connection = await self.discovery.connect_checked(target, "master")
                    except (RedisError, OSError):
                        await anyio.sleep(_PROMOTION_POLL)
                        continue
                    await connection.aclose()
                    if self._promoting is promoting:
                        self.adopt(target, f"{show(target)} said ROLE master during the failover")
            if promoting is not None:
                self._pause_expired(promoting)  # never promoted: the sentinels are asked

    async def _replica_loop(self) -> None:
        """A replica pool asks for the healthy replicas every ``_REPLICA_REFRESH`` s: a
        replica whose link to the primary broke is not announced by the sentinels."""
        while True:
            await anyio.sleep(_REPLICA_REFRESH)
            try:
                await self.refresh_replicas()
            except (RedisError, OSError) as exc:
                logger.info("%s: asking for the replicas failed (%s); later", self.service, exc)

    async def _move_loop(self, on_move: Mover) -> None:
        while True:
            assert self._moved is not None
            await self._moved.wait()
            self._moved = anyio.Event()
            moves, self._moves = self._moves, []
            for address, reason in moves:
                await on_move(address, reason)

    async def _listen_loop(self, backoff: BackoffPolicy) -> None:
        """One listener per sentinel: the leader of a failover announces it first, and any
        sentinel may be down."""
        async with anyio.create_task_group() as tg:
            for sentinel in self.discovery.sentinels:
                tg.start_soon(self._listen_forever, sentinel, backoff)

    async def _listen_forever(self, sentinel: Address, backoff: BackoffPolicy) -> None:
        failures = 0
        while True:
            try:
                await self._listen(sentinel)
            except (RedisError, OSError) as exc:
                self.counters["watch_failures"] += 1
                if self._heard_from(sentinel):
                    failures = 0  # it served for a while: start the backoff again
                failures += 1
                delay = backoff_delay(
                    failures, base=backoff.base, cap=backoff.cap, jitter=backoff.jitter
                )
                # A refusal is a configuration problem that stops the pool from following
                # failovers: said loudly, once per run of failures.
                level = (
                    logging.WARNING
                    if isinstance(exc, _SentinelRefused) and failures == 1
                    else logging.INFO
                )
                logger.log(
                    level, "%s: listening to sentinel %s failed (%s: %s); again in %.2fs",
                    self.service, show(sentinel), type(exc).__name__, exc, delay,
                )  # fmt: skip
                await anyio.sleep(delay)

    def _heard_from(self, sentinel: Address) -> bool:
        return self._subscribed.pop(sentinel, False)

    async def _listen(self, sentinel: Address) -> None:
        connection = await Connection.connect(self.discovery.sentinel_config(sentinel))
        try:
            await connection.send_commands([("SUBSCRIBE", *_EVENTS)], timeout=_KEEPALIVE)
            acknowledged = 0
            pinged = False
            while True:
                with anyio.move_on_after(_KEEPALIVE) as scope:
                    frames = await connection.read_messages()
                if scope.cancelled_caught:
                    if pinged:
                        raise ConnectionLost(
                            f"sentinel {show(sentinel)} answered nothing for {2 * _KEEPALIVE}s"
                        )
                    await connection.send_commands([("PING",)], timeout=_KEEPALIVE)
                    pinged = True
                    continue
                pinged = False
                for frame in frames:
                    if isinstance(frame, Exception):  # SUBSCRIBE refused (NOPERM...)
                        raise _SentinelRefused(
                            f"sentinel {show(sentinel)} refused to subscribe to its failover "
                            f"announcements ({frame}): failovers are not followed through "
                            "it; let the sentinels' user read them (ACL: &* or allchannels)"
                        )
                    kind = _text(frame[0]) if isinstance(frame, list) and frame else ""
                    if kind == "subscribe":
                        acknowledged += 1
                        if acknowledged == len(_EVENTS):
                            self._subscribed[sentinel] = True
                            # Listening now: anything announced before is learnt by asking.
                            await self._catch_up()
                    elif kind == "message" and len(frame) == 3:
                        await self._announced(_text(frame[1]), _text(frame[2]), sentinel)
        finally:
            await connection.aclose()

    async def _catch_up(self) -> None:
        try:
            if self.role == "primary" or not self.replicas:
                _, connection = await self.find_primary()
                if connection is not None:
                    await connection.aclose()
            if self.role == "replica":
                await self.refresh_replicas()
        except (RedisError, OSError) as exc:
            logger.info("%s: looking up the nodes failed (%s); later", self.service, exc)

    async def _announced(self, channel: str, data: str, sentinel: Address) -> None:
        words = data.split()
        if channel in _ABORTS:  # "master <name> <ip> <port>"
            if len(words) >= 2 and words[1] == self.service and self._promoting is not None:
                logger.warning(
                    "%s: the failover ended without a promotion (%s)", self.service, channel
                )
                self._promoted()  # the sentinels are asked (the primary is not known)
            return
        if channel == "+switch-master":
            # <name> <old-ip> <old-port> <new-ip> <new-port>
            if len(words) == 5 and words[0] == self.service and is_port(words[4]):
                self.counters["announcements"] += 1
                self._announced_count += 1
                self.adopt(
                    (words[3], int(words[4])),
                    f"+switch-master announced by sentinel {show(sentinel)}",
                )
                if self.role == "replica":
                    self._replicas_stale = True
            return
        # "<type> <name> <ip> <port> @ <master-name> <master-ip> <master-port>"
        if len(words) < 8 or words[0] != "slave" or words[5] != self.service:
            return
        if not is_port(words[3]):
            return
        if channel == "+failover-state-send-slaveof-noone":
            old = (words[6], int(words[7])) if is_port(words[7]) else None
            if old is not None and self.known in (old, None):
                # A replica pool pauses too: what falls back to the primary (reads when no
                # replica is healthy, and their subscriptions) must not go to the old one.
                self.counters["announcements"] += 1
                logger.warning(
                    "%s: a failover is promoting %s; %s wait for it (the old primary's would "
                    "be lost)", self.service, show((words[2], int(words[3]))),
                    "writes" if self.role == "primary" else "reads that go to the primary",
                )  # fmt: skip
                if self.role == "replica":
                    self._replicas_stale = True
                self._promoting = anyio.Event()
                self._pause_deadline = anyio.current_time() + _PAUSE_LIMIT
                self._announced_count += 1
                self._leaving, self.known, self.primary = old, None, None
                self._selected = (words[2], int(words[3]))
                self._pause_began.set()
                self._retire(old, f"{show(old)} is being failed over by the sentinels")
            return
        if channel == "+promoted-slave":
            self.counters["announcements"] += 1
            self._announced_count += 1
            self.adopt(
                (words[2], int(words[3])),
                f"+promoted-slave announced by sentinel {show(sentinel)}",
            )
            self._replicas_stale = True
            return
        if self.role != "replica":
            return
        self._replicas_stale = True  # asked again at the next new connection
        address = (words[2], int(words[3]))
        if channel == "+sdown" and address in self.replicas:
            self.replicas.remove(address)
            self._queue_move(address, f"{show(address)} is down (+sdown from {show(sentinel)})")

    def statistics(self) -> dict[str, Any]:
        """What :meth:`RedisPool.sentinel_statistics` reports."""
        return {
            "service": self.service,
            "role": self.role,
            "primary": show(self.known) if self.known else None,
            "replicas": [show(a) for a in self.replicas],
            "sentinels": [show(a) for a in self.discovery.sentinels],
            **self.counters,
            **self.discovery.counters,
        }

    def __repr__(self) -> str:
        where = show(self.known) if self.known else "not yet known"
        return f"<SentinelConnectionFactory {self.service!r} {self.role} at {where}>"


class _Placement:
    """The pub/sub hub's view of a Sentinel factory (see ``_pubsub.Placement``)."""

    def __init__(self, factory: SentinelConnectionFactory) -> None:
        self._factory = factory

    def check(self, kind: str, keys: list[Any]) -> None:
        """Every kind of subscription works on one server."""

    async def locate(self, moved: bool) -> RedisConfig:
        return await self._factory.locate(moved)

    def serves(self, config: RedisConfig) -> bool:
        return self._factory.serves_address((config.host, config.port))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
