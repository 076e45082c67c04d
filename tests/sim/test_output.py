"""Session output in the simulator: what agents write (seeded), what they keep and resend after a
drop, and attach-stream clients checked byte for byte against it.

In-process runs use ``MockClock(autojump_threshold=0)`` and one driving task (reproducible from
the seed); the wire runs a real server on 127.0.0.1 (see ``conftest.py``), checking only
order-independent invariants: each client's bytes against the agent's.
"""

from __future__ import annotations

import trio

from tether.engine import Engine, EngineConfig
from tether.sim import (
    SCENARIOS,
    AgentRun,
    InProcessFleet,
    Kind,
    Step,
    WireConfig,
    WireFleet,
    plan_fleet,
)
from tether.sim._output import OUTPUT_KEEP, OutputLog, command_output
from tether.sim._stream import StreamClient

from .conftest import AGENT_TOKEN, API_KEY, WORKSPACE, engine_clock, run_and_check


def test_output_log_keeps_its_tail_and_resends_from_an_offset():
    log = OutputLog(keep=100)
    for k in range(30):
        log.write(f"line {k:02d} ✓\n")  # 12 bytes each, one of them a 3-byte character
    assert log.written == 30 * 12
    assert log.written - log.kept_from <= 100 and log.kept_from % 12 == 0
    assert log.range(log.written - 12, log.written) == "line 29 ✓\n".encode()
    assert log.range(0, 12) is None  # no longer kept
    pieces = log.resend_from(log.written - 24)
    assert pieces is not None and [p.data for p in pieces] == ["line 28 ✓\n", "line 29 ✓\n"]
    assert log.resend_from(log.written + 1) is None  # the server cannot have more
    assert log.resend_from(0) is None and log.broken  # older than kept: cannot be filled
    assert log.write("more") is None
    assert OUTPUT_KEEP == 1024 * 1024


def test_command_output_comes_from_the_shell_model():
    assert command_output("cat /etc/hostname", 0) == [("prod-server\n", "stdout")]
    assert command_output("nosuchcmd", 127) == [("bash: nosuchcmd: command not found\n",
                                                 "stderr")]
    assert command_output("ls /nonexistent", 2)[-1][1] == "stderr"


def test_stream_client_catches_a_changed_byte_and_an_unexplained_gap():
    log = OutputLog()
    for k in range(10):
        log.write(f"{k} µs\n")
    data = log.range(0, log.written)
    assert data is not None
    good = StreamClient(object(), log, "observer", "o@x")  # type: ignore[arg-type]
    good.attached("cli_1", 0)
    good.output(0, data[:20])
    good.output(20, data[20:])
    assert good.verdict() == [] and good.bytes == len(data)
    bad = StreamClient(object(), log, "observer", "o@x")  # type: ignore[arg-type]
    bad.attached("cli_2", 0)
    bad.output(0, data[:5] + b"X" + data[6:])
    assert bad.verdict() and "sha256" in bad.verdict()[0]
    gapped = StreamClient(object(), log, "observer", "o@x")  # type: ignore[arg-type]
    gapped.attached("cli_3", 0)
    gapped.gap(0, 10)  # 10 bytes of a 1 MiB retention cannot have been dropped
    gapped.output(10, data[10:])
    assert len(gapped.verdict()) == 1 and "gap 0..10" in gapped.verdict()[0]


def test_a_busy_agent_resends_what_a_drop_lost():
    plan = plan_fleet(1, 600, weights={Kind.FLAKY: 1}, seed=2, ramp=0, busy=1.0)[0]
    agent = AgentRun(plan, stop_at=600, heartbeat_every=1000)
    agent.take(0.0)
    agent.welcomed(0.0, "sess_1", "rt_1", 30.0, 30.0, resumed=False)
    sent = 0
    drop = plan.script[0].at
    while agent.due < drop:
        step = agent.take(agent.due)
        sent = max([sent, *(p.end for p in agent.outbox)])
        agent.outbox.clear()
        assert step in (Step.HEARTBEAT, Step.OUTPUT)
    assert agent.take(drop) is Step.DROP and agent.outbox == []
    log = agent.output
    assert log is not None and log.written > sent > 0  # the last write never went out
    lost_up_to = log.written
    back = agent.due
    assert agent.take(back) is Step.RESUME
    agent.welcomed(back, "sess_1", "rt_2", 30.0, 30.0, resumed=True, output_offset=sent)
    assert agent.output_trouble is None
    # what the drop lost is sent again, then what the machine wrote while the agent was away
    assert agent.output_resent == lost_up_to - sent
    assert agent.outbox[0].offset == sent and agent.outbox[-1].end == log.written > lost_up_to
    assert all(a.end == b.offset for a, b in zip(agent.outbox, agent.outbox[1:], strict=False))


