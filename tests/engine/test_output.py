"""A session's output through the engine: links write it, the output API reads it, a resume
learns where to resend from, commands keep theirs, and attach streams see it live."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from tether.engine import (
    AgentLinkClosed,
    ClientNotOperator,
    Engine,
    EngineConfig,
    InvalidParameter,
    OperatorInput,
    OperatorResize,
    OperatorSignal,
    OutputChunk,
    OutputGap,
    OutputGone,
    SessionNotActive,
    Status,
)

from .conftest import hello, stamp

WS = "ws_acme"


class Watcher:
    """An attach stream's view of the session, recorded."""

    def __init__(self) -> None:
        self.chunks: list[OutputChunk] = []
        self.statuses: list[tuple[Status, str | None]] = []
        self.detached: list[tuple[str, Status]] = []
        self.results: list[tuple[str, int]] = []

    def output(self, chunk: OutputChunk) -> None:
        self.chunks.append(chunk)

    def status(self, status: Status, reason: str | None) -> None:
        self.statuses.append((status, reason))

    def client_detached(self, client_id: str, status: Status) -> None:
        self.detached.append((client_id, status))

    def command_result(self, command_id: str, exit_code: int) -> None:
        self.results.append((command_id, exit_code))

    def moved(self) -> None:
        self.statuses.append((Status.PENDING, "moved"))  # a marker: never a real transition

    @property
    def data(self) -> bytes:
        return b"".join(c.data for c in self.chunks)


async def test_output_is_read_back_at_exact_offsets(engine: Engine,
                                                    autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    sid = link.session_id
    link.output(0, "hello ")
    link.output(6, "wörld\n", "stderr")
    link.output(3, "lo wörld\n")  # a resend of what it has, and one byte more... all known
    page = await engine.read_output(WS, sid)
    assert (page.offset, page.data, page.next_offset, page.first_offset, page.total_bytes,
            page.has_more) == (0, "hello wörld\n", 13, 0, 13, False)
    page = await engine.read_output(WS, sid, offset=6, limit=2)  # "wö" is 3 bytes: cut before ö
    assert (page.data, page.next_offset, page.has_more) == ("w", 7, True)
    assert (await engine.read_output(WS, sid, offset=13)).data == ""
    past = await engine.read_output(WS, sid, offset=99)  # past the end: nothing, and where it is
    assert (past.offset, past.data, past.next_offset, past.total_bytes) == (13, "", 13, 13)
    with pytest.raises(OutputGap) as gap:
        link.output(20, "later")
    assert gap.value.expected_offset == 13
    assert gap.value.envelope()["error"]["details"] == {"offset": 20, "expected_offset": 13}
    with pytest.raises(InvalidParameter):
        link.output(13, "x", "stdin")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter):
        link.output(13, "\ud800")  # not text UTF-8 can carry
    assert (await engine.read_output(WS, sid)).total_bytes == 13  # nothing of the refused kept


async def test_a_session_keeps_its_last_bytes_only(autojump_clock: MockClock) -> None:
    async with Engine(EngineConfig(output_buffer_bytes=10)) as engine:
        link, _ = await hello(engine)
        for i in range(5):
            link.output(i * 4, f"{i:03d}\n")
        page = await engine.read_output(WS, link.session_id)
        assert (page.offset, page.data, page.first_offset, page.total_bytes) == (
            10, "2\n003\n004\n"[0:10], 10, 20)
        with pytest.raises(OutputGone) as gone:
            await engine.read_output(WS, link.session_id, offset=3)
        assert gone.value.envelope()["error"] == {
            "code": "output_gone", "message": "Output at this offset is no longer retained",
            "details": {"offset": 3, "first_offset": 10}}
        engine.shutdown()


