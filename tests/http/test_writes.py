"""The writes: create, terminate, attach/detach, operator commands."""

from __future__ import annotations

from tether import wire

from .conftest import connect_agent, poll


async def test_create_then_agent_connects(server, api):
    r = await api.post("/v1/sessions", json={"machine_id": "mach_1", "machine_hostname": "web"})
    assert r.status_code == 201
    created = r.json()["data"]
    assert created["status"] == "PENDING"
    assert created["workspace_id"] == "ws_acme"
    assert created["attached_clients"] == []
    sid = created["session_id"]
    # a second one for the same machine is refused while the first lives
    again = await api.post("/v1/sessions", json={"machine_id": "mach_1", "machine_hostname": "w"})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "session_already_active"
    async with connect_agent(server) as agent:
        welcome = await agent.hello("mach_1", "web")
        assert welcome.session_id == sid  # the agent picked up the waiting session
        data = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
        assert data["status"] == "CONNECTED"


async def test_terminate(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        r = await api.delete(f"/v1/sessions/{sid}")
        assert r.status_code == 200
        data = r.json()["data"]
        assert data["status"] == "DISCONNECTED"
        assert data["reason"] == "terminated"
        # the agent's socket is closed by the server
        closed = await _closed(agent)
        assert closed.reason == "terminated"
    again = await api.delete(f"/v1/sessions/{sid}")
    assert again.status_code == 409
    assert again.json()["error"] == {"code": "session_not_active",
                                     "message": "Session is not in an active state",
                                     "details": {"current_status": "DISCONNECTED"}}


async def _closed(agent):
    import trio_websocket

    try:
        while True:
            await agent.ws.get_message()
    except trio_websocket.ConnectionClosed as closed:
        return closed.reason


async def test_attach_detach(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        r = await api.post(f"/v1/sessions/{sid}/clients",
                           json={"user_email": "[email protected]", "mode": "observer"})
        assert r.status_code == 201
        client = r.json()["data"]
        assert client["mode"] == "observer"
        r = await api.delete(f"/v1/sessions/{sid}/clients/{client['client_id']}")
        assert r.status_code == 204
        assert r.content == b""
        data = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
        assert data["attached_clients"] == []
        r = await api.delete(f"/v1/sessions/{sid}/clients/{client['client_id']}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "client_not_found"
        # background: not CONNECTED, so attaching is the seed's 409
        await agent.send(wire.Background())
        await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["status"] == "BACKGROUND")
        r = await api.post(f"/v1/sessions/{sid}/clients",
                           json={"user_email": "[email protected]", "mode": "operator"})
        assert r.status_code == 409
        assert r.json()["error"]["details"] == {"current_status": "BACKGROUND"}


async def test_attach_to_pending_is_409(api):
    sid = (await api.post("/v1/sessions", json={"machine_id": "m", "machine_hostname": "h"})
           ).json()["data"]["session_id"]
    r = await api.post(f"/v1/sessions/{sid}/clients",
                       json={"user_email": "[email protected]", "mode": "operator"})
    assert r.status_code == 409
    assert r.json()["error"] == {"code": "session_not_active",
                                 "message": "Session is not in CONNECTED state",
                                 "details": {"current_status": "PENDING"}}


async def test_operator_command_round_trip(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        op = (await api.post(f"/v1/sessions/{sid}/clients",
                             json={"user_email": "[email protected]", "mode": "operator"})
              ).json()["data"]
        r = await api.post(f"/v1/sessions/{sid}/commands",
                           json={"client_id": op["client_id"], "command": "uptime"})
        assert r.status_code == 202
        view = r.json()["data"]
        assert view["state"] == "pending"
        assert view["command"] == "uptime"
        assert view["exit_code"] is None
        frame = await agent.receive()
        assert frame == wire.RunCommand(command_id=view["command_id"], command="uptime",
                                        user_email="[email protected]")
        await agent.send(wire.CommandResult(command_id=frame.command_id, exit_code=0))
        path = f"/v1/sessions/{sid}/commands/{view['command_id']}"
        done = (await poll(api, path, lambda b: b["data"]["state"] != "pending"))["data"]
        assert done["state"] == "completed"
        assert done["exit_code"] == 0
        assert done["completed_at"] is not None
        history = (await api.get(f"/v1/sessions/{sid}/history")).json()["data"]
        assert [(c["command_id"], c["command"], c["exit_code"], c["user_email"])
                for c in history] == [(view["command_id"], "uptime", 0, "[email protected]")]

        # a failing command
        r = await api.post(f"/v1/sessions/{sid}/commands",
                           json={"client_id": op["client_id"], "command": "false"})
        frame = await agent.receive()
        await agent.send(wire.CommandResult(command_id=frame.command_id, exit_code=1))
        failed = await poll(api, f"/v1/sessions/{sid}/commands/{frame.command_id}",
                            lambda b: b["data"]["state"] != "pending")
        assert failed["data"]["state"] == "failed"
        assert failed["data"]["exit_code"] == 1


async def test_command_errors(server, api):
    async with connect_agent(server) as agent:
        sid = (await agent.hello()).session_id
        ob = (await api.post(f"/v1/sessions/{sid}/clients",
                             json={"user_email": "[email protected]", "mode": "observer"})
              ).json()["data"]
        r = await api.post(f"/v1/sessions/{sid}/commands",
                           json={"client_id": ob["client_id"], "command": "rm -rf /"})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "client_not_operator"
        r = await api.post(f"/v1/sessions/{sid}/commands",
                           json={"client_id": "cli_nobody", "command": "ls"})
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "client_not_found"
        r = await api.get(f"/v1/sessions/{sid}/commands/cmd_nothing")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "command_not_found"
        await agent.send(wire.Goodbye(reason="bye"))
        await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["status"] == "DISCONNECTED")
    r = await api.post(f"/v1/sessions/{sid}/commands",
                       json={"client_id": ob["client_id"], "command": "ls"})
    assert r.status_code == 409
    assert r.json()["error"]["details"] == {"current_status": "DISCONNECTED"}
