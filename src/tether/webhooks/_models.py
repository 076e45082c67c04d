"""Webhook endpoints and deliveries: the records the service keeps, and the views it shows."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import trio
from sortedcontainers import SortedDict

from tether.engine import EVENT_TYPES, Event

if TYPE_CHECKING:
    from tether.engine import WallClock

    from ._client import PostClient

#: What ``events`` may name: the engine's event types, or ``*`` for all of them.
WEBHOOK_EVENT_TYPES: frozenset[str] = frozenset(EVENT_TYPES)
TEST_EVENT_TYPE = "webhook.test"

DeliveryState = Literal["pending", "succeeded", "failed"]


class Payload(msgspec.Struct, kw_only=True, frozen=True):
    """The JSON body of every webhook request, and of every event in the feed."""

    id: str
    type: str
    timestamp: str
    workspace_id: str
    data: Any


class TestData(msgspec.Struct, kw_only=True, frozen=True):
    webhook_id: str
    message: str


def payload_of(event: Event | Payload) -> Payload:
    if isinstance(event, Payload):
        return event
    return Payload(id=event.id, type=event.type, timestamp=event.timestamp,
                   workspace_id=event.workspace_id, data=event.data)


class Delivery:
    """One event on its way to one endpoint, with the outcome of its attempts."""

    __slots__ = (
        "attempts",
        "created_at",
        "event",
        "generation",
        "id",
        "lane",
        "last_attempt_at",
        "last_error",
        "last_status",
        "next_attempt_at",
        "round_attempts",
        "state",
    )

    def __init__(self, delivery_id: str, event: Event | Payload, lane: str, now: float) -> None:
        self.id = delivery_id
        self.event = event
        self.lane = lane  # the session id whose order it keeps ("" for test events)
        self.state: DeliveryState = "pending"
        self.attempts = 0
        self.round_attempts = 0  # attempts since it was (re)queued
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.created_at = now
        self.last_attempt_at: float | None = None
        self.next_attempt_at: float | None = now
        self.generation = 0

    def view(self, clock: WallClock) -> DeliveryView:
        return DeliveryView(
            id=self.id, event_id=self.event.id, event_type=self.event.type,
            session_id=self.lane or None, state=self.state, attempts=self.attempts,
            last_status_code=self.last_status, last_error=self.last_error,
            created_at=clock.rfc3339(self.created_at),
            last_attempt_at=clock.maybe(self.last_attempt_at),
            next_attempt_at=clock.maybe(self.next_attempt_at),
        )


class Endpoint:
    """A workspace's webhook endpoint, and the state of its deliveries.

    Deliveries wait in *lanes*, one per session, so one session's events go out in sequence
    order while other sessions' proceed. A lane is at any moment ready (its session id is in
    ``ready``), being attempted by a worker, waiting for a retry (in ``due``), or gone (empty).
    """

    def __init__(self, webhook_id: str, workspace_id: str, url: str, events: frozenset[str],
                 secret: str, key: bytes, enabled: bool, now: float) -> None:
        self.id = webhook_id
        self.workspace_id = workspace_id
        self.url = url
        self.events = events
        self.secret = secret
        self.key = key
        self.enabled = enabled
        self.disabled_reason: str | None = None
        self.created_at = now
        self.updated_at = now
        self.consecutive_failures = 0
        self.lanes: dict[str, deque[Delivery]] = {}
        self.ready: deque[str] = deque()
        self.due: list[tuple[float, int, str]] = []  # heap of (time, tie-break, lane)
        self.pending = 0  # deliveries in lanes
        self.work = trio.lowlevel.ParkingLot()  # workers wait here for a ready lane
        self.timer = trio.lowlevel.ParkingLot()  # the retry timer waits here for an earlier due
        self.scope: trio.CancelScope | None = None
        self.client: PostClient | None = None  # the running endpoint's connection pool
        self.log: SortedDict = SortedDict()  # delivery id -> Delivery; ids sort by creation
        self.finished: deque[tuple[str, int]] = deque()  # (delivery id, generation), finish order
        self.finished_count = 0
        self.counts = {"succeeded": 0, "failed": 0, "overflowed": 0, "evicted": 0}

    def wants(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events

    def view(self, clock: WallClock, secret: str | None = None) -> WebhookView:
        return WebhookView(
            id=self.id, url=self.url, events=sorted(self.events), enabled=self.enabled,
            disabled_reason=self.disabled_reason, created_at=clock.rfc3339(self.created_at),
            updated_at=clock.rfc3339(self.updated_at),
            consecutive_failures=self.consecutive_failures, pending_deliveries=self.pending,
            secret=secret,
        )


class WebhookView(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """An endpoint as the API shows it; ``secret`` only when it was just set or generated."""

    id: str
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    created_at: str
    updated_at: str
    consecutive_failures: int
    pending_deliveries: int
    secret: str | None = None


class DeliveryView(msgspec.Struct, kw_only=True, frozen=True):
    """A delivery as the deliveries log shows it."""

    id: str
    event_id: str
    event_type: str
    session_id: str | None
    state: DeliveryState
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    last_attempt_at: str | None
    next_attempt_at: str | None


class DeliveryMeta(msgspec.Struct, kw_only=True, frozen=True):
    limit: int
    has_more: bool
    next_before: str | None


class DeliveryPage(msgspec.Struct, kw_only=True, frozen=True):
    data: list[DeliveryView]
    meta: DeliveryMeta


class TestResult(msgspec.Struct, kw_only=True, frozen=True):
    """The outcome of a ``webhook.test`` send."""

    success: bool
    delivery_id: str
    event_id: str
    status_code: int | None
    error: str | None
    duration_ms: float
