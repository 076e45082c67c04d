"""The engine's session store in Redis: ``Engine(config, store=RedisStore(url))``.

Data model (``P`` is the prefix, ``{ws}`` the workspace as a hash tag; see ``docs/redis.md``):

- ``P{ws}:s:<session>``: a hash; ``snap`` is the session's durable state
  (:class:`~tether.engine.SessionSnapshot`, msgpack), ``beat`` its latest heartbeat and
  telemetry (flushed in batches, so it may be newer than ``snap``);
- ``P{ws}:h:<session>``: its command history, a list capped like the engine's;
- ``P{ws}:fence:<session>``: its fencing counter, which grows by one on every take-over;
- ``Pnode:<node>``: the node's lease, a key with a TTL it renews while it runs; a live
  session's hash names its owner (field ``o``), and a session whose owner's lease has lapsed
  is an orphan, which any node may adopt;
- ``P{ws}:machines``: machine id -> its live session (set while live, cleared when it ends);
- ``P{ws}:sessions``, ``Pworkspaces``: what to load;
- ``Pevents``: the event log, a Stream trimmed to the engine's retention; ``Plog``: the log's run
  id and next offset, so event ids and consumers' cursors continue across restarts.

Every batch of the engine's journal is one Lua script, so it is written as a whole: a restart
sees a batch entirely or not at all. Each write of a session carries the token this process
holds for it and is skipped (with its events) when the counter has moved on: an old owner that
comes back from a pause cannot overwrite the process that took its sessions over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import coredis
import msgspec
import trio

from tether.engine import (
    Changes,
    CommandEntry,
    Displaced,
    Event,
    Heartbeat,
    HistoryAppend,
    Loaded,
    LoadedSession,
    LogPosition,
    OutputAppend,
    OutputChunk,
    SessionSnapshot,
    StoredOutput,
    WriteBatch,
    with_heartbeat,
)

from ._keys import DEFAULT_PREFIX, Keys
from ._timeouts import RedisTimeout, answer_within
from ._webhooks import RedisWebhookStore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from coredis.commands.script import Script

log = logging.getLogger("tether.store")

#: Sessions written per script: each script is atomic and blocks Redis while it runs, so a
#: mass change (a restart adopting 100,000 sessions) goes out in many short scripts.
CHUNK = 256

# Both scripts below end by adding what they wrote to the change feed, as one entry: its
# number (one more than the entry before, from the log hash's ``feed``, so a reader knows when
# it missed one), the writing node and the fields (``fields``), trimming entries older than
# ``retention`` ms by Redis's clock.
_FEED = """
local function to_feed(stream, log, node, retention, fields)
  if #fields == 0 then return end
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - retention
  local count = redis.call('HINCRBY', log, 'feed', 1)
  redis.call('XADD', stream, 'MINID', '~', oldest, '*', 'c', count, 'n', node, unpack(fields))
