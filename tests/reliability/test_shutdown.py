"""Graceful shutdown of a real ``tether serve`` process with a real agent, feed and webhook.

On SIGTERM the server stops accepting, tells its agents (``error`` frame ``server_shutdown``,
close 1001), ends their sessions (reason ``server_shutdown``), and their events reach the event
feed and a webhook receiver before the process exits, within ``--drain-timeout``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from functools import partial

import httpx
import trio
import trio_websocket

from tether import wire

from ..serving import free_port, serve_process, wait_ready

API = "cmd_shutdown_test_key_0123456789"
AGENT = "agt_shutdown_test_token_0123456789"


class Receiver:
    """A minimal HTTP/1.1 webhook receiver on 127.0.0.1: records bodies, answers 204."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.got = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await stream.receive_some()
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some()
                body, buffer = buffer[:length], buffer[length:]
                self.bodies.append(json.loads(body))
                self.got.set()
                await stream.send_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except trio.BrokenResourceError:
            return


async def test_sigterm_tells_agents_ends_sessions_and_flushes_events(tmp_path):
    port = free_port()
    receiver = Receiver()
    drain = 5.0
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, receiver.handle, 0,
                                                host="127.0.0.1"))
        hook_port = listeners[0].socket.getsockname()[1]
        env = {**os.environ, "TETHER_API_KEYS": f"{API}=ws_s", "TETHER_AGENT_TOKENS":
               f"{AGENT}=ws_s"}
        async with serve_process(
            "--port", str(port), "--keys", str(tmp_path / "keys.json"), "--log-level",
            "WARNING", "--allow-private-webhooks", "--drain-timeout", str(drain), env=env,
        ) as proc:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=10,
                                         headers={"Authorization": f"Bearer {API}"}) as api:
                await wait_ready(api)
                r = await api.post("/v1/webhooks", json={
                    "url": f"http://127.0.0.1:{hook_port}/hook",
                    "events": ["session.disconnected"]})
                assert r.status_code == 201, r.text
                # one live agent, one PENDING session waiting for its agent
                async with trio_websocket.open_websocket_url(
                    f"ws://127.0.0.1:{port}/v1/agent",
                    extra_headers=[(b"authorization", f"Bearer {AGENT}".encode())],
                ) as ws:
                    await ws.send_message(wire.encode(wire.Hello(
                        machine_id="m1", machine_hostname="h1")).decode())
                    welcome = wire.decode_server_frame(await ws.get_message())
                    assert isinstance(welcome, wire.Welcome)
                    r = await api.post("/v1/sessions", json={"machine_id": "m2",
                                                             "machine_hostname": "h2"})
                    pending = r.json()["data"]["session_id"]

                    started = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    frames = []
                    with trio.fail_after(drain):
                        try:
                            while True:
                                frames.append(wire.decode_server_frame(await ws.get_message()))
                        except trio_websocket.ConnectionClosed as closed:
                            reason = closed.reason
                    assert any(isinstance(f, wire.Error) and f.code == "server_shutdown"
                               for f in frames), frames
                    assert (reason.code, reason.reason) == (1001, "server_shutdown")
                # the webhook receiver gets both sessions' terminal events before the exit
                with trio.fail_after(drain):
                    while len(receiver.bodies) < 2:
                        receiver.got = trio.Event()
                        await receiver.got.wait()
            with trio.fail_after(drain + 5):
                code = await proc.wait()
            elapsed = time.monotonic() - started
        nursery.cancel_scope.cancel()
    assert code == 0, proc.stderr
    assert elapsed < drain + 3, elapsed
    ended = {b["data"]["session_id"]: b["data"] for b in receiver.bodies}
    assert set(ended) == {welcome.session_id, pending}
    for data in ended.values():
        assert data["status"] == "DISCONNECTED" and data["reason"] == "server_shutdown"
    out = os.environ.get("TETHER_RELIABILITY_REPORT")
    if out:
        with open(f"{out}.shutdown.json", "w") as f:
            json.dump({"exit_code": code, "seconds_to_exit": round(elapsed, 2),
                       "drain_timeout": drain, "agent_close": [reason.code, reason.reason],
                       "sessions_ended_server_shutdown": len(ended),
                       "terminal_events_at_webhook": len(receiver.bodies)}, f)


async def test_drain_flushes_the_feed_and_stops_accepting(tmp_path):
    """A live event-feed reader gets every session's terminal event, in sequence, before the
    stream ends; the port refuses connections once shutdown began; the exit is in time."""
    port = free_port()
    env = {**os.environ, "TETHER_API_KEYS": f"{API}=ws_s", "TETHER_AGENT_TOKENS": ""}
    async with serve_process(
        "--port", str(port), "--keys", str(tmp_path / "keys.json"), "--log-level", "WARNING",
        "--drain-timeout", "3", env=env,
    ) as proc:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10,
                                     headers={"Authorization": f"Bearer {API}"}) as api:
            await wait_ready(api)
            async with api.stream("GET", "/v1/events/stream") as stream:
                for n in range(3):
                    await api.post("/v1/sessions", json={"machine_id": f"m{n}",
                                                         "machine_hostname": "h"})
                proc.send_signal(signal.SIGTERM)
                seen: dict[str, list[dict]] = {}
                with trio.fail_after(5):
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            event = json.loads(line[6:])
                            seen.setdefault(event["data"]["session_id"], []).append(event)
                            if sum(e["type"] == "session.disconnected"
                                   for events in seen.values() for e in events) == 3:
                                break
            for events in seen.values():
                assert [e["type"] for e in events] == ["session.created",
                                                       "session.disconnected"]
                assert events[-1]["data"]["reason"] == "server_shutdown"
            # no new connections are accepted once shutdown began
            with trio.fail_after(5):
                while True:
                    try:
                        await api.get("/healthz")
                    except httpx.TransportError:
                        break
                    await trio.sleep(0.05)
        with trio.fail_after(8):
            assert await proc.wait() == 0


async def test_idle_clients_and_event_streams_do_not_hold_the_exit(tmp_path):
    """An idle keep-alive REST client is closed at once and an event stream ends once its last
    events are out: the exit does not wait for the whole ``--drain-timeout``."""
    port = free_port()
    drain = 10.0
    env = {**os.environ, "TETHER_API_KEYS": f"{API}=ws_s", "TETHER_AGENT_TOKENS": ""}
    async with serve_process(
        "--port", str(port), "--keys", str(tmp_path / "keys.json"), "--log-level", "WARNING",
        "--drain-timeout", str(drain), env=env,
    ) as proc:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {API}"}
        async with httpx.AsyncClient(base_url=base, timeout=20, headers=headers) as idle, \
                httpx.AsyncClient(base_url=base, timeout=20, headers=headers) as feed:
            await wait_ready(idle)
            r = await idle.post("/v1/sessions", json={"machine_id": "m", "machine_hostname": "h"})
            assert r.status_code == 201  # this client now holds an idle keep-alive connection
            types = []
            async with feed.stream("GET", "/v1/events/stream", params={"after": ""}) as stream:
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                async for line in stream.aiter_lines():  # ends when the server ends it
                    if line.startswith("event: "):
                        types.append(line[7:])
            assert types == ["session.disconnected"]
            with trio.fail_after(drain):
                code = await proc.wait()
            elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 3, f"exit took {elapsed:.1f} s of a {drain} s drain"
