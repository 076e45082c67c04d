"""Session leases with fencing, against a real redis-server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import coredis
import pytest
import trio

from tether.store import FENCE_CHECK, Keys, Lease, LeaseLost, StaleFence, run_fenced

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

WS, SID = "ws_1", "sess_1"

#: A fenced write: the session's status, in one hash.
SET_STATUS = FENCE_CHECK + "redis.call('HSET', KEYS[2], 'status', ARGV[2]) return 1"


def lease(r: coredis.Redis[Any], keys: Keys, node: str, ttl: float) -> Lease:
    return Lease(r, keys.lease(WS, SID), keys.fence(WS, SID), node, ttl)


def client(server: RedisServer) -> coredis.Redis[Any]:
    return coredis.Redis.from_url(server.url, decode_responses=True)


async def wait_gone(redis: coredis.Redis[Any], key: str) -> None:
    """Until Redis has expired ``key`` (its TTL runs on Redis's clock, not the test's)."""
    with trio.fail_after(10):
        while await redis.exists([key]):
            await trio.sleep(0.01)


async def test_one_owner_at_a_time_and_every_take_over_grows_the_token(
        redis: RedisServer) -> None:
    keys = Keys("t1:")
    async with client(redis) as r:
        a = lease(r, keys, "node-a", ttl=10)
        b = lease(r, keys, "node-b", ttl=10)
        assert await a.acquire() == 1
        assert await a.acquire() == 1  # re-acquiring its own lease extends it: same token
        with pytest.raises(LeaseLost, match="node-a"):
            await b.acquire()
        await a.renew()
        assert await a.release()
        assert await b.acquire() == 2
        with pytest.raises(LeaseLost):
            await a.renew()
        assert not await a.release()  # not ours: b's lease stays
        assert await r.get(keys.lease(WS, SID)) == "node-b 2"
        assert set(await r.keys("*")) <= {keys.lease(WS, SID), keys.fence(WS, SID)}


async def test_an_owner_back_from_a_pause_cannot_overwrite_the_new_owner(
        redis: RedisServer) -> None:
    keys = Keys("t2:")
    record = "t2:{ws_1}:session:sess_1"
    async with client(redis) as r:
        script = r.register_script(SET_STATUS)
        old = lease(r, keys, "node-a", ttl=0.05)
        token_a = await old.acquire()
        await run_fenced(script, old.fence_key, token_a, [record], ["CONNECTED"])
        # node-a stalls past its lease; Redis expires it and node-b takes over
        await wait_gone(r, old.lease_key)
        new = lease(r, keys, "node-b", ttl=10)
        token_b = await new.acquire()
        assert token_b == token_a + 1
        await run_fenced(script, new.fence_key, token_b, [record], ["GRACE_PERIOD"])
        # node-a comes back and writes with the token it still holds: refused, nothing written
        with pytest.raises(StaleFence):
            await run_fenced(script, old.fence_key, token_a, [record], ["CONNECTED"])
        assert await r.hget(record, "status") == "GRACE_PERIOD"
        with pytest.raises(LeaseLost):
            await old.renew()


def test_prefixes_are_checked() -> None:
    for bad in ("", "a b:", "{x}:"):
        with pytest.raises(ValueError, match="redis prefix"):
            Keys(bad)
    assert Keys("p:").lease("ws_a", "sess_1") == "p:{ws_a}:lease:sess_1"
