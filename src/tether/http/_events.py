"""The event feed: ``GET /v1/events`` (catch up) and ``GET /v1/events/stream`` (live, SSE).

Both show the workspace's retained events as webhooks send them
(``{"id", "type", "timestamp", "workspace_id", "data"}``), in log order. The feed is the truth
a consumer reconciles against: asking for events after one older than the retention is a 410
``events_gone``, and so is a stream whose reader fell behind the retention (it ends with an
``error`` event carrying that envelope; reconnecting with its ``Last-Event-ID`` gets the 410).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import trio
from quart import Response

from tether.engine import EventsGone, EventsMissed
from tether.webhooks import payload_of

from ._errors import envelope_bytes
from ._models import EventsMeta, EventsPage
from ._routes import MAX_EVENTS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tether.engine import Engine

_encode = msgspec.json.Encoder().encode


class EventsApi:
    """The event feed over one engine; ``keepalive``: seconds of silence after which a stream
    sends a comment, so proxies keep it open."""

    def __init__(self, engine: Engine, keepalive: float) -> None:
        self.engine = engine
        self.keepalive = keepalive

    async def list_events(self, workspace_id: str, after: str | None, limit: int) -> EventsPage:
        after = after or None  # empty: from the oldest retained event
        engine = self.engine
        events = engine.events_after(workspace_id, after, min(limit + 1, MAX_EVENTS))
        has_more = len(events) > limit
        if limit == MAX_EVENTS and len(events) == limit:
            has_more = bool(engine.events_after(workspace_id, events[-1].id, 1))
        events = events[:limit]
        meta = EventsMeta(limit=limit, has_more=has_more,
                          next_after=events[-1].id if events else after)
        return EventsPage(data=[payload_of(e) for e in events], meta=meta)

    async def stream_events(
        self, workspace_id: str, after: str | None, last_event_id: str | None
    ) -> Response:
        after = last_event_id or after or None
        subscription = self.engine.subscribe(workspace_id, after=after)  # EventsGone: a 410
        keepalive = self.keepalive

        async def frames() -> AsyncIterator[bytes]:
            last_id = after  # the last event this reader was sent
            yield b"retry: 3000\n\n"
            while True:
                with trio.move_on_after(keepalive) as idle:
                    try:
                        event = await subscription.__anext__()
                    except StopAsyncIteration:
                        return
                    except EventsMissed as missed:
                        # The reader fell behind the retention: what it lacks is after the
                        # last event it was sent, and the oldest it can resume from is named.
                        gone = envelope_bytes(EventsGone(last_id or "", missed.resume_from))
                        yield b"event: error\ndata: " + gone + b"\n\n"
                        return
                if idle.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                last_id = event.id
                yield b"".join((
                    b"id: ", event.id.encode(), b"\nevent: ", event.type.encode(),
                    b"\ndata: ", _encode(payload_of(event)), b"\n\n",
                ))

        response = Response(frames(), status=200, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response
