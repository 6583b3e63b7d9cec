"""Sans-IO RESP2/RESP3: a command packer and a resumable reply parser.  No I/O, no anyio.

Theory of operation
-------------------
Bytes go in with ``parser.feed(data)``; ``parser.gets()`` returns the next complete reply, or the
:data:`NEED_DATA` sentinel.  (hiredis's own default sentinel, ``False``, collides with the RESP3
boolean ``#f``, and ``None`` with nil, so anypool uses a unique object.)  Error replies come back
as exception *instances* (redis-py's classes, via ``error_factory``), never raised: only the
caller knows whether an error reply is fatal.

Two parsers give identical results (a Hypothesis differential test holds them to it):

* :class:`PythonParser` keeps its place between calls -- a stack of the aggregates being built and
  an offset into its buffer -- so feeding a large reply chunk by chunk costs linear time, never a
  restart from the beginning.
* :class:`HiredisParser` runs hiredis, which is several times faster, but rejects RESP3 blob
  errors (``!``) and mis-counts attributes (``|``): an attribute would shift every later reply by
  one.  The wrapper keeps the input since hiredis was last at a reply boundary (up to a replay
  window of 4 MiB).  When hiredis rejects a ``!``, that stretch is replayed through a
  :class:`PythonParser`, which takes over until the next boundary, then hands back to hiredis.
  Attributes fail silently, so they are searched for: ``|`` is a type byte only right after a
  ``\\n``, and chunks containing ``\\n|`` (found by a memchr, then a regex only if ``|`` occurs)
  are replayed the same way.  A ``\\n|`` inside user data costs speed for that stretch only.
  Past the window, ``\\n!`` is searched for too, and the input is split at each hit to see
  whether it falls on a reply boundary (then the switch is still exact).  What remains: a blob
  error *nested* inside a reply that outgrew the window raises ProtocolError (loud, never a
  desync), and an attribute nested inside such a reply is counted as an element.  No Redis
  server sends either.  A null push (``>-1``, which RESP3 does not have) is searched for the
  same way: hiredis returns it as a nil *reply*, which would be taken for the next caller's.
  hiredis also does not check the CRLF after a bulk string: a bulk string whose announced length
  is wrong is read by that length, and the bytes after it are misframed.  The connection then
  has bytes left over (it is closed, never reused), or the next reply fails to parse; inside a
  pipeline, its later replies may be misread.  The pure-Python parser checks it
  (``ANYPOOL_PARSER=python`` selects it).

Failure modes are latched: after a :class:`~anypool.ProtocolError` (junk, a reply over
``max_reply_size``) or :class:`~anypool.ReplyDecodeError`, every later call raises it again, since
the position in the stream is lost; the connection owning the parser must be closed.

Types returned (identical to hiredis): simple and bulk strings, verbatim strings (format prefix
dropped) and big numbers are ``bytes`` (``str`` when an encoding is set); integers ``int``; doubles
``float``; booleans ``bool``; nulls ``None``; arrays and sets ``list``; maps ``dict``; pushes
:data:`Push` (a ``list`` subclass, so pub/sub messages are told apart from replies); attributes are
parsed and dropped.  A map that repeats a key (Redis never sends one) keeps the last value in the
Python parser, while hiredis misassigns values; the two agree on every map Redis can send.
"""

from __future__ import annotations

import codecs
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, NoReturn, Protocol

from ._compat import server_error
from ._errors import InvalidArgument, ProtocolError, ReplyDecodeError

_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency; this keeps anypool importable
    _hiredis = None

__all__ = [
    "HIREDIS_AVAILABLE",
    "NEED_DATA",
    "DEFAULT_MAX_REPLY_SIZE",
    "HiredisParser",
    "Packer",
    "Parser",
    "Push",
    "PythonParser",
    "make_parser",
]

