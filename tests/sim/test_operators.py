"""Operators in the simulator: a share of machines get visits (attach as operator, run commands
through the engine or the REST API, detach), the agents answer the run_command frames, and the
self-check holds each accepted command to the session's history.

In-process runs are under ``MockClock(autojump_threshold=0)`` and driven from one task, so
traces (operator steps included) are reproducible from the seed; the wire run checks only
order-independent facts (histories, attached clients, counts).
"""

from __future__ import annotations

import trio

from tether.engine import Engine, EngineConfig, SessionNotActive
from tether.sim import (
    SHELL,
    AgentRun,
    InProcessFleet,
    Kind,
    OperatorRun,
    OpStep,
    Step,
    WireConfig,
    WireFleet,
    exit_code_of,
    plan_fleet,
)
from tether.sim import _agent as sim_agent

from .conftest import AGENT_TOKEN, API_KEY, WORKSPACE, engine_clock, run_and_check


async def run_fleet(agents, duration, *, seed=1, operators=0.5, trace=None, prepare=None,
                    weights=None):
    """A fleet in-process; ``prepare(engine, fleet)`` may tamper before the run."""
    async with Engine(EngineConfig(), clock=engine_clock()) as engine:
        plans = plan_fleet(agents, duration, weights=weights, seed=seed, ramp=30,
                           operators=operators)
        fleet = InProcessFleet(engine, WORKSPACE, plans, duration=duration, trace=trace)
        if prepare is not None:
            prepare(engine, fleet)
        result = await fleet.run()
        fleet.shown = {s.session_id: fleet.views(s.session_id) for s in fleet.sessions()}
        engine.shutdown()
    return fleet, result


def test_plans_draw_visits_apart_from_the_rest():
    plain = plan_fleet(300, 600, seed=9)
    visited = plan_fleet(300, 600, seed=9, operators=0.3)
    # the share changes only who gets visits, never the agents' own plans
    assert [(p.kind, p.start, p.script) for p in plain] == [
        (p.kind, p.start, p.script) for p in visited]
    assert all(not p.visits for p in plain)
    share = sum(1 for p in visited if p.visits) / len(visited)
    assert 0.2 < share < 0.4
    for p in visited:
        for v in p.visits:
            assert p.start < v.at and 1 <= len(v.commands) <= 3
            assert all(SHELL[c] == code for c, code in v.commands)
            assert v.at + v.gap * (len(v.commands) + 1) < 0.9 * 600
        # visits do not overlap
        for a, b in zip(p.visits, p.visits[1:], strict=False):
            assert b.at >= a.at + a.gap * (len(a.commands) + 1)
    assert plan_fleet(50, 60, seed=5, operators=0.5, first=20, count=10) == plan_fleet(
        50, 60, seed=5, operators=0.5)[20:30]


async def test_operators_run_commands_the_agents_answer(autojump_clock):
    trace: list = []
    fleet, result = await run_fleet(300, 900, seed=11, trace=trace)
    assert result.problems == []
    assert (result.errors, result.mismatches) == (0, 0)
    assert result.operator_visits > 50
    assert result.operator_commands >= result.operator_visits
    assert result.operator_answered == result.operator_commands
    assert result.operator_skipped > 0  # visits to leavers, crashers, dropped agents
    assert {"op_attach", "op_run", "op_detach"} <= {step for _, _, step in trace}
    # each accepted command is in its session's history, by the operator, with the exit code
    # the machine's shell gives it; nonzero codes included; and the operator left
    expected = [(s, c) for s in fleet.sessions() for c in s.operator_commands]
    assert len(expected) == result.operator_commands
    codes = set()
    for session, (command_id, command, exit_code, email) in expected:
        detail, history = fleet.shown[session.session_id]
        entry = next(h for h in history if h["command_id"] == command_id)
        assert (entry["command"], entry["exit_code"], entry["user_email"]) == (
            command, exit_code, email)
        assert exit_code == SHELL[command]
        assert detail["attached_clients"] == []
        codes.add(exit_code)
    assert 0 in codes and len(codes) > 1


async def test_operator_steps_reproducible_from_seed(autojump_clock):
    first: list = []
    second: list = []
    _, a = await run_fleet(120, 600, seed=5, trace=first)
    _, b = await run_fleet(120, 600, seed=5, trace=second)
    assert first == second
    counts = ("operator_visits", "operator_commands", "operator_skipped", "messages_sent")
    assert [getattr(a, k) for k in counts] == [getattr(b, k) for k in counts]


