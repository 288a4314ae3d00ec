"""The dashboard's webhooks page (admin): endpoints, their failed deliveries, a retry button."""

from __future__ import annotations

from tornado import web

from handlers.base import ID
from handlers.dashboard.base import PageHandler, admin_only
from server.app.errors import Conflict

FAILED_SHOWN = 50


class WebhooksPage(PageHandler):
    @web.authenticated
    @admin_only
    async def get(self) -> None:
        """Every endpoint with its newest failed deliveries."""
        webhooks = self.services.webhooks
        hooks = await webhooks.list()
        for hook in hooks:
            hook["failed"] = await webhooks.deliveries_of(hook["id"], "failed", FAILED_SHOWN)
        self.render_page("webhooks.html", hooks=hooks)


class DeliveryRetry(PageHandler):
    @web.authenticated
    @admin_only
    async def post(self, endpoint_id: str, delivery_id: str) -> None:
        """Send a failed delivery once more (the same webhook-id); the audit log records it."""
        try:
            await self.services.webhooks.retry(endpoint_id, delivery_id)
        except Conflict as exc:  # sent meanwhile, or already being sent again
            self.flash(f"Not sent again: {exc.message}.")
        else:
            await self.services.audit.record(
                self.actor, "webhook.retry", delivery_id, webhook=endpoint_id
            )
            self.flash("The delivery is being sent again.")
        self.redirect("/dashboard/webhooks")


default_handlers = [
    (r"/dashboard/webhooks", WebhooksPage),
    (rf"/dashboard/webhooks/{ID}/deliveries/{ID}/retry", DeliveryRetry),
]
