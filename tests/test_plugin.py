"""anypool's pytest plugin (anypool.testing.plugin), run as users run it: pytest in a subprocess.

Plugin autoloading is off in the subprocess and the plugins are named with ``-p``, so the runs
are the same whether or not anypool's entry point is installed in this environment.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from anypool.testing import RedisServer

EXAMPLE = Path(__file__).parent.parent / "docs" / "examples" / "test_with_anypool.py"
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def run_pytest(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ANYPOOL_"))}
    environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    environ["PYTHONPATH"] = os.pathsep.join(sys.path)  # this checkout's anypool
    command = [
        sys.executable, "-m", "pytest", "-p", "anyio.pytest_plugin", "-p",
        "anypool.testing.plugin", "-p", "no:cacheprovider", "-W", "error", "-v", *args,
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=directory, env={**environ, **(env or {})}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def passed(result: subprocess.CompletedProcess[str]) -> list[str]:
    return sorted(
        line.split(" ")[0].split("::", 1)[1]
        for line in result.stdout.splitlines()
        if line.endswith("]") and " PASSED " in line
    )


@pytest.fixture
def example(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLE, tmp_path)
    return tmp_path


# Every installed backend (the `test` extra installs uvloop and trio).
NAMES = ["asyncio", "trio"] + (["asyncio+uvloop"] if HAS_UVLOOP else [])
BACKENDS = ",".join(name.replace("asyncio+uvloop", "uvloop") for name in NAMES)
EXPECTED = sorted(
    [
        f"{test}[{backend}]"
        for test in (
            "test_counts_visits", "test_every_test_starts_on_a_clean_database",
            "test_with_your_own_fixture", "TestDecoded::test_replies_are_str",
        )
        for backend in NAMES
    ]
    + ["test_sync_code"]
)  # fmt: skip


def test_the_docs_example_runs_on_a_server_the_plugin_starts(example: Path) -> None:
    result = run_pytest(example, f"--anypool-backends={BACKENDS}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert passed(result) == EXPECTED
    assert f"{len(EXPECTED)} passed" in result.stdout


def test_the_docs_example_runs_on_a_server_given_by_url(
    example: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/9"  # a database no other test uses
    for how in (["--anypool-redis-url", url], []):
        env = {} if how else {"ANYPOOL_TEST_REDIS_URL": url}
        result = run_pytest(example, f"--anypool-backends={BACKENDS}", *how, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{len(EXPECTED)} passed" in result.stdout


def test_every_installed_backend_is_collected(example: Path) -> None:
    result = run_pytest(example, "--collect-only", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    expected = ["asyncio", "trio"] + (["asyncio+uvloop"] if HAS_UVLOOP else [])
    for backend in expected:
        assert f"test_counts_visits[{backend}]" in result.stdout
    assert result.stdout.count("test_counts_visits[") == len(expected)


def test_the_users_own_anyio_backend_wins(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef anyio_backend():\n    return 'trio'\n"
    )
    (tmp_path / "test_mine.py").write_text(
        "import pytest, trio\n\n"
        "@pytest.mark.anyio\n"
        "async def test_on_trio(anypool_redis):\n"
        "    await trio.sleep(0)\n"
        "    assert await anypool_redis.ping()\n\n"
        "@pytest.mark.anyio\n"
        "@pytest.mark.parametrize('anyio_backend', ['asyncio'])\n"
        "async def test_marked(anypool_redis):\n"
        "    assert await anypool_redis.ping()\n"
    )
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_mine.py::test_on_trio PASSED" in result.stdout
    assert "test_mine.py::test_marked[asyncio] PASSED" in result.stdout
    assert "2 passed" in result.stdout


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--anypool-backends=asyncio,curio", "unknown backend 'curio'"),
        ("--anypool-backends=", ""),  # empty: every installed one
    ],
)
def test_backend_option_is_checked(example: Path, option: str, message: str) -> None:
    result = run_pytest(example, option, "--collect-only", "-q")
    if message:
        assert result.returncode != 0
        assert message in result.stdout + result.stderr
        assert "choose from asyncio, trio, uvloop" in result.stdout + result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "test_counts_visits[asyncio]" in result.stdout


def test_scripts_and_functions_are_flushed_between_tests(
    tmp_path: Path, valkey_server: RedisServer
) -> None:
    """A clean database was only FLUSHDB: the script cache and functions leaked between tests."""
    (tmp_path / "test_clean.py").write_text(
        "import pytest\n\n"
        "LIBRARY = (\n"
        '    "#!lua name=plugintest\\n"\n'
        "    \"redis.register_function('f', function() return 1 end)\"\n"
        ")\n\n"
        "@pytest.mark.anyio\n"
        "async def test_1_leaves_a_script_and_a_function(anypool_redis):\n"
        "    await anypool_redis.execute_command('SCRIPT', 'LOAD', 'return 1')\n"
        "    await anypool_redis.execute_command('FUNCTION', 'LOAD', LIBRARY)\n\n"
        "@pytest.mark.anyio\n"
        "async def test_2_finds_neither(anypool_redis):\n"
        "    sha = 'e0e1f9fabfc9d4800c877a703b823ac0578ff8db'\n"
        "    assert await anypool_redis.execute_command('SCRIPT', 'EXISTS', sha) == [0]\n"
        "    assert await anypool_redis.execute_command('FUNCTION', 'LIST') == []\n\n"
        "def test_3_blocking_leaves_a_script(anypool_blocking_redis):\n"
        "    anypool_blocking_redis.execute_command('SCRIPT', 'LOAD', 'return 1')\n\n"
        "def test_4_blocking_finds_none(anypool_blocking_redis):\n"
        "    sha = 'e0e1f9fabfc9d4800c877a703b823ac0578ff8db'\n"
        "    assert anypool_blocking_redis.execute_command('SCRIPT', 'EXISTS', sha) == [0]\n"
    )
    url = valkey_server.url.rsplit("/", 1)[0] + "/8"  # a database no other test uses
    result = run_pytest(tmp_path, "--anypool-backends=asyncio,trio", "--anypool-redis-url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout


PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None
ASYNCIO_TEST = (
    "import pytest, sniffio\n\n"
    "@pytest.mark.asyncio\n"
    "async def test_asyncio_marked(anypool_redis):\n"
    "    assert await anypool_redis.ping()\n"
)


@pytest.mark.skipif(not PYTEST_ASYNCIO, reason="pytest-asyncio is not installed")
def test_a_test_marked_for_pytest_asyncio_fails_at_once_saying_why(tmp_path: Path) -> None:
    """It hung: the fixture ran in anyio's loop, the test in pytest-asyncio's."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_marked.py").write_text(ASYNCIO_TEST)
    result = run_pytest(
        tmp_path, "-p", "pytest_asyncio.plugin", "-W", "ignore::pytest.PytestDeprecationWarning",
        "--anypool-backends=asyncio,trio",
    )  # fmt: skip
    assert result.returncode != 0
    assert "is marked @pytest.mark.asyncio but uses anypool_redis" in result.stdout
    assert "Mark the test @pytest.mark.anyio instead" in result.stdout
    assert "2 error" in result.stdout