end
"""

# One script per chunk of sessions. KEYS[1..4]: workspaces set, event stream, log hash, change
# feed; then per session: fence, hash, history list, workspace's sessions set, workspace's
# machines hash, output stream.
# ARGV[1..4]: sessions in the chunk, event stream maxlen, this node's id, how long the change
# feed keeps an entry (ms); then per session: token,
# session id, workspace, machine, live ('1' if its snapshot is not in a final status),
# snapshot ('' for none), heartbeat ('' for none), purge ('1'), its history append as one
# blob for the change feed ('' for none), history cap, number of its first history entry, n,
# the n entries, m, then m pairs of (event sequence, event), then the output: bytes to keep,
# c, then c quadruples (offset, data, stream, command id or '').
# A session's writes are idempotent, so a batch retried after a lost answer writes nothing
# twice: history entries are pushed only past the count kept in the hash (field ``h``),
# events only past the last sequence written (field ``q``), output only from the stored end
# on (field ``n``: the offset the next byte gets; each chunk an entry ``<offset>-1`` in the
# session's output stream, trimmed with MINID; ``f``: the oldest offset retained, as memory
# retains it, on a character boundary). Each event written
# gets the log's next offset (the log hash's ``next_offset``, one counter for every node),
# kept beside it in the stream (``o``), so the event log is one, in the order of the writes,
# across nodes.
# What was written goes on the change feed as one entry (``c``: its number, one more than the
# entry before, from the log hash's ``feed``, so a reader knows when it missed one; ``n``: the
# node; ``s<id>``,
# ``b<id>``, ``h<id>``: a snapshot, heartbeat, history append; ``p<id>``: a purge, with the
# workspace), for the other nodes to read.
# Returns {claimed: {session id, token, ...}, stale: {session id, ...}, displaced: {workspace,
# session id, owner, ...}}: live sessions that lost their machine to a newer one.
_WRITE = _FEED + """
local n = tonumber(ARGV[1])
local k, a = 5, 5
local function whole(x) return string.format('%.0f', x) end
local claimed, stale, displaced, feed = {}, {}, {}, {}
for _ = 1, n do
  local fence, hash, list, set = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local machines, out = KEYS[k + 4], KEYS[k + 5]
  local token, sid, ws, machine = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local live, snap, beat, purge = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local appended = ARGV[a + 8]
  local cap, first, nh = tonumber(ARGV[a + 9]), tonumber(ARGV[a + 10]), tonumber(ARGV[a + 11])
  local h0 = a + 12
  local ne = tonumber(ARGV[h0 + nh])
  local e0 = h0 + nh + 1
  local keep, no = tonumber(ARGV[e0 + 2 * ne]), tonumber(ARGV[e0 + 2 * ne + 1])
  local o0 = e0 + 2 * ne + 2
  k, a = k + 6, o0 + 4 * no
  local held = redis.call('GET', fence)
  local owner = held == token
  if token == '0' and not held then
    redis.call('SET', fence, '1')
    table.insert(claimed, sid)
    table.insert(claimed, '1')
    owner = true
  end
  if not owner then
    table.insert(stale, sid)
  elseif purge == '1' then
    redis.call('DEL', hash, list, fence, out)
    redis.call('SREM', set, sid)
    table.insert(feed, 'p' .. sid)
    table.insert(feed, ws)
  else
    if snap ~= '' then
      local fresh = redis.call('HEXISTS', hash, 'snap') == 0
      redis.call('HSET', hash, 'snap', snap)
      redis.call('HDEL', hash, 'beat')
      redis.call('SADD', set, sid)
      redis.call('SADD', KEYS[1], ws)
      -- the machine -> active session map and the owner: set while live, cleared at the end
      if live == '1' then
        -- Two hellos for one machine may race on two nodes: the newer session takes the map
        -- and reports the one it displaced (ws, id, owner), which its node has replaced; an
        -- older session written after that finds the map taken and reports itself.
        local current = redis.call('HGET', machines, machine)
        if current ~= sid then
          local other = current and redis.call(
            'HGET', string.sub(hash, 1, #hash - #sid) .. current, 'o')
          if not other or fresh then
            redis.call('HSET', machines, machine, sid)
          end
          if other and fresh then
            table.insert(displaced, ws)
            table.insert(displaced, current)
            table.insert(displaced, other)
          elseif other then
            table.insert(displaced, ws)
            table.insert(displaced, sid)
            table.insert(displaced, ARGV[3])
          end
        end
        redis.call('HSET', hash, 'o', ARGV[3])
      else
        redis.call('HDEL', hash, 'o')
        if redis.call('HGET', machines, machine) == sid then
          redis.call('HDEL', machines, machine)
        end
      end
      table.insert(feed, 's' .. sid)
      table.insert(feed, snap)
    end
    if beat ~= '' then
      redis.call('HSET', hash, 'beat', beat)
      table.insert(feed, 'b' .. sid)
      table.insert(feed, beat)
    end
    if nh > 0 then
      local have = tonumber(redis.call('HGET', hash, 'h') or '0')
      for i = 0, nh - 1 do
        if first + i >= have then redis.call('RPUSH', list, ARGV[h0 + i]) end
      end
      redis.call('HSET', hash, 'h', math.max(have, first + nh))
      redis.call('LTRIM', list, -cap, -1)
      table.insert(feed, 'h' .. sid)
      table.insert(feed, appended)
    end
    if ne > 0 then
      local seq = tonumber(redis.call('HGET', hash, 'q') or '0')
      for i = 0, ne - 1 do
        local s = tonumber(ARGV[e0 + 2 * i])
        if s > seq then
          local offset = redis.call('HINCRBY', KEYS[3], 'next_offset', 1) - 1
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'o', offset,
                     'e', ARGV[e0 + 2 * i + 1])
          seq = s
        end
      end
      redis.call('HSET', hash, 'q', seq)
    end
    if no > 0 then
      local nxt = tonumber(redis.call('HGET', hash, 'n') or '0')
      for i = 0, no - 1 do
        local at, data = ARGV[o0 + 4 * i], ARGV[o0 + 4 * i + 1]
        if tonumber(at) >= nxt then
          redis.call('XADD', out, at .. '-1', 'd', data, 's', ARGV[o0 + 4 * i + 2],
                     'c', ARGV[o0 + 4 * i + 3])
          nxt = tonumber(at) + #data
        end
      end
      redis.call('HSET', hash, 'n', whole(nxt))
      -- Keep the last ``keep`` bytes, as memory does: from the first character boundary at or
      -- after the cut (field ``f``), in the entries from the one holding it.
      local cut = nxt - keep
      if cut > tonumber(redis.call('HGET', hash, 'f') or '0') then
        local held = redis.call('XREVRANGE', out, whole(cut) .. '-1', '-', 'COUNT', 1)[1]
        if held then
          local at = tonumber(string.match(held[1], '^%d+'))
          local data = held[2][2]
          local i = cut - at + 1
          while i <= #data and string.byte(data, i) >= 128 and string.byte(data, i) < 192 do
            i = i + 1
          end
          cut = at + i - 1
          redis.call('XTRIM', out, 'MINID', held[1])
        end
        redis.call('HSET', hash, 'f', whole(cut))
      end
    end
  end
end
to_feed(KEYS[4], KEYS[3], ARGV[3], ARGV[4], feed)
return {claimed, stale, displaced}
"""

# Take sessions over, a chunk at a time. KEYS[1..2]: change feed, log hash; then per session:
# fence, hash. ARGV[1..4]: '1' to take each whoever holds it (its agent is here now), this
# node's id, how long the change feed keeps an entry (ms), sessions in the chunk; then per
# session: the owner the caller found gone ('' for none), session id, workspace.
# Returns per session the new fencing token; the owner's id if another node took it
# meanwhile; 0 if the session is gone (purged). A session that has ended has no owner: any
# node may take it. The new owner of live sessions goes on the change feed, one entry for the
# chunk (``o<id>``: the workspace), so a previous owner that is alive lets go of them.
_CLAIM = _FEED + """
local answers, feed = {}, {}
for i = 0, tonumber(ARGV[4]) - 1 do
  local fence, hash = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local expected, sid, ws = ARGV[5 + 3 * i], ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  local answer = 0
  if redis.call('EXISTS', hash) == 1 then
    local owner = redis.call('HGET', hash, 'o')
    -- Unforced (an adoption), a claim holds only while the owner is still the one found
    -- gone: not if another node took it meanwhile, nor if this node did (its take-over's
    -- token is in use: raising the fence again would refuse the batch being written).
    if owner and ARGV[1] ~= '1' and owner ~= expected then
      answer = owner
    else
      answer = redis.call('INCR', fence)
      if owner then
        redis.call('HSET', hash, 'o', ARGV[2])
        if owner ~= ARGV[2] then
          table.insert(feed, 'o' .. sid)
          table.insert(feed, ws .. '\0' .. answer)
        end
      end
    end
  end
  table.insert(answers, answer)
end
to_feed(KEYS[1], KEYS[2], ARGV[2], ARGV[3], feed)
return answers
"""

#: How long the change feed keeps what a node wrote: a node that falls further behind than
#: this reads every session again (``Changes.complete``).
FEED_RETENTION_MS = 60_000


def default_node_id() -> str:
    """Hostname, pid and a random suffix: unique per process, readable in Redis and logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class _Item:
    """What one batch writes of one session."""

    __slots__ = ("beat", "events", "history", "output", "purge", "snap", "workspace_id")

    def __init__(self, workspace_id: str) -> None:
        self.workspace_id = workspace_id
        self.snap: SessionSnapshot | None = None
        self.beat: Heartbeat | None = None
        self.purge = False
        self.history: HistoryAppend | None = None
        self.events: list[Event] = []
        self.output: OutputAppend | None = None


class RedisStore:
    """Sessions, their histories and the event log in one Redis (``SessionStore``), for one
    node: ``node_id`` names it in Redis, and its lease lapses ``lease_ttl`` seconds after the
    node stops renewing it (a crash, a pause); then other nodes adopt its live sessions."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, node_id: str | None = None,
                 lease_ttl: float = 10.0, max_events: int = 1_000_000,
                 timeout: float = 3.0) -> None:
        """``timeout`` bounds each write's round trip (a batch is many scripts): past it,
        Redis counts as away (:class:`RedisTimeout`) and the write is retried."""
        if lease_ttl <= 0:
            raise ValueError(f"lease_ttl must be positive, not {lease_ttl!r}")
        self.url = url
        self.keys = Keys(prefix)
        self.node_id = node_id or default_node_id()
        self.lease_ttl = lease_ttl
        #: How often the engine looks for orphans among the sessions other nodes own.
        self.adopt_interval = min(1.0, lease_ttl / 4)
        self.max_events = max_events
        self.timeout = timeout
        self._client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
        self._script: Script[bytes] = self._client.register_script(_WRITE)
        self._claim: Script[bytes] = self._client.register_script(_CLAIM)
        self._tokens: dict[str, int] = {}  # session id -> the fencing token this process holds
        #: Sessions another process took over since: their writes are skipped.
        self.stale: set[str] = set()
        self._registered = False
        self._renewed_at = 0.0  # trio time of the lease's last renewal
        #: The nodes alive on this Redis (this one included), as last seen (every TTL/3).
        self.live_nodes: list[str] = []
        self._encode = msgspec.msgpack.Encoder().encode
        self._snap = msgspec.msgpack.Decoder(SessionSnapshot).decode
        self._beat = msgspec.msgpack.Decoder(Heartbeat).decode
        self._entry = msgspec.msgpack.Decoder(CommandEntry).decode
        self._history = msgspec.msgpack.Decoder(HistoryAppend).decode
        self._feed_position = b"0-0"  # the change feed's last entry when load() ran
        self._feed_count = 0  # and its number
        self._events_position = b"0-0"  # the last event stream entry this store has read
        self._event = msgspec.msgpack.Decoder(Event).decode
        #: The webhooks' state, for ``Webhooks(engine, store=store.webhooks)``.
        self.webhooks = RedisWebhookStore(self._client, self.keys, self.node_id, timeout,
                                          self.adopt_interval)

    async def __aenter__(self) -> RedisStore:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None and self._registered:
                await self._release()
        finally:
            await self._client.__aexit__(*exc)

    async def ping(self) -> None:
        await self._client.ping()

    # -- this node's lease -----------------------------------------------------------------

    async def _register(self) -> None:
        """Take this node's lease, and list it among the nodes."""
        keys = self.keys
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(keys.node(self.node_id), "1", px=self._ttl_ms)
            pipe.hset(keys.nodes(), {self.node_id: str(int(time.time()))})
        self._registered = True
        self._renewed_at = trio.current_time()

    async def _keep_lease(self) -> None:
        """Renew the lease, if a third of its TTL has passed, while :meth:`load` reads and
        claims (a large store takes longer than a TTL, and :meth:`run` starts after it: a
        node whose lease lapsed while it loaded had the sessions it claimed adopted away)."""
        if self._registered and trio.current_time() - self._renewed_at >= self.lease_ttl / 3:
            with answer_within(self.timeout):
                await self._client.pexpire(self.keys.node(self.node_id), self._ttl_ms)
            self._renewed_at = trio.current_time()

    def lost(self, session_id: str) -> bool:
        return session_id in self.stale

    async def alive(self, nodes: list[str]) -> set[str]:
        """Those of ``nodes`` whose lease is held."""
        async with self._client.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists([self.keys.node(node)])
        return {node for node, n in zip(nodes, pipe.results or (), strict=True) if n}

    async def _see_nodes(self) -> None:
        """Which registered nodes are alive (and forget the ones that are not)."""
        client, keys = self._client, self.keys
        ids = sorted(raw.decode() for raw in await client.hkeys(keys.nodes()))
        alive = await self.alive(ids)
        dead = [node for node in ids if node not in alive]
        if dead:
            await client.hdel(keys.nodes(), dead)
        self.live_nodes = [node for node in ids if node in alive]

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.lease_ttl * 1000))

    async def run(self) -> None:
        """Renew this node's lease while the engine runs (three times per TTL). A renewal
        Redis does not answer is retried at the next; the journal reports the outage."""
        key = self.keys.node(self.node_id)
        wait = max(0.0, self._renewed_at + self.lease_ttl / 3 - trio.current_time())
        while True:
            await trio.sleep(wait)
            try:
                with answer_within(min(self.timeout, self.lease_ttl / 3)):
                    if not await self._client.pexpire(key, self._ttl_ms):
                        # It lapsed (an outage, a pause): other nodes may have adopted some of
                        # this node's sessions; their fencing refuses this node's writes.
                        # Another node may also have struck it off the nodes hash: register
                        # again, not only the lease.
                        log.warning("node %s: its lease had lapsed (last renewed %.1f s ago); "
                                    "renewed", self.node_id,
                                    trio.current_time() - self._renewed_at)
                        await self._register()
            except (RedisTimeout, OSError, coredis.exceptions.RedisError) as exc:
                log.debug("node lease renewal failed: %s", exc)
                wait = min(0.5, self.lease_ttl / 10)  # soon again: the TTL is running out
            else:
                self._renewed_at = trio.current_time()
                wait = self.lease_ttl / 3
                with contextlib.suppress(RedisTimeout, OSError, coredis.exceptions.RedisError), \
                        answer_within(self.timeout):
                    await self._see_nodes()

    async def _release(self) -> None:
        """Give the node's lease up (a clean exit): its sessions are orphans at once, so the
        next node adopts what this one handed over without waiting for the TTL."""
        with trio.move_on_after(1.0):
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.delete([self.keys.node(self.node_id)])
                    pipe.hdel(self.keys.nodes(), [self.node_id])
            except (OSError, coredis.exceptions.RedisError) as exc:
                log.warning("node lease not released (it lapses by itself): %s", exc)

    # -- writing ---------------------------------------------------------------------------

    def _token(self, session_id: str) -> str:
        return str(self._tokens.get(session_id, 0))

    async def write(self, batch: WriteBatch) -> list[Displaced]:
        """Each session's part of ``batch`` is written whole (its snapshot with its events
        and history), in scripts of :data:`CHUNK` sessions; the log position goes with each."""
        items: dict[str, _Item] = {}
        displaced: list[Displaced] = []

        def item(workspace_id: str, session_id: str) -> _Item:
            found = items.get(session_id)
            if found is None:
                found = items[session_id] = _Item(workspace_id)
            return found

        for snap in batch.sessions:
            item(snap.workspace_id, snap.session_id).snap = snap
        for beat in batch.heartbeats:
            item(beat.workspace_id, beat.session_id).beat = beat
        for append in batch.history:
            item(append.workspace_id, append.session_id).history = append
        for event in batch.events:
            item(event.workspace_id, event.session_id).events.append(event)
        for ws, sid in batch.purged:
            item(ws, sid).purge = True
        for output in batch.output:
            item(output.workspace_id, output.session_id).output = output
        chunk: list[tuple[str, _Item]] = []
        for pair in items.items():
            chunk.append(pair)
            if len(chunk) == CHUNK:
                displaced += await self._write_chunk(chunk, batch)
                chunk = []
        if chunk or not items:  # an empty batch is still one round trip: it proves Redis up
            displaced += await self._write_chunk(chunk, batch)
        return displaced

    async def _write_chunk(self, chunk: list[tuple[str, _Item]],
                           batch: WriteBatch) -> list[Displaced]:
        keys, encode = self.keys, self._encode
        script_keys: list[str] = [keys.workspaces(), keys.events(), keys.log(), keys.changes()]
        args: list[Any] = [len(chunk), self.max_events, self.node_id, FEED_RETENTION_MS]
        for sid, it in chunk:
            ws = it.workspace_id
            script_keys += [keys.fence(ws, sid), keys.session(ws, sid), keys.history(ws, sid),
                            keys.sessions(ws), keys.machines(ws), keys.output(ws, sid)]
            history = it.history
            snap = it.snap
            args += [self._token(sid), sid, ws, "" if snap is None else snap.machine_id,
                     "1" if snap is not None and not snap.status.final else "0",
                     "" if snap is None else encode(snap),
                     "" if it.beat is None else encode(it.beat), "1" if it.purge else "0",
                     "" if history is None else encode(history),
                     0 if history is None else history.cap,
                     0 if history is None else history.first,
                     0 if history is None else len(history.entries)]
            if history is not None:
                args += [encode(entry) for entry in history.entries]
            args.append(len(it.events))
            for event in it.events:
                args += [event.sequence, encode(event)]
            written = it.output
            if written is None:
                args += [0, 0]
            else:
                args += [written.keep, len(written.chunks)]
                for piece in written.chunks:
                    args += [piece.offset, piece.data, piece.stream, piece.command_id or ""]
        with answer_within(self.timeout):
            reply: Any = await self._script(keys=script_keys, args=args)
        claimed: list[bytes] = reply[0]
        stale: list[bytes] = reply[1]
        for i in range(0, len(claimed), 2):
            self._tokens[claimed[i].decode()] = int(claimed[i + 1])
        for sid, it in chunk:
            if it.purge:
                self._tokens.pop(sid, None)
        self.stale.update(raw.decode() for raw in stale)
        if stale:
            log.warning("%d sessions were taken over by another process: their writes were "
                        "refused", len(stale))
        found: list[bytes] = reply[2]
        return [Displaced(found[i].decode(), found[i + 1].decode(), found[i + 2].decode())
                for i in range(0, len(found), 3)]

    # -- messages between nodes (forwarded writes) ---------------------------------------------

    async def send(self, node_id: str, message: bytes) -> None:
        """Put ``message`` in a node's inbox (it expires if nobody reads it for a minute)."""
        inbox = self.keys.inbox(node_id)
        with answer_within(self.timeout):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.rpush(inbox, [message])
                pipe.pexpire(inbox, FEED_RETENTION_MS)

    async def receive(self) -> bytes | None:
        """The next message in this node's inbox, waiting up to a second (``None``)."""
        reply: Any = await self._client.blpop([self.keys.inbox(self.node_id)], timeout=1)
        return None if reply is None else reply[1]

    # -- loading and taking over -------------------------------------------------------------

    async def load(self) -> Loaded:
        """Everything stored. This node registers its lease, then takes over every session
        whose owner is gone (its lease lapsed, or it is this node in an earlier run): each
        one's fencing counter grows, so an old owner still running can no longer write it.
        A live session whose owner is alive stays that node's (``LoadedSession.owner``)."""
        await self._register()
        await self._see_nodes()
        client, keys = self._client, self.keys
        # What is written from now on is followed (``follow``): read before the sessions, so
        # nothing written meanwhile is missed (what is read twice is old news: its version).
        counted = await client.hget(keys.log(), "feed")
        last: Any = await client.xrevrange(keys.changes(), count=1)
        if last:
            self._feed_position = last[0].identifier
            self._feed_count = int(last[0].field_values[b"c"])
        else:
            self._feed_position, self._feed_count = b"0-0", int(counted or 0)
        ids = await self._session_ids()
        owners = await self._take_orphans(ids, reclaim_own=True)
        sessions = await self._read([pair for pair in ids if pair[1] in owners])
        sessions = [msgspec.structs.replace(s, owner=owners.get(s.snapshot.session_id))
                    for s in sessions]
        # One run id for the log, whichever node writes first: event ids are the same on
        # every node.
        await client.hsetnx(keys.log(), "run_id", str(secrets.randbits(40)))
        position = await client.hgetall(keys.log())
        entries: Any = await client.xrange(keys.events(), "-", "+")
        events = self._events_of(entries)
        log_position = LogPosition(int(position[b"run_id"]),
                                   int(position.get(b"next_offset", 0)))
        return Loaded(sessions=sessions, events=events, log=log_position)

    def _events_of(self, entries: Any) -> list[tuple[int, Event]]:
        """Stream entries as (offset, event); this store's place in the stream moves past
        them."""
        if entries:
            last = entries[-1].identifier
            if _stream_id(last) > _stream_id(self._events_position):
                self._events_position = last
        return [(int(entry.field_values[b"o"]), self._event(entry.field_values[b"e"]))
                for entry in entries]

    async def new_events(self) -> list[tuple[int, Event]]:
        """The events written since this store last read the stream (by any node)."""
        key = self.keys.events()
        found: list[tuple[int, Event]] = []
        with answer_within(self.timeout):
            while True:
                entries: Any = await self._client.xrange(
                    key, b"(" + self._events_position, "+", count=1000)
                found += self._events_of(entries)
                if len(entries) < 1000:
                    return found

    async def _session_ids(self) -> list[tuple[str, str]]:
        client, keys = self._client, self.keys
        workspaces = sorted(w.decode() for w in await client.smembers(keys.workspaces()))
        ids: list[tuple[str, str]] = []
        for ws in workspaces:
            ids += [(ws, sid.decode()) for sid in await client.smembers(keys.sessions(ws))]
        return ids

    # -- following the other nodes ---------------------------------------------------------

    async def follow(self, apply: Callable[[Changes], None],
                     place: Callable[[list[tuple[int, Event]]], None]) -> None:
        """Tail the change feed from where :meth:`load` read the store: every entry another
        node wrote, decoded, to ``apply`` (a node that fell further behind than the feed keeps,
        a minute, reads every session again instead); and the event stream: every event any
        node wrote, to ``place``."""
        key, events = self.keys.changes(), self.keys.events()
        position, count = self._feed_position, self._feed_count
        while True:
            try:
                reply: Any = await self._client.xread(
                    {key: position, events: self._events_position}, count=256, block=1000)
            except (OSError, coredis.exceptions.RedisError) as exc:
                log.debug("following the change feed failed: %s", exc)
                await trio.sleep(0.5)
                continue
            if not reply:
                continue
            written = reply.get(events.encode())
            if written:
                place(self._events_of(written))
            for entry in reply.get(key.encode(), ()):
                position = entry.identifier
                fields = entry.field_values
                numbered = int(fields[b"c"])
                if numbered != count + 1:  # entries were trimmed before this node read them
                    log.warning("node %s missed %d change feed entries; reading every session "
                                "again", self.node_id, numbered - count - 1)
                    everything = await self._read(await self._session_ids())
                    apply(Changes(node_id="", sessions=[s.snapshot for s in everything],
                                  complete=True))
                count = numbered
                changes = self._decode_changes(fields)
                if changes is not None:
                    apply(changes)
                    # An entry is a script's worth (up to 256 sessions): the loop serves
                    # sockets between two, even when another node adopts 100,000 at once.
                    await trio.lowlevel.checkpoint()

    def _decode_changes(self, fields: dict[bytes, bytes]) -> Changes | None:
        node = fields.get(b"n", b"").decode()
        if node == self.node_id:
            return None
        changes = Changes(node_id=node)
        for name, value in fields.items():
            kind, sid = name[:1], name[1:].decode()
            if kind == b"s":
                changes.sessions.append(self._snap(value))
            elif kind == b"b":
                changes.heartbeats.append(self._beat(value))
            elif kind == b"h":
                changes.history.append(self._history(value))
            elif kind == b"p":
                changes.purged.append((value.decode(), sid))
            elif kind == b"o":
                ws, _, token = value.partition(b"\0")
                mine = self._tokens.get(sid)
                if token and mine is not None and mine > int(token):
                    continue  # a claim older than this node's own latest one: old news
                changes.owners.append((ws.decode(), sid))
                self.stale.add(sid)  # its fencing counter moved past this node's token
                self._tokens.pop(sid, None)
        return changes

    async def adopt(self, by_owner: Mapping[str, Mapping[str, tuple[str, str]]]
                    ) -> list[LoadedSession]:
        """Take over the sessions of ``by_owner`` (owner the engine knows of -> its sessions
        there) whose owner's lease has lapsed: their state as it is now. The rest stay
        foreign. Only the sessions of owners found gone are read: a look costs one round trip
        while every owner is alive, not a read (nor a pass in Python) per session; a node
        following 100,000 sessions of another spent most of its time on these looks."""
        alive = await self.alive(sorted(by_owner))
        candidates = [pair for owner in list(by_owner) if owner not in alive
                      for pair in list(by_owner.get(owner, {}).values())]
        if not candidates:
            return []
        # their owners now, claimed if gone
        owners = await self._take_orphans(candidates, reclaim_own=False)
        return await self._read([pair for pair in candidates
                                 if pair[1] in owners and owners[pair[1]] is None])

    async def take_over(self, workspace_id: str, session_id: str) -> LoadedSession | None:
        """Take a session over whoever owns it (its agent has come to this node): its state
        as it is now, or ``None`` if it is gone."""
        with answer_within(self.timeout):
            [token] = await self._claim_chunk([(workspace_id, session_id, "")], force=True)
        if not token or isinstance(token, bytes):
            return None
        self._held(session_id, int(token))
        found = await self._read([(workspace_id, session_id)])
        return found[0] if found else None

    async def read(self, workspace_id: str, session_id: str) -> LoadedSession | None:
        with answer_within(self.timeout):
            found = await self._read([(workspace_id, session_id)])
        return found[0] if found else None

    # -- output ----------------------------------------------------------------------------

    async def read_output(self, workspace_id: str, session_id: str, offset: int | None,
                          limit: int) -> StoredOutput:
        """The stored chunks from the one holding ``offset`` for ``limit`` bytes (or to the
        end), with the retained range; stream entry ids are offsets, so this is a range
        read."""
        client, key = self._client, self.keys.output(workspace_id, session_id)
        with answer_within(self.timeout):
            async with client.pipeline(transaction=False) as pipe:
                pipe.hmget(self.keys.session(workspace_id, session_id), ["n", "f"])
                pipe.xrange(key, "-", "+", count=1)
                if offset is not None:  # the chunk holding it starts at or before it
                    pipe.xrevrange(key, f"{offset}-1", "-", count=1)
            results: Any = pipe.results
            next_offset, kept_from = (int(raw or 0) for raw in results[0])
            first = results[1]
            first_offset = max(kept_from,
                               _output_chunk(first[0]).offset if first else next_offset)
            start = first_offset if offset is None or offset < first_offset else offset
            if offset is not None and offset >= first_offset and results[2]:
                start = _output_chunk(results[2][0]).offset
            # up to the chunk holding the read's last byte
            until = (start if offset is None else max(offset, start)) + limit
            chunks: list[OutputChunk] = []
            cursor = f"{start}-1"
            while cursor and (not chunks or chunks[-1].end < until):
                entries: Any = await client.xrange(key, cursor, "+", count=64)
                chunks += [_output_chunk(entry) for entry in entries]
                cursor = "(" + entries[-1].identifier.decode() if len(entries) == 64 else ""
        return StoredOutput(first_offset, next_offset, chunks)

    async def follow_outputs(self, positions: Mapping[tuple[str, str], int], wait: float
                             ) -> dict[tuple[str, str], list[OutputChunk]]:
        """The stored chunks of each session from its offset on (entries after id
        ``<offset>-0``): one ``XREAD BLOCK`` over all of their streams, blocking up to
        ``wait`` seconds for the first entry in any."""
        keys = {self.keys.output(ws, sid): (ws, sid) for ws, sid in positions}
        reply: Any = await self._client.xread(
            {key: f"{positions[pair]}-0" for key, pair in keys.items()}, count=256,
            block=max(1, int(wait * 1000)))
        if not reply:
            return {}
        return {keys[key.decode()]: [_output_chunk(entry) for entry in entries]
                for key, entries in reply.items() if entries}

    async def _claim_chunk(self, chunk: list[tuple[str, str, str]], *,
                           force: bool) -> list[Any]:
        """Run ``_CLAIM`` over (workspace, session id, owner found gone) triples: their
        answers, in order."""
        keys = self.keys
        script_keys = [keys.changes(), keys.log()]
        args: list[Any] = ["1" if force else "0", self.node_id, FEED_RETENTION_MS, len(chunk)]
        for ws, sid, expected in chunk:
            script_keys += [keys.fence(ws, sid), keys.session(ws, sid)]
            args += [expected, sid, ws]
        answers: Any = await self._claim(keys=script_keys, args=args)
        return list(answers)

    def _held(self, session_id: str, token: int) -> None:
        # The highest token this node got is its latest claim: an adoption look and a resume's
        # take-over of one session may both claim it, and their answers may come back in
        # either order (holding the lower one got every later write refused as stale).
        self._tokens[session_id] = max(token, self._tokens.get(session_id, 0))
        self.stale.discard(session_id)

    async def _take_orphans(self, ids: list[tuple[str, str]], *,
                            reclaim_own: bool) -> dict[str, str | None]:
        """Claim every session of ``ids`` that no live node owns: session id -> ``None`` for
        those claimed, the owner's id for those another node owns; purged ones are left out.
        ``reclaim_own``: also those this node's id owns (a load: an earlier process with this
        id may still be running, and must be fenced off); otherwise they are left out, as this
        node runs them already (an adoption look claiming a session this node had just taken
        over raised its fence under the batch being written for it: that batch was refused,
        its events lost)."""
        client, keys = self._client, self.keys
        found: dict[str, str | None] = {}
        for chunk in _chunks(ids, 1000):
            await self._keep_lease()
            async with client.pipeline(transaction=False) as pipe:
                for ws, sid in chunk:
                    pipe.hget(keys.session(ws, sid), "o")
            for (_ws, sid), raw in zip(chunk, pipe.results or (), strict=True):
                found[sid] = None if raw is None else raw.decode()
        alive = await self.alive(
            sorted({o for o in found.values() if o is not None and o != self.node_id}))
        owners: dict[str, str | None] = {}
        orphans: list[tuple[str, str]] = []
        for ws, sid in ids:
            owner = found[sid]
            if owner in alive:
                owners[sid] = owner
            elif owner != self.node_id or reclaim_own:
                orphans.append((ws, sid))
        for chunk in _chunks(orphans, CHUNK):
            await self._keep_lease()
            answers = await self._claim_chunk([(ws, sid, found[sid] or "") for ws, sid in chunk],
                                              force=False)
            for (_ws, sid), answer in zip(chunk, answers, strict=True):
                # another node (or this one, on a resume) took it meanwhile
                if isinstance(answer, bytes):
                    owners[sid] = answer.decode()
                elif answer:
                    self._held(sid, int(answer))
                    owners[sid] = None
        return owners

    async def _read(self, ids: list[tuple[str, str]]) -> list[LoadedSession]:
        """The stored state of ``ids`` (those still there), with their heartbeats."""
        client, keys = self._client, self.keys
        sessions: list[LoadedSession] = []
        for chunk in _chunks(ids, 1000):
            await self._keep_lease()
            async with client.pipeline(transaction=False) as pipe:
                for ws, sid in chunk:
                    pipe.hmget(keys.session(ws, sid), ["snap", "beat", "n"])
                    pipe.lrange(keys.history(ws, sid), 0, -1)
            results = pipe.results or ()
            for i in range(len(chunk)):
                (snap_raw, beat_raw, output_next), history = results[2 * i : 2 * i + 2]
                if snap_raw is None:
                    continue  # purged meanwhile
                snap = with_heartbeat(self._snap(snap_raw),
                                      None if beat_raw is None else self._beat(beat_raw))
                sessions.append(LoadedSession(snap, [self._entry(e) for e in history],
                                              output_next=int(output_next or 0)))
        return sessions


def _output_chunk(entry: Any) -> OutputChunk:
    """An output stream entry (id ``<offset>-1``) as a chunk."""
    fields = entry.field_values
    command_id = fields.get(b"c")
    return OutputChunk(_stream_id(entry.identifier)[0], fields[b"d"],
                       "stderr" if fields.get(b"s") == b"stderr" else "stdout",
                       command_id.decode() if command_id else None)


def _stream_id(raw: bytes) -> tuple[int, int]:
    ms, _, seq = raw.partition(b"-")
    return int(ms), int(seq or 0)


def _chunks(items: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
