"""Auto-pipelining: commands from concurrent tasks share a few pooled connections.

Theory of operation
-------------------
The engine leases up to ``connections`` connections from the pool ("lanes") and keeps them
while they are in use.  A request (one command, or several that must be contiguous) is packed
first, so a bad argument fails before anything is queued.  Then, on its lane:

* **writing**: an idle lane (nothing owed, nothing queued) is written to at once by the caller
  itself.  On a busy lane the request joins the *outbox*; whoever next finds the lane free to
  write (the task that was writing, or the reader after each read) sends the whole outbox in
  one write.  Writes are shielded from cancellation (half a command on the wire would break
  every request on the lane) and bounded by ``socket_timeout`` when it is set.
* **reading**: one task at a time is the lane's reader: the first waiter that finds no reader
  reads, hands each complete reply to the request at the head of the *in-flight* queue (which
  is in wire order), and wakes its task.  When its own reply is complete it passes the role on
  to the next waiter.  There is no reader task to hop through.
* **cancellation**: a request cancelled before its bytes were written is removed (it is never
  sent).  One cancelled after is *abandoned*: its reply is still read, in its turn, and
  discarded.  No caller ever receives another caller's reply, and the lane stays in use.
* **failure**: a broken connection, a protocol error, unsolicited bytes, or replies that stop
  coming for ``socket_timeout`` fail the lane: every request on it gets its own clear error
  that says whether its command was sent (and so may have run), the connection is closed and
  its pool slot returned.  The next request opens a new lane.
* **capacity**: at most ``max_in_flight`` requests per lane; beyond that (all lanes full and
  no more allowed) callers wait in FIFO order.  They never fail for it.

A lane goes back to the pool as soon as it is idle (nothing queued or owed), so an idle shared
connection is an idle pooled connection: health checks, expiry and credential rotation apply to
it, and the pool's statistics count it as available.  A lane kept busy without a pause is
looked at every ``check_every`` seconds: if the pool retired its connection (``reset()``,
``max_lifetime``) or its credentials were rotated, it takes no new requests and goes back once
drained.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from ._connection import Connection, ConnectionFactory
from ._errors import (
    AnyPoolError,
    ConnectionLost,
    ConnectionRetired,
    PoolExhausted,
    ProtocolError,
    TimeoutError,
)
from ._pool import Lease, Pool
from ._resp import NEED_DATA, Arg, Packer
from ._retry import Sent
from ._waiter import Waiter, cancellation_probe, waiter_factory

__all__ = ["Multiplexer"]


class _Request:
    """One caller's commands on a lane, and what came back."""

    __slots__ = (
        "abandoned", "data", "decodes", "error", "name", "replies", "sent", "sent_flag", "waiter",
    )  # fmt: skip

    def __init__(
        self, data: bytes, decodes: Sequence[bool], name: Any, sent_flag: Sent | None
    ) -> None:
        self.data = data
        self.decodes = decodes
        self.name = name  # the first command's name, for error messages
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.waiter: Waiter | None = None  # set while its task is parked
        self.abandoned = False  # its caller left; the reply is read and discarded
        self.sent = False  # its bytes were handed to the transport (it may have run)
        self.sent_flag = sent_flag  # the retry rule's record of the same fact

    @property
    def done(self) -> bool:
        return self.error is not None or len(self.replies) == len(self.decodes)


class _Lane:
    """A leased connection shared by many requests."""

    __slots__ = (
        "connection", "failed", "in_flight", "lease", "outbox", "parked", "reading",
        "released", "retiring", "writing",
    )  # fmt: skip

    def __init__(self, lease: Lease[Connection]) -> None:
        self.lease = lease
        self.connection: Connection = lease.resource
        self.in_flight: deque[_Request] = deque()  # written, replies owed, in wire order
        self.outbox: list[_Request] = []  # queued, not written yet
        self.writing = False
        self.reading = False
        self.failed = False
        self.released = False
        self.retiring = False  # takes no new requests; goes back to the pool once drained
        self.parked = False  # idle, its lease parked in the pool (which may take it back)

    @property
    def load(self) -> int:
        return len(self.in_flight) + len(self.outbox)

    def busy_reading_or_writing(self) -> bool:
        """Whether someone reads or writes it, or it failed (no one may start either)."""
        return self.reading or self.writing or self.failed

    @property
    def busy(self) -> bool:
        return bool(self.in_flight or self.outbox or self.writing or self.reading)


