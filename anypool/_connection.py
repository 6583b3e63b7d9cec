"""One Redis connection: an anyio byte stream, the RESP codec, the handshake, reply accounting.

Theory of operation
-------------------
A connection is a strict request/response pipe.  ``_owed`` counts the replies the server still
owes: it goes up *before* a command is sent and down after each complete reply (an error reply
is a complete reply).  Whatever interrupts an exchange -- cancellation, a timeout, a broken
socket, a protocol or decode error -- leaves ``_owed > 0`` or the parser failed, and the
connection is then closed at once under a shielded cancel scope.  It is never reused: the next
caller could otherwise receive the reply meant for the one that left.  Closing also makes the
server drop a client blocked in BLPOP/XREAD/WAIT, so it consumes nothing for a caller that left.

This module is the one place where anyio, socket, TLS and OS errors become anypool errors
(:func:`_translate`); the original is always chained as ``__cause__``.

A Connection is not safe for concurrent use by several tasks: the pool leases it to one holder.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import redis.exceptions

from ._config import RedisConfig
from ._credentials import DONE, credentials_of, fetch_credentials
from ._errors import (
    AnyPoolError,
    AuthenticationError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionRetired,
    ConnectTimeout,
    ProtocolError,
    TimeoutError,
)
from ._pool import ResourceFactory
from ._resp import NEED_DATA, Arg, Packer, Push, make_parser
from ._transport import close_stream, idle_probes, open_stream

__all__ = ["DEFAULT", "Connection", "ConnectionFactory"]

logger = logging.getLogger("anypool.connection")

_READ_SIZE: Final = 64 * 1024  # what one read asks for, at first
_MAX_READ_SIZE: Final = 1024 * 1024  # ... and at most, after reads that filled it (big replies)
# How long telling a closed connection from stray bytes after the handshake may take (both are
# already there to read; this only bounds a surprise).
_LEFTOVER_READ_BOUND: Final = 1.0


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()
"""Use the configured ``socket_timeout`` (as opposed to None: no timeout)."""

Timeout = float | None | _Default


class _CommandTimedOut(Exception):
    """Internal: a command's own deadline passed (turned into TimeoutError by _translate)."""

    def __init__(self, timeout: float, *, sending: bool = False) -> None:
        self.timeout = timeout
        self.sending = sending  # the write itself did not finish


