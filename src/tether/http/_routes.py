"""The route table: one entry per operation, read by the app (to route and to parse) and by
OpenAPI (to describe), so the document describes exactly what is served.

An operation names its view (a method of the API object of its tag, also its ``operationId``),
its parameters (:mod:`._params`: parsed and described from the same entry), its body type
(decoded and described from the same msgspec type), the status and type of its answer, the
errors it may answer, and the links a client follows from its answer to the next operation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tether.engine import (
    DEFAULT_HISTORY,
    DEFAULT_OUTPUT_READ,
    DEFAULT_PAGE,
    MAX_HISTORY,
    MAX_OUTPUT_READ,
    MAX_PAGE,
    AttachedClient,
    CommandView,
    HistoryPage,
    MachineSession,
    Metrics,
    OutputPage,
    SessionDetail,
    SessionPage,
    Status,
)
from tether.webhooks import DeliveryPage, DeliveryView, TestResult, WebhookView

from ._models import (
    AttachClientBody,
    CreateSessionBody,
    CreateWebhookBody,
    Data,
    EventsPage,
    Health,
    RunCommandBody,
    UpdateWebhookBody,
)
from ._params import Choice, Integer, Param, Text

#: The largest ``offset`` a list accepts.
MAX_OFFSET = 1_000_000_000
#: The largest byte offset of a session's output a read may name (a petabyte).
MAX_OUTPUT_OFFSET = 10**15 - 1
DEFAULT_EVENTS = 100
MAX_EVENTS = 1000
DEFAULT_DELIVERIES = 20
MAX_DELIVERIES = 100
#: The webhook operations' own body limit (below the server's ``max_body_bytes``).
WEBHOOK_BODY_BYTES = 64 * 1024
#: An event id of the feed, or nothing (from the oldest retained event).
EVENT_CURSOR = "^(?:evt_[0-9a-vA-V]{24})?$"


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: from an operation's answer to the operation ``target`` (an operationId),
    with its parameters (and body fields) taken from the answer or the request by runtime
    expressions such as ``$response.body#/data/session_id``."""

    name: str
    target: str
    parameters: tuple[tuple[str, str], ...] = ()
    body: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: /v1/sessions/{session_id}
    view: str  # the API object's method, also the operationId
    summary: str
    response: Any  # the 2xx body type, or None for an empty answer
    status: int = 200
    query: tuple[Param, ...] = ()
    body: type | None = None
    #: Bytes a body may have (``invalid_parameter`` past it); ``None``: the server's limit.
    max_body: int | None = None
    errors: tuple[int, ...] = ()
    auth: bool = True
    #: The OpenAPI tag, and which API object serves it (sessions, webhooks, events, service).
    tag: str = "sessions"
    content_type: str = "application/json"
    links: tuple[Link, ...] = ()

    @property
    def rule(self) -> str:
        """The path as a Quart URL rule."""
        return re.sub(r"\{(\w+)\}", r"<\1>", self.path)

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


#: Path parameters, described, with an example (any text routes; an id that names nothing in
#: the caller's workspace is a 404).
PATH_PARAMS: dict[str, tuple[str, str]] = {
    "session_id": ("A session id (sess_...)", "sess_abc123"),
    "machine_id": ("A machine id", "mach_xyz789"),
    "client_id": ("An attached client's id (cli_...)", "cli_111"),
    "command_id": ("A command id", "cmd_111"),
    "webhook_id": ("A webhook endpoint's id (hook_...)", "hook_6e6ae2f2ab8345a115e0"),
    "delivery_id": ("A delivery's id (dlv_...)", "dlv_7bf004000000000001"),
}

_TEXT_FILTER = "matches nothing if no session has it"
_COMMON = (400, 401, 405, 500, 503)
_WEBHOOK = (*_COMMON, 404)


def _links(source: str, expressions: dict[str, str], *targets: str) -> tuple[Link, ...]:
    return tuple(Link(f"{source}_to_{target}", target, tuple(expressions.items()))
                 for target in targets)


