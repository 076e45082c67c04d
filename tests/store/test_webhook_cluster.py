"""Webhooks on two nodes sharing one real redis-server: one node (the desk) delivers the events
of both nodes' sessions, once each and in each session's order; the webhooks API answers the
same on either node (the other forwards to the desk); when the desk's node dies its pending
deliveries go out from the other node with their event and delivery ids; a desk holder that
was away past its lease finds its writes refused and steps down. Real time: the desk moves
with node leases, which run on Redis's clock."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from tether.engine import Engine, EngineConfig
from tether.engine.testing import RecordingTransport
from tether.store import DeskLost, RedisStore
from tether.webhooks import WebhookBatch, WebhookConfig, Webhooks

from ..conftest import fresh_prefix
from .conftest import Receiver, lapse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.redis_server import RedisServer

WS = "ws_acme"
CONFIG = EngineConfig(grace_period=30, heartbeat_timeout=60, pending_timeout=300)
HOOKS = WebhookConfig(allow_private=True, retry_base=60.0)  # a failed event waits a minute
URL = "http://127.0.0.1:9/hook"


class Node:
    def __init__(self, store: RedisStore, engine: Engine, hooks: Webhooks,
                 receiver: Receiver, scope: trio.CancelScope) -> None:
        self.store, self.engine, self.hooks = store, engine, hooks
        self.receiver = receiver
        self.scope = scope  # cancelled: the node stops as if killed


async def run_node(redis: RedisServer, prefix: str, node_id: str, receiver: Receiver, *,
                   task_status: trio.TaskStatus[Node]) -> None:
    """A node in a task of its own: a store, an engine and its webhooks, delivering to
    ``receiver``, until its scope is cancelled (no clean exit: its lease is left to lapse)."""
    with trio.CancelScope() as scope:
        async with RedisStore(redis.url, prefix=prefix, node_id=node_id,
                              lease_ttl=1.5) as store, \
                Engine(CONFIG, store=store) as engine, \
                trio.open_nursery() as nursery:
            hooks = Webhooks(engine, HOOKS, client_factory=receiver.client,
                             store=store.webhooks)
            await nursery.start(hooks.run)
            task_status.started(Node(store, engine, hooks, receiver, scope))
            await trio.sleep_forever()


@asynccontextmanager
async def two_nodes(redis: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    """node-a starts first and holds the desk; node-b knows it does."""
    prefix = fresh_prefix("hooks")
    async with trio.open_nursery() as nursery:
        a = await nursery.start(run_node, redis, prefix, "node-a", Receiver())
        b = await nursery.start(run_node, redis, prefix, "node-b", Receiver())
        yield a, b
        nursery.cancel_scope.cancel()


async def until(done: Callable[[], bool], within: float = 5.0) -> None:
    with trio.fail_after(within):
        while not done():
            await trio.sleep(0.01)


async def hello(engine: Engine, machine: str):
    return await engine.agent_hello(WS, RecordingTransport(), machine_id=machine,
                                    machine_hostname=f"host-{machine}")


async def test_one_node_delivers_every_nodes_events_once_and_either_node_answers_the_api(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        a.receiver.status = b.receiver.status = 204
        # Created on node-b, which forwards it to the desk (node-a).
        hook = await b.hooks.create(WS, URL, ["*"])
        assert [v.id for v in await a.hooks.list(WS)] == [hook.id]
        assert (await b.hooks.get(WS, hook.id)).url == URL

        on_a = await hello(a.engine, "mach_1")
        on_b = await hello(b.engine, "mach_2")
        await on_a.goodbye("maintenance")
        await on_b.goodbye("maintenance")
        log = a.engine.events_after(WS, None, 100)
        await until(lambda: len(b.engine.events_after(WS, None, 100)) == len(log) == 6)
        await until(lambda: len(a.receiver.posted) == len(log))

        # Every event once, from the desk only, each session's in the log's order.
        assert b.receiver.posted == []
        posted = [event_id for _, event_id, _ in a.receiver.posted]
        assert sorted(posted) == sorted(e.id for e in log)
        for session in (on_a.session_id, on_b.session_id):
            ids = [e.id for e in log if e.session_id == session]
            assert [i for i in posted if i in ids] == ids

        # The deliveries log reads the same on both nodes.
        assert await b.hooks.deliveries(WS, hook.id) == await a.hooks.deliveries(WS, hook.id)
        await b.hooks.update(WS, hook.id, enabled=False)
        assert (await a.hooks.get(WS, hook.id)).enabled is False
        await b.hooks.delete(WS, hook.id)
        assert await a.hooks.list(WS) == []


async def test_the_other_node_takes_the_desks_pending_deliveries_over_when_its_node_dies(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        hook = await a.hooks.create(WS, URL, ["*"])
        link = await hello(b.engine, "mach_1")
        # The first event failed (503) and waits a minute; the next waits behind it.
        await until(lambda: len(a.receiver.posted) == 1)
        await a.hooks.flush()
        assert a.hooks.undelivered == 2
        [(_, event_id, delivery_id)] = a.receiver.posted

        a.scope.cancel()  # node-a dies: its lease lapses by itself, within 1.5 s
        died = trio.current_time()
        b.receiver.status = 204
        await until(lambda: len(b.receiver.posted) == 2)
        assert trio.current_time() - died < 1.5 + b.store.adopt_interval + 0.5
        # The same delivery, retried from node-b (same event and delivery ids), then the next.
        events = [e.id for e in b.engine.events_after(WS, None, 100)]
        assert b.receiver.posted[0][1:] == (event_id, delivery_id)
        assert [i for _, i, _ in b.receiver.posted] == events[:2]
        # node-b answers the API now, from the state node-a left in Redis.
        [first] = [d for d in (await b.hooks.deliveries(WS, hook.id)).data
                   if d.id == delivery_id]
        assert (first.attempts, first.state) == (2, "succeeded")
        # The session lives on node-b: its next events are delivered there too.
        await link.goodbye("maintenance")
        await until(lambda: len(b.receiver.posted) == 3)
        assert b.receiver.posted[-1][0] == "session.disconnected"


async def test_a_desk_holder_away_past_its_lease_has_its_writes_refused_and_steps_down(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        a.receiver.status = b.receiver.status = 204
        hook = await a.hooks.create(WS, URL, ["*"])
        # node-a's lease lapses (as if it had been paused) and node-b takes the desk before
        # node-a renews its lease.
        with trio.fail_after(5):
            while True:
                await lapse(redis, a.store.keys.prefix, "node-a")
                if await b.store.webhooks.desk() == "node-b":
                    break
        # A write node-a made before it noticed is refused: the desk's token moved on.
        with pytest.raises(DeskLost):
            await a.store.webhooks.write_webhooks(WebhookBatch(cursor="0-1"))
        # node-a steps down within its look interval; the API on node-a is node-b's now.
        await trio.sleep(a.store.adopt_interval + 0.2)
        assert [v.id for v in await a.hooks.list(WS)] == [hook.id]
        await a.hooks.update(WS, hook.id, url=URL + "2")
        assert (await b.hooks.get(WS, hook.id)).url == URL + "2"
        # Events from now on go out from node-b only.
        await hello(a.engine, "mach_1")
        await until(lambda: len(b.receiver.posted) == 2)
        assert [t for t, _, _ in b.receiver.posted] == ["session.created", "session.connected"]
        assert a.receiver.posted == []
