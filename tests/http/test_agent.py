"""The agent socket: the protocol table of design.md over a real WebSocket."""

from __future__ import annotations

import json
import logging

import pytest
import trio_websocket

from tether import wire

from .conftest import ACME_AGENT, ACME_KEY, connect_agent, poll


async def closed_reason(agent):
    """Read until the server closes the socket; its close reason (code, reason)."""
    try:
        while True:
            await agent.ws.get_message()
    except trio_websocket.ConnectionClosed as closed:
        return closed.reason.code, closed.reason.reason


@pytest.mark.parametrize("token", [None, ACME_KEY, "agt_unknown", "Bearer", "x"])
async def test_wrong_credentials_are_refused_before_upgrade(server, token):
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    with pytest.raises(trio_websocket.ConnectionRejected) as refused:
        async with trio_websocket.open_websocket_url(server.ws_url, extra_headers=headers):
            pass
    assert refused.value.status_code == 401
    assert dict(refused.value.headers)[b"www-authenticate"].startswith(b"Bearer")
    assert json.loads(refused.value.body)["error"]["code"] == "unauthorized"


async def test_hello_welcome(server, api):
    async with connect_agent(server) as agent:
        welcome = await agent.hello("mach_1", "web-1", agent_version="1.2.3")
        assert welcome.session_id.startswith("sess_")
        assert welcome.resume_token.startswith("rt_")
        assert (welcome.heartbeat_interval, welcome.heartbeat_timeout, welcome.grace_period) == (
            30.0, 60.0, 30.0)
        assert welcome.resumed is False
        data = (await api.get(f"/v1/sessions/{welcome.session_id}")).json()["data"]
        assert data["status"] == "CONNECTED"
        assert data["machine_hostname"] == "web-1"
        assert data["workspace_id"] == "ws_acme"


@pytest.mark.parametrize(
    "first, code",
    [
        ('{"type": "heartbeat"}', "hello_required"),
        ("not json", "invalid_frame"),
        ('{"type": "hello"}', "invalid_frame"),
        ('{"type": "hello", "machine_id": "", "machine_hostname": "h"}', "invalid_parameter"),
        ('{"type": "hello", "machine_id": "m", "machine_hostname": "h", "resume_token": "rt_x"}',
         "resume_rejected"),
        ('{"type": "hello", "machine_id": "m", "machine_hostname": "h", "agent_version": "1\\n"}',
         "invalid_parameter"),
        ('{"type": "hello", "machine_id": "m", "machine_hostname": "h", "agent_version": "'
         + "v" * 257 + '"}', "invalid_parameter"),
    ],
)
async def test_bad_first_frame(server, api, first, code):
    async with connect_agent(server) as agent:
        await agent.send_raw(first)
        frame = await agent.receive()
        assert isinstance(frame, wire.Error)
        assert frame.code == code
        assert await closed_reason(agent) == (1008, code)
    assert (await api.get("/v1/sessions")).json()["meta"]["total"] == 0


async def test_heartbeat_and_telemetry_update_the_session(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        before = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
        assert before["last_heartbeat_at"] is None
        await agent.send(wire.Heartbeat())
        after = await poll(api, f"/v1/sessions/{sid}",
                           lambda b: b["data"]["last_heartbeat_at"] is not None)
        assert after["data"]["version"] > before["version"]
        await agent.send(wire.Heartbeat(telemetry=wire.Telemetry(cpu_percent=1.5)))
        metrics = await poll(api, f"/v1/sessions/{sid}/metrics",
                             lambda b: b["data"]["cpu_percent"] == 1.5)
        assert metrics["data"]["memory_percent"] is None
        await agent.send(wire.TelemetryFrame(memory_percent=50.0, uptime_seconds=7))
        metrics = await poll(api, f"/v1/sessions/{sid}/metrics",
                             lambda b: b["data"]["uptime_seconds"] == 7)
        assert metrics["data"]["memory_percent"] == 50.0


async def test_malformed_frames_then_repeated_violations_close(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send_raw("{not json")
        e1 = await agent.receive()
        assert e1.code == "invalid_frame"
        await agent.send_raw('{"type": "teleport"}')
        e2 = await agent.receive()
        assert e2.code == "invalid_frame"
        assert "type" in e2.message
        # good frames still work between violations
        await agent.send(wire.Heartbeat())
        await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["last_heartbeat_at"])
        await agent.send_raw('{"type": "command_result", "command_id": 5, "exit_code": 0}')
        e3 = await agent.receive()
        assert e3.code == "invalid_frame"
        assert await closed_reason(agent) == (1008, "protocol_violation")
    data = await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["status"] == "ERROR")
    assert data["data"]["reason"] == "protocol_violation"


