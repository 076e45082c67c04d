"""Sessions the server ends under running simulated agents (``DELETE /v1/sessions/{id}``:
reason ``terminated``; another hello for the machine: ``replaced``) are something a fleet meets
in real life: counted apart (``ended_by_server``), never errors or mismatches, and the agents
reconnect with a fresh hello and go on with their plans on the new sessions.

In-process runs terminate through the engine from a second task, under
``MockClock(autojump_threshold=0)``; wire runs terminate over the REST API of a real server on
127.0.0.1 while the fleet runs, on the same mock clock.
"""

from __future__ import annotations

import io

import httpx
import msgspec
import trio

from tether.engine import Engine, EngineConfig
from tether.sim import (
    AgentRun,
    InProcessFleet,
    Kind,
    SessionExpect,
    SimConfig,
    Step,
    WireConfig,
    WireFleet,
    check_over_rest,
    disagreements,
    plan_fleet,
    run_sim,
)
from tether.sim._agent import RECONNECT_BACKOFF, RECONNECT_BACKOFF_MAX

from .conftest import AGENT_TOKEN, API_KEY, WORKSPACE, engine_clock

ALL_KINDS = {k: 1 for k in Kind}


def live(run: AgentRun) -> bool:
    return run.connected and run.session is not None and run.session.status == "CONNECTED"


