"""A send that races Hypercorn closing the connection: no error escapes the socket handler.

Hypercorn's trio TCP server half-closes a connection (``send_eof``) outside the lock its sends
take, so a frame the handler sends at that moment raises ``trio.BusyResourceError`` (seen
under load in ``tether sim``). The race is rare and timing-bound, so it is injected here: the
handler's ``websocket.send`` raises exactly that, at the welcome or at a ``run_command``.
"""

from __future__ import annotations

import logging

import pytest
import trio

from tether import wire
from tether.http import _agent

from .conftest import api_client, connect_agent, running_server


class _RacingSocket:
    """Quart's ``websocket``, except that sending a frame containing ``fail_on`` raises as
    Hypercorn's half-close race does."""

    def __init__(self, real: object, fail_on: str) -> None:
        self._real = real
        self._fail_on = fail_on

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    async def send(self, data: str) -> None:
        if self._fail_on in data:
            raise trio.BusyResourceError("another task is currently sending data on this "
                                         "SocketStream")
        await self._real.send(data)


@pytest.fixture
def racing_send(monkeypatch):
    def racing(fail_on: str) -> None:
        monkeypatch.setattr(_agent, "websocket", _RacingSocket(_agent.websocket, fail_on))
    return racing


async def test_a_run_command_racing_the_close_ends_the_socket_quietly(racing_send, caplog):
    caplog.set_level(logging.WARNING)
    racing_send('"run_command"')
    async with running_server() as server, api_client(server) as api:
        async with connect_agent(server) as agent:
            welcome = await agent.hello("m_race", "h")
            path = f"/v1/sessions/{welcome.session_id}"
            client = (await api.post(f"{path}/clients", json={
                "user_email": "op@example.com", "mode": "operator"})).json()["data"]
            r = await api.post(f"{path}/commands", json={
                "client_id": client["client_id"], "command": "uptime"})
            assert r.status_code == 202
            await agent.closed()  # the server side ended the socket
        for _ in range(100):
            status = (await api.get(path)).json()["data"]["status"]
            if status == "GRACE_PERIOD":
                break
            await trio.sleep(0.01)
        assert status == "GRACE_PERIOD"  # the transport was lost, the session kept
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


async def test_a_welcome_racing_the_close_leaves_no_error(racing_send, caplog):
    caplog.set_level(logging.WARNING)
    racing_send('"welcome"')
    async with running_server() as server:
        async with connect_agent(server) as agent:
            await agent.send(wire.Hello(machine_id="m_race", machine_hostname="h"))
            await agent.send(wire.Goodbye())
            await agent.closed()
        assert server.engine.live_sessions == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
