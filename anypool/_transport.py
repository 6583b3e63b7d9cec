"""The byte streams connections run on: TCP, TLS and unix sockets through anyio, and on asyncio
(plain or uvloop) a leaner asyncio Protocol stream; socket options, the TLS context, and the
cheap checks that an idle stream received nothing.

Nothing here knows RESP or Redis: :mod:`anypool._connection` speaks the protocol over these
streams and turns their errors into anypool's.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from ._config import RedisConfig
from ._errors import ConnectError

__all__ = ["close_stream", "idle_probes", "open_stream", "ssl_context"]


async def open_stream(config: RedisConfig) -> anyio.abc.ByteStream:
    stream: anyio.abc.ByteStream
    if not config.ssl and _asyncio_protocol_wanted():
        stream = await _AsyncioStream.connect(config)
    elif config.unix_socket_path is not None:
        stream = await anyio.connect_unix(config.unix_socket_path)
    elif config.ssl:
        stream = await anyio.connect_tcp(
            config.host,
            config.port,
            ssl_context=ssl_context(config),
            tls_hostname=config.host,
            # Redis servers may close without a TLS close_notify; do not treat that as an
            # attack, and do not wait for one when closing.
            tls_standard_compatible=False,
        )
    else:
        stream = await anyio.connect_tcp(config.host, config.port)
    if config.unix_socket_path is None:
        try:
            _tune_socket(stream, config)
        except BaseException:
            await close_stream(stream)  # the caller never saw it: nobody else would close it
            raise
    return stream


async def close_stream(stream: anyio.abc.ByteStream) -> None:
    """Close a stream now, whatever the caller's cancellation state, leaving no open socket.

    anyio streams close forcefully (nothing is waited for).  The asyncio Protocol stream aborts
    its transport and waits the one loop iteration until asyncio has closed the socket.
    """
    with anyio.CancelScope(shield=True):
        if isinstance(stream, _AsyncioStream):
            await stream.aclose()
        else:
            await anyio.aclose_forcefully(stream)


def _asyncio_protocol_wanted() -> bool:
    """The transport seam: on asyncio, use the Protocol-based stream (see _AsyncioStream),
    unless ``ANYPOOL_TRANSPORT=anyio`` asks for anyio's streams everywhere."""
    if os.environ.get("ANYPOOL_TRANSPORT") == "anyio":
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio)
        return False
    return True


