"""Live session I/O across two nodes on one real redis-server, with real sockets: the agent on
one node, its people attached on the other. The stream on the other node replays from the
store and follows it without a seam; the session's changes, operators' frames and commands
cross between the nodes; output survives the node that took it in; an agent that moves to
the stream's node moves the streams along (they re-attach from their offsets)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio

from tether import attach, wire
from tether.engine import EngineConfig
from tether.http import HttpSettings
from tether.store import RedisStore

from ..conftest import fresh_prefix
from .conftest import ACME_KEY, connect_agent, running_server
from .test_attach import Writer, attached

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from tests.redis_server import RedisServer

    from .conftest import Server

SID_PATH = "/v1/sessions/{}"


@pytest.fixture
async def nodes(shared_redis: RedisServer) -> AsyncIterator[tuple[Server, Server]]:
    prefix = fresh_prefix("attach-cluster")
    async with AsyncExitStack() as stack:
        servers = []
        for node in ("node-a", "node-b"):
            store = await stack.enter_async_context(
                RedisStore(shared_redis.url, prefix=prefix, node_id=node, lease_ttl=1.5))
            servers.append(await stack.enter_async_context(
                running_server(EngineConfig(), HttpSettings(), store)))
        yield servers[0], servers[1]


async def eventually(check: Callable[[], Any]) -> None:
    """Until ``check()`` (a coroutine) is true: what one node writes reaches the other
    through Redis, within a round trip or two."""
    with trio.fail_after(10):
        while not await check():
            await trio.sleep(0.01)


def api_of(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=10,
                             headers={"Authorization": f"Bearer {ACME_KEY}"})


async def known_on(server: Server, session_id: str) -> None:
    async with api_of(server) as api:
        async def seen() -> bool:
            r = await api.get(SID_PATH.format(session_id))
            return r.status_code == 200 and r.json()["data"]["status"] == "CONNECTED"
        await eventually(seen)


async def test_a_stream_on_the_other_node_replays_and_follows_without_a_seam(
        nodes: tuple[Server, Server]) -> None:
    a, b = nodes
    async with connect_agent(a) as agent:
        sid = (await agent.hello()).session_id
        writer = Writer(agent)
        for i in range(40):
            await writer.write(f"build step {i}: ✓ ok\n")
        await known_on(b, sid)
        async with attached(b, sid, mode="observer", user_email="eve@acme.com",
                            offset=0) as (client, first):
            assert (first.offset, first.first_offset, first.status) == (0, 0, "CONNECTED")

            async def keep_writing() -> None:
                for i in range(300):
                    await writer.write(f"live {i} ✓\n", stream="stderr" if i % 7 else "stdout")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_writing)
            with trio.fail_after(10):
                await client.output_until(len(writer.written))
            assert client.data == writer.written  # every byte once, in order

            # The client is attached on the owner too, and reads agree on both nodes.
            async with api_of(a) as api_a, api_of(b) as api_b:
                detail = (await api_a.get(SID_PATH.format(sid))).json()["data"]
                assert [c["client_id"] for c in detail["attached_clients"]] == [first.client_id]
                total = len(writer.written)

                async def flushed() -> bool:
                    r = await api_b.get(f"/v1/sessions/{sid}/output",
                                        params={"offset": 0, "limit": 1048576})
                    return r.json()["data"]["total_bytes"] == total
                await eventually(flushed)
                page_b = (await api_b.get(f"/v1/sessions/{sid}/output",
                                          params={"offset": 0, "limit": 1048576})).json()
                page_a = (await api_a.get(f"/v1/sessions/{sid}/output",
                                          params={"offset": 0, "limit": 1048576})).json()
                assert page_a == page_b
                assert page_b["data"]["data"].encode() == writer.written

            # The session's end reaches the stream after its last output, and closes it.
            await writer.write("bye\n")
            await agent.send(wire.Goodbye(reason="done"))
            status = await client.until(attach.Status)
            assert (status.status, status.reason) == ("DISCONNECTED", "agent_goodbye")
            assert client.data == writer.written
            assert await client.close_code() == (1000, "session_ended")


async def test_an_operator_on_the_other_node_types_runs_commands_and_detaches(
        nodes: tuple[Server, Server]) -> None:
    a, b = nodes
    async with connect_agent(a) as agent:
        sid = (await agent.hello()).session_id
        writer = Writer(agent)
        await known_on(b, sid)
        async with attached(b, sid, mode="operator", user_email="op@acme.com") as (client, first):
            me = first.client_id
            await client.send(attach.Resize(cols=120, rows=40))
            await client.send(attach.Input(data="ls\r"))
            await client.send(attach.Signal(signal="SIGINT"))
            got = [await agent.receive() for _ in range(3)]
            assert got == [wire.Resize(cols=120, rows=40, client_id=me),
                           wire.Input(data="ls\r", client_id=me),
                           wire.Signal(signal="SIGINT", client_id=me)]

            await client.send(attach.RunCommand(command="uname -a"))
            accepted = await client.until(attach.CommandAccepted)
            run = await agent.receive()
            assert isinstance(run, wire.RunCommand)
            assert run.command_id == accepted.command_id
            await writer.write("Linux build-7\n", command_id=run.command_id)
            await agent.send(wire.CommandResult(command_id=run.command_id, exit_code=0,
                                                duration_ms=7))
            result = await client.until(attach.CommandResult)
            assert (result.command_id, result.exit_code) == (run.command_id, 0)
            assert client.data == writer.written  # the command's output came before its result

        # The stream closed: its client is detached on the owner.
        async with api_of(a) as api_a:
            async def detached() -> bool:
                r = await api_a.get(SID_PATH.format(sid))
                return r.json()["data"]["attached_clients"] == []
            await eventually(detached)


async def test_a_stream_follows_its_session_when_the_agent_moves_to_its_node(
        nodes: tuple[Server, Server]) -> None:
    a, b = nodes
    async with connect_agent(a) as agent:
        welcome = await agent.hello()
        sid = welcome.session_id
        writer = Writer(agent)
        await writer.write("on node a\n")
        await known_on(b, sid)
        async with attached(b, sid, mode="observer", user_email="eve@acme.com",
                            offset=0) as (client, _):
            await client.output_until(len(writer.written))
            async with connect_agent(b) as moved:
                # The agent resumes on node b: the server holds what node a wrote.
                again = await moved.hello(resume_token=welcome.resume_token)
                assert again.resumed and again.output_offset == len(writer.written)
                # The stream on b served the session from the store; now b runs it: it
                # ends, and re-attaches from its offset to b's own buffer.
                assert await client.close_code() == (1012, "session_moved")
                offset = client.next_offset
                assert offset == len(writer.written)
                writer.agent = moved
                await writer.write("on node b\n")
                async with attached(b, sid, mode="observer", user_email="eve@acme.com",
                                    offset=offset) as (back, first):
                    assert first.offset == offset
                    await back.output_until(len(writer.written))
                    assert client.data + back.data == writer.written


async def test_output_outlives_the_node_that_took_it_in(shared_redis: RedisServer) -> None:
    """A node stops; the next one on the same Redis tells the resuming agent where the
    output it holds ends, and serves all of it."""
    prefix = fresh_prefix("attach-restart")

    def node() -> Any:
        return RedisStore(shared_redis.url, prefix=prefix, node_id="node-a", lease_ttl=1.5)

    text = "".join(f"row {i} ✓\n" for i in range(500)).encode()
    async with (node() as store,
                running_server(EngineConfig(), HttpSettings(), store) as first,
                connect_agent(first) as agent,
                api_of(first) as api):
        welcome = await agent.hello()
        assert welcome.output_offset == 0
        await Writer(agent).write(text.decode())

        async def stored() -> bool:
            r = await api.get(f"/v1/sessions/{welcome.session_id}/output",
                              params={"offset": 0, "limit": 1})
            return r.json()["data"]["total_bytes"] == len(text)
        await eventually(stored)
    async with (node() as store,
                running_server(EngineConfig(), HttpSettings(), store) as second,
                connect_agent(second) as agent,
                api_of(second) as api):
        again = await agent.hello(resume_token=welcome.resume_token)
        assert (again.resumed, again.output_offset) == (True, len(text))
        # A resend of what the server has is skipped; the rest is appended.
        await agent.send(wire.Output(offset=len(text) - 4, data="✓\nmore\n"))

        async def whole() -> bool:
            r = await api.get(f"/v1/sessions/{welcome.session_id}/output",
                              params={"offset": 0, "limit": 1048576})
            return r.json()["data"]["data"].encode() == text + b"more\n"
        await eventually(whole)
        async with attached(second, welcome.session_id, mode="observer",
                            user_email="eve@acme.com", offset=0) as (client, _):
            await client.output_until(len(text) + 5)
            assert client.data == text + b"more\n"