@pytest.mark.skipif(not PYTEST_ASYNCIO, reason="pytest-asyncio is not installed")
def test_pytest_asyncio_auto_mode_runs_the_tests_once_on_its_loop(tmp_path: Path) -> None:
    """Under asyncio_mode=auto the fixture's teardown failed (set up and torn down in two
    tasks), and the trio runs were asyncio runs."""
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_auto.py").write_text(
        "import pytest, sniffio\n\n"
        "@pytest.fixture\n"
        "async def mine(anypool_redis):\n"
        "    return anypool_redis\n\n"
        "async def test_unmarked(anypool_redis, anyio_backend):\n"
        "    assert sniffio.current_async_library() == 'asyncio' == anyio_backend[0]\n"
        "    assert await anypool_redis.dbsize() == 0\n"
        "    await anypool_redis.set('k', 1)\n\n"
        "@pytest.mark.anyio\n"
        "async def test_through_a_fixture(mine):\n"
        "    assert await mine.dbsize() == 0\n"
        "    await mine.set('k', 1)\n"
    )
    result = run_pytest(tmp_path, "-p", "pytest_asyncio.plugin", "--anypool-backends=asyncio,trio")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_auto.py::test_unmarked[asyncio] PASSED" in result.stdout
    assert "test_auto.py::test_through_a_fixture[asyncio] PASSED" in result.stdout
    assert "2 passed" in result.stdout
