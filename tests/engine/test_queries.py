"""List, detail, machine, metrics queries; retention; the event stream and its lag contract."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from tether.engine import (
    Engine,
    EngineConfig,
    EventsGone,
    EventsMissed,
    InvalidParameter,
    NoActiveSession,
    SessionNotActive,
    SessionNotFound,
    Status,
    Telemetry,
)

from .conftest import hello, stamp


async def _fleet(engine: Engine, n: int) -> list[str]:
    """n sessions on n machines over 3 hosts, one second apart; every third one ended."""
    ids = []
    for i in range(n):
        link, _ = await hello(engine, machine=f"mach_{i}", host=f"host-{i % 3}")
        ids.append(link.session_id)
        if i % 3 == 0:
            await link.goodbye()
        await trio.sleep(1)
    return ids


async def test_list_is_newest_first_with_exact_totals_and_filters(
    engine: Engine, autojump_clock: MockClock
) -> None:
    ids = await _fleet(engine, 30)
    page = engine.list_sessions("ws_acme", limit=10)
    assert [s.session_id for s in page.data] == ids[::-1][:10]
    assert (page.meta.total, page.meta.limit, page.meta.offset, page.meta.has_more) == (
        30,
        10,
        0,
        True,
    )
    last = engine.list_sessions("ws_acme", limit=10, offset=25)
    assert [s.session_id for s in last.data] == ids[::-1][25:]
    assert not last.meta.has_more
    connected = engine.list_sessions("ws_acme", status="CONNECTED", limit=100)
    assert connected.meta.total == 20
    assert [s.session_id for s in connected.data] == [
        sid for i, sid in enumerate(ids) if i % 3 != 0
    ][::-1]
    host = engine.list_sessions("ws_acme", machine_hostname="host-1", limit=3, offset=2)
    assert host.meta.total == 10
    assert [s.session_id for s in host.data] == [sid for i, sid in enumerate(ids) if i % 3 == 1][
        ::-1
    ][2:5]
    both = engine.list_sessions(
        "ws_acme", status=Status.DISCONNECTED, machine_hostname="host-0", limit=100
    )
    assert both.meta.total == 10
    machine = engine.list_sessions("ws_acme", machine_id="mach_4", status="CONNECTED")
    assert [s.session_id for s in machine.data] == [ids[4]]
    assert engine.list_sessions("ws_acme", machine_id="nope").meta.total == 0
    assert engine.list_sessions("ws_acme", offset=1000).data == []


async def test_list_summary_fields_match_the_contract(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    await trio.sleep(5)
    link.heartbeat()
    summary = engine.list_sessions("ws_acme").data[0]
    assert summary.__struct_fields__ == (
        "session_id",
        "status",
        "machine_id",
        "machine_hostname",
        "workspace_id",
        "created_at",
        "connected_at",
        "last_heartbeat_at",
        "attached_clients",
    )
    assert (summary.created_at, summary.connected_at, summary.last_heartbeat_at) == (
        stamp(0),
        stamp(0),
        stamp(5),
    )


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"status": "CONECTED"}, "status"),
        ({"status": "connected"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"offset": -1}, "offset"),
        ({"limit": "10"}, "limit"),
    ],
)
async def test_list_rejects_bad_parameters(
    engine: Engine, autojump_clock: MockClock, kwargs: dict, parameter: str
) -> None:
    with pytest.raises(InvalidParameter) as raised:
        engine.list_sessions("ws_acme", **kwargs)
    assert raised.value.envelope()["error"]["code"] == "invalid_parameter"
    assert raised.value.details["parameter"] == parameter


async def test_machine_session_and_metrics(engine: Engine, autojump_clock: MockClock) -> None:
    with pytest.raises(NoActiveSession) as raised:
        engine.machine_session("ws_acme", "mach_1")
    assert raised.value.envelope()["error"] == {
        "code": "session_not_found",
        "message": "No active session for this machine",
        "details": {"machine_id": "mach_1"},
    }
    link, _ = await hello(engine)
    assert engine.machine_session("ws_acme", "mach_1").session_id == link.session_id
    await trio.sleep(7)
    link.heartbeat(
        Telemetry(
            cpu_percent=45.2,
            memory_percent=62.1,
            disk_percent=78.5,
            network_rx_bytes=1234567,
            network_tx_bytes=987654,
            uptime_seconds=123456,
        )
    )
    metrics = engine.metrics("ws_acme", link.session_id)
    assert (
        metrics.timestamp,
        metrics.cpu_percent,
        metrics.network_tx_bytes,
        metrics.uptime_seconds,
    ) == (stamp(7), 45.2, 987654, 123456)
    detail = engine.get_session("ws_acme", link.session_id)
    assert detail.telemetry is not None and detail.telemetry.disk_percent == 78.5
    await link.background()
    with pytest.raises(SessionNotActive) as not_active:
        engine.metrics("ws_acme", link.session_id)
    assert not_active.value.details == {"current_status": "BACKGROUND"}


async def test_final_sessions_are_purged_after_the_retention(autojump_clock: MockClock) -> None:
    async with Engine(EngineConfig(retention=3600)) as engine:
        link, _ = await hello(engine)
        await link.report_command("ls", 0)
        await link.goodbye()
        await trio.sleep(3599)
        assert engine.get_session("ws_acme", link.session_id).status is Status.DISCONNECTED
        await trio.sleep(2)
        with pytest.raises(SessionNotFound):
            engine.get_session("ws_acme", link.session_id)
        assert engine.list_sessions("ws_acme").meta.total == 0
        assert engine.retained_sessions == 0


async def test_subscribers_get_every_event_in_order(
    engine: Engine, autojump_clock: MockClock
) -> None:
    subscription = engine.subscribe("ws_acme")
    seen: list[tuple[str, int]] = []

    async def consume() -> None:
        async for event in subscription:
            seen.append((event.type, event.sequence))
            if event.type == "session.disconnected":
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await hello(engine, workspace="ws_other")  # another workspace's events are not seen
        link, _ = await hello(engine)
        await link.goodbye()
    assert seen == [("session.created", 1), ("session.connected", 2), ("session.disconnected", 3)]


async def test_a_subscriber_that_falls_behind_is_told_and_catches_up(
    autojump_clock: MockClock,
) -> None:
    async with Engine(EngineConfig(event_log_max=10)) as engine:
        subscription = engine.subscribe("ws_acme")
        for i in range(8):  # 16 events, 10 retained: 6 fall out before anyone reads
            await hello(engine, machine=f"m{i}")
        with pytest.raises(EventsMissed) as missed:
            await subscription.__anext__()
        assert missed.value.missed == 6
        oldest = engine.events_after("ws_acme", None, 100)
        assert missed.value.resume_from == oldest[0].id
        # It carries on from the oldest retained event: nothing more is skipped.
        rest = [await subscription.__anext__() for _ in range(10)]
        assert [e.id for e in rest] == [e.id for e in oldest]


async def test_event_feed_after_an_id_and_gone_past_retention(autojump_clock: MockClock) -> None:
    async with Engine(EngineConfig(event_log_max=4)) as engine:
        await hello(engine, machine="m1")
        first_two = engine.events_after("ws_acme")
        await hello(engine, machine="m2")
        after = engine.events_after("ws_acme", first_two[-1].id)
        assert [e.type for e in after] == ["session.created", "session.connected"]
        await hello(engine, machine="m3")
        with pytest.raises(EventsGone) as gone:
            engine.events_after("ws_acme", first_two[0].id)
        assert gone.value.code == "events_gone"
        for bad in ("evt_nope", "garbage"):
            with pytest.raises(InvalidParameter):
                engine.events_after("ws_acme", bad)


async def test_a_workspaces_feed_reads_only_its_events_across_trimming(
    autojump_clock: MockClock,
) -> None:
    async with Engine(EngineConfig(event_log_max=3000)) as engine:
        for i in range(3000):  # 6,000 events: trimmed past the log's compaction point
            await hello(engine, machine=f"m{i}", workspace="ws_busy" if i % 10 else "ws_quiet")
        quiet = engine.events_after("ws_quiet", None, 1000)
        assert all(e.workspace_id == "ws_quiet" for e in quiet)
        # Every retained ws_quiet event, in order, and none missing between pages.
        expected = [
            e.id
            for e in engine.events._events[engine.events._start :]
            if e.workspace_id == "ws_quiet"
        ]
        pages: list[str] = []
        after = None
        while True:
            page = engine.events_after("ws_quiet", after, 7)
            if not page:
                break
            pages += [e.id for e in page]
            after = page[-1].id
        assert pages == expected == [e.id for e in quiet][: len(expected)]
        assert len(expected) == 300
