"""Ownership of a live session: a lease in Redis, with a fencing token.

The node that holds a session's agent socket runs its actor; it proves that by holding the
session's lease, a key with a TTL that it renews. Taking a lease that is free (never held, or
expired because its owner died or stalled) increments the session's fencing counter, and the
new value is the owner's token. Every write of the session's state runs in a script that first
checks the token against the counter (:data:`FENCE_CHECK`), so an owner that was paused past
its lease (a GC pause, SIGSTOP, a partition) and comes back can never overwrite what the node
that took over has written: its token is older, and the write is refused as a whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coredis.exceptions import ResponseError

if TYPE_CHECKING:
    from coredis import Redis
    from coredis.commands.script import Script


class LeaseLost(Exception):
    """The lease is held by another node (or was lost to one)."""


class StaleFence(Exception):
    """A write carried a fencing token older than the session's counter: a newer owner exists."""


#: Lua prelude for every fenced write: KEYS[1] is the fence counter, ARGV[1] the writer's token.
FENCE_CHECK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('STALEFENCE ' .. (redis.call('GET', KEYS[1]) or 'none'))
end
"""

# KEYS: lease, fence. ARGV: node id, ttl ms. Returns the token, or {owner} if another holds it.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then
  local owner, token = string.match(held, '^(.*) (%d+)$')
  if owner == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return {owner}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lease. ARGV: "<node> <token>", ttl ms. 1 if renewed, 0 if no longer ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: "<node> <token>". 1 if released, 0 if it was no longer ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """One node's lease on one thing (a session; a node's own liveness), with the fencing
    counter beside it. ``token`` is ``None`` until acquired."""

    def __init__(self, client: Redis[Any], lease_key: str, fence_key: str, node_id: str,
                 ttl: float) -> None:
        self.client = client
        self.lease_key = lease_key
        self.fence_key = fence_key
        self.node_id = node_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self.token: int | None = None
        self._acquire: Script[Any] = client.register_script(_ACQUIRE)
        self._renew: Script[Any] = client.register_script(_RENEW)
        self._release: Script[Any] = client.register_script(_RELEASE)

    @property
    def _held_as(self) -> str:
        return f"{self.node_id} {self.token}"

    async def acquire(self) -> int:
        """Take the lease (or extend it, if this node holds it already): the fencing token.

        Raises :class:`LeaseLost` naming the owner if another node holds it.
        """
        result: Any = await self._acquire(keys=[self.lease_key, self.fence_key],
                                     args=[self.node_id, self.ttl_ms])
        if isinstance(result, list):
            raise LeaseLost(f"held by node {_text(result[0])}")
        self.token = int(result)
        return self.token

    async def renew(self) -> None:
        """Extend the lease by its TTL. Raises :class:`LeaseLost` if it is no longer ours."""
        if self.token is None or not await self._renew(keys=[self.lease_key],
                                                      args=[self._held_as, self.ttl_ms]):
            raise LeaseLost("expired, or taken by another node")

    async def release(self) -> bool:
        """Give the lease up (the fencing counter stays); ``False`` if it was no longer ours."""
        if self.token is None:
            return False
        released = bool(await self._release(keys=[self.lease_key], args=[self._held_as]))
        self.token = None
        return released


async def run_fenced(script: Script[Any], fence_key: str, token: int, keys: list[str],
                     args: list[Any]) -> Any:
    """Run a script that starts with :data:`FENCE_CHECK` (its KEYS[1] and ARGV[1] are the fence
    counter and ``token``; ``keys`` and ``args`` follow). Raises :class:`StaleFence` if a newer
    owner exists: then nothing of the script was written."""
    try:
        return await script(keys=[fence_key, *keys], args=[token, *args])
    except ResponseError as exc:
        if str(exc).startswith("STALEFENCE"):
            raise StaleFence(str(exc)) from None
        raise


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
