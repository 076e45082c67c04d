"""Deterministic fault simulation: thousands of agents against the in-process engine.

    python -m tether.sim.faults --seeds 5 --agents 2000         # a longer run, any size
    run_faults(seed=1, agents=1000)                             # -> FaultReport

Every agent is driven from ONE task: a heap of due actions ordered by (time, sequence), run
under ``trio.testing.MockClock(autojump_threshold=0)``. Trio shuffles ready tasks, so a driver
with a task per agent could give a different event log for the same seed; here the driver
decides every order, and a run is reproducible from its seed (printed on failure).

Faults injected: sockets dropped mid-conversation; resumes with stale, forged and another
machine's tokens; duplicate hellos for one machine; clients attaching and commands sent during
grace periods; terminations racing reconnects in the same instant; every agent dropping in the
same instant. After the run the invariants are checked (see :func:`check_invariants`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import itertools
import random
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from tether.engine import (
    Engine,
    EngineConfig,
    ResumeRejected,
    RunCommand,
    TetherError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tether.engine import AgentLink

WORKSPACES = ("ws_a", "ws_b")
TERMINAL = ("session.disconnected", "session.error")
FAULTS = (
    "drop", "resume", "resume_stale", "resume_forged", "resume_other_machine",
    "duplicate_hello", "attach_in_grace", "command_in_grace", "terminate_races_resume",
    "goodbye", "background", "mass_drop",
)


class FakeTransport:
    """An in-process socket: records what the engine sends and whether it was closed."""

    __slots__ = ("closed", "commands")

    def __init__(self) -> None:
        self.closed: str | None = None
        self.commands: list[RunCommand] = []

    def send_run_command(self, command: RunCommand) -> None:
        self.commands.append(command)

    def close(self, reason: str) -> None:
        self.closed = reason


@dataclass
class SimAgent:
    workspace: str
    machine: str
    link: AgentLink | None = None
    transport: FakeTransport | None = None
    token: str | None = None
    stale: list[str] = field(default_factory=list)  # tokens it had before


@dataclass
class FaultReport:
    seed: int
    agents: int
    actions: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    events: int = 0
    violations: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    #: A digest of every session's life (machine, creation time, events and reasons), sorted:
    #: equal for equal seeds. Each session's own history is reproducible; the interleaving of
    #: different sessions' events in the global log is not (actors are tasks, and trio shuffles
    #: tasks ready at the same instant), so it is left out.
    digest: str = ""

    def count(self, fault: str) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + 1


class Driver:
    """The one task: a heap of (due, sequence, action)."""

    def __init__(self, engine: Engine, seed: int, agents: int, report: FaultReport) -> None:
        self.engine = engine
        self.rng = random.Random(seed)
        self.report = report
        self.heap: list[tuple[float, int, Callable[[], Awaitable[None]]]] = []
        self.seq = itertools.count()
        self.agents = [
            SimAgent(WORKSPACES[n % len(WORKSPACES)], f"m{n // len(WORKSPACES)}")
            for n in range(agents)
        ]

    def at(self, due: float, action: Callable[[], Awaitable[None]]) -> None:
        heapq.heappush(self.heap, (due, next(self.seq), action))

    def later(self, low: float, high: float, action: Callable[[], Awaitable[None]]) -> None:
        self.at(trio.current_time() + self.rng.uniform(low, high), action)

    async def run(self, until: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= until:
            due, _, action = heapq.heappop(heap)
            if due > trio.current_time():
                await trio.sleep_until(due)
            self.report.actions += 1
            await action()

    # -- what agents do ------------------------------------------------------------------------

    async def hello(self, agent: SimAgent, resume_token: str | None = None) -> bool:
        transport = FakeTransport()
        try:
            link = await self.engine.agent_hello(
                agent.workspace, transport, machine_id=agent.machine,
                machine_hostname=f"host-{agent.machine}", resume_token=resume_token,
            )
        except ResumeRejected:
            return False
        if agent.token is not None:
            agent.stale.append(agent.token)
        agent.link, agent.transport = link, transport
        assert link.welcome is not None
        agent.token = link.welcome.resume_token
        return True

    def _alive(self, agent: SimAgent) -> bool:
        return (agent.link is not None and agent.link.active and agent.transport is not None
                and agent.transport.closed is None)

    def drop(self, agent: SimAgent) -> None:
        if agent.link is not None:
            agent.link.transport_lost()
            agent.link = None

    def schedule_agent(self, agent: SimAgent, first: float) -> None:
        self.at(first, lambda: self.act(agent))

    async def act(self, agent: SimAgent) -> None:
        """One step of one agent's life, then its next step is scheduled."""
        rng, report = self.rng, self.report
        roll = rng.random()
        if not self._alive(agent):
            # Disconnected: usually resume within the grace period, sometimes start afresh.
            if agent.token and roll < 0.6:
                report.count("resume")
                await self.hello(agent, agent.token)
            else:
                await self.hello(agent)
        elif roll < 0.45:
            assert agent.link is not None
            agent.link.heartbeat()
            if rng.random() < 0.2:
                await agent.link.report_command("uptime", 0)
        elif roll < 0.55:
            report.count("drop")
            self.drop(agent)
            # while it is in grace: a client tries to attach, an operator to run a command
            session_id = self._session_of(agent)
            if session_id is not None:
                self.later(0.1, 5, lambda: self.in_grace(agent, session_id))
        elif roll < 0.60:
            report.count("resume_stale")
            if agent.stale and await self._hello_other(agent, rng.choice(agent.stale),
                                                       agent.machine):
                report.violations.append(f"{agent.machine}: a stale resume token was accepted")
        elif roll < 0.64:
            report.count("resume_forged")
            session_id = self._session_of(agent) or "sess_x"
            forged = f"rt_{session_id}.{rng.getrandbits(192):048x}"[:len(agent.token or "")]
            if await self._hello_other(agent, forged, agent.machine):
                report.violations.append(f"a forged token resumed {session_id}")
        elif roll < 0.68:
            report.count("resume_other_machine")
            other = rng.choice(self.agents)
            if other is not agent and other.token and other.machine != agent.machine and (
                    await self._hello_other(agent, other.token, agent.machine)):
                report.violations.append(f"{agent.machine} resumed {other.machine}'s session")
        elif roll < 0.72:
            report.count("duplicate_hello")
            await self.hello(agent)  # the old session ends (replaced)
        elif roll < 0.76:
            report.count("terminate_races_resume")
            session_id = self._session_of(agent)
            self.drop(agent)
            now = trio.current_time()
            if session_id is not None:
                self.at(now, lambda: self.terminate(agent.workspace, session_id))
            self.at(now, lambda: self._quiet(self.hello(agent, agent.token)))
        elif roll < 0.79:
            report.count("goodbye")
            assert agent.link is not None
            await self._quiet(agent.link.goodbye("done"))
            agent.token = None
        elif roll < 0.82:
            report.count("background")
            assert agent.link is not None
            await self._quiet(agent.link.background())
            self.later(1, 20, lambda: self._quiet(self._foreground(agent)))
        else:
            await self.operator(agent)
        self.later(1, 40, lambda: self.act(agent))

    async def _foreground(self, agent: SimAgent) -> None:
        if agent.link is not None:
            await agent.link.foreground()

    async def _hello_other(self, agent: SimAgent, token: str, machine: str) -> bool:
        """A hello with someone else's token, on a throwaway transport: must be refused."""
        try:
            await self.engine.agent_hello(agent.workspace, FakeTransport(), machine_id=machine,
                                          machine_hostname="h", resume_token=token)
        except (ResumeRejected, TetherError):
            return False
        return True

    def _session_of(self, agent: SimAgent) -> str | None:
        return agent.link.session_id if agent.link is not None else (
            agent.token.removeprefix("rt_").partition(".")[0] if agent.token else None)

    async def in_grace(self, agent: SimAgent, session_id: str) -> None:
        engine = self.engine
        self.report.count("attach_in_grace")
        await self._quiet(engine.attach_client(agent.workspace, session_id, "a@b.c", "operator"))
        self.report.count("command_in_grace")
        await self._quiet(engine.run_command(agent.workspace, session_id, "cli_x", "ls"))

    async def terminate(self, workspace: str, session_id: str) -> None:
        await self._quiet(self.engine.terminate(workspace, session_id))

    async def operator(self, agent: SimAgent) -> None:
        assert agent.link is not None
        session_id = agent.link.session_id
        try:
            client = await self.engine.attach_client(agent.workspace, session_id, "op@x.y",
                                                     "operator")
            view = await self.engine.run_command(agent.workspace, session_id,
                                                 client.client_id, "ls")
            if agent.link is not None and agent.link.active:
                await agent.link.command_result(view.command_id, self.rng.choice((0, 1)))
            if self.rng.random() < 0.5:
                await self.engine.detach_client(agent.workspace, session_id, client.client_id)
        except TetherError:
            pass  # the session moved on meanwhile: a legitimate refusal

    async def mass_drop(self) -> None:
        """Every agent's socket drops in the same instant."""
        self.report.count("mass_drop")
        for agent in self.agents:
            self.drop(agent)

    @staticmethod
    async def _quiet(call: Awaitable[Any]) -> None:
        # refused (not active, not found, rejected): the engine's documented answers
        with contextlib.suppress(TetherError):
            await call


