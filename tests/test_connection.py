"""One connection against a real server, on asyncio and trio: commands, handshake, and every
hazard that could hand a caller someone else's reply or leak a socket."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import cast

import anyio
import pytest
import redis.exceptions
import sniffio

import anypool
from anypool import RedisConfig, RedisPool
from anypool._connection import Connection
from anypool._transport import _kernel_probe, _tune_socket, connected_to_itself
from anypool.testing import RedisServer

from .conftest import open_fds

pytestmark = pytest.mark.anyio

BUSY_SCRIPT = "local i = 0 while i < tonumber(ARGV[1]) do i = i + 1 end return i"


@asynccontextmanager
async def connected(config: RedisConfig) -> AsyncIterator[Connection]:
    connection = await Connection.connect(config)
    try:
        yield connection
    finally:
        await connection.aclose()


class Slot:
    """One pool slot, the way the pool will treat it: reuse the connection while it is reusable,
    otherwise open a new one.  Enough to show what a caller after a failure would receive."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.connection: Connection | None = None
        self.opened = 0

    async def get(self) -> Connection:
        if self.connection is None or not self.connection.is_reusable:
            if self.connection is not None:
                await self.connection.aclose()
            self.connection = await Connection.connect(self.config)
            self.opened += 1
        return self.connection

    async def aclose(self) -> None:
        if self.connection is not None:
            await self.connection.aclose()


# --- basics -----------------------------------------------------------------------------------


async def test_commands_and_replies(config: RedisConfig) -> None:
    async with connected(config) as conn:
        assert conn.protocol == 3
        assert conn.server_version is not None
        assert isinstance(conn.client_id, int)
        assert await conn.execute("SET", "basics:k", "v") == b"OK"
        assert await conn.execute("GET", "basics:k") == b"v"
        assert await conn.execute("GET", "basics:missing") is None
        await conn.execute("DEL", "basics:h")
        assert await conn.execute("HSET", "basics:h", "f", 1) == 1
        assert await conn.execute("HGETALL", "basics:h") == {b"f": b"1"}
        assert conn.replies_owed == 0
        assert conn.is_reusable
        assert conn.looks_alive()


async def test_error_reply_is_raised_and_leaves_the_connection_usable(config: RedisConfig) -> None:
    async with connected(config) as conn:
        await conn.execute("SET", "err:k", "v")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
            await conn.execute("LPUSH", "err:k", "x")
        assert conn.is_reusable
        assert await conn.execute("GET", "err:k") == b"v"


async def test_execute_many_returns_errors_in_place(config: RedisConfig) -> None:
    async with connected(config) as conn:
        replies = await conn.execute_many(
            [("SET", "many:k", "v"), ("INCR", "many:k"), ("GET", "many:k"), ("PING",)]
        )
        assert replies[0] == b"OK"
        assert isinstance(replies[1], redis.exceptions.ResponseError)
        assert replies[2:] == [b"v", b"PONG"]
        assert conn.is_reusable
        with anyio.CancelScope() as scope:  # an empty batch is still a checkpoint
            scope.cancel()
            await conn.execute_many([])
            pytest.fail("execute_many([]) did not check for cancellation")
        assert await conn.execute_many([]) == []


async def test_bad_argument_sends_nothing(config: RedisConfig) -> None:
    async with connected(config) as conn:
        with pytest.raises(anypool.InvalidArgument, match="argument 2 of 'SET'"):
            await conn.execute("SET", "k", None)  # type: ignore[arg-type]
        assert conn.is_reusable
        assert await conn.execute("PING") == b"PONG"


async def test_resp2_decode_db_and_client_name(config: RedisConfig) -> None:
    options = RedisConfig.replace(
        config, protocol=2, decode_responses=True, db=3, client_name="anypool-test"
    )
    async with connected(options) as conn:
        assert conn.protocol == 2
        await conn.execute("SET", "resp2:k", "é")
        assert await conn.execute("GET", "resp2:k") == "é"
        assert await conn.execute("CLIENT", "GETNAME") == "anypool-test"
        info = await conn.execute("CLIENT", "INFO")
        assert " db=3 " in info
        assert await conn.execute("HGETALL", "resp2:none") == []  # RESP2 shape: flat list
    async with connected(config.replace(db=3)) as conn:
        assert await conn.execute("GET", "resp2:k") == "é".encode()
    async with connected(config) as conn:
        assert await conn.execute("GET", "resp2:k") is None  # db 0


