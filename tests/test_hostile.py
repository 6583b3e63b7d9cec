"""Hypothesis drives a hostile fake Redis (tests/hostile_server.py) against a real RedisPool.

The guarantee under test
------------------------
Per request, chosen by Hypothesis, the server answers correctly or misbehaves: garbage instead
of a reply, an unsolicited extra reply, a reply cut short then a hang-up, malformed replies (bad
lengths, bad integers, odd types, unhashable map keys, nested junk), RESP3 push frames (valid
or malformed) before the reply, a closed or reset connection, or no answer at all; the
handshake (HELLO) and pub/sub frames get the same treatment.  Whatever it does:

* a command returns *its own* correct reply, or raises one of the documented exceptions
  (anypool.ProtocolError, anypool.ConnectionError and its subclasses, anypool.TimeoutError,
  anypool.PoolTimeout, anypool.PoolUnavailable, anypool.ReplyDecodeError, or a
  redis.exceptions.ResponseError when the server sent an error reply for that very request);
  never another request's reply, never a value for a request the server sent no valid reply
  to, never any other exception, never a hang (every command is bounded by socket_timeout /
  connect_timeout, and by an outer limit of COMMAND_BOUND seconds that only a hang reaches);
* nothing escapes the pool's task group: leaving ``async with RedisPool(...)`` raises nothing;
* afterwards the pool's books balance (in_use, requests_waiting and opening are 0), every
  connection the pool opened is closed, and once the server behaves again, every connection
  the pool still holds answers correctly (the "clean phase").

Every request carries a unique number: ``ECHO t<n>`` must return ``t<n>`` and ``GET k<n>`` the
value the server derives from the key, so a reply delivered to the wrong caller is visible.
Several tasks (and pipelines) run at once on a small pool, so replies could cross.  Each example
runs with auto-pipelining on or off (drawn): single commands share connections, or each takes
its own.

What the server may and may not do
----------------------------------
A client cannot tell stray bytes that arrive *after* it sent its next request from the reply to
that request.  So the server only sends bytes nobody asked for

1. in the *same write* (one ``send``) as the last reply the client is owed on that connection
   (``Answer.extra``; never after a reply that is followed by more owed replies of a pipeline,
   nor after the reply to an auto-pipelined command, whose connection other callers' commands
   may share), so they arrive together with that reply; or
2. by ``HostileServer.inject``, while *no* command is in flight anywhere (the test holds an
   exclusive gate that every command otherwise shares), and the gate is released only once the
   client's kernel has acknowledged the bytes (TIOCOUTQ is 0): they are in the client's hands
   (in its socket buffer, or already in user space) before any other request can be sent.

Likewise a malformed *reply* is only one a client can detect: replies that are valid RESP but
of an odd type carry the request's number, so a correct client returns exactly them; frames
that would shift a correct client's framing (a push announcing fewer elements than it has) are
never sent.  Malformed pub/sub frames are self-contained RESP values (or outright junk).

Transports: on asyncio the Protocol-based stream (the default) and anyio's streams
(ANYPOOL_TRANSPORT=anyio); on trio, anyio's streams.  Each Hypothesis example runs in a fresh
event loop (``anyio.run``), server and pool together, on 127.0.0.1 only.

``HOSTILE_EXAMPLES`` / ``HOSTILE_PUBSUB_EXAMPLES`` set the example counts per transport (default
60 / 60).
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel
import pytest
import redis.exceptions
from hypothesis import HealthCheck, Phase, currently_in_test_context, given, note, settings
from hypothesis import strategies as st

import anypool
from anypool import BackoffPolicy, BreakerPolicy, Message, Reconnected, RedisConfig, RedisPool
from anypool._resp import HIREDIS_AVAILABLE, NEED_DATA, Push, make_parser

from .backends import UVLOOP, needs_uvloop, run
from .hostile_server import (
    CHANNEL,
    END,
    FILL_64K,
    INVALID_PUSHES,
    INVALID_REPLIES,
    OK,
    STRAYS,
    VALID_PUSHES,
    Answer,
    Body,
    Expect,
    HarnessError,
    Hello,
    HelloKind,
    HostileServer,
    PubFrame,
    PubKind,
    key,
    payload,
    render,
    token,
)

TRANSPORTS = ["asyncio-protocol", "asyncio-anyio", "uvloop-protocol", "uvloop-anyio", "trio"]
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "60"))
PUBSUB_EXAMPLES = int(os.environ.get("HOSTILE_PUBSUB_EXAMPLES", "60"))
SOCKET_TIMEOUT = 0.15  # a request the server never answers costs this much (>100x a round trip)
COMMAND_BOUND = 10.0  # only a hang gets here
EXAMPLE_BOUND = 30.0
CLEAN_TIMEOUT = 5.0  # the clean phase must not fail by a timeout on a loaded machine

DOCUMENTED: tuple[type[BaseException], ...] = (
    anypool.ProtocolError,
    anypool.ConnectionError,  # ConnectionLost, ConnectionClosed, ConnectError, ConnectTimeout
    anypool.TimeoutError,
    anypool.PoolTimeout,
    anypool.PoolUnavailable,
    anypool.ReplyDecodeError,
)

HYPOTHESIS = settings(
    deadline=None,
    # no "explain" phase: it replays a failing example dozens of times, seconds each here
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # monkeypatch sets the same variable each time
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _hiredis_in_use() -> bool:
    return HIREDIS_AVAILABLE and os.environ.get("ANYPOOL_PARSER") != "python"


def use_transport(monkeypatch: pytest.MonkeyPatch, transport: str) -> str:
    """Select the byte stream under test; ANYPOOL_TRANSPORT is read at each connect."""
    assert transport in TRANSPORTS
    if transport.endswith("-anyio"):
        monkeypatch.setenv("ANYPOOL_TRANSPORT", "anyio")
    else:
        monkeypatch.delenv("ANYPOOL_TRANSPORT", raising=False)
    _note(f"transport={transport}")
    return transport


def _note(text: str) -> None:
    """Hypothesis's note() inside a Hypothesis test (shown with the failing example), else
    print (shown by pytest with a failure)."""
    if currently_in_test_context():
        note(text)
    else:
        print(text)


def _backend(transport: str) -> str:
    """The backend id (tests/backends.py) a transport runs on."""
    if transport == "trio":
        return "trio"
    return UVLOOP if transport.startswith("uvloop-") else "asyncio"


def _expected_stream(transport: str) -> str:
    return "_AsyncioStream" if transport.endswith("-protocol") else "SocketStream"


# --- findings ---------------------------------------------------------------------------------


class Finding(AssertionError):
    """A broken guarantee.  One subclass per kind, so Hypothesis reports each kind apart."""


class EscapedThePool(Finding):
    pass


class CrossDelivery(Finding):
    pass


class AcceptedInvalidReply(Finding):
    pass


class WrongValue(Finding):
    pass


class UndocumentedException(Finding):
    pass


class UnexpectedResponseError(Finding):
    pass


class Hang(Finding):
    pass


class CleanPhaseFailed(Finding):
    pass


class BooksUnbalanced(Finding):
    pass


class ConnectionsLeaked(Finding):
    pass


class MessageStreamBroken(Finding):
    pass


class HarnessFailed(Finding):
    """Not about the library: the test's own machinery misbehaved."""


