"""The webhooks service: endpoints per workspace, fed by the engine's events.

    async with Engine() as engine, trio.open_nursery() as nursery:
        hooks = Webhooks(engine, WebhookConfig(retry_base=5.0))
        await nursery.start(hooks.run)
        view = await hooks.create("ws_acme", "https://example.com/hook", ["*"])

Every call is scoped to a workspace: another workspace's endpoint is "not found".
"""

from __future__ import annotations

import logging
import secrets
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from tether.engine import EventsGone, EventsMissed, InvalidParameter

from ._config import WebhookConfig
from ._dispatcher import Dispatcher
from ._errors import (
    DeliveryNotFound,
    DeliveryPending,
    TooManyWebhooks,
    WebhookDisabled,
    WebhookNotFound,
    WebhookQueueFull,
    WebhooksUnreachable,
)
from ._models import (
    TEST_EVENT_TYPE,
    WEBHOOK_EVENT_TYPES,
    Delivery,
    DeliveryMeta,
    DeliveryPage,
    DeliveryView,
    Endpoint,
    Payload,
    TestData,
    TestResult,
    WebhookView,
)
from ._persist import LoadedWebhooks, WebhookJournal, WebhookStore, restore_delivery
from ._signing import generate_secret, secret_key
from ._urls import check_url

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable

    from tether.engine import Engine, Event, Subscription

    from ._client import ClientFactory

log = logging.getLogger("tether.webhooks")

DEFAULT_DELIVERIES = 20
MAX_DELIVERIES = 100
MAX_EVENT_TYPES = 32

UNSET = msgspec.UNSET
Unset = msgspec.UnsetType


_Views = list[WebhookView]  # a name, since ``Webhooks.list`` hides the builtin in the class


class _Once:
    """Call ``callback`` the first time only (``task_status.started``, from several places)."""

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback: Callable[[], object] | None = callback

    def __call__(self) -> None:
        if self._callback is not None:
            callback, self._callback = self._callback, None
            callback()


def check_events(events: object) -> frozenset[str]:
    """The event types an endpoint subscribes to; ``*`` is all of them."""
    if not isinstance(events, list | tuple) or not events:
        raise InvalidParameter("events", "must be a non-empty list of event types")
    if len(events) > MAX_EVENT_TYPES:
        raise InvalidParameter("events", f"must list at most {MAX_EVENT_TYPES} event types")
    for name in events:
        if not isinstance(name, str) or (name != "*" and name not in WEBHOOK_EVENT_TYPES):
            raise InvalidParameter("events", f"unknown event type {name!r}")
    return frozenset(events)


