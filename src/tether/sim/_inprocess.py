"""The in-process driver: simulated agents talking to an :class:`~tether.engine.Engine` directly.

Every agent, and every operator visiting one (``engine.attach_client`` / ``run_command`` /
``detach_client``), is driven from ONE task with a heap of due steps, so under
``trio.testing.MockClock`` a run is reproducible from its seed: trio shuffles the order of ready
tasks, but there is only one task deciding what agents and operators do and in which order. The
engine's actors run while this task awaits a lifecycle call or sleeps until the next due step.

Output goes in through the link (``link.output``) before the step's own report; people watch it
through ``engine.open_stream`` with a watcher that feeds their
:class:`~tether.sim._stream.StreamClient` (operators on their clients, observers as new ones,
driven from the same heap), and the self-check compares what each received with what the agent
wrote.

A session ended under its agent by someone else (``engine.terminate`` from another task, as
the REST API's DELETE does) closes the agent's transport with that reason: the agent counts it
(``ended_by_server``), and this task wakes to carry out its reconnect when it is due.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from tether.engine import (
    AgentLinkClosed,
    ClientNotFound,
    OutputGap,
    ResumeRejected,
    SessionNotActive,
    SessionNotFound,
    Telemetry,
    TetherError,
)

from ._agent import INF, SERVER_ENDS, AgentRun, Step
from ._check import disagreements
from ._operator import OperatorRun, OpStep
from ._result import SimResult
from ._stream import ObserverRun, ObsStep, output_stats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tether.engine import (
        AgentLink,
        Engine,
        OperatorFrame,
        OutputChunk,
        RunCommand,
        Status,
        StreamStart,
    )

    from ._agent import SessionExpect
    from ._behaviour import AgentPlan
    from ._stream import StreamClient


class _Transport:
    """The engine's transport for one in-process connection of one agent."""

    __slots__ = ("current", "driver", "index")

    def __init__(self, driver: InProcessFleet, index: int) -> None:
        self.driver = driver
        self.index = index
        self.current = True

    def send_run_command(self, command: RunCommand) -> None:
        self.driver._run_command(self, command)

    def send_operator(self, frame: OperatorFrame) -> None:
        pass  # simulated agents have no terminal to type into

    def close(self, reason: str) -> None:
        self.driver._closed(self, reason)


class _Watcher:
    """One in-process attach stream: the engine's watcher, feeding a :class:`StreamClient`.
    What the engine tells it before :meth:`begin` waits behind the replay, as on a socket."""

    __slots__ = ("attached_here", "client", "driver", "early", "ended", "session_id")

    def __init__(self, driver: InProcessFleet, client: StreamClient) -> None:
        self.driver = driver
        self.client = client
        self.session_id = client.session.session_id
        self.attached_here = False
        self.ended = False
        self.early: list[OutputChunk | None] | None = []  # None: the end

    def begin(self, start: StreamStart) -> None:
        client = self.client
        self.attached_here = start.attached_here
        client.attached(start.client.client_id, start.offset)
        if start.gap is not None:
            client.gap(*start.gap)
        for chunk in start.replay:
            client.output(chunk.offset, chunk.data)
        early, self.early = self.early, None
        for item in early or ():
            if item is None:
                self._end()
            else:
                self.output(item)

    def output(self, chunk: OutputChunk) -> None:
        if self.early is not None:
            self.early.append(chunk)
        elif not self.ended:
            self.client.output(chunk.offset, chunk.data)

    def status(self, status: Status, reason: str | None) -> None:
        if status.final:
            self._end()

    def client_detached(self, client_id: str, status: Status) -> None:
        if client_id == self.client.client_id and not status.final:
            self._end()

    def command_result(self, command_id: str, exit_code: int) -> None:
        pass

    def moved(self) -> None:
        self._end()

    def _end(self) -> None:
        if self.early is not None:
            self.early.append(None)
        elif not self.ended:
            self.ended = True
            self.driver._stream_ended(self)


