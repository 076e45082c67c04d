"""Webhooks on a real Redis across a crash: the endpoint (and its secret) is still there,
deliveries that were waiting for a retry go out after the restart with the same event ids,
their attempts stay in the log, and a delivery recorded as succeeded is not sent again."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import trio
from trio.testing import MockClock

from tether.engine import Engine, EngineConfig, WallClock
from tether.engine.testing import RecordingTransport
from tether.store import RedisStore
from tether.webhooks import WebhookConfig, Webhooks

from .conftest import Receiver

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

WS = "ws_acme"
EPOCH = 1771063200.0
HOOKS = WebhookConfig(allow_private=True, retry_base=60.0)  # a failed event waits a minute


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=math.inf)


async def settle(engine: Engine, hooks: Webhooks) -> None:
    assert engine.journal is not None
    for _ in range(4):
        await trio.testing.wait_all_tasks_blocked()
        await engine.journal.commit()
        await hooks.flush()


async def test_deliveries_waiting_at_a_crash_go_out_after_the_restart(
        redis: RedisServer, clock: MockClock) -> None:
    wall = WallClock(epoch=EPOCH, trio_zero=0.0)
    receiver = Receiver()
    with trio.CancelScope() as run:
        async with RedisStore(redis.url, prefix="wh:", node_id="node-a") as store, \
                Engine(EngineConfig(), clock=wall, store=store) as engine, \
                trio.open_nursery() as nursery:
            hooks = Webhooks(engine, HOOKS, client_factory=receiver.client,
                         store=store.webhooks)
            await nursery.start(hooks.run)
            hook = await hooks.create(WS, "http://127.0.0.1:9/hook", ["*"])
            await engine.agent_hello(WS, RecordingTransport(), machine_id="m1",
                                     machine_hostname="h1")
            await settle(engine, hooks)
            # The first event failed (503) and waits a minute; the second waits behind it.
            assert [t for t, _, _ in receiver.posted] == ["session.created"]
            assert hooks.undelivered == 2
            run.cancel()  # crash

    receiver.status = 204
    async with RedisStore(redis.url, prefix="wh:", node_id="node-a") as store, \
            Engine(EngineConfig(), clock=wall, store=store) as engine, \
            trio.open_nursery() as nursery:
        hooks = Webhooks(engine, HOOKS, client_factory=receiver.client,
                         store=store.webhooks)
        await nursery.start(hooks.run)
        assert (await hooks.get(WS, hook.id)).url == "http://127.0.0.1:9/hook"
        await settle(engine, hooks)
        events = {e.type: e.id for e in engine.events_after(WS, None, 100)}
        # Both go out at once after the restart, in order, with their event ids; the adoption
        # (node_lost) is delivered after them, once.
        assert [(t, i) for t, i, _ in receiver.posted] == [
            ("session.created", events["session.created"]),
            ("session.created", events["session.created"]),
            ("session.connected", events["session.connected"]),
            ("session.grace_period", events["session.grace_period"]),
        ]
        assert hooks.undelivered == 0
        log = {d.event_type: d for d in (await hooks.deliveries(WS, hook.id)).data}
        assert (log["session.created"].attempts, log["session.created"].state) == (2, "succeeded")
        # The same delivery, retried: its id did not change.
        assert receiver.posted[0][2] == receiver.posted[1][2] == log["session.created"].id
        nursery.cancel_scope.cancel()

    posted = len(receiver.posted)
    async with RedisStore(redis.url, prefix="wh:", node_id="node-a") as store, \
            Engine(EngineConfig(), clock=wall, store=store) as engine, \
            trio.open_nursery() as nursery:
        hooks = Webhooks(engine, HOOKS, client_factory=receiver.client,
                         store=store.webhooks)
        await nursery.start(hooks.run)
        await settle(engine, hooks)
        # Nothing recorded as delivered goes out again; the new run's events do.
        assert receiver.posted[posted:] == []
        assert len((await hooks.deliveries(WS, hook.id)).data) == 3
        nursery.cancel_scope.cancel()
