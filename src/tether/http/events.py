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
from quart import Blueprint, Response, current_app, request

from tether.engine import Engine, EventsGone, EventsMissed, InvalidParameter, TetherError
from tether.webhooks import payload_of

from ._models import EventsMeta, EventsPage
from .webhooks import error_response, json_response, query_int, request_workspace

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

DEFAULT_EVENTS = 100
MAX_EVENTS = 1000
#: An SSE comment goes out after this long without events, so proxies keep the stream open.
KEEPALIVE = 15.0
_encoder = msgspec.json.Encoder()


def app_engine() -> Engine:
    """The app's engine, as registered in ``app.extensions["tether.engine"]``."""
    return current_app.extensions["tether.engine"]  # type: ignore[no-any-return]


def events_blueprint(
    engine: Callable[[], Engine] = app_engine,
    workspace: Callable[[], str] = request_workspace,
    keepalive: float = KEEPALIVE,
) -> Blueprint:
    """The ``/v1/events`` routes; ``engine`` and ``workspace`` are looked up per request."""
    bp = Blueprint("events", __name__)
    bp.register_error_handler(TetherError, error_response)

    @bp.get("/v1/events")
    async def list_events() -> Response:
        ws = workspace()
        limit = query_int("limit", DEFAULT_EVENTS)
        if not 1 <= limit <= MAX_EVENTS:
            raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_EVENTS}")
        after = request.args.get("after") or None
        eng = engine()
        events = eng.events_after(ws, after, min(limit + 1, MAX_EVENTS))
        has_more = len(events) > limit
        if limit == MAX_EVENTS and len(events) == limit:
            has_more = bool(eng.events_after(ws, events[-1].id, 1))
        events = events[:limit]
        meta = EventsMeta(limit=limit, has_more=has_more,
                          next_after=events[-1].id if events else after)
        return json_response(EventsPage(data=[payload_of(e) for e in events], meta=meta))

    @bp.get("/v1/events/stream")
    async def stream_events() -> Response:
        ws = workspace()
        after = request.headers.get("Last-Event-ID") or request.args.get("after") or None
        subscription = engine().subscribe(ws, after=after)  # EventsGone (410) before streaming

        async def frames() -> AsyncIterator[bytes]:
            yield b"retry: 3000\n\n"
            while True:
                with trio.move_on_after(keepalive) as idle:
                    try:
                        event = await subscription.__anext__()
                    except StopAsyncIteration:
                        return
                    except EventsMissed:
                        gone = EventsGone(after or "", None)
                        yield b"event: error\ndata: " + _encoder.encode(gone.envelope()) + b"\n\n"
                        return
                if idle.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                after_id = event.id
                yield b"".join((
                    b"id: ", after_id.encode(), b"\nevent: ", event.type.encode(),
                    b"\ndata: ", _encoder.encode(payload_of(event)), b"\n\n",
                ))

        response = Response(frames(), status=200, content_type="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"
        response.timeout = None
        return response

    return bp
