"""The anypool command, run in-process: every subcommand, and its error cases."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import anypool
from anypool import RedisPool
from anypool._cli import build_parser, main
from anypool.testing import RedisCluster as ClusterServers
from anypool.testing import RedisServer

from .backends import needs_uvloop


@pytest.fixture(scope="module")
def secured() -> RedisServer:
    with RedisServer(password="s3cret-pass") as server:
        yield server  # type: ignore[misc]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ping(secured: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ping", secured.url)
    assert code == 0
    assert out.startswith("PONG from redis://:***@127.0.0.1:")
    assert "Redis 6." in out or "Redis 7." in out
    assert "s3cret-pass" not in out


def test_ping_takes_a_url_written_for_redis_py(
    secured: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = secured.url + "?max_connections=20&socket_connect_timeout=2&health_check_interval=0"
    code, out, _ = run(capsys, "ping", url)
    assert code == 0, out
    assert out.startswith("PONG from redis://:***@127.0.0.1:")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:wrong-pass@127.0.0.1:{port}/0", "rejected user 'default'"),
        ("redis://127.0.0.1:1/0", "refused"),
        ("http://:wrong-pass@localhost/0", "scheme must be"),
        ("redis://localhost:70000/0", "invalid port"),
    ],
)
def test_ping_errors_are_one_line_without_secrets(
    secured: RedisServer, capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    code, out, err = run(capsys, "ping", url.format(port=secured.port), "--timeout", "2")
    assert code == 1
    assert out == ""
    assert err.startswith("anypool ping: error: ")
    assert message in err
    assert err.count("\n") == 1  # one line, no traceback
    assert "wrong-pass" not in err
    assert "Traceback" not in err


def test_clients_groups_by_name_and_kills(
    secured: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async def hold_two_named(done: anyio.Event, ready: anyio.Event) -> None:
        async with RedisPool.from_url(secured.url, client_name="worker-a", min_size=2) as pool:
            await pool.pool.wait(timeout=5)
            ready.set()
            await done.wait()

    async def scenario() -> list[tuple[int, str, str]]:
        results = []
        done, ready = anyio.Event(), anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_two_named, done, ready)
            await ready.wait()
            for argv in (
                ["clients", secured.url, "--name", "worker"],
                ["clients", secured.url, "--name", "worker", "--kill"],  # no TTY, no --yes
                ["clients", secured.url, "--name", "worker", "--kill", "--yes"],
            ):
                results.append(await anyio.to_thread.run_sync(lambda a=argv: run(capsys, *a)))
            done.set()
        return results

    listed, refused, killed = anyio.run(scenario)
    assert listed[0] == 0
    assert "worker-a" in listed[1]
    assert "2 of" in listed[1]
    assert "s3cret-pass" not in listed[1]
    assert refused[0] == 1
    assert "without --yes" in refused[2]
    assert killed[0] == 0
    assert "killed 2 connections" in killed[1]


@pytest.mark.parametrize("backend", ["trio", "asyncio", "uvloop"])
def test_demo_on_an_embedded_server(capsys: pytest.CaptureFixture[str], backend: str) -> None:
    log = logging.getLogger("anypool")
    before = (log.level, log.propagate, list(log.handlers))
    code, out, err = run(capsys, "demo", "--backend", backend)
    assert code == 0, err
    # The tour quiets anypool's logger while it runs and leaves it as it found it.
    assert (log.level, log.propagate, list(log.handlers)) == before
    for expected in (
        "MULTI SET INCR INCR EXEC -> [True, 1, 2]",
        "subscriber A got 100, B got 100, the listener handled 100",
        "leased by task",
        "a command now fails clearly",
        "told about the gap: Reconnected",
        "the subscription receives: 'after the restart'",
        "pool health: healthy",
        "leaks_detected",
    ):
        assert expected in out, expected


def test_demo_on_an_embedded_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    """The cluster tour: routing, a slot moving under load with exact counters, a failover the
    client heals from on its own."""
    code, out, err = run(capsys, "demo", "--cluster", "--backend", "trio")
    assert code == 0, err
    for expected in (
        "3 shards, 6 nodes, 16384 slots covered",
        "split per slot, merged in order",
        "every counter exact: True",
        "killed (SIGKILL)",
        "was promoted; the client healed on its own",
        "covered_slots",
    ):
        assert expected in out, (expected, out)
    code, _, err = run(capsys, "demo", "--cluster", "--url", "redis://127.0.0.1:1")
    assert code == 1
    assert "does not take --url" in err


def test_bench_writes_json_and_prints_ratios(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "bench.json"
    code, out, _ = run(
        capsys, "bench", "--duration", "0.05", "--concurrency", "1,4", "--backend", "asyncio",
        "--json", str(target),
    )  # fmt: skip
    assert code == 0
    assert "running anypool (asyncio)" in out  # plain progress lines when not a terminal
    assert "anypool (asyncio) vs redis.asyncio (asyncio): sequential GET x" in out
    data = json.loads(target.read_text())
    assert set(data["results"]["anypool (asyncio)"]) == {
        "sequential GET", "1 tasks GET", "4 tasks GET", "100x100 pipeline (cmds/s)",
    }  # fmt: skip
    assert all(v > 0 for v in data["results"]["anypool (asyncio)"].values())


@needs_uvloop
def test_bench_has_uvloop_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--backend uvloop: anypool and redis.asyncio on uvloop's event loop, beside asyncio."""
    target = tmp_path / "bench.json"
    code, out, _ = run(
        capsys, "bench", "--duration", "0.05", "--concurrency", "2", "--backend", "uvloop",
        "--json", str(target),
    )  # fmt: skip
    assert code == 0
    assert "anypool (uvloop) vs redis.asyncio (uvloop): sequential GET x" in out
    results = json.loads(target.read_text())["results"]
    assert {"anypool (uvloop)", "redis.asyncio (uvloop)", "redis.asyncio (asyncio)"} <= set(results)
    assert "anypool (asyncio)" not in results  # only the backend asked for
    for label in ("anypool (uvloop)", "redis.asyncio (uvloop)"):
        assert set(results[label]) == {"sequential GET", "2 tasks GET", "100x100 pipeline (cmds/s)"}
        assert all(v > 0 for v in results[label].values())