async def test_a_resume_is_told_where_to_resend_from(engine: Engine,
                                                     autojump_clock: MockClock) -> None:
    link, _ = await hello(engine)
    assert link.welcome is not None and link.welcome.output_offset == 0
    link.output(0, "abc")
    link.output(3, "def")
    link.transport_lost()
    await trio.sleep(1)
    with pytest.raises(AgentLinkClosed):
        link.output(6, "lost")  # the old link speaks for nothing now
    again, _ = await hello(engine, token=link.welcome.resume_token)
    assert again.welcome is not None and again.welcome.output_offset == 6
    again.output(3, "defghi")  # the agent resends from what it last knew was taken
    assert (await engine.read_output(WS, link.session_id)).data == "abcdefghi"


async def test_output_outlives_the_grace_period_until_the_purge(
    autojump_clock: MockClock,
) -> None:
    async with Engine(EngineConfig(grace_period=5, retention=60)) as engine:
        link, _ = await hello(engine)
        link.output(0, "last words\n")
        link.transport_lost()
        await trio.sleep(10)
        assert engine.get_session(WS, link.session_id).status is Status.DISCONNECTED
        assert (await engine.read_output(WS, link.session_id)).data == "last words\n"
        await trio.sleep(120)
        assert engine.list_sessions(WS).meta.total == 0
        engine.shutdown()


