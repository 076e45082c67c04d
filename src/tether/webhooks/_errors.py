"""Webhook errors, in the engine's one hierarchy (each carries its envelope's fields; the HTTP
layer decides their statuses)."""

from __future__ import annotations

from tether.engine import TetherError


class WebhookNotFound(TetherError):
    """No such webhook endpoint in the caller's workspace."""

    code = "webhook_not_found"

    def __init__(self, webhook_id: str) -> None:
        super().__init__("Webhook not found", {"webhook_id": webhook_id})


class DeliveryNotFound(TetherError):
    """No such delivery in the endpoint's deliveries log (or it has left the log)."""

    code = "delivery_not_found"

    def __init__(self, delivery_id: str) -> None:
        super().__init__("Delivery not found", {"delivery_id": delivery_id})


class DeliveryPending(TetherError):
    """The delivery is still queued or being attempted: there is nothing to redeliver yet."""

    code = "delivery_pending"

    def __init__(self, delivery_id: str) -> None:
        super().__init__("Delivery is still pending", {"delivery_id": delivery_id})


class WebhookDisabled(TetherError):
    """The endpoint is disabled; re-enable it (PATCH ``enabled: true``) before redelivering."""

    code = "webhook_disabled"

    def __init__(self, webhook_id: str, reason: str | None) -> None:
        super().__init__("Webhook is disabled", {"webhook_id": webhook_id, "reason": reason})


class WebhookQueueFull(TetherError):
    """The endpoint already holds as many undelivered events as it may."""

    code = "webhook_queue_full"

    def __init__(self, webhook_id: str, pending: int) -> None:
        super().__init__(
            "Webhook has too many undelivered events",
            {"webhook_id": webhook_id, "pending": pending},
        )


class TooManyWebhooks(TetherError):
    """The workspace already has as many endpoints as it may."""

    code = "too_many_webhooks"

    def __init__(self, limit: int) -> None:
        super().__init__("Workspace has too many webhooks", {"limit": limit})


class WebhooksUnreachable(TetherError):
    """With a store that nodes share: the node that delivers webhooks (and answers their API)
    cannot be reached, or no node holds the desk at the moment (the call did not happen)."""

    code = "unavailable"

    def __init__(self, node_id: str | None) -> None:
        super().__init__("The node that serves webhooks cannot be reached; retry later",
                         {"node_id": node_id})
