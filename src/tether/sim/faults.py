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
same instant; webhook receivers that fail now and then, always fail, or hang (simulated
in-process by :mod:`._receivers` behind the real webhooks service). The engine keeps its
state in a store (:mod:`._store`, in process): the store goes away for a while (an outage:
writes refused, agents kept), and the node crashes and is started again on it (every socket
dies with it; agents resume). After the run the invariants are checked (see
:func:`check_invariants` and :func:`check_deliveries`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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
    AgentLink,
    Engine,
    EngineConfig,
    ResumeRejected,
    StoreUnavailable,
    TetherError,
    WallClock,
)
from tether.engine.testing import RecordingTransport, heap_objects, snapshot
from tether.webhooks import WebhookConfig, Webhooks

from ._receivers import FAILING, FLAKY, HANGING, HEALTHY, Receiver, Receivers
from ._store import InProcessStore

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from tether.engine import Event

WORKSPACES = ("ws_a", "ws_b")
TERMINAL = ("session.disconnected", "session.error")
DRIVER_FAULTS = (
    "drop", "resume", "resume_stale", "resume_forged", "resume_other_machine",
    "duplicate_hello", "attach_in_grace", "command_in_grace", "terminate_races_resume",
    "goodbye", "background", "mass_drop", "store_outage", "node_restart",
)
#: Attempts refused by a receiver of each faulty kind (counted by the receivers).
RECEIVER_FAULTS = ("receiver_flaky", "receiver_failing", "receiver_hanging")
FAULTS = DRIVER_FAULTS + RECEIVER_FAULTS
#: The webhook endpoints of a run: (workspace, receiver kind, name). Every one takes "*".
ENDPOINTS = (
    ("ws_a", HEALTHY, "healthy-a"), ("ws_a", FLAKY, "flaky-a"),
    ("ws_a", FAILING, "failing-a"), ("ws_a", HANGING, "hanging-a"),
    ("ws_b", HEALTHY, "healthy-b"),
)
#: Simulated seconds the webhook queues get to drain after the run (then: a violation).
DRAIN_LIMIT = 24 * 3600.0
WEBHOOKS = WebhookConfig(
    timeout=10.0, retry_base=5.0, retries=3, max_consecutive_failures=20, allow_private=True,
    queue_max=10**7, log_max=10**7,  # nothing evicted: the check reads every delivery
)