# -- invariants --------------------------------------------------------------------------------


def _all_events(engine: Engine, workspace: str) -> list[Any]:
    events: list[Any] = []
    after = None
    while True:
        page = engine.events_after(workspace, after, 1000)
        if not page:
            return events
        events += page
        after = page[-1].id


def check_invariants(engine: Engine, report: FaultReport) -> None:
    """One active session per machine; final states absorbing; exactly one terminal event per
    ended session (none for a live one); per-session sequences complete and ordered in the feed;
    no actor, link or machine entry left behind by ended sessions."""
    bad = report.violations.append
    records = engine._records
    report.sessions = len(records)
    live: dict[tuple[str, str], list[str]] = {}
    for rec in records.values():
        if not rec.status.final:
            live.setdefault((rec.workspace_id, rec.machine_id), []).append(rec.session_id)
        elif rec.actor is not None or rec.link is not None or rec.resume_secret is not None:
            bad(f"{rec.session_id} ended but kept its actor, link or resume secret")
    for key, ids in live.items():
        if len(ids) > 1:
            bad(f"machine {key} has {len(ids)} active sessions: {ids}")
        if engine._active.get(key) is None or engine._active[key].session_id != ids[0]:
            bad(f"machine {key}: the active map does not point at its live session")
    if len(engine._active) != sum(len(ids) for ids in live.values()):
        bad("the active map holds ended sessions")
    lives: list[str] = []
    for workspace in WORKSPACES:
        by_session: dict[str, list[Any]] = {}
        for event in _all_events(engine, workspace):
            by_session.setdefault(event.session_id, []).append(event)
            report.events += 1
        for session_id, events in by_session.items():
            sequences = [e.sequence for e in events]
            if sequences != list(range(1, len(events) + 1)):
                bad(f"{session_id}: event sequences {sequences[:10]}... not complete/ordered")
            terminal = [i for i, e in enumerate(events) if e.type in TERMINAL]
            rec = records.get(session_id)
            final = rec is not None and rec.status.final
            if final and len(terminal) != 1:
                bad(f"{session_id}: {len(terminal)} terminal events")
            if not final and terminal:
                bad(f"{session_id}: a terminal event but status {rec and rec.status.value}")
            if terminal and terminal[0] != len(events) - 1:
                bad(f"{session_id}: events after its terminal event (final not absorbing)")
            created = rec.created_at if rec is not None else -1.0
            lives.append(f"{workspace} {events[0].data.machine_id} {created:.6f} "
                         + " ".join(f"{e.type}:{e.data.reason}" for e in events))
    digest = hashlib.sha256("\n".join(sorted(lives)).encode())
    report.digest = digest.hexdigest()[:16]
    tasks = len(engine._nursery.child_tasks) - 1 if engine._nursery else 0  # minus services
    if tasks != len(engine._active):
        bad(f"{tasks} actor tasks for {len(engine._active)} live sessions")


