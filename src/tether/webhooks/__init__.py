"""Webhooks: deliver the engine's events to customers' endpoints, signed, and lose nothing.

An event-bus consumer beside the engine (the engine never imports it). :class:`Webhooks`
keeps each workspace's endpoints and delivers every event to the endpoints that want it: one
session's events in sequence order, retried with exponential backoff, recorded in a bounded
deliveries log where failures stay redeliverable; an endpoint that keeps failing is disabled
with a reason.
"""

from ._client import ClientFactory, HTTPError, PostClient, Timeout
from ._config import WebhookConfig
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
    DeliveryPage,
    DeliveryView,
    Payload,
    TestResult,
    WebhookView,
    payload_of,
)
from ._persist import (
    DeliverySnapshot,
    EndpointSnapshot,
    LoadedWebhooks,
    StoredPayload,
    WebhookBatch,
    WebhookStore,
)
from ._service import Webhooks
from ._signing import generate_secret, secret_key, signature_headers
from ._urls import check_url, internal_reason

__all__ = [
    "TEST_EVENT_TYPE",
    "WEBHOOK_EVENT_TYPES",
    "ClientFactory",
    "DeliveryNotFound",
    "DeliveryPage",
    "DeliveryPending",
    "DeliverySnapshot",
    "DeliveryView",
    "EndpointSnapshot",
    "HTTPError",
    "LoadedWebhooks",
    "Payload",
    "PostClient",
    "StoredPayload",
    "TestResult",
    "Timeout",
    "TooManyWebhooks",
    "WebhookBatch",
    "WebhookConfig",
    "WebhookDisabled",
    "WebhookNotFound",
    "WebhookQueueFull",
    "WebhookStore",
    "WebhookView",
    "Webhooks",
    "WebhooksUnreachable",
    "check_url",
    "generate_secret",
    "internal_reason",
    "payload_of",
    "secret_key",
    "signature_headers",
]
