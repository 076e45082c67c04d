"""The wire driver against a real in-test server (Hypercorn on 127.0.0.1, free port).

Lifecycle timing runs on ``MockClock(autojump_threshold=0)``: the clock jumps only when every
task, the server's included, waits; frames on loopback are readable at once, so a whole
virtual run (grace periods of 30 s included) takes a moment of wall time. Checked invariants
are order-independent (statuses, histories, telemetry per session), not an event order.
"""

from __future__ import annotations

import trio

from tether.sim import (
    SCENARIOS,
    Kind,
    SessionExpect,
    WireConfig,
    WireFleet,
    check_over_rest,
    plan_fleet,
)

from .conftest import AGENT_TOKEN, API_KEY, run_and_check


async def run_wire_fleet(server, agents, duration, seed, weights=None):
    config = WireConfig(url=server.url, agent_token=AGENT_TOKEN, duration=duration)
    fleet = WireFleet(config, plan_fleet(agents, duration, weights=weights, seed=seed, ramp=5))
    mismatches, problems, _ = await run_and_check(server, fleet)
    return fleet, mismatches, problems


async def test_handful_of_agents_over_the_wire(server, autojump_clock):
    weights = {k: 1 for k in Kind}
    fleet, mismatches, problems = await run_wire_fleet(server, 16, 240, seed=4, weights=weights)
    assert fleet.problems == [] and fleet.errors == 0
    assert (mismatches, problems) == (0, [])
    assert fleet.connected_peak >= 12
    kinds = {r.plan.kind for r in fleet.runs}
    assert {Kind.LOST, Kind.FLAKY, Kind.RESTARTER} <= kinds
    engine = server.engine
    lost = [r for r in fleet.runs if r.plan.kind is Kind.LOST and len(r.sessions) == 2]
    assert lost  # dropped past the grace period, then came back with a fresh hello
    for r in lost:
        first = engine.get_session("ws_sim", r.sessions[0].session_id)
        assert (first.status, first.reason) == ("DISCONNECTED", "grace_expired")
    statuses = {s.status for s in fleet.sessions()}
    assert {"CONNECTED", "DISCONNECTED", "ERROR"} <= statuses
    # after finish() every agent said goodbye: nothing is left connected
    await trio.sleep(1)
    assert all(
        engine.get_session("ws_sim", s.session_id).status.final for s in fleet.sessions()
    )


async def test_wire_check_catches_a_wrong_expectation(server, autojump_clock):
    config = WireConfig(url=server.url, agent_token=AGENT_TOKEN, duration=60)
    fleet = WireFleet(config, plan_fleet(4, 60, weights=SCENARIOS["steady"], seed=1, ramp=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        await fleet.ready.wait()
        sessions = fleet.sessions()
        sessions[0].set("BACKGROUND", fleet.now())  # the agent never went to background
        found: list[str] = []
        mismatches = await check_over_rest(
            server.url, API_KEY, sessions, fleet.now, retries=2,
            report=lambda e, problems: found.extend(problems),
        )
        fleet.finish()
    assert mismatches == 1
    assert found == ["status CONNECTED (reason connected), expected BACKGROUND"] or \
        found[0].startswith("status CONNECTED")


async def test_check_counts_a_session_it_cannot_read():
    """Nothing listens on port 1: every read fails, the session counts, nothing raises."""
    sessions = [SessionExpect("sess_unreadable", "m-1", Kind.STEADY, 30.0, 0.0)]
    found: list[str] = []
    mismatches = await check_over_rest(
        "http://127.0.0.1:1", API_KEY, sessions, lambda: 0.0, retries=1,
        report=lambda e, problems: found.extend(problems),
    )
    assert mismatches == 1
    assert len(found) == 1 and found[0].startswith("could not read it: ConnectError")
