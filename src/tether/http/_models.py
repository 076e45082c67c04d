"""The REST API's own wire shapes: request bodies and response envelopes.

Views of sessions and webhooks come from the engine and the webhooks service (their field names
are the contract's); this module adds what only HTTP needs: ``{"data": ...}`` envelopes, the
error envelope, and the bodies of writes. A body type is its validation: the decoder
(:func:`tether.http._params.decode_body`) enforces exactly what its JSON Schema in
``/openapi.json`` says (types, lengths, patterns, enums, required and unknown fields).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from tether.engine import EVENT_TYPES, MAX_COMMAND, MAX_EMAIL, MAX_TEXT
from tether.webhooks import Payload

T = TypeVar("T")


class Data(msgspec.Struct, Generic[T], kw_only=True, frozen=True):
    """A successful answer: ``{"data": ...}``."""

    data: T


class ErrorBody(msgspec.Struct, kw_only=True, frozen=True):
    code: str
    message: str
    details: dict[str, Any]


class ErrorEnvelope(msgspec.Struct, kw_only=True, frozen=True):
    """Every error: ``{"error": {"code", "message", "details"}}``."""

    error: ErrorBody


class Health(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    #: ``degraded``: Redis mode, and Redis does not answer (reads are served, writes are
    #: refused with 503 ``unavailable``); ``reason`` says why.
    status: Literal["ok", "degraded"]
    live_sessions: int
    reason: str | None = None
    #: The node that answered (``--node-id``), and its role: ``standalone`` (state in memory),
    #: ``member`` of the nodes sharing one Redis, or ``draining`` (shutting down).
    node_id: str | None = None
    role: Literal["standalone", "member", "draining"] = "standalone"
    #: Redis mode: the nodes alive on the same Redis and prefix (this one included).
    nodes: list[str] | None = None


# -- patterns of request text --------------------------------------------------------------------

#: Text a write stores and echoes (ids, hostnames, emails, commands): printable ASCII, so no
#: control character (CR/LF, NUL, ESC) ever reaches a log line, a header or a terminal. The
#: lengths are the engine's (agents' reported text is held to them too), the characters a
#: stricter subset of its rule (which also admits printable non-ASCII).
PRINTABLE = "^[ -~]+$"

_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = f"(?:{_H16}:{_H16}|{_OCTET}(?:\\.{_OCTET}){{3}})"
#: RFC 3986's IPv6address (no zone identifier, no IPvFuture).
_IPV6 = "|".join([
    f"(?:{_H16}:){{6}}{_LS32}",
    f"::(?:{_H16}:){{5}}{_LS32}",
    f"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
    f"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
    f"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
    f"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    f"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
    f"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
    f"(?:(?:{_H16}:){{0,6}}{_H16})?::",
])
_PORT = "0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
#: A webhook URL: http(s), printable ASCII, an optional user, a host (a name or a bracketed
#: IPv6 address), an optional port up to 65535, then anything printable. Every URL it matches
#: passes the webhooks service's own check (``tests/webhooks/test_urls.py`` holds it to that);
#: whether its host may be sent to (public addresses only, unless the server allows private
#: ones) is decided by the service when the endpoint is saved.
WEBHOOK_URL = (
    "^[Hh][Tt][Tt][Pp][Ss]?://"
    "(?:[A-Za-z0-9._~!$&'()*+,;=:%-]*@)?"
    f"(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\\[(?:{_IPV6})\\])"
    f"(?::{_PORT})?"
    "(?:[/?#][!-~]*)?$"
)
MAX_WEBHOOK_URL = 2048
_B64 = "[A-Za-z0-9+/]"
#: A Standard Webhooks secret: ``whsec_`` + base64 (padded) of 24 to 64 bytes, exactly the
#: secrets the webhooks service accepts.
WEBHOOK_SECRET = (
    f"^whsec_(?:(?:{_B64}{{4}}){{8}}"
    f"|(?:{_B64}{{4}}){{8,20}}(?:{_B64}{{4}}|{_B64}{{3}}=|{_B64}{{2}}==)"
    f"|(?:{_B64}{{4}}){{21}}{_B64}{{2}}==)$"
)
#: Why a value that does not match a pattern was refused, in words (the decoder's message).
PATTERN_REASONS: dict[str, str] = {
    PRINTABLE: "must be printable ASCII characters (no control characters)",
    WEBHOOK_URL: "must be an http or https URL of printable ASCII characters with a host "
                 "(and a port up to 65535, if any)",
    WEBHOOK_SECRET: "must be 'whsec_' followed by the base64 of 24 to 64 bytes",
}

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT, pattern=PRINTABLE)]
Email = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EMAIL, pattern=PRINTABLE)]
CommandText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_COMMAND,
                                          pattern=PRINTABLE)]
WebhookUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_WEBHOOK_URL,
                                         pattern=WEBHOOK_URL)]
WebhookSecret = Annotated[str, msgspec.Meta(pattern=WEBHOOK_SECRET)]
#: The most event types an endpoint lists (the webhooks service's limit).
MAX_WEBHOOK_EVENTS = 32
#: What an endpoint may subscribe to: ``*`` (everything) or event types. The decoder takes
#: any strings; the webhooks service refuses unknown ones (``invalid_parameter``, ``events``),
#: exactly the enum documented here.
WEBHOOK_EVENTS: tuple[str, ...] = ("*", *EVENT_TYPES)
EventType = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(WEBHOOK_EVENTS)})]
EventTypes = Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=MAX_WEBHOOK_EVENTS)]


# -- request bodies ------------------------------------------------------------------------------


class CreateSessionBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions``: a PENDING session waiting for the machine's agent."""

    machine_id: Annotated[Text, msgspec.Meta(examples=["mach_xyz789"])]
    machine_hostname: Annotated[Text, msgspec.Meta(examples=["prod-server"])]


class AttachClientBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions/{session_id}/clients``: attach an operator or an observer."""

    user_email: Annotated[Email, msgspec.Meta(examples=["[email protected]"])]
    mode: Annotated[Literal["operator", "observer"], msgspec.Meta(examples=["operator"])]


class RunCommandBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions/{session_id}/commands``: an attached operator's command."""

    client_id: Annotated[Text, msgspec.Meta(examples=["cli_111"])]
    command: Annotated[CommandText, msgspec.Meta(examples=["ls -la"])]


class CreateWebhookBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/webhooks``: an endpoint (a secret not given is generated)."""

    url: Annotated[WebhookUrl, msgspec.Meta(examples=["https://hooks.example.com/tether"])]
    events: Annotated[EventTypes, msgspec.Meta(examples=[["session.created",
                                                          "session.disconnected"]])]
    secret: WebhookSecret | None = None
    enabled: bool = True


class UpdateWebhookBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``PATCH /v1/webhooks/{webhook_id}``: what to change; ``secret: null`` generates a new
    secret (returned in the response, once)."""

    url: WebhookUrl | msgspec.UnsetType = msgspec.UNSET
    events: EventTypes | msgspec.UnsetType = msgspec.UNSET
    secret: WebhookSecret | msgspec.UnsetType | None = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


# -- the event feed ------------------------------------------------------------------------------


class EventsMeta(msgspec.Struct, kw_only=True, frozen=True):
    limit: int
    has_more: bool
    #: Where to continue from: the last event returned (or the ``after`` given, if none).
    next_after: str | None


class EventsPage(msgspec.Struct, kw_only=True, frozen=True):
    """``GET /v1/events``: events as webhooks send them, in log order."""

    data: list[Payload]
    meta: EventsMeta
