"""Every example of the seed (sessions-api.txt), against a local server with its own data."""

from __future__ import annotations

import re

from tether import wire

from .conftest import connect_agent, poll

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SUMMARY_FIELDS = {
    "session_id", "status", "machine_id", "machine_hostname", "workspace_id", "created_at",
    "connected_at", "last_heartbeat_at", "attached_clients",
}


async def test_list_connected_sessions(server, api):
    # curl "https://api.cmdop.com/v1/sessions?status=CONNECTED&limit=10"
    async with connect_agent(server) as a1, connect_agent(server) as a2:
        w1 = await a1.hello("mach_xyz789", "prod-server")
        await a2.hello("mach_2", "db-server")
        await api.post("/v1/sessions", json={"machine_id": "mach_3", "machine_hostname": "p"})
        await a1.send(wire.Heartbeat())
        await poll(api, f"/v1/sessions/{w1.session_id}",
                   lambda b: b["data"]["last_heartbeat_at"] is not None)
        r = await api.get("/v1/sessions?status=CONNECTED&limit=10")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) == {"data", "meta"}
        assert body["meta"] == {"total": 2, "limit": 10, "offset": 0, "has_more": False}
        assert [s["machine_id"] for s in body["data"]] == ["mach_2", "mach_xyz789"]  # newest 1st
        first = body["data"][1]
        assert set(first) == SUMMARY_FIELDS
        assert first["session_id"] == w1.session_id
        assert first["status"] == "CONNECTED"
        assert first["machine_hostname"] == "prod-server"
        assert first["workspace_id"] == "ws_acme"
        assert first["attached_clients"] == 0
        for field in ("created_at", "connected_at", "last_heartbeat_at"):
            assert TS.match(first[field]), first[field]

        # defaults, filters, paging
        everything = (await api.get("/v1/sessions")).json()
        assert everything["meta"] == {"total": 3, "limit": 20, "offset": 0, "has_more": False}
        pending = (await api.get("/v1/sessions", params={"status": "PENDING"})).json()
        assert [s["machine_id"] for s in pending["data"]] == ["mach_3"]
        by_host = (await api.get("/v1/sessions", params={"machine_hostname": "db-server"})).json()
        assert [s["machine_id"] for s in by_host["data"]] == ["mach_2"]
        by_machine = (await api.get("/v1/sessions", params={"machine_id": "mach_xyz789"})).json()
        assert [s["session_id"] for s in by_machine["data"]] == [w1.session_id]
        page = (await api.get("/v1/sessions", params={"limit": 1, "offset": 1})).json()
        assert page["meta"] == {"total": 3, "limit": 1, "offset": 1, "has_more": True}
        assert [s["machine_id"] for s in page["data"]] == ["mach_2"]
        past = (await api.get("/v1/sessions", params={"offset": 50})).json()
        assert past == {"data": [], "meta": {"total": 3, "limit": 20, "offset": 50,
                                             "has_more": False}}


async def test_get_session_with_clients_and_telemetry(server, api):
    # curl "https://api.cmdop.com/v1/sessions/sess_abc123"
    async with connect_agent(server) as agent:
        welcome = await agent.hello("mach_xyz789", "prod-server")
        sid = welcome.session_id
        await agent.send(wire.Heartbeat(telemetry=wire.Telemetry(
            cpu_percent=45.2, memory_percent=62.1, disk_percent=78.5)))
        await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["telemetry"] is not None)
        op = (await api.post(f"/v1/sessions/{sid}/clients",
                             json={"user_email": "[email protected]", "mode": "operator"})).json()
        ob = (await api.post(f"/v1/sessions/{sid}/clients",
                             json={"user_email": "[email protected]", "mode": "observer"})).json()
        r = await api.get(f"/v1/sessions/{sid}")
        assert r.status_code == 200
        data = r.json()["data"]
        assert set(data) >= SUMMARY_FIELDS
        assert "telemetry" in data
        assert data["status"] == "CONNECTED"
        assert data["machine_id"] == "mach_xyz789"
        assert data["attached_clients"] == [op["data"], ob["data"]]
        assert data["attached_clients"][0]["user_email"] == "[email protected]"
        assert data["attached_clients"][0]["mode"] == "operator"
        assert data["attached_clients"][1]["mode"] == "observer"
        assert set(data["attached_clients"][0]) == {"client_id", "user_email", "mode",
                                                    "attached_at"}
        assert data["attached_clients"][0]["client_id"].startswith("cli_")
        assert data["telemetry"] == {"cpu_percent": 45.2, "memory_percent": 62.1,
                                     "disk_percent": 78.5}
        listed = (await api.get("/v1/sessions")).json()["data"][0]
        assert listed["attached_clients"] == 2


