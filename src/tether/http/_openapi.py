"""The OpenAPI 3.1 document, generated from the route table, the msgspec models and the error
table, so that what it describes is what is served: every parameter's schema is the one its
parser enforces, every body's schema the one its decoder enforces, every error status the one
:data:`~tether.http._errors.STATUS` answers, and links say where an answer's ids lead.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._errors import AGENT_CODES, STATUS
from ._models import ErrorEnvelope
from ._routes import OPERATIONS, PATH_PARAMS, Link, Operation

_REF = "#/components/schemas/{name}"
#: What a status means beyond its codes, and the headers that always come with it.
_STATUS_TEXT = {
    400: "Invalid parameter or body, or a request HTTP cannot make sense of",
    401: "Missing or unknown API key",
    403: "Not allowed for this client",
    404: "Not found in this workspace",
    405: "Method not allowed",
    409: "Not in a state that allows this",
    410: "No longer retained: resynchronise from the current state",
    413: "Body over the server's limit",
    500: "A bug",
    503: "The engine is shutting down, or (Redis mode) the change cannot be made durable now",
}
_STATUS_HEADERS = {
    401: {"WWW-Authenticate": {"description": 'Bearer realm="tether"', "required": True,
                               "schema": {"type": "string"}}},
    405: {"Allow": {"description": "The methods this path takes", "required": True,
                    "schema": {"type": "string"}}},
}


def _error_description(status: int) -> str:
    codes = sorted(code for code, s in STATUS.items() if s == status and code not in AGENT_CODES)
    text = _STATUS_TEXT.get(status, "Error")
    return f"{text} ({', '.join(codes)})" if codes else text


def _operation(op: Operation, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "description": PATH_PARAMS[name][0],
         "schema": {"type": "string", "minLength": 1}, "example": PATH_PARAMS[name][1]}
        for name in op.path_params
    ]
    for p in op.query:
        param = {"name": p.name, "in": p.location, "required": False, "schema": p.schema(),
                 "description": p.description}
        if p.example is not None:
            param["example"] = p.example
        params.append(param)
    success: dict[str, Any]
    if op.response is None:
        success = {"description": "Done; no body"}
    else:
        success = {"description": "Success",
                   "content": {op.content_type: {"schema": refs[op.response]}}}
    if op.links:
        success["links"] = {link.name: _link(link) for link in op.links}
    responses: dict[str, Any] = {str(op.status): success}
    for status in sorted(op.errors):
        response: dict[str, Any] = {
            "description": _error_description(status),
            "content": {"application/json": {"schema": refs[ErrorEnvelope]}},
        }
        if status in _STATUS_HEADERS:
            response["headers"] = _STATUS_HEADERS[status]
        responses[str(status)] = response
    doc: dict[str, Any] = {
        "operationId": op.view,
        "summary": op.summary,
        "tags": [op.tag],
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


def _link(link: Link) -> dict[str, Any]:
    doc: dict[str, Any] = {"operationId": link.target, "parameters": dict(link.parameters)}
    if link.body:
        doc["requestBody"] = dict(link.body)
    return doc


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
