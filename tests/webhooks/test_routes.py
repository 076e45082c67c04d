"""The webhooks API and the event feed over a real Hypercorn server (the project's app, with
these blueprints registered), with real clients that keep their connection."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import httpx
import msgspec
import pytest
import trio
from standardwebhooks import Webhook

from tether.engine import Engine, EngineConfig
from tether.engine.testing import NullTransport
from tether.http import HttpSettings, KeyStore, create_app, serve, server_config
from tether.webhooks import WebhookConfig, Webhooks

from .conftest import WS, Receiver, churn

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ACME_KEY = "cmd_acme_webhooks_key_0123456789"
OTHER_KEY = "cmd_other_webhooks_key_0123456789"


class Server(msgspec.Struct):
    url: str
    engine: Engine
    hooks: Webhooks
    receiver: Receiver


@pytest.fixture
def engine_config() -> EngineConfig:
    return EngineConfig()


@pytest.fixture
def webhook_config() -> WebhookConfig:
    return WebhookConfig(allow_private=True, retry_base=0.05, timeout=2.0)


@pytest.fixture
async def server(engine_config, webhook_config) -> AsyncIterator[Server]:
    keys = KeyStore()
    keys.add_key("api", ACME_KEY, WS)
    keys.add_key("api", OTHER_KEY, "ws_other")
    settings = HttpSettings(sse_keepalive=0.2)
    async with Engine(engine_config) as engine, trio.open_nursery() as nursery:
        hooks = Webhooks(engine, webhook_config)
        await nursery.start(hooks.run)
        receiver = Receiver()
        await nursery.start(receiver.serve)
        app = create_app(engine, keys, settings, hooks)
        binds = await nursery.start(partial(
            serve, app, server_config("127.0.0.1", 0, settings),
            shutdown_trigger=trio.sleep_forever))
        yield Server(url=binds[0], engine=engine, hooks=hooks, receiver=receiver)
        nursery.cancel_scope.cancel()


def client(server: Server, key: str = ACME_KEY) -> httpx.AsyncClient:
    """A client that keeps its one connection, as real clients do."""
    return httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=10,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


async def test_webhook_crud(server):
    async with client(server) as api, client(server, OTHER_KEY) as other:
        r = await api.post("/v1/webhooks", json={"url": server.receiver.url,
                                                 "events": ["session.created"]})
        assert r.status_code == 201, r.text
        hook = r.json()["data"]
        assert hook["id"].startswith("hook_") and hook["secret"].startswith("whsec_")
        assert hook["enabled"] is True and hook["disabled_reason"] is None
        assert hook["events"] == ["session.created"]

        listed = (await api.get("/v1/webhooks")).json()["data"]
        assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
        assert (await other.get("/v1/webhooks")).json()["data"] == []
        r = await other.get(f"/v1/webhooks/{hook['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_not_found"

        r = await api.patch(f"/v1/webhooks/{hook['id']}",
                            json={"events": ["*"], "enabled": False})
        assert r.status_code == 200
        assert r.json()["data"]["events"] == ["*"] and r.json()["data"]["enabled"] is False
        r = await api.patch(f"/v1/webhooks/{hook['id']}", json={"secret": None})
        assert r.json()["data"]["secret"].startswith("whsec_")
        assert r.json()["data"]["secret"] != hook["secret"]

        r = await api.delete(f"/v1/webhooks/{hook['id']}")
        assert r.status_code == 204
        assert (await api.get(f"/v1/webhooks/{hook['id']}")).status_code == 404


@pytest.mark.parametrize("body, parameter", [
    ({"url": "http://x.example/", "events": ["session.exploded"]}, "events"),
    ({"url": "http://x.example/", "events": []}, "events"),
    ({"url": "ftp://x.example/", "events": ["*"]}, "url"),
    ({"events": ["*"]}, "url"),
    ({"url": "http://x.example/", "events": ["*"], "secret": "hunter2"}, "secret"),
    ({"url": "http://x.example/", "events": ["*"], "colour": "blue"}, "colour"),
    ({"url": 5, "events": ["*"]}, "url"),
])
async def test_bad_webhook_bodies_are_400(server, body, parameter):
    async with client(server) as api:
        r = await api.post("/v1/webhooks", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_parameter" and error["details"]["parameter"] == parameter
        r = await api.post("/v1/webhooks", content=b"{not json")
        assert r.status_code == 400
        assert (await api.get("/v1/webhooks")).status_code == 200  # the connection still works


@pytest.mark.parametrize("webhook_config", [WebhookConfig(allow_private=False)])
async def test_internal_targets_are_400_without_allow_private(server):
    async with client(server) as api:
        for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/", "http://10.0.0.1/"):
            r = await api.post("/v1/webhooks", json={"url": url, "events": ["*"]})
            assert r.status_code == 400
            error = r.json()["error"]
            assert error["details"]["parameter"] == "url"
            # the refusal says how to allow it: nobody should have to search for the flag
            assert "--allow-private-webhooks" in error["message"]


async def test_unauthenticated_requests_are_401_and_keep_the_connection(server):
    async with client(server, "cmd_nope_0123456789") as api:
        r = await api.post("/v1/webhooks", json={"url": "http://x.example/", "events": ["*"]})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await api.post("/v1/webhooks/hook_x/test", content=b"x" * 10_000)
        assert r.status_code == 401
        assert (await api.get("/v1/events")).status_code == 401


async def test_test_send_deliveries_and_retry(server):
    receiver = server.receiver
    async with client(server) as api:
        hook = (await api.post("/v1/webhooks", json={
            "url": receiver.url, "events": ["session.created"]})).json()["data"]
        r = await api.post(f"/v1/webhooks/{hook['id']}/test")
        assert r.status_code == 200
        result = r.json()["data"]
        assert result["success"] is True and result["status_code"] == 200
        request = receiver.requests[-1]
        assert Webhook(hook["secret"]).verify(request.body, request.headers)["type"] == (
            "webhook.test")

        receiver.fail = 4
        await server.engine.create_session(WS, "mach_1", "prod-1")
        with trio.fail_after(5):
            await receiver.wait_for(5)
            while True:
                page = (await api.get(f"/v1/webhooks/{hook['id']}/deliveries")).json()
                if page["data"][0]["state"] == "failed":
                    break
                await trio.sleep(0.05)
        newest = page["data"][0]
        assert newest["event_type"] == "session.created"
        assert (newest["attempts"], newest["last_status_code"], newest["last_error"]) == (
            4, 500, "HTTP 500")
        assert newest["next_attempt_at"] is None and newest["session_id"].startswith("sess_")
        assert page["data"][1]["event_type"] == "webhook.test"
        assert page["meta"] == {"limit": 20, "has_more": False, "next_before": None}

        page = (await api.get(f"/v1/webhooks/{hook['id']}/deliveries?limit=1")).json()
        assert page["meta"]["has_more"] and page["meta"]["next_before"] == newest["id"]
        older = (await api.get(f"/v1/webhooks/{hook['id']}/deliveries",
                               params={"limit": 1, "before": newest["id"]})).json()
        assert older["data"][0]["event_type"] == "webhook.test"
        assert (await api.get(f"/v1/webhooks/{hook['id']}/deliveries?limit=0")).status_code == 400

        r = await api.post(f"/v1/webhooks/{hook['id']}/deliveries/{newest['id']}/retry")
        assert r.status_code == 202 and r.json()["data"]["state"] == "pending"
        with trio.fail_after(5):
            while (await api.get(f"/v1/webhooks/{hook['id']}/deliveries")).json()[
                    "data"][0]["state"] != "succeeded":
                await trio.sleep(0.05)
        r = await api.post(f"/v1/webhooks/{hook['id']}/deliveries/dlv_nope/retry")
        assert r.status_code == 404 and r.json()["error"]["code"] == "delivery_not_found"
        r = await api.post("/v1/webhooks/hook_nope/test", json={})
        assert r.status_code == 404 and r.json()["error"]["code"] == "webhook_not_found"


async def test_the_event_feed_pages_in_order(server):
    async with client(server) as api, client(server, OTHER_KEY) as other:
        sessions = [await churn(server.engine, f"mach_{i}") for i in range(3)]
        await churn(server.engine, "mach_x", "ws_other")
        r = await api.get("/v1/events", params={"limit": 4})
        assert r.status_code == 200
        body = r.json()
        assert len(body["data"]) == 4 and body["meta"]["has_more"] is True
        assert set(body["data"][0]) == {"id", "type", "timestamp", "workspace_id", "data"}
        events = body["data"]
        after = body["meta"]["next_after"]
        while True:
            body = (await api.get("/v1/events", params={"after": after, "limit": 4})).json()
            events += body["data"]
            after = body["meta"]["next_after"]
            if not body["meta"]["has_more"]:
                break
        assert len(events) == 15 and {e["workspace_id"] for e in events} == {WS}
        assert [e["data"]["session_id"] for e in events[:5]] == [sessions[0]] * 5
        assert [e["data"]["sequence"] for e in events[:5]] == [1, 2, 3, 4, 5]
        ids = [e["id"] for e in events]
        assert len(set(ids)) == 15
        empty = (await api.get("/v1/events", params={"after": ids[-1]})).json()
        assert empty == {"data": [], "meta": {"limit": 100, "has_more": False,
                                              "next_after": ids[-1]}}
        assert len((await other.get("/v1/events")).json()["data"]) == 5
        r = await api.get("/v1/events", params={"after": "evt_bogus"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
        assert (await api.get("/v1/events", params={"limit": 1001})).status_code == 400


@pytest.mark.parametrize("engine_config", [EngineConfig(event_log_max=5)])
async def test_events_older_than_the_retention_are_410(server):
    async with client(server) as api:
        await churn(server.engine, "mach_1")
        first = (await api.get("/v1/events")).json()["data"][0]["id"]
        await churn(server.engine, "mach_2")
        r = await api.get("/v1/events", params={"after": first})
        assert r.status_code == 410
        assert r.json()["error"]["code"] == "events_gone"
        r = await api.get("/v1/events/stream", headers={"Last-Event-ID": first})
        assert r.status_code == 410 and r.json()["error"]["code"] == "events_gone"


async def read_sse(lines: AsyncIterator[str], count: int) -> list[dict]:
    """The next ``count`` events of an SSE stream's lines (comments and retry lines skipped)."""
    events: list[dict] = []
    frame: dict = {}
    async for line in lines:
        if not line:
            if "data" in frame:
                events.append(frame)
                if len(events) == count:
                    return events
            frame = {}
        elif not line.startswith((":", "retry:")):
            field, _, value = line.partition(": ")
            frame[field] = value
    return events


