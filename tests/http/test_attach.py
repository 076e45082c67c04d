"""Live session I/O end to end, with real sockets: agents write output, the output API reads it,
and attach streams replay it, go live, carry operators' frames to the agent and refuse
observers', and survive agent drops and slow clients without a byte lost or repeated."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio_websocket

from tether import attach, wire

from .conftest import ACME_KEY, OTHER_KEY, Agent, connect_agent, poll

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .conftest import Server


class Client:
    """An attach stream's client."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.data = b""  # the output received, in order
        self.next_offset: int | None = None  # where the next output must start

    async def send(self, frame: attach.ClientFrame) -> None:
        await self.ws.send_message(attach.encode(frame).decode())

    async def receive(self) -> Any:
        frame = attach.decode_server_frame(await self.ws.get_message())
        if isinstance(frame, attach.Output):
            if self.next_offset is not None:  # no byte missing, none twice
                assert frame.offset == self.next_offset, (frame.offset, self.next_offset)
            self.data += frame.data.encode()
            self.next_offset = frame.offset + len(frame.data.encode())
        return frame

    async def until(self, kind: type, skip_output: bool = True) -> Any:
        while True:
            frame = await self.receive()
            if isinstance(frame, kind):
                return frame
            assert skip_output and isinstance(frame, attach.Output | attach.Status), frame

    async def output_until(self, offset: int) -> None:
        while self.next_offset is None or self.next_offset < offset:
            frame = await self.receive()
            assert isinstance(frame, attach.Output | attach.Status), frame

    async def close_code(self) -> tuple[int, str | None]:
        try:
            while True:
                await self.receive()
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason


def attach_url(server: Server, session_id: str, **query: Any) -> str:
    base = server.url.replace("http", "ws", 1) + f"/v1/sessions/{session_id}/attach"
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{base}?{params}" if params else base


@asynccontextmanager
async def attached(server: Server, session_id: str, key: str = ACME_KEY,
                   **query: Any) -> AsyncIterator[tuple[Client, attach.Attached]]:
    async with trio_websocket.open_websocket_url(
        attach_url(server, session_id, **query),
        extra_headers=[(b"authorization", f"Bearer {key}".encode())], disconnect_timeout=5,
    ) as ws:
        client = Client(ws)
        first = await client.receive()
        assert isinstance(first, attach.Attached), first
        client.next_offset = first.offset
        yield client, first


async def refused(server: Server, session_id: str, key: str | None = ACME_KEY,
                  **query: Any) -> tuple[int, dict[str, Any]]:
    headers = [] if key is None else [(b"authorization", f"Bearer {key}".encode())]
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(attach_url(server, session_id, **query),
                                                     extra_headers=headers):
            pass
    return rejected.value.status_code, json.loads(rejected.value.body)


