"""anypool's pytest plugin: test your own Redis code against a real server, on every backend.

Loaded automatically when anypool is installed (entry point ``pytest11``: ``anypool``); every
fixture name starts with ``anypool_``, so none clashes with yours.

``anypool_redis_url`` (session)
    The URL of a real server for the whole session: one started with :class:`RedisServer`
    (on loopback, in a temporary directory), or the one given by ``--anypool-redis-url`` or
    ``$ANYPOOL_TEST_REDIS_URL``.  The database it names is **cleaned before every test** that
    uses ``anypool_redis`` (FLUSHDB, and server-wide SCRIPT FLUSH and, on servers that have
    it, FUNCTION FLUSH): never point it at data you want to keep.  Not reset: CONFIG SET
    changes, ACL users, other databases' keys, client names and server statistics.
``anypool_redis_options`` (function)
    Keyword options for the pools the fixtures make (``{}``); override it, e.g. to return
    ``{"decode_responses": True}``.
``anypool_redis`` (function, async)
    An open :class:`~anypool.RedisPool` on a clean database, closed after the test.
    A test that uses it (directly or through a fixture of yours) runs once per backend:
    asyncio, trio if installed, asyncio with uvloop if installed (``--anypool-backends`` or
    the ``anypool_backends`` ini option choose), by parametrizing anyio's ``anyio_backend``,
    unless you define ``anyio_backend`` yourself, which then wins.  Mark the test
    ``@pytest.mark.anyio`` (anyio's marker): the fixture runs in anyio's event loop, so a
    test marked ``@pytest.mark.asyncio`` (pytest-asyncio's, another loop) fails at once,
    saying so.  Under pytest-asyncio's ``asyncio_mode = auto``, pytest-asyncio runs every
    async test and fixture on its own asyncio loop: such tests then run once, on that loop
    (``anyio_backend`` is asyncio), never on trio or uvloop.
``anypool_blocking_redis`` (function)
    The same for synchronous code: an open :class:`~anypool.BlockingRedisPool` on a clean
    database.

anypool itself is imported only when a fixture runs, so the plugin costs nothing to projects
that do not use it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from anypool import BlockingRedisPool, RedisPool

__all__ = [
    "anypool_blocking_redis", "anypool_redis", "anypool_redis_options", "anypool_redis_url",
]  # fmt: skip

URL_ENV_VAR = "ANYPOOL_TEST_REDIS_URL"

# backend name -> (what anyio_backend is set to, the module it needs)
_BACKENDS: dict[str, tuple[Any, str]] = {
    "asyncio": (("asyncio", {}), "asyncio"),
    "trio": (("trio", {}), "trio"),
    "uvloop": (("asyncio", {"use_uvloop": True}), "uvloop"),
}
_IDS = {"asyncio": "asyncio", "trio": "trio", "uvloop": "asyncio+uvloop"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("anypool", "anypool's fixtures (anypool_redis...)")
    group.addoption(
        "--anypool-redis-url",
        default=None,
        help=(
            f"use this Redis for the anypool_* fixtures instead of starting one (also "
            f"${URL_ENV_VAR}); its database is FLUSHED before every test that uses it"
        ),
    )
    group.addoption(
        "--anypool-backends",
        default=None,
        help=(
            "comma-separated backends for tests that use anypool_redis: asyncio, trio, uvloop "
            "(default: every one installed)"
        ),
    )
    parser.addini(
        "anypool_backends",
        type="args",
        default=[],
        help="backends for tests that use anypool_redis (as --anypool-backends)",
    )


def _installed(name: str) -> bool:
    return importlib.util.find_spec(_BACKENDS[name][1]) is not None


def _chosen_backends(config: pytest.Config) -> list[str]:
    option = config.getoption("anypool_backends")
    names: list[str] = (
        [n.strip() for n in option.split(",") if n.strip()]
        if option
        else list(config.getini("anypool_backends"))
    )
    if not names:
        return [name for name in _BACKENDS if _installed(name)]
    for name in names:
        if name not in _BACKENDS:
            raise pytest.UsageError(
                f"anypool: unknown backend {name!r} in --anypool-backends / anypool_backends; "
                f"choose from {', '.join(_BACKENDS)}"
            )
        if not _installed(name):
            raise pytest.UsageError(
                f"anypool: backend {name!r} was asked for but {_BACKENDS[name][1]!r} is not "
                f"installed (pip install {_BACKENDS[name][1]})"
            )
    return names


def _pytest_asyncio_auto(config: pytest.Config) -> bool:
    """Whether pytest-asyncio is loaded in ``auto`` mode (it then runs every async test and
    fixture itself, on asyncio)."""
    mode = config.getoption("asyncio_mode", None)
    if mode is None:
        try:
            mode = config.getini("asyncio_mode")
        except ValueError:  # not pytest-asyncio's
            return False
    return str(mode) == "auto"


def _user_chose_backend(metafunc: pytest.Metafunc) -> bool:
    """Whether ``anyio_backend`` is the user's own (a fixture of theirs, or parametrized by a
    marker), rather than anyio's default."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [name.strip() for name in argnames.split(",")]
        if "anyio_backend" in argnames:
            return True
    # pytest keeps no public record of which fixture definition a name resolves to.
    definitions = getattr(metafunc, "_arg2fixturedefs", {}).get("anyio_backend", ())
    if not definitions:
        return False
    function = getattr(definitions[-1], "func", None)
    return getattr(function, "__module__", "") != "anyio.pytest_plugin"


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``anypool_redis`` on each chosen backend.

    A ``parametrize`` mark added here, before pytest's own hooks run, takes precedence over
    the parameters of anyio's ``anyio_backend`` fixture, as a mark the user wrote would.
    """
    if "anypool_redis" not in metafunc.fixturenames or _user_chose_backend(metafunc):
        return
    # pytest-asyncio's auto mode runs the test on its own asyncio loop, whatever the backend.
    names = (
        ["asyncio"] if _pytest_asyncio_auto(metafunc.config) else _chosen_backends(metafunc.config)
    )
    metafunc.definition.add_marker(
        pytest.mark.parametrize(
            "anyio_backend", [_BACKENDS[n][0] for n in names], ids=[_IDS[n] for n in names]
        )
    )


@pytest.fixture(scope="session")
def anypool_redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a real Redis for the session: ``--anypool-redis-url``,
    ``$ANYPOOL_TEST_REDIS_URL``, or a server started for the session."""
    url = request.config.getoption("anypool_redis_url") or os.environ.get(URL_ENV_VAR)
    if url:
        yield url
        return
    from anypool.testing import RedisServer

    with RedisServer() as server:
        yield server.url


