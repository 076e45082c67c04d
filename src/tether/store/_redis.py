"""The engine's session store in Redis: ``Engine(config, store=RedisStore(url))``.

Data model (``P`` is the prefix, ``{ws}`` the workspace as a hash tag; see ``docs/redis.md``):

- ``P{ws}:s:<session>``: a hash; ``snap`` is the session's durable state
  (:class:`~tether.engine.SessionSnapshot`, msgpack), ``beat`` its latest heartbeat and
  telemetry (flushed in batches, so it may be newer than ``snap``);
- ``P{ws}:h:<session>``: its command history, a list capped like the engine's;
- ``P{ws}:fence:<session>``: its fencing counter, which grows by one on every take-over;
- ``P{ws}:sessions``, ``Pworkspaces``: what to load;
- ``Pevents``: the event log, a Stream trimmed to the engine's retention; ``Plog``: the log's run
  id and next offset, so event ids and consumers' cursors continue across restarts.

Every batch of the engine's journal is one Lua script, so it is written as a whole: a restart
sees a batch entirely or not at all. Each write of a session carries the token this process
holds for it and is skipped (with its events) when the counter has moved on: an old owner that
comes back from a pause cannot overwrite the process that took its sessions over.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import coredis
import msgspec

from tether.engine import (
    CommandEntry,
    Event,
    Heartbeat,
    Loaded,
    LoadedSession,
    LogPosition,
    SessionSnapshot,
    WriteBatch,
    with_heartbeat,
)
from tether.webhooks import (
    DeliverySnapshot,
    EndpointSnapshot,
    LoadedWebhooks,
    WebhookBatch,
)

from ._keys import DEFAULT_PREFIX, Keys

if TYPE_CHECKING:
    from coredis.commands.script import Script

log = logging.getLogger("tether.store")

# KEYS[1..3]: workspaces set, event stream, log hash; then each item's keys in turn.
# ARGV[1..8]: counts of sessions, history appends, beats, purges, events; stream maxlen; log
# run id ('' for none) and next offset; then each item's arguments in turn.
# Returns {claimed: {session id, token, ...}, stale: {session id, ...}}.
_WRITE = """
local ns, nh, nb, np, ne = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5])
local k, a = 4, 9
local claimed, stale, skip = {}, {}, {}
local function owns(fence, token, sid)
  if skip[sid] then return false end
  local held = redis.call('GET', fence)
  if token == '0' and not held then
    redis.call('SET', fence, '1')
    table.insert(claimed, sid)
    table.insert(claimed, '1')
    return true
  end
  if held == token then return true end
  if token == '0' then
    for i = 1, #claimed, 2 do
      if claimed[i] == sid then return true end
    end
  end
  skip[sid] = true
  table.insert(stale, sid)
  return false
end
for _ = 1, ns do
  local fence, hash, set = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local token, snap, ws, sid = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  k, a = k + 3, a + 4
  if owns(fence, token, sid) then
    redis.call('HSET', hash, 'snap', snap)
    redis.call('HDEL', hash, 'beat')
    redis.call('SADD', set, sid)
    redis.call('SADD', KEYS[1], ws)
  end
end
for _ = 1, nh do
  local fence, list = KEYS[k], KEYS[k + 1]
  local token, sid, cap, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  k = k + 2
  if owns(fence, token, sid) then
    for i = 1, n do redis.call('RPUSH', list, ARGV[a + 3 + i]) end
    redis.call('LTRIM', list, -cap, -1)
  end
  a = a + 4 + n
end
for _ = 1, nb do
  local fence, hash = KEYS[k], KEYS[k + 1]
  local token, sid, beat = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  k, a = k + 2, a + 3
  if owns(fence, token, sid) then redis.call('HSET', hash, 'beat', beat) end
end
for _ = 1, np do
  local fence, hash, list, set = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local token, sid = ARGV[a], ARGV[a + 1]
  k, a = k + 4, a + 2
  if owns(fence, token, sid) then
    redis.call('DEL', hash, list, fence)
    redis.call('SREM', set, sid)
  end
