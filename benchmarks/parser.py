"""Reply-parser cost: anypool's parsers against raw hiredis, on the same input, in one run.

    python benchmarks/parser.py

Prints microseconds per reply and the ratio to raw hiredis.Reader (which cannot be used as is:
it mis-parses RESP3 attributes and blob errors, and its "need data" sentinel collides with #f).
Not a test: figures depend on the machine; compare ratios, not absolute numbers.
"""

from __future__ import annotations

import random
import timeit
from collections.abc import Callable

import hiredis

from anypool._resp import NEED_DATA, HiredisParser, PythonParser

CASES = {
    "small bulk (GET)": b"$10\r\nvalue:0001\r\n",
    "status (SET)": b"+OK\r\n",
    "100-item array": b"*100\r\n" + b"$6\r\nitem00\r\n" * 100,
    "map of 10": b"%10\r\n" + b"".join(b"$2\r\nk%d\r\n:%d\r\n" % (i, i) for i in range(10)),
    "1 MiB bulk in 64 KiB reads": b"$1048576\r\n" + b"x" * 1048576 + b"\r\n",
    # binary values hold every byte, "|" and "!" included, so the guard's search runs
    "1 MiB random binary bulk": b"$1048576\r\n" + random.Random(7).randbytes(1048576) + b"\r\n",
    "100 text items with ! and |": b"*100\r\n" + b"$16\r\nhello! a|b world\r\n" * 100,
}


def runner(parser: object, data: bytes, chunk: int) -> Callable[[], None]:
    feed, gets = parser.feed, parser.gets  # type: ignore[attr-defined]
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    sentinel = NEED_DATA if not isinstance(parser, hiredis.Reader) else False

    def run() -> None:
        for piece in pieces:
            feed(piece)
        while gets() is not sentinel:
            pass

    return run


def main() -> None:
    print(f"{'case':28s} {'raw hiredis':>12s} {'anypool+hiredis':>16s} {'anypool python':>15s}")
    for name, data in CASES.items():
        chunk = 65536 if len(data) > 65536 else len(data)
        results = []
        for parser in (hiredis.Reader(), HiredisParser(), PythonParser()):
            run = runner(parser, data, chunk)
            number = max(1, 200_000 // max(1, len(data) // 64))
            best = min(timeit.repeat(run, number=number, repeat=5)) / number
            results.append(best * 1e6)
        raw = results[0]
        print(
            f"{name:28s} {raw:10.2f}us {results[1]:9.2f}us x{results[1] / raw:4.1f}"
            f" {results[2]:8.2f}us x{results[2] / raw:4.1f}"
        )


if __name__ == "__main__":
    main()
