"""Assemble redis-py's own asyncio tests, with anypool's harness in place of its client fixtures.

    python tests/redispy_suite/assemble.py DEST [--sdist-dir DIR]

Takes the sdist of the redis-py version installed in this interpreter (``pip download`` from
PyPI, or a ``redis-X.Y.Z.tar.gz`` already in ``--sdist-dir``), extracts its ``tests/`` into DEST,
and then:

* renames ``tests/test_asyncio/conftest.py`` to ``upstream_conftest.py`` and puts
  ``harness.py`` in its place (its ``r``, ``r2``, ``decoded_r`` and ``create_redis`` fixtures
  give anypool pools; every other helper is re-exported from the upstream file);
* writes ``plugin.py`` as DEST's root ``conftest.py`` (starts the server, marks the known
  differences) and copies ``known_differences.toml`` and ``pytest.ini`` beside it.

Only the standard library: it runs in a fresh nox virtualenv before anything else.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sdist(redis_version: str, sdist_dir: Path) -> Path:
    """The path of redis-py's sdist for ``redis_version``, downloading it if it is not there."""
    path = sdist_dir / f"redis-{redis_version}.tar.gz"
    if not path.exists():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--no-binary", ":all:", "--dest", str(sdist_dir), f"redis=={redis_version}",
            ],
            check=True,
        )  # fmt: skip
    if not path.exists():
        raise SystemExit(f"pip download did not produce {path}")
    return path


def extract_tests(archive: Path, dest: Path) -> None:
    """Extract ``redis-X.Y.Z/tests/`` and ``LICENSE`` from ``archive`` into ``dest``."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/")
            if inner == "LICENSE" or inner.startswith("tests/"):
                member.name = inner
                members.append(member)
        if not any(m.name == "tests/test_asyncio/conftest.py" for m in members):
            raise SystemExit(f"{archive} has no tests/test_asyncio/conftest.py")
        tar.extractall(dest, members=members, filter="data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="directory to (re)create")
    parser.add_argument(
        "--sdist-dir", type=Path, default=None, help="where the sdist is cached (default: DEST/..)"
    )
    args = parser.parse_args()
    dest: Path = args.dest.resolve()
    sdist_dir: Path = (args.sdist_dir or dest.parent).resolve()
    archive = sdist(version("redis"), sdist_dir)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    extract_tests(archive, dest)
    asyncio_dir = dest / "tests" / "test_asyncio"
    (asyncio_dir / "conftest.py").rename(asyncio_dir / "upstream_conftest.py")
    shutil.copy(HERE / "harness.py", asyncio_dir / "conftest.py")
    shutil.copy(HERE / "plugin.py", dest / "conftest.py")
    shutil.copy(HERE / "known_differences.toml", dest / "known_differences.toml")
    shutil.copy(HERE / "pytest.ini", dest / "pytest.ini")
    print(f"redis-py {version('redis')}'s tests assembled in {dest}")


if __name__ == "__main__":
    main()