end
for _ = 1, ne do
  local sid, event = ARGV[a], ARGV[a + 1]
  a = a + 2
  if not skip[sid] then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'e', event)
  end
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[3], 'run_id', ARGV[7], 'next_offset', ARGV[8])
end
return {claimed, stale}
"""


class RedisStore:
    """Sessions, their histories and the event log in one Redis (``SessionStore``)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, node_id: str = "",
                 max_events: int = 1_000_000) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.node_id = node_id
        self.max_events = max_events
        self._client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
        self._script: Script[bytes] = self._client.register_script(_WRITE)
        self._tokens: dict[str, int] = {}  # session id -> the fencing token this process holds
        #: Sessions another process took over since: their writes are skipped.
        self.stale: set[str] = set()
        self._encode = msgspec.msgpack.Encoder().encode
        self._snap = msgspec.msgpack.Decoder(SessionSnapshot).decode
        self._beat = msgspec.msgpack.Decoder(Heartbeat).decode
        self._entry = msgspec.msgpack.Decoder(CommandEntry).decode
        self._event = msgspec.msgpack.Decoder(Event).decode
        self._endpoint = msgspec.msgpack.Decoder(EndpointSnapshot).decode
        self._delivery = msgspec.msgpack.Decoder(DeliverySnapshot).decode

    async def __aenter__(self) -> RedisStore:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.__aexit__(*exc)

    async def ping(self) -> None:
        await self._client.ping()

    # -- writing ---------------------------------------------------------------------------

    def _token(self, session_id: str) -> str:
        return str(self._tokens.get(session_id, 0))

    async def write(self, batch: WriteBatch) -> None:
        keys, encode = self.keys, self._encode
        script_keys: list[str] = [keys.workspaces(), keys.events(), keys.log()]
        args: list[Any] = [len(batch.sessions), len(batch.history), len(batch.heartbeats),
                           len(batch.purged), len(batch.events), self.max_events,
                           "" if batch.log is None else batch.log.run_id,
                           0 if batch.log is None else batch.log.next_offset]
        for snap in batch.sessions:
            ws, sid = snap.workspace_id, snap.session_id
            script_keys += [keys.fence(ws, sid), keys.session(ws, sid), keys.sessions(ws)]
            args += [self._token(sid), encode(snap), ws, sid]
        for append in batch.history:
            ws, sid = append.workspace_id, append.session_id
            script_keys += [keys.fence(ws, sid), keys.history(ws, sid)]
            args += [self._token(sid), sid, append.cap, len(append.entries)]
            args += [encode(entry) for entry in append.entries]
        for beat in batch.heartbeats:
            ws, sid = beat.workspace_id, beat.session_id
            script_keys += [keys.fence(ws, sid), keys.session(ws, sid)]
            args += [self._token(sid), sid, encode(beat)]
        for ws, sid in batch.purged:
            script_keys += [keys.fence(ws, sid), keys.session(ws, sid), keys.history(ws, sid),
                            keys.sessions(ws)]
            args += [self._token(sid), sid]
        for event in batch.events:
            args += [event.session_id, encode(event)]
        reply: Any = await self._script(keys=script_keys, args=args)
        claimed: list[bytes] = reply[0]
        stale: list[bytes] = reply[1]
        for i in range(0, len(claimed), 2):
            self._tokens[claimed[i].decode()] = int(claimed[i + 1])
        for _ws, sid in batch.purged:
            self._tokens.pop(sid, None)
        self.stale.update(raw.decode() for raw in stale)
        if stale:
            log.warning("%d sessions were taken over by another process: their writes were "
                        "refused", len(stale))

    # -- loading ---------------------------------------------------------------------------

    async def load(self) -> Loaded:
        """Everything stored; this process takes over every session (each one's fencing
        counter grows, so a previous owner that is still running can no longer write it)."""
        client, keys = self._client, self.keys
        workspaces = sorted(w.decode() for w in await client.smembers(keys.workspaces()))
        ids: list[tuple[str, str]] = []
        for ws in workspaces:
            ids += [(ws, sid.decode()) for sid in await client.smembers(keys.sessions(ws))]
        sessions: list[LoadedSession] = []
        for chunk in _chunks(ids, 1000):
            async with client.pipeline(transaction=False) as pipe:
                for ws, sid in chunk:
                    pipe.hmget(keys.session(ws, sid), ["snap", "beat"])
                    pipe.lrange(keys.history(ws, sid), 0, -1)
                    pipe.incr(keys.fence(ws, sid))
            results = pipe.results or ()
            for i, (_ws, sid) in enumerate(chunk):
                (snap_raw, beat_raw), history, token = results[3 * i : 3 * i + 3]
                if snap_raw is None:
                    continue  # purged meanwhile
                snap = with_heartbeat(self._snap(snap_raw),
                                      None if beat_raw is None else self._beat(beat_raw))
                self._tokens[sid] = int(token)
                sessions.append(LoadedSession(snap, [self._entry(e) for e in history]))
        entries: Any = await client.xrange(keys.events(), "-", "+")
        events = [self._event(entry.field_values[b"e"]) for entry in entries]
        position = await client.hgetall(keys.log())
        log_position = None
        if position:
            log_position = LogPosition(int(position[b"run_id"]), int(position[b"next_offset"]))
        return Loaded(sessions=sessions, events=events, log=log_position)


    # -- webhooks (``WebhookStore``) --------------------------------------------------------

    async def write_webhooks(self, batch: WebhookBatch) -> None:
        """One transaction: endpoints, deliveries, evictions and the cursor together."""
        keys, encode = self.keys, self._encode
        async with self._client.pipeline(transaction=True) as pipe:
            for ep in batch.endpoints:
                pipe.hset(keys.webhooks(ep.workspace_id), {ep.id: encode(ep)})
                pipe.sadd(keys.webhook_workspaces(), [ep.workspace_id])
            for ws, hook in batch.deleted:
                pipe.hdel(keys.webhooks(ws), [hook])
                pipe.delete([keys.deliveries(ws, hook)])
            for d in batch.deliveries:
                pipe.hset(keys.deliveries(d.workspace_id, d.webhook_id), {d.id: encode(d)})
            for ws, hook, delivery_id in batch.evicted:
                pipe.hdel(keys.deliveries(ws, hook), [delivery_id])
            if batch.cursor is not None:
                pipe.set(keys.webhook_cursor(), batch.cursor)
            pipe.ping()  # a batch with nothing in it still proves Redis answers

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


def _chunks(items: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
