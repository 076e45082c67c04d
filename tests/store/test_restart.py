"""An engine on a real Redis, crashed (its tasks cancelled with nothing flushed on the way
out) and started again on the same store: nothing acknowledged is lost, sessions that were
CONNECTED are adopted into GRACE_PERIOD (``node_lost``) and resume as the same session, the
rest carry on, and event ids continue.

Time is trio's MockClock moved by hand (``autojump_threshold=inf``): waiting for Redis must
not look like idleness, or the clock would jump past deadlines while a write is in flight.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import trio
from trio.testing import MockClock

from tether.engine import (
    CommandEntry,
    Engine,
    EngineConfig,
    Event,
    EventData,
    HistoryAppend,
    SessionSnapshot,
    Status,
    Telemetry,
    WallClock,
    WriteBatch,
)
from tether.engine.testing import RecordingTransport
from tether.store import RedisStore

from .conftest import lapse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

    from tests.redis_server import RedisServer

WS = "ws_acme"
EPOCH = 1771063200.0
CONFIG = EngineConfig(grace_period=30, heartbeat_timeout=60, pending_timeout=300)


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=math.inf)


async def let_run(engine: Engine, clock: MockClock, seconds: float = 0.0) -> None:
    """Move the clock by ``seconds`` and let every task catch up, Redis's answers included
    (a task waiting for Redis looks blocked, so each round also waits for the journal)."""
    clock.jump(seconds)
    assert engine.journal is not None
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()
        await engine.journal.commit()


def open_engine(redis: RedisServer, prefix: str = "t:",
                node_id: str = "node-a") -> AbstractAsyncContextManager[Engine]:
    """An engine on ``redis``; by default always the same node, restarted (so it takes its
    sessions back at once: see ``test_ownership.py`` for a node that takes over another's)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opened() -> AsyncIterator[Engine]:
        async with RedisStore(redis.url, prefix=prefix, node_id=node_id) as store:
            wall = WallClock(epoch=EPOCH, trio_zero=0.0)
            async with Engine(CONFIG, clock=wall, store=store) as engine:
                yield engine

    return opened()


async def crash(run: trio.CancelScope) -> None:
    run.cancel()
    await trio.lowlevel.checkpoint()


async def hello(engine: Engine, machine: str, token: str | None = None):
    transport = RecordingTransport()
    link = await engine.agent_hello(WS, transport, machine_id=machine,
                                    machine_hostname=f"host-{machine}", resume_token=token)
    return link, transport


async def test_a_crash_loses_nothing_acknowledged_and_agents_resume_the_same_session(
        redis: RedisServer, clock: MockClock) -> None:
    before: dict[str, object] = {}
    with trio.CancelScope() as run:
        async with open_engine(redis) as engine:
            link, _ = await hello(engine, "mach_1")
            quiet, _ = await hello(engine, "mach_2")
            pending = await engine.create_session(WS, "mach_3", "host-mach_3")
            gone, _ = await hello(engine, "mach_4")
            await gone.goodbye("maintenance")
            client = await engine.attach_client(WS, link.session_id, "ops@example.com",
                                                "operator")
            command = await engine.run_command(WS, link.session_id, client.client_id, "uptime")
            await link.report_command("ls -la", 0, command_id="cmd_ls")
            await let_run(engine, clock, 5)
            link.heartbeat(Telemetry(cpu_percent=12.5))
            assert engine.journal is not None
            await engine.journal.flush()  # as its flush interval would
            before["list"] = engine.list_sessions(WS, limit=100)
            before["detail"] = engine.get_session(WS, link.session_id)
            before["events"] = engine.events_after(WS, None, 1000)
            await crash(run)
    assert run.cancelled_caught

    async with open_engine(redis) as engine:
        # Everything is still listed; the two CONNECTED sessions were adopted.
        listed = engine.list_sessions(WS, limit=100)
        assert listed.meta.total == before["list"].meta.total == 4
        by_id = {s.session_id: s for s in listed.data}
        assert by_id[link.session_id].status is Status.GRACE_PERIOD
        assert by_id[quiet.session_id].status is Status.GRACE_PERIOD
        assert by_id[pending.session_id].status is Status.PENDING
        assert by_id[gone.session_id].status is Status.DISCONNECTED
        detail = engine.get_session(WS, link.session_id)
        assert detail.reason == "node_lost"
        assert detail.last_heartbeat_at == before["detail"].last_heartbeat_at
        assert detail.telemetry is not None and detail.telemetry.cpu_percent == 12.5
        assert [c.client_id for c in detail.attached_clients] == [client.client_id]
        assert engine.get_command(WS, link.session_id, command.command_id).state == "pending"
        assert [e.command_id for e in engine.history(WS, link.session_id).data] == ["cmd_ls"]
        assert engine.machine_session(WS, "mach_1").session_id == link.session_id

        # Event ids continue: the old ones are still there, a cursor from before still works.
        events = engine.events_after(WS, None, 1000)
        old = before["events"]
        assert [e.id for e in events[: len(old)]] == [e.id for e in old]
        adopted = events[len(old):]
        assert {(e.session_id, e.type, e.data.reason) for e in adopted} == {
            (link.session_id, "session.grace_period", "node_lost"),
            (quiet.session_id, "session.grace_period", "node_lost"),
        }
        assert engine.events_after(WS, old[-1].id, 1000) == adopted

        # The agent comes back with its token: the same session, its sequence numbers go on.
        assert link.welcome is not None
        resumed, _ = await hello(engine, "mach_1", token=link.welcome.resume_token)
        assert resumed.session_id == link.session_id
        assert resumed.welcome is not None and resumed.welcome.resumed
        last = engine.events_after(WS, None, 1000)[-1]
        assert (last.type, last.session_id) == ("session.connected", link.session_id)
        assert last.sequence == max(e.sequence for e in events
                                    if e.session_id == link.session_id) + 1

        # The agent that does not come back ends at its grace deadline, and only then.
        await let_run(engine, clock, CONFIG.grace_period - 1)
        assert engine.get_session(WS, quiet.session_id).status is Status.GRACE_PERIOD
        await let_run(engine, clock, 2)
        ended = engine.get_session(WS, quiet.session_id)
        assert (ended.status, ended.reason) == (Status.DISCONNECTED, "grace_expired")
        assert engine.get_session(WS, link.session_id).status is Status.CONNECTED


async def test_a_clean_exit_hands_sessions_over_instead_of_ending_them(
        redis: RedisServer, clock: MockClock) -> None:
    async with open_engine(redis) as engine:
        link, transport = await hello(engine, "mach_1")
    assert transport.closed == "node_draining"
    async with open_engine(redis) as engine:
        detail = engine.get_session(WS, link.session_id)
        assert (detail.status, detail.reason) == (Status.GRACE_PERIOD, "node_draining")
        assert link.welcome is not None
        resumed, _ = await hello(engine, "mach_1", token=link.welcome.resume_token)
        assert resumed.session_id == link.session_id
        types = [e.type for e in engine.events_after(WS, None, 100)]
        assert types == ["session.created", "session.connected", "session.grace_period",
                         "session.connected"]


async def test_a_paused_owner_that_comes_back_cannot_overwrite_its_successor(
        redis: RedisServer, clock: MockClock) -> None:
    """The first process is still running (as if paused past its node lease) when a second
    one starts on the same store and adopts its sessions: a write the first one had under way
    is refused, whole, and once it reads the change feed it lets the session go."""
    wall = WallClock(epoch=EPOCH, trio_zero=0.0)
    async with RedisStore(redis.url, prefix="z:", node_id="node-a") as old_store, \
            Engine(CONFIG, clock=wall, store=old_store) as old:
        link, old_socket = await hello(old, "mach_1")
        sid = link.session_id
        await lapse(redis, "z:", "node-a")
        async with RedisStore(redis.url, prefix="z:", node_id="node-b") as new_store, \
                Engine(CONFIG, clock=wall, store=new_store) as new:
            assert new.get_session(WS, sid).status is Status.GRACE_PERIOD
            successor_events = new.events_after(WS, None, 100)
            # The old owner's write, under way when it was paused, arrives now: refused.
            late = SessionSnapshot(
                session_id=sid, workspace_id=WS, machine_id="mach_1",
                machine_hostname="host-mach_1", created_at=EPOCH, status=Status.CONNECTED,
                status_since=EPOCH, version=10_000, history_total=1)
            entry = CommandEntry(command_id="cmd_late", command="rm -rf /tmp/x", exit_code=0,
                                 executed_at="2026-02-14T10:00:00Z", user_email=None)
            await old_store.write(WriteBatch(
                sessions=[late], history=[HistoryAppend(WS, sid, 0, [entry], 10)]))
            assert old_store.stale == {sid}
            # Awake, it reads that node-b took the session: it closes the agent's socket.
            for _ in range(100):
                if old_socket.closed is not None:
                    break
                await let_run(old, clock)
            assert old_socket.closed == "session_moved"
            assert old.actors_running == 0
        # What the successor wrote is what a third process finds.
        async with RedisStore(redis.url, prefix="z:", node_id="node-c") as third_store, \
                Engine(CONFIG, clock=wall, store=third_store) as third:
            detail = third.get_session(WS, sid)
            assert (detail.status, detail.reason) == (Status.GRACE_PERIOD, "node_lost")
            assert third.history(WS, sid).data == []
            events = third.events_after(WS, None, 100)
            assert [e.id for e in events[: len(successor_events)]] == [
                e.id for e in successor_events]
            assert all(e.type != "command.completed" for e in events)


async def test_a_batch_written_twice_writes_nothing_twice(redis: RedisServer) -> None:
    """A write whose answer was lost (Redis paused mid-write, say) is retried whole: history
    entries and events already written are not written again."""
    snap = SessionSnapshot(session_id="sess_1", workspace_id=WS, machine_id="m", sequence=2,
                           machine_hostname="h", created_at=EPOCH, status=Status.CONNECTED,
                           status_since=EPOCH, history_total=2)
    entries = [CommandEntry(command_id=f"cmd_{i}", command="ls", exit_code=0,
                            executed_at="2026-02-14T10:00:00Z", user_email=None)
               for i in range(2)]
    async with RedisStore(redis.url, prefix="twice:") as store:
        first = _events(2)
        batch = WriteBatch(sessions=[snap],
                           history=[HistoryAppend(WS, "sess_1", 0, entries, 10)],
                           events=first)
        await store.write(batch)
        await store.write(batch)
        loaded = await store.load()
    [session] = loaded.sessions
    assert [e.command_id for e in session.history] == ["cmd_0", "cmd_1"]
    # Each event once, numbered by the store in the order written.
    assert [(offset, e.sequence) for offset, e in loaded.events] == [(0, 1), (1, 2)]
    assert loaded.log is not None and loaded.log.next_offset == 2


def _events(n: int) -> list[Event]:
    """``n`` events of session sess_1, as an engine's journal writes them (unnumbered)."""
    return [
        Event(id="", type="session.connected", timestamp="2026-02-14T10:00:00Z",
              workspace_id=WS, session_id="sess_1", sequence=i + 1,
              data=EventData(session_id="sess_1", status=Status.CONNECTED, machine_id="m",
                             machine_hostname="h", workspace_id=WS,
                             created_at="2026-02-14T10:00:00Z", connected_at=None,
                             last_heartbeat_at=None, attached_clients=0,
                             previous_status=None, reason=None, sequence=i + 1))
        for i in range(n)
    ]


async def test_many_sessions_changed_at_once_are_written_in_chunks_and_come_back(
        redis: RedisServer, clock: MockClock) -> None:
    """600 sessions handed over in one batch (more than one script's worth): all come back."""
    async with open_engine(redis, prefix="many:") as engine:
        links = [(await hello(engine, f"mach_{i}"))[0] for i in range(600)]
    async with open_engine(redis, prefix="many:") as engine:
        page = engine.list_sessions(WS, status="GRACE_PERIOD", limit=1)
        assert page.meta.total == 600
        assert all(e.sequence == 3 for e in engine.events_after(WS, None, 1000)
                   if e.type == "session.grace_period")
        resumed, _ = await hello(engine, "mach_599", token=links[599].welcome.resume_token)
        assert resumed.session_id == links[599].session_id


async def test_redis_keeps_each_machines_active_session(redis: RedisServer,
                                                        clock: MockClock) -> None:
    import coredis

    async with open_engine(redis, prefix="act:") as engine:
        staying, _ = await hello(engine, "mach_1")
        leaving, _ = await hello(engine, "mach_2")
        await leaving.goodbye()
        replaced, _ = await hello(engine, "mach_3")
        newer, _ = await hello(engine, "mach_3")  # replaces it
        async with coredis.Redis.from_url(redis.url, decode_responses=True) as r:
            assert await r.hgetall("act:{ws_acme}:machines") == {
                "mach_1": staying.session_id, "mach_3": newer.session_id}
    assert replaced.session_id != newer.session_id
