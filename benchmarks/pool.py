"""Cost of an uncontended acquire + release, against anyio's CapacityLimiter, on each backend.

    python benchmarks/pool.py

The issue's figures: ``CapacityLimiter.acquire()`` + ``release()`` ~7 us per pair (it yields to
the event loop once), a nowait fast path well under 1 us.  anypool's ``acquire()`` takes the
nowait path when a slot is free and only checks for cancellation (no yield), so its pair cost
is bookkeeping.  Not a test: compare the ratios printed in one run.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from anypool import Pool, ResourceFactory

PAIRS = 100_000


class Token(ResourceFactory[object]):
    async def create(self) -> object:
        return object()

    async def close(self, resource: object) -> None:
        pass


async def measure() -> dict[str, float]:
    results: dict[str, float] = {}
    limiter = anyio.CapacityLimiter(16)
    started = time.perf_counter()
    for _ in range(PAIRS):
        await limiter.acquire()
        limiter.release()
    results["CapacityLimiter acquire+release"] = (time.perf_counter() - started) / PAIRS

    token = object()
    started = time.perf_counter()
    for _ in range(PAIRS):
        limiter.acquire_on_behalf_of_nowait(token)
        limiter.release_on_behalf_of(token)
    results["CapacityLimiter nowait pair"] = (time.perf_counter() - started) / PAIRS

    async with Pool(Token(), max_size=16, health_check_interval=None) as pool:
        async with pool.acquire():
            pass
        started = time.perf_counter()
        for _ in range(PAIRS):
            async with pool.acquire():
                pass
        results["anypool Pool.acquire() pair"] = (time.perf_counter() - started) / PAIRS
        started = time.perf_counter()
        for _ in range(PAIRS):
            lease = await pool.lease()
            await pool.release(lease)
        results["anypool Pool.lease()/release()"] = (time.perf_counter() - started) / PAIRS
    return results


# (label, anyio backend, its options): uvloop is asyncio on uvloop's event loop
BACKENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("asyncio", "asyncio", {}),
    ("trio", "trio", {}),
    ("uvloop", "asyncio", {"use_uvloop": True}),
]


def main() -> None:
    for label, backend, options in BACKENDS:
        try:
            results = anyio.run(measure, backend=backend, backend_options=options)
        except ImportError as exc:  # uvloop is optional (and does not exist on Windows)
            print(f"--- {label} skipped: {exc.name or exc} is not installed")
            continue
        base = results["CapacityLimiter acquire+release"]
        print(f"--- {label}")
        for name, seconds in results.items():
            print(f"{name:34s} {seconds * 1e6:7.2f} us   x{seconds / base:5.2f}")


if __name__ == "__main__":
    main()