@pytest.mark.http(max_frame_bytes=1000, max_violations=3)
async def test_oversized_frames_are_refused(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Command(command="x" * 1500, exit_code=0))  # over the limit
        frame = await agent.receive()
        assert frame.code == "frame_too_large"
        # the limit is in bytes: 400 characters of 3 bytes each are 1,200 bytes
        await agent.send(wire.Command(command="€" * 400, exit_code=0))
        frame = await agent.receive()
        assert frame.code == "frame_too_large"
        assert (await api.get(f"/v1/sessions/{sid}/history")).json()["data"] == []
        # far over it: the server cuts the connection (1009, message too big)
        await agent.send_raw("x" * 5000)
        code, _ = await closed_reason(agent)
        assert code == 1009
    await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["status"] == "GRACE_PERIOD")


@pytest.mark.http(max_violations=4)
async def test_lifecycle_frames(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        path = f"/v1/sessions/{sid}"
        await agent.send(wire.Foreground())  # not allowed while CONNECTED
        frame = await agent.receive()
        assert frame.code == "protocol_violation"
        await agent.send(wire.Background())
        await poll(api, path, lambda b: b["data"]["status"] == "BACKGROUND")
        await agent.send(wire.Foreground())
        await poll(api, path, lambda b: b["data"]["status"] == "CONNECTED")
        await agent.send(wire.Hello(machine_id="m", machine_hostname="h"))
        assert (await agent.receive()).code == "unexpected_frame"
        await agent.send(wire.CommandResult(command_id="cmd_unknown", exit_code=0))
        assert (await agent.receive()).code == "invalid_parameter"
        await agent.send(wire.Error(code="disk_full", message="warning only"))  # not fatal
        await agent.send(wire.Goodbye(reason="shutting down"))
        assert await closed_reason(agent) == (1000, "agent_goodbye")
    data = (await api.get(path)).json()["data"]
    assert data["status"] == "DISCONNECTED"
    assert data["reason"] == "agent_goodbye"


async def test_a_non_fatal_agent_error_is_logged_without_forging_log_lines(server, caplog):
    caplog.set_level(logging.INFO, logger="tether")
    async with connect_agent(server) as agent:
        await agent.hello()
        await agent.send(wire.Error(code="disk\nfull", message="low\nERROR forged line"))
        await agent.send(wire.Goodbye())
        await closed_reason(agent)
    lines = [r.getMessage() for r in caplog.records if "reports" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "'low\\nERROR forged line'" in lines[0]


async def test_fatal_agent_error_ends_in_error(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Error(code="crashed", message="boom", fatal=True))
        assert (await closed_reason(agent))[0] == 1000
    data = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
    assert data["status"] == "ERROR"


async def test_duplicate_reported_command(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Command(command_id="cmd_1", command="ls", exit_code=0))
        await agent.send(wire.Command(command_id="cmd_1", command="ls", exit_code=0))
        assert (await agent.receive()).code == "duplicate_command"
        history = (await api.get(f"/v1/sessions/{sid}/history")).json()["data"]
        assert [c["command_id"] for c in history] == ["cmd_1"]


async def test_new_hello_replaces_the_old_session(server, api):
    async with connect_agent(server) as old:
        first = (await old.hello("mach_1", "h")).session_id
        async with connect_agent(server) as new:
            second = (await new.hello("mach_1", "h")).session_id
            assert second != first
            assert await closed_reason(old) == (1000, "replaced")
            old_data = (await api.get(f"/v1/sessions/{first}")).json()["data"]
            assert (old_data["status"], old_data["reason"]) == ("DISCONNECTED", "replaced")
            machine = (await api.get("/v1/machines/mach_1/session")).json()["data"]
            assert machine["session_id"] == second


async def test_closing_the_socket_enters_grace_period(server, api):
    async with connect_agent(server, ACME_AGENT) as agent:
        sid = (await agent.hello()).session_id
    data = await poll(api, f"/v1/sessions/{sid}",
                      lambda b: b["data"]["status"] == "GRACE_PERIOD")
    assert data["data"]["reason"] == "transport_closed"


_BAD_COMMAND_FRAMES = [
    ("command", wire.Command(command="x" * (64 * 1024 + 1), exit_code=0)),
    ("command", wire.Command(command="ls\n rm -rf /", exit_code=0)),
    ("command", wire.Command(command="\x1b]0;owned\x07ls", exit_code=0)),
    ("command", wire.Command(command="", exit_code=0)),
    ("command_id", wire.Command(command_id="cmd\r\n1", command="ls", exit_code=0)),
    ("command_id", wire.Command(command_id="c" * 257, command="ls", exit_code=0)),
    ("user_email", wire.Command(command="ls", exit_code=0, user_email="a@b.io\x00")),
    ("user_email", wire.Command(command="ls", exit_code=0, user_email="u" * 321)),
    ("command_id", wire.CommandResult(command_id="cmd\n", exit_code=0)),
    ("exit_code", wire.Command(command="ls", exit_code=2**32)),
    ("exit_code", wire.Command(command="ls", exit_code=-(2**31) - 1)),
    ("exit_code", wire.CommandResult(command_id="cmd_1", exit_code=10**30)),
    ("reason", wire.Goodbye(reason="bye\n[INFO] forged log line")),
    ("reason", wire.Goodbye(reason="r" * 1025)),
]


@pytest.mark.http(max_frame_bytes=256 * 1024, max_violations=len(_BAD_COMMAND_FRAMES) + 1)
async def test_frames_with_bad_text_get_an_error_frame_and_are_not_stored(server, api):
    """The API's rules for a command, its id, an email and a reason hold for agents' frames."""
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        path = f"/v1/sessions/{sid}"
        for parameter, frame in _BAD_COMMAND_FRAMES:
            await agent.send(frame)
            error = await agent.receive()
            assert isinstance(error, wire.Error), error
            assert (error.code, error.fatal) == ("invalid_parameter", False)
            assert f"'{parameter}'" in error.message
        assert (await api.get(f"{path}/history")).json()["data"] == []
        data = (await api.get(path)).json()["data"]
        assert (data["status"], data["reason_detail"]) == ("CONNECTED", None)
        events = (await api.get("/v1/events")).json()["data"]
        assert not [e for e in events if e["type"].startswith("command.")]
        # the socket is still open and good frames still work
        big = "e" * (64 * 1024)
        await agent.send(wire.Command(command_id="c" * 256, command=big, exit_code=0,
                                      user_email="u" * 320))
        await agent.send(wire.Command(command="echo héllo", exit_code=1, user_email="a@b.io"))
        await agent.send(wire.Command(command="crash.exe", exit_code=0xC0000005))
        await agent.send(wire.Command(command="kill -9 $$", exit_code=-(2**31)))
        history = await poll(api, f"{path}/history", lambda b: len(b["data"]) == 4)
        assert [(c["command"], c["exit_code"]) for c in history["data"]] == [
            (big, 0), ("echo héllo", 1), ("crash.exe", 0xC0000005), ("kill -9 $$", -(2**31))]
        await agent.send(wire.Goodbye(reason="r" * 1024))
        assert await closed_reason(agent) == (1000, "agent_goodbye")
    data = (await api.get(path)).json()["data"]
    assert (data["status"], data["reason"], data["reason_detail"]) == (
        "DISCONNECTED", "agent_goodbye", "r" * 1024)


@pytest.mark.http(max_violations=2)
async def test_repeated_bad_text_is_a_protocol_violation(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Command(command="ls\x00", exit_code=0))
        assert (await agent.receive()).code == "invalid_parameter"
        await agent.send(wire.Goodbye(reason="\x1b[2J"))
        assert (await agent.receive()).code == "invalid_parameter"
        assert await closed_reason(agent) == (1008, "protocol_violation")
    data = await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["status"] == "ERROR")
    assert data["data"]["reason"] == "protocol_violation"
    assert (await api.get(f"/v1/sessions/{sid}/history")).json()["data"] == []
