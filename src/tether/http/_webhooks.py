"""The webhooks API's views: ``/v1/webhooks`` and its deliveries, over the webhooks service.

Served like every operation (:mod:`._endpoints`): the route table says what each takes and
answers; these call :class:`tether.webhooks.Webhooks` with the typed values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._models import Data

if TYPE_CHECKING:
    from tether.webhooks import DeliveryPage, DeliveryView, TestResult, Webhooks, WebhookView

    from ._models import CreateWebhookBody, UpdateWebhookBody


class WebhooksApi:
    """The webhooks API over one webhooks service. Method names are the operations' ids."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    async def list_webhooks(self, workspace_id: str) -> Data[list[WebhookView]]:
        return Data(data=await self.webhooks.list(workspace_id))

    async def create_webhook(
        self, workspace_id: str, body: CreateWebhookBody
    ) -> Data[WebhookView]:
        view = await self.webhooks.create(workspace_id, body.url, body.events, body.secret,
                                          body.enabled)
        return Data(data=view)

    async def get_webhook(self, workspace_id: str, webhook_id: str) -> Data[WebhookView]:
        return Data(data=await self.webhooks.get(workspace_id, webhook_id))

    async def update_webhook(
        self, workspace_id: str, webhook_id: str, body: UpdateWebhookBody
    ) -> Data[WebhookView]:
        view = await self.webhooks.update(
            workspace_id, webhook_id, url=body.url, events=body.events, secret=body.secret,
            enabled=body.enabled,
        )
        return Data(data=view)

    async def delete_webhook(self, workspace_id: str, webhook_id: str) -> None:
        await self.webhooks.delete(workspace_id, webhook_id)

    async def test_webhook(self, workspace_id: str, webhook_id: str) -> Data[TestResult]:
        return Data(data=await self.webhooks.send_test(workspace_id, webhook_id))

    async def list_deliveries(
        self, workspace_id: str, webhook_id: str, limit: int, before: str | None
    ) -> DeliveryPage:
        return await self.webhooks.deliveries(workspace_id, webhook_id, limit=limit, before=before)

    async def retry_delivery(
        self, workspace_id: str, webhook_id: str, delivery_id: str
    ) -> Data[DeliveryView]:
        return Data(data=await self.webhooks.redeliver(workspace_id, webhook_id, delivery_id))
