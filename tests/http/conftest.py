"""A real Hypercorn server on 127.0.0.1 (free port) over a real engine, real clients.

``server`` starts one per test, twice: on the in-memory engine and on one whose state is in a
real ``redis-server`` (one per test session, a key prefix per test): every API answer must be
the same in both. ``@pytest.mark.engine(grace_period=5, ...)`` configures its engine and
``@pytest.mark.http(max_violations=2, ...)`` its HTTP settings. Lifecycle tests take
``mock_clock`` (rate 0) and move time with ``mock_clock.jump``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
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
from tether.store import RedisStore
from tether.webhooks import WebhookConfig, Webhooks

from ..conftest import fresh_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ACME_KEY = "cmd_acme_test_key_0123456789"
OTHER_KEY = "cmd_other_test_key_0123456789"
ACME_AGENT = "agt_acme_test_token_0123456789"
OTHER_AGENT = "agt_other_test_token_0123456789"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "engine(**kw): EngineConfig for the test's server")
    config.addinivalue_line("markers", "http(**kw): HttpSettings for the test's server")


@dataclass
class Server:
    url: str
    ws_url: str
    engine: Engine


def _marker_kwargs(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    return dict(marker.kwargs) if marker else {}


def node_keys() -> KeyStore:
    keys = KeyStore()
    keys.add_key("api", ACME_KEY, "ws_acme")
    keys.add_key("api", OTHER_KEY, "ws_other")
    keys.add_key("agent", ACME_AGENT, "ws_acme")
    keys.add_key("agent", OTHER_AGENT, "ws_other")
    return keys


@asynccontextmanager
async def running_server(config: EngineConfig, settings: HttpSettings,
                         store: RedisStore | None) -> AsyncIterator[Server]:
    """A node: an engine (on ``store``, if any), its webhooks and the app on a free port."""
    async with Engine(config, store=store) as engine, trio.open_nursery() as nursery:
        webhooks = Webhooks(engine, WebhookConfig(allow_private=True),
                            store=None if store is None else store.webhooks)
        await nursery.start(webhooks.run)
        app = create_app(engine, node_keys(), settings, webhooks)
        binds = await nursery.start(
            partial(serve, app, server_config("127.0.0.1", 0, settings),
                    shutdown_trigger=trio.sleep_forever)
        )
        url = binds[0]
        yield Server(url=url, ws_url="ws" + url.removeprefix("http") + "/v1/agent",
                     engine=engine)
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["memory", "redis"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    settings = HttpSettings(**_marker_kwargs(request, "http"))
    config = EngineConfig(**_marker_kwargs(request, "engine"))
    async with AsyncExitStack() as stack:
        store = None
        if request.param == "redis":
            url = request.getfixturevalue("shared_redis").url
            store = await stack.enter_async_context(
                RedisStore(url, prefix=fresh_prefix("http")))
        yield await stack.enter_async_context(running_server(config, settings, store))


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """An API client of workspace ws_acme that keeps its one connection."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {ACME_KEY}"}, limits=limits,
        timeout=10,
    ) as client:
        yield client


@pytest.fixture
async def other(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    """An API client of workspace ws_other."""
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=10
    ) as client:
        yield client


class Agent:
    """A WebSocket agent speaking the wire protocol."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: Any) -> None:
        await self.ws.send_message(wire.encode(frame).decode())

    async def send_raw(self, text: str) -> None:
        await self.ws.send_message(text)

    async def receive(self) -> Any:
        return wire.decode_server_frame(await self.ws.get_message())

    async def hello(self, machine_id: str = "mach_xyz789", machine_hostname: str = "prod-server",
                    **kw: Any) -> wire.Welcome:
        await self.send(wire.Hello(machine_id=machine_id, machine_hostname=machine_hostname,
                                   **kw))
        frame = await self.receive()
        assert isinstance(frame, wire.Welcome), frame
        return frame


@asynccontextmanager
async def connect_agent(server: Server, token: str = ACME_AGENT) -> AsyncIterator[Agent]:
    async with trio_websocket.open_websocket_url(
        server.ws_url, extra_headers=[(b"authorization", f"Bearer {token}".encode())],
        disconnect_timeout=5,
    ) as ws:
        yield Agent(ws)


async def wait_for_status(
    api: httpx.AsyncClient, session_id: str, status: str, attempts: int = 200
) -> dict[str, Any]:
    """Poll the session's detail until it shows ``status`` (bounded; no wall-clock sleeps)."""
    body: dict[str, Any] = {}
    for _ in range(attempts):
        response = await api.get(f"/v1/sessions/{session_id}")
        body = response.json()["data"]
        if body["status"] == status:
            return body
        await trio.sleep(0)
    raise AssertionError(f"session stayed {body.get('status')}, expected {status}")


async def poll(api: httpx.AsyncClient, path: str, check: Any, attempts: int = 200) -> Any:
    """GET ``path`` until ``check(json)`` holds (bounded; no wall-clock sleeps). Returns the JSON.

    Frames an agent sends travel on another connection than the API's requests, so what they
    change becomes visible "soon", not "before the next request".
    """
    body: Any = None
    for _ in range(attempts):
        body = (await api.get(path)).json()
        if check(body):
            return body
        await trio.sleep(0)
    raise AssertionError(f"{path} never satisfied the check; last: {body}")
