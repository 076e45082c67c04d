"""Delivery to real receivers on 127.0.0.1: success, retries with backoff, timeouts, dead
endpoints, per-session order, redelivery, disabling, bounded queues and logs.

Timing runs on trio's MockClock (see conftest): asserted delays are exact trio seconds.
"""

from __future__ import annotations

import itertools

import msgspec
import pytest
import trio

from tether.engine import EVENT_TYPES
from tether.webhooks import DeliveryPending, WebhookDisabled, WebhookNotFound

from .conftest import WS, churn, dead_url, settle


async def test_every_event_is_delivered_with_the_documented_payload(clock,
        engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory()
    hooks = await hooks_factory()
    hook = await hooks.create(WS, receiver.url, ["*"])
    session_id = await churn(engine, "mach_1")
    await receiver.wait_for(5)
    await settle(hooks, hook.id)

    bodies = [r.json() for r in receiver.requests]
    assert [b["type"] for b in bodies] == [
        "session.created", "session.connected", "session.client_attached",
        "session.client_detached", "session.disconnected"]
    first = bodies[0]
    assert set(first) == {"id", "type", "timestamp", "workspace_id", "data"}
    assert first["workspace_id"] == WS
    assert first["id"].startswith("evt_")
    data = bodies[-1]["data"]
    assert data["session_id"] == session_id
    assert data["status"] == "DISCONNECTED"
    assert data["previous_status"] == "CONNECTED"
    assert data["reason"] == "terminated"
    assert [b["data"]["sequence"] for b in bodies] == [1, 2, 3, 4, 5]
    assert {"machine_id", "machine_hostname", "created_at", "connected_at",
            "last_heartbeat_at", "attached_clients"} <= set(data)
    for r in receiver.requests:
        assert r.headers["content-type"] == "application/json"
        assert r.headers["webhook-id"] == r.json()["id"]
        assert r.headers["x-cmdop-event"] == r.json()["type"]

    page = await hooks.deliveries(WS, hook.id)
    assert [d.state for d in page.data] == ["succeeded"] * 5
    assert next(d.event_type for d in page.data) == "session.disconnected"  # newest first
    assert all(d.attempts == 1 and d.last_status_code == 200 for d in page.data)


async def test_only_subscribed_event_types_are_sent(clock, engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory()
    hooks = await hooks_factory()
    hook = await hooks.create(WS, receiver.url, ["session.connected", "session.disconnected"])
    other_ws = await receiver_factory()
    await hooks.create("ws_other", other_ws.url, ["*"])
    await churn(engine, "mach_1")
    await receiver.wait_for(2)
    await settle(hooks, hook.id)
    assert [r.json()["type"] for r in receiver.requests] == [
        "session.connected", "session.disconnected"]
    assert other_ws.requests == []  # another workspace's events never go there


async def test_failed_attempts_are_retried_with_exponential_backoff(clock,
        engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory(fail=3, fail_status=503)
    hooks = await hooks_factory(retry_base=2.0)
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    await engine.create_session(WS, "mach_1", "host")
    await receiver.wait_for(4)
    times = [r.at for r in receiver.requests]
    assert [b - a for a, b in itertools.pairwise(times)] == [2.0, 4.0, 8.0]
    await settle(hooks, hook.id)
    [d] = (await hooks.deliveries(WS, hook.id)).data
    assert (d.state, d.attempts, d.last_status_code, d.last_error) == (
        "succeeded", 4, 200, None)


async def test_retry_state_is_visible_while_waiting(clock, engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory(fail=1)
    hooks = await hooks_factory(retry_base=30.0)
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    await engine.create_session(WS, "mach_1", "host")
    await receiver.wait_for(1)
    await trio.sleep(1)
    [d] = (await hooks.deliveries(WS, hook.id)).data
    assert (d.state, d.attempts, d.last_status_code, d.last_error) == (
        "pending", 1, 500, "HTTP 500")
    assert d.next_attempt_at == engine.clock.rfc3339(receiver.requests[0].at + 30.0)
    await receiver.wait_for(2)
    assert receiver.requests[1].at - receiver.requests[0].at == 30.0


async def test_exhausted_event_stays_failed_and_can_be_redelivered(clock,
        engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory(fail=4)
    hooks = await hooks_factory(retry_base=1.0)
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    await engine.create_session(WS, "mach_1", "host")
    await receiver.wait_for(4)
    await settle(hooks, hook.id)
    [d] = (await hooks.deliveries(WS, hook.id)).data
    assert (d.state, d.attempts, d.last_status_code, d.last_error) == (
        "failed", 4, 500, "HTTP 500")
    times = [r.at for r in receiver.requests]
    assert [b - a for a, b in itertools.pairwise(times)] == [1.0, 2.0, 4.0]

    receiver.hang = True  # the redelivery stays in flight (a store's commit lets it start)
    again = await hooks.redeliver(WS, hook.id, d.id)
    assert again.state == "pending"
    await receiver.wait_for(5)
    with pytest.raises(DeliveryPending):
        await hooks.redeliver(WS, hook.id, d.id)
    receiver.hang = False  # the hung attempt times out; the retry after it succeeds
    await receiver.wait_for(6)
    await settle(hooks, hook.id)
    [d] = (await hooks.deliveries(WS, hook.id)).data
    assert (d.state, d.attempts, d.last_status_code) == ("succeeded", 6, 200)
    # The same event, the same webhook-id: receivers can de-duplicate.
    assert receiver.requests[-1].headers["webhook-id"] == receiver.requests[0].headers["webhook-id"]


async def test_a_receiver_that_hangs_times_out(clock, engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory(hang=True)
    hooks = await hooks_factory(timeout=10.0, retry_base=1.0)
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    start = trio.current_time()
    await engine.create_session(WS, "mach_1", "host")
    await receiver.wait_for(4)
    await settle(hooks, hook.id)
    times = [r.at - start for r in receiver.requests]
    assert times == [0.0, 11.0, 23.0, 37.0]  # 10 s timeout, then 1, 2, 4 s backoff
    [d] = (await hooks.deliveries(WS, hook.id)).data
    assert d.state == "failed" and d.attempts == 4 and d.last_status_code is None
    assert "timeout" in d.last_error


async def test_a_dead_endpoint_fails_with_the_connection_error(clock, engine, hooks_factory):
    hooks = await hooks_factory(retry_base=1.0)
    hook = await hooks.create(WS, dead_url(), ["session.created"])
    await engine.create_session(WS, "mach_1", "host")
    await trio.sleep(10)
    [d] = (await hooks.deliveries(WS, hook.id)).data
    assert d.state == "failed" and d.attempts == 4 and d.last_status_code is None
    assert "ConnectError" in d.last_error


async def test_each_session_is_delivered_in_sequence_order(clock,
        engine, receiver_factory, hooks_factory):
    # Every first attempt fails, so retries interleave sessions; order within one must hold.
    receiver = await receiver_factory(fail=25)
    hooks = await hooks_factory(retry_base=0.5, endpoint_concurrency=8)
    hook = await hooks.create(WS, receiver.url, ["*"])
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(churn, engine, f"mach_{i}")
    await receiver.wait_for(100)
    await settle(hooks, hook.id)
    delivered: dict[str, list[int]] = {}
    for r in receiver.requests:
        body = r.json()
        delivered.setdefault(body["data"]["session_id"], []).append(body["data"]["sequence"])
    assert len(delivered) == 20
    for sequence in delivered.values():
        # Each attempt of an event precedes every attempt of the session's next event.
        assert sequence == sorted(sequence)
        assert sorted(set(sequence)) == [1, 2, 3, 4, 5]
    assert hooks.endpoint_stats(WS, hook.id)["succeeded"] == 100


async def test_a_dead_endpoint_does_not_delay_a_healthy_one(clock,
        engine, receiver_factory, hooks_factory):
    hanging = await receiver_factory(hang=True)
    healthy = await receiver_factory()
    hooks = await hooks_factory(endpoint_concurrency=4, concurrency=8)
    await hooks.create(WS, hanging.url, ["*"])
    await hooks.create(WS, healthy.url, ["*"])
    start = trio.current_time()
    for i in range(10):
        await churn(engine, f"mach_{i}")
    await healthy.wait_for(50)
    assert trio.current_time() == start  # no timeout or retry delay was waited for


async def test_consecutive_failures_disable_the_endpoint_until_enabled(clock,
        engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory(fail=1000)
    hooks = await hooks_factory(retry_base=1.0, retries=1, max_consecutive_failures=3)
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    for i in range(5):
        await engine.create_session(WS, f"mach_{i}", "host")
    await trio.sleep(30)
    view = await hooks.get(WS, hook.id)
    assert view.enabled is False
    assert view.disabled_reason.startswith("3 consecutive failed events")
    assert "HTTP 500" in view.disabled_reason
    deliveries = (await hooks.deliveries(WS, hook.id)).data
    assert len(deliveries) == 5 and {d.state for d in deliveries} == {"failed"}
    assert view.pending_deliveries == 0
    sent = len(receiver.requests)

    await engine.create_session(WS, "mach_late", "host")  # a disabled endpoint gets nothing
    await trio.sleep(5)
    assert len(receiver.requests) == sent
    with pytest.raises(WebhookDisabled):
        await hooks.redeliver(WS, hook.id, deliveries[0].id)

    receiver.fail = 0
    view = await hooks.update(WS, hook.id, enabled=True)
    assert view.enabled and view.disabled_reason is None and view.consecutive_failures == 0
    for d in deliveries:
        await hooks.redeliver(WS, hook.id, d.id)
    await receiver.wait_for(sent + 5)
    await settle(hooks, hook.id)
    states = [d.state for d in (await hooks.deliveries(WS, hook.id)).data]
    assert states == ["succeeded"] * 5


async def test_queue_overflow_is_recorded_as_failed_deliveries(clock,
        engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory(hang=True)
    hooks = await hooks_factory(queue_max=3, max_consecutive_failures=0)
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    for i in range(8):
        await engine.create_session(WS, f"mach_{i}", "host")
    await trio.sleep(0.01)
    deliveries = (await hooks.deliveries(WS, hook.id)).data
    assert len(deliveries) == 8
    overflowed = [d for d in deliveries if d.state == "failed"]
    assert len(overflowed) == 5
    assert all(d.last_error.startswith("queue_full") and d.attempts == 0 for d in overflowed)
    stats = hooks.endpoint_stats(WS, hook.id)
    assert stats["overflowed"] == 5 and stats["pending"] == 3


async def test_the_deliveries_log_is_bounded_and_paginated(clock,
        engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory()
    hooks = await hooks_factory(log_max=7)
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    for i in range(12):
        await engine.create_session(WS, f"mach_{i}", "host")
    await receiver.wait_for(12)
    await settle(hooks, hook.id)
    first = await hooks.deliveries(WS, hook.id, limit=4)
    assert len(first.data) == 4 and first.meta.has_more
    second = await hooks.deliveries(WS, hook.id, limit=4, before=first.meta.next_before)
    assert len(second.data) == 3 and not second.meta.has_more
    ids = [d.id for d in first.data + second.data]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7
    machines = [r.json()["data"]["machine_id"] for r in receiver.requests]
    assert sorted(machines) == sorted(f"mach_{i}" for i in range(12))
    assert hooks.endpoint_stats(WS, hook.id)["evicted"] == 5


async def test_test_send_reports_the_outcome(clock, engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory(fail=1, fail_status=418)
    hooks = await hooks_factory()
    hook = await hooks.create(WS, receiver.url, ["session.created"])
    failed = await hooks.send_test(WS, hook.id)
    assert (failed.success, failed.status_code, failed.error) == (False, 418, "HTTP 418")
    ok = await hooks.send_test(WS, hook.id)
    assert (ok.success, ok.status_code, ok.error) == (True, 200, None)
    body = receiver.requests[-1].json()
    assert body["type"] == "webhook.test" and body["data"]["webhook_id"] == hook.id
    assert body["id"] == ok.event_id
    page = await hooks.deliveries(WS, hook.id)
    assert [d.event_type for d in page.data] == ["webhook.test"] * 2
    assert (await hooks.get(WS, hook.id)).consecutive_failures == 0

    dead = await hooks.create(WS, dead_url(), ["*"])
    result = await hooks.send_test(WS, dead.id)
    assert not result.success and "ConnectError" in result.error


async def test_endpoints_are_per_workspace_and_deletable(
        clock, engine, receiver_factory, hooks_factory):
    receiver = await receiver_factory()
    hooks = await hooks_factory()
    hook = await hooks.create(WS, receiver.url, list(EVENT_TYPES))
    assert hook.secret.startswith("whsec_")
    assert (await hooks.get(WS, hook.id)).secret is None  # shown once
    with pytest.raises(WebhookNotFound):
        await hooks.get("ws_other", hook.id)
    assert await hooks.list("ws_other") == []
    await hooks.delete(WS, hook.id)
    with pytest.raises(WebhookNotFound):
        await hooks.get(WS, hook.id)
    await engine.create_session(WS, "mach_1", "host")
    await trio.sleep(1)
    assert receiver.requests == []


async def test_a_client_factory_stands_in_for_http_and_undelivered_counts_what_is_left(
        clock, engine, nursery):
    """Receivers simulated in-process (as ``tether.sim.faults`` does): the factory's client is
    what every endpoint posts with, and ``undelivered`` counts deliveries still owed."""
    from tether.webhooks import Timeout, WebhookConfig, Webhooks

    posted: list[tuple[str, str]] = []
    answer = {"status": 503}

    class InProcess:
        def __init__(self, connections: int) -> None:
            assert connections >= 1

        async def __aenter__(self) -> InProcess:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def post(self, url, body, headers, addresses=()):
            posted.append((url, headers["X-Cmdop-Event"]))
            if answer["status"] == 0:
                await trio.sleep(2.0)
                raise Timeout("timeout after 2 s waiting for the response")
            await trio.lowlevel.checkpoint()
            return answer["status"]

    hooks = Webhooks(engine, WebhookConfig(allow_private=True, retry_base=1.0, timeout=2.0),
                     client_factory=InProcess)
    await nursery.start(hooks.run)
    hook = await hooks.create(WS, "http://receiver.invalid/hook", ["*"])
    assert hooks.undelivered == 0
    await churn(engine, "mach_1")
    await trio.sleep(0.5)
    assert hooks.undelivered == 5  # the first event retries (503); the rest wait behind it
    assert posted == [("http://receiver.invalid/hook", "session.created")]
    answer["status"] = 0  # now it hangs: the retry at 1 s times out at 3 s
    await trio.sleep(3.0)
    assert (await hooks.deliveries(WS, hook.id)).data[-1].last_error == \
        "timeout after 2 s waiting for the response"
    answer["status"] = 204
    await settle(hooks, hook.id)
    assert hooks.undelivered == 0
    assert [t for _, t in posted][-5:] == [
        "session.created", "session.connected", "session.client_attached",
        "session.client_detached", "session.disconnected"]


async def test_a_due_retry_goes_before_lanes_waiting_for_their_first_attempt(
        clock, engine, nursery):
    """Backoff is kept under load: a retry does not queue behind every other session's first
    attempt (which, behind a hanging endpoint, would delay disabling it by hours)."""
    from tether.webhooks import WebhookConfig, Webhooks

    attempts: list[tuple[float, str]] = []

    class SlowReceiver:  # one second per answer; the first attempt of mach_0's event fails
        def __init__(self, connections: int) -> None:
            pass

        async def __aenter__(self) -> SlowReceiver:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def post(self, url, body, headers, addresses=()):
            machine = msgspec.json.decode(body)["data"]["machine_id"]
            attempts.append((trio.current_time(), machine))
            await trio.sleep(1.0)
            return 500 if len(attempts) == 1 else 204

    hooks = Webhooks(engine, WebhookConfig(allow_private=True, retry_base=2.5,
                                           endpoint_concurrency=1),
                     client_factory=SlowReceiver)
    await nursery.start(hooks.run)
    hook = await hooks.create(WS, "http://receiver.invalid/hook", ["session.created"])
    start = trio.current_time()
    for n in range(10):
        await engine.create_session(WS, f"mach_{n}", "host.example")
    await settle(hooks, hook.id)
    machines = [m for _, m in attempts]
    assert machines[0] == "mach_0" and machines.count("mach_0") == 2
    retry_at = next(t for t, m in attempts[1:] if m == "mach_0")
    # failed at 1 s, due at 3.5 s, attempted when the attempt in flight ends: 4 s, not 10 s
    assert retry_at - start == pytest.approx(4.0, abs=0.2)
    assert machines.index("mach_0", 1) == 4