_ORDER: list[type[Finding]] = [
    HarnessFailed, EscapedThePool, CrossDelivery, AcceptedInvalidReply, WrongValue,
    UndocumentedException, UnexpectedResponseError, MessageStreamBroken, Hang, CleanPhaseFailed,
    BooksUnbalanced, ConnectionsLeaked,
]  # fmt: skip


@dataclasses.dataclass
class Report:
    problems: list[tuple[type[Finding], str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, kind: type[Finding], text: str) -> None:
        self.problems.append((kind, text))

    def raise_first(self) -> None:
        for line in self.notes:
            _note(line)
        if not self.problems:
            return
        kinds = {kind for kind, _ in self.problems}
        first = next(kind for kind in _ORDER if kind in kinds)
        text = "\n".join(f"  [{kind.__name__}] {what}" for kind, what in self.problems)
        raise first(f"{len(self.problems)} problem(s):\n{text}")


def _describe(exc: BaseException) -> str:
    """The exception, where it was raised, and what a group holds."""
    text = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        inner = "; ".join(_describe(e) for e in exc.exceptions)
        return f"{text} [{inner}]"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        where = frames[-1]
        text += f" (raised at {os.path.basename(where.filename)}:{where.lineno} in {where.name})"
    return text


def _check_books(redis: RedisPool, report: Report) -> None:
    stats = redis.statistics()
    if stats.in_use or stats.requests_waiting or stats.opening:
        report.add(
            BooksUnbalanced,
            f"after the pool closed: in_use={stats.in_use} "
            f"requests_waiting={stats.requests_waiting} opening={stats.opening}",
        )


async def _check_closed(server: HostileServer, report: Report) -> None:
    if not await server.all_closed(timeout=5.0):
        report.add(
            ConnectionsLeaked, f"{server.open_connections} connection(s) still open 5s after exit"
        )


# --- the command scenario ---------------------------------------------------------------------

Op = Literal["echo", "get"]


@dataclasses.dataclass(frozen=True)
class Command:
    """One call: a single ECHO/GET, or a pipeline of them (transaction=False).

    ``late``: after the call, inject these bytes on the connection that answered its last
    request (see HostileServer.inject and the module docstring).
    """

    ops: tuple[tuple[Op, int], ...]
    pipeline: bool
    late: bytes | None = None


@dataclasses.dataclass(frozen=True)
class Scenario:
    protocol: int
    decode: bool
    max_size: int
    tasks: tuple[tuple[Command, ...], ...]
    answers: dict[int, Answer]
    hellos: tuple[Hello, ...]
    autopipeline: bool = False

    def expect(self, op: Op, n: int) -> Expect:
        return render(self.answers.get(n, OK), n, op, self.decode)[1]


BODIES: list[Body] = [
    "ok", "simple", "verbatim", "array", "set", "map", "attr", "nested_attr", "int", "double",
    "bignum", "null", "nil", "bad_utf8", "error", "blob_error",
    "invalid", "short_len", "long_len", "truncate", "none",
]  # fmt: skip
# An invalid type byte, anything, CRLF: no RESP parser may take it for a reply.
_JUNK_TYPE_BYTES = sorted(set(range(256)) - set(b"$+:-*%~>|_#,(!=\r\n"))
junk_replies = st.builds(
    lambda first, rest: bytes([first]) + rest.replace(b"\r\n", b"") + b"\r\n",
    st.sampled_from(_JUNK_TYPE_BYTES),
    st.binary(max_size=12),
)


PUSHES = VALID_PUSHES + INVALID_PUSHES
LATE = (None, None, None, *STRAYS)  # what to inject after a command (mostly nothing)
HELLO_KINDS: tuple[HelloKind, ...] = (
    "ok", "push_first", "split", "unknown", "noproto", "error", "wrong_type", "garbage",
    "close", "hang", "extra", "odd_fields",
)  # fmt: skip
GET_SIZES = st.sampled_from([None, FILL_64K]) | st.integers(1000, 140_000)


@st.composite
def answers(draw: st.DrawFn, op: Op, last: bool) -> Answer:
    """How the server answers one request; ``last``: no more replies are owed after it."""
    if not draw(st.booleans()):
        return OK
    body = draw(st.sampled_from(BODIES))
    return Answer(
        body=body,
        invalid=draw(st.sampled_from(INVALID_REPLIES) | junk_replies) if body == "invalid" else b"",
        cut=draw(st.integers(0, 30)) if body == "truncate" else 0,
        pushes=tuple(draw(st.lists(st.sampled_from(PUSHES), max_size=2))),
        extra=draw(st.sampled_from((b"", *STRAYS))) if last else b"",
        then=draw(st.sampled_from(["keep", "keep", "close", "rst", "hang"])),
        splits=tuple(draw(st.lists(st.integers(1, 60), max_size=3))),
        size=draw(GET_SIZES) if op == "get" else None,
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    protocol = draw(st.sampled_from([3, 2]))
    # Auto-pipelined single commands share a connection: the server cannot know a reply is
    # the last one owed on it, so it sends no stray with them (no client could tell such a
    # stray from the next caller's reply).  Pipelines keep their exclusive connections.
    autopipeline = draw(st.booleans())
    counter = iter(range(1, 10_000))
    scripted: dict[int, Answer] = {}
    tasks = []
    for _ in range(draw(st.integers(1, 8))):  # client tasks, running at once
        commands = []
        for _ in range(draw(st.integers(1, 4))):
            pipeline = draw(st.booleans())
            count = draw(st.integers(2, 3)) if pipeline else 1
            ops: list[tuple[Op, int]] = []
            for position in range(count):
                op: Op = draw(st.sampled_from(["echo", "get"]))
                n = next(counter)
                last = position == count - 1 and (pipeline or not autopipeline)
                answer = draw(answers(op, last=last))
                if answer != OK:
                    scripted[n] = answer
                ops.append((op, n))
            late = draw(st.sampled_from(LATE))
            commands.append(Command(tuple(ops), pipeline, late))
        tasks.append(tuple(commands))
    hellos: tuple[Hello, ...] = ()
    if protocol == 3:
        kinds = draw(st.lists(st.sampled_from(HELLO_KINDS), max_size=4))
        hellos = tuple(Hello(kind) for kind in kinds)
    return Scenario(
        protocol=protocol,
        decode=draw(st.booleans()),
        max_size=draw(st.sampled_from([4, 2, 1])),
        tasks=tuple(tasks),
        answers=scripted,
        hellos=hellos,
        autopipeline=autopipeline,
    )


# --- judging one command ----------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    hang: bool = False


def _stray_values(decode: bool) -> list[Any]:
    """What the strays parse to, to tell a cross-delivered stray from other wrong values."""
    values = []
    for stray in STRAYS:
        parser = make_parser(use_hiredis=False, encoding="utf-8" if decode else None)
        parser.feed(stray)
        try:
            reply = parser.gets()
        except anypool.ProtocolError:
            continue
        if reply is not NEED_DATA and type(reply) is not Push:
            values.append(reply)
    return values


def _same(got: Any, expected: Any) -> bool:
    if type(got) is not type(expected):
        return False
    if isinstance(got, list):
        return len(got) == len(expected) and all(map(_same, got, expected))
    if isinstance(got, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k]) for k in got)
    return bool(got == expected)