class _StreamProtocol(asyncio.Protocol):
    """Collects what the socket delivers; wakes the one reader waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.reader: asyncio.Future[None] | None = None
        self.writer: asyncio.Future[None] | None = None
        self.closer: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.write_paused = False
        self.read_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport's methods without subclassing it.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _READ_HIGH_WATER and not self.read_paused and self.transport:
            self.transport.pause_reading()  # back-pressure only when nobody keeps up
            self.read_paused = True
        self._wake(self.reader)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake(self.reader)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake(self.reader)
        self._wake(self.writer)
        self._wake(self.closer)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake(self.writer)

    def failure(self) -> BaseException | None:
        """The error that broke the connection, if it broke with one (read fresh each time:
        the callbacks above change it while a task awaits)."""
        return self.error if self.lost else None

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_READ_HIGH_WATER = 4 * 1024 * 1024
_READ_LOW_WATER = 1024 * 1024


class _AsyncioStream(anyio.abc.ByteStream):
    """A byte stream on an asyncio Protocol: the transport seam of DESIGN.md.

    anyio's asyncio socket stream pauses and resumes reading around every receive (two extra
    ``epoll_ctl`` calls per request); this one leaves reading on and pauses only when 4 MiB
    are buffered unread.  It raises anyio's stream exceptions, so the connection above cannot
    tell the two apart, and the same tests (cancellation included) run over both.  Closing
    *aborts* the transport: bytes of a half-sent command are dropped, never flushed later.
    """

    def __init__(
        self, transport: asyncio.Transport, protocol: _StreamProtocol, sock: socket.socket
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        # The connected socket, made here and handed to the event loop, which owns it from
        # then on (it closes it, or uvloop detaches it, when the transport closes).  Kept for
        # what the transport does not offer: a peek at the kernel (looks_alive), socket options.
        # The transports' own get_extra_info("socket") refuses recv() (asyncio's
        # TransportSocket, uvloop's PseudoSocket).
        self._socket = sock
        self._closed = False
        # Looked up once: Python 3.11's get_running_loop() makes a getpid() call each time.
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, config: RedisConfig) -> _AsyncioStream:
        """Connect on the running loop: asyncio's own, uvloop, or any loop with the standard
        ``create_connection(sock=)`` / ``create_unix_connection(sock=)``.

        Cancellation or failure closes the socket.
        """
        loop = asyncio.get_running_loop()
        sock = await _connect_socket(loop, config)
        try:
            if sock.family == socket.AF_UNIX:
                transport, protocol = await loop.create_unix_connection(_StreamProtocol, sock=sock)
            else:
                transport, protocol = await loop.create_connection(_StreamProtocol, sock=sock)
        except BaseException:
            sock.close()  # no-op if the loop already closed or detached it
            raise
        return cls(transport, protocol, sock)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        protocol = self._protocol
        while not protocol.chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if protocol.lost and protocol.error is not None:
                raise anyio.BrokenResourceError from protocol.error
            if protocol.eof or protocol.lost:
                raise anyio.EndOfStream
            waiter: asyncio.Future[None] = self._loop.create_future()
            protocol.reader = waiter
            try:
                await waiter
            finally:
                protocol.reader = None
        chunk = protocol.chunks.popleft()
        if len(chunk) > max_bytes:
            protocol.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        protocol.buffered -= len(chunk)
        if protocol.read_paused and protocol.buffered < _READ_LOW_WATER:
            protocol.read_paused = False
            self._transport.resume_reading()
        return chunk

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closed:
            raise anyio.ClosedResourceError
        if protocol.lost:
            raise anyio.BrokenResourceError from protocol.error
        self._transport.write(item)
        while protocol.write_paused and not protocol.lost:
            waiter: asyncio.Future[None] = self._loop.create_future()
            protocol.writer = waiter
            try:
                await waiter
            finally:
                protocol.writer = None
        error = protocol.failure()
        if error is not None:
            raise anyio.BrokenResourceError from error

    async def send_eof(self) -> None:
        self._transport.write_eof()

    def readable_now(self) -> bool:
        """Whether :meth:`receive` would return at once: bytes are buffered, or the stream
        ended.  (On an idle connection, either means it cannot be reused.)"""
        protocol = self._protocol
        return bool(protocol.chunks) or protocol.eof or protocol.lost

    async def aclose(self) -> None:
        """Abort the transport and wait (one loop iteration) until its socket is closed."""
        if not self._closed:
            self._closed = True
            self._transport.abort()
        protocol = self._protocol
        while not protocol.lost:
            waiter: asyncio.Future[None] = self._loop.create_future()
            protocol.closer = waiter
            try:
                await waiter
            finally:
                protocol.closer = None

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._socket
        return {
            anyio.abc.SocketAttribute.raw_socket: lambda: sock,
            anyio.abc.SocketAttribute.family: lambda: sock.family,
        }


async def _connect_socket(loop: asyncio.AbstractEventLoop, config: RedisConfig) -> socket.socket:
    """A non-blocking socket connected to the configured address, for the caller to own.

    A host name is resolved on the loop and its addresses are tried in order, as
    ``loop.create_connection(host, port)`` does; the first failure is raised when all fail.
    Cancellation or failure closes every socket made here.
    """
    targets: list[tuple[int, int, int, Any]]
    if config.unix_socket_path is not None:
        targets = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, config.unix_socket_path)]
    else:
        infos = await loop.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
        targets = [(family, kind, proto, address) for family, kind, proto, _, address in infos]
    errors: list[OSError] = []
    for family, kind, proto, address in targets:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if not errors:  # pragma: no cover - getaddrinfo raises rather than return nothing
        raise OSError(f"no address found for {config.host!r}")
    raise errors[0]


def connected_to_itself(sock: socket.socket) -> bool:
    """Whether ``sock`` is connected to itself.  Connecting to a loopback port nobody listens
    on can succeed when the kernel picks that same port as the local one (a TCP "simultaneous
    open" with itself): every byte sent then comes back as if the server had answered.  A
    client that keeps reconnecting to a stopped server's port meets it sooner or later."""
    try:
        return bool(sock.getsockname() == sock.getpeername())
    except OSError:  # not connected (any more)
        return False


def _anyio_buffer_check(stream: anyio.abc.ByteStream) -> Callable[[], bool] | None:
    """For anyio's asyncio TCP stream: whether it holds bytes it already read.

    That stream reads through an asyncio protocol into a queue of chunks, and hands out at most
    ``max_bytes`` of one per receive; the rest, and a chunk that arrived after the last
    receive, wait in the queue, where a peek at the kernel socket cannot see them.  anyio has
    no public way to ask, so this looks at its ``_protocol.read_queue`` (tested to exist with
    the anyio installed: ``tests/test_connection.py``); other anyio streams read the socket
    directly and keep nothing (None).
    """
    protocol = getattr(stream, "_protocol", None)
    queue = getattr(protocol, "read_queue", None)
    if not isinstance(queue, deque):
        return None
    return lambda: bool(queue) or bool(getattr(protocol, "is_at_eof", False))


def _kernel_probe(raw: object) -> Callable[[], bool] | None:
    """A check that the socket under a stream is open and the kernel holds no byte for it.

    One non-blocking ``recv(MSG_PEEK)``: it consumes nothing, so it never disturbs the event
    loop reading the same socket.  A stream may hand out a real :class:`socket.socket` (trio,
    anyio's UNIX streams, our asyncio Protocol stream), peeked directly; or a stand-in that
    refuses ``recv()``: asyncio's ``TransportSocket`` and uvloop's ``PseudoSocket``.  For those,
    each check wraps the descriptor in a socket object for the one peek and *detaches* it after,
    so the descriptor stays the event loop's; a ``fileno()`` of -1 means the loop closed it.
    """
    if isinstance(raw, socket.socket):
        return functools.partial(_nothing_to_read, raw)
    if raw is None:  # pragma: no cover - every stream we open has one
        return None
    fileno: Callable[[], int] = getattr(raw, "fileno")  # noqa: B009 - duck-typed socket
    family = int(getattr(raw, "family"))  # noqa: B009
    kind = int(getattr(raw, "type"))  # noqa: B009
    proto = int(getattr(raw, "proto"))  # noqa: B009

    def probe() -> bool:
        fd = fileno()
        if fd < 0:
            return False  # the event loop has closed the socket
        view = socket.socket(family, kind, proto, fd)
        try:
            return _nothing_to_read(view)
        finally:
            view.detach()  # the descriptor still belongs to the event loop

    return probe


def _nothing_to_read(sock: socket.socket) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # open, and nothing waiting
    except OSError:
        return False
    # Nothing may arrive on an idle connection: not even TLS records, whose post-handshake
    # tickets were read by the handshake's round trip.  Empty: the server closed it.
    return False


def _raw_socket(stream: anyio.abc.ByteStream) -> Any:
    """The socket under ``stream``, or None: a stream without one, or (uvloop under anyio's
    streams) a transport that closed since it was made, which offers no socket any more;
    anyio then returns None or fails while listing the stream's attributes (it asks the
    missing socket for its peer)."""
    try:
        return stream.extra(anyio.abc.SocketAttribute.raw_socket)
    except (anyio.TypedAttributeLookupError, AttributeError):
        return None


def _tune_socket(stream: anyio.abc.ByteStream, config: RedisConfig) -> None:
    sock: socket.socket | None = _raw_socket(stream)
    if sock is None:  # the server hung up at once: a failed connect, reported as one
        raise anyio.BrokenResourceError("the connection closed as it was made")
    if connected_to_itself(sock):
        raise ConnectionRefusedError(
            errno.ECONNREFUSED,
            f"nothing listens on {config.address}: the connection reached itself (the kernel "
            "gave it the port it was connecting to, as it can on loopback)",
        )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config.socket_keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if config.socket_keepalive_options is not None:  # the user's, as redis-py sets them
            for option, setting in config.socket_keepalive_options:
                sock.setsockopt(socket.IPPROTO_TCP, option, setting)
            return
        # Notice a dead peer within ~90 s rather than the kernel's default of ~2 hours.
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            default_option: int | None = getattr(socket, name, None)
            if default_option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, default_option, value)


