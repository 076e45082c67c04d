"""One HTTP request at the ASGI level: quart-trio's handler, minus a cancellation that left
keep-alive connections open forever.

quart-trio runs each request as two tasks in one nursery: one sends the response, the other
reads ASGI messages and cancels the nursery on ``http.disconnect`` (so a handler whose client
went away stops). Hypercorn sends that ``http.disconnect`` itself, from inside the response's
last ``send``, when it closes the finished stream; so the sending task is cancelled while
Hypercorn is still in that ``send``, setting the connection up for the next request. Its
next steps then fail on the cancellation: the keep-alive idle timer never starts, and a
connection to be closed is never closed. Seen here with hypercorn 0.18 and quart-trio 0.12:
an idle keep-alive connection stayed open forever, ignoring ``keep_alive_timeout``, and on
SIGTERM one idle REST client held ``tether serve``'s exit for the whole ``--drain-timeout``.

:class:`HTTPConnection` (the app's ``asgi_http_class``, Quart's own extension point) cancels
the request only for a disconnect that comes before the response is complete: a client that
goes away mid-response (an event stream) still stops its handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart.asgi import ASGIHTTPConnection
from quart_trio.asgi import TrioASGIHTTPConnection

if TYPE_CHECKING:
    import trio
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
    from quart import Request


class HTTPConnection(TrioASGIHTTPConnection):
    """quart-trio's request handler that does not cancel a request already answered."""

    _complete = False  # the response's last message has gone to the server

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        await ASGIHTTPConnection.handle_messages(self, request, receive)
        if not self._complete:
            nursery.cancel_scope.cancel()

    async def handle_request(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, send: ASGISendCallable
    ) -> None:
        async def send_noting_the_end(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self._complete = True
            await send(message)

        await super().handle_request(nursery, request, send_noting_the_end)
