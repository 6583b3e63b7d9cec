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
