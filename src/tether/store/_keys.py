"""Every key Tether writes in Redis, in one place.

Every key starts with the deployment's prefix (``--redis-prefix``, default ``tether:``), so
deployments and tests can share one Redis. A workspace's keys carry it as a hash tag
(``{ws_acme}``): on Redis Cluster one workspace's keys, streams and scripts stay on one shard.
"""

from __future__ import annotations

DEFAULT_PREFIX = "tether:"


class Keys:
    """Key names under one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or any(c.isspace() for c in prefix) or "{" in prefix or "}" in prefix:
            raise ValueError(
                f"redis prefix {prefix!r}: must be non-empty, without spaces or braces"
            )
        self.prefix = prefix

    def _ws(self, workspace_id: str) -> str:
        return f"{self.prefix}{{{workspace_id}}}:"

    def lease(self, workspace_id: str, session_id: str) -> str:
        """Which node owns a live session: ``"<node id> <fencing token>"``, with a TTL."""
        return f"{self._ws(workspace_id)}lease:{session_id}"

    def fence(self, workspace_id: str, session_id: str) -> str:
        """The session's fencing counter: grows by one on every take-over, never expires."""
        return f"{self._ws(workspace_id)}fence:{session_id}"
