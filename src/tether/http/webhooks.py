"""The webhooks API: ``/v1/webhooks`` and its deliveries, as a Quart blueprint.

    workspace = api_key_workspace(keys)
    app.register_blueprint(webhooks_blueprint(lambda: webhooks, workspace))

Handlers are thin: they read the body first (an early answer on an unread body leaves a
keep-alive connection hung on hypercorn), decode it into a typed request, call
:class:`tether.webhooks.Webhooks` and encode the result. Errors are the engine's
:class:`~tether.engine.TetherError` hierarchy, rendered as the API's envelope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from quart import Blueprint, Response, current_app, g, request

from tether.engine import InvalidParameter, TetherError

from ._errors import Unauthorized

if TYPE_CHECKING:
    from collections.abc import Callable

    from tether.webhooks import Webhooks

    from ._auth import KeyStore

MAX_BODY = 64 * 1024
T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def request_workspace() -> str:
    """The workspace of the authenticated caller, as the auth layer put it on ``quart.g``."""
    workspace_id = getattr(g, "workspace_id", None)
    if not workspace_id:
        raise RuntimeError("no authenticated workspace on this request (g.workspace_id)")
    return str(workspace_id)


def api_key_workspace(keys: KeyStore) -> Callable[[], str]:
    """The caller's workspace from its ``Authorization: Bearer <api key>`` (401 if none)."""

    def workspace() -> str:
        workspace_id = keys.workspace("api", request.headers.get("Authorization"))
        if workspace_id is None:
            raise Unauthorized()
        return workspace_id

    return workspace


def app_webhooks() -> Webhooks:
    """The app's webhooks service, as registered in ``app.extensions["tether.webhooks"]``."""
    return current_app.extensions["tether.webhooks"]  # type: ignore[no-any-return]


class CreateWebhook(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str
    events: list[str]
    secret: str | None = None
    enabled: bool = True


class UpdateWebhook(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | msgspec.UnsetType = msgspec.UNSET
    events: list[str] | msgspec.UnsetType = msgspec.UNSET
    #: ``null`` generates a new secret (returned in the response, once).
    secret: str | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(body), status=status, content_type="application/json")


def error_response(error: TetherError) -> Response:
    return json_response(error.envelope(), error.http_status)


async def read_body() -> bytes:
    """The request body, read in full before anything else is decided."""
    body = await request.get_data(cache=False, as_text=False)
    assert isinstance(body, bytes)
    if len(body) > MAX_BODY:
        raise InvalidParameter("body", f"must be at most {MAX_BODY} bytes")
    return body


def decode(body: bytes, type: type[T]) -> T:
    if not body.strip():
        raise InvalidParameter("body", "must be a JSON object")
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "at `$." in text:  # "Expected `str`, got `int` - at `$.url`"
            parameter = text.rsplit("at `$.", 1)[1].rstrip("`")
        elif "field `" in text:  # "Object missing required field `url`", "... unknown field"
            parameter = text.split("field `", 1)[1].split("`", 1)[0]
        else:
            parameter = "body"
        raise InvalidParameter(parameter, text) from None
    except msgspec.DecodeError as exc:
        raise InvalidParameter("body", f"is not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise InvalidParameter("body", "is not valid UTF-8") from None


def query_int(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidParameter(name, "must be an integer") from None


def webhooks_blueprint(
    webhooks: Callable[[], Webhooks] = app_webhooks,
    workspace: Callable[[], str] = request_workspace,
) -> Blueprint:
    """The ``/v1/webhooks`` routes; ``webhooks`` and ``workspace`` are looked up per request."""
    bp = Blueprint("webhooks", __name__)
    bp.register_error_handler(TetherError, error_response)

    @bp.get("/v1/webhooks")
    async def list_webhooks() -> Response:
        return json_response({"data": webhooks().list(workspace())})

    @bp.post("/v1/webhooks")
    async def create_webhook() -> Response:
        body = await read_body()
        ws = workspace()
        req = decode(body, CreateWebhook)
        view = await webhooks().create(ws, req.url, req.events, req.secret, req.enabled)
        return json_response({"data": view}, 201)

    @bp.get("/v1/webhooks/<webhook_id>")
    async def get_webhook(webhook_id: str) -> Response:
        return json_response({"data": webhooks().get(workspace(), webhook_id)})

    @bp.patch("/v1/webhooks/<webhook_id>")
    async def update_webhook(webhook_id: str) -> Response:
        body = await read_body()
        ws = workspace()
        req = decode(body, UpdateWebhook)
        view = await webhooks().update(ws, webhook_id, url=req.url, events=req.events,
                                       secret=req.secret, enabled=req.enabled)
        return json_response({"data": view})

    @bp.delete("/v1/webhooks/<webhook_id>")
    async def delete_webhook(webhook_id: str) -> Response:
        await read_body()
        webhooks().delete(workspace(), webhook_id)
        return Response(b"", status=204)

    @bp.post("/v1/webhooks/<webhook_id>/test")
    async def test_webhook(webhook_id: str) -> Response:
        await read_body()
        result = await webhooks().send_test(workspace(), webhook_id)
        return json_response({"data": result})

    @bp.get("/v1/webhooks/<webhook_id>/deliveries")
    async def list_deliveries(webhook_id: str) -> Response:
        page = webhooks().deliveries(
            workspace(), webhook_id, limit=query_int("limit", 20),
            before=request.args.get("before") or None,
        )
        return json_response(page)

    @bp.post("/v1/webhooks/<webhook_id>/deliveries/<delivery_id>/retry")
    async def retry_delivery(webhook_id: str, delivery_id: str) -> Response:
        await read_body()
        view = webhooks().redeliver(workspace(), webhook_id, delivery_id)
        return json_response({"data": view}, 202)

    return bp
