"""Subscribed mode on the wire, without I/O: what each frame from the server means, and which
command it answers.

A connection in subscribed mode is not request/response.  The server pushes published messages
at any time; it acknowledges each channel of a (P|S)(UN)SUBSCRIBE with a frame of its own, in
the order the commands were sent; it answers PING with "pong"; and it answers a command it
rejects (an unknown SSUBSCRIBE, wrong arguments) with one error reply instead of any
acknowledgement.  :func:`classify` turns a parsed frame into one of those events, validating
every field it will use (a frame that does not fit is the server's fault: ProtocolError).
:class:`AckBook` pairs acknowledgements, pongs and errors with the commands sent, in order.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .._errors import ProtocolError

__all__ = ["Ack", "AckBook", "ErrorReply", "Kind", "Pong", "Published", "Sent", "classify"]

Kind = Literal["channel", "pattern", "shard"]
SUBSCRIBE: dict[Kind, str] = {
    "channel": "SUBSCRIBE",
    "pattern": "PSUBSCRIBE",
    "shard": "SSUBSCRIBE",
}
UNSUBSCRIBE: dict[Kind, str] = {
    "channel": "UNSUBSCRIBE", "pattern": "PUNSUBSCRIBE", "shard": "SUNSUBSCRIBE",
}  # fmt: skip
_ACKS: dict[str, tuple[Kind, bool]] = {
    "subscribe": ("channel", True), "unsubscribe": ("channel", False),
    "psubscribe": ("pattern", True), "punsubscribe": ("pattern", False),
    "ssubscribe": ("shard", True), "sunsubscribe": ("shard", False),
}  # fmt: skip
_TEXT = (bytes, str)


@dataclasses.dataclass(frozen=True, slots=True)
class Published:
    """A published message: ``kind`` is "message", "pmessage" or "smessage"."""

    kind: str
    channel: bytes | str
    data: bytes | str
    pattern: bytes | str | None = None

    @property
    def route(self) -> tuple[Kind, bytes | str]:
        """Which routes it goes to: (kind, the channel or the pattern that matched)."""
        if self.kind == "pmessage":
            assert self.pattern is not None
            return "pattern", self.pattern
        return ("shard" if self.kind == "smessage" else "channel"), self.channel


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """The server confirms one channel (or pattern) of a (P|S)(UN)SUBSCRIBE."""

    kind: Kind
    subscribe: bool
    name: bytes | str | None
    count: int


@dataclasses.dataclass(frozen=True, slots=True)
class Pong:
    """The answer to a keepalive PING."""


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorReply:
    """The server rejected the oldest command that has not been answered yet."""

    error: Exception


@dataclasses.dataclass(frozen=True, slots=True)
class Other:
    """A push of a kind this module does not know (a newer server's): ignored."""

    kind: str


Frame = Published | Ack | Pong | ErrorReply | Other


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _malformed(frame: Any, why: str) -> ProtocolError:
    return ProtocolError(f"malformed pub/sub frame from the server ({why}): {frame!r:.120}")


def classify(frame: Any) -> Frame:
    """What a frame read in subscribed mode means.

    Raises:
        ProtocolError: the frame is not one the server may send in subscribed mode, or a field
            has the wrong type or count.
    """
    if isinstance(frame, Exception):
        return ErrorReply(frame)
    if not isinstance(frame, list):
        if _text(frame) is not None and _text(frame).lower() == "pong":  # type: ignore[union-attr]
            return Pong()  # RESP3 answers PING with a plain reply
        raise _malformed(frame, "not a push, an acknowledgement or a pong")
    if not frame:
        raise _malformed(frame, "empty")
    head = _text(frame[0])
    if head is None:
        raise _malformed(frame, "its first element is not a kind")
    kind = head.lower()
    size = len(frame)
    if kind == "message" or kind == "smessage":
        if size != 3 or not isinstance(frame[1], _TEXT) or not isinstance(frame[2], _TEXT):
            raise _malformed(frame, f"a {kind} is [kind, channel, data]")
        return Published(kind, frame[1], frame[2])
    if kind == "pmessage":
        if size != 4 or not all(isinstance(part, _TEXT) for part in frame[1:]):
            raise _malformed(frame, "a pmessage is [kind, pattern, channel, data]")
        return Published(kind, frame[2], frame[3], frame[1])
    if kind in _ACKS:
        name, count = (frame[1], frame[2]) if size == 3 else (None, None)
        if (
            size != 3
            or not (name is None or isinstance(name, _TEXT))
            or type(count) is not int
            or count < 0
        ):
            raise _malformed(frame, f"a {kind} acknowledgement is [kind, name, count]")
        route, subscribe = _ACKS[kind]
        return Ack(route, subscribe, name, count)
    if kind == "pong":
        if size > 2:
            raise _malformed(frame, "a pong is [pong, argument]")
        return Pong()  # RESP2 answers PING in subscribed mode with an array
    return Other(kind)


Completion = Callable[[BaseException | None], None]


class Sent:
    """A command sent on a subscribed connection, waiting for its answers."""

    __slots__ = ("acked", "done", "kind", "pending", "subscribe", "written")

    def __init__(
        self, kind: Kind | None, subscribe: bool, names: Sequence[Any], done: list[Completion]
    ) -> None:
        self.kind = kind  # None: a PING
        self.subscribe = subscribe
        self.pending = list(names)  # names not acknowledged yet
        self.acked = False  # at least one acknowledgement arrived (so it cannot be rejected)
        self.done = done  # called once, with None or the server's error
        self.written: Callable[[], None] | None = None  # called once it is on the wire

    def complete(self, error: BaseException | None) -> None:
        done, self.done = self.done, []
        for callback in done:
            callback(error)


class AckBook:
    """The commands sent on one subscribed connection, in order, until each is answered.

    Acknowledgements complete the oldest command that is waiting for that name; an error reply
    answers the oldest command that has no acknowledgement yet; a pong answers the oldest PING.
    """

    def __init__(self) -> None:
        self._sent: deque[Sent] = deque()

    def __len__(self) -> int:
        return len(self._sent)

    def record(self, sent: Sent) -> None:
        """A command was written (call before the write, in write order)."""
        self._sent.append(sent)

    @property
    def pings(self) -> int:
        """PINGs not answered yet."""
        return sum(sent.kind is None for sent in self._sent)

    def awaits(self, ack: Ack) -> bool:
        """Whether a command sent is waiting for this acknowledgement (False: the server sent
        it on its own, as a cluster node's SUNSUBSCRIBE for a slot that moved away)."""
        return any(
            sent.kind == ack.kind and sent.subscribe == ack.subscribe and ack.name in sent.pending
            for sent in self._sent
        )

    def on_ack(self, ack: Ack) -> Sent | None:
        """The command this acknowledgement completes, if it is now complete (else None,
        including for an acknowledgement that answers nothing sent: ignored)."""
        for sent in self._sent:
            if (
                sent.kind == ack.kind
                and sent.subscribe == ack.subscribe
                and ack.name in sent.pending
            ):
                sent.pending.remove(ack.name)
                sent.acked = True
                if sent.pending:
                    return None
                self._sent.remove(sent)
                return sent
        return None

    def on_pong(self) -> Sent | None:
        for sent in self._sent:
            if sent.kind is None:
                self._sent.remove(sent)
                return sent
        return None  # RESP3 servers may pong a PING someone else sent: nothing to do

    def on_error(self, error: Exception) -> Sent:
        """The command this error reply answers.

        Raises:
            ProtocolError: no command is waiting for an answer it could be.
        """
        for sent in self._sent:
            if not sent.acked:
                self._sent.remove(sent)
                return sent
        raise ProtocolError(f"the server sent an error that answers no command: {error}")

    def take_all(self) -> list[Sent]:
        """Forget every command (the connection is gone); returns them, oldest first."""
        sent, self._sent = list(self._sent), deque()
        return sent