class FakeTransport(RecordingTransport):
    """An in-process socket: records what the engine sends and whether it was closed."""

    __slots__ = ("dropped", "session_id")

    def __init__(self) -> None:
        super().__init__()
        self.dropped = False  # the agent's side went away (the engine was told)
        self.session_id = ""  # the session it carried, once welcomed


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
    #: Engine objects left in memory after retention (records, actors, links): 0 when idle.
    memory: dict[str, int] = field(default_factory=dict)
    #: Per endpoint name: events accepted (2xx), deliveries failed, attempts, disabled or not.
    webhooks: dict[str, dict[str, int]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    #: A digest of every session's life (machine, creation time, events and reasons), sorted:
    #: equal for equal seeds. Each session's own history is reproducible; the interleaving of
    #: different sessions' events in the global log is not (actors are tasks, and trio shuffles
    #: tasks ready at the same instant), so it is left out.
    digest: str = ""

    def count(self, fault: str, times: int = 1) -> None:
        self.faults[fault] = self.faults.get(fault, 0) + times


class Driver:
    """The one task: a heap of (due, sequence, action)."""

    def __init__(self, engine: Engine, seed: int, agents: int, report: FaultReport) -> None:
        self.engine = engine
        self.rng = random.Random(seed)
        self.report = report
        self.heap: list[tuple[float, int, Callable[[], Awaitable[None]]]] = []
        self.seq = itertools.count()
        #: Every transport a session was welcomed on: the check finds any left open.
        self.transports: list[FakeTransport] = []
        self.agents = [
            SimAgent(WORKSPACES[n % len(WORKSPACES)], f"m{n // len(WORKSPACES)}")
            for n in range(agents)
        ]

    def at(self, due: float, action: Callable[[], Awaitable[None]]) -> None:
        heapq.heappush(self.heap, (due, next(self.seq), action))

    def later(self, low: float, high: float, action: Callable[[], Awaitable[None]]) -> None:
        self.at(trio.current_time() + self.rng.uniform(low, high), action)

    def forget(self) -> None:
        """Let go of every link, socket and pending action (what the check may not count)."""
        self.heap.clear()
        self.transports.clear()
        for agent in self.agents:
            agent.link = agent.transport = None

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
        except (ResumeRejected, StoreUnavailable):
            transport.dropped = True  # told to go away: the agent closes its socket
            return False
        if agent.token is not None:
            agent.stale.append(agent.token)
        agent.link, agent.transport = link, transport
        transport.session_id = link.session_id
        self.transports.append(transport)
        assert link.welcome is not None
        agent.token = link.welcome.resume_token
        return True

    def _alive(self, agent: SimAgent) -> bool:
        return (agent.link is not None and agent.link.active and agent.transport is not None
                and agent.transport.closed is None)

    def drop(self, agent: SimAgent) -> None:
        if agent.transport is not None:
            agent.transport.dropped = True
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
                await self._quiet(agent.link.report_command("uptime", 0))
        elif roll < 0.55:
            report.count("drop")
            self.drop(agent)
            # while it is in grace: a client tries to attach, an operator to run a command
            session_id = self._session_of(agent)
            if session_id is not None:
                self.later(0.1, 5, functools.partial(self.in_grace, agent, session_id))
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


Feed = dict[str, dict[str, list["Event"]]]  # workspace -> session id -> its events, in order


def check_invariants(engine: Engine, report: FaultReport,
                     transports: Sequence[FakeTransport] = ()) -> Feed:
    """One active session per machine; final states absorbing; exactly one terminal event per
    ended session (none for a live one); per-session sequences complete and ordered in the feed;
    no actor, link, machine entry or open socket left behind by ended sessions, and at most one
    open socket per live one. Returns the feed."""
    bad = report.violations.append
    held = snapshot(engine)
    records = held.sessions
    report.sessions = len(records)
    open_sockets: dict[str, int] = {}
    for transport in transports:
        if transport.dropped or transport.closed is not None:
            continue
        record = records.get(transport.session_id)
        if record is None or record.status.final:
            bad(f"{transport.session_id} ended but its socket was never closed")
        else:
            open_sockets[transport.session_id] = open_sockets.get(transport.session_id, 0) + 1
    for session_id, count in open_sockets.items():
        if count > 1:
            bad(f"{session_id}: {count} open sockets")
    live: dict[tuple[str, str], list[str]] = {}
    for rec in records.values():
        if not rec.status.final:
            live.setdefault((rec.workspace_id, rec.machine_id), []).append(rec.session_id)
        elif rec.has_actor or rec.has_link or rec.has_resume_secret:
            bad(f"{rec.session_id} ended but kept its actor, link or resume secret")
    for key, ids in live.items():
        if len(ids) > 1:
            bad(f"machine {key} has {len(ids)} active sessions: {ids}")
        if held.active.get(key) != ids[0]:
            bad(f"machine {key}: the active map does not point at its live session")
    if len(held.active) != sum(len(ids) for ids in live.values()):
        bad("the active map holds ended sessions")
    lives: list[str] = []
    feed: Feed = {}
    for workspace in WORKSPACES:
        by_session: dict[str, list[Any]] = feed.setdefault(workspace, {})
        for event in _all_events(engine, workspace):
            by_session.setdefault(event.session_id, []).append(event)
            report.events += 1
        for session_id, events in by_session.items():
            sequences = [e.sequence for e in events]
            if sequences != list(range(1, len(events) + 1)):
                bad(f"{session_id}: event sequences {sequences[:10]}... not complete/ordered")
            terminal = [i for i, e in enumerate(events) if e.type in TERMINAL]
            record = records.get(session_id)
            final = record is not None and record.status.final
            if final and len(terminal) != 1:
                bad(f"{session_id}: {len(terminal)} terminal events")
            if not final and terminal:
                bad(f"{session_id}: a terminal event but status "
                    f"{record and record.status.value}")
            if terminal and terminal[0] != len(events) - 1:
                bad(f"{session_id}: events after its terminal event (final not absorbing)")
            created = record.created_at if record is not None else -1.0
            lives.append(f"{workspace} {events[0].data.machine_id} {created:.6f} "
                         + " ".join(f"{e.type}:{e.data.reason}" for e in events))
    digest = hashlib.sha256("\n".join(sorted(lives)).encode())
    report.digest = digest.hexdigest()[:16]
    if held.actor_tasks != len(held.active):
        bad(f"{held.actor_tasks} actor tasks for {len(held.active)} live sessions")
    return feed


def check_memory(engine: Engine, report: FaultReport) -> None:
    """Past their retention, ended sessions are gone: the engine keeps records of live
    sessions only, and no record, actor or link of an ended one is left anywhere in the heap
    (counted by the garbage collector, after a full collection)."""
    bad = report.violations.append
    records = snapshot(engine).sessions
    live = sum(1 for rec in records.values() if not rec.status.final)
    if len(records) != live:
        bad(f"{len(records) - live} ended sessions kept past their retention")
    report.memory = heap_objects()
    for kind, count in report.memory.items():
        if count > live:
            bad(f"{count} {kind} objects in memory for {live} live sessions")


async def _deliveries(hooks: Webhooks, workspace: str, webhook_id: str) -> list[Any]:
    """Every delivery in the endpoint's log, through the public paginated reader."""
    found: list[Any] = []
    before = None
    while True:
        page = await hooks.deliveries(workspace, webhook_id, 100, before)
        found += page.data
        if not page.meta.has_more:
            return found
        before = page.meta.next_before


async def check_deliveries(hooks: Webhooks, hook_ids: dict[str, str], receivers: Receivers,
                     feed: Feed, report: FaultReport) -> None:
    """Webhooks lose nothing and keep each session's order.

    A healthy receiver got every event of its workspace's feed exactly once, each session's in
    sequence order. A flaky one got each session's events in order, and every event it did not
    get is in its deliveries log as failed (redeliverable). A failing or hanging one was
    disabled with a reason, and whatever it was sent is in its log as failed. Nothing is left
    queued, and each event appears at most once in an endpoint's log.
    """
    bad = report.violations.append
    if hooks.events_missed:
        bad(f"the webhook dispatcher missed {hooks.events_missed} events")
    if hooks.undelivered:
        bad(f"{hooks.undelivered} webhook deliveries still queued after the drain")
    for workspace, kind, name in ENDPOINTS:
        webhook_id = hook_ids[name]
        receiver: Receiver = receivers.named[name]
        view = await hooks.get(workspace, webhook_id)
        log = await _deliveries(hooks, workspace, webhook_id)
        sessions = feed[workspace]
        feed_ids = {e.id for events in sessions.values() for e in events}
        logged: dict[str, Any] = {}
        for d in log:
            if d.event_id in logged:
                bad(f"{name}: event {d.event_id} is in the deliveries log twice")
            logged[d.event_id] = d
            if d.event_id not in feed_ids:
                bad(f"{name}: delivered {d.event_id}, which is not in its workspace's feed")
            if d.state == "pending":
                bad(f"{name}: delivery {d.id} still pending")
        failed = {i for i, d in logged.items() if d.state == "failed"}
        accepted = [a[0] for a in receiver.accepted]
        if len(set(accepted)) != len(accepted):
            bad(f"{name}: accepted an event twice")
        got: dict[str, list[int]] = {}
        for _, session_id, sequence in receiver.accepted:
            got.setdefault(session_id, []).append(sequence)
        report.webhooks[name] = {
            "accepted": len(accepted), "failed": len(failed), "attempts": receiver.attempts,
            "refused": receiver.refused, "disabled": int(not view.enabled),
        }
        if kind == HEALTHY:
            if not view.enabled:
                bad(f"{name}: a healthy endpoint was disabled: {view.disabled_reason}")
            if failed:
                bad(f"{name}: {len(failed)} deliveries to a healthy receiver failed")
            for session_id, events in sessions.items():
                if got.get(session_id, []) != [e.sequence for e in events]:
                    bad(f"{name}: {session_id} arrived as {got.get(session_id, [])[:10]}, "
                        f"the feed has {[e.sequence for e in events][:10]}")
            if set(got) - set(sessions):
                bad(f"{name}: got events of sessions not in its workspace's feed")
        elif kind == FLAKY:
            if not view.enabled:
                bad(f"{name}: disabled: {view.disabled_reason}")
            if failed & set(accepted):
                bad(f"{name}: an accepted event is also recorded as failed")
            if set(accepted) | failed != feed_ids:
                bad(f"{name}: {len(feed_ids - set(accepted) - failed)} events neither "
                    f"accepted nor recorded as failed")
            for session_id, sequences in got.items():
                if sequences != sorted(sequences):
                    bad(f"{name}: {session_id} arrived out of order: {sequences[:10]}")
        else:
            if view.enabled or not view.disabled_reason:
                bad(f"{name}: a {kind} endpoint is not disabled with a reason")
            if accepted or len(failed) != len(logged):
                bad(f"{name}: a {kind} receiver has succeeded deliveries")
            # attempted: the receiver's answer; not attempted, or abandoned in flight when the
            # endpoint was disabled: "endpoint disabled before delivery"
            expected = "timeout" if kind == HANGING else "HTTP 503"
            unexplained = [d for d in log if not d.last_error or (
                expected not in d.last_error and "endpoint disabled" not in d.last_error)]
            if unexplained:
                bad(f"{name}: failed deliveries that do not say why: {unexplained[:2]}")
        if kind != HEALTHY:
            report.count(f"receiver_{kind}", receiver.refused)


class Node:
    """The engine and its webhooks, on the run's store; crashed and started again mid-run."""

    def __init__(self, config: EngineConfig, store: InProcessStore, receivers: Receivers,
                 clock: WallClock) -> None:
        self.config = config
        self.clock = clock  # one wall clock for every run: times in the store stay true
        self.store = store
        self.receivers = receivers
        self.engine: Engine
        self.hooks: Webhooks
        self._scope = trio.CancelScope()
        self._stop = trio.Event()
        self._stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        try:
            with self._scope:
                store = self.store
                async with Engine(self.config, store=store, clock=self.clock) as engine, \
                        trio.open_nursery() as nursery:
                    hooks = Webhooks(engine, WEBHOOKS, client_factory=self.receivers.client,
                                     store=store)
                    await nursery.start(hooks.run)
                    self.engine, self.hooks = engine, hooks
                    task_status.started()
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()  # the webhooks service
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """A clean exit (what is live is handed over, as on SIGTERM)."""
        self._stop.set()
        await self._stopped.wait()

    async def crash(self) -> None:
        """Gone at once: nothing is flushed or handed over; its sockets die with it."""
        self._scope.cancel()
        await self._stopped.wait()


async def _simulate(seed: int, agents: int, report: FaultReport, duration: float) -> None:
    config = EngineConfig(heartbeat_interval=10, heartbeat_timeout=45, grace_period=30,
                          pending_timeout=120, background_timeout=60, event_log_max=10**7)
    store = InProcessStore(config.event_log_max)
    receivers = Receivers(seed, WEBHOOKS.timeout)
    clock = WallClock()
    async with trio.open_nursery() as nursery:
        node = Node(config, store, receivers, clock)
        await nursery.start(node.run)
        hook_ids: dict[str, str] = {}
        for workspace, kind, name in ENDPOINTS:
            receiver = receivers.add(kind, name)
            hook_ids[name] = (await node.hooks.create(workspace, receiver.url, ["*"])).id
        driver = Driver(node.engine, seed, agents, report)
        for agent in driver.agents:
            driver.schedule_agent(agent, driver.rng.uniform(0, 10))
        # every agent drops in the same instant, twice, mid-run
        for when in (duration * 0.4, duration * 0.7):
            driver.at(when, driver.mass_drop)

        async def outage() -> None:  # the store is away for 20 s: writes refused, agents kept
            await trio.sleep(duration * 0.25)
            report.count("store_outage")
            store.down = True
            await trio.sleep(20.0)
            store.down = False

        async def restart() -> None:  # the node crashes and a new one starts on the store
            report.count("node_restart")
            nonlocal node
            await node.crash()
            for agent in driver.agents:  # every socket died with the node
                if agent.transport is not None:
                    agent.transport.dropped = True
                agent.link = None
            node = Node(config, store, receivers, clock)
            await nursery.start(node.run)
            driver.engine = node.engine

        nursery.start_soon(outage)
        driver.at(duration * 0.55, restart)
        await driver.run(until=duration)
        engine, hooks = node.engine, node.hooks
        # settle: every grace period and timeout runs out, with nobody acting
        await trio.sleep(config.pending_timeout + config.grace_period + 1)
        # ... and every webhook delivery is settled (retries run out within ~80 s per event)
        with trio.move_on_after(DRAIN_LIMIT):
            while hooks.undelivered:
                await trio.sleep(10)
        feed = check_invariants(engine, report, driver.transports)
        await check_deliveries(hooks, hook_ids, receivers, feed, report)
        del feed
        # ... and once their retention has passed, nothing of an ended session is in memory
        driver.forget()
        await trio.sleep(config.retention + 1)
        check_memory(engine, report)
        engine.shutdown()
        await node.stop()
    if engine.live_sessions:
        report.violations.append(f"{engine.live_sessions} sessions live after shutdown")
    del engine, hooks, node


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
        print("  webhooks: " + "; ".join(
            f"{name} accepted={row['accepted']} failed={row['failed']} "
            f"attempts={row['attempts']}" + (" disabled" if row["disabled"] else "")
            for name, row in r.webhooks.items()), flush=True)
        for violation in r.violations[:20]:
            print(f"  VIOLATION (reproduce: --first {seed} --seeds 1 --agents {args.agents} "
                  f"--duration {args.duration:g}): {violation}")
        failed += bool(r.violations)
    print("faults injected: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))
    print(f"seeds={args.seeds} failed={failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
