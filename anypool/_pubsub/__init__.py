"""Pub/sub: subscriptions on dedicated connections, served by supervised tasks in the pool's
task group.

* ``_wire``: subscribed mode on the wire, without I/O (frames, and the commands they answer);
* ``_subscription``: the events, and a subscription's buffer with its backpressure policy;
* ``_hub``: subscriber connections, their reader and writer, reconnection and gaps;
* ``_listener``: supervised listeners (a handler per event, restarted within a budget);
* ``_redispy``: redis-py's PubSub API (message dicts, handlers, ``run()``) over a subscription;
* ``_methods``: a client's pub/sub methods (``subscribe()``... ``pubsub_statistics()``).
"""

from ._hub import Hub as Hub
from ._hub import HubHost as HubHost
from ._hub import Placement as Placement
from ._hub import subscription as subscription
from ._listener import Listener as Listener
from ._listener import RestartPolicy as RestartPolicy
from ._methods import PubSubMethods as PubSubMethods
from ._redispy import PubSub as PubSub
from ._subscription import Event as Event
from ._subscription import Message as Message
from ._subscription import Policy as Policy
from ._subscription import Reconnected as Reconnected
from ._subscription import Subscription as Subscription
from ._wire import Kind as Kind

__all__ = [
    "Event", "Hub", "HubHost", "Kind", "Listener", "Message", "Placement", "Policy", "PubSub",
    "PubSubMethods", "Reconnected", "RestartPolicy", "Subscription", "subscription",
]  # fmt: skip
