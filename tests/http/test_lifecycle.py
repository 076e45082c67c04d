"""Grace period, resume and timeouts over the wire, under ``MockClock`` (rate 0).

Time moves only by ``mock_clock.jump``; the API is then polled in a bounded loop until the
session's status changes. No test sleeps on the wall clock.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tether import wire

from .conftest import connect_agent, poll
from .test_agent import closed_reason

pytestmark = pytest.mark.engine(
    heartbeat_interval=1, heartbeat_timeout=3, grace_period=5, pending_timeout=10
)


def status_is(status):
    return lambda b: b["data"]["status"] == status


async def test_resume_within_grace_period(server, api, mock_clock):
    async with connect_agent(server) as agent:
        welcome = await agent.hello("mach_1", "web")
        assert (welcome.heartbeat_interval, welcome.heartbeat_timeout, welcome.grace_period) == (
            1.0, 3.0, 5.0)
    sid = welcome.session_id
    data = (await poll(api, f"/v1/sessions/{sid}", status_is("GRACE_PERIOD")))["data"]
    assert data["reason"] == "transport_closed"
    mock_clock.jump(4)  # within the 5 s grace period
    async with connect_agent(server) as agent:
        again = await agent.hello("mach_1", "web", resume_token=welcome.resume_token)
        assert again.session_id == sid
        assert again.resumed is True
        assert again.resume_token != welcome.resume_token
        data = (await api.get(f"/v1/sessions/{sid}")).json()["data"]
        assert (data["status"], data["reason"]) == ("CONNECTED", "resumed")
        # commands reach the new socket
        op = (await api.post(f"/v1/sessions/{sid}/clients",
                             json={"user_email": "[email protected]", "mode": "operator"})
              ).json()["data"]
        await api.post(f"/v1/sessions/{sid}/commands",
                       json={"client_id": op["client_id"], "command": "whoami"})
        frame = await agent.receive()
        assert isinstance(frame, wire.RunCommand)
        assert frame.command == "whoami"
        # the old token is spent
        async with connect_agent(server) as impostor:
            await impostor.send(wire.Hello(machine_id="mach_1", machine_hostname="web",
                                           resume_token=welcome.resume_token))
            assert (await impostor.receive()).code == "resume_rejected"


async def test_grace_period_expires(server, api, mock_clock):
    async with connect_agent(server) as agent:
        welcome = await agent.hello()
    sid = welcome.session_id
    await poll(api, f"/v1/sessions/{sid}", status_is("GRACE_PERIOD"))
    mock_clock.jump(5.5)
    data = (await poll(api, f"/v1/sessions/{sid}", status_is("DISCONNECTED")))["data"]
    assert data["reason"] == "grace_expired"
    assert data["ended_at"] is not None
    async with connect_agent(server) as agent:
        await agent.send(wire.Hello(machine_id="mach_xyz789", machine_hostname="prod-server",
                                    resume_token=welcome.resume_token))
        assert (await agent.receive()).code == "resume_rejected"


async def test_missed_heartbeats_then_resume_on_a_new_socket(server, api, mock_clock):
    async with connect_agent(server) as agent:
        welcome = await agent.hello()
        sid = welcome.session_id
        mock_clock.jump(2)
        await agent.send(wire.Heartbeat())  # moves the deadline to t=5
        await poll(api, f"/v1/sessions/{sid}", lambda b: b["data"]["last_heartbeat_at"])
        mock_clock.jump(2)  # t=4: still alive
        await trio.testing.wait_all_tasks_blocked()
        assert (await api.get(f"/v1/sessions/{sid}")).json()["data"]["status"] == "CONNECTED"
        mock_clock.jump(1.5)  # t=5.5: silent past the timeout
        data = (await poll(api, f"/v1/sessions/{sid}", status_is("GRACE_PERIOD")))["data"]
        assert data["reason"] == "heartbeat_timeout"
        assert await closed_reason(agent) == (1000, "heartbeat_timeout")  # the server let go
    async with connect_agent(server) as agent:
        again = await agent.hello(resume_token=welcome.resume_token)
        assert (again.session_id, again.resumed) == (sid, True)


async def test_pending_session_times_out(api, mock_clock):
    sid = (await api.post("/v1/sessions", json={"machine_id": "m", "machine_hostname": "h"})
           ).json()["data"]["session_id"]
    mock_clock.jump(10.5)
    data = (await poll(api, f"/v1/sessions/{sid}", status_is("DISCONNECTED")))["data"]
    assert data["reason"] == "pending_timeout"


async def test_hello_timeout(server, mock_clock):
    async with connect_agent(server) as agent:
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(10.5)
        frame = await agent.receive()
        assert frame.code == "hello_timeout"
        assert await closed_reason(agent) == (1008, "hello_timeout")
