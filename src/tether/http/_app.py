"""The Quart-Trio application over one engine, and the Hypercorn server that serves it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio

from tether.engine import InvalidParameter

from . import _errors, _malformed
from ._agent import AgentSocket
from ._asgi import HTTPConnection
from ._openapi import openapi_document
from ._routes import OPERATIONS
from ._settings import HttpSettings
from ._views import SessionsApi
from .events import events_blueprint
from .webhooks import api_key_workspace, webhooks_blueprint

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


def _query_check(
    allowed: dict[tuple[str, str], frozenset[str]],
) -> Callable[[], Awaitable[None]]:
    """Refuse query parameters an operation does not declare (400 ``invalid_parameter``).

    The route table says which parameters each operation takes; a misspelt one (``limt=5``)
    would otherwise be ignored silently and the client would never learn why.
    """

    async def check_query() -> None:
        if not request.query_string:
            return
        rule = request.url_rule
        names = allowed.get((rule.rule, request.method)) if rule is not None else None
        if names is None:
            return
        args = request.args
        for name in args:
            if name not in names:
                raise InvalidParameter(name, "is not a parameter of this operation")
            if len(args.getlist(name)) > 1:
                raise InvalidParameter(name, "must be given at most once")

    return check_query


async def _challenge(response: Response) -> Response:
    """Every 401 names the scheme it wants (RFC 9110), whichever blueprint answered it."""
    if response.status_code == 401 and "WWW-Authenticate" not in response.headers:
        response.headers["WWW-Authenticate"] = 'Bearer realm="tether"'
    return response


def create_app(
    engine: Engine,
    keys: KeyStore,
    settings: HttpSettings | None = None,
    webhooks: Webhooks | None = None,
) -> QuartTrio:
    """The Sessions REST API, the event feed, ``/openapi.json``, ``/healthz``, the agent
    socket, and (given the running service) the webhooks API."""
    settings = settings or HttpSettings()
    app = QuartTrio("tether")
    app.asgi_http_class = HTTPConnection
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.before_request(_drain_body)
    app.after_request(_challenge)
    app.before_request(_query_check(
        {(op.rule, op.method): frozenset(p.name for p in op.query) for op in OPERATIONS}
    ))
    _errors.install(app)
    api = SessionsApi(engine, keys, openapi_document())
    for op in OPERATIONS:
        if not op.blueprint:
            app.add_url_rule(op.rule, op.view, getattr(api, op.view), methods=[op.method])
    workspace = api_key_workspace(keys)
    app.register_blueprint(events_blueprint(lambda: engine, workspace, settings.sse_keepalive))
    if webhooks is not None:
        app.register_blueprint(webhooks_blueprint(lambda: webhooks, workspace))
    # A bound method, not a callable object: Quart runs what is not a coroutine function on a
    # worker thread.
    app.add_websocket("/v1/agent", "agent", AgentSocket(engine, keys, settings).serve)
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
