"""The pure lifecycle core, hammered directly: no trio, no engine, no thread.

Hypothesis draws sequences of requests (lifecycle inputs, attaches, detaches, operator
commands) at increasing times; a small model written from design.md's lifecycle table runs
beside ``step`` and every rule is checked after every request: the status the table gives,
the one terminal event, clients detached first and each exactly once, links released, commands
lost, final states absorbing, refusals that change nothing.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.engine import (
    AttachedClient,
    ClientNotFound,
    ClientNotOperator,
    InvalidParameter,
    ProtocolViolation,
    SessionNotActive,
    Status,
)
from tether.engine._lifecycle import (
    AddClient,
    Attach,
    Change,
    Detach,
    Emit,
    End,
    Input,
    LoseCommands,
    Reindex,
    ReleaseLink,
    RemoveClient,
    RequestCommand,
    SendCommand,
    SessionState,
    step,
)

P, C, B, G = Status.PENDING, Status.CONNECTED, Status.BACKGROUND, Status.GRACE_PERIOD
D, E = Status.DISCONNECTED, Status.ERROR

# design.md's lifecycle table, written out again on purpose: the model is not the code.
MODEL: dict[tuple[Status, Input], Status] = {
    (P, Input.AGENT_CONNECTED): C,
    (P, Input.PENDING_TIMEOUT): D,
    (C, Input.BACKGROUND): B,
    (B, Input.FOREGROUND): C,
    (C, Input.TRANSPORT_CLOSED): G,
    (B, Input.TRANSPORT_CLOSED): G,
    (C, Input.HEARTBEAT_TIMEOUT): G,
    (B, Input.BACKGROUND_TIMEOUT): G,
    (C, Input.RESUMED): C,
    (B, Input.RESUMED): C,
    (G, Input.RESUMED): C,
    (G, Input.GRACE_EXPIRED): D,
    # With a store: the node holding the socket is gone, or hands the session over.
    (C, Input.NODE_LOST): G,
    (B, Input.NODE_LOST): G,
    (C, Input.NODE_DRAINING): G,
    (B, Input.NODE_DRAINING): G,
}
for live in (P, C, B, G):
    for ending in (Input.GOODBYE, Input.TERMINATED, Input.REPLACED, Input.SERVER_SHUTDOWN):
        MODEL[(live, ending)] = D
    for fatal in (Input.AGENT_ERROR, Input.PROTOCOL_ERROR):
        MODEL[(live, fatal)] = E
EVENT_OF = {C: "session.connected", B: "session.background", G: "session.grace_period",
            D: "session.disconnected", E: "session.error"}
TERMINAL = ("session.disconnected", "session.error")

client_ids = st.sampled_from(["cli_a", "cli_b", "cli_c"])
details = st.one_of(st.none(), st.text(min_size=1, max_size=2000))


def requests(status: Status) -> st.SearchStrategy:
    """Mostly inputs the status allows (so long lives are explored), sometimes any request."""
    allowed = [inp for (s, inp) in MODEL if s is status]
    changes = st.builds(Change, st.sampled_from(list(Input)), details)
    if allowed:
        changes = st.one_of(st.builds(Change, st.sampled_from(allowed), details), changes)
    return st.one_of(changes, others)


others = st.one_of(
    st.builds(lambda c, m: Attach(AttachedClient(client_id=c, user_email="a@b.c", mode=m,
                                                 attached_at="2026-02-14T10:00:00Z")),
              client_ids, st.sampled_from(["operator", "observer"])),
    st.builds(Detach, client_ids),
    st.builds(lambda c: RequestCommand(c, "cmd_1", "ls -la"), client_ids),
)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_every_lifecycle_rule_holds(data):
    state = SessionState(status=P, status_since=0.0, reason="created")
    now = 0.0
    clients: list[tuple[str, str]] = []  # the model's attached clients, in order
    terminal_events = 0
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        request = data.draw(requests(state.status), label="request")
        now += data.draw(st.floats(0.001, 100.0), label="gap")
        before = state
        expected_error: type[Exception] | None = None
        if state.status.final:
            expected_error = SessionNotActive  # final states are absorbing
        elif isinstance(request, Change):
            if (state.status, request.input) not in MODEL:
                expected_error = ProtocolViolation
        elif isinstance(request, Attach):
            if state.status is not C:
                expected_error = SessionNotActive
            elif any(c == request.client.client_id for c, _ in clients):
                expected_error = InvalidParameter
        elif isinstance(request, Detach):
            if all(c != request.client_id for c, _ in clients):
                expected_error = ClientNotFound
        elif state.status is not C:
            expected_error = SessionNotActive
        else:
            mode = next((m for c, m in clients if c == request.client_id), None)
            if mode is None:
                expected_error = ClientNotFound
            elif mode != "operator":
                expected_error = ClientNotOperator
        if expected_error is not None:
            with pytest.raises(expected_error):
                step(state, request, now)
            assert state == before  # a refusal changes nothing
            continue
        outcome = step(state, request, now)
        state, effects = outcome.state, outcome.effects
        kinds = [type(e) for e in effects]
        if isinstance(request, Change):
            new = MODEL[(before.status, request.input)]
            assert state.status is new
            assert state.status_since == now and state.reason == request.input.value
            emits = [e for e in effects if isinstance(e, Emit)]
            assert len(emits) == 1 and effects[-1] is emits[0]  # the event comes last
            assert emits[0].type == EVENT_OF[new] and emits[0].previous is before.status
            if request.detail is not None:
                assert emits[0].detail == request.detail[:1024] == state.reason_detail
            assert (Reindex(before.status) in effects) == (new is not before.status)
            released = [e for e in effects if isinstance(e, ReleaseLink)]
            assert len(released) == (1 if new in (G, D, E) else 0)
            if new.final:
                terminal_events += 1
                removed = [e for e in effects if isinstance(e, RemoveClient)]
                # every client detached, in attach order, before anything else happens
                assert [r.client_id for r in removed] == [c for c, _ in clients]
                assert effects[:len(removed)] == removed
                assert all(r.reason == "session_ended" and r.status is before.status
                           for r in removed)
                assert kinds.count(LoseCommands) == 1 and kinds.count(End) == 1
                assert state.ended_at == now and state.clients == ()
                clients = []
            else:
                assert LoseCommands not in kinds and End not in kinds
                assert RemoveClient not in kinds and state.ended_at is None
            if new is C and before.connected_at is None:
                assert state.connected_at == now
            else:
                assert state.connected_at == before.connected_at
        elif isinstance(request, Attach):
            clients.append((request.client.client_id, request.client.mode))
            assert effects == [AddClient(request.client)]
        elif isinstance(request, Detach):
            clients = [c for c in clients if c[0] != request.client_id]
            assert effects == [RemoveClient(request.client_id, "detached", state.status)]
        else:
            assert effects == [SendCommand(request.client_id, "cmd_1", "ls -la")]
        if not isinstance(request, Change):
            assert (state.status, state.status_since) == (before.status, before.status_since)
        assert list(state.clients) == clients
    assert terminal_events == (1 if state.status.final else 0)


def test_a_refused_input_names_the_status():
    state = SessionState(status=P, status_since=0.0)
    with pytest.raises(ProtocolViolation, match="'agent_background' is not allowed in status "
                       "PENDING"):
        step(state, Change(Input.BACKGROUND), 1.0)
    final = SessionState(status=D, status_since=0.0)
    with pytest.raises(SessionNotActive) as refused:
        step(final, Change(Input.FOREGROUND), 1.0)
    assert refused.value.details == {"current_status": "DISCONNECTED"}