def _owner(scenario: Scenario, got: Any, n: int) -> str | None:
    """Whose reply ``got`` is, if it belongs to another request or is a stray."""
    for commands in scenario.tasks:
        for command in commands:
            for op, other in command.ops:
                if other == n:
                    continue
                # what the body alone parses to, even if an invalid push came before it
                answer = dataclasses.replace(scenario.answers.get(other, OK), pushes=())
                expect = render(answer, other, op, scenario.decode)[1]
                if expect.kind == "value" and expect.value is not None and _same(got, expect.value):
                    return f"request {other}'s reply ({op.upper()})"
                if (
                    expect.kind == "error"
                    and isinstance(got, redis.exceptions.ResponseError)
                    and expect.error in str(got)
                ):
                    return f"request {other}'s error reply ({op.upper()})"
    if any(_same(got, stray) for stray in _stray_values(scenario.decode)):
        return "a stray the server sent unsolicited"
    hello_stray = Hello().extra[5:-2]
    if _same(got, hello_stray.decode() if scenario.decode else hello_stray):
        return "the stray the server sent with its HELLO reply"
    if isinstance(got, redis.exceptions.ResponseError) and "stray" in str(got):
        return "a stray error reply"
    return None


def _judge_value(scenario: Scenario, op: Op, n: int, got: Any, report: Report, where: str) -> None:
    expect = scenario.expect(op, n)
    answer = scenario.answers.get(n, OK)
    if isinstance(got, redis.exceptions.ResponseError) and not isinstance(
        got, anypool.AnyPoolError
    ):
        if expect.kind == "error" and expect.error in str(got):
            return
    elif expect.kind == "value" and _same(got, expect.value):
        return
    elif expect.lax is not None and _hiredis_in_use() and _same(got, expect.lax):
        return  # hiredis took a bulk string by its announced length (documented)
    owner = _owner(scenario, got, n)
    what = f"{where}{op.upper()} #{n} returned {got!r}; the server sent {answer} -> {expect}"
    if owner is not None:
        report.add(CrossDelivery, f"{what}; that is {owner}")
    elif expect.kind == "fail":
        report.add(AcceptedInvalidReply, what)
    else:
        report.add(WrongValue, what)


