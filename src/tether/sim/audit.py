"""A cluster run checked from the outside: a real webhook receiver and an audit of the events.

    sink = WebhookSink()
    url = await nursery.start(sink.run)           # http://127.0.0.1:<port>/hook, answers 204
    ... register it with POST /v1/webhooks, run agents, kill nodes ...
    log = await read_event_log("http://127.0.0.1:8080", api_key)
    audit = audit_events(log, sink.received, resumed=sessions_whose_agents_came_back)

The audit holds a run to what the cluster promises whatever happened to its nodes: one event
log with each session's events numbered 1, 2, 3, ... without a gap; at most one terminal event
per session, and nothing after it; every event of the log at the receiver at least once, each
session's in order (first arrivals; a redelivery after a node's death may repeat one), and
nothing the log does not have. ``duplicated`` counts repeats (at-least-once allows them: they
are reported, not failed). A session whose agent came back within its grace period
(``resumed``) must not have ended on the server's own account (``grace_expired``,
``heartbeat_timeout``): such an end is a spurious disconnect.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import h11
import httpx
import msgspec
import trio

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

TERMINAL = frozenset({"session.disconnected", "session.error"})
#: Ends the server decides by itself when an agent is away: after a fault they are spurious for
#: a session whose agent came back in time.
SERVER_TIMEOUTS = frozenset({"grace_expired", "heartbeat_timeout"})


class _Data(msgspec.Struct):
    session_id: str = ""
    sequence: int = 0
    reason: str | None = None


class SeenEvent(msgspec.Struct, frozen=True):
    """The part of an event (as the feed and webhooks render it) the audit looks at."""

    id: str
    type: str
    data: _Data

    @property
    def session_id(self) -> str:
        return self.data.session_id


_decode_event = msgspec.json.Decoder(SeenEvent).decode


class _Page(msgspec.Struct):
    data: list[SeenEvent]
    meta: dict[str, Any]


class WebhookSink:
    """A real HTTP endpoint on 127.0.0.1 that answers every request 204 and keeps the events
    posted to it, in arrival order (a body that is not an event is counted in ``undecodable``).
    Keep-alive, as the webhook client uses it."""

    def __init__(self, path: str = "/hook") -> None:
        self.path = path
        self.received: list[SeenEvent] = []
        self.undecodable = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.url)
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = bytearray()
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    try:
                        self.received.append(_decode_event(body))
                    except msgspec.DecodeError:  # also: a valid JSON of another shape
                        self.undecodable += 1
                    body.clear()
                    await stream.send_all(conn.send(h11.Response(
                        status_code=204, headers=[("content-length", "0")])))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)


async def read_event_log(base_url: str, api_key: str) -> list[SeenEvent]:
    """The workspace's whole retained event log, through ``GET /v1/events`` pages."""
    events: list[SeenEvent] = []
    after: str | None = None
    async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {api_key}"}) as client:
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if after is not None:
                params["after"] = after
            r = await client.get("/v1/events", params=params)
            r.raise_for_status()
            page = msgspec.json.decode(r.content, type=_Page)
            events += page.data
            if not page.meta.get("has_more"):
                return events
            after = page.meta["next_after"]


class EventAudit(msgspec.Struct, kw_only=True):
    """What :func:`audit_events` found. ``problems`` names the first few violations."""

    events: int  # in the log
    sessions: int
    received: int  # posts that reached the receiver, repeats included
    lost: int  # events of the log the receiver never got
    duplicated: int  # repeats at the receiver
    unknown: int  # received events the log does not have
    out_of_order: int  # sessions whose events reached the receiver out of order
    gaps: int  # sessions whose sequence numbers in the log are not 1, 2, 3, ...
    terminal_violations: int  # sessions with more than one terminal event, or events after it
    spurious_disconnects: int
    ends: dict[str, int]  # terminal events by reason
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unknown or self.out_of_order or self.gaps
                    or self.terminal_violations or self.spurious_disconnects)


def audit_events(log: Sequence[SeenEvent], received: Sequence[SeenEvent], *,
                 resumed: Collection[str] = ()) -> EventAudit:
    """Hold ``log`` (one workspace's feed) and ``received`` (what one endpoint subscribed to
    every event type got) to the cluster's promises; ``resumed``: sessions whose agents came
    back within their grace period."""
    problems: list[str] = []

    def bad(text: str) -> None:
        if len(problems) < 20:
            problems.append(text)

    by_session: dict[str, list[SeenEvent]] = {}
    for event in log:
        by_session.setdefault(event.session_id, []).append(event)
    gaps = terminal_violations = spurious = 0
    ends: Counter[str] = Counter()
    resumed = set(resumed)
    for session_id, events in by_session.items():
        sequences = [e.data.sequence for e in events]
        if sequences != list(range(1, len(events) + 1)):
            gaps += 1
            bad(f"{session_id}: sequences {sequences[:10]} in the log")
        terminal = [i for i, e in enumerate(events) if e.type in TERMINAL]
        if len(terminal) > 1 or (terminal and terminal[0] != len(events) - 1):
            terminal_violations += 1
            bad(f"{session_id}: terminal events at {terminal} of {len(events)}")
        for i in terminal:
            reason = events[i].data.reason or "none"
            ends[reason] += 1
            if session_id in resumed and reason in SERVER_TIMEOUTS:
                spurious += 1
                bad(f"{session_id}: ended {reason} although its agent came back")
    in_log = {e.id for e in log}
    first_arrivals: dict[str, list[int]] = {}
    seen: set[str] = set()
    unknown = 0
    for event in received:
        if event.id in seen:
            continue
        seen.add(event.id)
        if event.id not in in_log:
            unknown += 1
            bad(f"received {event.id}, which the log does not have")
            continue
        first_arrivals.setdefault(event.session_id, []).append(event.data.sequence)
    out_of_order = 0
    for session_id, arrived in first_arrivals.items():
        if arrived != sorted(arrived):
            out_of_order += 1
            bad(f"{session_id}: arrived as {arrived[:10]}")
    lost = len(in_log - seen)
    if lost:
        bad(f"{lost} events never reached the receiver, e.g. {sorted(in_log - seen)[:3]}")
    return EventAudit(
        events=len(log), sessions=len(by_session), received=len(received), lost=lost,
        duplicated=len(received) - len(seen), unknown=unknown, out_of_order=out_of_order,
        gaps=gaps, terminal_violations=terminal_violations, spurious_disconnects=spurious,
        ends=dict(ends), problems=problems,
    )


__all__ = ["EventAudit", "SeenEvent", "WebhookSink", "audit_events", "read_event_log"]
