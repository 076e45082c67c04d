"""Every error the issue lists, in the envelope, and connections that stay usable after them."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from .conftest import ACME_AGENT, OTHER_KEY, connect_agent


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize(
    "query, parameter",
    [
        ({"status": "RUNNING"}, "status"),
        ({"status": "connected"}, "status"),
        ({"status": ""}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1e3"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"limit": "٣"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "99999999999999999999999"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "abc"}, "offset"),
        ({"offset": "1.5"}, "offset"),
        ({"machine_id": ""}, "machine_id"),
    ],
)
async def test_list_invalid_parameters(api, query, parameter):
    error = assert_error(await api.get("/v1/sessions", params=query), 400, "invalid_parameter")
    assert error["details"]["parameter"] == parameter


async def test_list_limit_bounds_accepted(api):
    for limit in ("1", "100"):
        r = await api.get("/v1/sessions", params={"limit": limit, "offset": "0"})
        assert r.status_code == 200
        assert r.json()["meta"]["limit"] == int(limit)


@pytest.mark.parametrize(
    "query, parameter",
    [({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "x"}, "limit"),
     ({"before": ""}, "before"), ({"before": "c" * 257}, "before")],
)
async def test_history_invalid_parameters(server, api, query, parameter):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        ok = await api.get(f"/v1/sessions/{sid}/history", params={"limit": 1000})
        assert ok.status_code == 200
        r = await api.get(f"/v1/sessions/{sid}/history", params=query)
        error = assert_error(r, 400, "invalid_parameter")
        assert error["details"]["parameter"] == parameter


async def test_a_history_cursor_naming_no_command_is_that_command_not_found(server, api):
    """A ``before`` of the right form that names no command of the session is a 404 (like any
    id that names nothing), not a 400: the request is one the document says is valid."""
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        r = await api.get(f"/v1/sessions/{sid}/history", params={"before": "cmd_unknown"})
        assert assert_error(r, 404, "command_not_found")["details"] == {
            "command_id": "cmd_unknown"}


@pytest.mark.parametrize(
    "body, parameter",
    [
        (b"", "body"),
        (b"   ", "body"),
        (b"not json", "body"),
        (b"[]", "body"),
        # A missing or unknown field is named, as the webhooks API always named it (the
        # sessions API used to say "body"): one decoder, one rule.
        (b'{"machine_hostname": "h"}', "machine_id"),
        (b'{"machine_id": 5, "machine_hostname": "h"}', "machine_id"),
        (b'{"machine_id": "m", "machine_hostname": "h", "extra": 1}', "extra"),
        (b'{"machine_id": "", "machine_hostname": "h"}', "machine_id"),
        (b'{"machine_id": "m\\u0000", "machine_hostname": "h"}', "machine_id"),
        (b'{"machine_id": "m", "machine_hostname": "' + b"h" * 257 + b'"}', "machine_hostname"),
    ],
)
async def test_create_bad_body(api, body, parameter):
    r = await api.post("/v1/sessions", content=body,
                       headers={"content-type": "application/json"})
    error = assert_error(r, 400, "invalid_parameter")
    assert error["details"]["parameter"] == parameter


async def test_attach_and_command_bad_bodies(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        r = await api.post(f"/v1/sessions/{sid}/clients",
                           json={"user_email": "[email protected]", "mode": "admin"})
        assert assert_error(r, 400, "invalid_parameter")["details"]["parameter"] == "mode"
        r = await api.post(f"/v1/sessions/{sid}/clients", json={"mode": "observer"})
        assert_error(r, 400, "invalid_parameter")
        r = await api.post(f"/v1/sessions/{sid}/commands", json={"client_id": "cli_x"})
        assert_error(r, 400, "invalid_parameter")
        r = await api.post(f"/v1/sessions/{sid}/commands",
                           json={"client_id": "cli_x", "command": ""})
        assert_error(r, 400, "invalid_parameter")


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer  x", "Bearer cmd_unknown", "Basic abc", ACME_AGENT,
     f"Bearer {ACME_AGENT}", "Bearer cmd_acme_test_key_012345678", "Bearer " + "cmd_" + "x" * 600],
)
async def test_unauthorized(server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
        for method, path in [("GET", "/v1/sessions"), ("GET", "/v1/sessions/sess_x"),
                             ("GET", "/v1/machines/m/session"),
                             ("GET", "/v1/sessions/sess_x/history"),
                             ("GET", "/v1/sessions/sess_x/metrics"),
                             ("POST", "/v1/sessions"), ("DELETE", "/v1/sessions/sess_x"),
                             ("POST", "/v1/sessions/sess_x/clients"),
                             ("DELETE", "/v1/sessions/sess_x/clients/cli_x"),
                             ("POST", "/v1/sessions/sess_x/commands"),
                             ("GET", "/v1/sessions/sess_x/commands/cmd_x")]:
            r = await client.request(method, path, json={"x": 1} if method == "POST" else None)
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"].startswith("Bearer")


async def test_unknown_routes_and_methods(api):
    for method, path in [("GET", "/"), ("GET", "/v1"), ("GET", "/v1/session"),
                         ("POST", "/v2/sessions"), ("GET", "/v1/sessions/a/b/c")]:
        error = assert_error(await api.request(method, path), 404, "not_found")
        assert error["details"]["path"] == path
    r = await api.put("/v1/sessions", json={})
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) >= {"GET", "POST"}
    r = await api.patch("/v1/sessions/sess_x")
    assert_error(r, 405, "method_not_allowed")
    r = await api.post("/v1/machines/m/session", json={})
    assert_error(r, 405, "method_not_allowed")
    r = await api.delete("/healthz")
    assert_error(r, 405, "method_not_allowed")


async def test_body_too_large(api):
    big = b'{"machine_id": "' + b"m" * (1024 * 1024) + b'", "machine_hostname": "h"}'
    r = await api.post("/v1/sessions", content=big)
    error = assert_error(r, 413, "payload_too_large")
    assert error["details"] == {"max_bytes": 1024 * 1024}
    # just under the limit is a body like any other (here: an invalid one)
    ok = b'{"machine_id": "' + b"m" * 1000 + b'", "machine_hostname": "h"}'
    assert_error(await api.post("/v1/sessions", content=ok), 400, "invalid_parameter")
    assert (await api.get("/v1/sessions")).status_code == 200


@pytest.mark.http(max_body_bytes=100)
async def test_body_limit_is_configurable_and_chunked_bodies_count(api):
    r = await api.post("/v1/sessions", content=b"{" + b" " * 200 + b"}")
    assert_error(r, 413, "payload_too_large")

    async def chunks():
        for _ in range(10):
            yield b" " * 50

    r = await api.post("/v1/sessions", content=chunks())
    assert_error(r, 413, "payload_too_large")
    assert (await api.get("/v1/sessions")).status_code == 200


def _local_port(r: httpx.Response) -> int:
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


async def test_keep_alive_survives_early_answers(server, api):
    """One client, one connection: every early answer must leave it usable (and reused)."""
    pending = (await api.post("/v1/sessions", json={"machine_id": "m1", "machine_hostname": "h"})
               ).json()["data"]["session_id"]
    first = await api.get("/v1/sessions")
    port = _local_port(first)
    attach = {"user_email": "[email protected]", "mode": "operator"}
    command = {"client_id": "cli_x", "command": "ls"}
    unauthorized = {"Authorization": "Bearer cmd_wrong"}
    early = [
        ("POST", "/v1/sessions", attach, unauthorized, 401),              # auth before body
        ("POST", "/v1/nowhere", attach, {}, 404),                         # no route
        ("PUT", "/v1/sessions", attach, {}, 405),                         # wrong method
        ("POST", f"/v1/sessions/{pending}/clients", {"pad": 1}, {}, 400),
        ("POST", "/v1/sessions/sess_missing/clients", attach, {}, 404),
        ("POST", "/v1/sessions/sess_missing/commands", command, {}, 404),
        ("DELETE", "/v1/sessions/sess_missing", attach, {}, 404),
        ("POST", "/v1/sessions", attach, {"Authorization": f"Bearer {OTHER_KEY}"}, 400),
        ("GET", "/v1/sessions/sess_missing", attach, {}, 404),
    ]
    for method, path, body, headers, status in early:
        content = json.dumps(body).encode() + b" " * 1_000_000  # many reads, under 1 MiB
        r = await api.request(method, path, content=content, headers=headers)
        assert r.status_code == status, (method, path, r.text)
        after = await api.get("/v1/sessions")
        assert after.status_code == 200
        assert _local_port(after) == port, f"connection not reused after {method} {path}"
    # 409 on a POST with a body the handler never needs
    r = await api.post(f"/v1/sessions/{pending}/clients",
                       json={"user_email": "[email protected]", "mode": "operator"})
    assert r.status_code == 409
    after = await api.get("/v1/sessions")
    assert _local_port(after) == port
    # chunked bodies too
    async def chunks():
        yield b'{"machine_id": '
        yield b'"m2", "machine_hostname": "h"}'

    r = await api.post("/v1/sessions", content=chunks(), headers=unauthorized)
    assert r.status_code == 401
    assert _local_port(await api.get("/v1/sessions")) == port


@pytest.mark.http(node_id="node-t")
async def test_healthz_and_openapi(server, api):
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        health = await anonymous.get("/healthz")
        assert health.status_code == 200
        store = server.engine.store
        if store is None:
            assert health.json() == {"status": "ok", "live_sessions": 0, "node_id": "node-t"}
        else:
            assert health.json() == {"status": "ok", "live_sessions": 0, "node_id": "node-t",
                                     "role": "member", "nodes": [store.node_id]}
        # Every answer names the node that gave it, errors included.
        assert health.headers["X-Tether-Node"] == "node-t"
        missing = await anonymous.get("/v1/nowhere")
        assert (missing.status_code, missing.headers["X-Tether-Node"]) == (404, "node-t")
        r = await anonymous.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    served = {
        ("get", "/v1/sessions"), ("post", "/v1/sessions"),
        ("get", "/v1/sessions/{session_id}"), ("delete", "/v1/sessions/{session_id}"),
        ("get", "/v1/machines/{machine_id}/session"),
        ("get", "/v1/sessions/{session_id}/history"),
        ("get", "/v1/sessions/{session_id}/metrics"),
        ("get", "/v1/sessions/{session_id}/output"),
        ("post", "/v1/sessions/{session_id}/clients"),
        ("delete", "/v1/sessions/{session_id}/clients/{client_id}"),
        ("post", "/v1/sessions/{session_id}/commands"),
        ("get", "/v1/sessions/{session_id}/commands/{command_id}"),
        ("get", "/healthz"), ("get", "/openapi.json"),
        ("get", "/v1/webhooks"), ("post", "/v1/webhooks"),
        ("get", "/v1/webhooks/{webhook_id}"), ("patch", "/v1/webhooks/{webhook_id}"),
        ("delete", "/v1/webhooks/{webhook_id}"), ("post", "/v1/webhooks/{webhook_id}/test"),
        ("get", "/v1/webhooks/{webhook_id}/deliveries"),
        ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
        ("get", "/v1/events"), ("get", "/v1/events/stream"),
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served
    schemas = doc["components"]["schemas"]
    listing = doc["paths"]["/v1/sessions"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "status", "machine_id", "machine_hostname", "limit", "offset"}
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert {"200", "400", "401"} <= set(listing["responses"])
    assert set(schemas["SessionSummary"]["properties"]) == {
        "session_id", "status", "machine_id", "machine_hostname", "workspace_id", "created_at",
        "connected_at", "last_heartbeat_at", "attached_clients"}
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "details"}
    metrics = doc["paths"]["/v1/sessions/{session_id}/metrics"]["get"]
    assert {"200", "404", "409"} <= set(metrics["responses"])
    create = doc["paths"]["/v1/sessions"]["post"]
    assert "201" in create["responses"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateSessionBody"}
    # every $ref resolves
    for ref in set(re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"',
                                           json.dumps(doc))):
        assert ref in schemas


# -- one parser: every integer parameter of every operation is read the same, strict way --------

#: Integer texts no parameter accepts. The webhooks and events operations used a lax parser
#: (Python's ``int()``) that took the first four; the sessions API never did. The strict one won.
NOT_INTEGERS = ["1_0", " 5", "5 ", "\u0663", "+5", "-1", "1e3", "1.0", "0x10", "", "ten",
                "9" * 17]


def _integer_params():
    from tether.http._params import Integer
    from tether.http._routes import OPERATIONS

    for op in OPERATIONS:
        for param in op.query:
            if isinstance(param, Integer):
                yield op, param


@pytest.mark.parametrize("op, param", list(_integer_params()),
                         ids=lambda v: getattr(v, "view", getattr(v, "name", "")))
async def test_every_integer_parameter_is_strict(server, api, op, param):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        hook = (await api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h",
                                                     "events": ["*"]})).json()["data"]["id"]
        path = op.path.replace("{session_id}", sid).replace("{webhook_id}", hook)
        for raw in [*NOT_INTEGERS, str(param.low - 1), str(param.high + 1)]:
            r = await api.get(path, params={param.name: raw})
            error = assert_error(r, 400, "invalid_parameter")
            assert error["details"] == {
                "parameter": param.name,
                "reason": f"must be an integer from {param.low} to {param.high}"}, raw
        for raw in (str(param.low), str(param.high), "0" + str(param.high)):
            assert (await api.get(path, params={param.name: raw})).status_code == 200, raw


async def test_every_operation_refuses_undeclared_and_repeated_parameters(server, api):
    from tether.http._routes import OPERATIONS

    for op in OPERATIONS:
        if op.method != "GET" or "{" in op.path or op.view == "stream_events":
            continue
        r = await api.get(op.path, params={"limt": "5"})
        assert assert_error(r, 400, "invalid_parameter")["details"]["parameter"] == "limt"
        query = [p for p in op.query if p.location == "query"]
        if query:
            name = query[0].name
            r = await api.get(op.path, params=[(name, "1"), (name, "1")])
            error = assert_error(r, 400, "invalid_parameter")
            assert error["details"] == {"parameter": name,
                                        "reason": "must be given at most once"}


async def test_an_empty_delivery_cursor_is_refused_like_any_empty_cursor(api):
    """``before=`` was read as "no cursor" by the deliveries list and refused by the history:
    the strict reading won (the document says 1 to 256 characters)."""
    hook = (await api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h",
                                                 "events": ["*"]})).json()["data"]["id"]
    r = await api.get(f"/v1/webhooks/{hook}/deliveries", params={"before": ""})
    assert assert_error(r, 400, "invalid_parameter")["details"]["parameter"] == "before"
    r = await api.get(f"/v1/webhooks/{hook}/deliveries", params={"before": "dlv_any"})
    assert r.status_code == 200


async def test_text_in_a_body_is_refused_in_words(api):
    r = await api.post("/v1/sessions", json={"machine_id": "m\r\nX: 1", "machine_hostname": "h"})
    error = assert_error(r, 400, "invalid_parameter")
    assert error["details"] == {
        "parameter": "machine_id",
        "reason": "must be printable ASCII characters (no control characters)"}


# -- one table: the HTTP status of every error code ---------------------------------------------


def _error_classes():
    import tether.engine
    import tether.http._errors
    import tether.webhooks
    from tether.engine import TetherError

    seen = set()
    for module in (tether.engine, tether.webhooks, tether.http._errors):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, TetherError) and value not in seen:
                seen.add(value)
                yield value


def test_every_error_code_has_its_status_in_the_one_table():
    from tether.http._errors import STATUS

    classes = list(_error_classes())
    assert len(classes) > 20
    for cls in classes:
        assert cls.code in STATUS, cls
        assert not hasattr(cls, "http_status"), f"{cls.__name__} still carries an HTTP status"


async def test_every_401_names_its_scheme_whichever_api_answers(server):
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        for path in ("/v1/sessions", "/v1/webhooks", "/v1/events", "/v1/events/stream",
                     "/v1/webhooks/hook_x/deliveries"):
            r = await anonymous.get(path)
            assert_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == 'Bearer realm="tether"'