async def test_resp3_hello_sets_name(config: RedisConfig) -> None:
    async with connected(config.replace(client_name="hello-name")) as conn:
        assert await conn.execute("CLIENT", "GETNAME") == b"hello-name"


async def test_unix_socket(redis_server: RedisServer) -> None:
    config = RedisConfig.from_url(f"unix://{redis_server.unix_socket_path}?db=2")
    async with connected(config) as conn:
        assert await conn.execute("PING") == b"PONG"
        assert b" db=2 " in await conn.execute("CLIENT", "INFO")


async def test_fallback_to_resp2_when_the_server_lacks_hello() -> None:
    # --rename-command HELLO "" makes a Redis 6+ server answer like Redis 5: unknown command.
    with RedisServer("--rename-command", "HELLO", "", password="pw") as server:
        config = RedisConfig.from_url(server.url, client_name="old-server")
        async with connected(config) as conn:
            assert conn.protocol == 2
            assert await conn.execute("CLIENT", "GETNAME") == b"old-server"
            assert await conn.execute("PING") == b"PONG"


async def test_acl_user(own_server: RedisServer) -> None:
    async with connected(RedisConfig.from_url(own_server.url)) as admin:
        await admin.execute("ACL", "SETUSER", "reader", "on", ">readerpw", "~*", "+get", "+hello")
    config = RedisConfig.from_url(f"redis://reader:readerpw@127.0.0.1:{own_server.port}/0")
    async with connected(config) as conn:
        assert await conn.execute("GET", "acl:k") is None
        with pytest.raises(redis.exceptions.NoPermissionError):
            await conn.execute("SET", "acl:k", "v")
        assert conn.is_reusable


async def test_push_messages_do_not_count_as_replies(config: RedisConfig) -> None:
    async with connected(config) as conn, connected(config) as other:
        await conn.execute("CLIENT", "TRACKING", "on")
        await conn.execute("GET", "push:k")  # now tracked
        await other.execute("SET", "push:k", "changed")  # invalidation push to conn
        seen: list[list[object]] = []
        conn.on_push = seen.append
        # the push arrives before (or with) the PING reply; it must not be taken for the reply
        assert await conn.execute("PING") == b"PONG"
        assert await conn.execute("GET", "push:k") == b"changed"
        assert seen
        assert seen[0][0] == b"invalidate"


# --- hazard 1: a cancelled GET never hands its reply to the next caller -----------------------


async def test_get_cancelled_while_server_busy_never_returns_previous_reply(
    config: RedisConfig,
) -> None:
    async with connected(config) as setup:
        await setup.execute("MSET", "h1:k1", "v1", "h1:k2", "v2", "h1:k3", "v3")
    slot = Slot(config)
    first = await slot.get()
    async with connected(config) as busy, anyio.create_task_group() as tg:
        tg.start_soon(busy.execute, "EVAL", BUSY_SCRIPT, 0, 10_000_000)  # ~1 s
        await anyio.wait_all_tasks_blocked()  # the script has been sent: the server is busy
        with anyio.move_on_after(0.05) as scope:
            await first.execute("GET", "h1:k1")
        assert scope.cancelled_caught, "the server answered before the deadline"
    assert first.closed, "a connection that still owes a reply must be closed"
    assert first.replies_owed == 1
    with pytest.raises(anypool.ConnectionClosed):
        await first.execute("GET", "h1:k2")
    for key, value in [("h1:k2", b"v2"), ("h1:k3", b"v3"), ("h1:k1", b"v1")]:
        assert await (await slot.get()).execute("GET", key) == value
    assert slot.opened == 2
    await slot.aclose()


# --- hazard 2: a cancelled BLPOP consumes nothing ---------------------------------------------


async def _blocked_clients(conn: Connection) -> int:
    info = await conn.execute("INFO", "clients")
    text = info.decode() if isinstance(info, bytes) else info
    return int(text.split("blocked_clients:")[1].split()[0])