class Connection:
    """A single connection to Redis.  Create it with :meth:`connect`.

    Attributes:
        config: the configuration it was made with.
        protocol: the RESP version actually in use (3, or 2 after a fallback).
        server_version: the server's version string, from ``HELLO`` (None on RESP2).
        client_id: the server's id for this client (``CLIENT ID``), from ``HELLO``.
        created_at: ``time.monotonic()`` when the connection was established.
        last_used_at: ``time.monotonic()`` when the last command completed.
        on_push: called with each RESP3 push message (pub/sub, invalidation) that arrives while
            a reply is awaited; when None, pushes are counted in ``pushes_dropped`` and logged.
    """

    def __init__(self, config: RedisConfig, stream: anyio.abc.ByteStream) -> None:
        self.config = config
        self._stream = stream
        self._packer = Packer(config.encoding, config.encoding_errors)
        self._parser = make_parser(
            encoding=config.encoding if config.decode_responses else None,
            errors=config.encoding_errors,
            max_reply_size=config.max_reply_size,
        )
        self._timeout = config.socket_timeout
        # Replies the server still owes us.  Invariant: 0 whenever no exchange is in progress,
        # unless the connection is closed.
        self._owed = 0
        self._closed_by: str | None = None  # why the connection was closed, once it is
        self._refused_by: str | None = None  # why nothing more may be sent (see refuse())
        self.protocol = config.wire_protocol
        self.server_version: str | None = None
        self.client_id: int | None = None
        self.created_at = self.last_used_at = time.monotonic()
        self.on_push: Callable[[list[Any]], None] | None = None
        self.pushes_dropped = 0
        self._read_size = _READ_SIZE
        # Exchanges whose bytes were (maybe) handed to the transport: a command that failed
        # while this count did not move was provably never sent (the retry rule relies on it).
        self.writes = 0
        # Which credentials this connection authenticated with (the factory's count of
        # rotations when it connected or last re-authenticated).
        self.auth_generation = 0
        # Looked up once (looks_alive() runs on every acquire from idle): a peek at the kernel
        # socket, and a look at bytes already read above it, where a peek cannot see them.
        self._kernel_quiet, self._readable_now = idle_probes(stream)

    # --- establishing -------------------------------------------------------------------------

    @classmethod
    async def connect(cls, config: RedisConfig) -> Connection:
        """Connect, authenticate, select the database and name the client.

        Asking the ``credential_provider`` (if any), TCP connect, TLS and the handshake together
        must finish within ``connect_timeout``.  The handshake is one round trip:
        ``HELLO 3 AUTH .. SETNAME ..``, ``CLIENT SETINFO LIB-NAME/LIB-VER`` and ``SELECT`` in one
        write (``AUTH``, ``CLIENT SETNAME``... when RESP2 is wanted: ``protocol=2``, or no
        ``protocol`` with redis-py 5-7).  A server without ``HELLO`` (Redis < 6) gets the RESP2
        form in a second round trip; one without ``CLIENT SETINFO`` (< 7.2) answers it with an
        error, which is ignored.

        Cancellation: a cancelled or failed connect closes the socket before returning; nothing
        is left open.

        Raises:
            ConnectError: refused, unreachable, unknown host, TLS failure, the server
                rejected ``SELECT``/``CLIENT SETNAME``, or it closed the connection during or
                right after the handshake (a server being stopped).
            ConnectTimeout: ``connect_timeout`` passed.
            AuthenticationError: wrong password, or unknown or disabled ACL user; or the
                credential provider failed or returned something else than credentials.
            ProtocolError: the server's replies are not RESP.
        """
        stream: anyio.abc.ByteStream | None = None
        timeout = config.connect_timeout
        try:
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                provider = config.credential_provider
                credentials = (config.username, config.password)
                if provider is not None:
                    credentials = await fetch_credentials(config)
                stream = await open_stream(config)
                connection = cls(config, stream)
                try:
                    await connection._handshake(*credentials)
                except AuthenticationError:
                    # Rotated between the fetch and the handshake (the server already
                    # refuses what the provider gave a moment ago): if the provider now gives
                    # other credentials, one more try with them, within the same deadline.
                    if provider is None:
                        raise
                    fresh = await fetch_credentials(config)
                    if fresh == credentials:
                        raise
                    logger.info(
                        "%s: the credentials changed while connecting; connecting again",
                        config.address,
                    )
                    await close_stream(stream)
                    stream = None
                    stream = await open_stream(config)
                    connection = cls(config, stream)
                    await connection._handshake(*fresh)
                if not connection.looks_alive():
                    await connection._refuse_leftover()
                return connection
            raise ConnectTimeout(
                f"connecting to {config.address} took longer than connect_timeout ({timeout}s)"
            )
        except BaseException as exc:
            if stream is not None:
                await close_stream(stream)
            error = _translate(exc, config, connecting=True)
            if error is exc:
                raise
            raise error from exc

    async def _refuse_leftover(self) -> NoReturn:
        """The handshake is answered, but the connection is not idle: either the server sent
        bytes nobody asked for (they would be read as the first command's reply), or it closed
        the connection, as a server being stopped or killed does to a connect it had just
        answered.  That is a failed connect, which pools and discovery try again elsewhere,
        not a server that speaks the protocol wrongly.  Either is already there to read, so
        one read tells them apart; the bound only guards against a surprise."""
        address = self.config.address
        if not self._parser.has_data():
            with anyio.move_on_after(_LEFTOVER_READ_BOUND):
                try:
                    await self._stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    raise ConnectError(
                        f"{address} closed the connection as soon as it had answered the "
                        "handshake (a server stopping?)"
                    ) from None
        raise ProtocolError(f"{address} sent bytes nobody asked for during the handshake")

    async def _handshake(self, username: str | None, password: str | None) -> None:
        config = self.config
        # Sent after HELLO (or AUTH) in the same write, whatever the protocol.
        setup: list[tuple[Arg, ...]] = []
        if config.lib_name is not None:
            setup.append(("CLIENT", "SETINFO", "LIB-NAME", config.lib_name))
        if config.lib_version is not None:
            setup.append(("CLIENT", "SETINFO", "LIB-VER", config.lib_version))
        if config.db:
            setup.append(("SELECT", config.db))
        if config.readonly:
            setup.append(("READONLY",))
        if self.protocol != 2:  # the wire this config asks for (see RedisConfig.wire_protocol)
            hello: list[Arg] = ["HELLO", 3]
            if password is not None or username is not None:
                hello += ["AUTH", username or "default", password or ""]
            if config.client_name is not None:
                hello += ["SETNAME", config.client_name]
            replies = await self._exchange([tuple(hello), *setup], None)
            info = replies[0]
            if not isinstance(info, Exception):
                self._read_hello(info)
                self._check_setup(setup, replies[1:])
                return
            text = str(info).lower()
            if "unknown command" not in text and "noproto" not in text:
                raise self._handshake_error("HELLO", info, username)
            # Redis < 6: no HELLO, no RESP3.  What followed HELLO ran unauthenticated (or
            # failed): it is sent again below, after AUTH.
            logger.debug("%s does not know HELLO; using RESP2", config.address)
        self.protocol = 2
        followups: list[tuple[Arg, ...]] = []
        if username is not None:  # with no password: a nopass user (as HELLO's AUTH above)
            followups.append(("AUTH", username, password or ""))
        elif password is not None:
            followups.append(("AUTH", password))
        if config.client_name is not None:
            followups.append(("CLIENT", "SETNAME", config.client_name))
        followups += setup
        if not followups and config.ssl:
            # One round trip before the connection goes idle, so TLS records the server sends
            # after its handshake (TLS 1.3 session tickets) are read now: later, any byte that
            # arrives on an idle connection is one nobody asked for.
            followups.append(("PING",))
        if followups:
            self._check_setup(followups, await self._exchange(followups, None), username)

    def _check_setup(
        self, commands: Sequence[tuple[Arg, ...]], replies: Sequence[Any],
        username: str | None = None,
    ) -> None:  # fmt: skip
        for command, reply in zip(commands, replies, strict=True):
            name = " ".join(str(a) for a in command[:2]) if command[0] == "CLIENT" else command[0]
            name = str(name)
            if not isinstance(reply, Exception):
                expected = (b"PONG", "PONG") if command[0] == "PING" else (b"OK", "OK")
                if reply not in expected:
                    # Every handshake command answers +OK (PING: +PONG); anything else is a
                    # reply out of step: bytes the server sent that answer nothing.
                    raise ProtocolError(
                        f"{self.config.address} answered {name} during the handshake with "
                        f"{type(reply).__name__} {reply!r:.40}: its replies are out of step"
                    )
                continue
            if command[:2] == ("CLIENT", "SETINFO"):
                # Redis < 7.2 does not know it, an ACL may forbid it: it only names the
                # library in CLIENT LIST, so the connection is fine without it.
                logger.debug("%s refused %s: %s", self.config.address, name, reply)
                continue
            raise self._handshake_error(str(name), reply, username)

    async def reauthenticate(
        self, username: str | None, password: str, *, timeout: Timeout = DEFAULT
    ) -> None:
        """Authenticate this open connection again (``AUTH``), e.g. with rotated credentials.

        Raises:
            AuthenticationError: the server refused the credentials (the connection keeps its
                previous identity; do not reuse it).
            TimeoutError, ConnectionError: as :meth:`execute`; the connection is closed.

        Cancellation: as :meth:`execute`: the connection is closed if the reply was owed.
        """
        args: tuple[Arg, ...] = (
            ("AUTH", password) if username is None else ("AUTH", username, password)
        )
        try:
            await self.execute(*args, timeout=timeout)
        except AnyPoolError:
            raise  # the connection broke or timed out (and is closed)
        except (redis.exceptions.ResponseError, redis.exceptions.AuthenticationError) as exc:
            # the server's error reply (WRONGPASS is parsed as an AuthenticationError)
            raise self._handshake_error("AUTH", exc, username) from exc

    def _read_hello(self, info: Any) -> None:
        if not isinstance(info, dict):
            raise ProtocolError(f"HELLO returned {type(info).__name__}, not a map")
        self.protocol = 3
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in info.items()}
        version = fields.get("version")
        if version is not None:
            self.server_version = version.decode() if isinstance(version, bytes) else str(version)
        client_id = fields.get("id")
        if isinstance(client_id, int):
            self.client_id = client_id

    def _handshake_error(
        self, command: str, reply: Exception, username: str | None = None
    ) -> AnyPoolError:
        user = username or self.config.username or "default"
        if isinstance(
            reply, redis.exceptions.AuthenticationError | redis.exceptions.NoPermissionError
        ):
            error: AnyPoolError = AuthenticationError(
                f"{self.config.address} rejected user {user!r} during {command}: {reply}"
            )
        else:
            error = ConnectError(
                f"{command} failed while connecting to {self.config.address}: {reply}"
            )
        error.__cause__ = reply
        return error

    # --- commands -----------------------------------------------------------------------------

    async def execute(self, *args: Arg, timeout: Timeout = DEFAULT, decode: bool = True) -> Any:
        """Send one command and return its reply (raw: no redis-py callbacks applied).

        Args:
            *args: the command and its arguments.
            timeout: seconds allowed for the whole exchange; ``DEFAULT`` uses
                ``config.socket_timeout``, ``None`` waits forever.
            decode: False returns the reply's strings as bytes even with
                ``decode_responses`` (for binary replies such as DUMP).

        Raises:
            redis.exceptions.ResponseError: the server answered with an error (the connection
                stays usable).
            TimeoutError: the timeout passed; the connection is closed.
            ConnectionLost: the connection broke; it is closed.
            ConnectionClosed: the connection had already been closed.
            InvalidArgument: an argument has a type Redis cannot take (nothing was sent).

        Cancellation: if cancelled before the reply arrived, the connection is closed (the
        reply is still owed) and the cancellation propagates.
        """
        reply = (await self._exchange((args,), timeout, decode))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def execute_many(
        self,
        commands: Sequence[Sequence[Arg]],
        *,
        timeout: Timeout = DEFAULT,
        decode: bool | Sequence[bool] = True,
    ) -> list[Any]:
        """Send several commands in one write and return their replies in order.

        Error replies are returned as exception instances in their place, not raised: the
        caller decides (a pipeline may collect them, a transaction may abort).  ``decode`` may
        be one flag for all replies or one per command (see :meth:`execute`).

        Raises and cancellation: as :meth:`execute`.
        """
        if not commands:
            await anyio.lowlevel.checkpoint()  # still a checkpoint, like every async method
            return []
        return await self._exchange(commands, timeout, decode)

    async def _exchange(
        self,
        commands: Sequence[Sequence[Arg]],
        timeout: Timeout,
        decode: bool | Sequence[bool] = True,
    ) -> list[Any]:
        if self._closed_by is not None or self._refused_by is not None:
            raise self._unusable()
        if self._owed:
            # Between exchanges nothing is owed: another task is mid-exchange right now.
            raise RuntimeError(
                f"{self!r} is in use by another task; a connection serves one task at a time "
                "(lease one per task from the pool)"
            )
        # Packing first: a bad argument raises here, before anything is owed or sent.
        data = self._packer.pack_commands(commands)
        if timeout is DEFAULT:
            timeout = self._timeout
        count = len(commands)
        flags = [decode] * count if isinstance(decode, bool) else list(decode)
        self._owed += count
        self.writes += 1
        try:
            if timeout is None:
                await self._stream.send(data)
                replies = [await self._read_reply(flag) for flag in flags]
            else:
                assert isinstance(timeout, float | int)
                replies = []
                with anyio.move_on_after(timeout) as scope:
                    await self._stream.send(data)
                    while len(replies) < count:
                        replies.append(await self._read_reply(flags[len(replies)]))
                if scope.cancelled_caught:
                    raise _CommandTimedOut(timeout)
        except BaseException as exc:
            await self._abandon(exc, commands)
        self.last_used_at = time.monotonic()
        return replies

    # --- subscribed mode ----------------------------------------------------------------------
    # A connection in pub/sub mode is not request/response: the server pushes messages at any
    # time, and acknowledges (UN)SUBSCRIBE with messages of its own.  Its one reader task owns
    # reading; writers take turns (the caller serialises them).  Replies-owed accounting does
    # not apply, and such a connection never returns to the command pool.

    async def send_commands(
        self, commands: Sequence[Sequence[Arg]], *, timeout: float | None = None
    ) -> None:
        """Send commands in one write; their answers are read by the connection's reader
        (subscribed mode).

        Args:
            commands: the commands, each a sequence of arguments.
            timeout: seconds the write may take (a server that stopped reading fills the
                socket's buffers); None waits as long as it takes.

        Raises:
            InvalidArgument: an argument has a type Redis cannot take (nothing was sent).
            ConnectionError, TimeoutError: the write failed; the connection is closed.

        Cancellation: a send cut short may leave half a command on the wire, so the connection
        is closed.
        """
        await self.send_packed(self._packer.pack_many(commands), commands[0][0], timeout=timeout)

    async def send_packed(self, data: bytes, command: Any, *, timeout: float | None) -> None:
        """Write commands already packed (``Packer.pack_commands``) in one write; their
        replies are read by whoever reads this connection (subscribed mode, or the
        multiplexing engine).

        Args:
            data: the packed commands.
            command: the first command's name, for error messages.
            timeout: seconds the write may take; None waits as long as it takes.

        Raises:
            ConnectionError, TimeoutError: the write failed; the connection is closed.

        Cancellation: a send cut short may leave half a command on the wire, so the connection
        is closed (the multiplexing engine shields its writes for that reason).
        """
        if self._closed_by is not None or self._refused_by is not None:
            raise self._unusable()
        try:
            if timeout is None:
                await self._stream.send(data)
            else:
                with anyio.move_on_after(timeout) as scope:
                    await self._stream.send(data)
                if scope.cancelled_caught:
                    raise _CommandTimedOut(timeout, sending=True)
        except BaseException as exc:
            error = _translate(exc, self.config, command=command)
            await self._close(f"{type(error).__name__} while sending")
            if error is exc:
                raise
            raise error from exc

    # --- shared use ---------------------------------------------------------------------------
    # The multiplexing engine (_multiplex.py) writes the packed commands of several callers and
    # reads their replies one at a time, in order; it does its own reply accounting, so
    # ``replies_owed`` stays 0 on a shared connection.

    def next_reply(self, decode: bool = True) -> Any:
        """The next complete reply among the bytes already read, or ``NEED_DATA``.  Push
        messages on the way go to ``on_push`` (or are counted as dropped).  (``last_used_at``
        is the caller's to update: see :meth:`mark_used`.)

        Raises:
            ProtocolError, ReplyDecodeError: the bytes are not valid RESP, or not decodable;
                the connection must then be closed (:meth:`abandon`).
        """
        parser = self._parser
        while True:
            reply = parser.gets(decode)
            if type(reply) is Push:
                self._push(reply)
                continue
            return reply

    def mark_used(self) -> None:
        """Record that replies were just read (``last_used_at``)."""
        self.last_used_at = time.monotonic()

    @property
    def has_unread(self) -> bool:
        """Whether bytes were read that no reply consumed yet (part of one, or unsolicited)."""
        return self._parser.has_data()

    async def receive_more(self) -> None:
        """Read what the server has sent (waiting for at least one byte) into the parser.

        Raises:
            ConnectionLost: the server closed the connection or the network broke it; the
                connection is closed.

        Cancellation: safe: nothing read is lost, and the connection stays usable.
        """
        try:
            self._parser.feed(await self._receive())
        except BaseException as exc:
            error = _translate(exc, self.config)
            if error is exc and not isinstance(exc, AnyPoolError):
                raise  # cancellation: nothing was half-consumed
            await self._close(f"{type(error).__name__} while reading")
            if error is exc:
                raise
            raise error from exc

    async def abandon(self, reason: str) -> None:
        """Close the connection because it can no longer be trusted (``reason`` is kept and
        shown by later calls).

        Cancellation: the socket is closed whether or not the caller is cancelled.
        """
        await self._close(reason)

    async def read_messages(self) -> list[Any]:
        """Everything the server has sent that is complete, at least one message (subscribed
        mode): pushes and replies, in order, with their types kept.

        Raises:
            ConnectionLost, ProtocolError...: the connection broke; it is closed.

        Cancellation: safe: messages are consumed only once complete, and none is lost.
        """
        parser = self._parser
        try:
            message = parser.gets()
            while message is NEED_DATA:
                parser.feed(await self._receive())
                message = parser.gets()
            messages = [message]
            while (message := parser.gets()) is not NEED_DATA:
                messages.append(message)
            self.last_used_at = time.monotonic()
            return messages
        except BaseException as exc:
            error = _translate(exc, self.config)
            if error is exc and not isinstance(exc, AnyPoolError):
                raise  # cancellation: nothing was half-consumed; the connection stays usable
            await self._close(f"{type(error).__name__} while reading")
            if error is exc:
                raise
            raise error from exc

    async def _read_reply(self, decode: bool = True) -> Any:
        parser = self._parser
        while True:
            reply = parser.gets(decode)
            if reply is NEED_DATA:
                parser.feed(await self._receive())
                continue
            if type(reply) is Push:
                self._push(reply)
                continue
            self._owed -= 1
            return reply

    async def _receive(self) -> bytes:
        """What the server sent, in a read that grows while reads fill it (big replies arrive
        in fewer, larger pieces, and the asyncio stream need not cut its chunks) and shrinks
        back once they no longer do."""
        size = self._read_size
        data = await self._stream.receive(size)
        if len(data) >= size:
            if size < _MAX_READ_SIZE:
                self._read_size = size * 2
        elif size > _READ_SIZE and len(data) < size // 8:
            self._read_size = size // 2
        return data

    def _push(self, message: list[Any]) -> None:
        if self.on_push is not None:
            self.on_push(message)
        else:
            self.pushes_dropped += 1
            logger.debug("dropped a push message on %s: %.80r", self.config.address, message)

    async def _abandon(self, exc: BaseException, commands: Sequence[Sequence[Arg]]) -> NoReturn:
        """An exchange was interrupted: close the connection and raise the translated error."""
        owed = self._owed
        error = _translate(exc, self.config, owed=owed, command=commands[0][0])
        await self._close(f"{type(error).__name__} with {owed} replies owed")
        if error is exc:
            raise exc
        raise error from exc

    def _unusable(self) -> ConnectionClosed:
        if self._closed_by is not None:
            return ConnectionClosed(
                f"the connection to {self.config.address} is closed ({self._closed_by})"
            )
        return ConnectionRetired(
            f"nothing was sent: the connection to {self.config.address} was retired "
            f"({self._refused_by})"
        )

    def refuse(self, reason: str) -> None:
        """Send nothing more on this connection (its server is no longer the one to talk to:
        a primary demoted by a failover).  Every later command fails with
        :class:`ConnectionRetired` saying ``reason`` and that it was not sent; replies already
        owed are still read.  Its holder returns it, and the pool closes it."""
        if self._refused_by is None:
            self._refused_by = reason

    @property
    def refused(self) -> str | None:
        """Why :meth:`refuse` was called, or None."""
        return self._refused_by

    # --- state --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the connection has been closed (by :meth:`aclose` or after a failure)."""
        return self._closed_by is not None

    @property
    def replies_owed(self) -> int:
        """Replies the server still owes (0 between exchanges on a healthy connection)."""
        return self._owed

    @property
    def is_reusable(self) -> bool:
        """Whether another caller may use this connection: open, nothing owed, nothing unread
        (in the parser, or buffered by the transport above the kernel socket)."""
        if (
            self._closed_by is not None
            or self._refused_by is not None
            or self._owed
            or self._parser.has_data()
        ):
            return False
        readable_now = self._readable_now
        return readable_now is None or not readable_now()

    def looks_alive(self) -> bool:
        """Cheap, synchronous check (one non-blocking peek) that an idle connection still works.

        False when the server has closed the socket, or sent bytes nobody asked for (which
        would be read as the next caller's reply), wherever those bytes wait: in the parser,
        the transport's buffer, TLS, or the kernel.  A True result is not a guarantee: only a
        round trip (PING) proves the server answers.
        """
        if not self.is_reusable:
            return False
        kernel_quiet = self._kernel_quiet
        return kernel_quiet is None or kernel_quiet()

    async def aclose(self) -> None:
        """Close the connection now, without waiting on the server.

        Cancellation: the socket is closed whether or not the caller is cancelled.
        """
        await self._close("closed by its owner")

    async def _close(self, reason: str) -> None:
        if self._closed_by is not None:
            return
        self._closed_by = reason
        await close_stream(self._stream)

    def __repr__(self) -> str:
        state = f"closed: {self._closed_by}" if self._closed_by else f"owed={self._owed}"
        return f"<Connection {self.config.address} db={self.config.db} resp{self.protocol} {state}>"


