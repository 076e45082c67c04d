"""A session's snapshot (what a store keeps) round-trips exactly through a record, and
through msgpack, whatever the session holds."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tether.engine import (
    AttachedClient,
    CommandEntry,
    CommandSnapshot,
    LoadedSession,
    SessionSnapshot,
    Status,
    Telemetry,
    WallClock,
)
from tether.engine._persist import restore, snapshot

CAP = 5
CLOCK = WallClock(epoch=0.0, trio_zero=0.0)  # wall == trio time: the round trip is exact
text = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12)
times = st.floats(0, 2e9, allow_nan=False)
maybe_times = st.none() | times
telemetry = st.builds(Telemetry, cpu_percent=st.none() | st.floats(0, 100),
                      network_rx_bytes=st.none() | st.integers(0, 2**62))
clients = st.lists(st.builds(AttachedClient, client_id=text, user_email=text,
                             mode=st.sampled_from(["operator", "observer"]), attached_at=text),
                   max_size=3, unique_by=lambda c: c.client_id)
commands = st.lists(st.builds(CommandSnapshot, command_id=text, command=text, client_id=text,
                              user_email=text, requested_at=times,
                              state=st.sampled_from(["pending", "completed", "failed", "lost"]),
                              exit_code=st.none() | st.integers(-(2**31), 2**32 - 1),
                              completed_at=maybe_times),
                    max_size=3, unique_by=lambda c: c.command_id)
entries = st.lists(st.builds(CommandEntry, command_id=text, command=text,
                             exit_code=st.integers(-5, 5), executed_at=text,
                             user_email=st.none() | text),
                   max_size=CAP, unique_by=lambda e: e.command_id)


@st.composite
def loaded_sessions(draw: st.DrawFn) -> LoadedSession:
    history = draw(entries)
    snap = SessionSnapshot(
        session_id=draw(text), workspace_id=draw(text), machine_id=draw(text),
        machine_hostname=draw(text), created_at=draw(times),
        status=draw(st.sampled_from(list(Status))), status_since=draw(times),
        reason=draw(st.none() | text), reason_detail=draw(st.none() | text),
        connected_at=draw(maybe_times), last_heartbeat=draw(maybe_times),
        ended_at=draw(maybe_times), version=draw(st.integers(0, 10**9)),
        sequence=draw(st.integers(0, 10**9)),
        resume_hash=draw(st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex)),
        agent_version=draw(st.none() | text), telemetry=draw(st.none() | telemetry),
        telemetry_at=draw(maybe_times), clients=draw(clients), commands=draw(commands),
        history_total=len(history) + draw(st.integers(0, 1000)),
    )
    return LoadedSession(snap, history)


@given(loaded_sessions())
def test_a_snapshot_round_trips_through_a_record_and_msgpack(loaded: LoadedSession) -> None:
    rec = restore(loaded, CLOCK, CAP)
    assert snapshot(rec, CLOCK) == loaded.snapshot
    assert list(rec.history or ()) == loaded.history
    assert rec.history_total == loaded.snapshot.history_total
    for entry in loaded.history:  # the history's index finds every retained entry
        assert rec.has_command_id(entry.command_id)
    encoded = msgspec.msgpack.encode(loaded.snapshot)
    assert msgspec.msgpack.decode(encoded, type=SessionSnapshot) == loaded.snapshot


def test_a_restored_log_skips_the_gaps_a_crash_left_and_keeps_every_id() -> None:
    """Events lost with a crash between two scripts of one batch leave gaps in the offsets:
    the restored log serves the rest under their own ids, cursors across a gap included."""
    from tether.engine import Event, EventData
    from tether.engine._events import EventLog
    from tether.engine._ids import EventIds

    ids = EventIds(9)

    def event(offset: int, workspace: str) -> Event:
        return Event(id=ids(offset), type="session.connected", timestamp="2026-02-14T10:00:00Z",
                     workspace_id=workspace, session_id=f"s{offset}", sequence=1,
                     data=EventData(session_id=f"s{offset}", status=Status.CONNECTED,
                                    machine_id="m", machine_hostname="h",
                                    workspace_id=workspace, created_at="t", connected_at=None,
                                    last_heartbeat_at=None, attached_clients=0,
                                    previous_status=None, reason=None, sequence=1))

    log = EventLog(CLOCK, run_id=1, max_events=100, retention=10**9)
    kept = [event(o, "ws_a" if o % 2 else "ws_b") for o in (2, 3, 5, 8)]
    log.restore([(int(e.session_id[1:]), e) for e in reversed(kept)], 9, 10)
    assert log.first_offset == 2 and log.next_offset == 10
    assert log.oldest_id() == ids(2)
    assert log.read(None, 0, 100)[0] == kept
    assert log.read("ws_a", 0, 100)[0] == [kept[1], kept[2]]
    after_gap = log.offset_after(ids(3), 0.0)  # 4 is a gap: reading from it skips to 5
    assert log.read(None, after_gap, 1)[0] == []  # a page may come back empty at a gap...
    assert log.read(None, after_gap, 2)[0] == [kept[2]]  # ...and goes on after it
    appended = log.append("session.connected", 1.0, "ws_a", "s10", 1, kept[0].data)
    assert appended.id == ids(10)
