"""Two engines (two nodes) on one real redis-server: what one node writes, the other reads
(through the change feed), an agent that moves to the other node takes its session with it,
and a hello on the other node replaces the machine's session there. Real time: visibility is
Redis answering, not lifecycle timing."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from tether.engine import (
    ClientNotOperator,
    Engine,
    EngineConfig,
    NoActiveSession,
    OwnerUnreachable,
    Status,
    Telemetry,
)
from tether.engine.testing import RecordingTransport
from tether.store import RedisStore

from ..conftest import fresh_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.redis_server import RedisServer

WS = "ws_acme"
CONFIG = EngineConfig(grace_period=30, heartbeat_timeout=60, pending_timeout=300,
                      retention=0.5)


@asynccontextmanager
async def two_nodes(redis: RedisServer) -> AsyncIterator[tuple[Engine, Engine]]:
    prefix = fresh_prefix("cluster")
    async with AsyncExitStack() as stack:
        engines = []
        for node in ("node-a", "node-b"):
            store = await stack.enter_async_context(
                RedisStore(redis.url, prefix=prefix, node_id=node, lease_ttl=1.5))
            engines.append(await stack.enter_async_context(Engine(CONFIG, store=store)))
        yield engines[0], engines[1]


async def until(done: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not done():
            await trio.sleep(0.005)


async def hello(engine: Engine, machine: str, token: str | None = None):
    transport = RecordingTransport()
    link = await engine.agent_hello(WS, transport, machine_id=machine,
                                    machine_hostname=f"host-{machine}", resume_token=token)
    return link, transport


async def agent_on(a: Engine, b: Engine):
    """An agent connected to node a, its session seen by node b too."""
    link, transport = await hello(a, "mach_1")
    await until(lambda: b.retained_sessions == 1)
    return link, transport


async def test_what_one_node_writes_the_other_reads(redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        link, _ = await hello(a, "mach_1")
        sid = link.session_id
        await until(lambda: b.retained_sessions == 1)
        assert b.get_session(WS, sid) == a.get_session(WS, sid)
        assert b.machine_session(WS, "mach_1").session_id == sid
        assert b.list_sessions(WS, status="CONNECTED").meta.total == 1

        client = await a.attach_client(WS, sid, "ops@example.com", "operator")
        await until(lambda: b.get_session(WS, sid).attached_clients != [])
        await link.report_command("uptime", 0, command_id="cmd_up")
        await until(lambda: b.history(WS, sid).data != [])
        assert b.history(WS, sid) == a.history(WS, sid)
        assert b.get_session(WS, sid) == a.get_session(WS, sid)

        # Heartbeats and telemetry: within a flush.
        link.heartbeat(Telemetry(cpu_percent=42.0))
        assert a.journal is not None
        await a.journal.flush()
        await until(lambda: b.metrics(WS, sid).cpu_percent == 42.0)
        assert b.get_session(WS, sid).last_heartbeat_at == a.get_session(
            WS, sid).last_heartbeat_at

        # A write on the node that does not own the session is carried to the owner.
        await b.detach_client(WS, sid, client.client_id)
        assert a.get_session(WS, sid).attached_clients == []
        await until(lambda: b.get_session(WS, sid).attached_clients == [])

        # The end, and the purge after the retention.
        await link.goodbye("maintenance")
        await until(lambda: b.get_session(WS, sid).status is Status.DISCONNECTED)
        assert b.get_session(WS, sid) == a.get_session(WS, sid)
        assert b.live_sessions == 0
        await until(lambda: a.retained_sessions == 0 and b.retained_sessions == 0)

        # Each node sees the other within a third of the lease TTL.
        await until(lambda: a.cluster_nodes == b.cluster_nodes == ["node-a", "node-b"])


async def test_an_agent_that_moves_to_the_other_node_takes_its_session_along(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        link, on_a = await agent_on(a, b)
        sid = link.session_id
        def live(node: Engine) -> int:
            page = node.list_sessions(WS, machine_id="mach_1", limit=100)
            return len([s for s in page.data if not s.status.final])

        for _ in range(3):  # heartbeats node a counted and never wrote
            link.heartbeat()
        assert link.welcome is not None
        moved, _ = await hello(b, "mach_1", token=link.welcome.resume_token)
        assert (moved.session_id, moved.welcome and moved.welcome.resumed) == (sid, True)
        # Node a lets go: the old socket is closed, its actor returns, it reads b's writes.
        await until(lambda: on_a.closed is not None and a.actors_running == 0)
        assert on_a.closed == "session_moved"
        await until(lambda: a.get_session(WS, sid) == b.get_session(WS, sid))
        assert a.get_session(WS, sid).status is Status.CONNECTED
        types = [(e.type, e.data.reason) for e in b.events_after(WS, None, 100)]
        assert ("session.disconnected", "grace_expired") not in types
        assert types[-2:] == [("session.grace_period", "node_lost"),
                              ("session.connected", "resumed")]


async def test_a_hello_on_the_other_node_replaces_the_machines_session(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        old, on_a = await hello(a, "mach_1")
        await until(lambda: b.retained_sessions == 1)
        new, _ = await hello(b, "mach_1")
        assert new.session_id != old.session_id
        await until(lambda: on_a.closed is not None)
        for node in (a, b):
            await until(lambda node=node: node.get_session(
                WS, old.session_id).status is Status.DISCONNECTED)
            ended = node.get_session(WS, old.session_id)
            assert ended.reason == "replaced"
            await until(lambda node=node: node.retained_sessions == 2)
            assert node.machine_session(WS, "mach_1").session_id == new.session_id
            assert node.live_sessions == 1


async def test_writes_on_any_node_run_on_the_owner_and_fail_cleanly_without_it(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        link, on_a = await agent_on(a, b)
        sid = link.session_id
        client = await b.attach_client(WS, sid, "ops@example.com", "operator")
        assert [c.client_id for c in a.get_session(WS, sid).attached_clients] == [
            client.client_id]
        view = await b.run_command(WS, sid, client.client_id, "uptime")
        assert [(c.command_id, c.command) for c in on_a.commands] == [
            (view.command_id, "uptime")]
        await link.command_result(view.command_id, 0)
        assert a.get_command(WS, sid, view.command_id).state == "completed"
        await until(lambda: b.get_command(WS, sid, view.command_id).state == "completed")
        # Errors come back as the owner raised them.
        with pytest.raises(ClientNotOperator):
            observer = await b.attach_client(WS, sid, "eve@example.com", "observer")
            await b.run_command(WS, sid, observer.client_id, "rm -rf /")
        detail = await b.terminate(WS, sid)
        assert (detail.status, detail.reason) == (Status.DISCONNECTED, "terminated")
        assert a.get_session(WS, sid).status is Status.DISCONNECTED


async def test_a_write_for_an_owner_that_does_not_answer_is_refused_and_never_made(
        redis: RedisServer) -> None:
    prefix = fresh_prefix("cluster")
    async with RedisStore(redis.url, prefix=prefix, node_id="node-b") as store_b, \
            Engine(CONFIG, store=store_b) as b:
        with trio.CancelScope() as crash:
            async with RedisStore(redis.url, prefix=prefix, node_id="node-a") as store_a, \
                    Engine(CONFIG, store=store_a) as a:
                link, _ = await hello(a, "mach_1")
                await until(lambda: b.retained_sessions == 1)
                crash.cancel()  # node-a dies; its lease lives on for its TTL
        with pytest.raises(OwnerUnreachable) as refused:
            await b.attach_client(WS, link.session_id, "ops@example.com", "operator")
        assert refused.value.details["node_id"] == "node-a"
        assert b.get_session(WS, link.session_id).attached_clients == []


async def test_one_event_log_the_same_ids_in_the_same_order_on_every_node(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        on_a, _ = await hello(a, "mach_1")
        on_b, _ = await hello(b, "mach_2")
        await on_a.goodbye(None)
        # A node's own events are in its log when the write is answered...
        assert ("session.disconnected", on_a.session_id) in [
            (e.type, e.session_id) for e in a.events_after(WS)]
        await on_b.report_command("uptime", 0)
        # ...and the other node's within the follow.
        await until(lambda: len(a.events_after(WS)) == len(b.events_after(WS)) == 6)
        assert a.events_after(WS) == b.events_after(WS)
        ids = [e.id for e in a.events_after(WS)]
        assert len(set(ids)) == 6
        # A cursor from one node resumes on the other.
        assert b.events_after(WS, ids[2]) == a.events_after(WS, ids[2])
        # Per session, in sequence order.
        for sid in (on_a.session_id, on_b.session_id):
            sequences = [e.sequence for e in b.events_after(WS) if e.session_id == sid]
            assert sequences == sorted(sequences)
        # A subscriber on b hears an event a makes.
        subscription = b.subscribe(WS)
        client = await a.attach_client(WS, on_b.session_id, "ops@example.com", "observer")
        with trio.fail_after(5):
            event = await subscription.__anext__()
        assert event.type == "session.client_attached"
        assert event.data.client is not None and event.data.client.client_id == client.client_id


async def test_two_hellos_for_one_machine_racing_on_two_nodes_leave_one_active_session(
        redis: RedisServer) -> None:
    async with two_nodes(redis) as (a, b):
        links = {}

        async def connect(node: Engine) -> None:
            link, transport = await hello(node, "mach_1")
            links[link.session_id] = transport

        def active(node: Engine) -> str | None:
            try:
                return node.machine_session(WS, "mach_1").session_id
            except NoActiveSession:
                return None

        def live(node: Engine) -> int:
            page = node.list_sessions(WS, machine_id="mach_1", limit=100)
            return len([s for s in page.data if not s.status.final])

        for _ in range(3):  # each round: both nodes say hello at once, neither sees the other
            links.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connect, a)
                nursery.start_soon(connect, b)
            assert len(links) == 2
            await until(lambda: active(a) == active(b) in links
                        and live(a) == live(b) == 1)
            # The other one ended as replaced (its socket closed), on whichever node ran it.
            [loser] = set(links) - {active(a)}
            await until(lambda loser=loser: links[loser].closed is not None)
            ending = [(e.type, e.data.reason) for e in a.events_after(WS, None, 1000)
                      if e.session_id == loser][-1]
            assert ending == ("session.disconnected", "replaced")