async def run_fleet(plans, duration, **config):
    async with Engine(EngineConfig(**config), clock=engine_clock()) as engine:
        fleet = InProcessFleet(engine, WORKSPACE, plans, duration=duration)
        result = await fleet.run()
        engine.shutdown()
    return fleet, result


async def test_in_process_streams_match_what_agents_wrote(autojump_clock):
    weights = {Kind.STEADY: 1, Kind.FLAKY: 2, Kind.COMMANDS: 1, Kind.CYCLER: 1}
    plans = plan_fleet(60, 600, weights=weights, seed=8, ramp=10, operators=0.5, busy=0.6,
                       observers=0.6)
    fleet, result = await run_fleet(plans, 600)
    assert result.problems == []
    assert (result.errors, result.mismatches, result.output_mismatches) == (0, 0, 0)
    assert result.output_bytes > 60 * 0.6 * 600 * 40
    assert result.output_resent > 0  # flaky busy agents lost a write with the drop
    assert result.stream_clients >= 30 and result.stream_reattaches >= 20
    assert result.stream_bytes > 0 and result.stream_gaps == 0
    # a flaky busy agent's session: its stream's bytes are its output, whole
    flaky = [r for r in fleet.runs if r.plan.kind is Kind.FLAKY and r.plan.busy]
    assert flaky and all(r.output is not None and r.output.resent > 0 for r in flaky
                         if r.sessions[0].status == "CONNECTED")


async def test_in_process_output_reproducible_from_seed(autojump_clock):
    """One driving task: the same seed gives the same steps (streams' included) and bytes."""
    results = []
    for _ in range(2):
        trace: list = []
        plans = plan_fleet(30, 300, seed=12, ramp=10, operators=0.5, busy=0.5, observers=0.5)
        async with Engine(EngineConfig(), clock=engine_clock()) as engine:
            fleet = InProcessFleet(engine, WORKSPACE, plans, duration=300, trace=trace)
            result = await fleet.run()
            engine.shutdown()
        results.append((trace, result.output_bytes, result.stream_bytes,
                        result.stream_reattaches))
    assert results[0] == results[1]
    assert any(step == "obs_reattach" for _, _, step in results[0][0])


async def test_in_process_gaps_are_told_and_honest(autojump_clock):
    """A buffer of 4 KiB drops what a busy agent wrote minutes ago: a client that comes back
    after it gets a gap, legitimately, and its bytes still match from after it."""
    plans = plan_fleet(20, 900, weights=SCENARIOS["steady"], seed=5, ramp=5, busy=1.0,
                       observers=1.0)
    _, result = await run_fleet(plans, 900, output_buffer_bytes=4096)
    assert result.problems == []
    assert (result.errors, result.output_mismatches) == (0, 0)
    assert result.stream_gaps >= 10


async def test_in_process_check_catches_a_corrupted_byte(autojump_clock):
    plans = plan_fleet(6, 300, weights=SCENARIOS["steady"], seed=3, ramp=1, busy=1.0,
                       observers=1.0)
    async with Engine(EngineConfig(), clock=engine_clock()) as engine:
        fleet = InProcessFleet(engine, WORKSPACE, plans, duration=300)
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run() -> None:
                fleet.result = await fleet.run()
                done.set()

            nursery.start_soon(run)
            await trio.sleep(5)
            # a byte the agent never wrote reaches the server where its next write goes: the
            # engine skips the agent's own first byte there as a resend
            run0 = fleet.runs[0]
            link = fleet.links[0]
            assert run0.output is not None and link is not None
            link.output(run0.output.written, "#")
            await done.wait()
        engine.shutdown()
    result = fleet.result
    assert result.output_mismatches >= 1
    assert any("output mismatch" in p and "sha256" in p for p in result.problems)


async def test_wire_drop_resend_and_reattach(server, autojump_clock):
    """Over real sockets: busy agents dropping mid-output resume and resend from the
    welcome's output_offset; operators and observers drop their streams and re-attach from
    their offsets; every client's bytes are the agent's."""
    weights = {Kind.FLAKY: 3, Kind.STEADY: 1, Kind.COMMANDS: 1}
    # every agent starts at 0: their writes fall on the same instants, so the clock makes few
    # jumps (each one waits for 30 ms of quiet in Redis mode)
    plans = plan_fleet(12, 180, weights=weights, seed=4, ramp=0, operators=0.5, busy=0.75,
                       observers=0.75)
    config = WireConfig(url=server.url, agent_token=AGENT_TOKEN, duration=180, api_key=API_KEY)
    fleet = WireFleet(config, plans)
    mismatches, problems, _ = await run_and_check(server, fleet)
    result = fleet.output_result()
    assert fleet.problems == [] and fleet.errors == 0
    assert (mismatches, problems) == (0, [])
    assert result["output_mismatches"] == 0
    assert result["output_resent"] > 0
    assert result["stream_clients"] >= 6 and result["stream_reattaches"] >= 4
    assert result["stream_bytes"] > 0