async def test_cancelled_blpop_closes_and_consumes_nothing(config: RedisConfig) -> None:
    async with connected(config) as producer:
        await producer.execute("DEL", "h2:jobs")
        consumer = await Connection.connect(config)
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                with anyio.CancelScope() as scope:
                    cancel_scope.append(scope)
                    await consumer.execute("BLPOP", "h2:jobs", 0)

            cancel_scope: list[anyio.CancelScope] = []
            tg.start_soon(consume)
            with anyio.fail_after(5):
                while await _blocked_clients(producer) != 1:
                    await anyio.sleep(0.01)
            cancel_scope[0].cancel()
        assert consumer.closed
        # the server must see the client gone before anything is pushed
        with anyio.fail_after(5):
            while await _blocked_clients(producer) != 0:
                await anyio.sleep(0.01)
        assert await producer.execute("LPUSH", "h2:jobs", "job-1") == 1
        await anyio.sleep(0.05)
        assert await producer.execute("LRANGE", "h2:jobs", 0, -1) == [b"job-1"]


# --- hazard 3: a large SET cancelled mid-send -------------------------------------------------


async def test_large_set_cancelled_mid_send(own_server: RedisServer) -> None:
    config = RedisConfig.from_url(own_server.url)
    slot = Slot(config)
    async with connected(config) as setup:
        await setup.execute("SET", "h3:small", "mine")
    conn = await slot.get()
    big = b"x" * (64 * 1024 * 1024)
    own_server.pause()  # the server reads nothing: the send fills the socket buffers and blocks
    try:
        with anyio.move_on_after(0.3) as scope:
            await conn.execute("SET", "h3:big", big)
        assert scope.cancelled_caught
        assert conn.closed
    finally:
        own_server.resume()
    assert await (await slot.get()).execute("GET", "h3:small") == b"mine"
    assert await (await slot.get()).execute("EXISTS", "h3:big") == 0  # the half command was dropped
    await slot.aclose()


# --- hazard 4: cancellation during connect or handshake leaks no socket ------------------------


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port whose accept queue is full: new connects hang in SYN_SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.1)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("fake_server", "stage"), [(blackhole, "connect"), (silent_server, "handshake")]
)
async def test_cancel_during_connect_or_handshake_leaks_no_socket(
    fake_server: Callable[[], AbstractContextManager[int]], stage: str
) -> None:
    # blackhole: the TCP connect itself hangs; silent_server: HELLO never gets an answer
    with fake_server() as port:
        config = RedisConfig(port=port, host="127.0.0.1", connect_timeout=None, password="pw")
        before = open_fds()
        for _ in range(3):
            with anyio.move_on_after(0.2) as scope:
                await Connection.connect(config)
            assert scope.cancelled_caught, f"the {stage} did not hang as intended"
        assert open_fds() == before


# --- hazard 5: each failure has its own error, within the configured time ---------------------


async def test_wrong_password(own_server: RedisServer) -> None:
    async with connected(RedisConfig.from_url(own_server.url)) as admin:
        await admin.execute("CONFIG", "SET", "requirepass", "right")
    config = RedisConfig.from_url(f"redis://:wrong-secret@127.0.0.1:{own_server.port}/0")
    before = open_fds()
    with pytest.raises(anypool.AuthenticationError) as info:
        await Connection.connect(config)
    assert "wrong-secret" not in str(info.value)
    assert isinstance(info.value, redis.exceptions.AuthenticationError)
    assert isinstance(info.value, redis.exceptions.ConnectionError)
    assert open_fds() == before
    with pytest.raises(anypool.AuthenticationError):  # no password at all: NOAUTH on SELECT
        await Connection.connect(RedisConfig(port=own_server.port, db=1, host="127.0.0.1"))
    with pytest.raises(anypool.AuthenticationError):  # the same over RESP2
        await Connection.connect(config.replace(protocol=2))


async def test_unknown_acl_user(redis_server: RedisServer) -> None:
    config = RedisConfig.from_url(f"redis://nobody:pw@127.0.0.1:{redis_server.port}/0")
    with pytest.raises(anypool.AuthenticationError, match="'nobody'") as info:
        await Connection.connect(config)
    assert "pw@" not in str(info.value)


