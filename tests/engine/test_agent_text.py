"""Text an agent reports is held to the same rules as the API's: bad text is never stored.

An agent's command, command id, user email, goodbye reason and agent version are stored and
served back by the REST API and webhooks, so they get the limits and character rule the engine
already applies to a REST caller's command, email and machine names (1 to N printable
characters), and a refused input leaves the session exactly as it was.
"""

from __future__ import annotations

from collections.abc import Awaitable

import pytest
import trio
from trio.testing import MockClock

from tether.engine import Engine, InvalidParameter, Status

from .conftest import RecordingTransport, event_log, hello

CONTROL = ("\n", "\r", "\x00", "\x1b[31m", "\t", "\u202e", "\u2028")


def _bad_texts(max_len: int) -> list[str]:
    return ["", "x" * (max_len + 1), *(f"a{c}b" for c in CONTROL)]


async def _refused(call: Awaitable[object], parameter: str) -> InvalidParameter:
    with pytest.raises(InvalidParameter) as raised:
        await call
    assert raised.value.details["parameter"] == parameter
    return raised.value


async def test_a_reported_command_with_bad_text_is_refused_and_not_stored(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, transport = await hello(engine)
    sid = link.session_id
    events_before = event_log(engine, session_id=sid)
    for command in _bad_texts(64 * 1024):
        await _refused(link.report_command(command, 0), "command")
    for command_id in _bad_texts(256):
        await _refused(link.report_command("ls", 0, command_id=command_id), "command_id")
    for email in _bad_texts(320):
        await _refused(link.report_command("ls", 0, user_email=email), "user_email")
    assert engine.history("ws_acme", sid).data == []
    assert event_log(engine, session_id=sid) == events_before  # no command.* event
    assert link.active and transport.closed is None
    assert engine.get_session("ws_acme", sid).status is Status.CONNECTED


async def test_reported_commands_at_the_limits_are_kept_whole(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    command = "e" * (64 * 1024)
    command_id = "c" * 256
    email = "u" * 310 + "@acme.io"
    assert len(email) == 318
    assert await link.report_command(command, 0, command_id=command_id, user_email=email) == (
        command_id
    )
    await link.report_command("echo héllo wörld", 1, command_id="cmd_2")  # printable, not ASCII
    history = engine.history("ws_acme", link.session_id).data
    assert [(h.command_id, h.command, h.user_email) for h in history] == [
        (command_id, command, email),
        ("cmd_2", "echo héllo wörld", None),
    ]


async def test_the_agents_email_follows_the_rule_of_an_attached_clients_email(
    engine: Engine, autojump_clock: MockClock
) -> None:
    """One rule for a user email, whoever supplies it: the API (attach) or an agent."""
    link, _ = await hello(engine)
    sid = link.session_id
    for email in _bad_texts(320):
        await _refused(engine.attach_client("ws_acme", sid, email, "observer"), "user_email")
        await _refused(link.report_command("ls", 0, user_email=email), "user_email")
    for email in ("a@b.io", "x" * 320):  # neither checks the address's shape, only its text
        await engine.attach_client("ws_acme", sid, email, "observer")
        await link.report_command("ls", 0, user_email=email)


async def test_a_command_result_with_a_bad_command_id_is_refused(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    sid = link.session_id
    operator = await engine.attach_client("ws_acme", sid, "a@b.io", "operator")
    view = await engine.run_command("ws_acme", sid, operator.client_id, "uptime")
    for command_id in _bad_texts(256):
        error = await _refused(link.command_result(command_id, 0), "command_id")
        assert error.reason != "no pending command with this id"  # refused for its text
    assert engine.get_command("ws_acme", sid, view.command_id).state == "pending"
    await link.command_result(view.command_id, 0)
    assert engine.get_command("ws_acme", sid, view.command_id).state == "completed"


async def test_a_goodbye_with_a_bad_reason_is_refused_and_the_session_stays(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, transport = await hello(engine)
    sid = link.session_id
    for reason in _bad_texts(1024):
        await _refused(link.goodbye(reason), "reason")
    assert engine.get_session("ws_acme", sid).status is Status.CONNECTED
    assert link.active and transport.closed is None
    reason = "r" * 1024
    await link.goodbye(reason)
    detail = engine.get_session("ws_acme", sid)
    assert (detail.status, detail.reason, detail.reason_detail) == (
        Status.DISCONNECTED,
        "agent_goodbye",
        reason,
    )


async def test_a_goodbye_without_a_reason_still_ends_the_session(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    await link.goodbye()
    detail = engine.get_session("ws_acme", link.session_id)
    assert (detail.status, detail.reason_detail) == (Status.DISCONNECTED, None)


async def test_a_hello_with_a_bad_agent_version_is_refused_before_anything_changes(
    engine: Engine, autojump_clock: MockClock
) -> None:
    for version in _bad_texts(256):
        with pytest.raises(InvalidParameter) as raised:
            await engine.agent_hello(
                "ws_acme",
                RecordingTransport(),
                machine_id="mach_1",
                machine_hostname="h",
                agent_version=version,
            )
        assert raised.value.details["parameter"] == "agent_version"
    assert engine.list_sessions("ws_acme").meta.total == 0
    link = await engine.agent_hello(
        "ws_acme",
        RecordingTransport(),
        machine_id="mach_1",
        machine_hostname="h",
        agent_version="v" * 256,
    )
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED


async def test_a_bad_hello_does_not_end_the_machines_live_session(
    engine: Engine, autojump_clock: MockClock
) -> None:
    """A hello is checked before it replaces anything: a refused one leaves the old session."""
    link, transport = await hello(engine)
    for kw in ({"machine_hostname": "h\n"}, {"machine_hostname": "h", "agent_version": "1\n"}):
        with pytest.raises(InvalidParameter):
            await engine.agent_hello("ws_acme", RecordingTransport(), machine_id="mach_1", **kw)
        await trio.sleep(0)
    assert engine.get_session("ws_acme", link.session_id).status is Status.CONNECTED
    assert link.active and transport.closed is None
    assert engine.list_sessions("ws_acme").meta.total == 1


async def test_a_fatal_error_with_bad_text_is_refused_and_the_session_stays(
    engine: Engine, autojump_clock: MockClock
) -> None:
    """Its code and message become the session's ``reason_detail``, served by the API and in
    events: held to the same rules (found storing ESC, CR/LF and NUL as sent)."""
    link, transport = await hello(engine)
    sid = link.session_id
    for code in _bad_texts(256):
        await _refused(link.fatal_error(code, "boom"), "code")
    for message in _bad_texts(1024):
        await _refused(link.fatal_error("crash", message), "message")
    assert engine.get_session("ws_acme", sid).status is Status.CONNECTED
    assert link.active and transport.closed is None
    await link.fatal_error("crash", "x" * 1024)  # at the limit; the detail is cut at 1,024
    detail = engine.get_session("ws_acme", sid)
    assert detail.status is Status.ERROR and detail.reason_detail == "crash: " + "x" * 1017
