"""Requests for what is not there, or not there in that shape: a WebSocket upgrade to an
unknown path or to a REST path, a plain request to the agent socket, a broken handshake, a
doubled slash. Each gets its error envelope from a real server, never a 500, and leaves no
error in the log."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
import trio_websocket

from ..serving import raw_request
from .conftest import ACME_AGENT, ACME_KEY, connect_agent

_API_KEY = [(b"authorization", f"Bearer {ACME_KEY}".encode())]


@pytest.fixture(autouse=True)
def _no_server_errors(caplog):
    caplog.set_level(logging.WARNING)
    yield
    errors = [r.getMessage() for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith(("tether", "hypercorn"))]
    assert not errors


async def _rejected(url: str, headers=()) -> trio_websocket.ConnectionRejected:
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(url, extra_headers=list(headers)):
            pass
    return refused.value


def _envelope(refused: trio_websocket.ConnectionRejected) -> dict:
    headers = {k.decode().lower(): v.decode() for k, v in refused.headers}
    assert headers["content-type"] == "application/json"
    body = json.loads(refused.body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def _ws(server, path: str) -> str:
    return server.ws_url.removesuffix("/v1/agent") + path


@pytest.mark.parametrize("path", ["/v1/nope", "/", "/v1/agent/x", "/v1/agents", "/v2/agent",
                                  "/v1/sessions/sess_x/nope"])
@pytest.mark.parametrize("authorization", [_API_KEY, [], [(b"authorization",
                                                          f"Bearer {ACME_AGENT}".encode())]])
async def test_a_websocket_upgrade_to_an_unknown_path_is_404(server, path, authorization):
    refused = await _rejected(_ws(server, path), authorization)
    assert refused.status_code == 404
    error = _envelope(refused)
    assert error["code"] == "not_found" and error["details"] == {"path": path}
    async with connect_agent(server) as agent:  # the server still takes agents
        await agent.hello()


@pytest.mark.parametrize("path", ["/v1/sessions", "/v1/sessions/sess_x", "/healthz",
                                  "/openapi.json", "/v1/webhooks", "/v1/events/stream",
                                  "/v1/machines/m/session"])
async def test_a_websocket_upgrade_on_a_rest_path_is_400(server, path):
    for headers in (_API_KEY, []):
        refused = await _rejected(_ws(server, path), headers)
        assert refused.status_code == 400
        error = _envelope(refused)
        assert error["code"] == "bad_request"
        assert error["message"] == "This path does not accept WebSocket connections"


async def test_a_plain_request_to_the_agent_socket_is_400(server, api):
    r = await api.get("/v1/agent")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert r.json()["error"]["message"] == "This path only accepts WebSocket connections"
    r = await api.post("/v1/agent", json={})
    assert r.status_code in (400, 405) and set(r.json()) == {"error"}
    assert (await api.get("/v1/sessions")).status_code == 200


@pytest.mark.parametrize("handshake", [
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",  # no key
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\n"
    b"Sec-WebSocket-Version: 99\r\n",
])
@pytest.mark.parametrize("path", [b"/v1/agent", b"/v1/nope"])
async def test_a_broken_handshake_gets_the_envelope(server, handshake, path):
    status, headers, body = await raw_request(
        server.url, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + handshake + b"\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"


async def test_a_doubled_slash_is_no_route_not_a_redirect(server, api):
    for path in ("/v1//sessions", "/v1/sessions//history", "//healthz"):
        r = await api.get(path)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == "not_found"


async def test_http_methods_nobody_serves_are_405_with_allow(server, api):
    for method in ("PUT", "OPTIONS", "TRACE", "QUERY"):
        r = await api.request(method, "/v1/sessions")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        r = await anonymous.request("PATCH", "/healthz")
        assert r.status_code == 405
