"""Redis Cluster: the slot table and routing (pure), topology discovery (a supervised task),
and the cluster client.

* ``_slots``: key slots, the slot table, what ``CLUSTER SHARDS``/``SLOTS`` and ``MOVED`` say;
* ``_keys``: which arguments are keys, from the server's ``COMMAND`` metadata;
* ``_routing``: where a command goes, and how split or fanned-out replies are merged;
* ``_topology``: the task that keeps the slot table current;
* ``_client``: :class:`RedisCluster`, one anypool pool per node.
"""

from ._client import ClusterPipeline as ClusterPipeline
from ._client import RedisCluster as RedisCluster
from ._slots import SLOTS as SLOTS
from ._slots import Node as Node
from ._slots import Shard as Shard
from ._slots import SlotTable as SlotTable

__all__ = ["SLOTS", "ClusterPipeline", "Node", "RedisCluster", "Shard", "SlotTable"]