async def test_a_commands_output_and_timing_are_kept_with_it(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, transport = await hello(engine)
    sid = link.session_id
    subscription = engine.subscribe(WS)
    operator = await engine.attach_client(WS, sid, "alice@acme.io", "operator")
    view = await engine.run_command(WS, sid, operator.client_id, "make test")
    command_id = view.command_id
    assert (view.started_at, view.finished_at, view.duration_ms, view.stdout) == (
        stamp(0), None, None, "")
    link.output(0, "prompt$ ")  # not the command's
    link.output(8, "ok 1\n", "stdout", command_id)
    link.output(13, "warning\n", "stderr", command_id)
    link.output(21, "ok 2\n", "stdout", command_id)
    await trio.sleep(2.5)
    await link.command_result(command_id, 0, duration_ms=2400)
    view = engine.get_command(WS, sid, command_id)
    assert (view.stdout, view.stderr, view.output_truncated) == ("ok 1\nok 2\n", "warning\n",
                                                                  False)
    assert (view.started_at, view.finished_at, view.duration_ms) == (stamp(0), stamp(2.5),
                                                                     2400)
    async for event in subscription:
        if event.type == "command.completed":
            assert event.data.command is not None
            assert event.data.command.duration_ms == 2400
            break
    # without the agent's measure, the time from sending to the result
    second = await engine.run_command(WS, sid, operator.client_id, "ls")
    await trio.sleep(1.25)
    await link.command_result(second.command_id, 1)
    assert engine.get_command(WS, sid, second.command_id).duration_ms == 1250
    assert transport.commands[-1].command == "ls"


async def test_a_commands_output_is_kept_up_to_64_kib_per_stream(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    sid = link.session_id
    operator = await engine.attach_client(WS, sid, "alice@acme.io", "operator")
    command_id = (await engine.run_command(WS, sid, operator.client_id, "yes")).command_id
    line = "€" * 1000 + "\n"  # 3,001 bytes: the bound falls inside a character
    offset = 0
    for _ in range(30):
        link.output(offset, line, "stdout", command_id)
        offset += len(line.encode())
    view = engine.get_command(WS, sid, command_id)
    assert view.output_truncated
    kept = view.stdout.encode()
    assert 64 * 1024 - 3 < len(kept) <= 64 * 1024
    assert (line * 30).startswith(view.stdout)


async def test_a_stream_replays_then_goes_live_without_a_seam(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    sid = link.session_id
    link.output(0, "0123456789")
    watcher = Watcher()
    start = await engine.open_stream(WS, sid, watcher, mode="observer",
                                     user_email="bob@acme.io", offset=4)
    assert (start.offset, start.first_offset, start.gap, start.attached_here) == (4, 0, None,
                                                                                  True)
    assert b"".join(c.data for c in start.replay) == b"456789"
    assert start.client.mode == "observer"
    link.output(10, "abc")
    assert watcher.data == b"abc"
    clients = engine.get_session(WS, sid).attached_clients
    assert [c.client_id for c in clients] == [start.client.client_id]
    # the stream's default replay is the last 64 KiB; a stream closing detaches its client
    engine.close_stream(WS, sid, watcher, start.client.client_id)
    await trio.sleep(1)  # the detach is posted to the session's actor
    assert engine.get_session(WS, sid).attached_clients == []
    link.output(13, "more")
    assert watcher.data == b"abc"  # not told any more


async def test_a_stream_from_a_dropped_offset_is_told_the_gap(autojump_clock: MockClock) -> None:
    async with Engine(EngineConfig(output_buffer_bytes=8)) as engine:
        link, _ = await hello(engine)
        link.output(0, "0123456789abcdef")
        start = await engine.open_stream(WS, link.session_id, Watcher(), mode="operator",
                                         user_email="a@acme.io", offset=2)
        assert start.gap == (2, 8)
        assert (start.offset, b"".join(c.data for c in start.replay)) == (8, b"89abcdef")
        # Past the end (an agent yet to resend what a new owner lacks): told from there on.
        ahead = Watcher()
        past = await engine.open_stream(WS, link.session_id, ahead, mode="operator",
                                        user_email="a@acme.io", offset=17)
        assert (past.offset, past.replay, past.gap) == (17, [], None)
        link.output(16, "g")
        assert ahead.data == b""
        link.output(17, "hé")
        link.output(20, "!")
        assert ahead.data == "hé!".encode()
        engine.shutdown()


async def test_streams_see_every_transition_and_the_end(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, _ = await hello(engine)
    sid = link.session_id
    watcher = Watcher()
    start = await engine.open_stream(WS, sid, watcher, mode="observer", user_email="b@acme.io")
    await link.background()
    # a BACKGROUND session takes a new stream (its agent is there), but not a new REST client
    other = Watcher()
    await engine.open_stream(WS, sid, other, mode="observer", user_email="c@acme.io")
    with pytest.raises(SessionNotActive):
        await engine.attach_client(WS, sid, "d@acme.io", "observer")
    await link.foreground()
    link.transport_lost()
    await trio.sleep(1)
    token = link.welcome.resume_token if link.welcome else None
    again, _ = await hello(engine, token=token)
    await again.goodbye("done")
    assert watcher.statuses == [
        (Status.BACKGROUND, "agent_background"),
        (Status.CONNECTED, "agent_foreground"),
        (Status.GRACE_PERIOD, "transport_closed"),
        (Status.CONNECTED, "resumed"),
        (Status.DISCONNECTED, "agent_goodbye"),
    ]
    assert (start.client.client_id, Status.DISCONNECTED) in watcher.detached
    with pytest.raises(SessionNotActive):
        await engine.open_stream(WS, sid, Watcher(), mode="observer", user_email="b@acme.io")


async def test_operators_reach_the_agent_and_observers_do_not(
    engine: Engine, autojump_clock: MockClock
) -> None:
    link, transport = await hello(engine)
    sid = link.session_id
    operator = await engine.attach_client(WS, sid, "alice@acme.io", "operator")
    observer = await engine.attach_client(WS, sid, "bob@acme.io", "observer")
    frames = [
        OperatorInput(data="ls -la\r", client_id=operator.client_id),
        OperatorResize(cols=120, rows=40, client_id=operator.client_id),
        OperatorSignal(signal="SIGINT", client_id=operator.client_id),
    ]
    for frame in frames:
        await engine.send_operator(WS, sid, frame)
    assert transport.operator_frames == frames
    with pytest.raises(ClientNotOperator):
        await engine.send_operator(WS, sid, OperatorInput(data="rm -rf /",
                                                          client_id=observer.client_id))
    with pytest.raises(InvalidParameter):
        await engine.send_operator(WS, sid, OperatorResize(cols=0, rows=40,
                                                     client_id=operator.client_id))
    assert transport.operator_frames == frames
