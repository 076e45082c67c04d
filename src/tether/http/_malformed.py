"""Requests HTTP/1.1 itself refuses get the error envelope too.

A request h11 cannot parse (a non-numeric ``Content-Length``, a broken request line, a head
past ``h11_max_incomplete_size``) never reaches the app: Hypercorn answers it itself, with an
empty body, from ``H11Protocol._send_error_response``. Found by the fuzzer (a negative case
with ``Content-Length: 8G&G``): the one error a client could get without the envelope.

:func:`install` replaces that method so the answer is the envelope, still with
``Connection: close`` and Hypercorn's configured response headers. It is process-wide (every
Hypercorn server in the process answers so), applied by :func:`tether.http.serve`, and only
when Hypercorn has the method this was written against (``hypercorn>=0.18,<0.19`` in
pyproject.toml); otherwise Hypercorn's empty answer stays.
"""

from __future__ import annotations

import inspect
from itertools import chain
from typing import Any

import h11
import msgspec
from hypercorn.protocol.h11 import H11Protocol

_MESSAGES = {
    400: ("bad_request", "Malformed HTTP request"),
    431: ("request_header_too_large", "The request's head is larger than the server accepts"),
}
_ORIGINAL = H11Protocol._send_error_response


def envelope_body(status: int) -> bytes:
    code, message = _MESSAGES.get(status, _MESSAGES[400])
    return msgspec.json.encode({"error": {"code": code, "message": message, "details": {}}})


async def _send_error_response(self: Any, status_code: int) -> None:
    body = envelope_body(status_code)
    await self._send_h11_event(h11.Response(
        status_code=status_code,
        headers=list(chain(
            [(b"content-type", b"application/json"),
             (b"content-length", b"%d" % len(body)), (b"connection", b"close")],
            self.config.response_headers("h11"),
        )),
    ))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


def install() -> bool:
    """Answer malformed requests with the envelope; ``False`` if this Hypercorn differs."""
    if H11Protocol._send_error_response is _send_error_response:
        return True
    if list(inspect.signature(_ORIGINAL).parameters) != ["self", "status_code"]:
        return False
    H11Protocol._send_error_response = _send_error_response  # type: ignore[method-assign]
    return True
