"""The OpenAPI 3.1 document, generated from the route table and the msgspec models."""

from __future__ import annotations

from typing import Any

import msgspec

from ._errors import ERROR_STATUSES
from ._models import ErrorEnvelope
from ._routes import OPERATIONS, Operation

_REF = "#/components/schemas/{name}"
_ERROR_TEXT = {
    400: "Invalid parameter or body (invalid_parameter)",
    401: "Missing or unknown API key (unauthorized); carries WWW-Authenticate: Bearer",
    403: "The client is an observer (client_not_operator)",
    404: "Not found in this workspace (session_not_found, client_not_found, "
         "command_not_found)",
    405: "Method not allowed (method_not_allowed); carries Allow",
    409: "The session is not in a status that allows this (session_not_active, "
         "session_already_active)",
    413: "Body over the server's limit (payload_too_large)",
    500: "A bug (internal_error)",
    503: "The engine is shutting down (engine_closed)",
}


def _operation(op: Operation, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(op.path)
    ]
    params += [
        {"name": p.name, "in": "query", "required": False, "schema": p.schema,
         "description": p.description}
        for p in op.query
    ]
    responses: dict[str, Any] = {}
    if op.response is None:
        responses[str(op.status)] = {"description": "Done; no body"}
    else:
        responses[str(op.status)] = {
            "description": "Success",
            "content": {op.content_type: {"schema": refs[op.response]}},
        }
    for status in sorted(op.errors):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, ERROR_STATUSES.get(status, "Error")),
            "content": {"application/json": {"schema": refs[ErrorEnvelope]}},
        }
    doc: dict[str, Any] = {
        "operationId": op.view,
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": params,
        "responses": responses,
        "security": [{"apiKey": []}] if op.auth else [],
    }
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[op.body]}},
        }
    return doc


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def openapi_document(title: str = "Tether Sessions API", version: str = "0.1.0") -> bytes:
    """The document as JSON bytes (build once; it never changes while serving)."""
    types: list[Any] = [ErrorEnvelope]
    for op in OPERATIONS:
        for t in (op.response, op.body):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    refs = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Sessions of remote machines' agents. Every request carries "
                           "Authorization: Bearer <api key> (cmd_...); a key sees only its "
                           "workspace. Errors are {\"error\": {code, message, details}}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer",
                           "description": "An API key (cmd_...)"},
            },
        },
    }
    return msgspec.json.encode(doc)