class InProcessFleet:
    """A fleet of simulated agents over one engine workspace.

    ``run()`` drives them for ``duration`` seconds of the trio clock (plus ``settle`` seconds of
    heartbeats only), then checks every session they made against the engine's views.
    Machines whose plans have visits get an :class:`~tether.sim._operator.OperatorRun`, and
    those watched an :class:`~tether.sim._stream.ObserverRun`.
    ``trace`` (if a list) receives ``(time, agent, step)`` for every step taken, operators'
    included.
    """

    def __init__(
        self, engine: Engine, workspace_id: str, plans: Sequence[AgentPlan], *, duration: float,
        heartbeat_every: float | None = None, settle: float = 1.0, margin: float = 1.0,
        trace: list[tuple[float, int, str]] | None = None,
    ) -> None:
        self.engine = engine
        self.workspace_id = workspace_id
        self.plans = list(plans)
        self.duration = duration
        self.settle = settle
        self.margin = margin
        self.runs = [AgentRun(p, stop_at=duration, heartbeat_every=heartbeat_every)
                     for p in self.plans]
        retention = engine.config.output_buffer_bytes
        self.operators = [OperatorRun(r, retention) if r.plan.visits else None
                          for r in self.runs]
        self.observers = [ObserverRun(r, retention) if r.plan.watch else None
                          for r in self.runs]
        self._watchers: dict[StreamClient, _Watcher] = {}
        self.stream_refused = 0
        self.links: list[AgentLink | None] = [None] * len(self.runs)
        self.transports: list[_Transport | None] = [None] * len(self.runs)
        self.trace = trace
        self.digest = hashlib.blake2b(digest_size=16)
        self.messages = 0
        self.errors = 0
        self.problems: list[str] = []
        self.connected = 0
        self.connected_peak = 0
        self._counted = [False] * len(self.runs)  # counted in ``connected``
        #: (due, agent index, 0 for the agent, 1 for its operator, 2 for its observer)
        self._heap: list[tuple[float, int, int]] = []
        self._start = 0.0
        self._wake = trio.Event()  # set when an agent is rescheduled from outside this task

    # -- engine callbacks ------------------------------------------------------------------

    def _run_command(self, transport: _Transport, command: RunCommand) -> None:
        run = self.runs[transport.index]
        if transport.current:
            run.run_command(command.command_id, command.command)
            heapq.heappush(self._heap, (run.due, transport.index, 0))

    def _closed(self, transport: _Transport, reason: str) -> None:
        if not transport.current:
            return
        transport.current = False
        i = transport.index
        run = self.runs[i]
        if reason in SERVER_ENDS:
            if run.ended_by_server(trio.current_time() - self._start, reason):
                self._recount(i)
                if run.due < INF:
                    heapq.heappush(self._heap, (run.due, i, 0))
                    self._wake.set()
        elif run.closed_by_server():
            self._recount(i)
            self._error(f"agent {i}: the engine closed its link ({reason})")

    def _recount(self, i: int) -> None:
        """Keep ``connected`` in step with agent ``i``, whoever changed it."""
        now = self.runs[i].connected
        if now != self._counted[i]:
            self._counted[i] = now
            self.connected += 1 if now else -1
            if self.connected > self.connected_peak:
                self.connected_peak = self.connected

    def _error(self, text: str) -> None:
        self.errors += 1
        if len(self.problems) < 100:
            self.problems.append(text)

    # -- the driver ------------------------------------------------------------------------

    async def run(self) -> SimResult:
        wall = time.perf_counter()
        self._start = start = trio.current_time()
        heap = self._heap = [(r.due, i, 0) for i, r in enumerate(self.runs)]
        heap.extend((op.due, i, 1) for i, op in enumerate(self.operators) if op is not None)
        heap.extend((ob.due, i, 2) for i, ob in enumerate(self.observers) if ob is not None)
        heapq.heapify(heap)
        end = self.duration + self.settle
        runs = self.runs
        while heap:
            due, i, who = heap[0]
            if due >= end:
                break
            current = trio.current_time()
            if start + due > current:
                with trio.move_on_at(start + due):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = trio.Event()
                continue
            now = max(due, current - start)  # (current - start) may round below due
            heapq.heappop(heap)
            if who == 1:
                await self._operator_step(i, due, now)
                continue
            if who == 2:
                await self._observer_step(i, due, now)
                continue
            run = runs[i]
            if run.due != due:
                continue  # a stale entry: the agent was rescheduled
            step = run.take(now)
            if step is None:
                if run.due < INF and run.due != due:  # rescheduled without a step
                    heapq.heappush(heap, (run.due, i, 0))
                continue
            if self.trace is not None:
                self.trace.append((round(now, 6), i, step.value))
            self.digest.update(f"{now:.6f} {i} {step.value}\n".encode())
            self.messages += 1
            await self._perform(i, run, step, now)
            self._recount(i)
            if run.due < INF:
                heapq.heappush(heap, (run.due, i, 0))
        if trio.current_time() < start + end:
            await trio.sleep_until(start + end)
        checked_at = trio.current_time() - start
        mismatches, by_status = self.check(checked_at)
        for transport in self.transports:  # the run is over: closes from now on are expected
            if transport is not None:
                transport.current = False
        elapsed = checked_at
        kinds: dict[str, int] = {}
        for p in self.plans:
            kinds[p.kind.value] = kinds.get(p.kind.value, 0) + 1
        ops = [op for op in self.operators if op is not None]
        output, found = output_stats(runs, self.stream_clients(), self.stream_refused)
        self.problems.extend(found[:max(0, 100 - len(self.problems))])
        notes = []
        replaced = sum(r.server_replaced for r in runs)
        if replaced:
            notes.append(f"{replaced} sessions were replaced under their agents: another "
                         "hello for the same machine")
        result = SimResult(
            agents=len(runs), connected_peak=self.connected_peak, messages_sent=self.messages,
            messages_per_s=round(self.messages / elapsed, 1) if elapsed > 0 else 0.0,
            errors=self.errors, mismatches=mismatches, sessions=sum(by_status.values()),
            sessions_by_status=by_status, checked=True, duration_s=round(elapsed, 3),
            wall_s=round(time.perf_counter() - wall, 3), kinds=kinds,
            operator_visits=sum(op.visits for op in ops),
            operator_commands=sum(op.commands for op in ops),
            operator_answered=sum(r.answered for r in runs),
            operator_refused=sum(op.refused_steps for op in ops),
            operator_skipped=sum(op.skipped for op in ops),
            ended_by_server=sum(r.server_ends for r in runs),
            notes=notes, problems=self.problems,
        )
        for name, value in output.items():
            setattr(result, name, value)
        return result

    async def _operator_step(self, i: int, due: float, now: float) -> None:
        op = self.operators[i]
        assert op is not None
        if op.due != due:
            return  # a stale entry
        step = op.take(now)
        if step is not None:
            if self.trace is not None:
                self.trace.append((round(now, 6), i, step.value))
            self.digest.update(f"{now:.6f} {i} {step.value}\n".encode())
            await self._operate(i, op, step)
        if op.due < INF:
            heapq.heappush(self._heap, (op.due, i, 1))

    async def _observer_step(self, i: int, due: float, now: float) -> None:
        obs = self.observers[i]
        assert obs is not None
        if obs.due != due:
            return  # a stale entry
        step = obs.take(now)
        if step is not None:
            if self.trace is not None:
                self.trace.append((round(now, 6), i, step.value))
            self.digest.update(f"{now:.6f} {i} {step.value}\n".encode())
            client = obs.client
            assert client is not None
            if step is ObsStep.ATTACH or step is ObsStep.REATTACH:
                opened = await self._open_stream(
                    client, mode="observer", user_email=client.user_email,
                    offset=None if step is ObsStep.ATTACH else client.offset)
                if opened:
                    obs.done()
                else:
                    obs.refused()
            else:
                self._close_stream(client)
                obs.done()
        if obs.due < INF:
            heapq.heappush(self._heap, (obs.due, i, 2))

    # -- attach streams --------------------------------------------------------------------

    def stream_clients(self) -> list[StreamClient]:
        clients = [c for op in self.operators if op is not None for c in op.streams]
        clients += [c for ob in self.observers if ob is not None for c in ob.clients]
        return clients

    async def _open_stream(self, client: StreamClient, **query: Any) -> bool:
        """Open a stream for ``client`` (``query``: ``open_stream``'s); False if refused."""
        watcher = _Watcher(self, client)
        try:
            start = await self.engine.open_stream(
                self.workspace_id, client.session.session_id, watcher,
                client_id=None if client.mode == "observer" else client.client_id, **query)
        except (SessionNotActive, ClientNotFound):
            self.stream_refused += 1
            return False
        except TetherError as error:
            self._error(f"{client.mode} {client.user_email}: stream refused: {error}")
            return False
        self._watchers[client] = watcher
        if start.attached_here:
            client.session.clients += 1
        watcher.begin(start)
        return True

    def _close_stream(self, client: StreamClient) -> None:
        """The person closes the stream (a client it attached is detached with it)."""
        watcher = self._watchers.get(client)
        if watcher is not None and not watcher.ended:
            watcher.ended = True
            self._stream_ended(watcher, by_client=True)

    def _stream_ended(self, watcher: _Watcher, by_client: bool = False) -> None:
        client = watcher.client
        if self._watchers.get(client) is watcher:
            del self._watchers[client]
        detach = client.client_id if watcher.attached_here and by_client else None
        self.engine.close_stream(self.workspace_id, watcher.session_id, watcher, detach)
        if watcher.attached_here and client.open:
            client.session.clients -= 1
        client.closed()

    async def _operate(self, i: int, op: OperatorRun, step: OpStep) -> None:
        """Carry out an operator's step through the engine, as the REST API would, and its
        stream's: opened after the attach, dropped and re-attached before the first command,
        closed with the client."""
        stream = op.stream
        try:
            await self._operator_call(i, op, step)
        finally:
            if op.stream is not None and op.stream is not stream:
                await self._open_stream(op.stream)
            elif stream is not None and op.stream is None:
                self._close_stream(stream)

    async def _operator_call(self, i: int, op: OperatorRun, step: OpStep) -> None:
        engine, ws = self.engine, self.workspace_id
        session = op.session
        assert session is not None
        try:
            if step is OpStep.ATTACH:
                client = await engine.attach_client(ws, session.session_id, op.user_email,
                                                    "operator")
                op.attached(client.client_id)
            elif step is OpStep.RUN:
                assert op.client_id is not None and op.command is not None
                stream = op.stream
                if op.reattach and stream is not None:
                    self._close_stream(stream)
                    await self._open_stream(stream, offset=stream.offset)
                view = await engine.run_command(ws, session.session_id, op.client_id,
                                                op.command[0])
                # the engine hands run_command to the agent's transport before it answers
                # (unless the session has ended meanwhile, taking the command with it)
                run = self.runs[i]
                if run.session is session and not run.awaiting(view.command_id):
                    self._error(f"agent {i}: no run_command for {view.command_id}")
                op.accepted(view.command_id)
            else:
                assert op.client_id is not None
                await engine.detach_client(ws, session.session_id, op.client_id)
                op.detached()
        except (SessionNotActive, ClientNotFound):
            op.refused()
        except TetherError as error:
            op.failed()
            self._error(f"operator of agent {i}: {step.value} refused: {error}")

    def _send_output(self, i: int, run: AgentRun, link: AgentLink | None) -> None:
        """Send the agent's outbox (its output frames) through ``link``."""
        outbox, run.outbox = run.outbox, []
        if not outbox:
            return
        assert link is not None
        for piece in outbox:
            self.messages += 1
            try:
                link.output(piece.offset, piece.data, piece.stream, piece.command_id)
            except OutputGap as gap:  # never, in a correct run
                self._error(f"agent {i}: output_gap at {piece.offset}: the engine expected "
                            f"{gap.expected_offset}")
                return

    async def _perform(self, i: int, run: AgentRun, step: Step, now: float) -> None:
        link = self.links[i]
        try:
            self._send_output(i, run, link)
            if step is Step.HEARTBEAT:
                assert link is not None
                t = run.telemetry
                assert t is not None
                link.heartbeat(Telemetry(
                    cpu_percent=t[0], memory_percent=t[1], disk_percent=t[2],
                    network_rx_bytes=t[3], network_tx_bytes=t[4], uptime_seconds=t[5],
                ))
            elif step is Step.HELLO or step is Step.RESUME:
                await self._hello(i, run, step, now)
            elif step is Step.COMMAND or step is Step.RESULT:
                assert link is not None and run.command is not None
                command_id, command, exit_code = run.command
                if step is Step.COMMAND:
                    await link.report_command(command, exit_code, command_id=command_id)
                else:
                    await link.command_result(command_id, exit_code)
            elif step is Step.BACKGROUND:
                assert link is not None
                await link.background()
            elif step is Step.FOREGROUND:
                assert link is not None
                await link.foreground()
            elif step is Step.DROP or step is Step.RESTART:
                assert link is not None
                self._forget(i)
                link.transport_lost()
            elif step is Step.GOODBYE:
                assert link is not None
                self._forget(i)
                await link.goodbye("simulated goodbye")
            elif step is Step.FATAL:
                assert link is not None
                self._forget(i)
                await link.fatal_error("sim_crash", "simulated fatal error")
        except AgentLinkClosed as error:
            if run.closed_by_server():
                self._error(f"agent {i}: {step.value} on a closed link ({error})")
        except TetherError as error:
            self._error(f"agent {i}: {step.value} refused: {error}")

    def _forget(self, i: int) -> None:
        transport = self.transports[i]
        if transport is not None:
            transport.current = False
        self.transports[i] = None

    async def _hello(self, i: int, run: AgentRun, step: Step, now: float) -> None:
        plan = run.plan
        self._forget(i)
        transport = _Transport(self, i)
        self.transports[i] = transport
        try:
            link = await self.engine.agent_hello(
                self.workspace_id, transport, machine_id=plan.machine_id,
                machine_hostname=plan.machine_hostname,
                resume_token=run.resume_token if step is Step.RESUME else None,
            )
        except ResumeRejected:
            transport.current = False
            run.resume_refused(now)  # the session ended while the agent was away
            return
        except TetherError as error:
            transport.current = False
            run.hello_failed(now)
            self._error(f"agent {i}: {step.value} refused: {error}")
            return
        self.links[i] = link
        w = link.welcome
        assert w is not None
        run.welcomed(now, w.session_id, w.resume_token, w.heartbeat_interval, w.grace_period,
                     w.resumed, w.output_offset)
        if run.output_trouble is not None:
            self._error(f"agent {i}: {run.output_trouble}")
        self._send_output(i, run, link)

    # -- the self-check --------------------------------------------------------------------

    def sessions(self) -> list[SessionExpect]:
        return [s for run in self.runs for s in run.sessions]

    def check(self, now: float) -> tuple[int, dict[str, int]]:
        """Compare every session with the engine's views; (mismatches, sessions by status)."""
        mismatches = 0
        by_status: dict[str, int] = {}
        for expect in self.sessions():
            detail, history = self.views(expect.session_id)
            if detail is not None:
                status = detail["status"]
                by_status[status] = by_status.get(status, 0) + 1
            problems = disagreements(expect, detail, history, now, self.margin)
            if problems:
                mismatches += 1
                if len(self.problems) < 100:
                    self.problems.append(f"{expect.session_id} ({expect.machine_id}, "
                                         f"{expect.kind.value}): {'; '.join(problems)}")
        return mismatches, by_status

    def views(self, session_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
        try:
            detail = self.engine.get_session(self.workspace_id, session_id)
        except SessionNotFound:
            return None, None
        history = self.engine.history(self.workspace_id, session_id, limit=1000)
        return msgspec.to_builtins(detail), msgspec.to_builtins(history.data)
