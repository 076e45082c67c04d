"""A real ``tether serve`` process for a test: a free port on 127.0.0.1, waiting until it
answers, and never left running (killed at the end if the test did not stop it)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
import trio
import trio_websocket

from tether import wire

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(client: httpx.AsyncClient, timeout: float = 30) -> httpx.Response:
    """Poll ``/healthz`` until the server answers; its answer."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await client.get("/healthz")
            except httpx.TransportError:
                await trio.sleep(0.05)


@asynccontextmanager
async def serve_process(
    *args: str, env: Mapping[str, str], tether: str | None = None
) -> AsyncIterator[trio.Process]:
    """``tether serve ARGS`` (``tether``: that executable; default this interpreter's
    ``python -m tether.cli``) with pipes for stdout and stderr."""
    command = [tether] if tether else [sys.executable, "-m", "tether.cli"]
    proc = await trio.lowlevel.open_process(
        [*command, "serve", *args], env=dict(env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def raw_request(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP client would to the server at ``url``; the answer's status, headers
    (lower-cased names) and body (it must carry a ``Content-Length``)."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    answer = b""
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(10):
            while b"\r\n\r\n" not in answer:
                answer += await stream.receive_some()
            head, _, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            assert length, head
            while len(body) < int(length.group(1)):
                body += await stream.receive_some()
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


@asynccontextmanager
async def open_agent(port: int, token: str) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A WebSocket to the agent endpoint of the server on ``port``, with an agent token."""
    async with trio_websocket.open_websocket_url(
        f"ws://127.0.0.1:{port}/v1/agent",
        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
    ) as ws:
        yield ws


async def say_hello(ws: trio_websocket.WebSocketConnection, machine_id: str = "m1",
                    machine_hostname: str = "h1", token: str | None = None) -> wire.Welcome:
    """Send a hello (with a resume token, if given); the welcome."""
    await ws.send_message(wire.encode(wire.Hello(
        machine_id=machine_id, machine_hostname=machine_hostname, resume_token=token)).decode())
    welcome = wire.decode_server_frame(await ws.get_message())
    assert isinstance(welcome, wire.Welcome), welcome
    return welcome
