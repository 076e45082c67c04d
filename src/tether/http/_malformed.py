"""Requests Hypercorn itself refuses get the error envelope too.

A request h11 cannot parse (a non-numeric ``Content-Length``, a broken request line, a head
past ``h11_max_incomplete_size``) never reaches the app: Hypercorn answers it itself, with an
empty body, from ``H11Protocol._send_error_response``. Found by the fuzzer (a negative case
with ``Content-Length: 8G&G``): the one error a client could get without the envelope. A
WebSocket upgrade whose handshake is not valid (no ``Sec-WebSocket-Key``, an unknown version)
is refused the same way, from ``WSStream._send_error_response``.

:func:`install` replaces those methods so the answer is the envelope (with the code
:mod:`._errors` gives its status), still with ``Connection: close`` and Hypercorn's
configured response headers. It is process-wide (every Hypercorn server in the process answers
so), applied by :func:`tether.http.serve`, and only when Hypercorn has the methods this was
written against (``hypercorn>=0.18,<0.19`` in pyproject.toml); otherwise Hypercorn's empty
answers stay. A status this module has no error for keeps Hypercorn's empty answer.
"""

from __future__ import annotations

import inspect
from itertools import chain
from time import time
from typing import TYPE_CHECKING, Any

import h11
from hypercorn.protocol import events
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream

from ._errors import BadRequest, HeaderTooLarge, InternalError, envelope_bytes

if TYPE_CHECKING:
    from tether.engine import TetherError

#: What Hypercorn's own refusals are, by the status it picks.
_ANSWERS: dict[int, TetherError] = {
    400: BadRequest("Malformed HTTP request"),
    431: HeaderTooLarge(),
    500: InternalError(),
}
_H11_ORIGINAL = H11Protocol._send_error_response
_WS_ORIGINAL = WSStream._send_error_response


def envelope_body(status: int) -> bytes | None:
    """The envelope answering Hypercorn's refusal with ``status``, if it is one we know."""
    error = _ANSWERS.get(status)
    return None if error is None else envelope_bytes(error)


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
            (b"connection", b"close")]


async def _h11_send_error_response(self: Any, status_code: int) -> None:
    body = envelope_body(status_code)
    if body is None:
        await _H11_ORIGINAL(self, status_code)
        return
    await self._send_h11_event(h11.Response(
        status_code=status_code,
        headers=list(chain(_headers(body), self.config.response_headers("h11"))),
    ))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


async def _ws_send_error_response(self: Any, status_code: int) -> None:
    body = envelope_body(status_code)
    if body is None:
        await _WS_ORIGINAL(self, status_code)
        return
    await self.send(events.Response(stream_id=self.stream_id, status_code=status_code,
                                    headers=_headers(body)))
    await self.send(events.Body(stream_id=self.stream_id, data=body))
    await self.send(events.EndBody(stream_id=self.stream_id))
    await self.config.log.access(
        self.scope, {"status": status_code, "headers": []}, time() - self.start_time
    )


_METHOD = "_send_error_response"
_REPLACEMENTS = ((H11Protocol, _H11_ORIGINAL, _h11_send_error_response),
                 (WSStream, _WS_ORIGINAL, _ws_send_error_response))


def install() -> bool:
    """Answer Hypercorn's refusals with the envelope; ``False`` if this Hypercorn differs."""
    if H11Protocol._send_error_response is _h11_send_error_response:
        return True
    for _, original, _ in _REPLACEMENTS:
        if list(inspect.signature(original).parameters) != ["self", "status_code"]:
            return False
    for cls, _, replacement in _REPLACEMENTS:
        setattr(cls, _METHOD, replacement)
    return True
