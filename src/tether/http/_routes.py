"""The route table: one entry per operation, read by the app (to route) and by OpenAPI (to
describe), so the document describes exactly what is served."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tether.engine import (
    AttachedClient,
    CommandView,
    HistoryPage,
    MachineSession,
    Metrics,
    SessionDetail,
    SessionPage,
)
from tether.webhooks import DeliveryPage, DeliveryView, TestResult, WebhookView

from ._models import (
    AttachClientBody,
    CreateSessionBody,
    Data,
    EventsPage,
    Health,
    RunCommandBody,
)
from ._params import MAX_OFFSET
from .webhooks import CreateWebhook, UpdateWebhook


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: /v1/sessions/{session_id}
    view: str  # the SessionsApi method, also the operationId
    summary: str
    response: Any  # the 2xx body type, or None for an empty answer
    status: int = 200
    query: tuple[Param, ...] = ()
    body: type | None = None
    errors: tuple[int, ...] = ()
    auth: bool = True
    tags: tuple[str, ...] = ("sessions",)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Served by a blueprint (webhooks, events) rather than routed from this table; the
    #: table still describes it, so /openapi.json covers everything that is served.
    blueprint: bool = False
    content_type: str = "application/json"

    @property
    def rule(self) -> str:
        """The path as a Quart URL rule."""
        return re.sub(r"\{(\w+)\}", r"<\1>", self.path)


_STATUS = Param(
    "status",
    {"type": "string",
     "enum": ["PENDING", "CONNECTED", "BACKGROUND", "GRACE_PERIOD", "DISCONNECTED", "ERROR"]},
    "Filter by status",
)
_TEXT = {"type": "string", "minLength": 1, "maxLength": 256}
#: An event cursor: empty means "from the oldest retained event", as the feed reads it.
_CURSOR = {"type": "string", "maxLength": 256}
_COMMON = (400, 401, 405, 500, 503)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", "/v1/sessions", "list_sessions", "List sessions, newest first",
        SessionPage,
        query=(
            _STATUS,
            Param("machine_id", _TEXT, "Filter by machine ID"),
            Param("machine_hostname", _TEXT, "Filter by hostname"),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                  "Max results"),
            Param("offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET,
                             "default": 0},
                  "Pagination offset"),
        ),
        errors=_COMMON,
    ),
    Operation(
        "POST", "/v1/sessions", "create_session",
        "Create a PENDING session waiting for a machine's agent",
        Data[SessionDetail], status=201, body=CreateSessionBody, errors=(*_COMMON, 409, 413),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}", "get_session",
        "Get a session with its attached clients and telemetry",
        Data[SessionDetail], errors=(*_COMMON, 404),
    ),
    Operation(
        "DELETE", "/v1/sessions/{session_id}", "terminate_session",
        "Terminate a live session (it ends DISCONNECTED, reason terminated)",
        Data[SessionDetail], errors=(*_COMMON, 404, 409),
    ),
    Operation(
        "GET", "/v1/machines/{machine_id}/session", "get_machine_session",
        "Get the active session of a machine",
        Data[MachineSession], errors=(*_COMMON, 404),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}/history", "get_session_history",
        "Command history, oldest first; page back with before=<command_id>",
        HistoryPage,
        query=(
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50},
                  "Max commands"),
            Param("before", _TEXT, "Only commands older than this command_id (cursor)"),
        ),
        errors=(*_COMMON, 404),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}/metrics", "get_session_metrics",
        "The latest telemetry of a CONNECTED session",
        Data[Metrics], errors=(*_COMMON, 404, 409),
    ),
    Operation(
        "POST", "/v1/sessions/{session_id}/clients", "attach_client",
        "Attach an operator or observer to a CONNECTED session",
        Data[AttachedClient], status=201, body=AttachClientBody,
        errors=(*_COMMON, 404, 409, 413),
    ),
    Operation(
        "DELETE", "/v1/sessions/{session_id}/clients/{client_id}", "detach_client",
        "Detach a client", None, status=204, errors=(*_COMMON, 404, 409),
    ),
    Operation(
        "POST", "/v1/sessions/{session_id}/commands", "run_command",
        "Run a command for an attached operator (sent to the agent as run_command)",
        Data[CommandView], status=202, body=RunCommandBody,
        errors=(*_COMMON, 403, 404, 409, 413),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}/commands/{command_id}", "get_command",
        "An operator command and how it ended", Data[CommandView], errors=(*_COMMON, 404),
    ),
    # -- webhooks (served by tether.http.webhooks) ------------------------------------------
    Operation(
        "GET", "/v1/webhooks", "list_webhooks", "List the workspace's webhook endpoints",
        Data[list[WebhookView]], errors=_COMMON, tags=("webhooks",), blueprint=True,
    ),
    Operation(
        "POST", "/v1/webhooks", "create_webhook",
        "Add an endpoint (a secret not given is generated and returned once)",
        Data[WebhookView], status=201, body=CreateWebhook, errors=(*_COMMON, 413),
        tags=("webhooks",), blueprint=True,
    ),
    Operation(
        "GET", "/v1/webhooks/{webhook_id}", "get_webhook", "Get an endpoint",
        Data[WebhookView], errors=(*_COMMON, 404), tags=("webhooks",), blueprint=True,
    ),
    Operation(
        "PATCH", "/v1/webhooks/{webhook_id}", "update_webhook",
        "Change an endpoint's url, events, secret (null: generate) or enabled",
        Data[WebhookView], body=UpdateWebhook, errors=(*_COMMON, 404, 413),
        tags=("webhooks",), blueprint=True,
    ),
    Operation(
        "DELETE", "/v1/webhooks/{webhook_id}", "delete_webhook", "Remove an endpoint",
        None, status=204, errors=(*_COMMON, 404), tags=("webhooks",), blueprint=True,
    ),
    Operation(
        "POST", "/v1/webhooks/{webhook_id}/test", "test_webhook",
        "Send a signed webhook.test event and report the outcome",
        Data[TestResult], errors=(*_COMMON, 404, 409), tags=("webhooks",), blueprint=True,
    ),
    Operation(
        "GET", "/v1/webhooks/{webhook_id}/deliveries", "list_deliveries",
        "The endpoint's deliveries, newest first",
        DeliveryPage,
        query=(
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                  "Max deliveries"),
            Param("before", _TEXT, "Only deliveries older than this delivery id (cursor)"),
        ),
        errors=(*_COMMON, 404), tags=("webhooks",), blueprint=True,
    ),
    Operation(
        "POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", "retry_delivery",
        "Deliver a failed delivery's event again",
        Data[DeliveryView], status=202, errors=(*_COMMON, 404, 409), tags=("webhooks",),
        blueprint=True,
    ),
    # -- the event feed (served by tether.http.events) -------------------------------------
    Operation(
        "GET", "/v1/events", "list_events",
        "The workspace's retained events in order, after an event id",
        EventsPage,
        query=(
            Param("after", _CURSOR,
                  "Only events after this event id (410 if no longer retained)"),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                  "Max events"),
        ),
        errors=(*_COMMON, 410), tags=("events",), blueprint=True,
    ),
    Operation(
        "GET", "/v1/events/stream", "stream_events",
        "Live events as Server-Sent Events; resumes after Last-Event-ID (or ?after=)",
        str, content_type="text/event-stream",
        query=(Param("after", _CURSOR, "Resume after this event id"),),
        errors=(*_COMMON, 410), tags=("events",), blueprint=True,
    ),
    Operation(
        "GET", "/openapi.json", "openapi", "This document (OpenAPI 3.1)", dict[str, Any],
        auth=False, tags=("service",), errors=(405, 500),
    ),
    Operation(
        "GET", "/healthz", "healthz", "Liveness", Health, auth=False, tags=("service",),
        errors=(405, 500),
    ),
)