class Writer:
    """An agent's side of the output stream: what it wrote, and where it is."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.written = b""

    async def write(self, text: str, stream: str = "stdout", command_id: str | None = None,
                    offset: int | None = None) -> None:
        start = len(self.written) if offset is None else offset
        await self.agent.send(wire.Output(offset=start, data=text, stream=stream,  # type: ignore[arg-type]
                                          command_id=command_id))
        self.written = self.written[:start] + text.encode() if offset is not None else (
            self.written + text.encode())


async def settled(api: Any, session_id: str, total: int) -> dict[str, Any]:
    """The output API once it has ``total`` bytes (frames travel on another connection)."""
    body: dict[str, Any] = await poll(
        api, f"/v1/sessions/{session_id}/output",
        lambda b: b.get("data", {}).get("total_bytes") == total)
    return body["data"]


# -- the output API --------------------------------------------------------------------------


@pytest.mark.engine(output_buffer_bytes=16)
async def test_output_is_read_by_offset_and_gone_past_retention(server: Server, api: Any) -> None:
    async with connect_agent(server) as agent:
        welcome = await agent.hello()
        assert welcome.output_offset == 0
        sid = welcome.session_id
        writer = Writer(agent)
        await writer.write("0123456789")
        await writer.write("été\n", "stderr")  # 6 bytes: 16 in all
        data = await settled(api, sid, 16)
        assert data == {"session_id": sid, "offset": 0, "data": "0123456789été\n",
                        "next_offset": 16, "first_offset": 0, "total_bytes": 16,
                        "has_more": False}
        page = (await api.get(f"/v1/sessions/{sid}/output?offset=10&limit=2")).json()["data"]
        assert (page["data"], page["next_offset"], page["has_more"]) == ("é", 12, True)
        await writer.write("abcd")  # 20 bytes: the first 4 are dropped
        await settled(api, sid, 20)
        gone = await api.get(f"/v1/sessions/{sid}/output?offset=2")
        assert gone.status_code == 410
        assert gone.json()["error"]["code"] == "output_gone"
        assert gone.json()["error"]["details"]["first_offset"] == 4
        past = (await api.get(f"/v1/sessions/{sid}/output?offset=99")).json()["data"]
        assert (past["offset"], past["data"], past["next_offset"]) == (20, "", 20)
        for query in ("offset=-1", "limit=0", f"limit={1024 * 1024 + 1}",
                      "offset=1_0", "limt=5"):
            response = await api.get(f"/v1/sessions/{sid}/output?{query}")
            assert response.status_code == 400, query
            assert response.json()["error"]["code"] == "invalid_parameter"


async def test_a_gap_is_answered_with_the_offset_expected(server: Server, api: Any) -> None:
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Output(offset=0, data="abc"))
        await agent.send(wire.Output(offset=10, data="later"))
        frame = await agent.receive()
        assert frame == wire.Error(code="output_gap", message=frame.message, expected_offset=3)
        for _ in range(5):  # gaps are not violations: the socket stays open
            await agent.send(wire.Output(offset=99, data="x"))
            assert (await agent.receive()).code == "output_gap"
        await agent.send(wire.Output(offset=3, data="def"))
        assert (await settled(api, sid, 6))["data"] == "abcdef"


@pytest.mark.http(max_frame_bytes=1024)
async def test_output_frames_are_held_to_the_frame_limit(server: Server, api: Any) -> None:
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Output(offset=0, data="x" * 2000))
        assert (await agent.receive()).code == "frame_too_large"
        await agent.send(wire.Output(offset=0, data="ok"))
        assert (await settled(api, sid, 2))["data"] == "ok"


# -- refusals before the upgrade --------------------------------------------------------------


async def test_streams_are_refused_in_the_envelope_before_the_upgrade(
    server: Server, api: Any
) -> None:
    pending = (await api.post("/v1/sessions", json={"machine_id": "mach_p",
                                                    "machine_hostname": "h"})).json()["data"]
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        who = {"mode": "observer", "user_email": "bob@acme.io"}
        cases = [
            ((sid, None), who, 401, "unauthorized"),
            ((sid, OTHER_KEY), who, 404, "session_not_found"),
            (("sess_nope", ACME_KEY), who, 404, "session_not_found"),
            ((pending["session_id"], ACME_KEY), who, 409, "session_not_active"),
            ((sid, ACME_KEY), {"mode": "boss", "user_email": "b@acme.io"}, 400,
             "invalid_parameter"),
            ((sid, ACME_KEY), {"mode": "observer"}, 400, "invalid_parameter"),
            ((sid, ACME_KEY), {**who, "offset": "x"}, 400, "invalid_parameter"),
            ((sid, ACME_KEY), {**who, "nope": "1"}, 400, "invalid_parameter"),
            ((sid, ACME_KEY), {"client_id": "cli_nope"}, 404, "client_not_found"),
        ]
        for (session_id, key), query, status, code in cases:
            got = await refused(server, session_id, key, **query)
            assert (got[0], got[1]["error"]["code"]) == (status, code), (query, got)
        assert (await api.get(f"/v1/sessions/{sid}")).json()["data"]["attached_clients"] == []


# -- replay and live ---------------------------------------------------------------------------


@pytest.mark.engine(output_buffer_bytes=100)
async def test_replay_from_zero_the_middle_the_default_and_a_dropped_offset(
    server: Server, api: Any
) -> None:
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        writer = Writer(agent)
        for i in range(10):
            await writer.write(f"line {i:02d}\n")  # 8 bytes each: 80
        await settled(api, sid, 80)
        who = {"mode": "observer", "user_email": "bob@acme.io"}
        async with attached(server, sid, offset=0, **who) as (client, first):
            assert (first.offset, first.first_offset, first.status) == (0, 0, "CONNECTED")
            await client.output_until(80)
            assert client.data == writer.written
        async with attached(server, sid, offset=44, **who) as (client, first):
            await client.output_until(80)
            assert client.data == writer.written[44:]
        async with attached(server, sid, **who) as (client, first):  # the last 64 KiB: all
            await client.output_until(80)
            assert client.data == writer.written
        for i in range(10, 15):
            await writer.write(f"line {i:02d}\n")  # 120 in all: the first 20 are gone
        await settled(api, sid, 120)
        async with attached(server, sid, offset=8, **who) as (client, first):
            assert first.offset == 20
            gap = await client.receive()
            assert (gap.from_, gap.to) == (8, 20)
            await client.output_until(120)
            assert client.data == writer.written[20:]


async def test_replay_and_live_join_under_concurrent_writes(server: Server, api: Any) -> None:
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        writer = Writer(agent)
        lines = 600
        moments = {0: trio.Event(), 200: trio.Event(), 400: trio.Event()}
        done = trio.Event()
        received: list[bytes] = []

        async def write() -> None:
            for i in range(lines):
                if i in moments:
                    moments[i].set()
                await writer.write(f"{i:05d} ünïcode ✓\n")
                if i % 10 == 0:
                    await trio.sleep(0)
            done.set()

        async def watch(moment: trio.Event) -> None:
            await moment.wait()  # attach from 0 while the agent is writing
            async with attached(server, sid, offset=0, mode="observer",
                                user_email="o@acme.io") as (client, _):
                await done.wait()
                await client.output_until(len(writer.written))
                received.append(client.data)

        async with trio.open_nursery() as nursery:
            for moment in moments.values():
                nursery.start_soon(watch, moment)
            nursery.start_soon(write)
        assert received == [writer.written] * 3


async def test_an_agent_drop_and_resume_loses_and_repeats_nothing(
    server: Server, api: Any
) -> None:
    async with connect_agent(server) as agent:
        welcome = await agent.hello()
        sid = welcome.session_id
        writer = Writer(agent)
        await writer.write("before the drop\n")
        async with attached(server, sid, offset=0, mode="observer",
                            user_email="o@acme.io") as (client, _):
            await client.output_until(len(writer.written))
            await agent.ws.aclose()  # the agent's connection drops
            status = await client.until(attach.Status)
            assert (status.status, status.reason) == ("GRACE_PERIOD", "transport_closed")
            async with connect_agent(server) as again:
                back = await again.hello(resume_token=welcome.resume_token)
                assert back.output_offset == len(writer.written)
                status = await client.until(attach.Status)
                assert (status.status, status.reason) == ("CONNECTED", "resumed")
                # the agent does not know what was taken: it resends from an older offset
                writer.agent = again
                await writer.write("the drop\nafter it\n", offset=len(b"before "))
                await client.output_until(len(writer.written))
                assert client.data == b"before the drop\nafter it\n"
                await again.send(wire.Goodbye(reason="done"))
                status = await client.until(attach.Status)
                assert (status.status, status.reason) == ("DISCONNECTED", "agent_goodbye")
                assert await client.close_code() == (1000, "session_ended")
        page = (await api.get(f"/v1/sessions/{sid}/output")).json()["data"]
        assert page["data"] == "before the drop\nafter it\n"  # kept after the end


# -- operators and observers -------------------------------------------------------------------


async def test_operators_reach_the_agent_and_observers_are_refused(
    server: Server, api: Any
) -> None:
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        async with attached(server, sid, mode="observer", user_email="bob@acme.io") as (
                observer, seen), attached(server, sid, mode="operator",
                                          user_email="alice@acme.io") as (operator, me):
            assert (seen.mode, me.mode) == ("observer", "operator")
            for frame in (attach.Input(data="rm -rf /\r"), attach.RunCommand(command="reboot"),
                          attach.Resize(cols=1, rows=1), attach.Signal(signal="SIGKILL")):
                await observer.send(frame)
                refusal = await observer.until(attach.Error)
                assert refusal.code == "forbidden"
            await operator.send(attach.Resize(cols=120, rows=40))
            await operator.send(attach.Input(data="ls\r"))
            await operator.send(attach.Signal(signal="SIGINT"))
            await operator.send(attach.RunCommand(command="make test"))
            accepted = await operator.until(attach.CommandAccepted)
            # the agent gets exactly the operator's frames, in order: none of the observer's
            assert await agent.receive() == wire.Resize(cols=120, rows=40, client_id=me.client_id)
            assert await agent.receive() == wire.Input(data="ls\r", client_id=me.client_id)
            assert await agent.receive() == wire.Signal(signal="SIGINT", client_id=me.client_id)
            run = await agent.receive()
            assert (run.command_id, run.command) == (accepted.command_id, "make test")
            writer = Writer(agent)
            await writer.write("prompt$ ")
            await writer.write("ok\n", command_id=run.command_id)
            await writer.write("warn\n", "stderr", command_id=run.command_id)
            await agent.send(wire.CommandResult(command_id=run.command_id, exit_code=0,
                                                duration_ms=1234))
            for client in (operator, observer):
                result = await client.until(attach.CommandResult)
                assert (result.command_id, result.exit_code) == (run.command_id, 0)
                assert client.data == writer.written
            await operator.send(attach.Resize(cols=0, rows=5))
            assert (await operator.until(attach.Error)).code == "invalid_parameter"
            await operator.ws.send_message('{"type": "input"}')
            assert (await operator.until(attach.Error)).code == "invalid_frame"
        view = (await api.get(f"/v1/sessions/{sid}/commands/{run.command_id}")).json()["data"]
        assert (view["stdout"], view["stderr"], view["output_truncated"], view["duration_ms"],
                view["state"]) == ("ok\n", "warn\n", False, 1234, "completed")
        assert view["started_at"] and view["finished_at"]
        # closing a stream detaches the client it attached
        await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["attached_clients"] == [])


async def test_a_stream_for_a_client_attached_by_the_api(server: Server, api: Any) -> None:
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        client = (await api.post(f"/v1/sessions/{sid}/clients",
                                 json={"user_email": "alice@acme.io", "mode": "operator"})
                  ).json()["data"]
        async with attached(server, sid, client_id=client["client_id"]) as (stream, first):
            assert (first.client_id, first.mode) == (client["client_id"], "operator")
            await stream.send(attach.Input(data="x"))
            assert await agent.receive() == wire.Input(data="x", client_id=client["client_id"])
        # the client stays attached: the stream did not attach it; detaching it ends a stream
        detail = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
        assert [c["client_id"] for c in detail["attached_clients"]] == [client["client_id"]]
        async with attached(server, sid, client_id=client["client_id"]) as (stream, _):
            deleted = await api.delete(f"/v1/sessions/{sid}/clients/{client['client_id']}")
            assert deleted.status_code == 204
            assert await stream.close_code() == (1000, "client_detached")


@pytest.mark.http(stream_queue_bytes=256 * 1024, agent_frame_rate=0)
@pytest.mark.engine(output_buffer_bytes=64 * 1024 * 1024)
async def test_a_slow_client_is_cut_off_and_re_attaches_from_its_offset(
    server: Server, api: Any
) -> None:
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        writer = Writer(agent)
        piece = "y" * 60_000
        async with attached(server, sid, offset=0, mode="observer",
                            user_email="slow@acme.io") as (slow, _), attached(
                server, sid, offset=0, mode="observer", user_email="fast@acme.io") as (fast, _):
            # The slow client reads nothing while the agent writes ~24 MB, each piece once the
            # fast client has it: were the slow one slowing the agent or the others, this
            # lockstep would stall.
            for _ in range(400):
                await writer.write(piece)
                await fast.output_until(len(writer.written))
            assert fast.data == writer.written
            assert await slow.close_code() == (4008, "slow_consumer")
            assert slow.next_offset is not None
            resume_at = slow.next_offset
        assert len(slow.data) < len(writer.written)
        async with attached(server, sid, offset=resume_at, mode="observer",
                            user_email="slow@acme.io") as (again, first):
            assert first.offset == resume_at
            await again.output_until(len(writer.written))
            assert slow.data + again.data == writer.written


@pytest.mark.http(max_frame_bytes=1024, agent_frame_rate=20, agent_frame_burst=5)
async def test_the_frame_limits_hold_for_output_and_for_operators(server: Server,
                                                                  api: Any) -> None:
    """The agent socket's size and rate limits apply to output frames as to any frame, and
    an operator's stream is held to the same ones."""
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        writer = Writer(agent)
        began = trio.current_time()
        for _ in range(25):  # 5 at once, then 20 a second: the socket is read no faster
            await writer.write("0123456789")
        with trio.fail_after(10):  # real time: the limit is the socket's, by trio's clock
            while (await api.get(f"/v1/sessions/{sid}/output")).json()["data"][
                    "total_bytes"] < 250:
                await trio.sleep(0.05)
        assert trio.current_time() - began >= (25 - 5) / 20 * 0.9
        async with attached(server, sid, mode="operator", user_email="op@acme.com") as (
                operator, _):
            await operator.send(attach.Input(data="x" * 2000))
            error = await operator.until(attach.Error)
            assert (error.code, "1024" in error.message) == ("invalid_frame", True)
            began = trio.current_time()
            for i in range(25):
                await operator.send(attach.Input(data=str(i)))
            got = [await agent.receive() for _ in range(25)]
            assert [g.data for g in got] == [str(i) for i in range(25)]
            assert trio.current_time() - began >= (25 - 5) / 20 * 0.9
