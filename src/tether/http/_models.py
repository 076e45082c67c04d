"""The REST API's own wire shapes: request bodies and response envelopes.

Views of sessions come from the engine (their field names are the contract's); this module adds
what only HTTP needs: ``{"data": ...}`` envelopes, the error envelope, and the bodies of writes.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import msgspec

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


class Health(msgspec.Struct, kw_only=True, frozen=True):
    status: Literal["ok"]
    live_sessions: int


# -- request bodies ------------------------------------------------------------------------------


class CreateSessionBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions``: a PENDING session waiting for the machine's agent."""

    machine_id: str
    machine_hostname: str


class AttachClientBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions/{session_id}/clients``: attach an operator or an observer."""

    user_email: str
    mode: Literal["operator", "observer"]


class RunCommandBody(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/sessions/{session_id}/commands``: an attached operator's command."""

    client_id: str
    command: str


class EventsMeta(msgspec.Struct, kw_only=True, frozen=True):
    limit: int
    has_more: bool
    #: Where to continue from: the last event returned (or the ``after`` given, if none).
    next_after: str | None


class EventsPage(msgspec.Struct, kw_only=True, frozen=True):
    """``GET /v1/events``: events as webhooks send them, in log order."""

    data: list[Payload]
    meta: EventsMeta
