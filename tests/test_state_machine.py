"""A Hypothesis state machine proving connection state on real servers, on asyncio and trio.

The guarantee (DESIGN.md invariant 8): a connection back in the pool's idle set is in the
configured default state -- database, protocol, reply mode on, client name, no MULTI, no WATCH,
not READONLY, no tracking, no NO-EVICT/NO-TOUCH, lib-name/lib-ver untouched, no subscriptions, no
Lua debugging.  Whatever could change that either refuses (``CommandNotAllowed``) or retires the
connection (closes it rather than returning it to idle).

Rules drive a RedisPool through everything that could leave state behind: single commands
(state-changing ones must be refused before anything is borrowed), pipelines with and without
MULTI (refused commands at queue time; executed, reset, abandoned, cancelled at a random
checkpoint or while the server blocks in BLPOP), WATCH flows (EXEC, UNWATCH, WatchError,
EXECABORT, runtime errors, reset, abandon, cancellation anywhere), ``redis.transaction()``,
``acquire()``d connections running allowed state changes (SELECT, WATCH, MULTI, HELLO, RESET,
QUIT...) and refused ones (pub/sub, MONITOR, CLIENT REPLY), scripts and locks.  Pool configs vary
per run: RESP2/RESP3, db 0/3, a client name or not, decoded replies or not.

After every step, every connection in the pool's idle set is probed directly (it is idle: no one
else uses it): PING answers (reply mode on; bounded, so replies switched off fail rather than
hang), CLIENT INFO matches the configuration (db, name, resp, watch=0, no MULTI, flags=N, no
subscriptions, lib-name/lib-ver/capa as right after the handshake), CLIENT TRACKINGINFO has the
configured protocol's shape and says "off", EVAL is not caught by the Lua debugger, and where
CLIENT INFO has no ``watch=`` (Redis 6.2) a functional WATCH probe runs.  Every connection the
machine knows it changed is closed and never idle; every open connection is idle between steps;
the statistics balance.

Runs on Valkey 9.1 (CLIENT INFO shows watch= and resp=) and on Redis 6.2 (functional probes).
``ANYPOOL_STATE_MACHINE_EXAMPLES`` / ``ANYPOOL_STATE_MACHINE_STEPS`` scale it for soak runs.

Known library bugs (KNOWN_BUGS) are reproduced deterministically by the strict-xfail tests at the
end.  The rules that trigger them (e.g. CLIENT SETNAME on an acquire()d connection) are drawn
only when ``ANYPOOL_STATE_MACHINE_BUGS`` names them (``all``, or comma-separated ids); the
invariants are the same either way.  Once a bug is fixed, its xfail test passes (and so fails,
strictly): delete the id from KNOWN_BUGS; its rules are then always drawn and its repro
becomes a plain regression test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from redis.exceptions import AuthenticationError, ResponseError, WatchError

import anypool
from anypool import CommandNotAllowed, InvalidArgument, RedisConfig, RedisPool
from anypool._connection import Connection, ConnectionFactory
from anypool.testing import RedisServer, RedisServerError, find_valkey_server

from .backends import backend_params, cancel_after, start_portal

# --- knobs ------------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("ANYPOOL_STATE_MACHINE_EXAMPLES", "0"))
STEPS = int(os.environ.get("ANYPOOL_STATE_MACHINE_STEPS", "0"))
HANG = 30.0  # bounds that only catch hangs (never a timing assumption)
PROBE_TIMEOUT = 10.0  # a probe on a connection whose replies are off fails instead of hanging

KNOWN_BUGS: dict[str, str] = {}  # every bug this machine found is fixed (see its repro tests)
_wanted = os.environ.get("ANYPOOL_STATE_MACHINE_BUGS", "")
ENABLED_BUGS = set(KNOWN_BUGS) if _wanted == "all" else {b for b in _wanted.split(",") if b}
if ENABLED_BUGS - set(KNOWN_BUGS):
    raise ValueError(f"ANYPOOL_STATE_MACHINE_BUGS: unknown ids {ENABLED_BUGS - set(KNOWN_BUGS)}")


def drawn(bug: str | None) -> bool:
    """Whether rules may trigger ``bug``: not a known open bug, or asked for."""
    return bug is None or bug not in KNOWN_BUGS or bug in ENABLED_BUGS


# --- the model: keys, commands, scripts -------------------------------------------------------

KEYS = ("sm:a", "sm:b", "sm:c")  # the data (any type: WRONGTYPE errors are runtime errors)
NEVER = "sm:never"  # nothing is ever pushed here: BLPOP on it blocks until cancelled
LOCK = "sm:lock"


@dataclass(frozen=True, eq=False)
class Op:
    """One command: raw arguments for ``execute_command``, or a redis-py method and its args."""

    label: str
    args: tuple[Any, ...]
    method: str | None = None
    bug: str | None = None  # the known bug this op triggers (only drawn when enabled)

    def __repr__(self) -> str:
        return self.label

    def run(self, target: Any) -> Any:
        if self.method is not None:
            return getattr(target, self.method)(*self.args)
        return target.execute_command(*self.args)


def _cmd(*args: Any, bug: str | None = None) -> Op:
    return Op(" ".join(_label(a) for a in args), args, bug=bug)


def _call(method: str, *args: Any, bug: str | None = None) -> Op:
    return Op(f"{method}{args!r}", args, method=method, bug=bug)


def _label(arg: Any) -> str:
    if isinstance(arg, memoryview):
        return f"memoryview({bytes(arg)!r})"
    if isinstance(arg, bytes):
        return repr(arg)
    return str(arg)


def _enabled(ops: list[Op]) -> list[Op]:
    return [op for op in ops if drawn(op.bug)]


SELECT_INSIDE = "redis.call('SELECT', 5) return redis.call('SET', KEYS[1], 'in-db-5')"

# Ordinary commands: no connection state.  Some fail on the server (WRONGTYPE, arity, unknown).
PLAIN_OPS = [
    *(_cmd("GET", k) for k in KEYS),
    *(_cmd("SET", k, "v") for k in KEYS),
    _cmd("INCR", KEYS[0]),
    _cmd("LPUSH", KEYS[1], "x"),
    _cmd("HSET", KEYS[2], "f", "v"),
    _cmd("DEL", *KEYS),
    _cmd("EXISTS", *KEYS),
    _cmd("TYPE", KEYS[0]),
    _cmd("PING"),
    _cmd("ECHO", "hi"),
    _cmd("CLIENT", "GETNAME"),
    _cmd("CLIENT", "ID"),
    _cmd("CLIENT", "INFO"),
    _cmd("EVAL", SELECT_INSIDE, 1, KEYS[2]),  # a script's SELECT stays inside the script
    _cmd("EVAL", "redis.setresp(3) return redis.call('PING')", 0),
    _cmd("NOSUCHCMD"),  # unknown: an error while queueing in MULTI (EXECABORT)
    _cmd("GET"),  # wrong arity: likewise
    _call("get", KEYS[0]),
    _call("set", KEYS[1], 7),
    _call("incr", KEYS[2]),
    _call("exists", *KEYS),
]

# State-changing commands: refused on the pool and in pipelines, before anything is borrowed.
REFUSED_OPS = _enabled(
    [
        _cmd("SELECT", 3),
        _cmd(b"select", 5),
        _cmd("AUTH", "nobody"),
        _cmd("HELLO", 2),
        _cmd("HELLO", 3, "SETNAME", "evil"),
        _cmd("CLIENT", "SETNAME", "evil"),
        _cmd("CLIENT SETNAME", "evil"),
        _cmd(b"client", b"setname", b"evil"),
        _cmd("CLIENT", "REPLY", "OFF"),
        _cmd("CLIENT", "REPLY", "SKIP"),
        _cmd("CLIENT", "TRACKING", "ON"),
        _cmd("CLIENT", "TRACKING", "ON", "BCAST"),
        _cmd("CLIENT", "CACHING", "YES"),
        _cmd("CLIENT", "NO-EVICT", "ON"),
        _cmd("CLIENT", "NO-TOUCH", "ON"),
        _cmd("CLIENT", "SETINFO", "LIB-NAME", "evil"),
        _cmd("CLIENT", "SETINFO", "LIB-VER", "6.6.6"),
        _cmd("READONLY"),
        _cmd("READWRITE"),
        _cmd("RESET"),
        _cmd("MONITOR"),
        _cmd("QUIT"),
        _cmd("WATCH", KEYS[0]),
        _cmd("UNWATCH"),
        _cmd("MULTI"),
        _cmd("EXEC"),
        _cmd("DISCARD"),
        _cmd("SUBSCRIBE", "sm:channel"),
        _cmd("PSUBSCRIBE", "sm:*"),
        _cmd("SSUBSCRIBE", "sm:channel"),
        _cmd("UNSUBSCRIBE"),
        _cmd("PUNSUBSCRIBE"),
        _cmd("SUNSUBSCRIBE"),
        _call("select", 3),
        _call("client_setname", "evil"),
        _call("client_tracking_on"),
        _call("readonly"),
        _call("client_no_evict", "ON"),
        _call("client_no_touch", "ON"),
        _call("client_setinfo", "LIB-NAME", "evil"),
        _call("client_reply", "OFF"),
        _call("reset"),
        _call("auth", "nobody"),
        # known bugs: these change state and are not refused
        _cmd("SCRIPT", "DEBUG", "YES", bug="script-debug"),
        _cmd(memoryview(b"SELECT"), 5, bug="memoryview-name"),
        _cmd("CLIENT", memoryview(b"SETNAME"), "evil", bug="memoryview-name"),
        _cmd("CLIENT", "CAPA", "redirect", bug="valkey-client-state"),
        _cmd("CLIENT", "IMPORT-SOURCE", "ON", bug="valkey-client-state"),
    ]
)

# On an acquire()d connection: ordinary commands (the connection must be reused) ...
ACQUIRE_PLAIN = [
    *(_cmd("GET", k) for k in KEYS),
    _cmd("SET", KEYS[0], "v"),
    _cmd("INCR", KEYS[1]),
    _cmd("EXISTS", *KEYS),
    _cmd("PING"),
    _cmd("CLIENT", "GETNAME"),
    _cmd("CLIENT", "INFO"),
    _cmd("EVAL", SELECT_INSIDE, 1, KEYS[2]),
    _cmd("UNWATCH"),  # no WATCH: nothing to undo
    _cmd("EXEC"),  # without MULTI: an error
    _cmd("DISCARD"),  # likewise
    _cmd("NOSUCHCMD"),
]
# ... allowed state changes (the connection must be closed on return) ...
QUIT = _cmd("QUIT")
ACQUIRE_CHANGERS = _enabled(
    [
        _cmd("SELECT", 5),
        _cmd("CLIENT", "SETNAME", "changed", bug="acquire-client"),
        _cmd("WATCH", KEYS[0], KEYS[1]),
        _cmd("MULTI"),
        _cmd("READONLY"),  # an error without cluster mode: the state is unchanged
        _cmd("CLIENT", "TRACKING", "ON", bug="acquire-client"),
        _cmd("CLIENT", "TRACKING", "ON", "BCAST", bug="acquire-client"),
        _cmd("CLIENT", "CACHING", "YES"),  # an error unless tracking is OPTIN
        _cmd("HELLO", 2),
        _cmd("HELLO", 3),
        _cmd("HELLO", 3, "SETNAME", "hello"),
        _cmd("CLIENT", "NO-EVICT", "ON", bug="acquire-client"),
        _cmd("CLIENT", "NO-TOUCH", "ON", bug="acquire-client"),
        _cmd("CLIENT", "SETINFO", "LIB-NAME", "machine-lib", bug="acquire-client"),
        _cmd("CLIENT", "SETINFO", "LIB-VER", "1.2.3", bug="acquire-client"),
        _cmd("RESET"),
        _cmd("AUTH", "nobody"),  # an error: no password is set
        QUIT,
        _call("select", 5),
        _call("client_setname", "changed", bug="acquire-client"),
        _call("client_tracking_on", bug="acquire-client"),
        _call("client_no_evict", "ON", bug="acquire-client"),
        _cmd(memoryview(b"SELECT"), 5, bug="memoryview-name"),
        _cmd("CLIENT", "CAPA", "redirect", bug="valkey-client-state"),
        _cmd("CLIENT", "IMPORT-SOURCE", "ON", bug="valkey-client-state"),
    ]
)
# ... and refused ones (nothing is sent; the connection stays as it was).
ACQUIRE_REFUSED = [
    _cmd("SUBSCRIBE", "sm:channel"),
    _cmd("PSUBSCRIBE", "sm:*"),
    _cmd("SSUBSCRIBE", "sm:channel"),
    _cmd("UNSUBSCRIBE"),
    _cmd("PUNSUBSCRIBE"),
    _cmd("SUNSUBSCRIBE"),
    _cmd("MONITOR"),
    _cmd("CLIENT", "REPLY", "OFF"),
    _cmd("CLIENT", "REPLY", "SKIP"),
    _cmd("CLIENT", "REPLY", "ON"),
    _call("client_reply", "OFF"),
    _cmd("SCRIPT", "DEBUG", "YES"),  # a debugging session breaks request/response
    _cmd("SCRIPT", "DEBUG", "SYNC"),
    _cmd("SYNC"),
    _cmd("PSYNC", "?", -1),
]

SCRIPTS = {
    "one": "return 1",
    "select-inside": SELECT_INSIDE,
    "setresp": "redis.setresp(3) return redis.call('PING')",
    "error-reply": "return redis.error_reply('machine error')",
    "runtime-error": "return redis.call('INCR', KEYS[1], 'extra')",
}
BAD_SCRIPT = "this is not lua"

PIPE_ITEMS = st.one_of(
    st.tuples(st.just("plain"), st.sampled_from(PLAIN_OPS)),
    # (Pipeline.reset() is the pipeline's own method, not RESET)
    st.tuples(
        st.just("refused"), st.sampled_from([op for op in REFUSED_OPS if op.method != "reset"])
    ),
    st.tuples(st.just("script"), st.sampled_from(sorted(SCRIPTS))),
    st.tuples(st.just("bad-argument"), st.none()),
)
ACQUIRE_ITEMS = st.one_of(
    st.tuples(st.just("plain"), st.sampled_from(ACQUIRE_PLAIN)),
    st.tuples(st.just("changer"), st.sampled_from(ACQUIRE_CHANGERS)),
    st.tuples(st.just("refused"), st.sampled_from(ACQUIRE_REFUSED)),
)
WATCH_ENDINGS = [
    "multi-exec",
    "exec-without-multi",
    "exec-abort",
    "runtime-error",
    "unwatch",
    "reset",
    "leave",
    "cancel-between",
    "cancel-blocked-read",
]
if drawn("watch-leak"):
    WATCH_ENDINGS += ["bad-argument", "bad-script"]


class Boom(Exception):
    """Raised by the machine's own code inside a block, to leave it by an exception."""


