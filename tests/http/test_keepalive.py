"""Idle keep-alive connections close on time and at shutdown; busy requests are drained.

Raw sockets, so what the server does with the connection (answer, close) is seen directly.
"""

from __future__ import annotations

from functools import partial

import trio

from tether.engine import Engine
from tether.http import KeyStore, create_app, serve, server_config

KEY = "cmd_keepalive_test_key_0123456789"
BODY = b'{"machine_id": "m1", "machine_hostname": "h1"}'


async def _open(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def _response(stream: trio.SocketStream) -> bytes:
    """One whole response (these have a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some()
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += await stream.receive_some()
    return head


async def _closed_by_server(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some() == b""
    except trio.BrokenResourceError:
        return True


async def test_an_idle_keepalive_connection_closes_after_the_timeout():
    keys = KeyStore()
    async with Engine() as engine, trio.open_nursery() as nursery:
        config = server_config("127.0.0.1", 0)
        config.keep_alive_timeout = 0.2
        binds = await nursery.start(partial(serve, create_app(engine, keys), config,
                                            shutdown_trigger=trio.sleep_forever))
        stream = await _open(binds[0])
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await _response(stream)).startswith(b"HTTP/1.1 200")
        with trio.fail_after(5):  # before the fix: never
            assert await _closed_by_server(stream)
        nursery.cancel_scope.cancel()


async def test_shutdown_closes_idle_connections_at_once_and_drains_busy_ones():
    keys = KeyStore()
    keys.add_key("api", KEY, "ws_k")
    stop = trio.Event()
    async with Engine() as engine, trio.open_nursery() as nursery:
        config = server_config("127.0.0.1", 0)
        config.graceful_timeout = 60  # what an idle connection used to hold the exit for
        done = trio.Event()

        async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(create_app(engine, keys), config, shutdown_trigger=stop.wait,
                        task_status=task_status)
            done.set()

        binds = await nursery.start(run_server)
        idle = await _open(binds[0])
        await idle.send_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        await _response(idle)
        busy = await _open(binds[0])
        await busy.send_all(
            b"POST /v1/sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        await trio.sleep(0.05)  # the server has the request's head: it is busy
        stop.set()
        with trio.fail_after(5):
            assert await _closed_by_server(idle)
        await busy.send_all(BODY[10:])  # the busy request finishes after shutdown began
        with trio.fail_after(5):
            assert (await _response(busy)).startswith(b"HTTP/1.1 201")
            await done.wait()  # and then the server is gone, long before graceful_timeout
        nursery.cancel_scope.cancel()