_SESSION = {"session_id": "$response.body#/data/session_id"}
_HOOK = {"webhook_id": "$response.body#/data/id"}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", "/v1/sessions", "list_sessions", "List sessions, newest first",
        SessionPage,
        query=(
            Choice(name="status", description="Filter by status",
                   values=tuple(s.value for s in Status), example="CONNECTED"),
            Text(name="machine_id", description=f"Filter by machine ID ({_TEXT_FILTER})",
                 example="mach_xyz789"),
            Text(name="machine_hostname", description=f"Filter by hostname ({_TEXT_FILTER})",
                 example="prod-server"),
            Integer(name="limit", description="Max results", low=1, high=MAX_PAGE,
                    default=DEFAULT_PAGE, example=10),
            Integer(name="offset", description="Pagination offset", low=0, high=MAX_OFFSET,
                    default=0, example=0),
        ),
        errors=_COMMON,
        links=(Link("list_to_get_session", "get_session",
                    (("session_id", "$response.body#/data/0/session_id"),)),),
    ),
    Operation(
        "POST", "/v1/sessions", "create_session",
        "Create a PENDING session waiting for a machine's agent",
        Data[SessionDetail], status=201, body=CreateSessionBody, errors=(*_COMMON, 409, 413),
        links=(
            *_links("create_session", _SESSION, "get_session", "terminate_session",
                    "get_session_history", "get_session_metrics", "get_session_output",
                    "attach_client", "run_command"),
            Link("create_session_to_get_machine_session", "get_machine_session",
                 (("machine_id", "$response.body#/data/machine_id"),)),
        ),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}", "get_session",
        "Get a session with its attached clients and telemetry",
        Data[SessionDetail], errors=(*_COMMON, 404),
    ),
    Operation(
        "DELETE", "/v1/sessions/{session_id}", "terminate_session",
        "Terminate a live session (it ends DISCONNECTED, reason terminated, and stays "
        "readable until retention)",
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
            Integer(name="limit", description="Max commands", low=1, high=MAX_HISTORY,
                    default=DEFAULT_HISTORY, example=50),
            Text(name="before", description="Only commands older than this command_id "
                                            "(cursor; 404 command_not_found if the session "
                                            "has no such command)", example="cmd_222"),
        ),
        errors=(*_COMMON, 404),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}/metrics", "get_session_metrics",
        "The latest telemetry of a CONNECTED session",
        Data[Metrics], errors=(*_COMMON, 404, 409),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}/output", "get_session_output",
        "The session's output from a byte offset (410 output_gone if no longer retained)",
        Data[OutputPage],
        query=(
            Integer(name="offset", description="Byte offset to read from (default: the oldest "
                                               "retained byte; past the end: nothing yet)",
                    low=0, high=MAX_OUTPUT_OFFSET, example=0),
            Integer(name="limit", description="Max bytes (cut on a character boundary)",
                    low=1, high=MAX_OUTPUT_READ, default=DEFAULT_OUTPUT_READ, example=65536),
        ),
        errors=(*_COMMON, 404, 410),
        links=(Link("get_session_output_to_get_session_output", "get_session_output",
                    (("session_id", "$request.path.session_id"),
                     ("offset", "$response.body#/data/next_offset"))),),
    ),
    Operation(
        "POST", "/v1/sessions/{session_id}/clients", "attach_client",
        "Attach an operator or observer to a CONNECTED session",
        Data[AttachedClient], status=201, body=AttachClientBody,
        errors=(*_COMMON, 404, 409, 413),
        links=(
            Link("attach_client_to_detach_client", "detach_client",
                 (("session_id", "$request.path.session_id"),
                  ("client_id", "$response.body#/data/client_id"))),
            Link("attach_client_to_run_command", "run_command",
                 (("session_id", "$request.path.session_id"),),
                 (("client_id", "$response.body#/data/client_id"),)),
        ),
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
        links=(Link("run_command_to_get_command", "get_command",
                    (("session_id", "$request.path.session_id"),
                     ("command_id", "$response.body#/data/command_id"))),),
    ),
    Operation(
        "GET", "/v1/sessions/{session_id}/commands/{command_id}", "get_command",
        "An operator command and how it ended", Data[CommandView], errors=(*_COMMON, 404),
    ),
    # -- webhooks (tether.http._webhooks) ---------------------------------------------------
    Operation(
        "GET", "/v1/webhooks", "list_webhooks", "List the workspace's webhook endpoints",
        Data[list[WebhookView]], errors=_COMMON, tag="webhooks",
    ),
    Operation(
        "POST", "/v1/webhooks", "create_webhook",
        "Add an endpoint (a secret not given is generated and returned once)",
        Data[WebhookView], status=201, body=CreateWebhookBody, max_body=WEBHOOK_BODY_BYTES,
        errors=(*_COMMON, 409, 413), tag="webhooks",
        links=_links("create_webhook", _HOOK, "get_webhook", "update_webhook",
                     "delete_webhook", "test_webhook", "list_deliveries"),
    ),
    Operation(
        "GET", "/v1/webhooks/{webhook_id}", "get_webhook", "Get an endpoint",
        Data[WebhookView], errors=_WEBHOOK, tag="webhooks",
    ),
    Operation(
        "PATCH", "/v1/webhooks/{webhook_id}", "update_webhook",
        "Change an endpoint's url, events, secret (null: generate) or enabled",
        Data[WebhookView], body=UpdateWebhookBody, max_body=WEBHOOK_BODY_BYTES,
        errors=(*_WEBHOOK, 413), tag="webhooks",
    ),
    Operation(
        "DELETE", "/v1/webhooks/{webhook_id}", "delete_webhook", "Remove an endpoint",
        None, status=204, max_body=WEBHOOK_BODY_BYTES, errors=(*_WEBHOOK, 413), tag="webhooks",
    ),
    Operation(
        "POST", "/v1/webhooks/{webhook_id}/test", "test_webhook",
        "Send a signed webhook.test event and report the outcome",
        Data[TestResult], max_body=WEBHOOK_BODY_BYTES, errors=(*_WEBHOOK, 409, 413),
        tag="webhooks",
    ),
    Operation(
        "GET", "/v1/webhooks/{webhook_id}/deliveries", "list_deliveries",
        "The endpoint's deliveries, newest first",
        DeliveryPage,
        query=(
            Integer(name="limit", description="Max deliveries", low=1, high=MAX_DELIVERIES,
                    default=DEFAULT_DELIVERIES, example=20),
            Text(name="before", description="Only deliveries older than this delivery id "
                                            "(cursor; ids sort by age)",
                 example="dlv_7bf004000000000001"),
        ),
        errors=_WEBHOOK, tag="webhooks",
        links=(Link("list_deliveries_to_retry_delivery", "retry_delivery",
                    (("webhook_id", "$request.path.webhook_id"),
                     ("delivery_id", "$response.body#/data/0/id"))),),
    ),
    Operation(
        "POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", "retry_delivery",
        "Deliver a failed delivery's event again",
        Data[DeliveryView], status=202, max_body=WEBHOOK_BODY_BYTES,
        errors=(*_WEBHOOK, 409, 413), tag="webhooks",
    ),
    # -- the event feed (tether.http._events) -----------------------------------------------
    Operation(
        "GET", "/v1/events", "list_events",
        "The workspace's retained events in order, after an event id",
        EventsPage,
        query=(
            Text(name="after", description="Only events after this event id (empty: from the "
                                           "oldest retained; 410 if no longer retained)",
                 pattern=EVENT_CURSOR, mismatch="not an event id"),
            Integer(name="limit", description="Max events", low=1, high=MAX_EVENTS,
                    default=DEFAULT_EVENTS, example=100),
        ),
        errors=(*_COMMON, 410), tag="events",
    ),
    Operation(
        "GET", "/v1/events/stream", "stream_events",
        "Live events as Server-Sent Events; resumes after Last-Event-ID (or ?after=)",
        str, content_type="text/event-stream",
        query=(
            Text(name="after", description="Resume after this event id",
                 pattern=EVENT_CURSOR, mismatch="not an event id"),
            Text(name="Last-Event-ID", location="header",
                 description="Resume after this event id (wins over ?after=)",
                 pattern=EVENT_CURSOR, mismatch="not an event id"),
        ),
        errors=(*_COMMON, 410), tag="events",
    ),
    Operation(
        "GET", "/openapi.json", "openapi", "This document (OpenAPI 3.1)", dict[str, Any],
        auth=False, tag="service", errors=(400, 405, 500),
    ),
    Operation(
        "GET", "/healthz", "healthz", "Liveness", Health, auth=False, tag="service",
        errors=(400, 405, 500),
    ),
)