class _Transport:
    """Another agent's transport, for a hello that replaces a simulated agent's session."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    def send_run_command(self, command) -> None:
        pass

    def close(self, reason: str) -> None:
        self.closed.append(reason)


# -- the model --------------------------------------------------------------------------------

def test_an_ended_session_is_counted_and_the_agent_says_a_fresh_hello():
    plan = plan_fleet(1, 600, weights={Kind.STEADY: 1}, seed=1, ramp=0)[0]
    agent = AgentRun(plan, stop_at=600, heartbeat_every=10)
    assert agent.take(0.0) is Step.HELLO
    agent.welcomed(0.0, "sess_1", "rt_1", 30.0, 30.0, resumed=False)
    assert agent.take(0.0) is Step.HEARTBEAT and agent.take(10.0) is Step.HEARTBEAT
    first = agent.session
    agent.run_command("cmd_1", "uptime")  # arrives just before the end: lost with the session
    assert agent.ended_by_server(12.0, "terminated") is True
    assert agent.ended_by_server(12.0, "terminated") is False  # counted once
    assert (first.status, first.reasons, first.server_ended) == (
        "DISCONNECTED", ("terminated",), True)
    assert len(first.telemetry_sent) == 2 and first.telemetry_sent[-1] == first.telemetry
    assert not agent.connected and agent.session is None and not agent.awaiting("cmd_1")
    # a fresh hello (no resume token) after the backoff
    assert (agent.next_step, agent.due) == (Step.HELLO, 12.0 + RECONNECT_BACKOFF)
    assert agent.take(12.5) is None
    assert agent.take(agent.due) is Step.HELLO
    agent.welcomed(13.0, "sess_2", "rt_2", 30.0, 30.0, resumed=False)
    assert [s.session_id for s in agent.sessions] == ["sess_1", "sess_2"]
    assert first.status == "DISCONNECTED" and agent.session.status == "CONNECTED"
    # each further end in the run doubles the backoff, up to the cap
    waits = []
    for k in range(8):
        at = 20.0 + 40 * k
        agent.welcomed(at, f"sess_{k + 3}", "rt", 30.0, 30.0, resumed=False)
        agent.ended_by_server(at, "replaced")
        waits.append(round(agent.due - at, 1))
    assert waits == [min(RECONNECT_BACKOFF * 2 ** k, RECONNECT_BACKOFF_MAX)
                     for k in range(1, 9)]
    assert (agent.server_ends, agent.server_replaced) == (9, 8)


def test_no_reconnect_after_the_end_of_the_run():
    plan = plan_fleet(1, 100, weights={Kind.STEADY: 1}, seed=1, ramp=0)[0]
    agent = AgentRun(plan, stop_at=100)
    agent.take(0.0)
    agent.welcomed(0.0, "sess_1", "rt_1", 30.0, 30.0, resumed=False)
    assert agent.ended_by_server(99.5, "terminated")
    assert (agent.next_step, agent.due) == (None, float("inf"))
    assert agent.sessions[0].status == "DISCONNECTED"


def test_a_refused_resume_is_a_session_ended_while_away():
    plan = plan_fleet(1, 600, weights={Kind.FLAKY: 1}, seed=2, ramp=0)[0]
    agent = AgentRun(plan, stop_at=600, heartbeat_every=1000)
    agent.take(0.0)
    agent.welcomed(0.0, "sess_1", "rt_1", 30.0, 30.0, resumed=False)
    agent.take(0.0)  # heartbeat
    drop = plan.script[0].at
    assert agent.take(drop) is Step.DROP
    back = agent.due
    assert agent.take(back) is Step.RESUME
    agent.resume_refused(back)
    old = agent.sessions[0]
    assert (old.status, old.reasons, old.server_ended) == ("DISCONNECTED", ("terminated",), True)
    assert agent.server_ends == 1
    assert (agent.next_step, agent.due) == (Step.HELLO, back + RECONNECT_BACKOFF)


def test_the_check_allows_what_an_end_may_cut_off():
    """The server may have applied only the frames sent before it ended the session: the
    history may be a prefix, an operator's command may be lost, the telemetry any sample sent;
    nothing else is allowed."""
    e = SessionExpect("sess_1", "m-1", Kind.COMMANDS, 30.0, 0.0)
    e.set("DISCONNECTED", 5.0, "terminated")
    e.commands = [("c1", "uptime", 0), ("c2", "ls /nonexistent", 2)]
    e.operator_commands = [("c2", "ls /nonexistent", 2, "op@x"), ("c3", "uptime", 0, "op@x")]
    e.telemetry = (3.0, 4.0, 5.0)
    e.telemetry_sent = [(1.0, 2.0, 3.0), (3.0, 4.0, 5.0)]
    detail = {"status": "DISCONNECTED", "reason": "terminated", "machine_id": "m-1",
              "attached_clients": [], "telemetry": {"cpu_percent": 1.0, "memory_percent": 2.0,
                                                    "disk_percent": 3.0}}
    history = [{"command_id": "c1", "command": "uptime", "exit_code": 0}]
    assert disagreements(e, detail, history, 10.0, 1.0) != []  # not unless the server ended it
    e.server_ended = True
    assert disagreements(e, detail, history, 10.0, 1.0) == []
    assert disagreements(e, detail | {"telemetry": None}, [], 10.0, 1.0) == []
    wrong = [{"command_id": "c2", "command": "ls /nonexistent", "exit_code": 2}]
    assert disagreements(e, detail, wrong, 10.0, 1.0) != []  # not a prefix
    foreign = detail | {"telemetry": {"cpu_percent": 9.0, "memory_percent": 2.0,
                                      "disk_percent": 3.0}}
    assert disagreements(e, foreign, history, 10.0, 1.0) != []
    assert disagreements(e, detail | {"reason": "agent_goodbye"}, history, 10.0, 1.0) != []
    e2 = SessionExpect.from_builtins(msgspec.json.decode(msgspec.json.encode(e.to_builtins())))
    assert (e2.server_ended, e2.telemetry_sent) == (True, e.telemetry_sent)


# -- in-process -------------------------------------------------------------------------------

async def test_terminated_in_process_mid_run(autojump_clock):
    duration = 600
    async with Engine(EngineConfig(), clock=engine_clock()) as engine:
        plans = plan_fleet(120, duration, weights=ALL_KINDS, seed=21, ramp=20, operators=0.5)
        fleet = InProcessFleet(engine, WORKSPACE, plans, duration=duration)
        terminated: dict[int, str] = {}

        async def terminate(at: float, count: int) -> None:
            await trio.sleep(at)
            picked = [i for i, r in enumerate(fleet.runs) if live(r) and i not in terminated]
            for i in picked[:count]:
                session_id = fleet.runs[i].session.session_id
                await engine.terminate(WORKSPACE, session_id)
                terminated[i] = session_id

        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminate, 150.0, 6)
            nursery.start_soon(terminate, 320.5, 4)
            result = await fleet.run()
        assert result.problems == []
        assert (result.errors, result.mismatches) == (0, 0) and result.ok
        assert len(terminated) == 10 and result.ended_by_server == 10
        assert result.notes == []
        for i, session_id in terminated.items():
            run = fleet.runs[i]
            old = engine.get_session(WORKSPACE, session_id)
            assert (old.status.value, old.reason) == ("DISCONNECTED", "terminated")
            ids = [s.session_id for s in run.sessions]
            assert session_id in ids and ids[-1] != session_id  # a new session after it
            after = run.sessions[ids.index(session_id) + 1]
            assert after.since - run.sessions[ids.index(session_id)].since >= RECONNECT_BACKOFF
            if run.plan.kind in (Kind.STEADY, Kind.COMMANDS, Kind.CYCLER):
                # nothing in its plan ends it: the machine has a live session, the new one
                active = engine.get_session(WORKSPACE, ids[-1])
                assert not active.status.final and active.machine_id == run.plan.machine_id
        engine.shutdown()


async def test_a_session_terminated_while_its_agent_is_away(autojump_clock):
    """A flaky agent's session is terminated in its grace period: its resume is refused, and
    it says a fresh hello (counted, not an error; the check holds the old session to
    ``terminated``)."""
    duration = 300
    async with Engine(EngineConfig(), clock=engine_clock()) as engine:
        plans = plan_fleet(20, duration, weights={Kind.FLAKY: 1}, seed=5, ramp=5)
        fleet = InProcessFleet(engine, WORKSPACE, plans, duration=duration)
        done: list[int] = []

        async def terminate_in_grace() -> None:
            while not done:
                await trio.sleep(0.1)
                for i, r in enumerate(fleet.runs):
                    s = r.session
                    if s is not None and s.status == "GRACE_PERIOD" and not r.connected:
                        await engine.terminate(WORKSPACE, s.session_id)
                        done.append(i)
                        break

        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminate_in_grace)
            result = await fleet.run()
        assert result.problems == []
        assert (result.errors, result.mismatches, result.ended_by_server) == (0, 0, 1)
        run = fleet.runs[done[0]]
        assert len(run.sessions) == 2 and run.sessions[0].reasons == ("terminated",)
        assert engine.get_session(WORKSPACE, run.sessions[1].session_id).status.value == (
            "CONNECTED")
        engine.shutdown()


async def test_replaced_in_process_by_another_hello(autojump_clock):
    """Another agent says hello for a simulated machine: its session ends ``replaced``; the
    simulated agent reconnects (replacing the other in turn) and the run says so in a note."""
    duration = 300
    async with Engine(EngineConfig(), clock=engine_clock()) as engine:
        plans = plan_fleet(10, duration, weights={Kind.STEADY: 1}, seed=8, ramp=5)
        fleet = InProcessFleet(engine, WORKSPACE, plans, duration=duration)
        other = _Transport()

        async def intruder() -> None:
            await trio.sleep(100)
            plan = fleet.runs[3].plan
            await engine.agent_hello(WORKSPACE, other, machine_id=plan.machine_id,
                                     machine_hostname=plan.machine_hostname)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(intruder)
            result = await fleet.run()
        assert result.problems == []
        assert (result.errors, result.mismatches, result.ended_by_server) == (0, 0, 1)
        assert result.notes and "replaced" in result.notes[0]
        run = fleet.runs[3]
        assert [s.reasons for s in run.sessions[:1]] == [("replaced",)]
        assert other.closed == ["replaced"]  # the simulated agent's fresh hello took it back
        assert engine.get_session(WORKSPACE, run.sessions[-1].session_id).status.value == (
            "CONNECTED")
        engine.shutdown()


# -- over the wire ----------------------------------------------------------------------------

async def terminate_over_rest(url: str, fleet: WireFleet, at: float, count: int,
                              terminated: dict[str, str]) -> None:
    """At ``at`` seconds into the run, DELETE the CONNECTED sessions of ``count`` machines
    (none already in ``terminated``: machine_id -> session_id)."""
    async with httpx.AsyncClient(base_url=url,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        await trio.sleep_until(fleet.start + at)
        r = await api.get("/v1/sessions", params={"status": "CONNECTED", "limit": 100})
        r.raise_for_status()
        fresh = [s for s in r.json()["data"] if s["machine_id"] not in terminated]
        for session in fresh[:count]:
            d = await api.delete(f"/v1/sessions/{session['session_id']}")
            assert d.status_code in (200, 204), d.text
            terminated[session["machine_id"]] = session["session_id"]


async def machine_session(url: str, machine_id: str) -> dict | None:
    async with httpx.AsyncClient(base_url=url,
                                 headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        r = await api.get(f"/v1/machines/{machine_id}/session")
        return r.json()["data"] if r.status_code == 200 else None


async def test_terminated_over_rest_while_the_fleet_runs(server, autojump_clock):
    duration = 240
    config = WireConfig(url=server.url, agent_token=AGENT_TOKEN, duration=duration,
                        api_key=API_KEY)
    plans = plan_fleet(24, duration, weights={Kind.STEADY: 2, Kind.COMMANDS: 2, Kind.CYCLER: 1},
                       seed=12, ramp=5, operators=0.7)
    fleet = WireFleet(config, plans)
    terminated: dict[str, str] = {}
    problems: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        nursery.start_soon(terminate_over_rest, server.url, fleet, 60.0, 3, terminated)
        nursery.start_soon(terminate_over_rest, server.url, fleet, 130.0, 2, terminated)
        await fleet.ready.wait()
        # the run is over, the agents still connected: each machine's live session
        new = {m: await machine_session(server.url, m) for m in terminated}
        mismatches = await check_over_rest(
            server.url, API_KEY, fleet.sessions(), fleet.now, margin=1.0,
            report=lambda e, found: problems.append(f"{e.kind.value}: {found}"),
        )
        fleet.finish()
    assert fleet.problems == [] and fleet.errors == 0
    assert (mismatches, problems) == (0, [])
    assert len(terminated) == 5
    assert sum(r.server_ends for r in fleet.runs) == 5
    by_machine = {r.plan.machine_id: r for r in fleet.runs}
    for machine_id, old_id in terminated.items():
        old = server.engine.get_session(WORKSPACE, old_id)
        assert (old.status.value, old.reason) == ("DISCONNECTED", "terminated")
        run = by_machine[machine_id]
        ids = [s.session_id for s in run.sessions]
        assert old_id in ids and ids[-1] != old_id
        # the machine has a new live session, the one its agent expects
        assert new[machine_id] is not None and new[machine_id]["session_id"] == ids[-1]
        assert new[machine_id]["status"] in ("CONNECTED", "BACKGROUND")  # a cycler's plan
        assert new[machine_id]["status"] == run.sessions[-1].status  # goes on with the run


async def test_run_sim_counts_ended_sessions_in_its_summary(server, autojump_clock):
    """``tether sim``'s own path (run_sim, one process here): the JSON summary has
    ``ended_by_server`` and the run is ok."""
    config = SimConfig(url=server.url, agent_token=AGENT_TOKEN, agents=10, duration=120,
                       seed=3, scenario="steady", api_key=API_KEY, operators=0.5, ramp=2)
    terminated: dict[str, str] = {}
    out = io.StringIO()

    class _Clock:
        start = 0.0

    async with trio.open_nursery() as nursery:
        _Clock.start = trio.current_time()
        nursery.start_soon(terminate_over_rest, server.url, _Clock, 40.0, 2, terminated)
        result = await run_sim(config, out)
    assert result.problems == [], result.problems
    assert result.ok and (result.errors, result.mismatches) == (0, 0)
    assert len(terminated) == 2 and result.ended_by_server == 2
    summary = msgspec.json.decode(msgspec.json.encode(result))
    assert summary["ended_by_server"] == 2 and summary["errors"] == 0
    assert "sessions ended by the server 2" in result.summary()
    assert result.sessions == 12  # ten machines, two of them twice