@functools.lru_cache(maxsize=16)
def ssl_context(config: RedisConfig) -> ssl.SSLContext:
    """One TLS context per config (loading CA bundles is slow); verification on by default.

    Built as redis-py builds it from the same ``ssl_*`` options; a given ``ssl_context`` is
    used as it is.
    """
    if config.ssl_context is not None:
        given: ssl.SSLContext = config.ssl_context
        return given
    try:
        # As redis-py: the system's CAs, and the given ones in addition to them.
        context = ssl.create_default_context()
        if (config.ssl_ca_certs, config.ssl_ca_path, config.ssl_ca_data) != (None, None, None):
            context.load_verify_locations(
                cafile=config.ssl_ca_certs, capath=config.ssl_ca_path, cadata=config.ssl_ca_data
            )
        if config.ssl_cert_reqs == "none":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.check_hostname = config.ssl_check_hostname
            if config.ssl_cert_reqs == "optional":
                context.verify_mode = ssl.CERT_OPTIONAL
        for flag in config.ssl_include_verify_flags:
            context.verify_flags |= flag
        for flag in config.ssl_exclude_verify_flags:
            context.verify_flags &= ~flag
        if config.ssl_min_version is not None:
            context.minimum_version = config.ssl_min_version
        if config.ssl_ciphers is not None:
            context.set_ciphers(config.ssl_ciphers)
        if config.ssl_certfile is not None:
            context.load_cert_chain(
                config.ssl_certfile, config.ssl_keyfile, password=config.ssl_password
            )
    except (OSError, ssl.SSLError, ValueError) as exc:
        # ssl's messages name files and OpenSSL reasons, never the key's password.
        raise ConnectError(
            f"cannot load the TLS certificates or settings for {config.address}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return context


def idle_probes(
    stream: anyio.abc.ByteStream,
) -> tuple[Callable[[], bool] | None, Callable[[], bool] | None]:
    """How to tell, cheaply, that nothing arrived on an idle ``stream``: a peek at the kernel
    socket (None where the stream has none), and a look at bytes already read above it, where
    a peek cannot see them (None where the stream keeps nothing).  Unsolicited bytes wait in
    the asyncio Protocol stream's buffer (it reads as soon as data arrives), in anyio's asyncio
    read queue, or decrypted but unread inside TLS."""
    raw = _raw_socket(stream)  # None: no peek
    readable_now: Callable[[], bool] | None
    if isinstance(stream, _AsyncioStream):
        readable_now = stream.readable_now
    elif isinstance(stream, TLSStream):
        ssl_object = stream.extra(TLSAttribute.ssl_object)
        readable_now = lambda: ssl_object.pending() > 0  # noqa: E731
    else:
        readable_now = _anyio_buffer_check(stream)
    return _kernel_probe(raw), readable_now
