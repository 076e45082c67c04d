"""State past one process: Tether's data in Redis (``tether serve --redis URL``).

The in-memory engine stays the embedded default. This package holds what Redis mode is built
from; see ``docs/redis.md`` for the data model. It may import the engine, never the reverse.
"""

from ._keys import DEFAULT_PREFIX, Keys
from ._redis import RedisStore, default_node_id
from ._webhooks import DeskLost, RedisWebhookStore

__all__ = [
    "DEFAULT_PREFIX",
    "DeskLost",
    "Keys",
    "RedisStore",
    "RedisWebhookStore",
    "default_node_id",
]