class ConnectionFactory(ResourceFactory[Connection]):
    """Makes, checks and recycles Redis connections for a :class:`~anypool.Pool`.

    Args:
        config: how to connect.
        check_timeout: seconds a health-check PING may take (default: ``socket_timeout``, or
            5 s when that is None).
    """

    def __init__(self, config: RedisConfig, *, check_timeout: float | None = None) -> None:
        self.config = config
        self.check_timeout = check_timeout or config.socket_timeout or 5.0
        # Credential rotation (a streaming credential_provider's on_next): the count of
        # rotations, and the newest credentials if the provider handed them over readably.
        # Written from whatever thread the provider calls back in; read here.
        self.credentials_generation = 0
        self._rotated: tuple[str | None, str] | None = None
        provider = config.credential_provider
        if provider is not None and callable(getattr(provider, "on_next", None)):
            provider.on_next(self._credentials_rotated)
            on_error = getattr(provider, "on_error", None)
            if callable(on_error):
                on_error(self._rotation_failed)

    def _credentials_rotated(self, token: Any) -> Awaitable[None]:
        """The provider's ``on_next`` callback: new credentials exist.  Connections that
        authenticated before are re-authenticated when they come back from a lease or are
        checked, and retired if picked from idle first.  Returns an awaitable that does
        nothing: redis-py's async token manager awaits this callback, its sync one does not."""
        self._rotated = credentials_of(token)
        self.credentials_generation += 1
        logger.info("%s: the credential provider rotated the credentials", self.config.address)
        return DONE

    def _rotation_failed(self, error: Exception) -> Awaitable[None]:
        # The provider could not renew: live connections keep the credentials they have;
        # new connections will ask the provider, and fail with its error if it persists.
        logger.warning(
            "%s: the credential provider failed to renew the credentials: %s",
            self.config.address, type(error).__name__,
        )  # fmt: skip
        return DONE

    def is_stale(self, resource: Connection) -> bool:
        """Whether ``resource`` authenticated with credentials rotated since."""
        return resource.auth_generation != self.credentials_generation

    async def reauthenticate(self, resource: Connection) -> None:
        """Authenticate ``resource`` with the newest credentials (raises as
        :meth:`Connection.reauthenticate`)."""
        generation = self.credentials_generation
        credentials = self._rotated
        if credentials is None:
            credentials = await fetch_credentials(self.config)
        username, password = credentials
        await resource.reauthenticate(username, password or "", timeout=self.check_timeout)
        resource.auth_generation = generation

    async def create(self) -> Connection:
        generation = self.credentials_generation  # one rotated meanwhile is stale at once
        connection = await Connection.connect(self.config)
        connection.auth_generation = generation
        return connection

    async def close(self, resource: Connection) -> None:
        await resource.aclose()

    async def check(self, resource: Connection) -> None:
        if self.is_stale(resource):
            await self.reauthenticate(resource)
        reply = await resource.execute("PING", timeout=self.check_timeout)
        if reply not in (b"PONG", "PONG"):
            raise ProtocolError(f"PING returned {reply!r}")

    async def reset(self, resource: Connection) -> bool:
        if not resource.is_reusable:
            return False
        if self.is_stale(resource):
            try:
                await self.reauthenticate(resource)
            except AnyPoolError as exc:
                logger.warning(
                    "%s: re-authenticating a returned connection failed (%s); closing it",
                    self.config.address, type(exc).__name__,
                )  # fmt: skip
                return False
        return True

    def looks_alive(self, resource: Connection) -> bool:
        # A connection holding rotated-out credentials is not handed out: it is retired
        # (the pool then opens one with the new credentials).
        return not self.is_stale(resource) and resource.looks_alive()


