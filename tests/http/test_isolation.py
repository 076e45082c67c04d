"""A key sees only its workspace: another workspace's session is a 404 on every endpoint."""

from __future__ import annotations

from tether import wire

from .conftest import OTHER_AGENT, connect_agent, poll


async def test_other_workspace_sees_nothing(server, api, other):
    async with connect_agent(server) as agent:
        sid = (await agent.hello("mach_xyz789", "prod-server")).session_id
        op = (await api.post(f"/v1/sessions/{sid}/clients",
                             json={"user_email": "[email protected]", "mode": "operator"})
              ).json()["data"]
        cmd = (await api.post(f"/v1/sessions/{sid}/commands",
                              json={"client_id": op["client_id"], "command": "ls"})
               ).json()["data"]
        assert isinstance(await agent.receive(), wire.RunCommand)

        listing = (await other.get("/v1/sessions")).json()
        assert listing == {"data": [], "meta": {"total": 0, "limit": 20, "offset": 0,
                                                "has_more": False}}
        for q in ({"machine_id": "mach_xyz789"}, {"machine_hostname": "prod-server"},
                  {"status": "CONNECTED"}):
            assert (await other.get("/v1/sessions", params=q)).json()["meta"]["total"] == 0
        not_found = [
            ("GET", f"/v1/sessions/{sid}", None),
            ("GET", f"/v1/sessions/{sid}/history", None),
            ("GET", f"/v1/sessions/{sid}/metrics", None),
            ("DELETE", f"/v1/sessions/{sid}", None),
            ("POST", f"/v1/sessions/{sid}/clients",
             {"user_email": "[email protected]", "mode": "operator"}),
            ("DELETE", f"/v1/sessions/{sid}/clients/{op['client_id']}", None),
            ("POST", f"/v1/sessions/{sid}/commands",
             {"client_id": op["client_id"], "command": "rm -rf /"}),
            ("GET", f"/v1/sessions/{sid}/commands/{cmd['command_id']}", None),
        ]
        for method, path, body in not_found:
            r = await other.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.text)
            error = r.json()["error"]
            assert error["code"] == "session_not_found"
            assert error["details"] == {"session_id": sid}  # the same as a missing session
        r = await other.get("/v1/machines/mach_xyz789/session")
        assert r.status_code == 404
        assert r.json()["error"]["message"] == "No active session for this machine"

        # the same machine id in another workspace is another machine
        async with connect_agent(server, OTHER_AGENT) as stranger:
            theirs = (await stranger.hello("mach_xyz789", "prod-server")).session_id
            assert theirs != sid
            assert (await other.get(f"/v1/sessions/{theirs}")).status_code == 200
            assert (await api.get(f"/v1/sessions/{theirs}")).status_code == 404
        # nothing changed on our side
        data = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
        assert data["status"] == "CONNECTED"
        assert [c["client_id"] for c in data["attached_clients"]] == [op["client_id"]]
        assert (await api.get(f"/v1/sessions/{sid}/commands/{cmd['command_id']}")
                ).json()["data"]["state"] == "pending"
        mine = (await api.get("/v1/sessions")).json()["meta"]["total"]
        assert mine == 1


async def test_agent_cannot_resume_another_workspaces_session(server, api):
    async with connect_agent(server) as agent:
        welcome = await agent.hello("mach_1", "h")
    await poll(api, f"/v1/sessions/{welcome.session_id}",
               lambda b: b["data"]["status"] == "GRACE_PERIOD")
    async with connect_agent(server, OTHER_AGENT) as thief:
        await thief.send(wire.Hello(machine_id="mach_1", machine_hostname="h",
                                    resume_token=welcome.resume_token))
        frame = await thief.receive()
        assert frame == wire.Error(code="resume_rejected",
                                   message="Resume token is not valid for a resumable session")
    data = (await api.get(f"/v1/sessions/{welcome.session_id}")).json()["data"]
    assert data["status"] == "GRACE_PERIOD"
