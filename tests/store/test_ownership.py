"""Which node runs a live session, against a real redis-server: a node that takes over another
node's sessions while that node's lease is still alive only lists them (writes get 503
``unavailable``), takes one over at once when its agent comes (a resume, a replacing hello),
and adopts the rest once the lease lapses (GRACE_PERIOD ``node_lost``, ending at their grace
deadline from then)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import coredis
import pytest
import trio
from trio.testing import MockClock

from tether.engine import Engine, OwnerUnreachable, Status, WallClock
from tether.engine._forward import FORWARD_TIMEOUT
from tether.store import Keys, RedisStore

from .conftest import lapse
from .test_restart import CONFIG, EPOCH, WS, crash, hello, let_run, open_engine

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.redis_server import RedisServer


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=math.inf)


async def until(engine: Engine, clock: MockClock, done: Callable[[], bool]) -> None:
    """Move the clock half a second at a time (Redis answering in between) until ``done``."""
    for _ in range(20):
        if done():
            return
        await let_run(engine, clock, 0.5)
    raise AssertionError("not done after 10 s")


async def test_a_live_owners_sessions_are_listed_taken_over_by_their_agent_or_adopted_later(
        redis: RedisServer, clock: MockClock) -> None:
    with trio.CancelScope() as run:
        async with open_engine(redis, node_id="node-a") as engine:
            link, _ = await hello(engine, "mach_1")
            quiet, _ = await hello(engine, "mach_2")
            replaced, _ = await hello(engine, "mach_3")
            await crash(run)  # node-a's lease stays alive until its TTL (10 s of Redis's time)

    async with open_engine(redis, node_id="node-b") as engine:
        # Listed as node-a wrote them; node-b runs nothing for them yet.
        listed = {s.session_id: s.status for s in engine.list_sessions(WS, limit=10).data}
        assert set(listed.values()) == {Status.CONNECTED}
        assert len(engine.foreign) == 3
        assert engine.actors_running == 0
        # A write is carried to node-a, which does not answer (it is gone): 503, after the
        # forwarding timeout.
        refused: list[OwnerUnreachable] = []

        async def attach() -> None:
            try:
                await engine.attach_client(WS, quiet.session_id, "ops@example.com", "operator")
            except OwnerUnreachable as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attach)
            await let_run(engine, clock)
            await let_run(engine, clock, FORWARD_TIMEOUT)
        [error] = refused
        assert error.code == "unavailable"
        assert error.details == {"session_id": quiet.session_id, "node_id": "node-a"}
        assert engine.get_session(WS, quiet.session_id).attached_clients == []

        # Its agent comes here: node-b takes the session over at once and it resumes.
        assert link.welcome is not None
        resumed, _ = await hello(engine, "mach_1", token=link.welcome.resume_token)
        assert (resumed.session_id, resumed.welcome and resumed.welcome.resumed) == (
            link.session_id, True)
        types = [(e.type, e.data.reason) for e in engine.events_after(WS, None, 100)
                 if e.session_id == link.session_id]
        assert types[-2:] == [("session.grace_period", "node_lost"),
                              ("session.connected", "resumed")]

        # A hello without a token for a machine whose session node-a owns replaces it.
        fresh, _ = await hello(engine, "mach_3")
        assert fresh.session_id != replaced.session_id
        ended = engine.get_session(WS, replaced.session_id)
        assert (ended.status, ended.reason) == (Status.DISCONNECTED, "replaced")
        assert len(engine.foreign) == 1

        # node-a's lease lapses: node-b adopts what is left, within its adopt interval.
        await lapse(redis, "t:", "node-a")
        await until(engine, clock, lambda: not engine.foreign)
        adopted_at = trio.current_time()
        detail = engine.get_session(WS, quiet.session_id)
        assert (detail.status, detail.reason) == (Status.GRACE_PERIOD, "node_lost")
        await let_run(engine, clock, CONFIG.grace_period - 1)
        assert engine.get_session(WS, quiet.session_id).status is Status.GRACE_PERIOD
        await let_run(engine, clock, 2)
        assert trio.current_time() - adopted_at < CONFIG.grace_period + 2
        ended = engine.get_session(WS, quiet.session_id)
        assert (ended.status, ended.reason) == (Status.DISCONNECTED, "grace_expired")

    # Every live session has one owner in Redis: node-b, which handed them over on its exit.
    client: coredis.Redis[Any] = coredis.Redis.from_url(redis.url, decode_responses=True)
    keys = Keys("t:")
    async with client:
        for session_id in (link.session_id, fresh.session_id):
            assert await client.hget(keys.session(WS, session_id), "o") == "node-b"
        assert await client.hget(keys.session(WS, quiet.session_id), "o") is None  # ended
        assert not await client.exists([keys.node("node-b")])  # released on a clean exit


async def test_a_node_lease_lapses_by_itself_when_the_node_stops_renewing_it(
        redis: RedisServer) -> None:
    """Real time here: a lease's TTL runs on Redis's clock, which no test clock moves."""
    wall = WallClock(epoch=EPOCH, trio_zero=0.0)
    keys = Keys("ttl:")
    with trio.CancelScope() as run:
        async with RedisStore(redis.url, prefix="ttl:", node_id="node-a",
                              lease_ttl=0.3) as store, \
                Engine(CONFIG, clock=wall, store=store) as engine:
            link, _ = await hello(engine, "mach_1")
            await trio.sleep(1.0)  # three TTLs: the running node keeps renewing its lease
            client: coredis.Redis[Any] = coredis.Redis.from_url(redis.url)
            async with client:
                assert await client.exists([keys.node("node-a")])
            await crash(run)
    async with RedisStore(redis.url, prefix="ttl:", node_id="node-b") as store, \
            Engine(CONFIG, clock=wall, store=store) as engine:
        with trio.fail_after(5):
            while engine.foreign:
                await trio.sleep(0.05)
        detail = engine.get_session(WS, link.session_id)
        assert (detail.status, detail.reason) == (Status.GRACE_PERIOD, "node_lost")


def test_prefixes_are_checked() -> None:
    for bad in ("", "a b:", "{x}:"):
        with pytest.raises(ValueError, match="redis prefix"):
            Keys(bad)
    assert Keys("p:").fence("ws_a", "sess_1") == "p:{ws_a}:fence:sess_1"
    assert Keys("p:").node("n-1") == "p:node:n-1"


async def test_a_node_told_to_stop_while_it_adopts_runs_nothing_new_and_stops_cleanly(
        redis: RedisServer, clock: MockClock) -> None:
    with trio.CancelScope() as run:
        async with open_engine(redis, node_id="node-a") as engine:
            link, _ = await hello(engine, "mach_1")
            await crash(run)
    async with open_engine(redis, node_id="node-b") as engine:
        assert len(engine.foreign) == 1
        engine.drain()  # stopping: then node-a's lease lapses under it
        await lapse(redis, "t:", "node-a")
        await until(engine, clock, lambda: not engine.foreign)
        assert engine.actors_running == 0
    # The session waits for its agent in the store, for whichever node comes next.
    async with open_engine(redis, node_id="node-c") as engine:
        detail = engine.get_session(WS, link.session_id)
        assert (detail.status, detail.reason) == (Status.GRACE_PERIOD, "node_lost")
