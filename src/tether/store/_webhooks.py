"""The webhooks' state in Redis (``WebhookStore``), and the *desk*: the one node that delivers.

Every node serves the webhooks API, but one node at a time holds the desk: it keeps the
endpoints and deliveries log in memory, delivers every event of the one event log, and answers
the API for the others (``Webhooks`` forwards to it). One deliverer keeps each session's events
in order at each endpoint and each delivery's retries in one place; a consumer group spreading
events over nodes would give up both.

The desk is ``P webhook-desk`` = ``<node>:<token>``. A node takes it when it is free or its
holder's node lease is gone (lapsed, or given up at a clean exit: the desk goes with the
lease), with a token from ``P webhook-desk-fence``, which only grows; every write of the
webhooks' state carries the token and is refused once another node took the desk (a holder
paused past its lease wakes up to find its writes refused, and steps down). The keys
themselves (``_keys.py``): endpoints per workspace, deliveries per endpoint, the cursor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from tether.webhooks import DeliverySnapshot, EndpointSnapshot, LoadedWebhooks, WebhookBatch

from ._timeouts import answer_within

if TYPE_CHECKING:
    import coredis
    from coredis.commands.script import Script

    from ._keys import Keys

# KEYS: desk, fence. ARGV: this node, the token it holds ("" for none), the node keys' prefix.
# Returns the holder's node id and token, after taking the desk if it was free.
_TAKE = """
local held = redis.call('GET', KEYS[1])
if held then
  local node, token = string.match(held, '^(.*):(%d+)$')
  if node == ARGV[1] and token == ARGV[2] then return {node, tonumber(token)} end
  if node ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. node) == 1 then
    return {node, tonumber(token)}
  end
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token)
return {ARGV[1], token}
"""

# KEYS[1]: desk. ARGV[1]: "<node>:<token>" this write holds, then operations: "H" key field
# value (HSET), "D" key field (HDEL), "X" key (DEL), "S" key member (SADD), "T" key value (SET).
# Returns 0, writing nothing, if the desk is no longer this holder's.
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'H' then redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'D' then redis.call('HDEL', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 'X' then redis.call('DEL', ARGV[i + 1]); i = i + 2
  elseif op == 'S' then redis.call('SADD', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 'T' then redis.call('SET', ARGV[i + 1], ARGV[i + 2]); i = i + 3
  else return redis.error_reply('unknown operation ' .. op) end
end
return 1
"""


class DeskLost(RuntimeError):
    """A write of the webhooks' state was refused: another node holds the desk now."""


class RedisWebhookStore:
    """One node's view of the webhooks' state in Redis (made by ``RedisStore.webhooks``)."""

    def __init__(self, client: coredis.Redis[bytes], keys: Keys, node_id: str,
                 timeout: float, adopt_interval: float) -> None:
        self._client = client
        self.keys = keys
        self.node_id = node_id
        self.timeout = timeout
        #: How often a node looks at who holds the desk (takes it within this of a lapse).
        self.adopt_interval = adopt_interval
        self._token = ""  # the desk's token while this node holds it
        self._take: Script[bytes] = client.register_script(_TAKE)
        self._write: Script[bytes] = client.register_script(_WRITE)
        self._encode = msgspec.msgpack.Encoder().encode
        self._endpoint = msgspec.msgpack.Decoder(EndpointSnapshot).decode
        self._delivery = msgspec.msgpack.Decoder(DeliverySnapshot).decode

    @property
    def _held(self) -> str:
        return f"{self.node_id}:{self._token}"

    async def desk(self) -> str:
        """The node that holds the desk, after taking it if nobody alive held it."""
        keys = self.keys
        with answer_within(self.timeout):
            reply: Any = await self._take(keys=[keys.webhook_desk(), keys.webhook_desk_fence()],
                                          args=[self.node_id, self._token, keys.node("")])
        node: str = reply[0].decode()
        if node == self.node_id:
            self._token = str(reply[1])
        return node

    async def write_webhooks(self, batch: WebhookBatch) -> None:
        """One script: endpoints, deliveries, evictions and the cursor together, or nothing
        (:class:`DeskLost`) if this node no longer holds the desk."""
        keys, encode = self.keys, self._encode
        ops: list[Any] = [self._held]
        for ep in batch.endpoints:
            ops += ["H", keys.webhooks(ep.workspace_id), ep.id, encode(ep),
                    "S", keys.webhook_workspaces(), ep.workspace_id]
        for ws, hook in batch.deleted:
            ops += ["D", keys.webhooks(ws), hook, "X", keys.deliveries(ws, hook)]
        for d in batch.deliveries:
            ops += ["H", keys.deliveries(d.workspace_id, d.webhook_id), d.id, encode(d)]
        for ws, hook, delivery_id in batch.evicted:
            ops += ["D", keys.deliveries(ws, hook), delivery_id]
        if batch.cursor is not None:
            ops += ["T", keys.webhook_cursor(), batch.cursor]
        with answer_within(self.timeout):
            written: Any = await self._write(keys=[keys.webhook_desk()], args=ops)
        if not written:
            raise DeskLost(f"node {self.node_id} no longer holds the webhook desk")

    async def load_webhooks(self) -> LoadedWebhooks:
        client, keys = self._client, self.keys
        endpoints: list[EndpointSnapshot] = []
        deliveries: list[DeliverySnapshot] = []
        for raw_ws in await client.smembers(keys.webhook_workspaces()):
            ws = raw_ws.decode()
            for blob in (await client.hgetall(keys.webhooks(ws))).values():
                ep = self._endpoint(blob)
                endpoints.append(ep)
                stored = await client.hgetall(keys.deliveries(ws, ep.id))
                deliveries += [self._delivery(d) for d in stored.values()]
        cursor = await client.get(keys.webhook_cursor())
        return LoadedWebhooks(endpoints, deliveries, None if cursor is None else cursor.decode())
