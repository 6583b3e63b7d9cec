"""anypool: a Redis connection pool and client for structured concurrency (trio and asyncio)."""

import logging as _logging

from ._backoff import BreakerState as BreakerState
from ._blocking import BlockingRedisCluster as BlockingRedisCluster
from ._blocking import BlockingRedisPool as BlockingRedisPool
from ._client import Lock as Lock
from ._client import Pipeline as Pipeline
from ._client import RedisConnection as RedisConnection
from ._client import RedisPool as RedisPool
from ._client import Script as Script
from ._cluster import ClusterPipeline as ClusterPipeline
from ._cluster import RedisCluster as RedisCluster
from ._config import BackoffPolicy as BackoffPolicy
from ._config import BreakerPolicy as BreakerPolicy
from ._config import PoolConfig as PoolConfig
from ._config import RedisConfig as RedisConfig
from ._config import split_url as split_url
from ._errors import AnyPoolError as AnyPoolError
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ClusterError as ClusterError
from ._errors import CommandNotAllowed as CommandNotAllowed
from ._errors import ConfigError as ConfigError
from ._errors import ConnectError as ConnectError
from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import ConnectionError as ConnectionError
from ._errors import ConnectionLost as ConnectionLost
from ._errors import ConnectionRetired as ConnectionRetired
from ._errors import ConnectTimeout as ConnectTimeout
from ._errors import CrossSlotError as CrossSlotError
from ._errors import InvalidArgument as InvalidArgument
from ._errors import MessagesLost as MessagesLost
from ._errors import PoolClosed as PoolClosed
from ._errors import PoolError as PoolError
from ._errors import PoolExhausted as PoolExhausted
from ._errors import PoolTimeout as PoolTimeout
from ._errors import PoolUnavailable as PoolUnavailable
from ._errors import PrimaryNotFound as PrimaryNotFound
from ._errors import ProtocolError as ProtocolError
from ._errors import ReplicaNotFound as ReplicaNotFound
from ._errors import ReplyDecodeError as ReplyDecodeError
from ._errors import ResponseError as ResponseError
from ._errors import SlowConsumer as SlowConsumer
from ._errors import SubscriptionLost as SubscriptionLost
from ._errors import TimeoutError as TimeoutError
from ._errors import TooManyWaiters as TooManyWaiters
from ._pool import Lease as Lease
from ._pool import Pool as Pool
from ._pool import ResourceFactory as ResourceFactory
from ._pubsub import Listener as Listener
from ._pubsub import Message as Message
from ._pubsub import PubSub as PubSub
from ._pubsub import Reconnected as Reconnected
from ._pubsub import RestartPolicy as RestartPolicy
from ._pubsub import Subscription as Subscription
from ._stats import Health as Health
from ._stats import PoolStatistics as PoolStatistics

__version__ = "0.1.0.dev0"

# A library logs; the application decides where the records go.  Without a handler of its own,
# Python would print anypool's warnings through its "last resort" handler.
_logging.getLogger("anypool").addHandler(_logging.NullHandler())

__all__ = [
    "AnyPoolError",
    "AuthenticationError",
    "BackoffPolicy",
    "BlockingRedisCluster",
    "BlockingRedisPool",
    "BreakerPolicy",
    "BreakerState",
    "ClusterError",
    "ClusterPipeline",
    "CommandNotAllowed",
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "ConnectionError",
    "ConnectionLost",
    "ConnectionRetired",
    "CrossSlotError",
    "Health",
    "InvalidArgument",
    "Lease",
    "Listener",
    "Lock",
    "Message",
    "MessagesLost",
    "Pipeline",
    "Pool",
    "PoolClosed",
    "PoolConfig",
    "PoolError",
    "PoolExhausted",
    "PoolStatistics",
    "PoolTimeout",
    "PoolUnavailable",
    "PrimaryNotFound",
    "ProtocolError",
    "PubSub",
    "Reconnected",
    "RedisConfig",
    "RedisCluster",
    "RedisConnection",
    "RedisPool",
    "ReplicaNotFound",
    "ReplyDecodeError",
    "ResourceFactory",
    "ResponseError",
    "RestartPolicy",
    "Script",
    "SlowConsumer",
    "Subscription",
    "SubscriptionLost",
    "TimeoutError",
    "TooManyWaiters",
    "split_url",
]