def judge(scenario: Scenario, command: Command, outcome: Outcome, report: Report) -> None:
    name = " ".join(f"{op.upper()} #{n}" for op, n in command.ops)
    if command.pipeline:
        name = f"pipeline[{name}]"
    if outcome.hang:
        report.add(Hang, f"{name} did not finish within {COMMAND_BOUND}s")
        return
    error = outcome.error
    if error is not None:
        if isinstance(error, DOCUMENTED):
            return
        if isinstance(error, redis.exceptions.ResponseError) and not command.pipeline:
            op, n = command.ops[0]
            expect = scenario.expect(op, n)
            if expect.kind == "error" and expect.error in str(error):
                return
            owner = _owner(scenario, error, n)
            what = (
                f"{name} raised {_describe(error)}; the server sent "
                f"{scenario.answers.get(n, OK)} -> {expect}"
            )
            if owner is not None:
                report.add(CrossDelivery, f"{what}; that is {owner}")
            else:
                report.add(UnexpectedResponseError, what)
            return
        report.add(UndocumentedException, f"{name} raised {_describe(error)}")
        return
    if not command.pipeline:
        op, n = command.ops[0]
        _judge_value(scenario, op, n, outcome.value, report, "")
        return
    values = outcome.value
    if not isinstance(values, list) or len(values) != len(command.ops):
        report.add(WrongValue, f"{name} returned {values!r}")
        return
    for (op, n), got in zip(command.ops, values, strict=True):
        _judge_value(scenario, op, n, got, report, f"in {name}: ")


# --- running the command scenario -------------------------------------------------------------


class Gate:
    """Commands share it; an injection holds it alone, so nothing is in flight meanwhile."""

    def __init__(self) -> None:
        self._active = 0
        self._exclusive = False
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._exclusive:
            await self._changed.wait()
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._notify()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while self._exclusive:
            await self._changed.wait()
        self._exclusive = True
        try:
            while self._active:
                await self._changed.wait()
            yield
        finally:
            self._exclusive = False
            self._notify()


async def _nothing_in_flight(redis: RedisPool) -> bool:
    """Whether no command is owed a reply on a shared connection (with auto-pipelining, a
    command whose caller gave up stays in flight until its reply is read and discarded), after
    waiting a bounded time for it."""
    with anyio.move_on_after(5.0):
        while True:
            shared = redis.autopipeline_statistics()
            if not shared.get("in_flight") and not shared.get("queued"):
                return True
            await anyio.sleep(0.005)
    return False


async def run_command(redis: RedisPool, command: Command) -> Outcome:
    with anyio.move_on_after(COMMAND_BOUND):
        try:
            if command.pipeline:
                pipe = redis.pipeline(transaction=False)
                for op, n in command.ops:
                    if op == "echo":
                        pipe.echo(token(n))
                    else:
                        pipe.get(key(n))
                return Outcome(value=await pipe.execute(raise_on_error=False))
            op, n = command.ops[0]
            if op == "echo":
                return Outcome(value=await redis.echo(token(n)))
            return Outcome(value=await redis.get(key(n)))
        except Exception as exc:
            return Outcome(error=exc)
    return Outcome(hang=True)


T = TypeVar("T")