async def test_the_stream_is_live_and_resumes_from_last_event_id(server):
    async with client(server) as api, client(server) as api2:
        with trio.fail_after(10):
            async with api.stream("GET", "/v1/events/stream") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                await churn(server.engine, "mach_1")
                await churn(server.engine, "mach_x", "ws_other")
                first = await read_sse(response.aiter_lines(), 3)
            assert [f["event"] for f in first] == [
                "session.created", "session.connected", "session.client_attached"]
            payload = msgspec.json.decode(first[0]["data"])
            assert payload["id"] == first[0]["id"] and payload["workspace_id"] == WS
            assert set(payload) == {"id", "type", "timestamp", "workspace_id", "data"}

            async with api2.stream("GET", "/v1/events/stream",
                                   headers={"Last-Event-ID": first[-1]["id"]}) as response:
                lines = response.aiter_lines()
                rest = await read_sse(lines, 2)
                assert [f["event"] for f in rest] == [
                    "session.client_detached", "session.disconnected"]
                await churn(server.engine, "mach_2")
                live = await read_sse(lines, 5)
            assert {msgspec.json.decode(f["data"])["data"]["machine_id"] for f in live} == {
                "mach_2"}
            ids = [f["id"] for f in first + rest + live]
            assert len(set(ids)) == 10


