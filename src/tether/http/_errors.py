"""Errors as HTTP answers, in one place.

Every error the API answers is a :class:`~tether.engine.TetherError` (the engine's own, or one of
the few transport errors below) rendered as its envelope ``{"error": {"code", "message",
"details"}}``. Handlers raise; :func:`install` turns what they raise into responses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
from quart import Response, has_request_context, request
from werkzeug.exceptions import HTTPException

from tether.engine import InvalidParameter, TetherError

if TYPE_CHECKING:
    from quart_trio import QuartTrio

log = logging.getLogger("tether.http")

_encode = msgspec.json.Encoder().encode


class Unauthorized(TetherError):
    """The request carries no credential, or one this server does not know for this door."""

    code = "unauthorized"
    http_status = 401

    def __init__(self) -> None:
        super().__init__("Missing or invalid credentials")


class RouteNotFound(TetherError):
    """No such route."""

    code = "not_found"
    http_status = 404

    def __init__(self, path: str) -> None:
        super().__init__("No such route", {"path": path})


class MethodNotAllowed(TetherError):
    """The route exists but not with this method."""

    code = "method_not_allowed"
    http_status = 405

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__("Method not allowed", {"method": method, "allowed": allowed})
        self.allowed = allowed


class PayloadTooLarge(TetherError):
    """The request body is over the server's limit."""

    code = "payload_too_large"
    http_status = 413

    def __init__(self, limit: int | None) -> None:
        super().__init__("Request body too large", {"max_bytes": limit})


class InternalError(TetherError):
    """A bug: logged with its traceback, answered without one."""

    code = "internal_error"
    http_status = 500

    def __init__(self) -> None:
        super().__init__("Internal server error")


class BadRequest(TetherError):
    """A request HTTP itself could not make sense of (not a parameter of ours)."""

    code = "bad_request"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)


#: Every error status the API may answer, with the error type that answers it (for OpenAPI).
ERROR_STATUSES: dict[int, str] = {
    400: "invalid_parameter",
    401: "unauthorized",
    403: "client_not_operator",
    404: "session_not_found",
    405: "method_not_allowed",
    409: "session_not_active",
    413: "payload_too_large",
    500: "internal_error",
    503: "engine_closed",
}


def invalid_body(error: msgspec.ValidationError | msgspec.DecodeError) -> InvalidParameter:
    """A body that did not decode, as ``invalid_parameter`` naming the field where possible."""
    text = str(error)
    parameter = "body"
    head, sep, path = text.rpartition(" - at `$.")
    if sep and path.endswith("`"):
        parameter, text = path[:-1], head
    return InvalidParameter(parameter, text)


def error_response(error: TetherError) -> Response:
    """The one place an error becomes an HTTP response."""
    headers: dict[str, str] = {}
    if error.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tether"'
    elif isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    elif error.http_status == 413:
        headers["Connection"] = "close"  # the rest of the body was not read: start afresh
    return Response(
        _encode(error.envelope()), status=error.http_status, headers=headers,
        content_type="application/json",
    )


def _from_http_exception(error: HTTPException) -> TetherError:
    status = error.code or 500
    if status == 404:
        return RouteNotFound(request.path)
    if status == 405:
        allowed = sorted(getattr(error, "valid_methods", None) or [])
        return MethodNotAllowed(request.method, allowed)
    if status == 413:
        return PayloadTooLarge(_max_body(request))
    if status == 400:
        return BadRequest(error.description or "Bad request")
    if status >= 500:
        return InternalError()
    generic = TetherError(error.description or error.name)
    generic.code = error.name.lower().replace(" ", "_")  # type: ignore[misc]
    generic.http_status = status  # type: ignore[misc]
    return generic


def _max_body(req: Any) -> int | None:
    limit = getattr(req.body, "_max_content_length", None)
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
        where = f"{request.method} {request.path}" if has_request_context() else "websocket"
        log.error("unhandled error on %s", where, exc_info=error)
        return error_response(InternalError())
