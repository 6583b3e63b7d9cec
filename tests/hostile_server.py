"""A scripted, hostile fake Redis for tests/test_hostile.py.

It runs in the calling event loop (asyncio or trio, through anyio), listens on a free port of
127.0.0.1 and answers ``HELLO``, ``PING``, ``ECHO``, ``GET``, ``SUBSCRIBE`` and ``UNSUBSCRIBE``.
How it answers each request is scripted in advance, per request, so that a test knows exactly
what every caller may legitimately receive:

* ``ECHO t<n>`` and ``GET k<n>`` carry a request number ``n``; the server looks up
  ``answers[n]`` (an :class:`Answer`) and renders it with :func:`render`.  The same function
  tells the test what the client may return for that request (an :class:`Expect`).
* ``HELLO`` is answered by the next :class:`Hello` of the handshake script (then normally).
* ``SUBSCRIBE`` is acknowledged, then the server plays the pub/sub script (:class:`PubFrame`),
  continuing where it left off on whichever connection subscribes next (after a reconnect),
  and ends every connection's stream with the message ``END``.

What the server promises (see the docstring of tests/test_hostile.py for why): bytes a client
did not ask for are only ever sent in the *same write* as the last reply the client is owed
(``Answer.extra``), or, through :meth:`HostileServer.inject`, while the client has nothing
outstanding on that connection, and then :meth:`inject` returns only once the kernel has acked
them, i.e. once they are in the client's hands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import socket
import struct
import termios
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import anyio
import anyio.abc

from anypool._resp import NEED_DATA, make_parser

__all__ = [
    "FILL_64K",
    "Body",
    "HelloKind",
    "PubKind",
    "Answer",
    "Expect",
    "Hello",
    "HostileServer",
    "PubFrame",
    "bulk",
    "render",
]

# --- RESP building blocks ---------------------------------------------------------------------


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def token(n: int) -> bytes:
    """ECHO's argument for request n (no token is a prefix of another, so a reply cut short
    is never some other request's)."""
    return b"t%d." % n


def key(n: int) -> bytes:
    """GET's argument for request n."""
    return b"k%d" % n


