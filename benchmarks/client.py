"""anypool against redis.asyncio and coredis, on one server, in one run: ops/s and ratios.

    python benchmarks/client.py [--url redis://...] [--duration 2] [--pin] [--json FILE]

The same benchmark as ``anypool bench`` (it runs that command): sequential GET, N concurrent
tasks doing GETs (``--concurrency 1,16,64,256``, max_size=16), and pipelines of 100 SETs.
Without --url an embedded redis-server is started and stopped.  With --pin, client and server
run on CPU 0 (stable CPU-efficiency figures on a 2-core machine; see DESIGN.md).  Peers that
are not installed are skipped and said so.
"""

import sys

from anypool._cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
