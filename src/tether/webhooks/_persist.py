"""What a webhook store keeps (Redis mode), as values, and the journal that writes it.

Endpoints (with their secrets: the store must be able to sign after a restart), every logged
delivery with its attempts, and the *cursor*: the last event the dispatcher has turned into
deliveries. They are written in one batch, so after a restart the dispatcher resumes at the
cursor and no event is skipped or turned into deliveries twice; a delivery in flight or
waiting for a retry at a crash is pending in the store and is attempted again (at least once;
receivers de-duplicate by the event id, which stays the same). A delivery recorded as
succeeded is never sent again unless redelivered by hand.

The service marks what it changes; :class:`WebhookJournal` takes snapshots when it writes
(group commit, ``tether.engine.GroupCommit``). API writes (create, update, delete, redeliver)
wait for the commit; delivery progress does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from tether.engine import GroupCommit

from ._models import Delivery, DeliveryState, Endpoint, Payload, payload_of

if TYPE_CHECKING:
    from tether.engine import WallClock


class EndpointSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    workspace_id: str
    url: str
    events: list[str]
    secret: str
    enabled: bool
    disabled_reason: str | None
    created_at: float  # Unix seconds, as every time here
    updated_at: float
    consecutive_failures: int
    counts: dict[str, int]


class StoredPayload(msgspec.Struct, kw_only=True, frozen=True):
    """A delivery's event as its JSON body shows it (``data`` as decoded from the store)."""

    id: str
    type: str
    timestamp: str
    workspace_id: str
    data: Any


class DeliverySnapshot(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    webhook_id: str
    workspace_id: str
    event: StoredPayload
    lane: str
    state: DeliveryState
    attempts: int
    round_attempts: int
    last_status: int | None
    last_error: str | None
    created_at: float
    last_attempt_at: float | None
    next_attempt_at: float | None
    generation: int


class WebhookBatch(msgspec.Struct, kw_only=True):
    endpoints: list[EndpointSnapshot] = []
    deleted: list[tuple[str, str]] = []  # (workspace_id, webhook_id)
    deliveries: list[DeliverySnapshot] = []
    evicted: list[tuple[str, str, str]] = []  # (workspace_id, webhook_id, delivery_id)
    cursor: str | None = None  # the last event turned into deliveries


class LoadedWebhooks(msgspec.Struct, frozen=True):
    endpoints: list[EndpointSnapshot]
    deliveries: list[DeliverySnapshot]
    cursor: str | None


class WebhookStore(Protocol):
    """Durable webhooks (``Webhooks(engine, config, store=...)``), shared by the nodes of a
    cluster: one node at a time holds the *desk* and delivers (``tether.store._webhooks``)."""

    node_id: str  # this node
    adopt_interval: float  # seconds between looks at who holds the desk

    async def desk(self) -> str:
        """The node that holds the desk, after this node took it if nobody alive held it.
        The desk goes with its holder's node lease: a node that exits cleanly gives it up."""
        ...

    async def load_webhooks(self) -> LoadedWebhooks: ...

    async def write_webhooks(self, batch: WebhookBatch) -> None:
        """Write ``batch`` whole; refused (an exception) once another node took the desk."""
        ...


def _maybe(clock: WallClock, t: float | None) -> float | None:
    return None if t is None else clock.wall(t)


def _back(clock: WallClock, t: float | None) -> float | None:
    return None if t is None else clock.trio_time(t)


def endpoint_snapshot(ep: Endpoint, clock: WallClock) -> EndpointSnapshot:
    return EndpointSnapshot(
        id=ep.id, workspace_id=ep.workspace_id, url=ep.url, events=sorted(ep.events),
        secret=ep.secret, enabled=ep.enabled, disabled_reason=ep.disabled_reason,
        created_at=clock.wall(ep.created_at), updated_at=clock.wall(ep.updated_at),
        consecutive_failures=ep.consecutive_failures, counts=dict(ep.counts),
    )


def delivery_snapshot(ep: Endpoint, d: Delivery, clock: WallClock) -> DeliverySnapshot:
    p = payload_of(d.event)
    return DeliverySnapshot(
        id=d.id, webhook_id=ep.id, workspace_id=ep.workspace_id,
        event=StoredPayload(id=p.id, type=p.type, timestamp=p.timestamp,
                            workspace_id=p.workspace_id, data=p.data),
        lane=d.lane, state=d.state, attempts=d.attempts, round_attempts=d.round_attempts,
        last_status=d.last_status, last_error=d.last_error,
        created_at=clock.wall(d.created_at), last_attempt_at=_maybe(clock, d.last_attempt_at),
        next_attempt_at=_maybe(clock, d.next_attempt_at), generation=d.generation,
    )


def restore_delivery(snap: DeliverySnapshot, clock: WallClock) -> Delivery:
    e = snap.event
    event = Payload(id=e.id, type=e.type, timestamp=e.timestamp, workspace_id=e.workspace_id,
                    data=e.data)
    d = Delivery(snap.id, event, snap.lane, clock.trio_time(snap.created_at))
    d.state = snap.state
    d.attempts = snap.attempts
    d.round_attempts = snap.round_attempts
    d.last_status = snap.last_status
    d.last_error = snap.last_error
    d.last_attempt_at = _back(clock, snap.last_attempt_at)
    d.next_attempt_at = _back(clock, snap.next_attempt_at)
    d.generation = snap.generation
    return d


class WebhookJournal:
    """What changed in the webhooks since the last write; ``writer`` writes it."""

    def __init__(self, store: WebhookStore, clock: WallClock) -> None:
        self.store = store
        self.clock = clock
        self._endpoints: dict[str, Endpoint] = {}
        self._deleted: list[tuple[str, str]] = []
        self._deliveries: dict[str, tuple[Endpoint, Delivery]] = {}
        self._evicted: list[tuple[str, str, str]] = []
        self._cursor: str | None = None
        self.writer: GroupCommit[WebhookBatch] = GroupCommit(
            self._take, store.write_webhooks, what="webhook store")

    def endpoint(self, ep: Endpoint) -> None:
        self._endpoints[ep.id] = ep
        self.writer.mark()

    def deleted(self, ep: Endpoint) -> None:
        self._endpoints.pop(ep.id, None)
        self._deliveries = {k: v for k, v in self._deliveries.items() if v[0] is not ep}
        self._deleted.append((ep.workspace_id, ep.id))
        self.writer.mark()

    def delivery(self, ep: Endpoint, d: Delivery) -> None:
        self._deliveries[d.id] = (ep, d)
        self.writer.mark()

    def evicted(self, ep: Endpoint, delivery_id: str) -> None:
        self._deliveries.pop(delivery_id, None)
        self._evicted.append((ep.workspace_id, ep.id, delivery_id))
        self.writer.mark()

    def consumed(self, event_id: str) -> None:
        self._cursor = event_id
        self.writer.mark()

    def _take(self) -> WebhookBatch:
        clock = self.clock
        endpoints, self._endpoints = self._endpoints, {}
        deliveries, self._deliveries = self._deliveries, {}
        deleted, self._deleted = self._deleted, []
        evicted, self._evicted = self._evicted, []
        cursor, self._cursor = self._cursor, None
        return WebhookBatch(
            endpoints=[endpoint_snapshot(ep, clock) for ep in endpoints.values()],
            deleted=deleted,
            deliveries=[delivery_snapshot(ep, d, clock) for ep, d in deliveries.values()],
            evicted=evicted,
            cursor=cursor,
        )
