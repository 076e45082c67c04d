"""Delivery: per-endpoint lanes, workers, retries with backoff, and the deliveries log.

Each enabled endpoint runs its own small set of workers (``endpoint_concurrency``) and one
retry timer inside a cancel scope, so a slow or dead endpoint only ever occupies its own
workers; a global :class:`trio.CapacityLimiter` bounds the requests in flight across all
endpoints. Nothing here waits on the engine: events arrive by :meth:`Dispatcher.enqueue`,
which never blocks. Every delay comes from trio's clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
import ssl
from collections import deque
from typing import TYPE_CHECKING

import msgspec
import trio

from ._client import ClientFactory, DeliveryClient, HTTPError, PostClient, Timeout
from ._models import Delivery, DeliveryState, Endpoint, Payload, payload_of
from ._signing import signature_headers
from ._urls import AddressGuard

if TYPE_CHECKING:
    from tether.engine import Event, WallClock

    from ._config import WebhookConfig
    from ._persist import WebhookJournal

log = logging.getLogger("tether.webhooks")

_encoder = msgspec.json.Encoder()


class Dispatcher:
    """Sends deliveries for endpoints; owns the HTTP client and every delivery task."""

    def __init__(self, config: WebhookConfig, clock: WallClock,
                 client_factory: ClientFactory | None = None) -> None:
        self.config = config
        self.clock = clock
        self._client_factory = client_factory
        self._guard = AddressGuard(config.allow_private, config.resolve_ttl)
        self._limiter = trio.CapacityLimiter(config.concurrency)
        self._client: PostClient | None = None  # for tests of stopped endpoints
        self._tls = ssl.create_default_context()  # shared: one per client costs ~ms each
        self._workers: trio.Nursery | None = None
        # Delivery ids sort by creation, also across restarts (Redis mode keeps the log):
        # this run's start in milliseconds, a random tag, then a counter.
        start_ms = int(clock.wall(trio.current_time()) * 1000)
        self._id_prefix = f"dlv_{start_ms:011x}{secrets.token_hex(2)}"
        self.journal: WebhookJournal | None = None  # with a store: changes are marked in it
        self._ids = itertools.count(1)
        self._tiebreak = itertools.count()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the HTTP client and the endpoints' delivery tasks live here."""
        async with self._new_client(16) as client, trio.open_nursery() as nursery:
            self._client = client
            self._workers = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._workers = None
                self._client = None

    # -- endpoints ---------------------------------------------------------------------------

    def start(self, ep: Endpoint) -> None:
        """Start delivering to ``ep`` (its workers and retry timer)."""
        if self._workers is None:
            raise RuntimeError("the dispatcher is not running")
        self.stop(ep)
        scope = trio.CancelScope()
        ep.scope = scope
        self._workers.start_soon(self._run_endpoint, ep, scope)

    def stop(self, ep: Endpoint) -> None:
        """Stop ``ep``'s tasks (an attempt in flight is abandoned)."""
        if ep.scope is not None:
            ep.scope.cancel()
            ep.scope = None

    def _changed(self, ep: Endpoint, d: Delivery) -> None:
        if self.journal is not None:
            self.journal.delivery(ep, d)

    def disable(self, ep: Endpoint, reason: str | None) -> None:
        """Stop ``ep`` and fail what it still holds: each stays in the log, redeliverable."""
        self.stop(ep)
        ep.enabled = False
        ep.disabled_reason = reason
        ep.updated_at = trio.current_time()
        if self.journal is not None:
            self.journal.endpoint(ep)
        lanes = list(ep.lanes.values())
        ep.lanes.clear()
        ep.ready.clear()
        ep.due.clear()
        ep.pending = 0
        for lane in lanes:
            for d in lane:
                d.last_error = "endpoint disabled before delivery" + (
                    f" (last error: {d.last_error})" if d.last_error else "")
                self._finish(ep, d, "failed")

    def _new_client(self, connections: int) -> PostClient:
        if self._client_factory is not None:
            return self._client_factory(connections)
        return DeliveryClient(
            timeout=self.config.timeout, max_connections=connections,
            max_response_bytes=self.config.max_response_bytes, tls=self._tls,
        )

    async def _run_endpoint(self, ep: Endpoint, scope: trio.CancelScope) -> None:
        # Its own keep-alive connections, at most one per worker: a dead endpoint's failing
        # connections never touch a healthy endpoint's.
        with scope:
            async with self._new_client(self.config.endpoint_concurrency) as client, \
                    trio.open_nursery() as nursery:
                ep.client = client
                try:
                    nursery.start_soon(self._timer, ep, scope)
                    for _ in range(self.config.endpoint_concurrency):
                        nursery.start_soon(self._worker, ep, scope)
                    await trio.sleep_forever()
                finally:
                    if ep.client is client:
                        ep.client = None

    # -- queueing ----------------------------------------------------------------------------

    def new_delivery(self, event: Event | Payload, lane: str) -> Delivery:
        delivery_id = f"{self._id_prefix}{next(self._ids):012x}"
        return Delivery(delivery_id, event, lane, trio.current_time())

    def enqueue(self, ep: Endpoint, event: Event | Payload, lane: str) -> Delivery:
        """Queue ``event`` for ``ep`` behind the lane's earlier events; never blocks.

        Beyond ``queue_max`` undelivered events the delivery is recorded as failed at once
        (``queue_full``), so it can be redelivered later; it is never dropped silently.
        """
        d = self.new_delivery(event, lane)
        ep.log[d.id] = d
        if ep.pending >= self.config.queue_max:
            d.last_error = f"queue_full: {ep.pending} undelivered events already queued"
            ep.counts["overflowed"] += 1
            self._finish(ep, d, "failed")
        else:
            self.push(ep, d)
            self._changed(ep, d)
        return d

    def requeue(self, ep: Endpoint, d: Delivery) -> None:
        """Put a finished delivery back in its lane with a fresh retry budget."""
        d.generation += 1
        ep.finished_count -= 1
        d.state = "pending"
        d.round_attempts = 0
        d.next_attempt_at = trio.current_time()
        self.push(ep, d)
        self._changed(ep, d)

    @staticmethod
    def push(ep: Endpoint, d: Delivery) -> None:
        """Queue ``d`` at the end of its lane."""
        lane = ep.lanes.get(d.lane)
        if lane is None:
            ep.lanes[d.lane] = deque((d,))
            ep.ready.append(d.lane)
            ep.work.unpark()
        else:
            lane.append(d)
        ep.pending += 1

    def _finish(self, ep: Endpoint, d: Delivery, state: DeliveryState) -> None:
        d.state = state
        d.next_attempt_at = None
        ep.counts[state] += 1
        self._changed(ep, d)
        ep.finished.append((d.id, d.generation))
        ep.finished_count += 1
        log_max = self.config.log_max
        while ep.finished_count > log_max and ep.finished:
            old_id, generation = ep.finished.popleft()
            old = ep.log.get(old_id)
            if old is not None and old.generation == generation and old.state != "pending":
                del ep.log[old_id]
                ep.finished_count -= 1
                ep.counts["evicted"] += 1
                if self.journal is not None:
                    self.journal.evicted(ep, old_id)
        if len(ep.finished) > 2 * log_max + 1024:  # stale entries left by redeliveries
            ep.finished = deque(
                (i, g) for i, g in ep.finished
                if (x := ep.log.get(i)) is not None and x.generation == g and x.state != "pending"
            )

    # -- delivering --------------------------------------------------------------------------

    async def _worker(self, ep: Endpoint, scope: trio.CancelScope) -> None:
        retries = self.config.retries
        while True:
            while not ep.ready:
                await ep.work.park()
            lane_id = ep.ready.popleft()
            lane = ep.lanes[lane_id]
            d = lane[0]
            generation = d.generation
            async with self._limiter:
                status, error = await self.attempt(ep, d)
            if ep.scope is not scope or scope.cancel_called or d.generation != generation:
                return  # stopped or disabled meanwhile: its deliveries were settled there
            self._record(d, status, error)
            if error is None:
                if ep.consecutive_failures:
                    ep.consecutive_failures = 0
                    if self.journal is not None:
                        self.journal.endpoint(ep)
            elif d.round_attempts <= retries:
                due = trio.current_time() + self.config.backoff(d.round_attempts)
                d.next_attempt_at = due
                self._changed(ep, d)
                heapq.heappush(ep.due, (due, next(self._tiebreak), lane_id))
                ep.timer.unpark()
                continue
            lane.popleft()
            ep.pending -= 1
            self._finish(ep, d, "succeeded" if error is None else "failed")
            if error is not None:
                ep.consecutive_failures += 1
                if self.journal is not None:
                    self.journal.endpoint(ep)
                limit = self.config.max_consecutive_failures
                if limit and ep.consecutive_failures >= limit:
                    log.warning("webhook %s disabled after %d failed events: %s",
                                ep.id, ep.consecutive_failures, error)
                    self.disable(ep, f"{ep.consecutive_failures} consecutive failed events; "
                                     f"last error: {error}")
                    return
            if lane:
                ep.ready.append(lane_id)
            else:
                del ep.lanes[lane_id]

    async def _timer(self, ep: Endpoint, scope: trio.CancelScope) -> None:
        while True:
            if not ep.due:
                await ep.timer.park()
                continue
            now = trio.current_time()
            if now < ep.due[0][0]:
                with trio.move_on_at(ep.due[0][0]):
                    await ep.timer.park()  # an earlier retry may be scheduled meanwhile
                continue
            # Due retries go to the FRONT of the ready lanes, earliest first: behind every lane
            # waiting for its first attempt, a retry would wait far past its backoff (and an
            # endpoint that hangs would take hours to exhaust any event's retries and be
            # disabled: with thousands of lanes, each first attempt costs a whole timeout).
            due: list[str] = []
            while ep.due and ep.due[0][0] <= now:
                due.append(heapq.heappop(ep.due)[2])
            ep.ready.extendleft(reversed(due))
            ep.work.unpark(count=len(due))

    async def send_once(self, ep: Endpoint, d: Delivery) -> None:
        """One attempt, recorded in ``d`` and finished (tests: no retries, no failure count)."""
        ep.log[d.id] = d
        async with self._limiter:
            status, error = await self.attempt(ep, d)
        self._record(d, status, error)
        self._finish(ep, d, "succeeded" if error is None else "failed")

    def _record(self, d: Delivery, status: int | None, error: str | None) -> None:
        d.last_status = status
        d.last_error = error

    async def attempt(self, ep: Endpoint, d: Delivery) -> tuple[int | None, str | None]:
        """POST ``d``'s event to ``ep`` once: ``(status code, error)``; no error means 2xx."""
        client = ep.client or self._client
        if client is None:
            raise RuntimeError("the dispatcher is not running")
        now = trio.current_time()
        d.attempts += 1
        d.round_attempts += 1
        d.last_attempt_at = now
        d.next_attempt_at = None
        url = ep.url
        refusal, addresses = await self._guard.check(url)
        if refusal is not None:
            return None, f"refused: {refusal}"
        event = d.event
        body = _encoder.encode(payload_of(event))
        headers = signature_headers(ep.secret, ep.key, event.id, int(self.clock.wall(now)), body)
        headers["Content-Type"] = "application/json"
        headers["X-Cmdop-Event"] = event.type
        headers["X-Cmdop-Delivery"] = d.id
        try:  # the client bounds the whole attempt by config.timeout; redirects are not followed
            status = await client.post(url, body, headers, addresses)
        except Timeout as exc:
            return None, str(exc)
        except HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]
        return status, None if 200 <= status < 300 else f"HTTP {status}"