async def test_refused_port() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = open_fds()
    with pytest.raises(anypool.ConnectError, match="refused"):
        await Connection.connect(RedisConfig(host="127.0.0.1", port=port))
    assert open_fds() == before


async def test_blackholed_address_times_out_within_connect_timeout() -> None:
    with blackhole() as port:
        before = open_fds()
        started = time.monotonic()
        with pytest.raises(anypool.ConnectTimeout, match=r"connect_timeout \(0.3s\)"):
            await Connection.connect(RedisConfig(host="127.0.0.1", port=port, connect_timeout=0.3))
        assert time.monotonic() - started < 2.0  # bounded: 0.3 s plus scheduling slack
        assert open_fds() == before


async def test_hung_server_during_handshake_times_out() -> None:
    with silent_server() as port, pytest.raises(anypool.ConnectTimeout):
        await Connection.connect(RedisConfig(host="127.0.0.1", port=port, connect_timeout=0.3))


async def test_command_timeout_closes_the_connection(config: RedisConfig) -> None:
    async with connected(config.replace(socket_timeout=0.2)) as conn:
        with pytest.raises(anypool.TimeoutError, match="DEBUG got no reply") as info:
            await conn.execute("DEBUG", "SLEEP", "0.6")
        assert isinstance(info.value, redis.exceptions.TimeoutError)
        assert conn.closed
    async with connected(config) as conn:  # per-call timeout overrides the default
        with pytest.raises(anypool.TimeoutError):
            await conn.execute("DEBUG", "SLEEP", "0.6", timeout=0.1)
        assert conn.closed


async def test_server_killed_mid_command(own_server: RedisServer) -> None:
    config = RedisConfig.from_url(own_server.url)
    conn = await Connection.connect(config)
    async with anyio.create_task_group() as tg:

        async def kill_soon() -> None:
            await anyio.wait_all_tasks_blocked()
            await anyio.to_thread.run_sync(own_server.kill)

        tg.start_soon(kill_soon)
        with pytest.raises(anypool.ConnectionLost, match="1 replies owed"):
            with anyio.fail_after(5):
                await conn.execute("DEBUG", "SLEEP", "2")
    assert conn.closed
    with pytest.raises(anypool.ConnectError, match="refused"):
        await Connection.connect(config)


