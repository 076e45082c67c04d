"""Session output under a real fault: ``tether serve --redis`` node processes, the agent on one,
an observer's attach stream on the other, and the agent's node killed (``kill -9``) while the
agent writes. The agent resumes on the surviving node, resends from the welcome's
``output_offset`` what Redis lacks, and goes on; the observer re-attaches from its offset
whenever its stream closes. Not a byte may be lost or repeated, at the observer or in the
output API."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import trio
import trio_websocket

from tether import attach, wire

from ..serving import open_agent, say_hello
from .test_cluster_faults import AGENT, API, api, cluster

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from tests.redis_server import RedisServer

    from .test_cluster_faults import Node

#: Frames of output are split to stay well under the agent frame limit (64 KiB).
PIECE = 16 * 1024


class Observer:
    """An observer that re-attaches from its offset whenever its stream closes, until the
    session ends."""

    def __init__(self, node: Node, session_id: str) -> None:
        self.node = node
        self.session_id = session_id
        self.data = b""
        self.reattached = 0
        self.ended = trio.Event()

    def _url(self) -> str:
        return (self.node.url.replace("http", "ws", 1)
                + f"/v1/sessions/{self.session_id}/attach"
                + f"?mode=observer&user_email=eve@acme.com&offset={len(self.data)}")

    async def run(self) -> None:
        while not self.ended.is_set():
            try:
                async with trio_websocket.open_websocket_url(
                        self._url(), extra_headers=[(b"authorization",
                                                     f"Bearer {API}".encode())]) as ws:
                    while True:
                        frame = attach.decode_server_frame(await ws.get_message())
                        if isinstance(frame, attach.Attached):
                            assert frame.offset == len(self.data), (frame, len(self.data))
                        elif isinstance(frame, attach.Output):
                            assert frame.offset == len(self.data), (frame.offset, len(self.data))
                            self.data += frame.data.encode()
                        elif isinstance(frame, attach.Status) and frame.status == "DISCONNECTED":
                            self.ended.set()
                        else:
                            assert not isinstance(frame, attach.Gap), frame
            except trio_websocket.ConnectionRejected as refused:
                # GRACE_PERIOD while the agent resumes (409), or the killed owner not
                # answering a forwarded attach (503): try again shortly
                assert refused.status_code in (409, 503), refused.body
            except trio_websocket.ConnectionClosed as closed:
                assert closed.reason.code in (1000, 1012, 1006), closed.reason
            except OSError:
                pass  # the node it was on went away mid-handshake
            if not self.ended.is_set():
                self.reattached += 1
                await trio.sleep(0.05)


async def send_output(ws: trio_websocket.WebSocketConnection, offset: int, data: bytes) -> None:
    """``data`` (whole lines of UTF-8) from ``offset``, in frames under the frame limit."""
    text = data.decode()
    at = offset
    while text:
        piece, text = text[:PIECE // 4], text[PIECE // 4:]
        await ws.send_message(wire.encode(wire.Output(offset=at, data=piece)).decode())
        at += len(piece.encode())


async def test_output_survives_kill_9_of_the_node_that_took_it_in(
        redis: RedisServer, tmp_path: Path) -> None:
    async with cluster(redis, tmp_path, "node-a", "node-b") as (a, b):
        written = b""
        lines = iter(range(1_000_000))

        def more(n: int) -> bytes:
            return "".join(f"line {next(lines)}: ✓ héllo wörld {'=' * 40}\n"
                           for _ in range(n)).encode()

        async with trio.open_nursery() as nursery:
            async with open_agent(a.port, AGENT) as ws:
                welcome = await say_hello(ws, machine_id="m-out", machine_hostname="build-7")
                sid = welcome.session_id
                assert welcome.output_offset == 0
                observer = Observer(b, sid)
                nursery.start_soon(observer.run)
                for _ in range(20):  # ~450 KB over a second or two, read live on node b
                    chunk = more(300)
                    await send_output(ws, len(written), chunk)
                    written += chunk
                    await trio.sleep(0.02)
                # Killed mid-stream: what node a took in but had not written yet is lost
                # with it; the agent still has it.
                chunk = more(300)
                await send_output(ws, len(written), chunk)
                written += chunk
                await a.kill()

            async with open_agent(b.port, AGENT) as again:
                resumed = await say_hello(again, machine_id="m-out", machine_hostname="build-7",
                                          token=welcome.resume_token)
                assert resumed.resumed
                stored = resumed.output_offset
                print(f"written {len(written)} bytes; Redis had {stored} at the kill")
                assert 0 < stored <= len(written)
                await send_output(again, stored, written[stored:])
                for _ in range(10):
                    chunk = more(300)
                    await send_output(again, len(written), chunk)
                    written += chunk
                # The observer's stream moved with the session (1012): it re-attaches from its
                # offset and catches up; then the agent leaves and the stream says so.
                with trio.fail_after(30):
                    while len(observer.data) < len(written):
                        await trio.sleep(0.05)
                await again.send_message(wire.encode(wire.Goodbye()).decode())
                with trio.fail_after(30):
                    await observer.ended.wait()

        # Everything, once and in order (it attached before the first byte).
        assert observer.data == written, (len(observer.data), len(written))
        async with api(b.url) as client:
            r = await client.get(f"/v1/sessions/{sid}/output",
                                 params={"offset": 0, "limit": 1})
            page = r.json()["data"]
            assert page["total_bytes"] == len(written)
            tail_from = page["first_offset"]
            got = b""
            while tail_from + len(got) < len(written):
                r = await client.get(f"/v1/sessions/{sid}/output",
                                     params={"offset": tail_from + len(got), "limit": 1048576})
                got += r.json()["data"]["data"].encode()
            assert got == written[tail_from:]
        print(json.dumps({"bytes": len(written), "observer_reattached": observer.reattached}))


async def hold_stream(node: Node, session_id: str, user_email: str,
                      attached: trio.Event) -> None:
    """An observer's attach stream on ``node`` (it attaches its own client), held open and
    read until its node goes away."""
    url = (node.url.replace("http", "ws", 1) + f"/v1/sessions/{session_id}/attach"
           + f"?mode=observer&user_email={user_email}")
    try:
        async with trio_websocket.open_websocket_url(
                url, extra_headers=[(b"authorization", f"Bearer {API}".encode())]) as ws:
            first = attach.decode_server_frame(await ws.get_message())
            assert isinstance(first, attach.Attached), first
            attached.set()
            while True:
                await ws.get_message()
    except (trio_websocket.ConnectionClosed, OSError):
        pass  # its node was killed


async def clients_of(node: Node, session_id: str) -> list[str]:
    async with api(node.url) as client:
        r = await client.get(f"/v1/sessions/{session_id}")
        assert r.status_code == 200, r.text
        return sorted(c["user_email"] for c in r.json()["data"]["attached_clients"])


async def detached_as(node: Node, session_id: str) -> dict[str, str]:
    """Each detached client's user, and the reason of its ``session.client_detached``."""
    found: dict[str, str] = {}
    async with api(node.url) as client:
        r = await client.get("/v1/events", params={"limit": 1000})
        for event in r.json()["data"]:
            data = event["data"]
            if (event["type"] == "session.client_detached"
                    and data["session_id"] == session_id):
                found[data["client"]["user_email"]] = data["reason"]
    return found


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    with trio.fail_after(20):
        while not await check():
            await trio.sleep(0.1)


