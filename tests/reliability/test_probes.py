"""Security probes on every endpoint and the agent socket.

Every probe must get a 4xx error envelope (REST) or a protocol ``error`` frame / policy close
(agent socket); none may get a 500, leave an error in the server's log, or end a task. The
route table drives the endpoint probes, so a new operation is probed without editing this file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import string

import httpx
import pytest
import trio
import trio_websocket

from tether import wire
from tether.engine.testing import session_facts
from tether.http import HttpSettings
from tether.http._routes import OPERATIONS

from ..serving import raw_request
from .conftest import (
    ACME_AGENT,
    ACME_KEY,
    OTHER_AGENT,
    OTHER_KEY,
    api_client,
    assert_envelope,
    connect_agent,
    running_server,
)

#: Probes tried, by kind, for the reliability report.
PROBES: dict[str, int] = {}


def _count(kind: str, n: int = 1) -> None:
    """Count probes of ``kind`` that got the answer asserted just before (a probe whose answer
    was wrong fails its test instead)."""
    PROBES[kind] = PROBES.get(kind, 0) + n


@pytest.fixture(autouse=True, scope="module")
def _probe_report():
    """With TETHER_RELIABILITY_REPORT=<prefix>, write the probes tried to <prefix>.probes.json."""
    yield
    out = os.environ.get("TETHER_RELIABILITY_REPORT")
    if out:
        with open(f"{out}.probes.json", "w") as f:
            json.dump({"probes": sum(PROBES.values()), "by_kind": PROBES}, f)


@pytest.fixture(autouse=True)
def _no_server_errors(caplog, request):
    """No probe may leave an error (a 500, a crashed task) in the server's log."""
    caplog.set_level(logging.WARNING)
    yield
    if request.node.get_closest_marker("xfail"):
        return
    errors = [r for r in caplog.records
              if r.levelno >= logging.ERROR and r.name.startswith(("tether", "hypercorn"))]
    assert not errors, [r.getMessage() for r in errors]


_VALID_BODIES = {
    "attach_client": {"user_email": "a@b.c", "mode": "operator"},
    "run_command": {"client_id": "cli_x", "command": "id"},
    "update_webhook": {"enabled": False},
}


def _path(op, **ids: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x"), op.path)


async def _other_workspace_ids(server) -> dict[str, str]:
    """A live session of ws_other with a client, a command and a webhook."""
    async with api_client(server, OTHER_KEY) as other:
        r = await other.post("/v1/sessions", json={"machine_id": "secret_machine",
                                                   "machine_hostname": "secret-host"})
        sid = r.json()["data"]["session_id"]
        r = await other.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x",
                                                   "events": ["*"]})
        hook = r.json()["data"]["id"]
    return {"session_id": sid, "machine_id": "secret_machine", "webhook_id": hook,
            "client_id": "cli_x", "command_id": "cmd_x", "delivery_id": "dlv_x"}


# -- workspaces ----------------------------------------------------------------------------------


async def test_another_workspaces_ids_are_404_with_no_data():
    async with running_server() as server, api_client(server) as api:
        ids = await _other_workspace_ids(server)
        probed = 0
        for op in OPERATIONS:
            if "{" not in op.path or not op.auth:
                continue
            body = _VALID_BODIES.get(op.view)
            r = await api.request(op.method, _path(op, **ids), json=body)
            error = assert_envelope(r, 404)
            assert error["code"].endswith("not_found")
            assert "secret-host" not in r.text, (op.path, r.text)  # nothing of ws_other leaks
            # indistinguishable from an id that never existed
            unknown = {k: v.replace("secret", "nobody").replace("sess_", "sess_0")
                       .replace("hook_", "hook_0") for k, v in ids.items()}
            r2 = await api.request(op.method, _path(op, **unknown), json=body)
            swap = {unknown[k]: ids[k] for k in ids}
            text2 = r2.text
            for a, b in swap.items():
                text2 = text2.replace(a, b)
            assert (r2.status_code, text2) == (r.status_code, r.text), op.path
            probed += 1
        _count("another workspace's ids (404, no data)", probed)
        # and the list and feed never show them
        listing = (await api.get("/v1/sessions", params={"machine_id": "secret_machine"})).json()
        assert listing["meta"]["total"] == 0
        events = (await api.get("/v1/events")).text
        assert "secret" not in events
        _count("another workspace's ids (404, no data)", 2)
        # an ws_other agent cannot touch it either: its hello for the same machine id is its own
        async with connect_agent(server, ACME_AGENT) as agent:
            welcome = await agent.hello("secret_machine", "mine")
            assert welcome.session_id != ids["session_id"]
        assert server.engine.get_session("ws_other", ids["session_id"]).status == "PENDING"
        _count("another workspace's ids (404, no data)")