# --- the one place foreign errors become anypool errors ---------------------------------------


def _translate(
    exc: BaseException,
    config: RedisConfig,
    *,
    connecting: bool = False,
    owed: int = 0,
    command: Any = None,
) -> BaseException:
    """Map an anyio/OS/TLS error to anypool's hierarchy; return anything else unchanged.

    Cancellation, anypool's own errors and bugs pass through as they are.
    """
    address = config.address
    original = exc
    if connecting and isinstance(exc, ConnectionLost | ConnectionClosed):
        return ConnectError(f"{address} closed the connection during the handshake")
    if isinstance(exc, AnyPoolError):
        return exc
    if isinstance(exc, _CommandTimedOut):
        name = command.decode() if isinstance(command, bytes) else str(command)
        if exc.sending:
            return TimeoutError(
                f"{name} could not be sent to {address} within {exc.timeout}s (the server is "
                "not reading); the connection was closed"
            )
        return TimeoutError(
            f"{name} got no reply from {address} within {exc.timeout}s; "
            "the connection was closed, since its reply is still owed"
        )
    if connecting:
        exc = _first_connect_error(exc)
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return ConnectError(f"TLS handshake with {address} failed: {exc}")
        if isinstance(exc, socket.gaierror):
            return ConnectError(f"cannot resolve host {config.host!r}: {exc.strerror}")
        if isinstance(exc, ConnectionRefusedError):
            return ConnectError(f"connection to {address} refused (is Redis running there?)")
        if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError):
            return ConnectError(f"{address} closed the connection during the handshake")
        if isinstance(exc, OSError):
            return ConnectError(f"cannot connect to {address}: {exc.strerror or exc}")
        return original
    pending = f" with {owed} replies owed" if owed else ""
    if isinstance(exc, anyio.EndOfStream):
        return ConnectionLost(f"{address} closed the connection{pending}")
    if isinstance(exc, anyio.ClosedResourceError):
        return ConnectionClosed(f"the connection to {address} was closed{pending}")
    if isinstance(exc, anyio.BrokenResourceError | OSError | ssl.SSLError):
        return ConnectionLost(f"the connection to {address} broke{pending}: {exc}")
    return exc


def _first_connect_error(exc: BaseException) -> BaseException:
    """anyio reports failed connects as ``OSError("All connection attempts failed")`` caused by
    the real error, or by a group of them (one per address tried): the first says what happened."""
    cause = exc.__cause__
    if not isinstance(exc, OSError) or cause is None:
        return exc
    if isinstance(cause, BaseExceptionGroup):
        first: BaseException = cause.exceptions[0]
        return first
    return cause