async def test_a_streams_client_goes_with_the_node_serving_the_stream(
        redis: RedisServer, tmp_path: Path) -> None:
    """A client that an attach stream attached lives as long as its stream. When the node
    serving the stream is killed, nothing can tell the session's owner the stream is gone;
    the owner detaches the client (``stream_lost``) once that node's lease lapses: whether
    the node ran another node's stream (eve's, on b) or the session too (bob's, on a, whose
    session node c takes over when the agent resumes there)."""
    async with cluster(redis, tmp_path, "node-a", "node-b", "node-c") as (a, b, c), \
            trio.open_nursery() as nursery:
        async with open_agent(a.port, AGENT) as ws:
            welcome = await say_hello(ws, machine_id="m-held", machine_hostname="build-7")
            sid = welcome.session_id
            for node, user in ((b, "eve@acme.com"), (a, "bob@acme.com")):
                attached = trio.Event()
                nursery.start_soon(hold_stream, node, sid, user, attached)
                with trio.fail_after(10):
                    await attached.wait()
            await until(lambda: _equals(clients_of(c, sid), ["bob@acme.com", "eve@acme.com"]))

            await b.kill()
            await until(lambda: _equals(clients_of(c, sid), ["bob@acme.com"]))
            assert await detached_as(c, sid) == {"eve@acme.com": "stream_lost"}
        # The agent's socket closed (GRACE_PERIOD); then its node dies with bob's stream.
        await a.kill()
        async with open_agent(c.port, AGENT) as again:
            resumed = await say_hello(again, machine_id="m-held", machine_hostname="build-7",
                                      token=welcome.resume_token)
            assert resumed.resumed and resumed.session_id == sid
            await until(lambda: _equals(clients_of(c, sid), []))
            assert await detached_as(c, sid) == {"eve@acme.com": "stream_lost",
                                                 "bob@acme.com": "stream_lost"}
        nursery.cancel_scope.cancel()


async def _equals(found: Awaitable[list[str]], expected: list[str]) -> bool:
    return await found == expected
