"""Real servers for the reliability suite: hypercorn on 127.0.0.1 (free port), a real engine,
webhooks mounted, and helpers for agents that speak the wire protocol.

Webhook deliveries never leave the process here: the dispatcher's delivery client is replaced
by an in-process stand-in (fuzzed webhook URLs name arbitrary hosts; nothing may go to them).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
import trio_websocket

from tether import wire
from tether.engine import Engine, EngineConfig
from tether.http import HttpSettings, KeyStore, create_app, serve, server_config
from tether.webhooks import WebhookConfig, Webhooks, _dispatcher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ACME_KEY = "cmd_acme_reliability_key_0123456789"
OTHER_KEY = "cmd_other_reliability_key_0123456789"
ACME_AGENT = "agt_acme_reliability_token_0123456789"
OTHER_AGENT = "agt_other_reliability_token_0123456789"


@dataclass
class Server:
    url: str
    ws_url: str
    engine: Engine
    webhooks: Webhooks


def keystore() -> KeyStore:
    keys = KeyStore()
    keys.add_key("api", ACME_KEY, "ws_acme")
    keys.add_key("api", OTHER_KEY, "ws_other")
    keys.add_key("agent", ACME_AGENT, "ws_acme")
    keys.add_key("agent", OTHER_AGENT, "ws_other")
    return keys


class _InProcessReceiver:
    """Stands in for the dispatcher's delivery client: records each POST, answers 204."""

    def __init__(self, sent: list[tuple[str, bytes]]) -> None:
        self.sent = sent

    async def __aenter__(self) -> _InProcessReceiver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def post(self, url: str, body: bytes, *args: Any, **kwargs: Any) -> int:
        self.sent.append((url, body))
        await trio.lowlevel.checkpoint()
        return 204


@pytest.fixture(autouse=True)
def _no_outgoing_webhooks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes]]:
    """Webhook deliveries are answered in-process (204) and recorded, never sent."""
    sent: list[tuple[str, bytes]] = []

    def default_client(**settings: Any) -> _InProcessReceiver:
        return _InProcessReceiver(sent)

    # The default client only: a Webhooks given its own client_factory (the fault
    # simulation's receivers) keeps it.
    monkeypatch.setattr(_dispatcher, "DeliveryClient", default_client)
    return sent


@asynccontextmanager
async def running_server(
    engine_config: EngineConfig | None = None, settings: HttpSettings | None = None
) -> AsyncIterator[Server]:
    settings = settings or HttpSettings()
    async with Engine(engine_config or EngineConfig()) as engine, \
            trio.open_nursery() as nursery:
        webhooks = Webhooks(engine, WebhookConfig(allow_private=True))
        await nursery.start(webhooks.run)
        app = create_app(engine, keystore(), settings, webhooks)
        binds = await nursery.start(
            partial(serve, app, server_config("127.0.0.1", 0, settings),
                    shutdown_trigger=trio.sleep_forever)
        )
        url = binds[0]
        yield Server(url=url, ws_url="ws" + url.removeprefix("http") + "/v1/agent",
                     engine=engine, webhooks=webhooks)
        nursery.cancel_scope.cancel()


class Agent:
    """A WebSocket agent speaking the wire protocol."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: Any) -> None:
        await self.ws.send_message(wire.encode(frame).decode())

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send_message(data)

    async def receive(self) -> Any:
        return wire.decode_server_frame(await self.ws.get_message())

    async def hello(self, machine_id: str = "mach_1", machine_hostname: str = "host-1",
                    **kw: Any) -> wire.Welcome:
        await self.send(wire.Hello(machine_id=machine_id, machine_hostname=machine_hostname,
                                   **kw))
        frame = await self.receive()
        assert isinstance(frame, wire.Welcome), frame
        return frame

    async def closed(self) -> tuple[int | None, str | None, list[Any]]:
        """Read until the server closes: (close code, reason, frames seen before the close)."""
        frames: list[Any] = []
        try:
            while True:
                frames.append(wire.decode_server_frame(await self.ws.get_message()))
        except trio_websocket.ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason, frames


@asynccontextmanager
async def connect_agent(server: Server, token: str = ACME_AGENT) -> AsyncIterator[Agent]:
    async with trio_websocket.open_websocket_url(
        server.ws_url, extra_headers=[(b"authorization", f"Bearer {token}".encode())],
        disconnect_timeout=5, max_message_size=16 * 1024 * 1024,
    ) as ws:
        yield Agent(ws)


def api_client(server: Server, key: str = ACME_KEY) -> httpx.AsyncClient:
    """An API client that keeps its one connection (early answers must leave it usable)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"},
                             limits=limits, timeout=10)


def assert_envelope(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx answer with the error envelope; returns its ``error`` object."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert isinstance(error["details"], dict)
    return error