class _RoomWaiter:
    """A caller waiting for room on a lane (FIFO), or for a lane to be opened."""

    __slots__ = ("error", "waiter")

    def __init__(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.error: BaseException | None = None  # the open it waited for failed


class Multiplexer:
    """Runs requests of many tasks on a few shared connections of ``pool``.

    Args:
        pool: the pool the connections are leased from (each lane holds one slot).
        factory: the pool's connection factory (its config; rotated credentials).
        connections: most lanes at once.
        max_in_flight: most requests queued or owed per lane.
        check_every: seconds between looks at lanes that stay busy (see :meth:`upkeep`).
    """

    def __init__(
        self,
        pool: Pool[Connection],
        factory: ConnectionFactory,
        *,
        connections: int,
        max_in_flight: int,
        check_every: float,
    ) -> None:
        config = factory.config
        self._pool = pool
        self._factory = factory
        self._packer = Packer(config.encoding, config.encoding_errors)
        self._timeout = config.socket_timeout
        self._max_lanes = connections
        self._max_in_flight = max_in_flight
        self._check_every = check_every
        self._lanes: list[_Lane] = []
        self._room: deque[_RoomWaiter] = deque()  # callers waiting for room, FIFO
        self._opening = 0  # lanes being opened
        self._turn_taken = False  # a caller woken from _room has not taken its place yet
        self._new_waiter: Callable[[], Waiter] | None = None
        self._probed = False
        self._cancel_probe: Callable[[], bool] | None = None
        self._orphans: list[_Lane] = []  # lanes owing replies to cancelled callers only
        self._orphaned = anyio.Event()  # set when a lane joins _orphans
        self._closed = False
        self._counts = dict.fromkeys(
            ("requests", "writes", "largest_write", "abandoned", "withdrawn", "lanes_opened",
             "lanes_failed", "lanes_returned", "waited_for_room"),
            0,
        )  # fmt: skip

    # --- the request path ---------------------------------------------------------------------

    async def execute(
        self,
        commands: Sequence[Sequence[Arg]],
        decodes: Sequence[bool],
        sent: Sent | None = None,
    ) -> tuple[list[Any], Connection]:
        """Run ``commands`` (contiguous on one connection) and return their replies in order,
        error replies in their place as exception instances, and the connection they ran on
        (its ``protocol``: the RESP version spoken; read it, do not use it).

        Args:
            commands: the commands.
            decodes: one flag per command: False keeps a reply's strings as bytes.
            sent: set once the commands' bytes are handed to the transport (they may then
                have run).

        Raises:
            InvalidArgument: an argument Redis cannot take (nothing was sent).
            ConnectionLost, TimeoutError, ProtocolError...: the lane failed; the message says
                whether the command was sent.
            PoolClosed, PoolTimeout, ConnectError...: no connection could be leased.

        Cancellation: before the write, the request is withdrawn unsent; after it, its reply
        is read and discarded by the lane's next reader.  Nothing else is affected.
        """
        self._pool.check_open()  # open, and in this event loop (a parked lane may be used)
        if self._closed:
            raise self._pool.closed_error(f"{self._pool.name} is closed")
        request = _Request(self._packer.pack_commands(commands), decodes, commands[0][0], sent)
        while True:  # bounded: a parked lane that cannot be resumed leaves _lanes
            lane = None if self._room else self._choose()
            checked = lane is None  # a lane found or opened came through an await
            if lane is None:
                lane = await self._lane_with_room()
            if not lane.parked or await self._resume(lane):
                break
        self._counts["requests"] += 1
        try:
            if lane.busy:
                # Queued: a cancellation reaching this task at its next await withdraws the
                # request unsent (unless a reader sent the queue first: then its reply is
                # discarded).  One already delivered is raised now, cheaply where possible.
                if not checked:
                    probe = self._probe()
                    if probe is None:
                        await anyio.lowlevel.checkpoint_if_cancelled()
                    elif probe():
                        await anyio.lowlevel.checkpoint()
                lane.outbox.append(request)
            else:
                # A cancelled task sends nothing (and on trio, a cancellation still pending,
                # e.g. one that struck as the task was handed a lane, would strike inside the
                # write, which would then fail the lane).
                await anyio.lowlevel.checkpoint_if_cancelled()
                # Idle (just leased or resumed, after a look at the connection): written at
                # once, by this task.
                lane.in_flight.append(request)
                await self._write(lane, [request])
            while request.error is None and len(request.replies) < len(request.decodes):
                if not lane.reading and not lane.writing:
                    await self._read(lane, request)
                else:
                    waiter = request.waiter = self._waiter()
                    try:
                        await waiter.wait()
                    finally:
                        request.waiter = None
        finally:
            if not request.done:  # its caller is leaving (cancelled)
                self._withdraw(lane, request)
            self._hand_off(lane)
            if not lane.busy:
                # Idle: parked in the pool, which counts it as available and takes it back
                # whenever it needs it (another caller needs a slot, a maintenance round);
                # the next request resumes it, saving a lease and a release.
                if lane.retiring or self._closed or lane.failed:
                    await self._give_back(lane)
                elif not (lane.released or lane.parked):  # (another caller's may have)
                    lane.parked = True
                    self._pool.park(lane.lease)
        error = request.error
        if error is not None:
            raise error
        return request.replies, lane.connection

    async def _resume(self, lane: _Lane) -> bool:
        """Take a parked lane back into use; False (and the lane dropped) if the pool took
        it back, or its connection was retired, rotated out, or is not quiet (bytes nobody
        asked for, or closed by the server, while it was parked)."""
        lane.parked = False
        if not self._pool.unpark(lane.lease):
            self._forget(lane)  # the pool took it back (and released it)
            return False
        connection = lane.connection
        if (
            self._pool.is_retired(lane.lease)
            or self._factory.is_stale(connection)
            or not connection.looks_alive()
        ):
            await self._give_back(lane)  # the pool closes what it must not reuse
            return False
        return True

    def _probe(self) -> Callable[[], bool] | None:
        if not self._probed:
            self._probed, self._cancel_probe = True, cancellation_probe()
        return self._cancel_probe

    def _waiter(self) -> Waiter:
        factory = self._new_waiter
        if factory is None:
            factory = self._new_waiter = waiter_factory()
        return factory()

    # --- choosing a lane ----------------------------------------------------------------------

    def _choose(self) -> _Lane | None:
        """The least loaded lane with room, or None if a new lane should be opened or every
        lane is full."""
        if self._pool.waiting:
            # Callers wait for a slot (BLPOP, acquire()...): the lanes take no more, so they
            # drain and go back to the pool, and shared commands queue for a slot behind those
            # callers (first come, first served) instead of holding it.
            for lane in self._lanes:
                lane.retiring = True
            self._with_room()  # (forgets the parked ones)
            return None
        best = self._with_room()
        if best is not None and best.load and self._may_open():
            return None  # spread the load: every lane is busy, and another may be opened
        return best

    def _may_open(self) -> bool:
        return len(self._lanes) + self._opening < self._max_lanes

    async def _lane_with_room(self) -> _Lane:
        """A lane with room: a new one if allowed, else after waiting in FIFO order.

        One woken waiter at a time holds the turn (``_turn_taken``) until it has its place,
        so waiters woken together cannot overtake each other."""
        turn = False  # this task was woken in its turn: it may go before those still waiting
        waited = False
        try:
            while True:
                if self._closed:
                    raise self._pool.closed_error(f"{self._pool.name} is closed")
                if turn or not self._room:
                    lane = self._choose()
                    if lane is None and self._may_open():
                        spare = self._with_room()
                        try:
                            # Another lane only if a slot is free now: with a lane that has
                            # room, never wait for the pool (others may hold every slot).
                            lane = await self._open_lane(nowait=spare is not None)
                        except PoolExhausted:
                            lane = spare
                    if lane is not None:
                        return lane
                entry = _RoomWaiter(self._waiter())
                if turn:
                    self._room.appendleft(entry)  # still no room: it stays first in line
                    turn = self._turn_taken = False
                else:
                    self._room.append(entry)
                if not waited:  # callers, not waits
                    waited = True
                    self._counts["waited_for_room"] += 1
                try:
                    await entry.waiter.wait()
                except BaseException:
                    try:
                        self._room.remove(entry)
                    except ValueError:
                        if entry.error is None:  # it had been given the turn
                            self._turn_taken = False
                            self._wake_room()
                    raise
                if entry.error is not None:
                    raise entry.error
                turn = True
        finally:
            if turn:
                # The caller takes its place before it next yields: the turn passes on.
                self._turn_taken = False
                self._wake_room()

    def _with_room(self) -> _Lane | None:
        """The least loaded lane with room, parked ones included (None if every one is
        full).  Lanes retired while parked are left to the pool (which takes a parked lease
        back when it needs it, closing what it must not reuse) and forgotten here."""
        best: _Lane | None = None
        best_load = self._max_in_flight
        stale: list[_Lane] | None = None
        for lane in self._lanes:
            if lane.retiring:
                if lane.parked:
                    stale = stale or []
                    stale.append(lane)
                continue
            load = lane.load
            if load < best_load:
                best, best_load = lane, load
        if stale:
            for lane in stale:
                self._forget(lane)
        return best

    def _forget(self, lane: _Lane) -> None:
        """Drop a lane: its lease goes back to the pool (or the pool took it back)."""
        if not lane.released:
            self._counts["lanes_returned"] += 1
        lane.parked, lane.released = False, True
        if lane in self._lanes:
            self._lanes.remove(lane)

    async def _open_lane(self, *, nowait: bool = False) -> _Lane:
        self._opening += 1
        try:
            lease = await self._pool.lease(nowait=nowait)
        except BaseException as exc:
            self._opening -= 1
            if isinstance(exc, PoolExhausted) and nowait:
                pass  # the caller uses a lane that has room
            elif isinstance(exc, Exception) and not self._lanes and not self._opening:
                # Everyone waiting was waiting for this connection: they get its error
                # rather than trying again one after the other.
                while self._room:
                    entry = self._room.popleft()
                    entry.error = _copy_error(exc)
                    entry.waiter.wake()
            else:
                self._wake_room()
            raise
        self._opening -= 1
        lease.stack = None  # the engine's lease: held across many commands, never a leak
        lane = _Lane(lease)
        self._lanes.append(lane)
        self._counts["lanes_opened"] += 1
        if self._closed:
            await self._give_back(lane)
            raise self._pool.closed_error(f"{self._pool.name} closed while a connection opened")
        self._wake_room()
        return lane

    def _wake_room(self) -> None:
        """Give the turn to the first caller waiting for room, if there may be room for it
        and no other caller holds the turn."""
        if self._turn_taken or not self._room:
            return
        if self._choose() is not None or self._may_open():
            self._turn_taken = True
            self._room.popleft().waiter.wake()

    # --- writing and reading ------------------------------------------------------------------

    async def _write(self, lane: _Lane, batch: list[_Request]) -> None:
        """Send ``batch`` (already at the end of ``in_flight``), then, in a loop, whatever was
        queued meanwhile.  A failure fails the lane (the requests get their errors)."""
        connection = lane.connection
        counts = self._counts
        while True:
            if connection.refused is not None:
                self._refuse(lane, batch)
                return
            for request in batch:
                request.sent = True
                if request.sent_flag is not None:
                    request.sent_flag.value = True
            data = batch[0].data if len(batch) == 1 else b"".join(r.data for r in batch)
            lane.writing = True
            try:
                # Not shielded (a cancel scope costs 3-8 us): on the asyncio transports a
                # write is all or nothing and yields only while the transport's buffer is
                # full; on trio, a cancellation pending was raised before (see _next_batch
                # and execute), and one can strike only while the kernel's buffer is full.  A
                # write cut short fails the lane.
                await connection.send_packed(data, batch[0].name, timeout=self._timeout)
            except BaseException as exc:
                lane.writing = False
                await self._fail(lane, _interrupted(exc, connection, batch[0].name))
                if not isinstance(exc, AnyPoolError):
                    raise
                return
            finally:
                lane.writing = False
            counts["writes"] += 1
            if len(batch) > counts["largest_write"]:
                counts["largest_write"] = len(batch)
            # Queued while this write was under way (when the write yields: trio, anyio's
            # asyncio streams, a full buffer).
            next_batch = await self._next_batch(lane)
            if next_batch is None:
                return
            batch = next_batch

    async def _next_batch(self, lane: _Lane) -> list[_Request] | None:
        """Take the outbox to send it on behalf of its requests (None if there is nothing to
        send or someone else sends).  A cancellation already pending for this task is raised
        first, before anything is taken."""
        if not lane.outbox:
            return None
        await anyio.lowlevel.checkpoint_if_cancelled()
        if not lane.outbox or lane.writing or lane.failed:
            return None
        batch, lane.outbox = lane.outbox, []
        lane.in_flight.extend(batch)
        return batch

    async def _flush(self, lane: _Lane) -> None:
        """Send the outbox (see :meth:`_next_batch`)."""
        batch = await self._next_batch(lane)
        if batch is not None:
            await self._write(lane, batch)

    async def _read(self, lane: _Lane, request: _Request) -> None:
        """Be the lane's reader until ``request`` is done: hand every reply read to its
        request, and send the outbox whenever the lane is free to write."""
        lane.reading = True
        # The outbox is sent after replies were read (the callers they woke have queued their
        # next commands by the next read, so batches grow and every caller gets its turn), or
        # when nothing is owed (no read would come).  Sending it as soon as a task becomes the
        # reader would let that task's own next command overtake the others, every time.
        read = False
        try:
            while True:
                self._dispatch(lane)
                if lane.failed:
                    return
                flush = lane.outbox and not lane.writing and (read or not lane.in_flight)
                if request.done:
                    if flush:
                        await self._flush(lane)  # sent before the role passes on
                    return
                if flush:
                    await self._flush(lane)
                    read = False
                    continue
                if not lane.in_flight:
                    return  # a writer is sending this request: it hands the role on after
                await self._receive(lane)
                read = True
        except AnyPoolError as exc:
            lane.reading = False
            await self._fail(lane, exc)
        finally:
            lane.reading = False

    async def _receive(self, lane: _Lane) -> None:
        timeout = self._timeout
        if timeout is None:
            await lane.connection.receive_more()
            return
        with anyio.move_on_after(timeout) as scope:
            await lane.connection.receive_more()
        if scope.cancelled_caught:
            raise TimeoutError(
                f"{lane.connection.config.address} sent nothing for {timeout}s (socket_timeout) "
                f"while it owed {len(lane.in_flight)} replies on a shared connection; the "
                "connection was closed"
            )

    def _dispatch(self, lane: _Lane) -> None:
        """Hand every complete reply already read to its request (sync, no I/O)."""
        connection = lane.connection
        in_flight = lane.in_flight
        if in_flight:
            connection.mark_used()
        while in_flight:
            head = in_flight[0]
            replies = head.replies
            reply = connection.next_reply(head.decodes[len(replies)])
            if reply is NEED_DATA:
                return
            replies.append(reply)
            if len(replies) == len(head.decodes):
                in_flight.popleft()
                waiter = head.waiter
                if waiter is not None:
                    waiter.wake()
                if self._room:
                    self._wake_room()
        if connection.has_unread and connection.next_reply() is not NEED_DATA:
            raise ProtocolError(
                f"{connection.config.address} sent a reply nobody asked for on a shared connection"
            )

    def _refuse(self, lane: _Lane, batch: list[_Request]) -> None:
        """The lane's connection was retired (its server stopped serving the pool's role):
        ``batch``, not sent, fails with ConnectionRetired (safe to send again); the lane
        takes no more and still reads the replies owed to the requests sent before."""
        lane.retiring = True
        reason = connection_reason(lane.connection)
        for request in batch:
            lane.in_flight.remove(request)
            request.error = ConnectionRetired(
                f"{_name(request.name)} was not sent: the connection to "
                f"{lane.connection.config.address} was retired ({reason})"
            )
            if request.waiter is not None:
                request.waiter.wake()
        self._wake_room()

    def _withdraw(self, lane: _Lane, request: _Request) -> None:
        """A caller left before its reply: unsent, it is removed; sent, its reply will be
        read and discarded."""
        if not request.sent:
            if request in lane.outbox:  # else: not queued yet, or the lane failed meanwhile
                lane.outbox.remove(request)
                self._counts["withdrawn"] += 1
                self._wake_room()
            return
        request.abandoned = True
        self._counts["abandoned"] += 1

    def _hand_off(self, lane: _Lane) -> None:
        """If the lane owes replies (or holds queued requests) and nobody reads, wake a
        parked caller to take the role; with none left (every caller on it was cancelled),
        the upkeep task drains the lane."""
        if lane.reading or lane.writing or lane.failed or not (lane.in_flight or lane.outbox):
            return
        for queue in (lane.in_flight, lane.outbox):
            for request in queue:
                waiter = request.waiter
                if waiter is not None:
                    waiter.wake()
                    return
        if lane not in self._orphans:
            self._orphans.append(lane)
            self._orphaned.set()

    async def _drain(self, lane: _Lane) -> None:
        """Read and discard the replies of cancelled callers on a lane nobody reads (in the
        upkeep task), until a live caller is at the head or nothing is owed; then hand the role
        on, or give the lane back."""
        if lane.busy_reading_or_writing():
            return  # someone else took the role meanwhile (or the lane failed)
        lane.reading = True
        try:
            while True:
                self._dispatch(lane)
                if lane.failed:
                    return
                if lane.outbox and not lane.writing:
                    await self._flush(lane)
                    continue
                if not lane.in_flight or not lane.in_flight[0].abandoned:
                    break
                await self._receive(lane)
        except AnyPoolError as exc:
            lane.reading = False
            await self._fail(lane, exc)
            return
        finally:
            lane.reading = False
        self._hand_off(lane)
        if not lane.busy:
            await self._give_back(lane)

    # --- failures and returns -----------------------------------------------------------------

    async def _fail(self, lane: _Lane, error: BaseException) -> None:
        """The lane's connection can no longer be trusted: every request on it gets its own
        error, the connection is closed and its slot returned."""
        if lane.failed:
            return
        lane.failed = True
        self._counts["lanes_failed"] += 1
        if lane in self._lanes:
            self._lanes.remove(lane)
        in_flight, outbox = list(lane.in_flight), lane.outbox
        lane.in_flight.clear()
        lane.outbox = []
        owed = len(in_flight)
        for request in in_flight:
            request.error = _derived(error, request, sent=True, owed=owed)
        for request in outbox:
            request.error = _derived(error, request, sent=False, owed=owed)
        for request in (*in_flight, *outbox):
            if request.waiter is not None:
                request.waiter.wake()
        self._wake_room()
        with anyio.CancelScope(shield=True):
            await lane.connection.abandon(f"{type(error).__name__} on a shared connection")
            await self._give_back(lane)

    async def _give_back(self, lane: _Lane) -> None:
        """Return the lane's connection to the pool (it closes it if it is not reusable)."""
        if lane.released:
            return
        if lane.parked and not self._pool.unpark(lane.lease):
            self._forget(lane)  # the pool took it back already
            return
        self._forget(lane)
        try:
            # Not shielded: release() returns the slot whatever happens (a connection whose
            # reset is cancelled is closed, not kept).
            await self._pool.release(lane.lease)
        finally:
            self._wake_room()

    # --- upkeep and closing -------------------------------------------------------------------

    async def run_upkeep(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Background task, until cancelled (the pool closing): drain lanes left owing
        replies to cancelled callers only (each in a child task: a stalled server delays only
        its own lane), and :meth:`upkeep` every ``check_every`` seconds."""
        async with anyio.create_task_group() as drains:
            task_status.started()
            while True:
                with anyio.move_on_after(self._check_every):
                    await self._orphaned.wait()
                if self._orphaned.is_set():
                    self._orphaned = anyio.Event()
                while self._orphans:
                    drains.start_soon(self._drain, self._orphans.pop())
                await self.upkeep()

    async def upkeep(self) -> None:
        """Retire lanes whose connection the pool retired or whose credentials were rotated:
        they take no new requests and go back to the pool once drained."""
        for lane in list(self._lanes):
            if self._pool.is_retired(lane.lease) or self._factory.is_stale(lane.connection):
                lane.retiring = True
                if not lane.busy:
                    await self._give_back(lane)

    async def aclose(self) -> None:
        """Take no more requests; return idle lanes now, busy ones once drained.

        Cancellation: the connections are returned whatever the caller's state.
        """
        self._closed = True
        while self._room:
            self._room.popleft().waiter.wake()
        for lane in list(self._lanes):
            lane.retiring = True
            if not lane.busy:
                await self._give_back(lane)
            elif not (lane.reading or lane.writing) and not any(
                request.waiter is not None for request in (*lane.in_flight, *lane.outbox)
            ):
                # Only replies nobody waits for any more: not worth waiting for.
                await self._fail(lane, ConnectionLost("the pool closed"))

    def statistics(self) -> dict[str, int]:
        """Counters: requests, writes (and the most requests in one), requests abandoned by
        cancelled callers (their replies discarded) or withdrawn unsent, lanes opened, failed
        and returned, callers that waited for room, and the lanes and requests now."""
        return {
            **self._counts,
            "lanes": sum(not lane.parked for lane in self._lanes),
            "parked": sum(lane.parked and self._pool.is_parked(lane.lease) for lane in self._lanes),
            "in_flight": sum(len(lane.in_flight) for lane in self._lanes),
            "queued": sum(len(lane.outbox) for lane in self._lanes),
            "waiting_for_room": len(self._room),
        }


def _interrupted(exc: BaseException, connection: Connection, command: Any) -> BaseException:
    """What failed a lane whose write was cut short (by ``exc``, maybe a cancellation)."""
    if isinstance(exc, AnyPoolError):
        return exc
    return ConnectionLost(
        f"a write to {connection.config.address} was interrupted ({type(exc).__name__}) while "
        f"sending {_name(command)} and the commands queued with it; the connection was closed"
    )


def connection_reason(connection: Connection) -> str:
    return connection.refused or "closed"


def _name(command: Any) -> str:
    if isinstance(command, bytes | bytearray | memoryview):
        return bytes(command).decode("ascii", "replace")
    return str(command)


def _derived(error: BaseException, request: _Request, *, sent: bool, owed: int) -> BaseException:
    """A request's own error for a lane failure: the same class for requests that were sent
    (their outcome is unknown), a ConnectionLost for those never sent; the failure chained."""
    name = _name(request.name)
    if sent:
        message = (
            f"{error} ({name} was sent on a shared connection with {owed} replies owed, and may "
            "have run)"
        )
        derived = _copy_error(error, message)
    else:
        derived = ConnectionLost(
            f"{error} ({name} was queued on a shared connection and was not sent)"
        )
    derived.__cause__ = error
    return derived


def _copy_error(error: BaseException, message: str | None = None) -> BaseException:
    """A fresh exception like ``error`` for another task to raise (with ``message``)."""
    if type(error).__init__ is BaseException.__init__ or len(error.args) <= 1:
        try:
            copied = type(error)(message if message is not None else str(error))
        except Exception:
            copied = copy.copy(error)
    else:
        copied = copy.copy(error)
    copied.__cause__ = error
    return copied