# --- helpers ----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def client_info(raw: Any) -> dict[str, str]:
    """CLIENT INFO's ``k=v`` fields (empty if the reply is something else, e.g. QUEUED)."""
    fields = {}
    for part in _text(raw).split():
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return fields if "id" in fields else {}


class RecordingFactory(ConnectionFactory):
    """The pool's real factory, remembering every connection and its CLIENT INFO right after
    the handshake (the baseline for lib-name, lib-ver and capa)."""

    def __init__(self, config: RedisConfig) -> None:
        super().__init__(config)
        self.created: list[Connection] = []
        self.baseline: dict[int, dict[str, str]] = {}

    async def create(self) -> Connection:
        connection = await super().create()
        try:
            info = client_info(await connection.execute("CLIENT", "INFO"))
        except BaseException:
            await connection.aclose()
            raise
        self.created.append(connection)
        self.baseline[id(connection)] = info
        return connection


# --- the machine ------------------------------------------------------------------------------


class ConnectionStateMachine(RuleBasedStateMachine):
    backend = "asyncio"
    server: RedisServer
    server_kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        self._exit = contextlib.ExitStack()
        self.portal = self._exit.enter_context(start_portal(self.backend))
        self.redis: RedisPool | None = None
        # connections the machine knows it left changed: each must be closed, never idle
        self.tainted: dict[int, tuple[Connection, str]] = {}

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.portal.call(fn, *args)

    @property
    def pool(self) -> Any:
        assert self.redis is not None
        return self.redis.pool

    @initialize(
        protocol=st.sampled_from([None, 3, 2]),  # None: the installed redis-py's default
        db=st.sampled_from([0, 3]),
        client_name=st.sampled_from([None, "machine"]),
        decode=st.booleans(),
    )
    def open_pool(
        self, protocol: int | None, db: int, client_name: str | None, decode: bool
    ) -> None:
        self.config = RedisConfig.from_url(
            self.server.url,
            protocol=protocol,
            db=db,
            client_name=client_name,
            decode_responses=decode,
            socket_timeout=HANG,
            connect_timeout=HANG,
        )
        admin_config = self.config.replace(
            client_name="sm-admin", protocol=3, decode_responses=False
        )
        self.admin: Connection = self.call(Connection.connect, admin_config)
        self._exit.callback(self.call, self.admin.aclose)
        self.call(self.admin_exec, "FLUSHALL")
        self.call(self.admin_exec, "SCRIPT", "FLUSH")
        if drawn("valkey-client-state") and self.server_kind == "valkey":
            self.call(self.admin_exec, "CONFIG", "SET", "import-mode", "yes")
        redis = RedisPool(
            self.config,
            max_size=3,
            health_check_interval=None,  # nothing but the rules touches an idle connection
            max_idle=None,
            max_lifetime=None,
            timeout=HANG,
            close_timeout=HANG,
        )
        self.factory = RecordingFactory(self.config)
        redis._factory = redis._pool._factory = self.factory
        self._exit.enter_context(self.portal.wrap_async_context_manager(redis))
        self.redis = redis
        self.scripts = {name: redis.register_script(source) for name, source in SCRIPTS.items()}
        self.bad_script = redis.register_script(BAD_SCRIPT)

    # --- helpers ------------------------------------------------------------------------------

    async def admin_exec(self, *args: Any) -> Any:
        """A command on the machine's own connection, shielded: a rule's cancellation must not
        cut it (a cut exchange would close it)."""
        with anyio.CancelScope(shield=True):
            return await self.admin.execute(*args, timeout=HANG)

    async def blocked_in_blpop(self) -> bool:
        listing = _text(await self.admin_exec("CLIENT", "LIST"))
        for line in listing.splitlines():
            info = client_info(line)
            if info.get("cmd") == "blpop" and "b" in info.get("flags", ""):
                return True
        return False

    async def wait_blocked(self, blocked: bool) -> None:
        """Wait until the server shows (or no longer shows) a client blocked in BLPOP."""
        with anyio.fail_after(HANG):
            while await self.blocked_in_blpop() != blocked:
                await anyio.sleep(0.002)

    async def cancel_once_blocked(self, blocking: Callable[[], Awaitable[Any]]) -> Connection:
        """Run ``blocking`` (it ends up in BLPOP on the server) in a task, cancel it once the
        server shows it blocked, and return the connection it was blocked on: the one leased
        connection, which must be closed (its reply is owed); the server must drop the
        blocked client."""
        scope = anyio.CancelScope()
        async with anyio.create_task_group() as group:

            async def task() -> None:
                with scope:
                    await blocking()
                    raise AssertionError("BLPOP on a list nobody pushes to returned")

            group.start_soon(task)
            await self.wait_blocked(True)
            self.pool.reclaim_parked()  # a shared connection kept between commands
            leased = [lease.resource for lease in self.pool._leased]
            scope.cancel()
        assert len(leased) == 1, leased
        assert leased[0].closed, "a cancelled BLPOP left its connection open"
        await self.wait_blocked(False)
        return leased[0]

    def closed_count(self) -> int:
        return self.call(lambda: sum(c.closed for c in self.factory.created))

    def is_idle(self, connection: Connection) -> bool:
        return self.call(lambda: any(e.resource is connection for e in self.pool._idle))

    def taint(self, connection: Connection, why: str) -> None:
        self.tainted[id(connection)] = (connection, why)

    def assert_reused(self, connection: Connection, what: str) -> None:
        assert not connection.closed, f"{what}: its connection was closed, not reused"
        assert self.is_idle(connection), f"{what}: its connection is not back in the idle set"

    # --- rules: single commands on the pool ---------------------------------------------------

    @rule(op=st.sampled_from(PLAIN_OPS))
    def pool_command(self, op: Op) -> None:
        closed = self.closed_count()

        async def body() -> None:
            with contextlib.suppress(ResponseError):
                await op.run(self.redis)

        self.call(body)
        assert self.closed_count() == closed, f"{op!r} on the pool closed a connection"

    @rule(op=st.sampled_from(REFUSED_OPS))
    def refused_on_pool(self, op: Op) -> None:
        assert self.redis is not None
        before = self.redis.statistics()

        async def body() -> bool:
            try:
                await op.run(self.redis)
            except CommandNotAllowed:
                return True
            except ResponseError:
                pass
            return False

        if self.call(body):
            after = self.redis.statistics()
            assert after.requests_num == before.requests_num, f"{op!r} borrowed a connection"
            assert after.connections_num == before.connections_num
        else:  # a known bug: the invariant must find what it changed
            assert op.bug in KNOWN_BUGS, f"{op!r} was not refused on the pool"

    @rule(op=st.sampled_from(PLAIN_OPS), checkpoints=st.integers(0, 40))
    def pool_command_cancelled(self, op: Op, checkpoints: int) -> None:
        async def body() -> None:
            with contextlib.suppress(ResponseError):
                await op.run(self.redis)

        self.call(cancel_after, checkpoints, body)

    @rule()
    def pool_blpop_cancelled_while_blocked(self) -> None:
        assert self.redis is not None
        redis = self.redis

        async def body() -> None:
            await self.cancel_once_blocked(lambda: redis.blpop([NEVER], 0))

        self.call(body)

    # --- rules: pipelines ---------------------------------------------------------------------

    @rule(
        transaction=st.booleans(),
        explicit_multi=st.booleans(),
        items=st.lists(PIPE_ITEMS, max_size=6),
        ending=st.sampled_from(
            ["execute", "execute-errors-in-place", "reset", "leave", "cancel", "cancel-blocked"]
        ),
        checkpoints=st.integers(0, 100),
    )
    def pipeline(
        self,
        transaction: bool,
        explicit_multi: bool,
        items: list[tuple[str, Any]],
        ending: str,
        checkpoints: int,
    ) -> None:
        assert self.redis is not None
        redis = self.redis
        bad_argument = any(kind == "bad-argument" for kind, _ in items)
        if ending == "cancel-blocked" and (transaction or explicit_multi or bad_argument):
            ending = "execute"  # BLPOP only blocks outside MULTI, and only if it is sent
        closed = self.closed_count()

        async def run_items(pipe: Any) -> None:
            if explicit_multi:
                pipe.multi()
            for kind, item in items:
                queued = len(pipe)
                if kind == "refused":
                    try:
                        item.run(pipe)
                    except CommandNotAllowed:
                        assert len(pipe) == queued
                    else:
                        assert item.bug in KNOWN_BUGS, f"{item!r} was queued in a pipeline"
                elif kind == "script":
                    await self.scripts[item](keys=[KEYS[0]], args=[], client=pipe)
                elif kind == "bad-argument":
                    pipe.set(KEYS[0], None)  # packed (and refused) only when sent
                else:
                    item.run(pipe)
                    assert len(pipe) == queued + 1

        async def execute(pipe: Any, raise_on_error: bool = True) -> None:
            try:
                await pipe.execute(raise_on_error=raise_on_error)
            except InvalidArgument:
                assert bad_argument
            except ResponseError:
                pass
            else:
                assert not bad_argument

        async def body() -> None:
            async with redis.pipeline(transaction=transaction) as pipe:
                await run_items(pipe)
                if ending in ("execute", "cancel"):
                    await execute(pipe)
                elif ending == "execute-errors-in-place":
                    await execute(pipe, raise_on_error=False)
                elif ending == "reset":
                    await pipe.reset()
                elif ending == "cancel-blocked":
                    pipe.blpop([NEVER], 0)
                    await self.cancel_once_blocked(pipe.execute)

        if ending == "cancel":
            completed = self.call(cancel_after, checkpoints, body)
            event(f"pipeline cancelled: {'no' if completed else 'yes'}")
        else:
            self.call(body)
            if ending != "cancel-blocked":
                assert self.closed_count() == closed, "a pipeline closed a connection"

    # --- rules: WATCH flows -------------------------------------------------------------------

    @rule(
        transaction=st.booleans(),
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
        reads=st.lists(st.sampled_from(["type", "exists", "get"]), max_size=3),
        interfere=st.sampled_from([None, "pool", "admin"]),
        ending=st.sampled_from(WATCH_ENDINGS),
        checkpoints=st.none() | st.integers(0, 300),
    )
    def watch_flow(
        self,
        transaction: bool,
        keys: list[str],
        reads: list[str],
        interfere: str | None,
        ending: str,
        checkpoints: int | None,
    ) -> None:
        """WATCH, immediate reads, maybe another client's write, then an ending; with
        ``checkpoints``, the whole flow is cancelled after that many scheduling passes."""
        assert self.redis is not None
        redis = self.redis
        state: dict[str, Any] = {}

        async def finish(pipe: Any, *, watch_error: bool, response_error: bool = False) -> None:
            try:
                await pipe.execute()
            except WatchError:
                state["watch_error"] = True
                state["clean"] = True  # EXEC answered nil: the WATCH is over
                assert watch_error, "WatchError, but no watched key was modified"
            except ResponseError:
                state["clean"] = True  # EXEC (or UNWATCH) reached the server
                assert response_error and not watch_error
            else:
                state["clean"] = True
                assert not watch_error, "a watched key was modified, yet EXEC ran"
                assert not response_error

        async def body() -> None:
            with anyio.CancelScope() as outer:
                async with redis.pipeline(transaction=transaction) as pipe:
                    await pipe.watch(*keys)
                    state["connection"] = pipe._lease.resource
                    for read in reads:
                        with contextlib.suppress(ResponseError):
                            await getattr(pipe, read)(keys[-1])  # immediate while WATCHing
                    if interfere == "pool":
                        await redis.set(keys[0], "interfered")  # another pooled connection
                    elif interfere == "admin":
                        await self.admin_exec("SET", keys[0], "interfered")
                    modified = interfere is not None
                    if ending == "multi-exec":
                        pipe.multi()
                        for key in keys:
                            pipe.set(key, "written")
                        await finish(pipe, watch_error=modified)
                    elif ending == "exec-without-multi":
                        # MULTI/EXEC with nothing queued; without a transaction, UNWATCH
                        await finish(pipe, watch_error=modified and transaction)
                    elif ending == "exec-abort":
                        pipe.multi()
                        pipe.set(keys[0], "never")
                        pipe.execute_command("NOSUCHCMD")  # EXECABORT beats a modified key
                        await finish(pipe, watch_error=False, response_error=True)
                    elif ending == "runtime-error":
                        pipe.multi()
                        pipe.hset(keys[0], "f", "v")
                        pipe.incr(keys[0])  # WRONGTYPE when EXEC runs
                        await finish(pipe, watch_error=modified, response_error=not modified)
                    elif ending == "unwatch":
                        await pipe.unwatch()
                        state["clean"] = True
                    elif ending == "reset":
                        await pipe.reset()
                    elif ending == "cancel-between":
                        outer.cancel()
                        await anyio.lowlevel.checkpoint()
                        raise AssertionError("not cancelled")
                    elif ending == "cancel-blocked-read":
                        connection = await self.cancel_once_blocked(lambda: pipe.blpop([NEVER], 0))
                        assert connection is state["connection"]
                    elif ending == "bad-argument":
                        pipe.multi()
                        pipe.set(keys[0], None)
                        with pytest.raises(InvalidArgument):
                            await pipe.execute()
                    elif ending == "bad-script":
                        pipe.multi()
                        await self.bad_script(keys=[keys[0]], client=pipe)
                        with pytest.raises(ResponseError):
                            await pipe.execute()
                    # "leave": leave the block still WATCHing

        if checkpoints is None:
            self.call(body)
        else:
            completed = self.call(cancel_after, checkpoints, body)
            event(f"watch flow: cancelled {not completed}")
        connection = state.get("connection")
        event(f"watch flow: {ending}, {'clean' if state.get('clean') else 'left WATCHing'}")
        event(f"watch flow: WatchError {state.get('watch_error', False)}")
        if connection is None:
            return  # cancelled before WATCH returned: the invariants judge
        if state.get("clean"):
            self.assert_reused(connection, f"a WATCH flow ended by {ending}")
        else:
            self.taint(connection, f"WATCH left by {ending}")

    # --- rules: the transaction helper --------------------------------------------------------

    @rule(
        keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True),
        interfere=st.booleans(),
        failure=st.sampled_from([None, "raise", "exec-abort", "runtime-error"]),
        value_from_callable=st.booleans(),
        checkpoints=st.none() | st.integers(0, 300),
    )
    def transaction_helper(
        self,
        keys: list[str],
        interfere: bool,
        failure: str | None,
        value_from_callable: bool,
        checkpoints: int | None,
    ) -> None:
        assert self.redis is not None
        redis = self.redis
        attempts: list[Connection] = []
        outcome: dict[str, Any] = {}

        async def func(pipe: Any) -> int:
            attempts.append(pipe._lease.resource)
            for key in keys:
                await pipe.exists(key)
            if interfere and len(attempts) == 1:
                await redis.set(keys[0], "interfered")  # once: the retry succeeds
            if failure == "raise":
                raise Boom
            pipe.multi()
            for key in keys:
                pipe.set(key, "tx")
            if failure == "exec-abort":
                pipe.execute_command("NOSUCHCMD")
            elif failure == "runtime-error":
                pipe.hset(keys[0], "f", "v")
                pipe.incr(keys[0])
            return len(attempts)

        async def body() -> None:
            try:
                result = await redis.transaction(
                    func, *keys, value_from_callable=value_from_callable
                )
            except Boom:
                outcome["raised"] = "boom"
            except ResponseError:
                outcome["raised"] = "response"
            else:
                outcome["result"] = result

        if checkpoints is not None:
            self.call(cancel_after, checkpoints, body)
            return  # cancelled somewhere: the invariants judge
        self.call(body)
        if failure == "raise":
            assert outcome == {"raised": "boom"} and len(attempts) == 1
            self.taint(attempts[0], "transaction function raised while WATCHing")
            return
        if failure == "exec-abort":
            assert outcome == {"raised": "response"} and len(attempts) == 1
        elif failure == "runtime-error":
            assert outcome == {"raised": "response"}
            assert len(attempts) == 1 + interfere
        else:
            assert len(attempts) == 1 + interfere
            expected = len(attempts) if value_from_callable else [True] * len(keys)
            assert outcome == {"result": expected}
        for connection in attempts:
            self.assert_reused(connection, "redis.transaction()")

    # --- rules: exclusive connections ---------------------------------------------------------

    @rule(
        items=st.lists(ACQUIRE_ITEMS, max_size=6),
        ending=st.sampled_from(["exit", "raise", "cancel", "cancel-blocked"]),
        checkpoints=st.integers(0, 150),
        stale=st.booleans() if drawn("stale-handle") else st.just(False),
    )
    def acquire(
        self, items: list[tuple[str, Op]], ending: str, checkpoints: int, stale: bool
    ) -> None:
        assert self.redis is not None
        redis = self.redis
        state: dict[str, Any] = {"attempted": False, "multi": False, "quit": False}

        async def body() -> None:
            async with redis.acquire() as conn:
                state["view"] = conn
                connection = state["connection"] = conn.connection
                for kind, op in items:
                    if state["quit"]:
                        break
                    if kind == "refused":
                        with pytest.raises(CommandNotAllowed):
                            await op.run(conn)
                        assert not connection.replies_owed and not connection.closed
                        continue
                    if kind == "changer":
                        state["attempted"] = True
                    try:
                        await op.run(conn)
                    except (ResponseError, AuthenticationError):
                        continue  # refused by the server: nothing changed
                    if kind == "changer":
                        self.taint(connection, f"acquire() ran {op!r}")
                    name = "" if op.method else _text(op.args[0]).upper()
                    if name == "MULTI":
                        state["multi"] = True
                    elif name in ("EXEC", "DISCARD", "RESET"):
                        state["multi"] = False
                    state["quit"] = op is QUIT
                if ending == "raise":
                    raise Boom
                if ending == "cancel-blocked" and not state["multi"] and not state["quit"]:
                    blocked = await self.cancel_once_blocked(lambda: conn.blpop([NEVER], 0))
                    assert blocked is connection
                    state["cancelled"] = True

        async def guarded() -> None:
            with contextlib.suppress(Boom):
                await body()

        if ending == "cancel":
            self.call(cancel_after, checkpoints, guarded)
            return
        self.call(guarded)
        connection = state["connection"]
        event(f"acquire: {'closed' if connection.closed else 'reused'}")
        if id(connection) in self.tainted or state.get("cancelled"):
            assert connection.closed, "a changed acquire()d connection was not closed"
        elif not state["attempted"]:
            self.assert_reused(connection, "acquire() with ordinary commands")
        if stale:  # known bug "stale-handle": the view outlives its lease

            async def use_stale_view() -> None:
                with contextlib.suppress(Exception):
                    await state["view"].execute_command("CLIENT", "SETNAME", "stale")

            self.call(use_stale_view)

    # --- rules: scripts and locks -------------------------------------------------------------

    @rule(
        name=st.sampled_from(sorted(SCRIPTS)),
        where=st.sampled_from(["pool", "pipeline", "transaction", "acquire"]),
    )
    def script(self, name: str, where: str) -> None:
        assert self.redis is not None
        redis = self.redis
        script = self.scripts[name]
        closed = self.closed_count()
        used: list[Connection] = []

        async def body() -> None:
            with contextlib.suppress(ResponseError):
                if where == "pool":
                    await script(keys=[KEYS[1]])
                elif where == "acquire":
                    async with redis.acquire() as conn:
                        used.append(conn.connection)
                        await script(keys=[KEYS[1]], client=conn)
                else:
                    async with redis.pipeline(transaction=where == "transaction") as pipe:
                        await script(keys=[KEYS[1]], client=pipe)
                        await pipe.execute()

        self.call(body)
        assert self.closed_count() == closed, f"a script ({where}) closed a connection"
        for connection in used:
            self.assert_reused(connection, "a script on an acquire()d connection")

    @rule()
    def flush_scripts(self) -> None:
        """Next EVALSHA gets NOSCRIPT: scripts and locks load them again."""
        self.call(self.admin_exec, "SCRIPT", "FLUSH")

    @rule(contend=st.booleans(), blocking=st.booleans(), extend=st.booleans())
    def lock(self, contend: bool, blocking: bool, extend: bool) -> None:
        assert self.redis is not None
        redis = self.redis
        closed = self.closed_count()

        async def body() -> None:
            await self.admin_exec("DEL", LOCK)
            lock = redis.lock(LOCK, timeout=60, sleep=0.01, blocking_timeout=HANG)
            async with lock:
                assert await lock.owned()
                assert await lock.locked()
                if contend:  # held by us for 60 s: the contender cannot get it
                    other = redis.lock(LOCK, timeout=60, sleep=0.01)
                    assert not await other.acquire(blocking=blocking, blocking_timeout=0.03)
                if extend:
                    assert await lock.extend(5)
                    assert await lock.reacquire()
            assert not await lock.locked()

        self.call(body)
        assert self.closed_count() == closed, "a lock closed a connection"

    # --- rules: the pool's own operations -----------------------------------------------------

    @rule()
    def pool_check(self) -> None:
        """Health checks (PING) on every idle connection change nothing and close nothing."""
        closed = self.closed_count()
        self.call(self.pool.check)
        assert self.closed_count() == closed

    @rule()
    def pool_reset(self) -> None:
        self.call(self.pool.reset)
        assert not self.call(lambda: len(self.pool._idle))

    # --- the invariant ------------------------------------------------------------------------

    @invariant()
    def idle_connections_are_in_the_default_state(self) -> None:
        if self.redis is None:
            return
        problems = self.call(self.inspect)
        assert not problems, "\n".join(problems)

    async def inspect(self) -> list[str]:
        pool = self.pool
        with anyio.fail_after(HANG):  # nothing is left running between rules; wait for it
            # (a shared connection kept between commands is parked: the pool takes it back)
            while (
                pool.reclaim_parked()
                or pool._leased
                or pool._opening
                or pool._closing
                or (pool._waiter_scopes)
            ):
                await anyio.sleep(0.001)
        problems: list[str] = []
        idle = [entry.resource for entry in pool._idle]
        stats = pool.statistics()
        if (stats.in_use, stats.requests_waiting, stats.opening) != (0, 0, 0):
            problems.append(f"statistics between steps: {stats}")
        if stats.pool_size != len(idle) or stats.pool_available != len(idle):
            problems.append(f"statistics disagree with the idle set ({len(idle)}): {stats}")
        idle_ids = {id(c) for c in idle}
        for connection, why in self.tainted.values():
            if id(connection) in idle_ids:
                problems.append(f"{connection!r} is idle although changed ({why})")
            elif not connection.closed:
                problems.append(f"{connection!r} is open although changed ({why})")
        for connection in self.factory.created:
            if not connection.closed and id(connection) not in idle_ids:
                problems.append(f"{connection!r} is open but neither idle nor leased")
        for connection in idle:
            if connection.closed:
                problems.append(f"{connection!r} is idle but closed")
        watch_probe: list[Connection] = []
        for connection in idle:
            if connection.closed or id(connection) in self.tainted:
                continue  # reported above
            found, needs_watch_probe = await self.probe(connection)
            problems += found
            if needs_watch_probe and not found:
                watch_probe.append(connection)
        if watch_probe:
            problems += await self.probe_watches(watch_probe)
        return problems

    async def probe(self, connection: Connection) -> tuple[list[str], bool]:
        """Problems with one idle connection's state; whether CLIENT INFO lacked ``watch=``."""
        config = self.config
        where = f"idle {connection!r}"
        try:
            pong = await connection.execute("PING", timeout=PROBE_TIMEOUT)
        except anypool.TimeoutError:
            return [f"{where}: no reply to PING (replies switched off?)"], False
        if _text(pong) != "PONG":
            return [f"{where}: PING answered {pong!r} (in MULTI?)"], False
        raw = await connection.execute("CLIENT", "INFO", timeout=PROBE_TIMEOUT)
        info = client_info(raw)
        if not info:
            return [f"{where}: CLIENT INFO answered {raw!r}"], False
        expected = {
            "db": str(config.db),
            "name": config.client_name or "",
            "flags": "N",
            "sub": "0",
            "psub": "0",
        }
        optional = {"watch": "0", "resp": str(config.wire_protocol), "ssub": "0"}
        problems: list[str] = []
        baseline = self.factory.baseline[id(connection)]
        for field in ("lib-name", "lib-ver", "capa"):
            if field in baseline:
                expected[field] = baseline[field]
        # In MULTI, PING above answered QUEUED.  Not in MULTI, Redis 6.2 shows multi=-1;
        # Valkey 9.1 shows multi=0 once the client has used MULTI or WATCH (it keeps the
        # transaction state it allocated), so both mean "no MULTI" here.
        if info.get("multi") not in ("-1", "0"):
            problems.append(f"{where}: multi={info.get('multi')!r}")
        problems += [
            f"{where}: {field}={info.get(field)!r}, expected {value!r}"
            for field, value in expected.items()
            if info.get(field) != value
        ]
        problems += [
            f"{where}: {field}={info[field]!r}, expected {value!r}"
            for field, value in optional.items()
            if field in info and info[field] != value
        ]
        if connection.protocol != config.wire_protocol:
            problems.append(f"{where}: speaks RESP{connection.protocol}")
        # RESP version and tracking, functionally: the reply is a map only in RESP3
        tracking = await connection.execute("CLIENT", "TRACKINGINFO", timeout=PROBE_TIMEOUT)
        if isinstance(tracking, list):
            shape, tracking = 2, dict(zip(tracking[::2], tracking[1::2], strict=True))
        else:
            shape = 3 if isinstance(tracking, dict) else 0
        if shape != config.wire_protocol:
            problems.append(f"{where}: CLIENT TRACKINGINFO came back as RESP{shape}")
        tracking_flags = {_text(k): v for k, v in tracking.items()}.get("flags")
        if [_text(f) for f in tracking_flags or ()] != ["off"]:
            problems.append(f"{where}: tracking flags {tracking_flags!r}")
        # not under the Lua debugger (SCRIPT DEBUG)
        seven = await connection.execute("EVAL", "return 7", 0, timeout=PROBE_TIMEOUT)
        if seven != 7:
            problems.append(f"{where}: EVAL 'return 7' answered {seven!r}")
        return problems, "watch" not in info

    async def probe_watches(self, connections: list[Connection]) -> list[str]:
        """Without CLIENT INFO's watch= (Redis 6.2): modify every key the machine may have
        watched, then MULTI/PING/EXEC on each connection must not answer nil."""
        await self.admin_exec("MSET", *(x for key in KEYS for x in (key, "probe")))
        problems = []
        for connection in connections:
            replies = await connection.execute_many(
                [("MULTI",), ("PING",), ("EXEC",)], timeout=PROBE_TIMEOUT
            )
            if replies[2] is None:
                problems.append(f"idle {connection!r}: still WATCHing (EXEC answered nil)")
        return problems

    def teardown(self) -> None:
        try:
            self._exit.close()  # the pool, then the admin connection, then the loop
        finally:
            self._exit = contextlib.ExitStack()
        if self.redis is not None:
            assert not [c for c in self.factory.created if not c.closed]


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valkey() -> Iterator[RedisServer]:
    try:
        binary = find_valkey_server()
    except RedisServerError as exc:
        pytest.skip(str(exc))
    with RedisServer(binary=binary) as server:
        yield server