@asynccontextmanager
async def scripted_server(reply: bytes) -> AsyncIterator[int]:
    """A fake server: reads one command, writes ``reply``, then closes the connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(client: anyio.abc.SocketStream) -> None:
        async with client:
            await client.receive()
            await client.send(reply)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield port
        tg.cancel_scope.cancel()


async def test_server_gone_mid_reply() -> None:
    async with scripted_server(b"$100\r\nonly part of the") as port:
        conn = await Connection.connect(
            RedisConfig(host="127.0.0.1", port=port, protocol=2, lib_name=None, lib_version=None)
        )
        with pytest.raises(anypool.ConnectionLost, match="closed the connection with 1 replies"):
            await conn.execute("GET", "k")
        assert conn.closed


async def test_malformed_reply_is_a_protocol_error_and_closes() -> None:
    async with scripted_server(b"?this is not RESP\r\n") as port:
        conn = await Connection.connect(
            RedisConfig(host="127.0.0.1", port=port, protocol=2, lib_name=None, lib_version=None)
        )
        with pytest.raises(anypool.ProtocolError, match="type byte"):
            await conn.execute("GET", "k")
        assert conn.closed


async def test_looks_alive_notices_a_server_side_close(config: RedisConfig) -> None:
    async with connected(config) as victim, connected(config) as killer:
        assert victim.looks_alive()
        await killer.execute("CLIENT", "KILL", "ID", victim.client_id)
        with anyio.fail_after(5):
            while victim.looks_alive():
                await anyio.sleep(0.01)
        with pytest.raises(anypool.ConnectionLost):
            await victim.execute("PING")


async def test_concurrent_use_is_refused_without_harm(config: RedisConfig) -> None:
    async with connected(config) as conn, anyio.create_task_group() as tg:
        # wait_all_tasks_blocked() takes ~0.1 s steps on asyncio (more on a loaded machine):
        # the server's sleep outlasts it.
        tg.start_soon(conn.execute, "DEBUG", "SLEEP", "3")
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="in use by another task"):
            await conn.execute("PING")
    assert conn.closed  # closed by `connected` on exit, not by the refused call
    async with connected(config) as conn:
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.execute, "DEBUG", "SLEEP", "3")
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError):
                await conn.execute("PING")
        assert conn.is_reusable  # the first task's exchange completed normally
        assert await conn.execute("PING") == b"PONG"


async def test_server_hanging_up_during_handshake_is_a_connect_error() -> None:
    async with scripted_server(b"") as port:
        with pytest.raises(anypool.ConnectError, match="during the handshake"):
            await Connection.connect(RedisConfig(host="127.0.0.1", port=port))


async def test_repr_hides_password(config: RedisConfig) -> None:
    async with connected(config.replace(client_name="repr")) as conn:
        assert repr(conn).startswith("<Connection 127.0.0.1:")
    await conn.aclose()  # idempotent
    assert "closed by its owner" in repr(conn)


async def test_every_transport_can_see_bytes_it_already_read(
    config: RedisConfig, monkeypatch: pytest.MonkeyPatch, anyio_backend_name: str
) -> None:
    """Issue 10, defect 2: unsolicited bytes can wait above the kernel socket, in a transport's
    own buffer; each transport must let the connection see them.  (anyio's asyncio stream is
    looked at through a private attribute: this fails if an anyio release renames it.)"""
    tcp = config.replace(unix_socket_path=None)
    for transport in ("default", "anyio"):
        if transport == "anyio":
            monkeypatch.setenv("ANYPOOL_TRANSPORT", "anyio")
        else:
            monkeypatch.delenv("ANYPOOL_TRANSPORT", raising=False)
        async with connected(tcp) as conn:
            if anyio_backend_name == "asyncio":
                assert conn._readable_now is not None, transport
            assert conn.looks_alive()
            assert conn.is_reusable


@pytest.mark.parametrize("transport", ["default", "anyio"])
@pytest.mark.parametrize("address", ["tcp", "unix"])
async def test_every_transport_retires_on_unsolicited_bytes_and_on_close(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, transport: str, address: str
) -> None:
    """On every loop (uvloop's included) and transport, an idle connection that receives bytes
    nobody asked for, or is closed by the server, stops looking alive."""
    if transport == "anyio":
        monkeypatch.setenv("ANYPOOL_TRANSPORT", "anyio")
    else:
        monkeypatch.delenv("ANYPOOL_TRANSPORT", raising=False)
    config = RedisConfig.from_url(redis_server.url, connect_timeout=5.0)
    if address == "unix":
        config = config.replace(unix_socket_path=redis_server.unix_socket_path)
    key = f"stray:{transport}:{address}"
    async with connected(config) as victim, connected(config) as other:
        await victim.execute("CLIENT", "TRACKING", "on")
        await victim.execute("GET", key)  # tracked: a change to it is pushed to the victim
        assert victim.looks_alive()
        await other.execute("SET", key, "changed")  # the push: bytes on an idle connection
        with anyio.fail_after(10):
            while victim.looks_alive():
                await anyio.sleep(0.001)
    async with connected(config) as victim, connected(config) as killer:
        assert victim.looks_alive()
        await killer.execute("CLIENT", "KILL", "ID", victim.client_id)
        with anyio.fail_after(10):
            while victim.looks_alive():
                await anyio.sleep(0.001)
        with pytest.raises(anypool.ConnectionLost):
            await victim.execute("PING")


async def test_each_backend_id_runs_its_own_loop(request: pytest.FixtureRequest) -> None:
    """asyncio+uvloop really runs uvloop's loop (else it would test asyncio twice), asyncio
    runs asyncio's own, trio runs trio."""
    backend_id = request.node.callspec.id
    loop_kind = "trio"
    if sniffio.current_async_library() == "asyncio":
        module = type(asyncio.get_running_loop()).__module__
        loop_kind = "asyncio+uvloop" if module.startswith("uvloop") else "asyncio"
    assert loop_kind == backend_id


class StandInSocket:
    """What asyncio's TransportSocket and uvloop's PseudoSocket offer: no recv()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.family, self.type, self.proto = sock.family, sock.type, sock.proto

    def fileno(self) -> int:
        return self.sock.fileno()


@pytest.mark.parametrize("real", [True, False], ids=["socket", "stand-in"])
def test_kernel_probe_peeks_without_taking_the_socket(real: bool) -> None:
    """looks_alive's kernel peek, on a real socket and through a stand-in that refuses recv():
    it sees bytes and a close, consumes nothing, and never closes the descriptor."""
    mine, peer = socket.socketpair()
    with mine, peer:
        mine.setblocking(False)
        probe = _kernel_probe(mine if real else StandInSocket(mine))
        assert probe is not None
        assert probe()  # open, nothing waiting
        peer.send(b"+stray\r\n")
        assert not probe()
        assert mine.recv(100) == b"+stray\r\n"  # peeked, not consumed
        assert probe()
        fd = mine.fileno()
        os.fstat(fd)  # still open: the stand-in's descriptor was detached, not closed
        peer.shutdown(socket.SHUT_WR)
        assert not probe()  # end of stream
    assert not probe()  # closed: fileno() is -1


class ClosedAtOnceStream:
    """What anyio's stream over uvloop offers once the server hung up as the socket connected:
    no socket, and (as anyio lists attributes by asking that socket for its peer) perhaps an
    AttributeError instead of a missing attribute."""

    def __init__(self, fails_while_listing: bool) -> None:
        self.fails_while_listing = fails_while_listing

    def extra(self, attribute: object, default: object = None) -> object:
        if self.fails_while_listing:
            raise AttributeError("'NoneType' object has no attribute 'getpeername'")
        return None


@pytest.mark.parametrize("fails_while_listing", [False, True], ids=["none", "attribute-error"])
def test_a_stream_closed_as_it_connects_is_a_broken_connection(fails_while_listing: bool) -> None:
    """Seen on CI (uvloop, anyio streams, a pub/sub reconnect to a server being killed): the
    AttributeError escaped the connect and crashed the pool's task group.  It must be the
    broken-connection error every reconnect loop already handles."""
    stream = cast(anyio.abc.ByteStream, ClosedAtOnceStream(fails_while_listing))
    with pytest.raises(anyio.BrokenResourceError, match="closed as it was made"):
        _tune_socket(stream, RedisConfig(host="127.0.0.1", port=1))


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", [None, 2, 3])
async def test_a_username_without_a_password_authenticates_as_that_user(
    redis_server: RedisServer, protocol: int | None
) -> None:
    """A nopass ACL user, on every protocol: RESP2 used to send no AUTH at all, so the
    connection silently ran as ``default`` (found by redis-py's own test_acl_log)."""
    user = f"nopass-{uuid.uuid4().hex[:8]}"
    async with RedisPool.from_url(redis_server.url) as admin:
        await admin.acl_setuser(
            user, enabled=True, reset=True, nopass=True, commands=["+@all"], keys=["*"]
        )
        try:
            async with RedisPool.from_url(
                redis_server.url, username=user, protocol=protocol, decode_responses=True
            ) as client:
                assert await client.acl_whoami() == user
        finally:
            await admin.acl_deluser(user)


async def test_a_refused_connection_sends_nothing_and_still_reads_what_is_owed(
    config: RedisConfig,
) -> None:
    """refuse(): no later command is written (ConnectionRetired, writes unchanged: provably
    not sent); the reply owed to the command in flight is still read; then it is not
    reusable, so the pool closes it."""
    async with connected(config) as conn:
        results: list[object] = []
        async with anyio.create_task_group() as tg:

            async def in_flight() -> None:
                results.append(await conn.execute("DEBUG", "SLEEP", "0.2"))

            tg.start_soon(in_flight)
            await anyio.wait_all_tasks_blocked()
            conn.refuse("the primary was demoted")
            writes = conn.writes
        assert results == [b"OK"]  # the owed reply arrived
        with pytest.raises(anypool.ConnectionRetired, match=r"nothing was sent.*was demoted"):
            await conn.execute("SET", "refused", "1")
        with pytest.raises(anypool.ConnectionRetired):
            await conn.send_commands([("PING",)])
        assert conn.writes == writes
        assert conn.refused == "the primary was demoted"
        assert not conn.is_reusable and not conn.looks_alive()
    assert isinstance(anypool.ConnectionRetired("x"), anypool.ConnectionClosed)


# --- a connection that reached itself ----------------------------------------------------------


@contextmanager
def _self_connected() -> Iterator[socket.socket]:
    """A loopback socket connected to itself: bound to a port nobody listens on, then
    connected to that port (the TCP simultaneous open the kernel can also pick by chance)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.connect(sock.getsockname())
        yield sock


def test_a_socket_connected_to_itself_is_recognised() -> None:
    with _self_connected() as sock:
        assert connected_to_itself(sock)
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"PING\r\n"  # what it sends comes back as an "answer"
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.connect(server.getsockname())
        assert not connected_to_itself(client)
    with socket.socket() as unconnected:
        assert not connected_to_itself(unconnected)


def test_a_connection_that_reached_itself_is_a_refused_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reconnecting to a stopped server's loopback port can reach the client itself; that is a
    refused connect (nothing listens there), not a server that "answered" our own bytes
    (CI: 'sent bytes nobody asked for during the handshake'), and no socket is left open."""
    made: list[socket.socket] = []

    async def connect_to_itself(loop: object, config: RedisConfig) -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.1", config.port))
        sock.connect(("127.0.0.1", config.port))
        sock.setblocking(False)
        made.append(sock)
        return sock

    async def main() -> None:
        with socket.socket() as probe:  # a free port
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = RedisConfig(host="127.0.0.1", port=port, connect_timeout=5.0)
        with pytest.raises(anypool.ConnectError, match="refused"):
            await Connection.connect(config)

    monkeypatch.delenv("ANYPOOL_TRANSPORT", raising=False)  # the asyncio Protocol stream
    monkeypatch.setattr(anypool._transport, "_connect_socket", connect_to_itself)
    anyio.run(main, backend="asyncio")
    assert len(made) == 1 and made[0].fileno() == -1  # closed


# --- what follows the handshake's replies -------------------------------------------------------

_SETNAME = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$1\r\nx\r\n"


async def _answer_the_handshake_then(after: bytes, close: bool) -> BaseException | None:
    """Connect to a scripted server that answers the handshake (RESP2, CLIENT SETNAME x) with
    +OK followed by ``after``, and closes the connection when ``close``; both happen in one
    synchronous step, before the client reads anything.  What the connect raised, or None."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        config = RedisConfig(host="127.0.0.1", port=listener.getsockname()[1], protocol=2,
                             client_name="x", lib_name=None, lib_version=None,
                             connect_timeout=10.0)  # fmt: skip
        outcome: list[BaseException | None] = []

        async def client() -> None:
            try:
                conn = await Connection.connect(config)
            except anypool.AnyPoolError as exc:
                outcome.append(exc)
            else:
                outcome.append(None)
                await conn.aclose()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client)
                await anyio.wait_readable(listener)
                server, _ = listener.accept()
                with server:
                    server.setblocking(False)
                    request = b""
                    while len(request) < len(_SETNAME):
                        await anyio.wait_readable(server)
                        request += server.recv(4096)
                    assert request == _SETNAME
                    server.setblocking(True)
                    server.sendall(b"+OK\r\n" + after)  # no await from here ...
                    if close:
                        server.close()  # ... to here: the client has read nothing yet
                    else:
                        while not outcome:
                            await anyio.sleep(0.01)
    return outcome[0]


async def test_a_server_that_closes_right_after_the_handshake_is_a_failed_connect() -> None:
    """A server stopped (or killed) just as it answered a connect: a ConnectError, which pools
    and discovery try again elsewhere, not a ProtocolError blaming the server's bytes (a
    Sentinel test killed a primary under load and saw 'sent bytes nobody asked for')."""
    error = await _answer_the_handshake_then(b"", close=True)
    assert isinstance(error, anypool.ConnectError), error
    assert "closed the connection as soon as it had answered the handshake" in str(error)


async def test_bytes_after_the_handshake_replies_are_a_protocol_error() -> None:
    for close in (False, True):
        error = await _answer_the_handshake_then(b"+STRAY\r\n", close=close)
        assert isinstance(error, anypool.ProtocolError), error
        assert "sent bytes nobody asked for during the handshake" in str(error)
