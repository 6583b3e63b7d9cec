"""Every example in docs/examples runs against a real server (as the docs show it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from anypool.testing import RedisServer

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("quickstart_trio.py", ["b'hello'", "[True, 1]"]),
        ("quickstart_asyncio.py", ["{'name': 'Ada', 'lang': 'en'}"]),
        ("sync_facade.py", ["b'hello'", "[True, 2]"]),
        ("pubsub_trio.py", ["listener: b'order 1'", "data=b'hello'"]),
    ],
)
def test_example_runs(redis_server: RedisServer, script: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env={**os.environ, "REDIS_URL": redis_server.url},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout


def test_fastapi_lifespan_example(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI is not a dependency: drive the example's lifespan and handler directly."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    sys.path.insert(0, str(EXAMPLES))
    try:
        import fastapi_lifespan  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLES))

    async def serve() -> list[int]:
        app = SimpleNamespace(state=SimpleNamespace())
        async with fastapi_lifespan.lifespan(app):
            await app.state.redis.delete("hits")
            return [(await fastapi_lifespan.hits(app))["hits"] for _ in range(3)]

    assert anyio.run(serve) == [1, 2, 3]
