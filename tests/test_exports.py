"""The public surface is exactly what __all__ (and the docs) say."""

from __future__ import annotations

import anypool
import anypool.testing


def test_all_is_sorted_unique_and_importable() -> None:
    for module in (anypool, anypool.testing):
        names = module.__all__
        assert len(set(names)) == len(names)
        for name in names:
            assert getattr(module, name) is not None


def test_no_private_names_leak() -> None:
    public = {name for name in dir(anypool) if not name.startswith("_")}
    modules = {"testing"}
    assert public - modules == set(anypool.__all__)


def test_public_classes_claim_the_package() -> None:
    for name in anypool.__all__:
        obj = getattr(anypool, name)
        if isinstance(obj, type) and obj is not anypool.ResponseError:
            assert obj.__module__.startswith("anypool"), name


def test_the_library_logger_has_a_null_handler_and_nothing_else() -> None:
    """A library never configures logging: without a handler of the application's, anypool's
    warnings must not reach Python's last-resort handler (stderr)."""
    import logging
    import subprocess
    import sys

    handlers = logging.getLogger("anypool").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)
    code = (
        "import logging, anypool\n"
        "logging.getLogger('anypool.pool').warning('should not be printed')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "should not be printed" not in result.stderr