@pytest.fixture
def anypool_redis_options() -> dict[str, Any]:
    """Keyword options for the pools of ``anypool_redis`` and ``anypool_blocking_redis``
    (none); override this fixture to change them."""
    return {}


def _check_marker(request: pytest.FixtureRequest) -> None:
    """Fail a test that pytest-asyncio runs on its own loop while anyio runs the fixture."""
    node = request.node
    if (
        node.get_closest_marker("asyncio") is not None
        and node.get_closest_marker("anyio") is None
        and not _pytest_asyncio_auto(request.config)
    ):
        pytest.fail(
            f"{node.nodeid} is marked @pytest.mark.asyncio but uses anypool_redis, which anyio "
            f"runs in its own event loop: a pool cannot be used from another loop.  Mark the "
            f"test @pytest.mark.anyio instead",
            pytrace=False,
        )


async def _clean(redis: RedisPool) -> None:
    await redis.execute_command("FLUSHDB")
    await redis.execute_command("SCRIPT", "FLUSH")
    from anypool import ResponseError

    try:
        await redis.execute_command("FUNCTION", "FLUSH")
    except ResponseError as exc:  # Redis < 7 has no functions
        if "unknown command" not in str(exc).lower():
            raise


@pytest.fixture
async def anypool_redis(
    anypool_redis_url: str,
    anypool_redis_options: dict[str, Any],
    anyio_backend: Any,
    request: pytest.FixtureRequest,
) -> AsyncIterator[RedisPool]:
    """An open RedisPool on a clean database (FLUSHDB, SCRIPT FLUSH, FUNCTION FLUSH), closed
    after the test."""
    _check_marker(request)
    from anypool import RedisPool

    # open()/aclose(), not `async with`: pytest-asyncio (auto mode) sets a fixture up and
    # tears it down in two different tasks.
    redis = RedisPool.from_url(anypool_redis_url, **anypool_redis_options)
    await redis.open()
    try:
        await _clean(redis)
        yield redis
    finally:
        await redis.aclose()


@pytest.fixture
def anypool_blocking_redis(
    anypool_redis_url: str, anypool_redis_options: dict[str, Any]
) -> Iterator[BlockingRedisPool]:
    """An open BlockingRedisPool on a clean database (as ``anypool_redis``), closed after
    the test."""
    from anypool import BlockingRedisPool, ResponseError

    with BlockingRedisPool.from_url(anypool_redis_url, **anypool_redis_options) as redis:
        redis.execute_command("FLUSHDB")
        redis.execute_command("SCRIPT", "FLUSH")
        try:
            redis.execute_command("FUNCTION", "FLUSH")
        except ResponseError as exc:  # Redis < 7 has no functions
            if "unknown command" not in str(exc).lower():
                raise
        yield redis