async def test_refusals_are_counted_and_never_expected(autojump_clock):
    """The engine refuses some attaches and commands (as for a session that just left
    CONNECTED): counted apart, not errors, and nothing refused is expected in a history."""
    calls = {"attach": 0, "run": 0}

    def prepare(engine, fleet):
        attach, run = engine.attach_client, engine.run_command

        async def refusing_attach(*args, **kwargs):
            calls["attach"] += 1
            if calls["attach"] % 4 == 0:
                raise SessionNotActive("BACKGROUND")
            return await attach(*args, **kwargs)

        async def refusing_run(*args, **kwargs):
            calls["run"] += 1
            if calls["run"] % 3 == 0:
                raise SessionNotActive("GRACE_PERIOD")
            return await run(*args, **kwargs)

        engine.attach_client, engine.run_command = refusing_attach, refusing_run

    fleet, result = await run_fleet(200, 600, seed=3, prepare=prepare)
    assert result.problems == []
    assert (result.errors, result.mismatches) == (0, 0)
    refused = calls["attach"] // 4 + calls["run"] // 3
    assert refused > 10 and result.operator_refused == refused
    assert result.operator_commands == calls["run"] - calls["run"] // 3
    assert result.operator_answered == result.operator_commands
    assert sum(len(s.operator_commands) for s in fleet.sessions()) == result.operator_commands


async def test_check_catches_wrong_operator_expectations(autojump_clock):
    async with Engine(EngineConfig(), clock=engine_clock()) as engine:
        plans = plan_fleet(80, 300, weights={Kind.STEADY: 1}, seed=2, ramp=10, operators=1)
        fleet = InProcessFleet(engine, WORKSPACE, plans, duration=300)
        result = await fleet.run()
        assert (result.errors, result.mismatches) == (0, 0) and result.operator_commands > 3
        now = trio.current_time() - fleet._start
        visited = [s for s in fleet.sessions() if s.operator_commands]
        wrong_code, missing, still_attached = visited[:3]
        command_id, command, code, email = wrong_code.operator_commands[0]
        wrong_code.operator_commands[0] = (command_id, command, code + 1, email)
        missing.operator_commands.append(("cmd_never_sent", "uptime", 0, email))
        still_attached.clients = 1  # the operator never detached
        fleet.problems.clear()
        mismatches, _ = fleet.check(now)
        assert mismatches == 3
        text = "\n".join(fleet.problems)
        assert f"operator command {command_id} shown as" in text
        assert "operator command cmd_never_sent ('uptime') not in history" in text
        assert "0 attached clients, expected 1" in text
        engine.shutdown()


async def test_an_agent_answering_wrong_codes_fails_the_run(autojump_clock, monkeypatch):
    """End to end: agents that answer every run_command with 0 make the run fail, because
    the operators expected the shell's exit codes (some are not 0)."""
    monkeypatch.setattr(sim_agent, "exit_code_of", lambda command: 0)
    _, result = await run_fleet(150, 600, seed=4, operators=0.6)
    nonzero = sum(1 for code in SHELL.values() if code != 0)
    assert nonzero and result.operator_commands > 20
    assert result.mismatches > 0 and not result.ok
    assert any("shown as" in p for p in result.problems)


async def test_a_lost_run_command_is_an_error_and_a_mismatch(autojump_clock):
    def prepare(engine, fleet):
        fleet._run_command = lambda transport, command: None  # the agent never hears of it

    _, result = await run_fleet(30, 600, seed=8, prepare=prepare)
    assert 0 < result.operator_commands < 50 and result.operator_answered == 0
    assert result.errors == result.operator_commands
    assert result.mismatches > 0
    assert any("not in history" in p for p in result.problems)


def test_shell_exit_codes():
    assert exit_code_of("uptime") == 0
    assert exit_code_of("systemctl is-active nginx") == 3
    assert exit_code_of("no-such-command") == 127


