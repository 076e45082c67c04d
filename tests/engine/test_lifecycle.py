"""Every row of design.md's lifecycle table, under MockClock, with exact times and events."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from tether.engine import (
    Engine,
    EngineConfig,
    ProtocolViolation,
    ResumeRejected,
    SessionNotActive,
    Status,
    Telemetry,
)

from .conftest import event_log, hello, stamp


async def test_api_created_session_is_pending_until_its_agent_says_hello(
    engine: Engine, autojump_clock: MockClock
) -> None:
    created = await engine.create_session("ws_acme", "mach_1", "prod-server")
    assert created.status is Status.PENDING
    assert created.created_at == stamp(0) == "2026-02-14T10:00:00Z"
    assert created.connected_at is None
    await trio.sleep(5)
    link, _ = await hello(engine)
    assert link.session_id == created.session_id
    detail = engine.get_session("ws_acme", created.session_id)
    assert detail.status is Status.CONNECTED
    assert detail.connected_at == stamp(5)
    assert event_log(engine) == [
        ("session.created", 1, "created"),
        ("session.connected", 2, "agent_connected"),
    ]


async def test_pending_session_with_no_agent_ends_at_the_pending_timeout(
    engine: Engine, autojump_clock: MockClock
) -> None:
    created = await engine.create_session("ws_acme", "mach_1", "prod-server")
    await trio.sleep(299.5)
    assert engine.get_session("ws_acme", created.session_id).status is Status.PENDING
    await trio.sleep(1)
    detail = engine.get_session("ws_acme", created.session_id)
    assert detail.status is Status.DISCONNECTED
    assert detail.reason == "pending_timeout"
    assert detail.ended_at == stamp(300)
    assert event_log(engine)[-1] == ("session.disconnected", 2, "pending_timeout")


async def test_hello_without_a_waiting_session_creates_and_connects_one(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    welcome = link.welcome
    assert welcome is not None
    assert welcome.session_id == link.session_id
    assert welcome.resume_token.startswith("rt_")
    assert (welcome.heartbeat_interval, welcome.heartbeat_timeout, welcome.grace_period) == (
        30.0,
        60.0,
        30.0,
    )
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED
    assert event_log(engine) == [
        ("session.created", 1, "created"),
        ("session.connected", 2, "agent_connected"),
    ]


async def test_background_and_foreground(engine: Engine, autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    await link.background()
    assert engine.get_session("ws_acme", link.session_id).status is Status.BACKGROUND
    await link.foreground()
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED
    assert [e[0] for e in event_log(engine)][2:] == ["session.background", "session.connected"]
    with pytest.raises(ProtocolViolation):
        await link.foreground()


async def test_heartbeats_keep_a_session_connected_and_silence_enters_grace(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, transport = await hello(engine)
    for _ in range(10):
        await trio.sleep(30)
        link.heartbeat()
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED
    assert engine.get_session("ws_acme", link.session_id).last_heartbeat_at == stamp(300)
    await trio.sleep(59.9)
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED
    await trio.sleep(0.2)
    detail = engine.get_session("ws_acme", link.session_id)
    assert detail.status is Status.GRACE_PERIOD
    assert detail.reason == "heartbeat_timeout"
    assert transport.closed == "heartbeat_timeout"  # the half-dead socket is let go
    events = engine.events_after("ws_acme")
    assert events[-1].type == "session.grace_period"
    assert events[-1].timestamp == stamp(360)


async def test_transport_loss_enters_grace_and_grace_expiry_disconnects(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    await trio.sleep(10)
    link.transport_lost()
    await trio.sleep(0)
    await trio.sleep(0.001)
    detail = engine.get_session("ws_acme", link.session_id)
    assert detail.status is Status.GRACE_PERIOD
    assert detail.reason == "transport_closed"
    await trio.sleep(29.9)
    assert engine.get_session("ws_acme", link.session_id).status is Status.GRACE_PERIOD
    await trio.sleep(0.2)
    detail = engine.get_session("ws_acme", link.session_id)
    assert detail.status is Status.DISCONNECTED
    assert detail.reason == "grace_expired"
    assert event_log(engine)[-2:] == [
        ("session.grace_period", 3, "transport_closed"),
        ("session.disconnected", 4, "grace_expired"),
    ]
    assert engine.events_after("ws_acme")[-1].timestamp == stamp(40.001)


async def test_resume_within_grace_reconnects_with_a_fresh_token(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    assert link.welcome is not None
    token = link.welcome.resume_token
    link.transport_lost()
    await trio.sleep(20)
    resumed, _ = await hello(engine, token=token)
    assert resumed.session_id == link.session_id
    assert resumed.welcome is not None and resumed.welcome.resumed
    assert resumed.welcome.resume_token != token
    detail = engine.get_session("ws_acme", link.session_id)
    assert detail.status is Status.CONNECTED and detail.reason == "resumed"
    assert event_log(engine)[-1] == ("session.connected", 4, "resumed")
    # The old token was used up, and the old link no longer speaks for the session.
    with pytest.raises(ResumeRejected):
        await hello(engine, token=token)
    with pytest.raises(Exception, match="no longer carries"):
        link.heartbeat()
    await trio.sleep(40)  # the old grace deadline passes: nothing happens to a resumed session
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED


async def test_resume_on_a_half_dead_socket_moves_the_session(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, old_transport = await hello(engine)
    assert link.welcome is not None
    resumed, _ = await hello(engine, token=link.welcome.resume_token)
    assert resumed.session_id == link.session_id
    assert old_transport.closed == "resumed_elsewhere"
    resumed.heartbeat()
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED


async def test_resume_after_grace_expiry_is_rejected(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    assert link.welcome is not None
    link.transport_lost()
    await trio.sleep(31)
    with pytest.raises(ResumeRejected):
        await hello(engine, token=link.welcome.resume_token)


@pytest.mark.parametrize(
    "token",
    ["", "rt_", "rt_sess_nope.secret", "garbage", "rt_{sid}.wrong", "rt_{sid}"],
)
async def test_forged_resume_tokens_are_rejected(
    engine: Engine, token: str, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    link.transport_lost()
    await trio.sleep(1)
    with pytest.raises(ResumeRejected):
        await hello(engine, token=token.format(sid=link.session_id))
    assert engine.get_session("ws_acme", link.session_id).status is Status.GRACE_PERIOD


async def test_a_token_is_only_good_for_its_own_machine_and_workspace(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    assert link.welcome is not None
    link.transport_lost()
    await trio.sleep(1)
    with pytest.raises(ResumeRejected):
        await hello(engine, machine="mach_2", token=link.welcome.resume_token)
    with pytest.raises(ResumeRejected):
        await hello(engine, workspace="ws_other", token=link.welcome.resume_token)


async def test_goodbye_ends_the_session(engine: Engine, autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    await link.goodbye("shutting down")
    detail = engine.get_session("ws_acme", link.session_id)
    assert (detail.status, detail.reason) == (Status.DISCONNECTED, "agent_goodbye")
    with pytest.raises(SessionNotActive):
        await engine.terminate("ws_acme", link.session_id)


async def test_terminate_from_every_live_status(engine: Engine, autojump_clock: MockClock) -> None:
    pending = await engine.create_session("ws_acme", "mach_p", "h")
    connected, _ = await hello(engine, machine="mach_c")
    background, _ = await hello(engine, machine="mach_b")
    await background.background()
    grace, _ = await hello(engine, machine="mach_g")
    grace.transport_lost()
    await trio.sleep(1)
    for session_id in (
        pending.session_id,
        connected.session_id,
        background.session_id,
        grace.session_id,
    ):
        detail = await engine.terminate("ws_acme", session_id)
        assert (detail.status, detail.reason) == (Status.DISCONNECTED, "terminated")


async def test_fatal_error_ends_in_error(engine: Engine, autojump_clock: MockClock) -> None:
    link, transport = await hello(engine)
    await link.fatal_error("disk_full", "no space left")
    detail = engine.get_session("ws_acme", link.session_id)
    assert (detail.status, detail.reason) == (Status.ERROR, "agent_error")
    assert transport.closed == "agent_error"
    assert event_log(engine)[-1] == ("session.error", 3, "agent_error")


async def test_protocol_violation_ends_in_error(engine: Engine, autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    await link.protocol_violation("too many bad frames")
    detail = engine.get_session("ws_acme", link.session_id)
    assert (detail.status, detail.reason) == (Status.ERROR, "protocol_violation")


async def test_a_new_hello_without_token_replaces_the_machines_session(
    engine: Engine, autojump_clock: MockClock
) -> None:
    old, old_transport = await hello(engine)
    await trio.sleep(3)
    new, _ = await hello(engine)
    assert new.session_id != old.session_id
    assert engine.get_session("ws_acme", old.session_id).reason == "replaced"
    assert engine.get_session("ws_acme", old.session_id).status is Status.DISCONNECTED
    assert old_transport.closed == "replaced"
    assert engine.machine_session("ws_acme", "mach_1").session_id == new.session_id
    types = [(e.session_id, e.type) for e in engine.events_after("ws_acme")]
    assert types[2:] == [
        (old.session_id, "session.disconnected"),
        (new.session_id, "session.created"),
        (new.session_id, "session.connected"),
    ]


async def test_racing_hellos_for_one_machine_leave_one_active_session(
    engine: Engine, autojump_clock: MockClock
) -> None:
    await hello(engine)
    links = []

    async def one() -> None:
        links.append((await hello(engine))[0])

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    active = [
        link
        for link in links
        if engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED
    ]
    assert len(active) == 1
    assert engine.live_sessions == 1


async def test_background_ends_after_the_background_timeout(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    await link.background()
    await trio.sleep(1800)
    link.heartbeat()  # a heartbeat while in background extends it
    await trio.sleep(3599)
    assert engine.get_session("ws_acme", link.session_id).status is Status.BACKGROUND
    await trio.sleep(2)
    detail = engine.get_session("ws_acme", link.session_id)
    assert (detail.status, detail.reason) == (Status.GRACE_PERIOD, "background_timeout")


async def test_final_states_are_absorbing(engine: Engine, autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    await link.goodbye()
    with pytest.raises(Exception, match="no longer carries"):
        await link.background()
    with pytest.raises(Exception, match="no longer carries"):
        link.heartbeat(Telemetry(cpu_percent=1.0))
    link.transport_lost()
    await trio.sleep(100)
    assert engine.get_session("ws_acme", link.session_id).status is Status.DISCONNECTED
    assert [e[0] for e in event_log(engine)].count("session.disconnected") == 1


async def test_durations_are_configuration(autojump_clock: MockClock) -> None:
    config = EngineConfig(heartbeat_timeout=5, grace_period=2, pending_timeout=1)
    async with Engine(config) as engine:
        link, _ = await hello(engine)
        assert link.welcome is not None and link.welcome.grace_period == 2
        start = trio.current_time()
        with trio.fail_after(100):
            while engine.get_session("ws_acme", link.session_id).status is not Status.DISCONNECTED:
                await trio.sleep(0.5)
        assert trio.current_time() - start == pytest.approx(7.0, abs=0.51)


async def test_shutdown_ends_every_live_session(autojump_clock: MockClock) -> None:
    async with Engine() as engine:
        links = [(await hello(engine, machine=f"m{i}"))[0] for i in range(3)]
        subscription = engine.subscribe("ws_acme")
    reasons = [engine.get_session("ws_acme", link.session_id).reason for link in links]
    assert reasons == ["server_shutdown"] * 3
    seen = [event.type async for event in subscription]
    assert seen == ["session.disconnected"] * 3


async def test_the_agents_own_words_are_kept(engine: Engine, autojump_clock: MockClock) -> None:
    bye, _ = await hello(engine, machine="m1")
    await bye.goodbye("host rebooting")
    broken, _ = await hello(engine, machine="m2")
    await broken.fatal_error("disk_full", "no space left on /var")
    assert engine.get_session("ws_acme", bye.session_id).reason_detail == "host rebooting"
    assert engine.get_session("ws_acme", broken.session_id).reason_detail == (
        "disk_full: no space left on /var"
    )
    assert engine.clock.trio_time(engine.clock.wall(12.5)) == 12.5
