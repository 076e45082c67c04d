"""The Quart-Trio application over one engine, and the Hypercorn server that serves it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio

from . import _errors, _malformed
from ._agent import AgentSocket
from ._asgi import HTTPConnection
from ._attach import AttachSocket
from ._endpoints import endpoint
from ._events import EventsApi
from ._openapi import openapi_document
from ._routes import OPERATIONS
from ._settings import HttpSettings
from ._views import SessionsApi
from ._webhooks import WebhooksApi

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tether.engine import Engine
    from tether.webhooks import Webhooks

    from ._auth import KeyStore

log = logging.getLogger("tether.http")


async def _drain_body() -> None:
    """Read a request's body before anything answers it.

    Seen on hypercorn 0.18 + quart 0.22: an answer sent before the body was read (an early
    401/404/409 on a POST) leaves the keep-alive connection hung. Reading it first (bounded by
    the body limit, which answers 413 and closes the connection) keeps every connection usable.
    """
    headers = request.headers
    if "Content-Length" in headers or "Transfer-Encoding" in headers:
        await request.get_data()


def create_app(
    engine: Engine,
    keys: KeyStore,
    settings: HttpSettings | None = None,
    webhooks: Webhooks | None = None,
) -> QuartTrio:
    """The Sessions REST API, the event feed, ``/openapi.json``, ``/healthz``, the agent
    socket, and (given the running service) the webhooks API.

    Every operation of the route table is served by :func:`._endpoints.endpoint` over the API
    object of its tag; every error is answered by :mod:`._errors`.
    """
    settings = settings or HttpSettings()
    app = QuartTrio("tether")
    app.asgi_http_class = HTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    # ``/v1//sessions`` is no route (a 404 envelope), not a redirect to one.
    app.url_map.merge_slashes = False
    app.before_request(_drain_body)
    _errors.install(app)
    sessions = SessionsApi(engine, openapi_document(), settings.node_id)
    if settings.node_id:
        node_id = settings.node_id

        async def name_the_node(response: Response) -> Response:
            response.headers["X-Tether-Node"] = node_id
            return response

        app.after_request(name_the_node)
    apis: dict[str, object] = {
        "sessions": sessions,
        "service": sessions,
        "events": EventsApi(engine, settings.sse_keepalive),
    }
    if webhooks is not None:
        apis["webhooks"] = WebhooksApi(webhooks)
    for op in OPERATIONS:
        api = apis.get(op.tag)
        if api is not None:
            app.add_url_rule(op.rule, op.view, endpoint(op, getattr(api, op.view), keys),
                             methods=[op.method])
    # A bound method, not a callable object: Quart runs what is not a coroutine function on a
    # worker thread.
    app.add_websocket("/v1/agent", "agent", AgentSocket(engine, keys, settings).serve)
    app.add_websocket("/v1/sessions/<session_id>/attach", "attach",
                      AttachSocket(engine, keys, settings).serve)
    return app


def server_config(
    host: str = "127.0.0.1",
    port: int = 8080,
    settings: HttpSettings | None = None,
    *,
    access_log: bool = False,
) -> Config:
    """Hypercorn's configuration for our app: our limits instead of its 16 MiB defaults."""
    settings = settings or HttpSettings()
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.websocket_max_message_size = 2 * settings.max_frame_bytes
    config.h11_max_incomplete_size = 64 * 1024
    config.accesslog = "-" if access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 5.0
    return config


async def serve(
    app: QuartTrio,
    config: Config,
    *,
    shutdown_trigger: Callable[..., Awaitable[Any]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown_trigger`` returns; ``task_status`` gets the bound URLs.

    Requests HTTP itself refuses are answered with the error envelope (:mod:`._malformed`).
    """
    _malformed.install()
    await hypercorn_serve(
        app,
        config,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )
