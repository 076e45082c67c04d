"""Errors as HTTP answers, in one place.

Every error the API answers is a :class:`~tether.engine.TetherError` (the engine's, the webhooks
service's, or one of the transport errors below), rendered by :func:`error_response` as the
envelope ``{"error": {"code", "message", "details"}}`` with the status :data:`STATUS` gives its
code. Domain errors carry no HTTP status: which status an error code is answered with is
decided here, once, for every door (the REST API, the webhooks and events operations, the agent
socket's refusal before its upgrade, and the requests HTTP itself refuses).

Handlers raise; :func:`install` turns what they raise, and what the framework raises (no such
route, wrong method, body too large, a WebSocket upgrade where there is no socket), into these
answers. A 500 is only ever a bug: logged with its traceback, answered without one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
from quart import Response, has_request_context, has_websocket_context, request, websocket
from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge, RequestTimeout
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.routing import WebsocketMismatch

from tether.engine import TetherError

from ._models import ErrorBody, ErrorEnvelope

if TYPE_CHECKING:
    from quart_trio import QuartTrio

log = logging.getLogger("tether.http")

_encode = msgspec.json.Encoder().encode

#: The HTTP status of every error code: the one place a domain error meets HTTP. A code missing
#: here is a bug (:func:`status_of` logs it and answers 500); ``tests/http/test_errors.py`` checks
#: that every error class in the package has its row.
STATUS: dict[str, int] = {
    # the request itself
    "invalid_parameter": 400,
    "bad_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "payload_too_large": 413,
    "request_header_too_large": 431,
    # sessions, clients and commands
    "client_not_operator": 403,
    "session_not_found": 404,
    "client_not_found": 404,
    "command_not_found": 404,
    "session_not_active": 409,
    "session_already_active": 409,
    # the event feed, a session's output
    "events_gone": 410,
    "output_gone": 410,
    # webhooks
    "webhook_not_found": 404,
    "delivery_not_found": 404,
    "delivery_pending": 409,
    "webhook_disabled": 409,
    "webhook_queue_full": 409,
    "too_many_webhooks": 409,
    # the service
    "internal_error": 500,
    "engine_closed": 503,
    "unavailable": 503,
    # Agent-socket errors: answered as error frames, never by the REST API. Their rows say
    # what they would mean over HTTP, should one ever reach a REST answer.
    "protocol_violation": 400,
    "resume_rejected": 401,
    "duplicate_command": 409,
    "link_closed": 409,
    "output_gap": 409,
}
#: The codes only the agent socket answers (as error frames): not among the REST API's answers.
AGENT_CODES = frozenset({"protocol_violation", "resume_rejected", "duplicate_command",
                         "link_closed", "output_gap"})


class Unauthorized(TetherError):
    """The request carries no credential, or one this server does not know for this door."""

    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("Missing or invalid credentials")


class RouteNotFound(TetherError):
    """No such route (for HTTP requests and WebSocket upgrades alike)."""

    code = "not_found"

    def __init__(self, path: str) -> None:
        super().__init__("No such route", {"path": path})


class MethodNotAllowed(TetherError):
    """The route exists but not with this method."""

    code = "method_not_allowed"

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__("Method not allowed", {"method": method, "allowed": allowed})
        self.allowed = allowed


class PayloadTooLarge(TetherError):
    """The request body is over the server's limit."""

    code = "payload_too_large"

    def __init__(self, limit: int | None) -> None:
        super().__init__("Request body too large", {"max_bytes": limit})


class RequestTimedOut(TetherError):
    """The client took too long to send its request body."""

    code = "request_timeout"

    def __init__(self) -> None:
        super().__init__("Request body not received in time")


class InternalError(TetherError):
    """A bug: logged with its traceback, answered without one."""

    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("Internal server error")


class BadRequest(TetherError):
    """A request HTTP itself could not make sense of (not a parameter of ours)."""

    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class HeaderTooLarge(TetherError):
    """The request's head is over the server's limit (answered before the app sees it)."""

    code = "request_header_too_large"

    def __init__(self) -> None:
        super().__init__("The request's head is larger than the server accepts")


def status_of(error: TetherError) -> int:
    """The HTTP status of ``error``'s code (:data:`STATUS`)."""
    status = STATUS.get(error.code)
    if status is None:
        log.error("error code %r has no HTTP status (add it to STATUS); answering 500",
                  error.code)
        return 500
    return status


def envelope(error: TetherError) -> ErrorEnvelope:
    """``error`` as the API's error envelope."""
    return ErrorEnvelope(error=ErrorBody(code=error.code, message=error.message,
                                         details=error.details))


def envelope_bytes(error: TetherError) -> bytes:
    return _encode(envelope(error))


def error_response(error: TetherError) -> Response:
    """The one place an error becomes an HTTP response."""
    status = status_of(error)
    if status == 500 and error.code != InternalError.code:
        error = InternalError()
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tether"'
    elif isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    elif status == 413:
        headers["Connection"] = "close"  # the rest of the body was not read: start afresh
    return Response(envelope_bytes(error), status=status, headers=headers,
                    content_type="application/json")


def _from_http_exception(error: HTTPException) -> TetherError:
    """What the framework raised, as one of our errors."""
    if has_websocket_context():
        # A WebSocket upgrade (the agent socket, attach streams). An unknown path is
        # a 404 like any other; a REST path answers 400, as a plain request to the socket does.
        if isinstance(error, NotFound):
            return RouteNotFound(websocket.path)
        if isinstance(error, WerkzeugMethodNotAllowed | WebsocketMismatch):
            return BadRequest("This path does not accept WebSocket connections")
        return BadRequest(error.description or "Bad request")
    if isinstance(error, NotFound):
        return RouteNotFound(request.path if has_request_context() else "")
    if isinstance(error, WebsocketMismatch):
        return BadRequest("This path only accepts WebSocket connections")
    if isinstance(error, WerkzeugMethodNotAllowed):
        allowed = sorted(error.valid_methods or [])
        return MethodNotAllowed(request.method, allowed)
    if isinstance(error, RequestEntityTooLarge):
        return PayloadTooLarge(_max_body())
    if isinstance(error, RequestTimeout):
        return RequestTimedOut()
    if (error.code or 500) >= 500:
        return InternalError()
    # Any other refusal of the framework's (none is known to reach here): a 400 with its text.
    return BadRequest(error.description or "Bad request")


def _max_body() -> int | None:
    if not has_request_context():
        return None
    limit = getattr(request.body, "_max_content_length", None)
    return limit if isinstance(limit, int) else None


def install(app: QuartTrio) -> None:
    """Answer every error of ``app`` with an envelope; never a bare 500 page."""

    @app.errorhandler(TetherError)
    async def _tether_error(error: TetherError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        return error_response(_from_http_exception(error))

    @app.errorhandler(Exception)
    async def _bug(error: Exception) -> Response:
        if has_request_context():
            where = f"{request.method} {request.path}"
        elif has_websocket_context():
            where = f"websocket {websocket.path}"
        else:
            where = "?"
        log.error("unhandled error on %s", where, exc_info=error)
        return error_response(InternalError())