async def _simulate(seed: int, agents: int, report: FaultReport, duration: float) -> None:
    config = EngineConfig(heartbeat_interval=10, heartbeat_timeout=45, grace_period=30,
                          pending_timeout=120, background_timeout=60, event_log_max=10**7)
    async with Engine(config) as engine:
        driver = Driver(engine, seed, agents, report)
        for agent in driver.agents:
            driver.schedule_agent(agent, driver.rng.uniform(0, 10))
        # every agent drops in the same instant, twice, mid-run
        for when in (duration * 0.4, duration * 0.7):
            driver.at(when, driver.mass_drop)
        await driver.run(until=duration)
        # settle: every grace period and timeout runs out, with nobody acting
        await trio.sleep(config.pending_timeout + config.grace_period + 1)
        check_invariants(engine, report)
        engine.shutdown()
    if engine.live_sessions:
        report.violations.append(f"{engine.live_sessions} sessions live after shutdown")


def run_faults(seed: int, agents: int, duration: float = 600.0) -> FaultReport:
    """One reproducible run (``trio.run`` under a fresh MockClock)."""
    report = FaultReport(seed=seed, agents=agents)
    started = time.perf_counter()
    trio.run(_simulate, seed, agents, report, duration,
             clock=trio.testing.MockClock(autojump_threshold=0))
    report.wall_seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.sim.faults",
                                     description="Deterministic fault simulation")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (from --first)")
    parser.add_argument("--first", type=int, default=1, help="the first seed")
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=600.0,
                        help="simulated seconds of faults per seed")
    args = parser.parse_args(argv)
    failed = 0
    totals: dict[str, int] = {}
    for seed in range(args.first, args.first + args.seeds):
        r = run_faults(seed, args.agents, args.duration)
        for k, v in r.faults.items():
            totals[k] = totals.get(k, 0) + v
        print(f"seed={seed} agents={r.agents} actions={r.actions} sessions={r.sessions} "
              f"events={r.events} faults={sum(r.faults.values())} "
              f"violations={len(r.violations)} ({r.wall_seconds:.1f} s)", flush=True)
        for v in r.violations[:20]:
            print(f"  VIOLATION (reproduce: --first {seed} --seeds 1 --agents {args.agents}): "
                  f"{v}")
        failed += bool(r.violations)
    print("faults injected: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    print(f"seeds={args.seeds} failed={failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
