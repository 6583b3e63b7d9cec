"""A real, throw-away primary with replicas, watched by Sentinel, for tests (see
:mod:`anypool.testing`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from ._server import RedisServer, RedisServerError, find_redis_server

__all__ = ["RedisSentinel"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(reply: Any) -> dict[str, str]:
    """A sentinel's state record (a flat list in RESP2, a map in RESP3) as a dict of str."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    items = list(reply)
    return {_text(items[i]): _text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def _info(reply: Any) -> dict[str, str]:
    fields = {}
    for line in _text(reply).splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name] = value.strip()
    return fields


class RedisSentinel:
    """A primary with ``replicas`` replicas, watched by ``sentinels`` Sentinel processes, all
    on loopback and all started from the same server binary (``redis-server --sentinel`` or
    ``valkey-server --sentinel``).  A sync context manager.

    Entering returns once every sentinel agrees on the primary, knows every replica with its
    link to the primary up and every other sentinel, and is not in TILT mode: a
    :meth:`failover` or :meth:`kill_primary` can start at once.

    Args:
        replicas: how many replicas the primary has (at least 1, to fail over to).
        sentinels: how many sentinels (3 by default: an odd number avoids split votes).
        service_name: the name the sentinels monitor the primary under.
        binary: path of ``redis-server`` or ``valkey-server`` (default: see
            :func:`find_redis_server`).
        host: loopback address every process listens on.
        password: ``requirepass`` and ``masterauth`` of the data nodes (the sentinels get it as
            ``auth-pass``).
        sentinel_password: ``requirepass`` of every sentinel.
        quorum: sentinels that must agree the primary is down (default: a majority).
        down_after: ``down-after-milliseconds``: how long a silent primary takes to be
            considered down.  Below about 1500 ms a loaded machine sees false alarms.
        failover_timeout: ``failover-timeout`` in milliseconds.
        args: extra server arguments for the data nodes.
        startup_timeout: seconds the whole set-up may take to become ready.

    Raises:
        RedisServerError: no binary, a process did not start, or the set-up did not become
            ready in time (the message says what was still missing).
    """

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        *,
        service_name: str = "mymaster",
        binary: str | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        sentinel_password: str | None = None,
        quorum: int | None = None,
        down_after: int = 2000,
        failover_timeout: int = 6000,
        args: Sequence[str] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        if replicas < 1:
            raise ValueError(
                f"replicas must be at least 1 (something to fail over to), not {replicas}"
            )
        if sentinels < 1:
            raise ValueError(f"sentinels must be at least 1, not {sentinels}")
        quorum = sentinels // 2 + 1 if quorum is None else quorum
        if not 1 <= quorum <= sentinels:
            raise ValueError(f"quorum must be between 1 and sentinels ({sentinels}), not {quorum}")
        self.binary = binary or find_redis_server()
        self.host = host
        self.service_name = service_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.quorum = quorum
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.startup_timeout = startup_timeout
        self._replica_count = replicas
        self._sentinel_count = sentinels
        self._args = tuple(args)
        self.servers: list[RedisServer] = []  # the data nodes; the first starts as primary
        self.sentinels: list[RedisServer] = []
        self._unready: str | None = None

    # --- facts ------------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel."""
        return [(s.host, s.port) for s in self.sentinels]

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the set-up: every sentinel, the service name,
        and the passwords (data nodes in the user info, sentinels as ``sentinel_password``)."""
        auth = f":{self.password}@" if self.password is not None else ""
        hosts = ",".join(
            f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
            for s in self.sentinels
        )
        query = (
            f"?sentinel_password={self.sentinel_password}"
            if self.sentinel_password is not None
            else ""
        )
        return f"redis+sentinel://{auth}{hosts}/{self.service_name}{query}"

    def call(self, server: RedisServer, *args: Any, timeout: float = 10.0) -> Any:
        """Send one command to ``server`` (a data node or a sentinel) on a fresh connection
        and return its reply as sent (strings as bytes); error replies are raised."""
        return server.call(*args, timeout=timeout)

    @property
    def primary(self) -> RedisServer:
        """The data node the first sentinel that answers names as primary.

        Raises:
            RedisServerError: no sentinel answers, or the one that does names an address
                that is none of the data nodes.
        """
        errors = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                return self._named_primary(sentinel)
            except (OSError, ConnectionError) as exc:
                errors.append(f"{sentinel!r}: {exc!r}")
        raise RedisServerError(f"no sentinel named a primary ({'; '.join(errors) or 'none runs'})")

    @property
    def replicas(self) -> list[RedisServer]:
        """The running data nodes other than :attr:`primary`."""
        primary = self.primary
        return [s for s in self.servers if s is not primary and s.running]

    def _named_primary(self, sentinel: RedisServer) -> RedisServer:
        reply = self.call(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        if not reply:
            raise RedisServerError(f"{sentinel!r} does not know {self.service_name!r}")
        host, port = _text(reply[0]), int(reply[1])
        for server in self.servers:
            if server.port == port:
                return server
        raise RedisServerError(f"{sentinel!r} names {host}:{port}, which is no data node here")

    def role(self, server: RedisServer) -> str:
        """``master``, ``slave`` or ``sentinel``: the first element of ``ROLE``."""
        return _text(self.call(server, "ROLE")[0])

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> RedisSentinel:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start every process and wait until the set-up is ready (see the class)."""
        if self.servers:
            raise RedisServerError("the set-up is already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _data_args(self) -> tuple[str, ...]:
        auth = ("--masterauth", self.password) if self.password is not None else ()
        # Valkey's diskless sync waits 5 s for more replicas by default: a fresh or restarted
        # replica would stay unsynced (and not promotable) that long.
        return ("--repl-diskless-sync-delay", "0", *auth, *self._args)

    def _start(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        primary = self._start_server(RedisServer(*self._data_args(), **self._server_options()))
        for _ in range(self._replica_count):
            replica = RedisServer(
                *self._data_args(), "--replicaof", primary.host, str(primary.port),
                **self._server_options(),
            )  # fmt: skip
            self._start_server(replica)
        self._wait(deadline, "the replicas to sync", lambda: self._replicas_linked(primary))
        for _ in range(self._sentinel_count):
            sentinel = RedisServer(
                "--sentinel",
                binary=self.binary,
                host=self.host,
                password=self.sentinel_password,
                config=self._sentinel_config(primary),
            )
            sentinel.start()
            self.sentinels.append(sentinel)
        self.wait_ready(timeout=max(1.0, deadline - time.monotonic()))

    def _server_options(self) -> dict[str, Any]:
        return {"binary": self.binary, "host": self.host, "password": self.password}

    def _start_server(self, server: RedisServer) -> RedisServer:
        server.start()
        self.servers.append(server)
        return server

    def _sentinel_config(self, primary: RedisServer) -> str:
        name = self.service_name
        lines = [
            f"sentinel monitor {name} {primary.host} {primary.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after}",
            f"sentinel failover-timeout {name} {self.failover_timeout}",
            f"sentinel parallel-syncs {name} 1",
        ]
        # Known at once, instead of after the sentinel's next INFO (up to 10 s).
        lines += [
            f"sentinel known-replica {name} {r.host} {r.port}"
            for r in self.servers
            if r is not primary
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {name} {self.password}")
        if self.sentinel_password is not None:
            lines.append(f"requirepass {self.sentinel_password}")
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        """Stop every process (the sentinels first: no failover while the rest stops) and
        delete their directories."""
        for server in (*self.sentinels, *self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.sentinels.clear()
        self.servers.clear()

    # --- readiness --------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every running sentinel names the same primary (which says ``ROLE``
        master), knows every running data node but it as a replica with its link up (and the
        data node agrees), sees every other running sentinel, and is not in TILT mode.

        Raises:
            RedisServerError: not within ``timeout`` seconds (the message says what was still
                missing).
        """
        self._wait(time.monotonic() + timeout, "the sentinels to agree", self._ready)

    def _ready(self) -> bool:
        self._unready = self._why_not_ready()
        return self._unready is None

    def _why_not_ready(self) -> str | None:
        running = [s for s in self.sentinels if s.running]
        if not running:
            return "no sentinel runs"
        named = {self._named_primary(s).port for s in running}
        if len(named) != 1:
            return f"the sentinels name different primaries (ports {sorted(named)})"
        primary = self._named_primary(running[0])
        if not primary.running or self.role(primary) != "master":
            return f"{primary!r}, named primary, is not running as one"
        replicas = [s for s in self.servers if s is not primary and s.running]
        for replica in replicas:
            role = self.call(replica, "ROLE")
            if _text(role[0]) != "slave" or int(role[2]) != primary.port:
                return f"{replica!r} does not replicate {primary!r} yet"
            if _text(role[3]) != "connected":
                return f"{replica!r}'s link to {primary!r} is {_text(role[3])}"
        for sentinel in running:
            state = _pairs(self.call(sentinel, "SENTINEL", "MASTER", self.service_name))
            if state.get("flags") != "master":
                return f"{sentinel!r} flags the primary {state.get('flags')}"
            if int(state.get("num-other-sentinels", -1)) != len(running) - 1:
                return f"{sentinel!r} sees {state.get('num-other-sentinels')} other sentinels"
            known = {
                int(r["port"]): r
                for r in map(_pairs, self.call(sentinel, "SENTINEL", "REPLICAS", self.service_name))
            }
            for replica in replicas:
                record = known.get(replica.port)
                if record is None:
                    return f"{sentinel!r} does not know {replica!r} yet"
                if record.get("flags") != "slave" or record.get("master-link-status") != "ok":
                    return (
                        f"{sentinel!r} sees {replica!r} as {record.get('flags')} with link "
                        f"{record.get('master-link-status')}"
                    )
            if _info(self.call(sentinel, "INFO", "sentinel")).get("sentinel_tilt") != "0":
                return f"{sentinel!r} is in TILT mode"
        return None

    def _replicas_linked(self, primary: RedisServer) -> bool:
        for replica in self.servers:
            if replica is not primary:
                fields = _info(self.call(replica, "INFO", "replication"))
                if fields.get("master_link_status") != "up":
                    self._unready = (
                        f"{replica!r}: master_link_status {fields.get('master_link_status')}"
                    )
                    return False
        return True

    def _wait(self, deadline: float, what: str, check: Callable[[], bool]) -> None:
        last = "no attempt"
        while time.monotonic() < deadline:
            try:
                if check():
                    return
                last = self._unready or "not yet"
            except (OSError, ConnectionError) as exc:
                last = repr(exc)
            except Exception as exc:  # an error reply while things settle (LOADING...)
                last = repr(exc)
            time.sleep(0.05)
        raise RedisServerError(f"timed out waiting for {what} (last: {last})")

    # --- faults -----------------------------------------------------------------------------

    def kill_primary(self, *, timeout: float = 60.0) -> RedisServer:
        """SIGKILL the primary and wait until every running sentinel names another data node
        that says ``ROLE`` master; return that new primary.  (The killed node stays down:
        :meth:`restart` it to bring it back, as a replica once the sentinels reconfigure it.)

        Raises:
            RedisServerError: no promotion within ``timeout`` seconds.
        """
        old = self.primary
        old.kill()
        return self._wait_promoted(old, time.monotonic() + timeout)

    def failover(self, *, coordinated: bool = False, timeout: float = 60.0) -> RedisServer:
        """``SENTINEL FAILOVER``: the sentinels promote a replica at once (no vote, no down
        primary needed) and later demote the old primary, which keeps running (it reports
        itself primary until the sentinels reconfigure it, about 8-10 s later: writes sent to
        it meanwhile are lost when it resyncs).  Waits until every running sentinel names the
        new primary and it says ``ROLE`` master; returns it.  The set-up must be ready
        (:meth:`wait_ready`): a sentinel in TILT or a replica still syncing refuses.

        ``coordinated`` (Valkey 9 only: ``SENTINEL FAILOVER ... COORDINATED``): the old
        primary hands over itself (``FAILOVER``: it pauses writes until the replica has
        caught up, then becomes its replica), so no acknowledged write is lost.

        Raises:
            RedisServerError: the sentinels refused until ``timeout`` passed, or the
                promotion did not complete in time.
        """
        deadline = time.monotonic() + timeout
        old = self.primary
        asked = next(s for s in self.sentinels if s.running)
        last = ""
        while True:
            try:
                extra = ("COORDINATED",) if coordinated else ()
                self.call(asked, "SENTINEL", "FAILOVER", self.service_name, *extra)
                break
            except Exception as exc:  # INPROG, NOGOODSLAVE: a replica's INFO is not fresh
                last = str(exc)
            if time.monotonic() >= deadline:
                raise RedisServerError(f"SENTINEL FAILOVER was refused until the deadline: {last}")
            time.sleep(0.1)
        return self._wait_promoted(old, deadline)

    def _wait_promoted(self, old: RedisServer, deadline: float) -> RedisServer:
        promoted: list[RedisServer] = []

        def done() -> bool:
            running = [s for s in self.sentinels if s.running]
            named = {self._named_primary(s).port for s in running}
            if len(named) != 1 or old.port in named:
                self._unready = f"the sentinels name ports {sorted(named)} (old: {old.port})"
                return False
            new = self._named_primary(running[0])
            if self.role(new) != "master":
                self._unready = f"{new!r} is named primary but is not one yet"
                return False
            promoted[:] = [new]
            return True

        self._wait(deadline, f"a replica of {old!r} to be promoted", done)
        return promoted[0]

    def restart(self, server: RedisServer) -> None:
        """Start ``server`` (a data node or a sentinel) again, SIGKILLing it first if it runs,
        on the same port.  A sentinel keeps its saved state; a data node comes back empty and,
        if it was the primary before a failover, is made a replica of the new primary by the
        sentinels some seconds later (:meth:`wait_ready` waits for that)."""
        server.restart()

    def __repr__(self) -> str:
        return (
            f"<RedisSentinel {self.service_name!r}: {len(self.servers)} data nodes, "
            f"{len(self.sentinels)} sentinels>"
        )
