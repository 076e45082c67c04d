"""Webhook test fixtures: real HTTP receivers on 127.0.0.1, an engine, the webhooks service.

Timing tests run under ``MockClock(autojump_threshold=0.1)``: the clock jumps to the next
deadline only after 0.1 s of real idleness, so real socket I/O between the dispatcher and a
receiver (in the same trio run) is never mistaken for idleness, while retry delays and a
receiver that hangs past the timeout cost no wall time.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h11
import msgspec
import pytest
import trio
import trio.testing

from tether.engine import Engine, EngineConfig
from tether.store import RedisStore
from tether.webhooks import WebhookConfig, Webhooks

from ..conftest import fresh_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

WS = "ws_acme"


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return msgspec.json.decode(self.body)


@dataclass
class Receiver:
    """An HTTP receiver: answers ``status`` (first ``fail`` requests get ``fail_status``),
    or never answers while ``hang`` is set."""

    fail: int = 0
    fail_status: int = 500
    status: int = 200
    hang: bool = False
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    arrived: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def wait_for(self, count: int) -> None:
        while len(self.requests) < count:
            await self.arrived.park()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.requests.append(
                    Received(trio.current_time(), request.target.decode(), headers, body))
                self.arrived.unpark_all()
                if self.hang:
                    await trio.sleep_forever()
                if self.fail > 0:
                    self.fail -= 1
                    status = self.fail_status
                else:
                    status = self.status
                reply = b"{}"
                await stream.send_all(conn.send(h11.Response(
                    status_code=status,
                    headers=[("content-type", "application/json"),
                             ("content-length", str(len(reply)))])))
                await stream.send_all(conn.send(h11.Data(data=reply)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


class NullTransport:
    """An agent transport that ignores what the engine tells it."""

    def send_run_command(self, command: object) -> None:
        pass

    def close(self, reason: str) -> None:
        pass


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.1)


@pytest.fixture(params=["memory", "redis"])
async def engine(request: pytest.FixtureRequest,
                 clock: trio.testing.MockClock) -> AsyncIterator[Engine]:
    """The engine, in memory and on Redis-backed state (webhooks too: see ``hooks_factory``)."""
    if request.param == "memory":
        async with Engine(EngineConfig()) as e:
            yield e
        return
    url = request.getfixturevalue("shared_redis").url
    async with RedisStore(url, prefix=fresh_prefix("hooks")) as store, \
            Engine(EngineConfig(), store=store) as e:
        yield e


@pytest.fixture
def receiver_factory(nursery: trio.Nursery) -> Callable[..., Awaitable[Receiver]]:
    async def make(**kwargs: object) -> Receiver:
        receiver = Receiver(**kwargs)  # type: ignore[arg-type]
        await nursery.start(receiver.serve)
        return receiver

    return make


@pytest.fixture
def hooks_factory(engine: Engine, nursery: trio.Nursery) -> Callable[..., Awaitable[Webhooks]]:
    async def make(**overrides: object) -> Webhooks:
        settings: dict[str, object] = {"allow_private": True, "retry_base": 1.0}
        settings.update(overrides)
        store = engine.store.webhooks if isinstance(engine.store, RedisStore) else None
        hooks = Webhooks(engine, WebhookConfig(**settings),  # type: ignore[arg-type]
                         store=store)
        await nursery.start(hooks.run)
        return hooks

    return make


async def churn(engine: Engine, machine: str, workspace: str = WS) -> str:
    """One session's life: created, connected, a client attaches, terminated (5 events)."""
    detail = await engine.create_session(workspace, machine, machine + ".example")
    await engine.agent_hello(workspace, NullTransport(), machine_id=machine,
                             machine_hostname=machine + ".example")
    await engine.attach_client(workspace, detail.session_id, "[email protected]", "operator")
    await engine.terminate(workspace, detail.session_id)
    return detail.session_id


async def settle(hooks: Webhooks, webhook_id: str, workspace: str = WS) -> None:
    """Wait (on the trio clock) until the endpoint has nothing pending."""
    await trio.sleep(0)
    while hooks.endpoint_stats(workspace, webhook_id)["pending"]:
        await trio.sleep(1.0)  # each wait is one autojump: keep them few