# -- credentials ---------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    f"Bearer {ACME_AGENT}", None, "Bearer x", f"Basic {ACME_KEY}", f"Bearer {ACME_KEY}x",
    "Bearer cmd_" + "A" * 600, f"bearer\t{ACME_KEY}",
])
async def test_rest_refuses_agent_tokens_and_bad_keys(authorization):
    async with running_server() as server:
        headers = {} if authorization is None else {"Authorization": authorization}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=10) as c:
            for op in OPERATIONS:
                if not op.auth:
                    continue
                r = await c.request(op.method, _path(op), json={} if op.body else None)
                error = assert_envelope(r, 401)
                assert error["code"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
                _count("agent token or bad key on the REST API (401)")


@pytest.mark.parametrize("token", [ACME_KEY, OTHER_KEY, None, "agt_unknown", ACME_AGENT + " x"])
async def test_agent_socket_refuses_api_keys(token):
    async with running_server() as server:
        headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with trio_websocket.open_websocket_url(server.ws_url, extra_headers=headers):
                pass
        assert refused.value.status_code == 401
        assert json.loads(refused.value.body)["error"]["code"] == "unauthorized"
        _count("API key or bad token on the agent socket (401)")


async def test_websocket_upgrades_where_there_is_no_socket():
    """The agent socket is the only WebSocket: an upgrade anywhere else is refused with the
    envelope before any upgrade (404 for no route, 400 for a REST path), never a 500."""
    async with running_server() as server:
        base = server.ws_url.removesuffix("/v1/agent")
        headers = [(b"authorization", f"Bearer {ACME_KEY}".encode())]
        probes = [(path, 404, "not_found", "to an unknown path (404)")
                  for path in ("/v1/nope", "/", "/v1/agent/x", "/v1/sessions/x/y/z")]
        probes += [(_path(op), 400, "bad_request", "on a REST path (400)")
                   for op in OPERATIONS if op.method == "GET"]
        for path, status, code, kind in probes:
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with trio_websocket.open_websocket_url(base + path,
                                                             extra_headers=headers):
                    pass
            assert refused.value.status_code == status, (path, refused.value.status_code)
            assert json.loads(refused.value.body)["error"]["code"] == code
            _count(f"websocket upgrade: {kind}")
        async with connect_agent(server) as agent:  # the socket itself still serves
            await agent.hello()


# -- resume tokens -------------------------------------------------------------------------------


async def _refused(server, hello: wire.Hello, token: str = ACME_AGENT) -> str:
    async with connect_agent(server, token) as agent:
        await agent.send(hello)
        code, _, frames = await agent.closed()
    assert code == 1008, code
    assert isinstance(frames[0], wire.Error), frames
    return frames[0].code


async def test_resume_tokens_carry_192_random_bits_and_refuse_forgery_and_replay():
    async with running_server() as server:
        tokens = []
        for n in range(50):
            async with connect_agent(server) as agent:
                welcome = await agent.hello(f"m{n}", "h")
                tokens.append((welcome.session_id, welcome.resume_token))
        alphabet = set(string.ascii_letters + string.digits + "-_")
        secrets_ = []
        for session_id, token in tokens:
            prefix, _, secret = token.partition(".")
            assert prefix == f"rt_{session_id}"
            assert len(secret) == 32 and set(secret) <= alphabet  # token_urlsafe(24)
            assert len(base64.urlsafe_b64decode(secret + "==")) == 24  # 192 bits
            secrets_.append(secret)
        assert len(set(secrets_)) == len(secrets_)
        # (compared with hmac.compare_digest: see Engine._resumable)
        session_id, token = tokens[0]
        secret = token.partition(".")[2]
        forged = [
            f"rt_{session_id}." + "A" * 32,
            f"rt_{session_id}." + secret[:-1] + ("A" if secret[-1] != "A" else "B"),
            f"rt_{session_id}.",
            f"rt_{session_id}",
            f"rt_{session_id}." + secret + "x",
            token.replace("rt_", "xx_", 1),
            f"rt_{tokens[1][0]}.{secret}",  # another session's id with this secret
            "rt_" + "\x00" * 10 + "." + secret,
            "rt_" + "a" * 5000,
        ]
        for bad in forged:
            assert await _refused(server, wire.Hello(machine_id="m0", machine_hostname="h",
                                                     resume_token=bad)) == "resume_rejected"
            _count("forged resume token (refused)")
        # another machine's token, and another workspace's agent with the right token
        assert await _refused(server, wire.Hello(machine_id="m1", machine_hostname="h",
                                                 resume_token=token)) == "resume_rejected"
        assert await _refused(server, wire.Hello(machine_id="m0", machine_hostname="h",
                                                 resume_token=token),
                              OTHER_AGENT) == "resume_rejected"
        _count("another machine's or workspace's resume token (refused)", 2)
        # the real one resumes once; replaying it afterwards is refused
        async with connect_agent(server) as agent:
            welcome = await agent.hello("m0", "h", resume_token=token)
            assert welcome.resumed and welcome.resume_token != token
            assert await _refused(server, wire.Hello(machine_id="m0", machine_hostname="h",
                                                     resume_token=token)) == "resume_rejected"
            _count("replayed resume token (refused)")
            await agent.send(wire.Goodbye())
            await agent.closed()
        # the session ended: its latest token is refused too
        assert await _refused(server, wire.Hello(machine_id="m0", machine_hostname="h",
                                                 resume_token=welcome.resume_token)) == (
            "resume_rejected")
        _count("replayed resume token (refused)")


# -- hostile bodies, frames and queries ---------------------------------------------------------


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


async def test_hostile_bodies_get_4xx_envelopes_and_keep_the_connection():
    settings = HttpSettings(max_body_bytes=64 * 1024)
    async with running_server(settings=settings) as server, api_client(server) as api:
        r = await api.post("/v1/sessions", json={"machine_id": "m", "machine_hostname": "h"})
        sid = r.json()["data"]["session_id"]
        bodies = {
            "malformed JSON": b'{"machine_id": "m", ',
            "invalid UTF-8": b'{"machine_id": "\xff\xfe", "machine_hostname": "h"}',
            "deep nesting": _deep(30_000),
            "deep object nesting": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
            "NUL bytes": b"\x00" * 100,
            "not an object": b"[1, 2, 3]",
            "huge number": b'{"machine_id": ' + b"9" * 50_000 + b', "machine_hostname": "h"}',
            "CR/LF in a field": b'{"machine_id": "m\\r\\nX-Injected: 1", "machine_hostname": "h"}',
            "over the limit": b'{"machine_id": "' + b"a" * 70_000 + b'"}',
        }
        writes = [op for op in OPERATIONS if op.body is not None]
        for name, body in bodies.items():
            for op in writes:
                path = _path(op, session_id=sid, webhook_id="hook_x")
                r = await api.request(op.method, path, content=body,
                                      headers={"Content-Type": "application/json"})
                assert_envelope(r)
                assert "x-injected" not in r.headers
                if name == "over the limit":
                    assert r.status_code == 413
                _count(f"hostile body: {name}")
                # the connection (or its replacement after a 413) still answers
                assert (await api.get("/healthz")).status_code == 200
        # a lying Content-Type and a huge header are refused the same way
        r = await api.post("/v1/sessions", content=b"machine_id=m", headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        assert_envelope(r, 400)
        _count("hostile body: form-encoded")


async def test_huge_and_hostile_query_strings():
    async with running_server() as server, api_client(server) as api:
        probes = {
            "long value": {"machine_id": "m" * 20_000},
            "many parameters": {f"p{i}": "1" for i in range(2_000)},
            "repeated parameter": [("limit", "1")] * 2_000,
            "CR/LF": {"machine_id": "a\r\nX-Injected: 1"},
            "NUL": {"machine_hostname": "\x00"},
            "invalid UTF-8": None,
            "huge integer": {"offset": "9" * 5_000},
            "negative": {"limit": "-1"},
        }
        for name, params in probes.items():
            for path in ("/v1/sessions", "/v1/sessions/x/history", "/v1/events",
                         "/v1/webhooks/x/deliveries"):
                if params is None:
                    url = httpx.URL(server.url + path + "?machine_id=%ff%fe&limit=%c3")
                    r = await api.get(url)
                else:
                    r = await api.get(path, params=params)
                if name in ("CR/LF", "NUL") and path == "/v1/sessions":
                    # a filter that matches nothing: an empty page is the right answer
                    assert r.status_code == 200 and r.json()["meta"]["total"] == 0
                else:
                    assert_envelope(r)
                assert "x-injected" not in r.headers
                _count(f"hostile query: {name}")
        # past the server's request-head limit (64 KiB; httpx will not even build such a URL):
        # refused by the HTTP layer before the app, still with the envelope
        status, _, body = await raw_request(server.url, b"GET /v1/sessions?machine_id="
                                          + b"m" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert 400 <= status < 500 and set(json.loads(body)["error"]) == {
            "code", "message", "details"}, (status, body[:200])
        _count("hostile query: over the request-head limit")
        assert (await api.get("/healthz")).status_code == 200


async def test_requests_http_itself_refuses_get_the_envelope():
    """Malformed HTTP never reaches the app; Hypercorn's answer still carries the envelope
    (the fuzzer found ``Content-Length: 8G&G`` answered with an empty 400)."""
    async with running_server() as server:
        for name, request in {
            "non-numeric Content-Length": b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Length: 8G&G\r\n\r\n",
            "two Content-Lengths": b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "broken request line": b"GET  HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            "header without a colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n",
            "space before a colon": b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",
        }.items():
            status, _, body = await raw_request(server.url, request)
            assert status == 400, (name, status, body)
            error = json.loads(body)["error"]
            assert error == {"code": "bad_request", "message": "Malformed HTTP request",
                             "details": {}}, (name, body)
            _count(f"malformed HTTP: {name}")


async def test_header_injection_never_reaches_a_response_header():
    async with running_server() as server, api_client(server) as api:
        evil = "mach\r\nX-Injected: 1\r\nSet-Cookie: a=b"
        for path in (f"/v1/machines/{evil}/session", f"/v1/sessions/{evil}",
                     f"/v1/sessions/{evil}/history", f"/v1/webhooks/{evil}"):
            r = await api.get(httpx.URL(server.url).join(path.replace("\r\n", "%0D%0A")))
            assert_envelope(r, 404)
            assert "x-injected" not in r.headers and "set-cookie" not in r.headers
            _count("header injection through a path")
        r = await api.request("PATCH", "/v1/sessions", headers={"X-Evil": "ok"})
        assert_envelope(r, 405)
        assert "\n" not in r.headers["allow"]
        # through the agent socket: the hello is refused, nothing is stored
        async with connect_agent(server) as agent:
            await agent.send_raw(json.dumps({"type": "hello", "machine_id": evil,
                                             "machine_hostname": "h"}))
            code, _, frames = await agent.closed()
        assert code == 1008 and frames[0].code == "invalid_parameter"
        assert server.engine.live_sessions == 0
        _count("header injection through a hello")
        # through a REST write: refused before the engine sees it
        r = await api.post("/v1/sessions", json={"machine_id": evil, "machine_hostname": "h"})
        assert_envelope(r, 400)
        _count("header injection through a write")


async def test_hostile_frames_get_error_frames_and_never_crash():
    settings = HttpSettings(max_frame_bytes=8 * 1024, max_violations=1_000_000)
    async with running_server(settings=settings) as server:
        async with connect_agent(server) as agent:
            welcome = await agent.hello("m", "h")
            frames = {
                "malformed JSON": '{"type": "heartbeat", ',
                "unknown type": '{"type": "shell", "cmd": "rm -rf /"}',
                "deep nesting": "[" * 4000 + "]" * 4000,
                "deep telemetry": '{"type": "heartbeat", "telemetry": ' + "[" * 3000
                                  + "]" * 3000 + "}",
                "wrong types": '{"type": "command", "command": 1, "exit_code": "0"}',
                "huge integer": '{"type": "command_result", "command_id": "c", "exit_code": '
                                + "9" * 4000 + "}",
                "over the limit": json.dumps({"type": "goodbye", "reason": "x" * 9000}),
                "hello again": json.dumps({"type": "hello", "machine_id": "m",
                                           "machine_hostname": "h"}),
                "result for no command": '{"type": "command_result", "command_id": "nope",'
                                         ' "exit_code": 0}',
                "binary invalid UTF-8": b'{"type": "heartbeat"}\xff\xfe',
                "binary garbage": bytes(range(256)),
                "exit code past 64 bits": '{"type": "command", "command": "x", "exit_code": '
                                          + "9" * 5000 + "}",
            }
            for name, data in frames.items():
                await agent.send_raw(data)
                frame = await agent.receive()
                assert isinstance(frame, wire.Error), (name, frame)
                _count(f"hostile frame: {name}")
            # Control characters in agent-reported text are refused like REST's (an error
            # frame naming the field), and nothing is stored.
            await agent.send_raw('{"type": "command", "command": "a\\u0000b", "exit_code": 0,'
                                 ' "command_id": "c\\r\\nX-Injected: 1"}')
            frame = await agent.receive()
            assert isinstance(frame, wire.Error) and frame.code == "invalid_parameter", frame
            async with api_client(server) as api:
                r = await api.get(f"/v1/sessions/{welcome.session_id}/history")
                assert r.status_code == 200 and r.json()["data"] == []
            _count("hostile frame: control characters in a reported command")
            # still the same live session, still heartbeating
            await agent.send(wire.Heartbeat())
            detail = server.engine.get_session("ws_acme", welcome.session_id)
            assert detail.status in ("CONNECTED",)
        # far over the limit: cut off by the server (1009), the session is in grace, no crash
        async with connect_agent(server) as agent:
            await agent.hello("m2", "h")
            await agent.send_raw(json.dumps({"type": "goodbye", "reason": "x" * 20_000}))
            code, _, _ = await agent.closed()
            assert code == 1009
            _count("hostile frame: far over the limit (1009)")
        async with api_client(server) as api:
            assert (await api.get("/healthz")).status_code == 200


# -- flooding ------------------------------------------------------------------------------------


async def test_a_flooding_agent_is_throttled_without_starving_the_others():
    rate, burst = 200.0, 50
    settings = HttpSettings(agent_frame_rate=rate, agent_frame_burst=burst)
    async with running_server(settings=settings) as server, trio.open_nursery() as nursery:
        engine = server.engine
        flood_sent = 0
        async with connect_agent(server) as flooder:
            welcome = await flooder.hello("flooder", "h")

            def version() -> int:
                facts = session_facts(engine, welcome.session_id)
                assert facts is not None
                return facts.version

            start_version = version()
            started = trio.current_time()

            async def flood() -> None:
                nonlocal flood_sent
                frame = wire.encode(wire.Heartbeat()).decode()
                with trio.move_on_after(3), contextlib.suppress(
                        trio_websocket.ConnectionClosed):
                    for _ in range(20_000):
                        await flooder.ws.send_message(frame)
                        flood_sent += 1

            nursery.start_soon(flood)
            # meanwhile, other agents go through a whole conversation promptly
            async with api_client(server) as api:
                for n in range(5):
                    t0 = trio.current_time()
                    async with connect_agent(server) as agent:
                        w = await agent.hello(f"calm{n}", "h")
                        await agent.send(wire.Command(command="ls", exit_code=0,
                                                      command_id="c1"))
                        history = None
                        for _ in range(200):
                            history = (await api.get(f"/v1/sessions/{w.session_id}/history")
                                       ).json()
                            if history["data"]:
                                break
                            await trio.sleep(0.005)
                        assert history and history["data"][0]["command_id"] == "c1"
                        await agent.send(wire.Goodbye())
                        await agent.closed()
                    assert trio.current_time() - t0 < 2.0, "a calm agent was starved"
                    _count("calm agent's conversation during a flood")
            elapsed = trio.current_time() - started
            processed = version() - start_version
            # the server read no more than the bucket allows (plus what it read meanwhile)
            assert processed <= burst + rate * (elapsed + 0.2), (processed, elapsed)
            assert processed < flood_sent or flood_sent < burst
            nursery.cancel_scope.cancel()
        _count("flooding agent throttled (frames read at the configured rate)")