@pytest.fixture(scope="module")
def redis62() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=EXAMPLES or examples,
        stateful_step_count=STEPS or steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def _run(backend: str, server: RedisServer, kind: str, machine_settings: settings) -> None:
    class Machine(ConnectionStateMachine):
        pass

    Machine.backend = backend
    Machine.server = server
    Machine.server_kind = kind
    machine_settings(Machine).TestCase("runTest").runTest()


@pytest.mark.parametrize("backend", backend_params())
def test_connection_state_machine_valkey(backend: str, valkey: RedisServer) -> None:
    """Valkey 9.1: CLIENT INFO shows watch=, resp=, lib-name, lib-ver and capa."""
    _run(backend, valkey, "valkey", _settings(examples=80, steps=40))


@pytest.mark.parametrize("backend", backend_params())
def test_connection_state_machine_redis62(backend: str, redis62: RedisServer) -> None:
    """Redis 6.2: WATCH and the protocol are probed functionally."""
    _run(backend, redis62, "redis", _settings(examples=30, steps=40))


# --- the known bugs, reproduced deterministically (strict xfail: they pass once fixed) ---------


async def _idle_infos(redis: RedisPool) -> list[dict[str, str]]:
    """CLIENT INFO of every idle connection (each probed directly: it is idle)."""
    return [client_info(await e.resource.execute("CLIENT", "INFO")) for e in redis.pool._idle]


