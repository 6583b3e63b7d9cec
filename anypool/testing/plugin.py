"""anypool's pytest plugin: test your own Redis code against a real server, on every backend.

Loaded automatically when anypool is installed (entry point ``pytest11``: ``anypool``); every
fixture name starts with ``anypool_``, so none clashes with yours.

``anypool_redis_url`` (session)
    The URL of a real server for the whole session: one started with :class:`RedisServer`
    (on loopback, in a temporary directory), or the one given by ``--anypool-redis-url`` or
    ``$ANYPOOL_TEST_REDIS_URL``.  The database it names is **flushed before every test** that
    uses ``anypool_redis``: never point it at data you want to keep.
``anypool_redis_options`` (function)
    Keyword options for the pools the fixtures make (``{}``); override it, e.g. to return
    ``{"decode_responses": True}``.
``anypool_redis`` (function, async)
    An open :class:`~anypool.RedisPool` on a clean (flushed) database, closed after the test.
    A test that uses it (directly or through a fixture of yours) runs once per backend:
    asyncio, trio if installed, asyncio with uvloop if installed (``--anypool-backends`` or
    the ``anypool_backends`` ini option choose), by parametrizing anyio's ``anyio_backend``,
    unless you define ``anyio_backend`` yourself, which then wins.  Mark the test
    ``@pytest.mark.anyio``.
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
    names = _chosen_backends(metafunc.config)
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


@pytest.fixture
async def anypool_redis(
    anypool_redis_url: str, anypool_redis_options: dict[str, Any], anyio_backend: Any
) -> AsyncIterator[RedisPool]:
    """An open RedisPool on a clean (flushed) database, closed after the test."""
    from anypool import RedisPool

    async with RedisPool.from_url(anypool_redis_url, **anypool_redis_options) as redis:
        await redis.flushdb()
        yield redis


@pytest.fixture
def anypool_blocking_redis(
    anypool_redis_url: str, anypool_redis_options: dict[str, Any]
) -> Iterator[BlockingRedisPool]:
    """An open BlockingRedisPool on a clean (flushed) database, closed after the test."""
    from anypool import BlockingRedisPool

    with BlockingRedisPool.from_url(anypool_redis_url, **anypool_redis_options) as redis:
        redis.flushdb()
        yield redis