async def test_machine_session_and_no_active_session(server, api):
    # curl "https://api.cmdop.com/v1/machines/mach_xyz789/session"
    async with connect_agent(server) as agent:
        welcome = await agent.hello("mach_xyz789", "prod-server")
        r = await api.get("/v1/machines/mach_xyz789/session")
        assert r.status_code == 200
        data = r.json()["data"]
        assert set(data) == {"session_id", "status", "machine_hostname", "connected_at"}
        assert data["session_id"] == welcome.session_id
        assert data["status"] == "CONNECTED"
        assert data["machine_hostname"] == "prod-server"
        assert TS.match(data["connected_at"])
    r = await api.get("/v1/machines/mach_unknown/session")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "session_not_found"
    assert error["message"] == "No active session for this machine"


async def test_history(server, api):
    # curl "https://api.cmdop.com/v1/sessions/sess_abc123/history?limit=50"
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Command(command_id="cmd_111", command="ls -la", exit_code=0,
                                      user_email="[email protected]"))
        await agent.send(wire.Command(command_id="cmd_222", command="cat /etc/hostname",
                                      exit_code=0, user_email="[email protected]",
                                      executed_at="2026-02-14T10:16:00Z"))
        body = await poll(api, f"/v1/sessions/{sid}/history?limit=50",
                          lambda b: len(b["data"]) == 2)
        first, second = body["data"]
        assert set(first) == {"command_id", "command", "exit_code", "executed_at", "user_email"}
        assert first["command_id"] == "cmd_111"
        assert first["command"] == "ls -la"
        assert first["exit_code"] == 0
        assert first["user_email"] == "[email protected]"
        assert TS.match(first["executed_at"])
        assert second == {"command_id": "cmd_222", "command": "cat /etc/hostname",
                          "exit_code": 0, "executed_at": "2026-02-14T10:16:00Z",
                          "user_email": "[email protected]"}
        # the cursor: one per page, oldest first, paging back with before=
        page = (await api.get(f"/v1/sessions/{sid}/history", params={"limit": 1})).json()
        assert [c["command_id"] for c in page["data"]] == ["cmd_222"]
        assert page["meta"]["has_more"] is True
        older = (await api.get(f"/v1/sessions/{sid}/history",
                               params={"limit": 1, "before": page["meta"]["next_before"]})).json()
        assert [c["command_id"] for c in older["data"]] == ["cmd_111"]
        assert older["meta"]["has_more"] is False


async def test_metrics(server, api):
    # curl "https://api.cmdop.com/v1/sessions/sess_abc123/metrics"
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.TelemetryFrame(
            cpu_percent=45.2, memory_percent=62.1, disk_percent=78.5,
            network_rx_bytes=1234567, network_tx_bytes=987654, uptime_seconds=123456))
        body = await poll(api, f"/v1/sessions/{sid}/metrics",
                          lambda b: b["data"]["timestamp"] is not None)
        data = body["data"]
        assert TS.match(data.pop("timestamp"))
        assert data == {"session_id": sid, "cpu_percent": 45.2, "memory_percent": 62.1,
                        "disk_percent": 78.5, "network_rx_bytes": 1234567,
                        "network_tx_bytes": 987654, "uptime_seconds": 123456}


async def test_seed_errors(server, api):
    r = await api.get("/v1/sessions/sess_invalid")
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "session_not_found", "message": "Session not found",
                                  "details": {"session_id": "sess_invalid"}}}
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        await agent.send(wire.Goodbye())
        await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["status"] == "DISCONNECTED")
    r = await api.get(f"/v1/sessions/{sid}/metrics")
    assert r.status_code == 409
    assert r.json() == {"error": {"code": "session_not_active",
                                  "message": "Session is not in CONNECTED state",
                                  "details": {"current_status": "DISCONNECTED"}}}