def _bug(name: str) -> Callable[[Any], Any]:
    """Strict xfail while ``name`` is a known open bug; a plain regression test once it is
    deleted from KNOWN_BUGS."""
    if name not in KNOWN_BUGS:
        return lambda test: test
    return pytest.mark.xfail(
        reason=f"library bug {name!r}: {KNOWN_BUGS[name]}", raises=AssertionError, strict=True
    )


def _small_pool(url: str) -> RedisPool:
    return RedisPool.from_url(url, max_size=1, health_check_interval=None, socket_timeout=HANG)


@pytest.mark.anyio
@pytest.mark.parametrize("failure", ["unpackable-argument", "script-does-not-compile"])
@_bug("watch-leak")
async def test_bug_watch_leak(valkey: RedisServer, failure: str) -> None:
    async with _small_pool(valkey.url) as redis:
        broken = redis.register_script(BAD_SCRIPT)
        async with redis.pipeline() as pipe:
            await pipe.watch("k")
            pipe.multi()
            if failure == "unpackable-argument":
                pipe.set("k", None)
            else:
                await broken(keys=["k"], client=pipe)
            with pytest.raises((InvalidArgument, ResponseError)):
                await pipe.execute()  # fails before EXEC is sent; the lease is released
        assert [info["watch"] for info in await _idle_infos(redis)] in ([], ["0"])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "command",
    [
        ("CLIENT", "SETNAME", "changed"),
        ("CLIENT", "TRACKING", "ON"),
        ("CLIENT", "NO-EVICT", "ON"),
        ("CLIENT", "SETINFO", "LIB-NAME", "changed"),
    ],
)
@_bug("acquire-client")
async def test_bug_acquire_client_subcommands(valkey: RedisServer, command: tuple[str]) -> None:
    async with _small_pool(valkey.url) as redis:
        async with redis.acquire() as conn:
            await conn.execute_command(*command)
        for info in await _idle_infos(redis):
            assert (info["name"], info["flags"], info["lib-name"]) == ("", "N", "")


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["pool", "pipeline", "acquire"])
@_bug("script-debug")
async def test_bug_script_debug(where: str) -> None:
    with RedisServer() as server:  # its own Redis 6.2: debugging sessions fork the server
        async with _small_pool(server.url) as redis:
            with contextlib.suppress(CommandNotAllowed):
                if where == "pool":
                    await redis.execute_command("SCRIPT", "DEBUG", "YES")
                elif where == "pipeline":
                    async with redis.pipeline(transaction=False) as pipe:
                        pipe.execute_command("SCRIPT", "DEBUG", "YES")
                        await pipe.execute()
                else:
                    async with redis.acquire() as conn:
                        await conn.execute_command("SCRIPT", "DEBUG", "YES")
            assert await redis.eval("return 7", 0) == 7  # the next user's script, undebugged


