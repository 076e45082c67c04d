"""Attaching clients, running commands, history, and the errors the writes raise."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from tether.engine import (
    ClientNotFound,
    ClientNotOperator,
    CommandNotFound,
    DuplicateCommand,
    Engine,
    EngineConfig,
    InvalidParameter,
    SessionNotActive,
    SessionNotFound,
    Status,
)
from tether.engine.testing import FailingTransport

from .conftest import event_log, hello, stamp


async def test_attach_and_detach_clients(engine: Engine, autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    await trio.sleep(30)
    operator = await engine.attach_client("ws_acme", link.session_id, "alice@acme.io", "operator")
    link.heartbeat()
    await trio.sleep(30)
    observer = await engine.attach_client("ws_acme", link.session_id, "bob@acme.io", "observer")
    detail = engine.get_session("ws_acme", link.session_id)
    assert [(c.user_email, c.mode, c.attached_at) for c in detail.attached_clients] == [
        ("alice@acme.io", "operator", stamp(30)),
        ("bob@acme.io", "observer", stamp(60)),
    ]
    assert engine.list_sessions("ws_acme").data[0].attached_clients == 2
    await engine.detach_client("ws_acme", link.session_id, operator.client_id)
    assert [
        c.client_id for c in engine.get_session("ws_acme", link.session_id).attached_clients
    ] == [observer.client_id]
    with pytest.raises(ClientNotFound):
        await engine.detach_client("ws_acme", link.session_id, operator.client_id)
    assert [e[0] for e in event_log(engine)][2:] == [
        "session.client_attached",
        "session.client_attached",
        "session.client_detached",
    ]


async def test_only_a_connected_session_takes_clients(
    engine: Engine, autojump_clock: MockClock
) -> None:
    pending = await engine.create_session("ws_acme", "mach_p", "h")
    with pytest.raises(SessionNotActive) as raised:
        await engine.attach_client("ws_acme", pending.session_id, "a@b.io", "operator")
    assert raised.value.envelope() == {
        "error": {
            "code": "session_not_active",
            "message": "Session is not in CONNECTED state",
            "details": {"current_status": "PENDING"},
        }
    }
    link, _ = await hello(engine)
    await link.background()
    with pytest.raises(SessionNotActive):
        await engine.attach_client("ws_acme", link.session_id, "a@b.io", "operator")
    with pytest.raises(InvalidParameter) as bad_mode:
        await engine.attach_client("ws_acme", link.session_id, "a@b.io", "admin")  # type: ignore[arg-type]
    assert bad_mode.value.details["parameter"] == "mode"


async def test_ending_detaches_every_client_then_emits_one_terminal_event(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    for email in ("a@x.io", "b@x.io"):
        await engine.attach_client("ws_acme", link.session_id, email, "observer")
    link.transport_lost()
    await trio.sleep(1)
    # Clients stay attached through the grace period...
    assert len(engine.get_session("ws_acme", link.session_id).attached_clients) == 2
    await trio.sleep(30)
    # ...and are detached, each with its event, before the one terminal event.
    assert event_log(engine)[-4:] == [
        ("session.grace_period", 5, "transport_closed"),
        ("session.client_detached", 6, "session_ended"),
        ("session.client_detached", 7, "session_ended"),
        ("session.disconnected", 8, "grace_expired"),
    ]
    assert engine.get_session("ws_acme", link.session_id).attached_clients == []


async def test_an_operators_command_reaches_the_agent_and_its_result_the_history(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, transport = await hello(engine)
    client = await engine.attach_client("ws_acme", link.session_id, "ops@acme.io", "operator")
    view = await engine.run_command("ws_acme", link.session_id, client.client_id, "ls -la")
    assert view.state == "pending"
    assert [(c.command_id, c.command, c.user_email) for c in transport.commands] == [
        (view.command_id, "ls -la", "ops@acme.io")
    ]
    await trio.sleep(2)
    await link.command_result(view.command_id, 0)
    done = engine.get_command("ws_acme", link.session_id, view.command_id)
    assert (done.state, done.exit_code, done.completed_at) == ("completed", 0, stamp(2))
    history = engine.history("ws_acme", link.session_id)
    assert [
        (h.command_id, h.command, h.exit_code, h.executed_at, h.user_email) for h in history.data
    ] == [(view.command_id, "ls -la", 0, stamp(2), "ops@acme.io")]
    failing = await engine.run_command("ws_acme", link.session_id, client.client_id, "false")
    await link.command_result(failing.command_id, 1)
    assert engine.get_command("ws_acme", link.session_id, failing.command_id).state == "failed"
    assert [e[0] for e in event_log(engine)][-2:] == ["command.completed", "command.failed"]
    with pytest.raises(InvalidParameter):
        await link.command_result(failing.command_id, 0)  # already completed
    with pytest.raises(CommandNotFound):
        engine.get_command("ws_acme", link.session_id, "cmd_nope")


async def test_observers_and_strangers_may_not_run_commands(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, transport = await hello(engine)
    observer = await engine.attach_client("ws_acme", link.session_id, "o@acme.io", "observer")
    with pytest.raises(ClientNotOperator):
        await engine.run_command("ws_acme", link.session_id, observer.client_id, "rm -rf /")
    with pytest.raises(ClientNotFound):
        await engine.run_command("ws_acme", link.session_id, "cli_unknown", "ls")
    assert transport.commands == []


async def test_pending_commands_are_lost_when_the_session_ends(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    client = await engine.attach_client("ws_acme", link.session_id, "o@acme.io", "operator")
    view = await engine.run_command("ws_acme", link.session_id, client.client_id, "sleep 100")
    await link.goodbye()
    assert engine.get_command("ws_acme", link.session_id, view.command_id).state == "lost"


async def test_agent_reported_commands_and_the_history_cursor(
    autojump_clock: MockClock,
) -> None:
    async with Engine(EngineConfig(history_cap=5)) as engine:
        link, _ = await hello(engine)
        ids = []
        for i in range(8):
            ids.append(await link.report_command(f"echo {i}", i % 2, user_email="a@b.io"))
            await trio.sleep(1)
        with pytest.raises(DuplicateCommand):
            await link.report_command("again", 0, command_id=ids[-1])
        page = engine.history("ws_acme", link.session_id, limit=2)
        # The cap dropped the three oldest; pages are the latest N, oldest first.
        assert [h.command for h in page.data] == ["echo 6", "echo 7"]
        assert page.meta.history_cap == 5 and page.meta.has_more
        older = engine.history("ws_acme", link.session_id, limit=2, before=page.meta.next_before)
        assert [h.command for h in older.data] == ["echo 4", "echo 5"]
        oldest = engine.history("ws_acme", link.session_id, limit=10, before=older.meta.next_before)
        assert [h.command for h in oldest.data] == ["echo 3"]
        assert not oldest.meta.has_more and oldest.meta.next_before is None
        with pytest.raises(InvalidParameter):
            engine.history("ws_acme", link.session_id, before=ids[0])  # dropped by the cap
        for bad in (0, 1001):
            with pytest.raises(InvalidParameter):
                engine.history("ws_acme", link.session_id, limit=bad)


async def test_another_workspace_sees_nothing(engine: Engine, autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    sid = link.session_id
    with pytest.raises(SessionNotFound) as raised:
        engine.get_session("ws_other", sid)
    assert raised.value.envelope()["error"]["details"] == {"session_id": sid}
    for call in (
        lambda: engine.history("ws_other", sid),
        lambda: engine.metrics("ws_other", sid),
        lambda: engine.machine_session("ws_other", "mach_1"),
        lambda: engine.get_command("ws_other", sid, "cmd_x"),
    ):
        with pytest.raises(SessionNotFound):
            call()
    for write in (
        engine.terminate("ws_other", sid),
        engine.attach_client("ws_other", sid, "a@b.io", "operator"),
        engine.detach_client("ws_other", sid, "cli_x"),
        engine.run_command("ws_other", sid, "cli_x", "ls"),
    ):
        with pytest.raises(SessionNotFound):
            await write
    assert engine.list_sessions("ws_other").meta.total == 0
    assert engine.get_session("ws_acme", sid).status is Status.CONNECTED


async def test_create_refuses_a_machine_with_a_live_session_and_bad_names(
    engine: Engine, autojump_clock: MockClock
) -> None:
    await hello(engine)
    with pytest.raises(Exception, match="already has an active session"):
        await engine.create_session("ws_acme", "mach_1", "prod-server")
    for machine, host in (("", "h"), ("m", ""), ("m" * 300, "h"), ("m\n", "h")):
        with pytest.raises(InvalidParameter):
            await engine.create_session("ws_acme", machine, host)


async def test_an_unreachable_agent_puts_its_session_in_grace(
        engine: Engine, autojump_clock: MockClock) -> None:
    """A transport that fails to send is as good as closed: the command stays pending (and is
    lost if the agent never returns), the session enters GRACE_PERIOD, the caller gets its
    command, and a transport that also fails to close does not stop the session ending."""
    transport = FailingTransport(fail_close=True)
    link = await engine.agent_hello("ws_acme", transport, machine_id="m", machine_hostname="h")
    client = await engine.attach_client("ws_acme", link.session_id, "alice@acme.io", "operator")
    view = await engine.run_command("ws_acme", link.session_id, client.client_id, "uptime")
    assert view.state == "pending"
    detail = engine.get_session("ws_acme", link.session_id)
    assert (detail.status, detail.reason) == (Status.GRACE_PERIOD, "transport_closed")
    assert transport.closed == "transport_closed" and not link.active
    await trio.sleep(engine.config.grace_period + 1)
    assert engine.get_session("ws_acme", link.session_id).status is Status.DISCONNECTED
    lost = engine.get_command("ws_acme", link.session_id, view.command_id)
    assert lost.state == "lost"
    assert [t for t, _, _ in event_log(engine)][-2:] == ["session.client_detached",
                                                          "session.disconnected"]