def test_steps_due_before_the_end_but_taken_after_it_are_cut_off():
    """A late driver (a loaded server) takes nothing scripted, agent's or operator's, at or
    after the end of the run, so the expectations read then hold still."""
    plan = next(p for p in plan_fleet(40, 100, weights={Kind.COMMANDS: 1}, seed=2, ramp=1,
                                      operators=1) if p.visits)
    agent = AgentRun(plan, stop_at=100, heartbeat_every=1000)
    op = OperatorRun(agent)
    t0 = plan.start
    assert agent.take(t0) is Step.HELLO
    agent.welcomed(t0, "sess_1", "tok", 30.0, 30.0, resumed=False)
    assert agent.take(t0) is Step.HEARTBEAT
    session = agent.session
    # a reported command and an operator visit are due before the end ...
    assert agent.next_step is Step.COMMAND and agent.due < 100 and op.due < 100
    # ... the driver gets to them at the end: they are not done, nor expected
    assert agent.take(100.0) is None and agent.next_step is Step.HEARTBEAT
    assert op.take(100.0) is None and op.step is None and op.skipped == 1
    assert (session.commands, session.operator_commands, session.clients) == ([], [], 0)
    # on time, a visit happens
    fresh = OperatorRun(agent)
    assert fresh.take(fresh.due) is OpStep.ATTACH and fresh.session is session


# -- over the wire ---------------------------------------------------------------------------


async def test_operators_over_rest_against_a_real_server(server, autojump_clock):
    duration = 240
    config = WireConfig(url=server.url, agent_token=AGENT_TOKEN, duration=duration,
                        api_key=API_KEY)
    plans = plan_fleet(24, duration, weights={k: 1 for k in Kind}, seed=4, ramp=5,
                       operators=0.7)
    fleet = WireFleet(config, plans)
    mismatches, problems, _ = await run_and_check(server, fleet)
    assert fleet.problems == [] and fleet.errors == 0
    assert (mismatches, problems) == (0, [])
    ops = [op for op in fleet.operators if op is not None]
    accepted = sum(op.commands for op in ops)
    assert sum(op.visits for op in ops) >= 5 and accepted >= 5
    assert sum(r.answered for r in fleet.runs) == accepted
    for s in fleet.sessions():
        history = {e.command_id: e for e in server.engine.history(
            WORKSPACE, s.session_id, limit=1000).data}
        for command_id, command, exit_code, email in s.operator_commands:
            entry = history[command_id]
            assert (entry.command, entry.exit_code, entry.user_email) == (
                command, exit_code, email)


async def test_no_api_key_no_operators(server, autojump_clock):
    config = WireConfig(url=server.url, agent_token=AGENT_TOKEN, duration=60)
    plans = plan_fleet(6, 60, weights={Kind.STEADY: 1}, seed=1, ramp=1, operators=1)
    fleet = WireFleet(config, plans)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        await fleet.ready.wait()
        fleet.finish()
    assert fleet.errors == 0 and all(op is None for op in fleet.operators)
    assert fleet.notes == ["operator visits to 6 machines skipped: no --api-key"]
    assert all(not s.operator_commands and not s.commands for s in fleet.sessions())


async def test_late_operators_stop_at_the_end_and_are_waited_for(server, autojump_clock):
    """A slow API (every operator step takes 8 s here) makes operators, and the agents whose
    tasks they run in, fall behind: nothing starts after the run's end, the run is not ready
    while a step is under way, and the expectations stay exact."""
    duration = 60
    config = WireConfig(url=server.url, agent_token=AGENT_TOKEN, duration=duration,
                        api_key=API_KEY, heartbeat_every=5)
    plans = plan_fleet(12, duration, weights={Kind.STEADY: 2, Kind.COMMANDS: 1}, seed=6,
                       ramp=2, operators=1)
    fleet = WireFleet(config, plans)
    operate = fleet._operate
    late_steps: list[float] = []

    async def slow_operate(nursery, i, op, step):
        await trio.sleep(8)
        late_steps.append(fleet.now())
        await operate(nursery, i, op, step)

    fleet._operate = slow_operate
    mismatches, problems, ready_at = await run_and_check(server, fleet)
    assert fleet.problems == [] and fleet.errors == 0
    assert (mismatches, problems) == (0, [])
    assert max(late_steps) > duration + config.settle  # a step was under way at the end ...
    assert ready_at >= max(late_steps)  # ... and the run waited for it
    ops = [op for op in fleet.operators if op is not None]
    assert sum(op.skipped for op in ops) > 0  # steps cut off by the end
    assert sum(op.commands for op in ops) == sum(r.answered for r in fleet.runs) > 0
