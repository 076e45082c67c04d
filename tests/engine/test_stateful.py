"""A hypothesis state machine that drives the engine and a model of it side by side.

The engine runs in its own trio run under a fresh ``MockClock`` per example, on a helper
thread; each rule runs one coroutine there with ``trio.from_thread.run`` and waits for every
task to settle, so the engine is quiescent whenever invariants are checked. The clock stands
still between rules (the run is idle then, and an autojumping clock would leap to the next
deadline); the ``advance`` rule turns autojump on (threshold 0) for its sleep only.
The model is design.md's lifecycle table plus its timeouts.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tether.engine import (
    ClientNotFound,
    Engine,
    EngineConfig,
    ProtocolViolation,
    ResumeRejected,
    SessionAlreadyActive,
    SessionNotActive,
    Status,
)

from .conftest import RecordingTransport

# Nothing is purged or trimmed during a run: retention has tests of its own.
CONFIG = EngineConfig(retention=10**9, event_retention=10**9)
WORKSPACES = ("ws_a", "ws_b")
MACHINES = ("m0", "m1", "m2")
LIVE = {Status.PENDING, Status.CONNECTED, Status.BACKGROUND, Status.GRACE_PERIOD}
# Fractional steps make exact ties between "now" and a deadline unlikely; the model also
# counts a deadline at "now" as passed, as the engine does once every task has settled.
STEPS = (0.4, 0.7, 1.3, 10.3, 29.3, 30.9, 59.1, 61.3, 299.2, 301.1, 3601.7)


@dataclass
class ModelSession:
    session_id: str
    workspace: str
    machine: str
    status: Status
    since: float
    last_heartbeat: float | None = None
    clients: dict[str, None] = field(default_factory=dict)  # ordered: ids are random
    link: Any = None  # the AgentLink the session is on, if any
    token: str | None = None

    def deadline(self) -> float | None:
        if self.status in (Status.CONNECTED, Status.BACKGROUND):
            alive = max(self.since, self.last_heartbeat or self.since)
            return alive + (
                CONFIG.heartbeat_timeout
                if self.status is Status.CONNECTED
                else CONFIG.background_timeout
            )
        if self.status is Status.GRACE_PERIOD:
            return self.since + CONFIG.grace_period
        if self.status is Status.PENDING:
            return self.since + CONFIG.pending_timeout
        return None


class EngineThread:
    """Runs an engine in a trio run of its own, on a thread, until :meth:`stop`."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.clock = trio.testing.MockClock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        async def main() -> None:
            self._stop = trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            async with Engine(CONFIG) as engine:
                self.engine = engine
                self._ready.set()
                await self._stop.wait()

        trio.run(main, clock=self.clock)

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def settled() -> Any:
            try:
                return await fn(*args, **kwargs)
            finally:
                await trio.testing.wait_all_tasks_blocked()

        return trio.from_thread.run(settled, trio_token=self._token)

    def advance(self, seconds: float) -> None:
        async def sleep() -> None:
            self.clock.autojump_threshold = 0
            try:
                await trio.sleep(seconds)
            finally:
                self.clock.autojump_threshold = math.inf

        self.run(sleep)

    def sync(self, fn: Any, *args: Any) -> Any:
        """Call a plain function inside the engine's trio run."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def now(self) -> float:
        return trio.from_thread.run_sync(trio.current_time, trio_token=self._token)

    def stop(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = EngineThread()
        self.engine = self.loop.engine
        assert self.engine is not None
        self.sessions: dict[str, ModelSession] = {}
        self.expired_tokens: list[tuple[str, str, str]] = []  # (workspace, machine, token)

    def teardown(self) -> None:
        self.loop.stop()

    # -- model helpers ---------------------------------------------------------------------

    def active(self, workspace: str, machine: str) -> ModelSession | None:
        for s in self.sessions.values():
            if s.workspace == workspace and s.machine == machine and s.status in LIVE:
                return s
        return None

    def end(self, s: ModelSession, status: Status = Status.DISCONNECTED) -> None:
        s.status = status
        s.clients.clear()
        s.link = None
        if s.token:
            self.expired_tokens.append((s.workspace, s.machine, s.token))
        s.token = None

    def advance_model(self, now: float) -> None:
        changed = True
        while changed:
            changed = False
            for s in self.sessions.values():
                due = s.deadline()
                if due is not None and due <= now:
                    changed = True
                    if s.status in (Status.CONNECTED, Status.BACKGROUND):
                        s.status, s.since, s.link = Status.GRACE_PERIOD, due, None
                    else:
                        self.end(s)

    def on_link(self) -> list[ModelSession]:
        return [s for s in self.sessions.values() if s.link is not None]

    # -- rules -----------------------------------------------------------------------------

    @rule(workspace=st.sampled_from(WORKSPACES), machine=st.sampled_from(MACHINES))
    def hello(self, workspace: str, machine: str) -> None:
        now = self.loop.now()
        link = self.loop.run(
            self.engine.agent_hello,
            workspace,
            RecordingTransport(),
            machine_id=machine,
            machine_hostname=f"host-{machine}",
        )
        old = self.active(workspace, machine)
        if old is not None and old.status is Status.PENDING:
            assert link.session_id == old.session_id
            s = old
            s.status, s.since = Status.CONNECTED, now
        else:
            if old is not None:
                self.end(old)
            s = ModelSession(link.session_id, workspace, machine, Status.CONNECTED, now)
            self.sessions[s.session_id] = s
        s.link, s.token = link, link.welcome.resume_token

    @rule(workspace=st.sampled_from(WORKSPACES), machine=st.sampled_from(MACHINES))
    def create(self, workspace: str, machine: str) -> None:
        now = self.loop.now()
        if self.active(workspace, machine) is not None:
            with pytest.raises(SessionAlreadyActive):
                self.loop.run(self.engine.create_session, workspace, machine, f"host-{machine}")
            return
        detail = self.loop.run(self.engine.create_session, workspace, machine, f"host-{machine}")
        self.sessions[detail.session_id] = ModelSession(
            detail.session_id, workspace, machine, Status.PENDING, now
        )

    @precondition(lambda self: self.on_link())
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(self.on_link()))
        self.loop.sync(s.link.heartbeat)
        s.last_heartbeat = self.loop.now()

    @precondition(lambda self: self.on_link())
    @rule(data=st.data(), which=st.sampled_from(["background", "foreground"]))
    def background_or_foreground(self, data: st.DataObject, which: str) -> None:
        s = data.draw(st.sampled_from(self.on_link()))
        allowed = (which == "background" and s.status is Status.CONNECTED) or (
            which == "foreground" and s.status is Status.BACKGROUND
        )
        if not allowed:
            with pytest.raises(ProtocolViolation):
                self.loop.run(getattr(s.link, which))
            return
        self.loop.run(getattr(s.link, which))
        s.status = Status.BACKGROUND if which == "background" else Status.CONNECTED
        s.since = self.loop.now()

    @precondition(lambda self: self.on_link())
    @rule(data=st.data())
    def transport_lost(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from(self.on_link()))
        self.loop.run(_post, s.link.transport_lost)
        s.link, s.status, s.since = None, Status.GRACE_PERIOD, self.loop.now()

    @precondition(lambda self: any(s.token for s in self.sessions.values()))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from([s for s in self.sessions.values() if s.token]))
        link = self.loop.run(
            self.engine.agent_hello,
            s.workspace,
            RecordingTransport(),
            machine_id=s.machine,
            machine_hostname=f"host-{s.machine}",
            resume_token=s.token,
        )
        assert link.session_id == s.session_id
        s.link, s.token, s.status, s.since = (
            link,
            link.welcome.resume_token,
            Status.CONNECTED,
            self.loop.now(),
        )

    @precondition(lambda self: self.expired_tokens)
    @rule(data=st.data())
    def stale_resume(self, data: st.DataObject) -> None:
        workspace, machine, token = data.draw(st.sampled_from(self.expired_tokens))
        with pytest.raises(ResumeRejected):
            self.loop.run(
                self.engine.agent_hello,
                workspace,
                RecordingTransport(),
                machine_id=machine,
                machine_hostname="h",
                resume_token=token,
            )

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), how=st.sampled_from(["goodbye", "fatal", "terminate"]))
    def end_session(self, data: st.DataObject, how: str) -> None:
        s = data.draw(st.sampled_from(list(self.sessions.values())))
        if how == "terminate":
            if s.status not in LIVE:
                with pytest.raises(SessionNotActive):
                    self.loop.run(self.engine.terminate, s.workspace, s.session_id)
                return
            self.loop.run(self.engine.terminate, s.workspace, s.session_id)
            self.end(s)
        elif s.link is not None:
            if how == "goodbye":
                self.loop.run(s.link.goodbye)
                self.end(s)
            else:
                self.loop.run(s.link.fatal_error, "boom", "it broke")
                self.end(s, Status.ERROR)

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), mode=st.sampled_from(["operator", "observer"]))
    def attach(self, data: st.DataObject, mode: str) -> None:
        s = data.draw(st.sampled_from(list(self.sessions.values())))
        if s.status is not Status.CONNECTED:
            with pytest.raises(SessionNotActive):
                self.loop.run(self.engine.attach_client, s.workspace, s.session_id, "a@b.io", mode)
            return
        client = self.loop.run(self.engine.attach_client, s.workspace, s.session_id, "a@b.io", mode)
        s.clients[client.client_id] = None

    @precondition(lambda self: any(s.clients for s in self.sessions.values()))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        s = data.draw(st.sampled_from([s for s in self.sessions.values() if s.clients]))
        client_id = data.draw(st.sampled_from(list(s.clients)))
        self.loop.run(self.engine.detach_client, s.workspace, s.session_id, client_id)
        del s.clients[client_id]
        with pytest.raises((ClientNotFound, SessionNotActive)):
            self.loop.run(self.engine.detach_client, s.workspace, s.session_id, client_id)

    @rule(step=st.sampled_from(STEPS))
    def advance(self, step: float) -> None:
        self.loop.advance(step)
        self.advance_model(self.loop.now())

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def statuses_and_clients_match_the_model(self) -> None:
        self.loop.sync(self._statuses_and_clients_match_the_model)

    def _statuses_and_clients_match_the_model(self) -> None:
        for s in self.sessions.values():
            detail = self.engine.get_session(s.workspace, s.session_id)
            assert detail.status is s.status, (s.session_id, detail.reason)
            assert [c.client_id for c in detail.attached_clients] == list(s.clients)
            if s.status not in LIVE:
                assert detail.attached_clients == []
            if s.link is not None:
                assert s.link.active

    @invariant()
    def one_active_session_per_machine(self) -> None:
        self.loop.sync(self._one_active_session_per_machine)

    def _one_active_session_per_machine(self) -> None:
        for workspace in WORKSPACES:
            for machine in MACHINES:
                live = [
                    s
                    for s in self.sessions.values()
                    if s.workspace == workspace and s.machine == machine and s.status in LIVE
                ]
                assert len(live) <= 1
                try:
                    found = self.engine.machine_session(workspace, machine).session_id
                except Exception:
                    found = None
                assert found == (live[0].session_id if live else None)

    @invariant()
    def events_are_complete_ordered_with_one_terminal_event(self) -> None:
        self.loop.sync(self._events_are_complete_ordered_with_one_terminal_event)

    def _events_are_complete_ordered_with_one_terminal_event(self) -> None:
        terminal: Counter[str] = Counter()
        last: dict[str, int] = {}
        for workspace in WORKSPACES:
            for event in self.engine.events_after(workspace, None, 1000):
                assert event.sequence == last.get(event.session_id, 0) + 1
                last[event.session_id] = event.sequence
                if event.type in ("session.disconnected", "session.error"):
                    terminal[event.session_id] += 1
        for s in self.sessions.values():
            assert terminal[s.session_id] == (0 if s.status in LIVE else 1)

    @invariant()
    def lists_equal_filtering_the_model(self) -> None:
        self.loop.sync(self._lists_equal_filtering_the_model)

    def _lists_equal_filtering_the_model(self) -> None:
        for workspace in WORKSPACES:
            mine = [s for s in self.sessions.values() if s.workspace == workspace]
            page = self.engine.list_sessions(workspace, limit=100)
            assert [x.session_id for x in page.data] == sorted(
                (s.session_id for s in mine), reverse=True
            )
            for status in Status:
                expected = sorted((s.session_id for s in mine if s.status is status), reverse=True)
                got = self.engine.list_sessions(workspace, status=status, limit=100)
                assert got.meta.total == len(expected)
                assert [x.session_id for x in got.data] == expected
            for machine in MACHINES:
                got = self.engine.list_sessions(
                    workspace,
                    machine_hostname=f"host-{machine}",
                    status=Status.CONNECTED,
                    limit=100,
                )
                assert got.meta.total == sum(
                    1 for s in mine if s.machine == machine and s.status is Status.CONNECTED
                )
            for summary in page.data:  # the index and the detail view agree
                detail = self.engine.get_session(workspace, summary.session_id)
                assert (summary.status, summary.attached_clients, summary.last_heartbeat_at) == (
                    detail.status,
                    len(detail.attached_clients),
                    detail.last_heartbeat_at,
                )


async def _post(fn: Any) -> None:
    fn()
    await trio.sleep(0)


EngineMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineStateMachine = EngineMachine.TestCase
