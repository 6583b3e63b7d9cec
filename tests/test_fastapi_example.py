"""The FastAPI example, as users deploy it: under uvicorn with ``--loop uvloop``, in its own
process, answering real HTTP requests with the session's Redis behind it; and failing to start,
with an error that names the problem, when Redis is down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import anypool
from anypool.testing import RedisServer

from .backends import needs_uvloop

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = needs_uvloop

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
# The anypool under test (the checkout or worktree), not whichever one is installed.
SOURCE = Path(anypool.__file__).resolve().parents[1]
BOUND = 60.0  # seconds; only a hang gets here


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def uvicorn(redis_url: str, port: int) -> Iterator[subprocess.Popen[str]]:
    """``uvicorn --loop uvloop --factory fastapi_lifespan:create_app`` on a loopback port."""
    path = os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "fastapi_lifespan:create_app",
        "--app-dir", str(EXAMPLES), "--loop", "uvloop", "--lifespan", "on",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=BOUND)


def _wait_until_listening(process: subprocess.Popen[str], port: int) -> None:
    """uvicorn binds its port only after the lifespan's startup completed."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.communicate(timeout=BOUND)[0]
            pytest.fail(f"uvicorn exited with {process.returncode} before serving:\n{output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    pytest.fail(f"uvicorn did not listen on port {port} within {BOUND}s")


def _get(url: str) -> tuple[int, object]:
    with urllib.request.urlopen(url, timeout=BOUND) as response:
        return response.status, json.loads(response.read())


def test_the_example_serves_requests_under_uvicorn_with_uvloop(redis_server: RedisServer) -> None:
    port = _unused_port()
    # a database of its own: the count starts where this test finds it
    with uvicorn(f"redis://127.0.0.1:{redis_server.port}/9", port) as process:
        _wait_until_listening(process, port)
        status, body = _get(f"http://127.0.0.1:{port}/hits")
        assert status == 200, body
        assert isinstance(body, dict)
        first = body["hits"]
        assert isinstance(first, int)
        # the same pooled connection(s), reused request after request
        for step in range(1, 6):
            assert _get(f"http://127.0.0.1:{port}/hits") == (200, {"hits": first + step})
        process.terminate()  # uvicorn's graceful shutdown: the lifespan closes the pool
        output = process.communicate(timeout=BOUND)[0]
    # uvicorn >= 0.29 ends by re-raising the signal it handled: killed by SIGTERM, after a
    # complete graceful shutdown
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


def test_the_example_fails_fast_when_redis_is_down() -> None:
    """A bound, never-listening loopback port: every connect is refused.  uvicorn must exit
    non-zero, saying why; it must not start serving with a pool that cannot connect."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # held, so nobody else listens there meanwhile
        redis_port = closed.getsockname()[1]
        with uvicorn(f"redis://127.0.0.1:{redis_port}/0", _unused_port()) as process:
            output = process.communicate(timeout=BOUND)[0]
    assert process.returncode not in (0, None), output
    assert "Application startup failed" in output, output
    assert "PoolTimeout" in output, output
    assert f"connection to 127.0.0.1:{redis_port} refused" in output, output