def value(n: int, size: int | None) -> bytes:
    """The value the server holds for key(n): derived from the key, ``size`` bytes long."""
    base = b"val-k%d|" % n
    if size is None:
        return base
    size = max(size, len(base))  # never shorter than the part that makes it unique
    return (base * (size // len(base) + 1))[:size]


FILL_64K: Final = -1
"""``Answer.size`` meaning: make the GET value exactly as long as it takes for the write that
carries the reply to end on a 64 KiB boundary (the client reads in 64 KiB pieces)."""

_64K: Final = 64 * 1024


# --- what the server may send -----------------------------------------------------------------

# Well-formed push frames: a client must skip them (they are not replies).
VALID_PUSHES: Final = (
    b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n",
    b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n",
    b">0\r\n",
    b">1\r\n*0\r\n",
    b">2\r\n+a\r\n%1\r\n+b\r\n:1\r\n",
    b"|1\r\n+a\r\n+b\r\n>1\r\n+x\r\n",  # an attribute, then a push
)
# Not RESP3: a client must fail the request rather than return anything for it.
INVALID_PUSHES: Final = (
    b">-1\r\n",  # there is no null push; a client that reads it as nil returns it as the reply
    b">2\r\n$3\r\nfoo\r\n%1\r\n*0\r\n:1\r\n",  # a map key Python cannot hash
    b">1\r\n?junk\r\n",
    b">-3\r\n",
)
# Not RESP: sent instead of a reply, each must make the request fail.
INVALID_REPLIES: Final = (
    b"?garbage\r\n",
    b"\x00\r\n",
    b"$abc\r\n",
    b":12x\r\n",
    b"$-5\r\n",
    b"*-2\r\n",
    b"%1\r\n*1\r\n:1\r\n:2\r\n",  # unhashable map key
    b"*1\r\n%1\r\n~0\r\n:1\r\n",  # unhashable map key, nested
    b",notafloat\r\n",
    b"#x\r\n",
    b"_x\r\n",
    b"=2\r\nab\r\n",
    b":99999999999999999999\r\n",
    b"*2\r\n$2\r\nok\r\n?junk\r\n",
    b"(12a\r\n",
    b"$4294967296\r\n",
    b"+a\rb\r\n",
    b"$+3\r\nabc\r\n",
    b":\r\n",
    b"|-1\r\n",
    b"!3\r\nabcd\r\n",
)
# Bytes nobody asked for, for Answer.extra and HostileServer.inject.  None of them parses to a
# value any request may legitimately receive.
STRAYS: Final = (
    b"$5\r\nstray\r\n",
    b"+stray\r\n",
    b":-1\r\n",
    b"-ERR stray\r\n",
    b"*1\r\n$5\r\nstray\r\n",
    b"%1\r\n+stray\r\n:1\r\n",
    b">2\r\n+stray\r\n:1\r\n",  # a push: harmless if read as one
    b"?stray\r\n",
    b"$5\r\nst",
    b"|1\r\n+a\r\n+b\r\n",
)

Body = Literal[
    # a reply carrying the request's own payload (or its number), in some RESP form
    "ok", "simple", "verbatim", "array", "set", "map", "attr", "nested_attr", "int", "double",
    "bignum", "null", "nil", "bad_utf8",
    # an error reply naming the request
    "error", "blob_error",
    # no valid reply at all: the request must fail
    "invalid", "short_len", "long_len", "truncate", "none",
]  # fmt: skip
MUST_FAIL_BODIES: Final = frozenset({"invalid", "short_len", "long_len", "truncate", "none"})
# Bodies that leave the reply incomplete: bytes sent after them would complete it, so a client
# could not tell them from the reply.  They get no ``extra``.
INCOMPLETE_BODIES: Final = frozenset({"long_len", "truncate", "none"})
Then = Literal["keep", "close", "rst", "hang"]


@dataclasses.dataclass(frozen=True)
class Answer:
    """How the server answers one ECHO or GET request.

    Attributes:
        body: the reply (see ``Body``).
        invalid: for ``body="invalid"``, the bytes sent instead of a reply.
        cut: for ``body="truncate"``, how many bytes of the canonical reply are sent.
        pushes: frames sent before the body (``VALID_PUSHES`` or ``INVALID_PUSHES``).
        extra: unsolicited bytes appended to the body, in the same write (ignored after an
            incomplete body: they would be taken for the rest of the reply).
        then: afterwards, keep the connection, close it (FIN), reset it (RST) or stop answering.
        splits: offsets in pushes+body where the server starts a new write.
        size: for GET, the value's length (None: short; FILL_64K: see there).
    """

    body: Body = "ok"
    invalid: bytes = b""
    cut: int = 0
    pushes: tuple[bytes, ...] = ()
    extra: bytes = b""
    then: Then = "keep"
    splits: tuple[int, ...] = ()
    size: int | None = None


OK: Final = Answer()


@dataclasses.dataclass(frozen=True)
class Expect:
    """What a client may return for one request (it may always raise a documented error).

    ``kind`` is ``"value"`` (exactly ``value``), ``"error"`` (a ResponseError whose text
    contains ``error``) or ``"fail"`` (no valid reply was sent: the request must fail).

    ``lax`` is, for a bulk string whose announced length is wrong, the value its header
    announces: hiredis reads a bulk string by its length without checking the CRLF after it
    (a documented limitation, see anypool/_resp.py), so with hiredis that value is accepted
    too.  The strict Python parser (ANYPOOL_PARSER=python) must fail.
    """

    kind: Literal["value", "error", "fail"]
    value: Any = None
    error: str = ""
    lax: Any = None


def _decoded(item: Any, decode: bool) -> Any:
    if not decode:
        return item
    if isinstance(item, bytes):
        return item.decode()
    if isinstance(item, list):
        return [_decoded(x, decode) for x in item]
    if isinstance(item, dict):
        return {_decoded(k, decode): _decoded(v, decode) for k, v in item.items()}
    return item


def render(
    answer: Answer, n: int, command: Literal["echo", "get"], decode: bool
) -> tuple[list[bytes], Expect]:
    """The writes the server makes for request n, and what the client may return for it."""
    pushes = b"".join(answer.pushes)
    size = answer.size
    if command == "get" and size == FILL_64K:
        # grow the value until pushes + body is exactly 64 KiB (if the body holds the value)
        size = 1000
        for _ in range(4):
            body, _ = _body(answer, n, value(n, size), decode)
            size += _64K - len(pushes) - len(body)
    payload = token(n) if command == "echo" else value(n, size)
    body, expect = _body(answer, n, payload, decode)
    if any(p in INVALID_PUSHES for p in answer.pushes):
        expect = Expect("fail")
    data = pushes + body
    cuts = sorted({s for s in answer.splits if 0 < s < len(data)})
    writes = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    if answer.extra and answer.body not in INCOMPLETE_BODIES:
        writes[-1] += answer.extra  # the same write as the end of the reply
    return [w for w in writes if w], expect


def _body(answer: Answer, n: int, payload: bytes, decode: bool) -> tuple[bytes, Expect]:
    kind = answer.body
    error = b"ERR hostile #%d#" % n
    named = error[4:].decode()  # what ResponseError's text contains (the code is dropped)
    if kind == "ok":
        return bulk(payload), Expect("value", _decoded(payload, decode))
    if kind == "simple":
        return b"+%s\r\n" % payload, Expect("value", _decoded(payload, decode))
    if kind == "verbatim":
        return b"=%d\r\ntxt:%s\r\n" % (len(payload) + 4, payload), Expect(
            "value", _decoded(payload, decode)
        )
    if kind == "array":
        return b"*1\r\n" + bulk(payload), Expect("value", _decoded([payload], decode))
    if kind == "set":
        return b"~1\r\n" + bulk(payload), Expect("value", _decoded([payload], decode))
    if kind == "map":
        return b"%%1\r\n%s:%d\r\n" % (bulk(payload), n), Expect(
            "value", _decoded({payload: n}, decode)
        )
    if kind == "attr":
        return b"|1\r\n+ttl\r\n:3\r\n" + bulk(payload), Expect("value", _decoded(payload, decode))
    if kind == "nested_attr":
        return b"*2\r\n|1\r\n+a\r\n+b\r\n%s:%d\r\n" % (bulk(payload), n), Expect(
            "value", _decoded([payload, n], decode)
        )
    if kind == "int":
        return b":%d\r\n" % n, Expect("value", n)
    if kind == "double":
        return b",%d.5\r\n" % n, Expect("value", n + 0.5)
    if kind == "bignum":
        digits = b"%d" % (10**20 + n)
        return b"(%s\r\n" % digits, Expect("value", _decoded(digits, decode))
    if kind == "null":
        return b"_\r\n", Expect("value", None)
    if kind == "nil":
        return b"$-1\r\n", Expect("value", None)
    if kind == "bad_utf8":
        data = b"\xff\xfe" + payload
        return bulk(data), Expect("fail") if decode else Expect("value", data)
    if kind == "error":
        return b"-%s\r\n" % error, Expect("error", error=named)
    if kind == "blob_error":
        return b"!%d\r\n%s\r\n" % (len(error), error), Expect("error", error=named)
    if kind == "invalid":
        return answer.invalid, Expect("fail")
    if kind == "short_len":
        lax = _decoded(payload[:-1], decode)
        return b"$%d\r\n%s\r\n" % (len(payload) - 1, payload), Expect("fail", lax=lax)
    if kind == "long_len":
        lax = _decoded(payload + b"\r", decode)
        return b"$%d\r\n%s\r\n" % (len(payload) + 1, payload), Expect("fail", lax=lax)
    if kind == "truncate":
        return bulk(payload)[: max(0, min(answer.cut, len(bulk(payload)) - 1))], Expect("fail")
    assert kind == "none", kind
    return b"", Expect("fail")


def must_close(answer: Answer) -> Then:
    """A request left without a complete reply must not be kept answering as if it had one."""
    if answer.body in ("truncate", "none") and answer.then == "keep":
        return "hang"
    return answer.then


# --- the handshake ----------------------------------------------------------------------------

HelloKind = Literal[
    "ok", "push_first", "split", "unknown", "noproto", "error", "wrong_type", "garbage",
    "close", "hang", "extra", "odd_fields",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Hello:
    """How the server answers one HELLO.  ``extra``: the stray sent with ``kind="extra"``."""

    kind: HelloKind = "ok"
    extra: bytes = b"$11\r\nstray-hello\r\n"


def hello_reply(connection_id: int) -> bytes:
    return (
        b"%%4\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n6.2.0\r\n"
        b"$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:%d\r\n" % connection_id
    )


def _render_hello(hello: Hello, connection_id: int) -> tuple[list[bytes], Then, bool]:
    """The writes, what follows, and whether the connection now speaks RESP3."""
    reply = hello_reply(connection_id)
    kind = hello.kind
    if kind == "ok":
        return [reply], "keep", True
    if kind == "push_first":
        return [VALID_PUSHES[0] + reply], "keep", True
    if kind == "split":
        return [reply[i : i + 7] for i in range(0, len(reply), 7)], "keep", True
    if kind == "unknown":
        return [b"-ERR unknown command 'HELLO'\r\n"], "keep", False
    if kind == "noproto":
        return [b"-NOPROTO sorry, this protocol version is not supported\r\n"], "keep", False
    if kind == "error":
        return [b"-ERR hostile handshake\r\n"], "keep", False
    if kind == "wrong_type":
        return [b"*2\r\n$6\r\nserver\r\n$5\r\nredis\r\n"], "keep", False
    if kind == "garbage":
        return [b"?hello\r\n"], "keep", False
    if kind == "close":
        return [], "close", False
    if kind == "hang":
        return [], "hang", False
    if kind == "odd_fields":  # a map HELLO could send, with surprising field types
        return [b"%3\r\n:1\r\n:2\r\n$7\r\nversion\r\n*0\r\n$2\r\nid\r\n$1\r\nx\r\n"], "keep", True
    assert kind == "extra", kind
    return [reply + hello.extra], "keep", True


# --- pub/sub ----------------------------------------------------------------------------------

PubKind = Literal["message", "noise", "poison", "break", "close", "rst", "cut"]


@dataclasses.dataclass(frozen=True)
class PubFrame:
    """One step of the pub/sub script.

    ``message``: the message ``m<index>`` on channel ``ch`` (``variant`` picks an encoding);
    ``noise``: a well-formed frame that is no message for ``ch`` (must be ignored);
    ``poison``: a well-formed RESP value that is a malformed pub/sub frame (``raw``);
    ``break``: bytes that are not RESP (the client must drop the connection);
    ``close``/``rst``: the server closes the connection; ``cut``: half a message, then close.
    ``raw`` holds the bytes for noise/poison/break, with ``{P}`` standing for the aggregate
    type byte of the connection's protocol (``*`` for RESP2, ``>`` for RESP3).
    """

    kind: PubKind
    index: int = -1
    variant: int = 0
    raw: bytes = b""


_GLUEABLE: Final = frozenset({"message", "noise", "poison", "break"})
CHANNEL: Final = b"ch"
END: Final = b"END"


def payload(index: int) -> bytes:
    return b"m%d" % index


def message_frame(data: bytes, variant: int, resp3: bool) -> bytes:
    p = b">" if resp3 else b"*"
    if variant == 1:  # simple strings
        return p + b"3\r\n+message\r\n+ch\r\n+%s\r\n" % data
    if variant == 2:  # an attribute before the frame
        return b"|1\r\n+a\r\n+b\r\n" + message_frame(data, 0, resp3)
    if variant == 3:  # a verbatim payload
        return p + b"3\r\n$7\r\nmessage\r\n$2\r\nch\r\n=%d\r\ntxt:%s\r\n" % (len(data) + 4, data)
    return p + b"3\r\n$7\r\nmessage\r\n$2\r\nch\r\n" + bulk(data)


def _pub_bytes(frame: PubFrame, resp3: bool) -> bytes:
    if frame.kind == "message":
        return message_frame(payload(frame.index), frame.variant, resp3)
    if frame.kind == "cut":
        whole = message_frame(payload(frame.index), 0, resp3)
        return whole[: max(1, min(frame.variant, len(whole) - 1))]
    return frame.raw.replace(b"{P}", b">" if resp3 else b"*")


# --- the server -------------------------------------------------------------------------------


class HarnessError(Exception):
    """The test harness itself went wrong (not a finding about the library)."""


class _Closed(Exception):
    """The server closed this connection on purpose."""


_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8


def _unsent(sock: Any) -> int:
    """Bytes written on ``sock`` that the peer's kernel has not acknowledged yet (Linux)."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


def _tcp_state(sock: Any) -> int:
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])


class _Connection:
    def __init__(self, number: int, stream: anyio.abc.SocketStream) -> None:
        self.number = number
        self.stream = stream
        self.sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.resp3 = False
        self.hanging = False
        self.closed = False
        self.subscribed = False
        # An injection and an answer never write at once (with auto-pipelining, a request the
        # client sent before it dropped the connection may still be answered meanwhile).
        self.write_lock = anyio.Lock()


class HostileServer:
    """The scripted server.  ``async with HostileServer(...) as server:`` (in a running loop).

    Args:
        answers: request number -> how to answer ``ECHO t<n>`` / ``GET k<n>`` (default: OK).
        hellos: how to answer the 1st, 2nd... HELLO (then: normally).
        pub_script: the pub/sub script.
        pub_glue: send the script's next frame in the same write as a SUBSCRIBE's ack.

    Attributes:
        port: the port it listens on (127.0.0.1).
        clean: True once :meth:`behave` was called.
        pub_sent: indices of the messages written so far, in order.
        requests: how many ECHO/GET requests were answered.
        connections_accepted: how many connections the server accepted.
    """

    def __init__(
        self,
        answers: dict[int, Answer] | None = None,
        hellos: Sequence[Hello] = (),
        *,
        pub_script: Sequence[PubFrame] = (),
        pub_glue: bool = False,
    ) -> None:
        self.answers = dict(answers or {})
        self.hellos = list(hellos)
        self.pub_script = list(pub_script)
        self.pub_glue = pub_glue
        self.port = 0
        self.clean = False
        self.pub_sent: list[int] = []
        self.requests = 0
        self.connections_accepted = 0
        self._hellos_seen = 0
        self._pub_cursor = 0
        self._served: dict[int, _Connection] = {}
        self._open: set[_Connection] = set()
        self._busy = 0
        self._changed = anyio.Event()
        self._context: contextlib.AbstractAsyncContextManager[HostileServer] | None = None

    # --- life cycle ---------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HostileServer]:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(listener.serve, self._handle, task_group)
                try:
                    yield self
                finally:
                    task_group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def __aenter__(self) -> HostileServer:
        self._context = self.running()
        return await self._context.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._context is not None
        return await self._context.__aexit__(*exc_info)

    def behave(self) -> None:
        """From now on answer everything correctly, on every connection (also on those left
        hanging: they answer their next request)."""
        self.clean = True
        for connection in self._open:
            connection.hanging = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Any, what: str, timeout: float = 5.0) -> None:
        """Wait (event-driven) until ``predicate()``; HarnessError after ``timeout``."""
        with anyio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return
        raise HarnessError(f"the server did not reach '{what}' within {timeout}s")

    async def quiesce(self) -> None:
        """Wait until no connection is in the middle of answering a request."""
        await self.wait_until(lambda: self._busy == 0, "no request being answered")

    async def all_closed(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            while self._open:
                await self._changed.wait()
        return not self._open

    # --- injection ----------------------------------------------------------------------------

    async def inject(self, n: int, data: bytes) -> bool:
        """Send ``data`` on the connection that answered request n, now: the caller guarantees
        that the client has nothing outstanding on it.  Returns once the client's kernel has
        acknowledged the bytes (they are in the client's hands), or the connection is gone.
        True if they were delivered."""
        await self.quiesce()
        connection = self._served.get(n)
        if connection is None or connection.closed or connection.hanging:
            return False
        try:
            async with connection.write_lock:
                await connection.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return False
        with anyio.move_on_after(2.0):
            while connection in self._open:
                try:
                    if _unsent(connection.sock) == 0:
                        return True
                    if _tcp_state(connection.sock) not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
                        return False  # reset by the client: nothing to deliver to
                except (OSError, ValueError):  # ValueError: the socket was closed meanwhile
                    return False
                await anyio.sleep(0.001)
            return False
        raise HarnessError("injected bytes were not acknowledged by the client within 2s")

    # --- serving ------------------------------------------------------------------------------

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections_accepted += 1
        connection = _Connection(self.connections_accepted, stream)
        self._open.add(connection)
        parser = make_parser(use_hiredis=False)
        try:
            while True:
                data = await stream.receive()
                if connection.hanging:
                    continue  # read and drop: the client will give up and close
                parser.feed(data)
                while not connection.hanging:
                    request = parser.gets()
                    if request is NEED_DATA:
                        break
                    self._busy += 1
                    try:
                        await self._answer(connection, request)
                    finally:
                        self._busy -= 1
                        self._notify()
        except (_Closed, anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        except OSError:
            pass
        finally:
            connection.closed = True
            self._open.discard(connection)
            # shielded and graceful: on asyncio a socket is really closed one iteration later
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self._notify()

    async def _answer(self, connection: _Connection, request: Any) -> None:
        if not isinstance(request, list) or not request or not isinstance(request[0], bytes):
            raise HarnessError(f"the client sent {request!r}, not a command")
        name = request[0].upper()
        args: list[bytes] = request[1:]
        if name == b"HELLO":
            hello = Hello()
            if not self.clean and self._hellos_seen < len(self.hellos):
                hello = self.hellos[self._hellos_seen]
            self._hellos_seen += 1
            writes, then, resp3 = _render_hello(hello, connection.number)
            connection.resp3 = resp3
            await self._perform(connection, writes, then)
        elif name in (b"ECHO", b"GET") and len(args) == 1:
            self.requests += 1
            await self._answer_command(connection, name, args[0])
        elif name == b"CLIENT" and args[:1] and args[0].upper() == b"SETINFO":
            await self._perform(connection, [b"+OK\r\n"], "keep")  # the handshake's lib name
        elif name == b"PING":
            if connection.subscribed and not connection.resp3:
                await self._perform(connection, [b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"], "keep")
            else:
                await self._perform(connection, [b"+PONG\r\n"], "keep")
        elif name == b"SUBSCRIBE":
            connection.subscribed = True
            p = b">" if connection.resp3 else b"*"
            acks = b"".join(
                p + b"3\r\n$9\r\nsubscribe\r\n%s:%d\r\n" % (bulk(channel), count)
                for count, channel in enumerate(args, 1)
            )
            script, cursor = self.pub_script, self._pub_cursor
            if self.pub_glue and cursor < len(script) and script[cursor].kind in _GLUEABLE:
                # the first frame goes out in the same write as the acknowledgement
                frame = script[cursor]
                self._pub_cursor += 1
                if frame.kind == "message":
                    self.pub_sent.append(frame.index)
                data = acks + _pub_bytes(frame, connection.resp3)
                await self._perform(connection, [data], "hang" if frame.kind == "break" else "keep")
                if frame.kind == "break":
                    return
            else:
                await self._perform(connection, [acks], "keep")
            await self._play(connection)
        elif name == b"UNSUBSCRIBE":
            p = b">" if connection.resp3 else b"*"
            for channel in args:
                ack = p + b"3\r\n$11\r\nunsubscribe\r\n%s:0\r\n" % bulk(channel)
                await self._perform(connection, [ack], "keep")
        else:
            error = b"-ERR unknown command '%s'\r\n" % name.decode("ascii", "replace").encode()
            await self._perform(connection, [error], "keep")

    async def _answer_command(self, connection: _Connection, name: bytes, arg: bytes) -> None:
        command: Literal["echo", "get"] = "echo" if name == b"ECHO" else "get"
        prefix = b"t" if command == "echo" else b"k"
        number = arg[1:].removesuffix(b".") if command == "echo" else arg[1:]
        if arg[:1] == prefix and number.isdigit():
            n = int(number)
            answer = self.answers.get(n, OK)
            self._served[n] = connection
            writes, _ = render(answer, n, command, decode=False)
            await self._perform(connection, writes, must_close(answer))
        elif command == "echo":  # an unscripted ECHO (the clean phase): answered honestly
            await self._perform(connection, [bulk(arg)], "keep")
        else:
            await self._perform(connection, [b"$-1\r\n"], "keep")

    async def _perform(self, connection: _Connection, writes: Sequence[bytes], then: Then) -> None:
        for data in writes:
            async with connection.write_lock:
                await connection.stream.send(data)
        if then == "close":
            raise _Closed
        if then == "rst":
            with contextlib.suppress(OSError, ValueError):
                # ValueError/OSError: the socket is already closed (the client reset it first;
                # uvloop then closes its side at once), so there is nothing left to reset
                connection.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            raise _Closed
        if then == "hang":
            connection.hanging = True

    async def _play(self, connection: _Connection) -> None:
        """Play the pub/sub script from where it stopped; end with the message END."""
        while self._pub_cursor < len(self.pub_script):
            frame = self.pub_script[self._pub_cursor]
            self._pub_cursor += 1
            data = _pub_bytes(frame, connection.resp3)
            if frame.kind == "message":
                self.pub_sent.append(frame.index)
            if frame.kind in ("close", "rst"):
                await self._perform(connection, [], frame.kind)
            elif frame.kind == "cut":
                await self._perform(connection, [data], "close")
            elif frame.kind == "break":
                await self._perform(connection, [data], "hang")  # the client must hang up
                return
            else:
                await self._perform(connection, [data], "keep")
        await self._perform(connection, [message_frame(END, 0, connection.resp3)], "keep")