HIREDIS_AVAILABLE: Final = _hiredis is not None and hasattr(_hiredis, "PushNotification")
DEFAULT_MAX_REPLY_SIZE: Final = 512 * 1024 * 1024


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by ``gets()`` when no complete reply is buffered yet."""

if HIREDIS_AVAILABLE:
    Push: type[list[Any]] = _hiredis.PushNotification
else:  # pragma: no cover

    class PushNotification(list[Any]):
        """A RESP3 push message (pub/sub message, invalidation...), as opposed to a reply."""

    Push = PushNotification

ErrorFactory = Callable[[str], Exception]


class Parser(Protocol):
    """What the connection needs from a parser."""

    def feed(self, data: bytes) -> None:
        """Append bytes received from the server."""

    def gets(self, decode: bool = True) -> Any:
        """Return the next complete reply, or :data:`NEED_DATA` (``decode=False``: bytes)."""

    def has_data(self) -> bool:
        """Whether bytes are buffered that are not part of a returned reply."""


def make_parser(
    *,
    encoding: str | None = None,
    errors: str = "strict",
    max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
    error_factory: ErrorFactory = server_error,
    use_hiredis: bool | None = None,
) -> PythonParser | HiredisParser:
    """Build the fastest parser available.

    Args:
        encoding: decode strings with this codec; ``None`` returns ``bytes``.
        errors: codec error handler for decoding.
        max_reply_size: bytes one reply may occupy before the parser fails.
        error_factory: turns an error reply's text into an exception instance.
        use_hiredis: force (True) or forbid (False) hiredis; ``None`` uses it when installed,
            unless the environment variable ``ANYPOOL_PARSER`` is ``python`` (strict framing,
            slower: see the module docstring).
    """
    if use_hiredis is None:
        use_hiredis = HIREDIS_AVAILABLE and os.environ.get("ANYPOOL_PARSER") != "python"
    if use_hiredis:
        return HiredisParser(
            encoding=encoding, errors=errors, max_reply_size=max_reply_size,
            error_factory=error_factory,
        )  # fmt: skip
    return PythonParser(
        encoding=encoding, errors=errors, max_reply_size=max_reply_size,
        error_factory=error_factory,
    )  # fmt: skip


# --- the pure-Python parser -------------------------------------------------------------------

# Type bytes, as ints (indexing a bytes object gives an int).
_BULK, _SIMPLE, _INT, _ERROR = ord("$"), ord("+"), ord(":"), ord("-")
_ARRAY, _MAP, _SET, _PUSH, _ATTR = ord("*"), ord("%"), ord("~"), ord(">"), ord("|")
_NULL, _BOOL, _DOUBLE, _BIGNUM = ord("_"), ord("#"), ord(","), ord("(")
_BLOB_ERROR, _VERBATIM = ord("!"), ord("=")
_AGGREGATES = frozenset({_ARRAY, _MAP, _SET, _PUSH, _ATTR})
_BLOBS = frozenset({_BULK, _BLOB_ERROR, _VERBATIM})

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DOUBLE_RE = re.compile(rb"-?(?:inf|nan|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_BIGNUM_RE = re.compile(rb"-?[0-9]+")
# A line (type byte + header) longer than this without its CRLF is junk, not a slow server.
_MAX_LINE = 64 * 1024
# Compact the buffer once this much of its front has been consumed.
_COMPACT_AT = 64 * 1024


class _Frame:
    """An aggregate being built: its type byte, the items so far, and how many are still due."""

    __slots__ = ("items", "kind", "remaining")

    def __init__(self, kind: int, remaining: int) -> None:
        self.kind = kind
        self.items: list[Any] = []
        self.remaining = remaining


def _parse_int(line: bytes | bytearray) -> int:
    """Parse ``-?[0-9]+`` strictly (``int()`` would also take spaces, ``+`` and ``_``)."""
    if line.isdigit() or (line[:1] == b"-" and line[1:].isdigit()):
        return int(line)
    raise ProtocolError(f"invalid integer in reply header: {bytes(line[:40])!r}")


def _decode_error(encoding: str | None, exc: UnicodeDecodeError) -> ReplyDecodeError:
    return ReplyDecodeError(
        f"a reply could not be decoded as {encoding} ({exc.reason}); "
        "use decode_responses=False or a lenient encoding_errors"
    )


class PythonParser:
    """The pure-Python RESP2/RESP3 parser: resumable, bounded, latched on failure."""

    def __init__(
        self,
        *,
        encoding: str | None = None,
        errors: str = "strict",
        max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
        error_factory: ErrorFactory = server_error,
    ) -> None:
        if encoding is not None:
            codecs.lookup(encoding)
        self._encoding = encoding
        self._errors = errors
        self._max_reply_size = max_reply_size
        self._error_factory = error_factory
        # Invariant: bytes before _pos belong to replies already returned or to items already
        # stored in _stack; _reply_start <= _pos marks where the reply in progress began.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._reply_start = 0
        self._stack: list[_Frame] = []
        self._failed: Exception | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the server."""
        if self._failed is not None:
            raise self._failed
        if not data:
            return
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            # Everything buffered was consumed: start over without copying.
            self._buf = data if type(data) is bytes else bytes(data)
            self._reply_start -= pos
            self._pos = 0
            return
        if isinstance(buf, bytes):
            growing = bytearray(buf[pos:])
            self._reply_start -= pos
            self._pos = 0
        else:
            growing = buf
            if pos >= _COMPACT_AT:
                del growing[:pos]
                self._reply_start -= pos
                self._pos = 0
        growing += data
        self._buf = growing

    def has_data(self) -> bool:
        """Whether bytes are buffered that are not part of a returned reply."""
        return self._pos < len(self._buf) or bool(self._stack)

    def is_clean(self) -> bool:
        """Whether the parser sits exactly at a reply boundary with nothing buffered."""
        return not self.has_data()

    def gets(self, decode: bool = True) -> Any:
        """Return the next complete reply, or :data:`NEED_DATA`.

        Args:
            decode: False returns this reply's strings as bytes even when an encoding is set
                (redis-py's NEVER_DECODE, e.g. for DUMP).  Use the same value until the reply
                is complete.

        Raises:
            ProtocolError: the input is not RESP, or a reply exceeds ``max_reply_size``.
            ReplyDecodeError: a string cannot be decoded with the configured encoding.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._parse(self._encoding if decode else None)
        except (ProtocolError, ReplyDecodeError) as exc:
            self._failed = exc
            raise
        except UnicodeDecodeError as exc:
            self._failed = _decode_error(self._encoding, exc)
            raise self._failed from exc

    def _parse(self, encoding: str | None) -> Any:
        buf, pos, stack = self._buf, self._pos, self._stack
        end = len(buf)
        errors = self._errors
        value: Any
        while True:
            if not stack:
                self._reply_start = pos
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > _MAX_LINE:
                    raise ProtocolError(f"a reply header is longer than {_MAX_LINE} bytes")
                break
            kind = buf[pos]
            if kind in _BLOBS:
                length = _parse_int(buf[pos + 1 : eol])
                if length < 0:
                    if length != -1 or kind != _BULK:
                        raise ProtocolError(f"invalid length {length} in a {chr(kind)} reply")
                    value = None
                    pos = eol + 2
                else:
                    if length > self._max_reply_size:
                        raise ProtocolError(
                            f"the server announced a {length}-byte string, more than "
                            f"max_reply_size ({self._max_reply_size})"
                        )
                    start = eol + 2
                    stop = start + length
                    if stop + 2 > end:
                        break
                    if buf[stop : stop + 2] != b"\r\n":
                        raise ProtocolError("a bulk string is not followed by CRLF")
                    value = buf[start:stop]
                    if type(value) is not bytes:
                        value = bytes(value)
                    pos = stop + 2
                    if kind == _BULK:
                        if encoding is not None:
                            value = value.decode(encoding, errors)
                    elif kind == _VERBATIM:
                        if length < 4 or value[3:4] != b":":
                            raise ProtocolError("a verbatim string lacks its 3-letter format")
                        value = value[4:]
                        if encoding is not None:
                            value = value.decode(encoding, errors)
                    else:
                        value = self._error_factory(value.decode("utf-8", "replace"))
            elif kind in _AGGREGATES:
                count = _parse_int(buf[pos + 1 : eol])
                pos = eol + 2
                if count > 0:
                    stack.append(_Frame(kind, count * 2 if kind in (_MAP, _ATTR) else count))
                    continue
                if count == 0:
                    if kind == _ATTR:
                        continue
                    value = {} if kind == _MAP else Push() if kind == _PUSH else []
                elif count == -1 and kind != _ATTR and kind != _PUSH:
                    value = None  # (RESP3 has no null push: it would be taken for a reply)
                else:
                    raise ProtocolError(f"invalid length {count} in a {chr(kind)} reply")
            else:
                line = buf[pos + 1 : eol]
                pos = eol + 2
                if kind in (_SIMPLE, _ERROR):
                    if b"\r" in line or b"\n" in line:
                        raise ProtocolError("a simple string contains CR or LF")
                    value = bytes(line)
                    if kind == _ERROR:
                        value = self._error_factory(value.decode("utf-8", "replace"))
                    elif encoding is not None:
                        value = value.decode(encoding, errors)
                elif kind == _INT:
                    value = _parse_int(line)
                    if not _INT64_MIN <= value <= _INT64_MAX:
                        raise ProtocolError(f"integer reply {value} is outside the 64-bit range")
                elif kind == _NULL:
                    if line:
                        raise ProtocolError("a null reply has content")
                    value = None
                elif kind == _BOOL:
                    if line == b"t":
                        value = True
                    elif line == b"f":
                        value = False
                    else:
                        raise ProtocolError(f"invalid boolean reply {bytes(line[:40])!r}")
                elif kind == _DOUBLE:
                    if _DOUBLE_RE.fullmatch(line) is None:
                        raise ProtocolError(f"invalid double reply {bytes(line[:40])!r}")
                    value = float(line)
                elif kind == _BIGNUM:
                    if _BIGNUM_RE.fullmatch(line) is None:
                        raise ProtocolError(f"invalid big number reply {bytes(line[:40])!r}")
                    value = bytes(line)
                    if encoding is not None:
                        value = value.decode(encoding, errors)
                else:
                    raise ProtocolError(f"invalid reply type byte {bytes([kind])!r}")

            # Deliver the value to the aggregate awaiting it, closing every aggregate it
            # completes; a value that completes the whole reply is returned.
            while True:
                if not stack:
                    self._pos = pos
                    return value
                frame = stack[-1]
                frame.items.append(value)
                frame.remaining -= 1
                if frame.remaining:
                    break
                stack.pop()
                items = frame.items
                if frame.kind == _ARRAY or frame.kind == _SET:
                    value = items
                elif frame.kind == _MAP:
                    try:
                        value = dict(zip(items[::2], items[1::2], strict=True))
                    except TypeError:
                        raise ProtocolError("a map reply has a key Python cannot hash") from None
                elif frame.kind == _PUSH:
                    value = Push(items)
                else:
                    # An attribute is dropped: the element after it fills the slot it preceded.
                    break
        # Not enough data: keep our place.
        self._pos = pos
        if end - self._reply_start > self._max_reply_size:
            raise ProtocolError(
                f"a reply exceeds max_reply_size ({self._max_reply_size} bytes) "
                "and is still incomplete"
            )
        return NEED_DATA


# --- the hiredis parser -----------------------------------------------------------------------

# Where an attribute may start: "|" is a type byte only right after a "\n".
# Where hiredis cannot be trusted: an attribute ("|", which it counts as an element) and a null
# push (">-1", which it returns as a nil *reply*, so the replies after it would be taken for the
# ones before).
_ATTRIBUTE_START = re.compile(rb"\n(?:\||>-)")
# Past the replay window, blob errors ("!") are searched for as well (see _feed_hit).
_ATTRIBUTE_OR_BLOB_ERROR_START = re.compile(rb"\n(?:[|!]|>-)")
# How much input since hiredis was last at a reply boundary is kept for a replay.
_REPLAY_WINDOW = 4 * 1024 * 1024


class HiredisParser:
    """hiredis, made safe for RESP3 blob errors and attributes (see the module docstring).

    ``replay_window`` bounds the input kept for a replay (default 4 MiB); tests shrink it to
    exercise the past-the-window path.
    """

    def __init__(
        self,
        *,
        encoding: str | None = None,
        errors: str = "strict",
        max_reply_size: int = DEFAULT_MAX_REPLY_SIZE,
        error_factory: ErrorFactory = server_error,
        replay_window: int = _REPLAY_WINDOW,
    ) -> None:
        if not HIREDIS_AVAILABLE:  # pragma: no cover
            raise RuntimeError("hiredis >= 3.2 is not installed")
        if encoding is not None:
            codecs.lookup(encoding)
        self._encoding = encoding
        self._errors = errors
        self._max_reply_size = max_reply_size
        self._error_factory = error_factory
        self._replay_window = replay_window
        self._reader = self._new_reader()
        # Invariants.  _clean: the reader sits at a reply boundary with nothing buffered.
        # Otherwise _replay holds every chunk fed since it last did (None once that passed the
        # replay window) and _returned counts the replies the reader produced since then.
        self._clean = True
        self._replay: list[bytes] | None = []
        self._replay_size = 0
        self._returned = 0
        # Bytes fed since the last complete reply, for the max_reply_size cap (approximate by
        # at most one chunk: it may include the tail of the chunk that ended the last reply).
        self._pending = 0
        # Whether the last byte fed was "\n", so a chunk's first byte may be a type byte.
        self._line_start = True
        # Whether the last byte fed was a ">" type byte, so a chunk starting "-" is a null push.
        self._after_push_type = False
        # Replies parsed ahead while locating a hit, returned before anything else.
        self._ready: deque[Any] = deque()
        # The pure-Python parser handling a stretch hiredis cannot, or None.
        self._fallback: PythonParser | None = None
        self._failed: Exception | None = None
        # True while any of _ready, _fallback, _failed is set: one test keeps the fast path fast.
        self._slow = False

    def _new_reader(self) -> Any:
        options: dict[str, Any] = {
            "notEnoughData": NEED_DATA,
            "protocolError": ProtocolError,
            "replyError": self._error_factory,
            "errors": self._errors,
        }
        if self._encoding is not None:
            options["encoding"] = self._encoding
        return _hiredis.Reader(**options)

    def has_data(self) -> bool:
        """Whether bytes are buffered that are not part of a returned reply."""
        if self._slow and (
            self._ready or (self._fallback is not None and self._fallback.has_data())
        ):
            return True
        return not self._clean

    # --- feeding ------------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the server."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._slow:
            if self._failed is not None:
                raise self._failed
            if self._fallback is not None:
                self._fallback.feed(data)
                return
        if not data:
            return
        # Within the replay window only "|" is searched for: a "!" that hiredis rejects can
        # still be replayed.  Past it (rare: a stretch of more than the window without a reply
        # boundary, counting this chunk), "!" is searched for too.
        past_window = not self._clean and (
            self._replay is None or self._replay_size + len(data) > self._replay_window
        )
        # The regex runs only when such a byte occurs at all.
        # `int in bytes` is a memchr: five times faster than `b"|" in data`, and the 2-byte
        # search runs only when a ">" occurs at all.
        null_push_split = self._after_push_type and data[0] == 0x2D  # ">" | "-1..."
        last = data[-1]
        if last == 0x3E:
            self._after_push_type = data[-2:-1] == b"\n" if len(data) > 1 else self._line_start
        else:
            self._after_push_type = False
        if (
            0x7C in data
            or (0x3E in data and b">-" in data)
            or null_push_split
            or (past_window and 0x21 in data)
        ):
            if null_push_split or (
                self._line_start and (data[0] in (0x7C, 0x21) or data.startswith(b">-"))
            ):
                hit = 0
            else:
                pattern = _ATTRIBUTE_OR_BLOB_ERROR_START if past_window else _ATTRIBUTE_START
                match = pattern.search(data)
                hit = -1 if match is None else match.start() + 1
            if hit >= 0:
                self._line_start = last == 0x0A
                self._feed_hit(data, hit)
                return
        self._line_start = last == 0x0A
        self._feed_reader(data)

    def _feed_reader(self, data: bytes) -> None:
        self._reader.feed(data)
        size = len(data)
        if self._clean:
            self._clean = False
            self._replay, self._replay_size, self._returned = [data], size, 0
        elif self._replay is not None:
            self._replay.append(data)
            self._replay_size += size
            if self._replay_size > self._replay_window:
                self._replay = None
        self._pending += size
        if self._pending > self._max_reply_size:
            self._fail(
                ProtocolError(
                    f"a reply exceeds max_reply_size ({self._max_reply_size} bytes) "
                    "and is still incomplete"
                )
            )

    def _refuse_oversized_announcement(self, data: bytes) -> None:
        """A reply announcing more than max_reply_size fails at once, as in the Python parser,
        instead of waiting for data a hostile or broken server may never send.  Checked only
        while a reply is incomplete, so complete replies pay nothing."""
        if data[:1] not in (b"$", b"!", b"="):
            return
        end = data.find(b"\r\n", 1, 24)
        header = data[1:end] if end > 0 else b""
        if header.isdigit() and int(header) > self._max_reply_size:
            self._fail(
                ProtocolError(
                    f"the server announced a {int(header)}-byte string, more than "
                    f"max_reply_size ({self._max_reply_size})"
                )
            )

    def _feed_hit(self, data: bytes, hit: int) -> None:
        """``data[hit]`` may start an attribute (which hiredis would count as an element) or,
        past the replay window, a blob error: find out, and hand the stretch to the Python
        parser if so."""
        while True:
            if self._fallback is not None:  # a replay began while draining
                self._fallback.feed(data)
                return
            if self._clean:
                self._start_fallback([data], skip=0)
                return
            replay = self._replay
            if replay is not None:
                self._start_fallback([*replay, data], skip=self._returned)
                return
            if hit:
                # Past the replay window: split at the hit; if a reply boundary is reached on
                # the way, the checks above can replay exactly from there.
                self._feed_reader(data[:hit])
                data, hit = data[hit:], 0
                self._drain()
                continue
            # Inside a reply that outgrew the window: a bulk string's content (data, as
            # hiredis takes it) or a nested type byte, which no Redis server sends; hiredis
            # rejects a nested "!" (ProtocolError) and counts a nested "|" as an element.
            match = _ATTRIBUTE_OR_BLOB_ERROR_START.search(data, 1)
            if match is None:
                self._feed_reader(data)
                return
            hit = match.start() + 1

    def _start_fallback(self, chunks: list[bytes], skip: int) -> None:
        """Re-parse the stretch since the last boundary in Python, skipping the ``skip``
        replies the reader already produced from it."""
        fallback = PythonParser(
            encoding=self._encoding, errors=self._errors, max_reply_size=self._max_reply_size,
            error_factory=self._error_factory,
        )  # fmt: skip
        self._fallback = fallback
        self._slow = True
        self._reader = self._new_reader()
        self._clean, self._replay, self._replay_size, self._returned = True, [], 0, 0
        self._pending = 0
        try:
            fallback.feed(b"".join(chunks))
            for _ in range(skip):
                fallback.gets()
        except (ProtocolError, ReplyDecodeError) as exc:
            self._fail(exc)

    # --- reading ------------------------------------------------------------------------------

    def gets(self, decode: bool = True) -> Any:
        """Return the next complete reply, or :data:`NEED_DATA`.

        Args:
            decode: as :meth:`PythonParser.gets`.

        Raises:
            ProtocolError: the input is not RESP, or a reply exceeds ``max_reply_size``.
            ReplyDecodeError: a string cannot be decoded with the configured encoding.
        """
        if self._slow:
            return self._gets_slow(decode)
        return self._reader_gets(decode)

    def _reader_gets(self, decode: bool = True) -> Any:
        try:
            reply = self._reader.gets(decode)
        except ProtocolError as exc:
            replay = self._replay
            if replay is None:
                self._fail(exc)
            # Perhaps a blob error ("!"), which hiredis rejects: replay the stretch since the
            # last boundary in Python, which parses it (or fails on real junk, latched).
            self._start_fallback(replay, skip=self._returned)
            return self._fallback_gets(decode)
        except UnicodeDecodeError as exc:
            self._fail(_decode_error(self._encoding, exc), exc)
        except TypeError:
            self._fail(ProtocolError("a map reply has a key Python cannot hash"))
        if reply is not NEED_DATA:
            self._pending = 0
            if self._reader.has_data():
                self._returned += 1
            else:
                self._clean = True
        elif not self._clean and not self._returned and self._replay:
            # the first reply since a boundary is incomplete: is it even allowed to be this big?
            self._refuse_oversized_announcement(self._replay[0])
        return reply

    def _gets_slow(self, decode: bool) -> Any:
        if self._failed is not None:
            raise self._failed
        if self._ready:
            reply = self._ready.popleft()
            self._slow = bool(self._ready) or self._fallback is not None
            return reply
        if self._fallback is None:  # pragma: no cover - _slow implies one of the three
            self._slow = False
            return self._reader_gets(decode)
        return self._fallback_gets(decode)

    def _fallback_gets(self, decode: bool) -> Any:
        fallback = self._fallback
        assert fallback is not None
        try:
            reply = fallback.gets(decode)
        except (ProtocolError, ReplyDecodeError) as exc:
            self._fail(exc)
        if reply is not NEED_DATA and fallback.is_clean():
            # Back at a boundary with nothing buffered: hand the stream back to hiredis.
            self._fallback = None
            self._slow = bool(self._ready)
            self._line_start = True
        return reply

    def _drain(self) -> None:
        """Move every complete reply from the reader into ``_ready``."""
        while (reply := self._reader_gets()) is not NEED_DATA:
            self._ready.append(reply)
            self._slow = True

    def _fail(self, exc: Exception, cause: BaseException | None = None) -> NoReturn:
        self._failed = exc
        self._slow = True
        if cause is not None:
            raise exc from cause
        raise exc


# --- the packer -------------------------------------------------------------------------------

Arg = str | bytes | bytearray | memoryview | int | float


class Packer:
    """Encodes commands as RESP arrays of bulk strings.

    Arguments may be ``str`` (encoded with ``encoding``; the first, the command's name, always
    as UTF-8, as redis-py does), ``bytes``, ``bytearray``,
    ``memoryview``, ``int`` (``IntEnum`` packs its value) or ``float`` (packed as ``repr()``, as
    redis-py does).  Anything else, including ``bool`` and ``None``, raises
    :class:`~anypool.InvalidArgument` naming the position and the type, since silently packing
    ``True`` or ``None`` as text is a classic source of wrong data.
    """

    __slots__ = ("_encoding", "_errors", "_hiredis_pack")

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self._encoding = encoding
        self._errors = errors
        # hiredis packs exactly what this class does, provided str means strict UTF-8; it refuses
        # (TypeError) bool, None, IntEnum and bytearray, which then take the Python path.
        exact = codecs.lookup(encoding).name == "utf-8" and errors == "strict"
        self._hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None = (
            _hiredis.pack_command if HIREDIS_AVAILABLE and exact else None
        )

    def pack(self, args: Sequence[Arg]) -> bytes:
        """Encode one command.

        Raises:
            InvalidArgument: an argument has an unsupported type, or the command is empty.
        """
        if self._hiredis_pack is not None:
            try:
                packed: bytes = self._hiredis_pack(args if type(args) is tuple else tuple(args))
            except (TypeError, UnicodeEncodeError):
                pass
            else:
                if len(args):
                    return packed
        return self._pack_python(args)

    def pack_commands(self, commands: Sequence[Sequence[Arg]]) -> bytes:
        """One or several commands, whichever is faster (see :meth:`pack`)."""
        return self.pack(commands[0]) if len(commands) == 1 else self.pack_many(commands)

    def pack_many(self, commands: Iterable[Sequence[Arg]]) -> bytes:
        """Encode several commands into one buffer, for a single write."""
        return b"".join([self.pack(command) for command in commands])

    def _pack_python(self, args: Sequence[Arg]) -> bytes:
        if not len(args):
            raise InvalidArgument("a command needs at least its name")
        out: list[bytes | bytearray | memoryview] = [b"*%d\r\n" % len(args)]
        encoding, errors = self._encoding, self._errors
        for position, arg in enumerate(args):
            data: bytes | bytearray | memoryview
            if isinstance(arg, bytes | bytearray):
                data = arg
            elif isinstance(arg, str):
                # The command's name is ASCII whatever the arguments' encoding (as redis-py).
                data = arg.encode() if position == 0 else arg.encode(encoding, errors)
            elif isinstance(arg, bool) or not isinstance(arg, int | float | memoryview):
                raise InvalidArgument(
                    f"argument {position} of {_command_name(args)!r} is of type "
                    f"{type(arg).__name__}: Redis accepts str, bytes, bytearray, memoryview, "
                    "int or float; convert it first"
                )
            elif isinstance(arg, int):
                data = b"%d" % arg
            elif isinstance(arg, float):
                data = repr(arg).encode()
            else:
                data = arg
                out.append(b"$%d\r\n" % arg.nbytes)
                out.append(data)
                out.append(b"\r\n")
                continue
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
        return b"".join(out)


def _command_name(args: Sequence[Any]) -> str:
    name = args[0]
    if isinstance(name, bytes | bytearray):
        return bytes(name).decode("utf-8", "replace")
    return str(name)