class Webhooks:
    """Webhook endpoints of every workspace, and the delivery of the engine's events to them."""

    def __init__(self, engine: Engine, config: WebhookConfig | None = None, *,
                 client_factory: ClientFactory | None = None,
                 store: WebhookStore | None = None) -> None:
        """``client_factory`` replaces the HTTP client every endpoint posts with (see
        :class:`PostClient`): receivers simulated in-process, as the fault simulation does.
        With a ``store`` (Redis mode) endpoints, deliveries and the dispatcher's place in the
        event log outlive the process (see ``_persist.py``)."""
        self.engine = engine
        self._store = store
        self._journal: WebhookJournal | None = None
        self.config = config or WebhookConfig()
        self._client_factory = client_factory
        self._endpoints: dict[str, Endpoint] = {}
        self._by_workspace: dict[str, dict[str, Endpoint]] = {}
        self._dispatcher: Dispatcher | None = None
        #: With a store: the node that holds the desk (delivers and answers the API), if known.
        self._holder: str | None = None
        self._here = self._operations()
        #: Events the dispatcher could not read because it fell behind the engine's log.
        self.events_missed = 0

    # -- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver the engine's events until cancelled. Start it with ``nursery.start``.

        With a store that several nodes share, the node that holds the store's *desk*
        delivers and answers the API; the others forward the API to it, and one of them takes
        the desk over within ``store.adopt_interval`` of its holder's lease lapsing."""
        store = self._store
        if store is None:
            await self._deliver(Dispatcher(self.config, self.engine.clock, self._client_factory),
                                None, task_status.started)
            return
        self._answer_for_others()
        ready = _Once(task_status.started)
        failing = False
        while True:
            try:
                holder = await store.desk()
            except Exception as exc:  # the store is away: carry on as we were
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "webhooks: cannot tell which node delivers them: %r", exc)
                failing = True
            else:
                failing = False
                if holder == store.node_id:
                    await self._lead(store, ready)
                    continue
                if holder != self._holder:
                    log.info("webhooks: node %s delivers them", holder)
                self._holder = holder
                ready()
            await trio.sleep(store.adopt_interval)

    async def _lead(self, store: WebhookStore, ready: _Once) -> None:
        """Deliver, and answer the API, while this node holds the desk."""
        try:
            loaded = await store.load_webhooks()
        except Exception as exc:  # the store is away: the caller tries again
            log.warning("webhooks: loading their state failed: %s", exc)
            return
        log.info("webhooks: this node (%s) delivers them", store.node_id)
        self._journal = journal = WebhookJournal(store, self.engine.clock)
        dispatcher = Dispatcher(self.config, self.engine.clock, self._client_factory)
        dispatcher.journal = journal
        cursor = self._restore(loaded)
        self._holder = store.node_id
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(journal.writer.run)
                nursery.start_soon(self._keep_desk, store, nursery.cancel_scope)
                await self._deliver(dispatcher, cursor, ready)
        finally:
            self._journal = None
            self._holder = None
            self._endpoints.clear()
            self._by_workspace.clear()

    async def _keep_desk(self, store: WebhookStore, leading: trio.CancelScope) -> None:
        """Stop leading once another node holds the desk (this one was away past its lease)."""
        while True:
            await trio.sleep(store.adopt_interval)
            try:
                holder = await store.desk()
            except Exception as exc:  # the store is away: its writes are fenced meanwhile
                log.debug("webhooks: who holds the desk? %s", exc)
                continue
            if holder != store.node_id:
                log.warning("webhooks: node %s took the desk over; this node stops delivering",
                            holder)
                leading.cancel()
                return

    async def _deliver(self, dispatcher: Dispatcher, cursor: str | None,
                       ready: Callable[[], None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            self._dispatcher = dispatcher
            try:
                for ep in self._endpoints.values():
                    if ep.enabled:
                        dispatcher.start(ep)
                subscription = self._subscribe(cursor)
                ready()
                await self._consume(subscription)
                # The engine closed its log: what is queued still goes out until cancelled.
                await trio.sleep_forever()
            finally:
                self._dispatcher = None
                for ep in self._endpoints.values():
                    ep.scope = None

    def _subscribe(self, cursor: str | None) -> Subscription:
        """From the event after the last one made into deliveries before a restart (or from
        now, without a store)."""
        if cursor is None:
            return self.engine.subscribe()
        try:
            return self.engine.subscribe(after=cursor)
        except EventsGone:
            log.warning("webhooks: events after %s are no longer retained; delivering from "
                        "the oldest retained event", cursor)
            return self.engine.subscribe(from_oldest=True)

    def _restore(self, loaded: LoadedWebhooks) -> str | None:
        """Endpoints and deliveries a store kept; pending deliveries are queued again."""
        clock = self.engine.clock
        for snap in loaded.endpoints:
            ep = Endpoint(snap.id, snap.workspace_id, snap.url, frozenset(snap.events),
                          snap.secret, secret_key(snap.secret), snap.enabled,
                          clock.trio_time(snap.created_at))
            ep.disabled_reason = snap.disabled_reason
            ep.updated_at = clock.trio_time(snap.updated_at)
            ep.consecutive_failures = snap.consecutive_failures
            ep.counts.update(snap.counts)
            self._by_workspace.setdefault(ep.workspace_id, {})[ep.id] = ep
            self._endpoints[ep.id] = ep
        for dsnap in sorted(loaded.deliveries, key=lambda s: s.id):
            found = self._endpoints.get(dsnap.webhook_id)
            if found is None:
                continue
            d = restore_delivery(dsnap, clock)
            found.log[d.id] = d
            if d.state == "pending":
                d.round_attempts = 0  # a fresh retry budget after the restart
                d.next_attempt_at = trio.current_time()
                Dispatcher.push(found, d)
            else:
                found.finished.append((d.id, d.generation))
                found.finished_count += 1
        return loaded.cursor

    async def flush(self) -> None:
        """With a store: write what changed now, and return once it is durable."""
        if self._journal is not None:
            await self._journal.writer.flush()

    @property
    def undelivered(self) -> int:
        """Deliveries still queued or waiting for a retry, across every endpoint."""
        return sum(ep.pending for ep in self._endpoints.values())

    async def _consume(self, subscription: Subscription) -> None:
        while True:
            try:
                async for event in subscription:
                    self._on_event(event)
                return
            except EventsMissed as exc:
                self.events_missed += exc.missed
                log.warning("webhook dispatcher missed %d events; resuming from %s",
                            exc.missed, exc.resume_from)

    def _on_event(self, event: Event) -> None:
        if self._journal is not None:
            self._journal.consumed(event.id)
        endpoints = self._by_workspace.get(event.workspace_id)
        if not endpoints:
            return
        dispatcher = self._running()
        for ep in endpoints.values():
            if ep.enabled and ep.wants(event.type):
                dispatcher.enqueue(ep, event, event.session_id)

    def _running(self) -> Dispatcher:
        if self._dispatcher is None:
            raise RuntimeError("Webhooks.run is not running")
        return self._dispatcher

    # -- endpoints ---------------------------------------------------------------------------

    # -- the API, on any node ------------------------------------------------------------------

    async def create(
        self, workspace_id: str, url: str, events: list[str], secret: str | None = None,
        enabled: bool = True,
    ) -> WebhookView:
        """A new endpoint; the view carries its secret (generated if not given), this once."""
        view: WebhookView = await self._route("create", workspace_id, url, events, secret,
                                              enabled)
        return view

    async def list(self, workspace_id: str) -> _Views:
        """The workspace's endpoints, oldest first."""
        views: _Views = await self._route("list", workspace_id)
        return views

    async def get(self, workspace_id: str, webhook_id: str) -> WebhookView:
        view: WebhookView = await self._route("get", workspace_id, webhook_id)
        return view

    async def update(
        self, workspace_id: str, webhook_id: str, *, url: str | Unset = UNSET,
        events: builtins.list[str] | Unset = UNSET, secret: str | Unset | None = UNSET,
        enabled: bool | Unset = UNSET,
    ) -> WebhookView:
        """Change an endpoint. ``secret=None`` generates a new one (shown in the view, once).

        Enabling a disabled endpoint clears its disabled reason and failure count.
        """
        given = {"url": url, "events": events, "secret": secret, "enabled": enabled}
        changes = {name: value for name, value in given.items() if value is not UNSET}
        view: WebhookView = await self._route("update", workspace_id, webhook_id, changes)
        return view

    async def delete(self, workspace_id: str, webhook_id: str) -> None:
        await self._route("delete", workspace_id, webhook_id)

    async def send_test(self, workspace_id: str, webhook_id: str) -> TestResult:
        """Send a signed ``webhook.test`` event once, now, and report how it went.

        It goes out even to a disabled endpoint (to check it before re-enabling) and is
        recorded in the deliveries log; it does not count toward disabling.
        """
        result: TestResult = await self._route("send_test", workspace_id, webhook_id)
        return result

    async def deliveries(
        self, workspace_id: str, webhook_id: str, limit: int = DEFAULT_DELIVERIES,
        before: str | None = None,
    ) -> DeliveryPage:
        """The endpoint's deliveries, newest first; ``before`` is the previous page's cursor."""
        page: DeliveryPage = await self._route("deliveries", workspace_id, webhook_id, limit,
                                               before)
        return page

    async def redeliver(self, workspace_id: str, webhook_id: str,
                        delivery_id: str) -> DeliveryView:
        """Queue a finished delivery again (behind its session's queued events)."""
        view: DeliveryView = await self._route("redeliver", workspace_id, webhook_id,
                                               delivery_id)
        return view

    def _operations(self) -> dict[str, tuple[Callable[..., Awaitable[Any]], Any]]:
        """Each API call as this node runs it, and what it returns (made once, in
        ``__init__``: ``self._here``)."""
        return {
            "create": (self._create_here, WebhookView),
            "list": (self._list_here, _Views),
            "get": (self._get_here, WebhookView),
            "update": (self._update_here, WebhookView),
            "delete": (self._delete_here, None),
            "send_test": (self._send_test_here, TestResult),
            "deliveries": (self._deliveries_here, DeliveryPage),
            "redeliver": (self._redeliver_here, DeliveryView),
        }

    def _answer_for_others(self) -> None:
        """Let the other nodes forward the API to this one (while it holds the desk)."""
        for op, (_, result) in self._here.items():
            self.engine.forwarder.add(f"webhooks.{op}", partial(self._run_here, op), result)

    async def _run_here(self, op: str, *args: Any) -> Any:
        if self._store is not None and self._journal is None:  # it gave the desk up since
            raise WebhooksUnreachable(self._holder)
        return await self._here[op][0](*args)

    async def _route(self, op: str, *args: Any) -> Any:
        """Run ``op`` here when this node delivers (or alone, without a store), else on the
        node that delivers (503 ``unavailable`` if it does not answer, or none does)."""
        store = self._store
        holder = self._holder
        if store is None or holder == store.node_id or holder is None:
            return await self._run_here(op, *args)
        return await self.engine.forwarder.call(holder, f"webhooks.{op}", [*args],
                                                partial(WebhooksUnreachable, holder))

    def _endpoint(self, workspace_id: str, webhook_id: str) -> Endpoint:
        ep = self._by_workspace.get(workspace_id, {}).get(webhook_id)
        if ep is None:
            raise WebhookNotFound(webhook_id)
        return ep

    async def _create_here(
        self, workspace_id: str, url: str, events: builtins.list[str], secret: str | None,
        enabled: bool,
    ) -> WebhookView:
        self._check_writable()
        types = check_events(events)
        if secret is None:
            secret = generate_secret()
        key = secret_key(secret)
        url = await check_url(url, self.config.allow_private)
        endpoints = self._by_workspace.setdefault(workspace_id, {})
        if len(endpoints) >= self.config.max_endpoints_per_workspace:
            raise TooManyWebhooks(self.config.max_endpoints_per_workspace)
        ep = Endpoint("hook_" + secrets.token_hex(10), workspace_id, url, types, secret, key,
                      bool(enabled), trio.current_time())
        endpoints[ep.id] = ep
        self._endpoints[ep.id] = ep
        if ep.enabled and self._dispatcher is not None:
            self._dispatcher.start(ep)
        await self._commit(ep)
        return ep.view(self.engine.clock, secret=secret)

    def _check_writable(self) -> None:
        if self._journal is not None:
            self._journal.writer.check_available()

    async def _commit(self, ep: Endpoint | None = None) -> None:
        """With a store: ``ep`` changed; return once what changed is durable."""
        if self._journal is not None:
            if ep is not None:
                self._journal.endpoint(ep)
            await self._journal.writer.commit()

    async def _list_here(self, workspace_id: str) -> _Views:
        clock = self.engine.clock
        return [ep.view(clock) for ep in self._by_workspace.get(workspace_id, {}).values()]

    async def _get_here(self, workspace_id: str, webhook_id: str) -> WebhookView:
        return self._endpoint(workspace_id, webhook_id).view(self.engine.clock)

    async def _update_here(self, workspace_id: str, webhook_id: str,
                           changes: dict[str, Any]) -> WebhookView:
        self._endpoint(workspace_id, webhook_id)
        self._check_writable()
        url: str | Unset = changes.get("url", UNSET)
        events: builtins.list[str] | Unset = changes.get("events", UNSET)
        secret: str | Unset | None = changes.get("secret", UNSET)
        enabled: bool | Unset = changes.get("enabled", UNSET)
        types = None if events is UNSET else check_events(events)
        new_secret = generate_secret() if secret is None else secret
        key = None if new_secret is UNSET else secret_key(new_secret)
        if url is not UNSET:
            url = await check_url(url, self.config.allow_private)
        ep = self._endpoint(workspace_id, webhook_id)  # it may have gone while we resolved
        if url is not UNSET:
            ep.url = url
        if types is not None:
            ep.events = types
        if key is not None and isinstance(new_secret, str):
            ep.secret, ep.key = new_secret, key
        if enabled is not UNSET and bool(enabled) != ep.enabled:
            if enabled:
                ep.enabled = True
                ep.disabled_reason = None
                ep.consecutive_failures = 0
                if self._dispatcher is not None:
                    self._dispatcher.start(ep)
            else:
                self._disable(ep, None)
        ep.updated_at = trio.current_time()
        await self._commit(ep)
        shown = new_secret if secret is None and isinstance(new_secret, str) else None
        return ep.view(self.engine.clock, secret=shown)

    def _disable(self, ep: Endpoint, reason: str | None) -> None:
        if self._dispatcher is not None:
            self._dispatcher.disable(ep, reason)
        else:
            ep.enabled, ep.disabled_reason = False, reason

    async def _delete_here(self, workspace_id: str, webhook_id: str) -> None:
        ep = self._endpoint(workspace_id, webhook_id)
        self._check_writable()
        if self._dispatcher is not None:
            self._dispatcher.stop(ep)
        del self._by_workspace[workspace_id][webhook_id]
        del self._endpoints[webhook_id]
        if self._journal is not None:
            self._journal.deleted(ep)
        await self._commit()

    # -- deliveries --------------------------------------------------------------------------

    async def _send_test_here(self, workspace_id: str, webhook_id: str) -> TestResult:
        ep = self._endpoint(workspace_id, webhook_id)
        dispatcher = self._running()
        now = trio.current_time()
        event = Payload(
            id="evt_test_" + secrets.token_hex(10), type=TEST_EVENT_TYPE,
            timestamp=self.engine.clock.rfc3339(now), workspace_id=workspace_id,
            data=TestData(webhook_id=ep.id, message="This is a test event from Tether."),
        )
        d = dispatcher.new_delivery(event, "")
        await dispatcher.send_once(ep, d)
        return TestResult(
            success=d.state == "succeeded", delivery_id=d.id, event_id=event.id,
            status_code=d.last_status, error=d.last_error,
            duration_ms=round((trio.current_time() - now) * 1000, 3),
        )

    async def _deliveries_here(
        self, workspace_id: str, webhook_id: str, limit: int, before: str | None,
    ) -> DeliveryPage:
        if not isinstance(limit, int) or not 1 <= limit <= MAX_DELIVERIES:
            raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_DELIVERIES}")
        ep = self._endpoint(workspace_id, webhook_id)
        keys = ep.log.irange(maximum=before, inclusive=(True, False), reverse=True)
        clock = self.engine.clock
        page: list[DeliveryView] = []
        has_more = False
        for key in keys:
            if len(page) == limit:
                has_more = True
                break
            page.append(ep.log[key].view(clock))
        return DeliveryPage(
            data=page,
            meta=DeliveryMeta(limit=limit, has_more=has_more,
                              next_before=page[-1].id if has_more else None),
        )

    async def _redeliver_here(self, workspace_id: str, webhook_id: str,
                              delivery_id: str) -> DeliveryView:
        ep = self._endpoint(workspace_id, webhook_id)
        self._check_writable()
        d: Delivery | None = ep.log.get(delivery_id)
        if d is None:
            raise DeliveryNotFound(delivery_id)
        if d.state == "pending":
            raise DeliveryPending(delivery_id)
        if not ep.enabled:
            raise WebhookDisabled(ep.id, ep.disabled_reason)
        if ep.pending >= self.config.queue_max:
            raise WebhookQueueFull(ep.id, ep.pending)
        self._running().requeue(ep, d)
        view = d.view(self.engine.clock)  # as queued: it may go out while we commit
        await self._commit()
        return view

    def endpoint_stats(self, workspace_id: str, webhook_id: str) -> dict[str, int]:
        """Counters of an endpoint (succeeded, failed, overflowed, evicted, pending)."""
        ep = self._endpoint(workspace_id, webhook_id)
        return {**ep.counts, "pending": ep.pending, "logged": len(ep.log)}