async def _connect_retried(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, tried again (a bounded number of times) when it fails to connect: what is
    checked after a hostile phase are the connections the pool already holds; one it has to
    open now gets the scenario's short connect_timeout, which a loaded machine can overrun."""
    for attempt in range(20):
        try:
            return await call()
        except anypool.ConnectError:
            if attempt == 19:
                raise
            await anyio.sleep(0.01)
    raise AssertionError("unreachable")


@asynccontextmanager
async def _acquire_for_clean_phase(redis: RedisPool) -> AsyncIterator[Any]:
    """A connection from the pool (a failed connect tried again: :func:`_connect_retried`)."""
    lease = await _connect_retried(lambda: redis.pool.lease(timeout=CLEAN_TIMEOUT))
    try:
        yield lease.resource
    finally:
        await redis.pool.release(lease)


async def clean_phase(
    redis: RedisPool, server: HostileServer, scenario: Scenario, transport: str, report: Report
) -> None:
    """The server behaves from now on: every connection the pool holds must answer correctly.
    All slots are leased at once, so every idle connection is used."""
    await server.quiesce()
    server.behave()
    size = scenario.max_size
    everyone = anyio.Event()
    arrived = 0

    async def one(number: int) -> None:
        nonlocal arrived
        tok = f"clean{number}"
        want: Any = tok if scenario.decode else tok.encode()
        try:
            async with _acquire_for_clean_phase(redis) as connection:
                stream = type(connection._stream).__name__
                if stream != _expected_stream(transport):
                    report.add(HarnessFailed, f"{transport} runs on a {stream}")
                arrived += 1
                if arrived == size:
                    everyone.set()
                with anyio.move_on_after(CLEAN_TIMEOUT):
                    await everyone.wait()
                got = await connection.execute("ECHO", tok, timeout=CLEAN_TIMEOUT)
        except Exception as exc:
            report.add(CleanPhaseFailed, f"clean ECHO {tok} raised {_describe(exc)}")
            return
        if not _same(got, want):
            owner = _owner(scenario, got, -1)
            kind = CrossDelivery if owner is not None else CleanPhaseFailed
            report.add(kind, f"clean ECHO {tok} returned {got!r} ({owner or 'unknown'})")

    async with anyio.create_task_group() as task_group:
        for number in range(size):
            task_group.start_soon(one, number)


async def run_scenario(scenario: Scenario, transport: str) -> Report:
    report = Report()
    async with HostileServer(scenario.answers, scenario.hellos) as server:
        config = RedisConfig(
            host="127.0.0.1",
            port=server.port,
            protocol=scenario.protocol,
            decode_responses=scenario.decode,
            socket_timeout=SOCKET_TIMEOUT,
            connect_timeout=SOCKET_TIMEOUT,
        )
        redis = RedisPool(
            config,
            max_size=scenario.max_size,
            timeout=5.0,
            health_check_interval=None,
            breaker=BreakerPolicy(failure_threshold=1000, reset_timeout=0.1),
            reconnect_backoff=BackoffPolicy(0.01, 0.05, 0.1),
            close_timeout=2.0,
            autopipeline=scenario.autopipeline,
        )
        gate = Gate()

        async def client(commands: Sequence[Command]) -> None:
            try:
                await run_commands(commands)
            except Exception as exc:  # only the harness raises here: keep it apart
                report.add(HarnessFailed, f"a client task raised {_describe(exc)}")

        async def run_commands(commands: Sequence[Command]) -> None:
            for command in commands:
                async with gate.shared():
                    outcome = await run_command(redis, command)
                judge(scenario, command, outcome, report)
                if command.late is not None:
                    async with gate.exclusive():
                        if not await _nothing_in_flight(redis):
                            continue  # a reply still owed: a stray now could not be told apart
                        try:
                            delivered = await server.inject(command.ops[-1][1], command.late)
                        except HarnessError as exc:
                            report.add(HarnessFailed, str(exc))
                            return
                        if delivered:
                            # give the client's event loop a turn to read them, if it reads
                            # eagerly (not needed for correctness: they are in its hands now)
                            for _ in range(3):
                                await anyio.lowlevel.checkpoint()

        with anyio.move_on_after(EXAMPLE_BOUND) as bound:
            try:
                async with redis:
                    async with anyio.create_task_group() as task_group:
                        for commands in scenario.tasks:
                            task_group.start_soon(client, commands)
                    try:
                        await clean_phase(redis, server, scenario, transport, report)
                    except HarnessError as exc:
                        report.add(HarnessFailed, str(exc))
            except Exception as exc:
                report.add(EscapedThePool, f"leaving the pool raised {_describe(exc)}")
        if bound.cancelled_caught:
            report.add(Hang, f"the example did not finish within {EXAMPLE_BOUND}s")
        _check_books(redis, report)
        await _check_closed(server, report)
        report.notes.append(f"server: {server.connections_accepted} connections accepted")
    return report


def check_commands(monkeypatch: pytest.MonkeyPatch, transport: str, scenario: Scenario) -> None:
    use_transport(monkeypatch, transport)
    run(run_scenario, scenario, transport, backend=_backend(transport)).raise_first()


# One test function per transport rather than pytest parametrization: Hypothesis keys its
# example database by function, and would otherwise replay one transport's failure on the
# others instead of exploring them.
COMMANDS = settings(HYPOTHESIS, max_examples=EXAMPLES)


@pytest.mark.timeout(600)
@COMMANDS
@given(scenario=scenarios())
def test_commands_asyncio_protocol(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    check_commands(monkeypatch, "asyncio-protocol", scenario)


@pytest.mark.timeout(600)
@COMMANDS
@given(scenario=scenarios())
def test_commands_asyncio_anyio(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    check_commands(monkeypatch, "asyncio-anyio", scenario)


@needs_uvloop
@pytest.mark.timeout(600)
@COMMANDS
@given(scenario=scenarios())
def test_commands_uvloop_protocol(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    check_commands(monkeypatch, "uvloop-protocol", scenario)


@needs_uvloop
@pytest.mark.timeout(600)
@COMMANDS
@given(scenario=scenarios())
def test_commands_uvloop_anyio(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    check_commands(monkeypatch, "uvloop-anyio", scenario)


@pytest.mark.timeout(600)
@COMMANDS
@given(scenario=scenarios())
def test_commands_trio(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    check_commands(monkeypatch, "trio", scenario)


@pytest.mark.timeout(600)
@COMMANDS
@given(scenario=scenarios())
def test_commands_python_parser(monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    """The strict parser: a bulk string whose announced length is wrong must fail."""
    monkeypatch.setenv("ANYPOOL_PARSER", "python")
    check_commands(monkeypatch, "asyncio-protocol", scenario)


# --- pub/sub ----------------------------------------------------------------------------------

# Well-formed frames that are no message for "ch": a subscription must not yield them.
PUB_NOISE = (
    b"{P}3\r\n$7\r\nmessage\r\n$5\r\nother\r\n$1\r\nx\r\n",
    b"+OK\r\n",
    b":1\r\n",
    b"$-1\r\n",
    b"_\r\n",
    b"-ERR noise\r\n",
    b"{P}0\r\n",
    b"{P}2\r\n:1\r\n:2\r\n",
    b"{P}3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
    b"{P}3\r\n$11\r\nunsubscribe\r\n$2\r\nzz\r\n:0\r\n",
    b"{P}3\r\n$7\r\nmessage\r\n:5\r\n$1\r\nx\r\n",
    b"{P}2\r\n$8\r\nsmessage\r\n$2\r\nch\r\n",
)
# Valid RESP, malformed as pub/sub frames (wrong arity, unhashable channel or kind).
PUB_POISON = (
    b"{P}1\r\n*0\r\n",
    b"{P}1\r\n%0\r\n",
    b"{P}1\r\n$7\r\nmessage\r\n",
    b"{P}2\r\n$7\r\nmessage\r\n$2\r\nch\r\n",
    b"{P}3\r\n$7\r\nmessage\r\n*0\r\n$1\r\nx\r\n",
    b"{P}3\r\n$7\r\nmessage\r\n%0\r\n$1\r\nx\r\n",
    b"{P}3\r\n$9\r\nsubscribe\r\n*0\r\n:1\r\n",
    b"{P}1\r\n$9\r\nsubscribe\r\n",
    b"{P}2\r\n$8\r\npmessage\r\n*0\r\n",
    b">-1\r\n",
)
# Not RESP at all: the client must drop the connection (and say so with Reconnected).
PUB_BREAK = (
    b"?junk\r\n",
    b"\x00\r\n",
    b"%1\r\n*0\r\n:1\r\n",
    b"*-2\r\n",
    b"$-5\r\n",
    b"{P}3\r\n$7\r\nmessage\r\n$2\r\nch\r\n?x\r\n",
    b"$3\r\nabcd\r\n",
)


@dataclasses.dataclass(frozen=True)
class PubScenario:
    protocol: int
    decode: bool
    script: tuple[PubFrame, ...]
    glue: bool = False  # the first frame in the same write as the SUBSCRIBE ack


@st.composite
def pub_scenarios(draw: st.DrawFn) -> PubScenario:
    frames = []
    index = 0
    for _ in range(draw(st.integers(0, 10))):
        kinds: list[PubKind] = ["message", "message", "noise", "poison", "break", "close", "rst"]
        kind = draw(st.sampled_from([*kinds, "cut"]))
        if kind == "message":
            frames.append(PubFrame("message", index, draw(st.integers(0, 3))))
            index += 1
        elif kind == "cut":
            frames.append(PubFrame("cut", index, draw(st.integers(1, 30))))
            index += 1
        elif kind in ("close", "rst"):
            frames.append(PubFrame(kind))
        else:
            pool = {"noise": PUB_NOISE, "poison": PUB_POISON, "break": PUB_BREAK}[kind]
            frames.append(PubFrame(kind, raw=draw(st.sampled_from(pool))))
    return PubScenario(
        protocol=draw(st.sampled_from([3, 2])),
        decode=draw(st.booleans()),
        script=tuple(frames),
        glue=draw(st.booleans()),
    )


def judge_messages(
    scenario: PubScenario,
    sent: Sequence[int],
    events: Sequence[Any],
    ending: str | BaseException | None,
    report: Report,
) -> None:
    """Every message yielded is one the server sent, in order, once; a gap is followed by a
    Reconnected before the next message (or END), unless the subscription ended in error."""

    def text(data: bytes) -> Any:
        return data.decode() if scenario.decode else data

    position = -1  # index into `sent` of the last message yielded
    warned = False  # a Reconnected since that message
    for event in events:
        if isinstance(event, Reconnected):
            warned = True
            continue
        if not isinstance(event, Message) or event.kind != "message":
            report.add(MessageStreamBroken, f"the subscription yielded {event!r}")
            continue
        if not _same(event.channel, text(CHANNEL)) or event.pattern is not None:
            report.add(MessageStreamBroken, f"the subscription yielded {event!r}")
            continue
        if _same(event.data, text(END)):
            following = len(sent)
        else:
            candidates = [i for i, m in enumerate(sent) if _same(event.data, text(payload(m)))]
            if not candidates:
                report.add(MessageStreamBroken, f"{event!r} is no message the server sent")
                continue
            following = candidates[0]
            if following <= position:
                report.add(MessageStreamBroken, f"{event!r} came again, or out of order")
                continue
        if following > position + 1 and not warned:
            lost = [payload(m) for m in sent[position + 1 : following]]
            report.add(
                MessageStreamBroken,
                f"{lost} were lost without a Reconnected event before {event!r}",
            )
        position, warned = following, False
    if ending is None:
        return  # END arrived
    if isinstance(ending, BaseExceptionGroup):
        return  # the pool crashed (reported as EscapedThePool)
    if isinstance(ending, BaseException):
        if not isinstance(ending, (*DOCUMENTED, anypool.SlowConsumer)):
            report.add(UndocumentedException, f"the subscription raised {_describe(ending)}")
        return
    if ending == "hang":
        report.add(Hang, f"END did not arrive within {COMMAND_BOUND}s")
    else:
        report.add(MessageStreamBroken, f"the subscription ended ({ending}) before END")


async def run_pub_scenario(scenario: PubScenario, transport: str) -> Report:
    report = Report()
    async with HostileServer(pub_script=scenario.script, pub_glue=scenario.glue) as server:
        config = RedisConfig(
            host="127.0.0.1",
            port=server.port,
            protocol=scenario.protocol,
            decode_responses=scenario.decode,
            socket_timeout=2.0,
            connect_timeout=0.5,  # also how long a (UN)SUBSCRIBE may wait for its ack
        )
        redis = RedisPool(
            config,
            max_size=2,
            timeout=5.0,
            # the subscriber's keepalive: a connection that goes quiet is PINGed, then dropped
            health_check_interval=0.5,
            breaker=BreakerPolicy(failure_threshold=1000, reset_timeout=0.1),
            reconnect_backoff=BackoffPolicy(0.01, 0.05, 0.1),
            close_timeout=2.0,
        )
        events: list[Any] = []
        ending: str | BaseException | None = "hang"
        with anyio.move_on_after(EXAMPLE_BOUND) as bound:
            try:
                async with redis:
                    try:
                        with anyio.move_on_after(COMMAND_BOUND):
                            async with redis.subscribe("ch") as subscription:
                                ending = "no more events"
                                async for event in subscription:
                                    events.append(event)
                                    end = END.decode() if scenario.decode else END
                                    if isinstance(event, Message) and _same(event.data, end):
                                        ending = None
                                        break
                    except Exception as exc:
                        ending = exc
                    # the pool still serves commands (a failed connect tried again)
                    try:
                        got = await _connect_retried(lambda: redis.echo("after"))
                    except Exception as exc:
                        report.add(CleanPhaseFailed, f"ECHO after the subscription: {exc!r}")
                    else:
                        if not _same(got, "after" if scenario.decode else b"after"):
                            report.add(CleanPhaseFailed, f"ECHO after returned {got!r}")
            except Exception as exc:
                report.add(EscapedThePool, f"leaving the pool raised {_describe(exc)}")
                ending = exc  # the subscription was cancelled by the pool's crash
        if bound.cancelled_caught:
            report.add(Hang, f"the example did not finish within {EXAMPLE_BOUND}s")
        judge_messages(scenario, server.pub_sent, events, ending, report)
        report.notes.append(f"events: {events!r}; sent: {server.pub_sent}; ending: {ending!r}")
        _check_books(redis, report)
        await _check_closed(server, report)
    return report


def check_subscriptions(
    monkeypatch: pytest.MonkeyPatch, transport: str, scenario: PubScenario
) -> None:
    use_transport(monkeypatch, transport)
    run(run_pub_scenario, scenario, transport, backend=_backend(transport)).raise_first()


SUBSCRIPTIONS = settings(HYPOTHESIS, max_examples=PUBSUB_EXAMPLES)


@pytest.mark.timeout(600)
@SUBSCRIPTIONS
@given(scenario=pub_scenarios())
def test_pubsub_asyncio_protocol(monkeypatch: pytest.MonkeyPatch, scenario: PubScenario) -> None:
    check_subscriptions(monkeypatch, "asyncio-protocol", scenario)


@pytest.mark.timeout(600)
@SUBSCRIPTIONS
@given(scenario=pub_scenarios())
def test_pubsub_asyncio_anyio(monkeypatch: pytest.MonkeyPatch, scenario: PubScenario) -> None:
    check_subscriptions(monkeypatch, "asyncio-anyio", scenario)


@needs_uvloop
@pytest.mark.timeout(600)
@SUBSCRIPTIONS
@given(scenario=pub_scenarios())
def test_pubsub_uvloop_protocol(monkeypatch: pytest.MonkeyPatch, scenario: PubScenario) -> None:
    check_subscriptions(monkeypatch, "uvloop-protocol", scenario)


@needs_uvloop
@pytest.mark.timeout(600)
@SUBSCRIPTIONS
@given(scenario=pub_scenarios())
def test_pubsub_uvloop_anyio(monkeypatch: pytest.MonkeyPatch, scenario: PubScenario) -> None:
    check_subscriptions(monkeypatch, "uvloop-anyio", scenario)


@pytest.mark.timeout(600)
@SUBSCRIPTIONS
@given(scenario=pub_scenarios())
def test_pubsub_trio(monkeypatch: pytest.MonkeyPatch, scenario: PubScenario) -> None:
    check_subscriptions(monkeypatch, "trio", scenario)


# --- reproductions ---------------------------------------------------------------------------
# Minimal, deterministic forms of what the Hypothesis tests above found against the library as
# it was when this file was written.  Each runs on every transport: where a transport is not
# affected, its case passes.  They fail until the library is fixed; see the docstring above
# each entry for the bytes involved.


def _call(op: Op, n: int, late: bytes | None = None) -> Command:
    return Command(((op, n),), pipeline=False, late=late)


STRAY = b"$5\r\nstray\r\n"
REPRODUCTIONS: dict[str, Scenario] = {
    # ">-1\r\n$3\r\nt1.\r\n" for ECHO t1.: both parsers read the null push as a nil reply,
    # so ECHO returns None (RESP2 or RESP3 alike).
    "null_push_is_taken_for_the_reply": Scenario(
        protocol=3, decode=False, max_size=1, tasks=((_call("echo", 1),),),
        answers={1: Answer(pushes=(b">-1\r\n",))}, hellos=(),
    ),
    # The same in a pipeline of ECHO t1., ECHO t2.: the second command receives b"t1.".
    "null_push_shifts_a_pipeline": Scenario(
        protocol=2, decode=False, max_size=1,
        tasks=((Command((("echo", 1), ("echo", 2)), pipeline=True),),),
        answers={1: Answer(pushes=(b">-1\r\n",))}, hellos=(),
    ),
    # "$2\r\nt1.\r\n" for ECHO t1.: hiredis does not check the CRLF after a bulk string and
    # returns b"t1" (the pure-Python parser raises ProtocolError).
    "bulk_string_shorter_than_announced": Scenario(
        protocol=2, decode=False, max_size=1, tasks=((_call("echo", 1),),),
        answers={1: Answer(body="short_len")}, hellos=(),
    ),
    # HELLO answered by its map followed, in the same write, by "$11\r\nstray-hello\r\n":
    # the first command on that new connection returns b"stray-hello".
    "stray_after_the_hello_reply": Scenario(
        protocol=3, decode=False, max_size=1, tasks=((_call("echo", 1),),),
        answers={}, hellos=(Hello("extra"),),
    ),
    # ECHO t1. answered; then, while the connection is idle, "$5\r\nstray\r\n" (acknowledged
    # by the client's kernel before ECHO t2. is issued): ECHO t2. returns b"stray" on the
    # asyncio Protocol stream, whose buffer looks_alive() does not look at.
    "stray_on_an_idle_connection": Scenario(
        protocol=2, decode=False, max_size=1,
        tasks=((_call("echo", 1, late=STRAY), _call("echo", 2)),), answers={}, hellos=(),
    ),
    # GET k1 answered by a bulk string of 65,526 bytes (the reply is exactly 64 KiB) followed,
    # in the same write, by "$5\r\nstray\r\n": both asyncio streams hand out 64 KiB per read
    # and keep the rest in user space, so the connection looks clean and ECHO t2. gets b"stray".
    "stray_after_a_64k_reply": Scenario(
        protocol=2, decode=False, max_size=1, tasks=((_call("get", 1), _call("echo", 2)),),
        answers={1: Answer(size=FILL_64K, extra=STRAY)}, hellos=(),
    ),
}  # fmt: skip

PUB_REPRODUCTIONS: dict[str, PubScenario] = {
    # After the SUBSCRIBE ack: "*1\r\n*0\r\n" -> TypeError (unhashable list) in the reader,
    # out of the pool's task group.
    "array_in_a_push_kills_the_pool": PubScenario(
        protocol=2, decode=False, script=(PubFrame("poison", raw=b"{P}1\r\n*0\r\n"),)
    ),
    # ">2\r\n$7\r\nmessage\r\n$2\r\nch\r\n" (no payload) -> IndexError, likewise.
    "message_without_payload_kills_the_pool": PubScenario(
        protocol=3,
        decode=False,
        script=(PubFrame("poison", raw=b"{P}2\r\n$7\r\nmessage\r\n$2\r\nch\r\n"),),
    ),
    # ">3\r\n$9\r\nsubscribe\r\n*0\r\n:1\r\n" (an ack for an unhashable channel) -> TypeError.
    "ack_for_an_array_kills_the_pool": PubScenario(
        protocol=3,
        decode=False,
        script=(PubFrame("poison", raw=b"{P}3\r\n$9\r\nsubscribe\r\n*0\r\n:1\r\n"),),
    ),
    # "-ERR noise\r\n" in the same write as the SUBSCRIBE ack: subscribe() raises that
    # ResponseError although its SUBSCRIBE was acknowledged.
    "error_after_the_ack_fails_subscribe": PubScenario(
        protocol=2, decode=False, script=(PubFrame("noise", raw=b"-ERR noise\r\n"),), glue=True
    ),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(REPRODUCTIONS))
def test_reproduction(monkeypatch: pytest.MonkeyPatch, name: str, transport: str) -> None:
    check_commands(monkeypatch, transport, REPRODUCTIONS[name])


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(PUB_REPRODUCTIONS))
def test_pubsub_reproduction(monkeypatch: pytest.MonkeyPatch, name: str, transport: str) -> None:
    check_subscriptions(monkeypatch, transport, PUB_REPRODUCTIONS[name])


# --- the harness itself -----------------------------------------------------------------------


def test_the_hostile_replies_are_not_resp() -> None:
    """Every reply the harness calls invalid is rejected by anypool's strict Python parser
    (except the null push, which it reads as nil; see INVALID_PUSHES)."""
    for data in [*INVALID_REPLIES, *INVALID_PUSHES[1:]]:
        parser = make_parser(use_hiredis=False)
        parser.feed(data)
        with pytest.raises(anypool.ProtocolError):
            parser.gets()


@pytest.mark.parametrize("body", BODIES)
def test_every_valid_body_parses_to_its_expectation(body: Body) -> None:
    """The harness's expectations agree with the strict Python parser on valid replies."""
    ops: list[Op] = ["echo", "get"]
    for op in ops:
        for decode in (False, True):
            answer = Answer(body=body, invalid=b"?x\r\n", cut=3)
            writes, expect = render(answer, 7, op, decode)
            if expect.kind == "fail":
                continue
            parser = make_parser(use_hiredis=False, encoding="utf-8" if decode else None)
            parser.feed(b"".join(writes))
            reply = parser.gets()
            if expect.kind == "error":
                assert isinstance(reply, redis.exceptions.ResponseError)
                assert expect.error in str(reply)
            else:
                assert _same(reply, expect.value), (body, reply, expect)
            assert not parser.has_data()