@pytest.mark.anyio
@pytest.mark.parametrize(
    "command", [(memoryview(b"SELECT"), 5), ("CLIENT", memoryview(b"SETNAME"), "x")]
)
@_bug("memoryview-name")
async def test_bug_memoryview_names(valkey: RedisServer, command: tuple[Any, ...]) -> None:
    async with _small_pool(valkey.url) as redis:
        with contextlib.suppress(CommandNotAllowed):
            await redis.execute_command(*command)
        for info in await _idle_infos(redis):
            assert (info["db"], info["name"]) == ("0", "")


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["pool", "acquire"])
@_bug("valkey-client-state")
async def test_bug_valkey_client_state(valkey: RedisServer, where: str) -> None:
    async with _small_pool(valkey.url) as redis:
        with contextlib.suppress(CommandNotAllowed):
            if where == "pool":
                await redis.execute_command("CLIENT", "CAPA", "redirect")
            else:
                async with redis.acquire() as conn:
                    await conn.execute_command("CLIENT", "CAPA", "redirect")
        for info in await _idle_infos(redis):
            assert info["capa"] == ""


@pytest.mark.anyio
@_bug("stale-handle")
async def test_bug_stale_handle(valkey: RedisServer) -> None:
    async with _small_pool(valkey.url) as redis:
        async with redis.acquire() as conn:
            await conn.ping()
        with contextlib.suppress(Exception):
            await conn.execute_command("SELECT", 5)  # after the block: must not reach Redis
        for info in await _idle_infos(redis):
            assert info["db"] == "0"
