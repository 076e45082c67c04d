"""How one operation of the route table is served, the same way for every API.

    API key -> workspace (401) -> parameters (400) -> body (400) -> view -> the answer

:func:`endpoint` turns an API object's method into the Quart view of its operation: it resolves
the caller's workspace (:func:`api_workspace`, the one resolver), reads the operation's declared
parameters and decodes its body (:mod:`._params`, the one parser), calls the method with typed
values, and encodes what it returns with the operation's status and content type (a method
that needs to, such as an event stream, returns its own :class:`~quart.Response`). What it
raises is answered by :mod:`._errors`. So the sessions, webhooks and events APIs differ only in
their methods, and the route table is the truth about all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from quart import Response, request

from ._errors import Unauthorized
from ._params import check_size, decode_body, read_params

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._auth import KeyStore
    from ._routes import Operation

_encode = msgspec.json.Encoder().encode
#: Query strings remembered per operation (parsing is a pure function of them; clients repeat a
#: few), and how many before the memory starts afresh.
_QUERY_CACHE = 1024


def api_workspace(keys: KeyStore) -> str:
    """The workspace of the request's API key (``Authorization: Bearer cmd_...``); 401 if the
    request has none this server knows (an agent token included)."""
    workspace_id = keys.workspace("api", request.headers.get("Authorization"))
    if workspace_id is None:
        raise Unauthorized()
    return workspace_id


def endpoint(
    op: Operation, view: Callable[..., Awaitable[Any]], keys: KeyStore
) -> Callable[..., Awaitable[Response]]:
    """The Quart view serving ``op`` with ``view`` (an API object's method)."""
    decoder: msgspec.json.Decoder[Any] | None = (
        None if op.body is None else msgspec.json.Decoder(op.body))
    params = op.query
    cacheable = all(p.location == "query" for p in params)
    queries: dict[bytes, dict[str, Any]] = {}
    status, content_type = op.status, op.content_type

    async def serve(**kwargs: Any) -> Response:
        if op.auth:
            kwargs["workspace_id"] = api_workspace(keys)
        if params or request.query_string:
            raw = request.query_string
            values = queries.get(raw) if cacheable else None
            if values is None:
                values = read_params(params, request.args, request.headers)
                if cacheable:
                    if len(queries) >= _QUERY_CACHE:
                        queries.clear()
                    queries[raw] = values
            kwargs.update(values)
        if decoder is not None or op.max_body is not None:
            body = await request.get_data(as_text=False)
            assert isinstance(body, bytes)
            if decoder is None:
                check_size(body, op.max_body)
            else:
                kwargs["body"] = decode_body(decoder, body, op.max_body)
        result = await view(**kwargs)
        if isinstance(result, Response):
            return result
        if result is None:
            return Response(b"", status=status)
        return Response(_encode(result), status=status, content_type=content_type)

    serve.__name__ = op.view
    return serve
