"""``tether.sim.audit``: what the audit of a cluster run counts, on hand-made logs, and its
webhook receiver over real HTTP."""

from __future__ import annotations

import httpx
import msgspec
import trio

from tether.sim.audit import SeenEvent, WebhookSink, audit_events


def event(n: int, session: str, sequence: int, type_: str = "session.connected",
          reason: str | None = None) -> SeenEvent:
    return msgspec.convert({"id": f"evt_{n:04d}", "type": type_, "data": {
        "session_id": session, "sequence": sequence, "reason": reason}}, SeenEvent)


LOG = [event(1, "s1", 1, "session.created"), event(2, "s2", 1, "session.created"),
       event(3, "s1", 2), event(4, "s2", 2),
       event(5, "s1", 3, "session.disconnected", "agent_goodbye")]


def test_a_clean_run_with_repeats_is_ok_and_counts_them() -> None:
    received = [LOG[0], LOG[1], LOG[2], LOG[2], LOG[3], LOG[4]]  # one redelivery
    audit = audit_events(LOG, received, resumed={"s1", "s2"})
    assert audit.ok, audit.problems
    assert (audit.events, audit.sessions, audit.received, audit.duplicated) == (5, 2, 6, 1)
    assert audit.ends == {"agent_goodbye": 1}


def test_every_broken_promise_is_counted() -> None:
    log = [*LOG, event(6, "s1", 4),  # after its terminal event
           event(7, "s2", 4, "session.disconnected", "grace_expired")]  # a gap: no 3
    received = [LOG[1], LOG[3], LOG[0], LOG[4], LOG[2], event(9, "s3", 1)]  # s1 out of order
    audit = audit_events(log, received, resumed={"s2"})
    assert not audit.ok
    assert (audit.lost, audit.unknown, audit.out_of_order, audit.gaps,
            audit.terminal_violations, audit.spurious_disconnects) == (2, 1, 1, 1, 1, 1)


async def test_the_receiver_keeps_what_real_http_posts_carried() -> None:
    sink = WebhookSink()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(sink.run)
        async with httpx.AsyncClient() as client:  # one keep-alive connection, three posts
            for e in LOG[:2]:
                r = await client.post(url, content=msgspec.json.encode(e))
                assert r.status_code == 204
            r = await client.post(url, content=b'{"not": "an event"}')
            assert r.status_code == 204
        nursery.cancel_scope.cancel()
    assert sink.received == LOG[:2]
    assert sink.undecodable == 1