async def test_an_idle_stream_sends_keepalive_comments(server):
    async with client(server) as api:
        with trio.fail_after(5):
            async with api.stream("GET", "/v1/events/stream") as response:
                lines = []
                async for line in response.aiter_lines():
                    lines.append(line)
                    if line.startswith(": keep-alive"):
                        break
        assert lines[0] == "retry: 3000"


@pytest.mark.parametrize("engine_config", [EngineConfig(event_log_max=5)])
async def test_a_stream_that_falls_behind_the_retention_ends_naming_where_to_resume(server):
    engine = server.engine
    for i in range(6):
        await engine.agent_hello(WS, NullTransport(), machine_id=f"mach_{i}",
                                 machine_hostname="h.example")
    async with client(server) as api:
        with trio.fail_after(10):
            async with api.stream("GET", "/v1/events/stream") as response:
                lines = response.aiter_lines()
                await engine.agent_hello(WS, NullTransport(), machine_id="mach_6",
                                         machine_hostname="h.example")
                seen = await read_sse(lines, 2)
                assert [f["event"] for f in seen] == ["session.created", "session.connected"]
                # Seven sessions end in one pass of the loop: the stream's reader is left behind
                # a five-event log.
                engine.shutdown()
                error = await read_sse(lines, 1)
    assert error[0]["event"] == "error"
    body = msgspec.json.decode(error[0]["data"])["error"]
    assert body["code"] == "events_gone"
    assert body["details"]["after"] == seen[-1]["id"]
    oldest = body["details"]["oldest_event_id"]
    assert oldest is not None and oldest > seen[-1]["id"]
    async with client(server) as api:  # the named event is retained: a reader resumes there
        assert (await api.get("/v1/events", params={"after": oldest})).status_code == 200
