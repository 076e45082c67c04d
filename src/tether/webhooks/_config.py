"""Webhook delivery configuration: timeouts, retries and every bound, in one frozen value."""

from __future__ import annotations

import msgspec

from tether.engine import InvalidParameter


class WebhookConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Durations are seconds of the trio clock; bounds are counts.

    A failed attempt is retried ``retries`` times, the first after ``retry_base`` seconds and
    each later one after twice the delay before it. ``max_consecutive_failures`` failed events
    in a row (retries exhausted) disable an endpoint; ``0`` never disables.
    """

    #: ``tether serve --webhook-timeout``: one attempt's whole budget (connect to response).
    timeout: float = 10.0
    #: ``tether serve --webhook-retry-base``: the delay before the first retry.
    retry_base: float = 5.0
    retries: int = 3
    #: ``tether serve --webhook-max-failures``.
    max_consecutive_failures: int = 20
    #: ``tether serve --allow-private-webhooks``: let URLs reach loopback/private addresses.
    allow_private: bool = False
    #: Undelivered events one endpoint may hold; beyond it, events are recorded as failed.
    #: A pending delivery costs ~1 KB with the event it keeps alive: 50,000 is ~50 MB at most.
    queue_max: int = 50_000
    #: Finished deliveries one endpoint's log keeps (pending ones are always kept).
    log_max: int = 10_000
    #: Requests in flight at once to one endpoint (its workers, and at most as many kept-alive
    #: connections), and across all endpoints. To a local receiver 4 per endpoint deliver about
    #: as much as 8 or 16 (benchmarks/README.md); more help a receiver with latency.
    endpoint_concurrency: int = 4
    concurrency: int = 256
    max_endpoints_per_workspace: int = 100
    #: How much of a receiver's response body is read (and then discarded).
    max_response_bytes: int = 64 * 1024
    #: How long a checked host's addresses are trusted before they are resolved again.
    resolve_ttl: float = 60.0

    def __post_init__(self) -> None:
        for name in ("timeout", "retry_base", "resolve_ttl"):
            if not getattr(self, name) > 0:
                raise InvalidParameter(name, "must be a positive number of seconds")
        for name in ("retries", "max_consecutive_failures"):
            if getattr(self, name) < 0:
                raise InvalidParameter(name, "must be zero or more")
        for name in ("queue_max", "log_max", "endpoint_concurrency", "concurrency",
                     "max_endpoints_per_workspace", "max_response_bytes"):
            if getattr(self, name) < 1:
                raise InvalidParameter(name, "must be at least 1")

    def backoff(self, failed_attempts: int) -> float:
        """The delay after the ``failed_attempts``-th failed attempt (1, 2, ...)."""
        return float(self.retry_base * 2 ** (failed_attempts - 1))
