"""REST for outbound webhooks (CONTRACT §9), admin scope: endpoints, deliveries, retries."""

from __future__ import annotations

from handlers.base import ID, APIHandler
from server.app import schemas


class WebhooksHandler(APIHandler):
    async def post(self) -> None:
        """Register an endpoint; its signing secret is in this answer only."""
        await self.require_scope("admin")
        body = self.body()
        req = self.load(schemas.WebhookIn(), body)
        webhooks = self.services.webhooks
        await self.once(
            body, 201, lambda: webhooks.register(req["url"], req["events"], req["description"])
        )

    async def get(self) -> None:
        """Every endpoint, without secrets."""
        await self.require_scope("admin")
        self.ok({"items": await self.services.webhooks.list()})


class WebhookHandler(APIHandler):
    async def delete(self, endpoint_id: str) -> None:
        """Delete an endpoint and its deliveries."""
        await self.require_scope("admin")
        await self.services.webhooks.remove(endpoint_id)
        self.ok({"id": endpoint_id})


class DeliveriesHandler(APIHandler):
    async def get(self, endpoint_id: str) -> None:
        """An endpoint's deliveries, newest first (``?status=failed``)."""
        await self.require_scope("admin")
        query = self.query(schemas.DeliveriesQuery())
        items = await self.services.webhooks.deliveries_of(
            endpoint_id, query.get("status"), query["limit"]
        )
        self.ok({"items": items})


class DeliveryRetryHandler(APIHandler):
    async def post(self, endpoint_id: str, delivery_id: str) -> None:
        """One more attempt of a failed delivery, now, with the same ``webhook-id``."""
        await self.require_scope("admin")
        self.ok(await self.services.webhooks.retry(endpoint_id, delivery_id), 202)


default_handlers = [
    (r"/v1/webhooks", WebhooksHandler),
    (rf"/v1/webhooks/{ID}", WebhookHandler),
    (rf"/v1/webhooks/{ID}/deliveries", DeliveriesHandler),
    (rf"/v1/webhooks/{ID}/deliveries/{ID}/retry", DeliveryRetryHandler),
]
