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

    def fence(self, workspace_id: str, session_id: str) -> str:
        """The session's fencing counter: grows by one on every take-over, never expires."""
        return f"{self._ws(workspace_id)}fence:{session_id}"

    def session(self, workspace_id: str, session_id: str) -> str:
        """A hash: ``snap`` (the session's durable state), ``beat`` (its latest heartbeat)."""
        return f"{self._ws(workspace_id)}s:{session_id}"

    def history(self, workspace_id: str, session_id: str) -> str:
        """A list: the session's command history, oldest first, capped."""
        return f"{self._ws(workspace_id)}h:{session_id}"

    def output(self, workspace_id: str, session_id: str) -> str:
        """A stream: the session's retained output, one entry per chunk, its id
        ``<offset>-1`` (so ids are byte offsets: a range is a read, ``MINID`` a trim by
        bytes); the session hash's ``n`` is the offset the next byte gets."""
        return f"{self._ws(workspace_id)}out:{session_id}"

    def machines(self, workspace_id: str) -> str:
        """A hash: machine id -> its live (active) session id, in the workspace."""
        return f"{self._ws(workspace_id)}machines"

    def sessions(self, workspace_id: str) -> str:
        """A set: the workspace's retained session ids."""
        return f"{self._ws(workspace_id)}sessions"

    def node(self, node_id: str) -> str:
        """A string with a TTL: the node is alive while it exists (it renews it)."""
        return f"{self.prefix}node:{node_id}"

    def inbox(self, node_id: str) -> str:
        """A list: messages for a node (writes forwarded to it, answers to its own)."""
        return f"{self.prefix}inbox:{node_id}"

    def nodes(self) -> str:
        """A hash: every node that registered (id -> when it started), alive or not; a node
        is alive while its ``node`` key exists."""
        return f"{self.prefix}nodes"

    def workspaces(self) -> str:
        """A set: every workspace with a retained session."""
        return f"{self.prefix}workspaces"

    def events(self) -> str:
        """A stream: the event log."""
        return f"{self.prefix}events"

    def changes(self) -> str:
        """A stream: what each node wrote, for the other nodes to follow (kept a minute)."""
        return f"{self.prefix}changes"

    def log(self) -> str:
        """A hash: the event log's ``run_id`` and ``next_offset``."""
        return f"{self.prefix}log"

    def webhooks(self, workspace_id: str) -> str:
        """A hash: the workspace's webhook endpoints by id (secrets included)."""
        return f"{self._ws(workspace_id)}hooks"

    def deliveries(self, workspace_id: str, webhook_id: str) -> str:
        """A hash: an endpoint's logged deliveries by id."""
        return f"{self._ws(workspace_id)}dlv:{webhook_id}"

    def webhook_workspaces(self) -> str:
        """A set: every workspace with a webhook endpoint."""
        return f"{self.prefix}webhook-workspaces"

    def webhook_cursor(self) -> str:
        """A string: the last event the webhook dispatcher made into deliveries."""
        return f"{self.prefix}webhook-cursor"

    def webhook_desk(self) -> str:
        """A string ``<node>:<token>``: the node that delivers webhooks, while its lease holds."""
        return f"{self.prefix}webhook-desk"

    def webhook_desk_fence(self) -> str:
        """The desk's fencing counter: grows by one whenever a node takes the desk."""
        return f"{self.prefix}webhook-desk-fence"