@pytest.mark.parametrize("value", ["0,4", ",", "a,b", "-1"])
def test_bench_refuses_a_bad_concurrency(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, _, err = run(capsys, "bench", "--concurrency", value)
    assert code == 1
    assert "--concurrency" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bench_refuses_a_bad_duration(capsys: pytest.CaptureFixture[str], value: str) -> None:
    """Issue 10, defect 16: ``--duration 0`` crashed with ZeroDivisionError."""
    code, out, err = run(capsys, "bench", "--duration", value, "--backend", "asyncio")
    assert code == 1
    assert "--duration" in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_help_and_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anypool", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in ("demo", "bench", "ping", "clients", "cluster"):
        assert command in result.stdout
    for command in ("demo", "bench", "ping", "clients", "cluster"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0


def test_every_argument_has_help_and_shows_its_default() -> None:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    assert set(subparsers.choices) == {"demo", "bench", "ping", "clients", "cluster"}
    for name, command in subparsers.choices.items():
        text = command.format_help()
        for action in command._actions:
            assert action.help, f"{name} {action.dest} has no help text"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action)


def test_ping_and_clients_read_redis_url(
    secured: RedisServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", secured.url)
    code, out, _ = run(capsys, "ping")
    assert code == 0
    assert out.startswith("PONG from redis://:***@127.0.0.1:")
    code, out, _ = run(capsys, "clients")
    assert code == 0
    assert "connections selected" in out
    # --help never shows the URL from the environment (it holds a password).
    with pytest.raises(SystemExit):
        main(["ping", "--help"])
    assert "s3cret-pass" not in capsys.readouterr().out


def test_ping_without_a_url_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    for command in ("ping", "clients", "cluster"):
        with pytest.raises(SystemExit) as info:
            main([command])
        assert info.value.code == 2
        assert "give a URL, or set REDIS_URL" in capsys.readouterr().err


def test_cluster_shows_nodes_roles_coverage_and_health(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with ClusterServers(3, 1, password="s3cret-pass") as servers:
        url = servers.url
        code, out, _ = run(capsys, "cluster", url)
        assert code == 0, out
        assert "3 shards, 6 nodes; 16384 of 16384 slots covered" in out
        assert out.count("primary") == 3 and out.count("replica of") == 3
        assert out.count("ok (") == 6
        assert "s3cret-pass" not in out
        victim = servers.replicas(servers.primaries()[0])[0]
        victim.pause()
        try:
            code, out, _ = run(capsys, "cluster", url, "--timeout", "1")
        finally:
            victim.resume()
        assert code == 1
        assert "failing:" in out


def test_cluster_on_a_closed_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run(capsys, "cluster", f"redis://127.0.0.1:{port}", "--timeout", "1")
    assert code == 1
    assert err.startswith("anypool cluster: error:") and str(port) in err
    assert len(err.strip().splitlines()) == 1


def test_ping_and_clients_see_every_node_of_a_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A cluster node's URL: ping answers for every node (exit 1 when one fails), clients
    lists and kills connections on every node."""
    with ClusterServers(3, 0, password="s3cret-pass") as servers:
        url = servers.url
        code, out, _ = run(capsys, "ping", url)
        assert code == 0, out
        assert "cluster: 3 of 3 nodes answered" in out and "16384 of 16384 slots" in out

        async def hold() -> None:
            cluster = anypool.RedisCluster.from_url(url, client_name="held", max_size=2)
            async with cluster:
                for i in range(30):  # a connection to every node
                    await cluster.set(f"held:{i}", i)
                code, out, _ = await anyio.to_thread.run_sync(
                    lambda: run(capsys, "clients", url, "--name", "held")
                )
                assert code == 0, out
                assert out.count("held") >= 3 and "on 3 nodes" in out
                code, out, _ = await anyio.to_thread.run_sync(
                    lambda: run(capsys, "clients", url, "--name", "held", "--kill", "--yes")
                )
                assert code == 0, out
                killed = int(out.split("killed ")[1].split()[0])
                assert killed >= 3, out  # one per node at least (the shared connections)
                assert await cluster.get("held:1") == b"1"  # a new connection, transparently

        anyio.run(hold)
        assert "s3cret-pass" not in out
        paused = next(n for n in servers.primaries() if n.url != url)
        paused.pause()
        try:
            code, out, _ = run(capsys, "ping", url, "--timeout", "1")
        finally:
            paused.resume()
        assert code == 1
        assert "cluster: 2 of 3 nodes answered" in out and "failing:" in out
