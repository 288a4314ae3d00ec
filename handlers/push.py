"""Web Push and preferences (CONTRACT §6, §7): subscriptions, the VAPID key, preferences."""

from __future__ import annotations

from handlers.base import APIHandler
from server.app import schemas
from server.app.errors import NotFound

ID = f"({schemas.ID_CHARS})"
SUBSCRIPTION_ID = "([0-9a-f]{1,64})"


class VapidKeyHandler(APIHandler):
    async def get(self) -> None:
        """The VAPID public key browsers subscribe with (no credential)."""
        self.ok({"public_key": self.services.push.vapid.public_key})


class SubscriptionsHandler(APIHandler):
    audit_action = "push.subscriptions"

    async def post(self, user_id: str) -> None:
        """Subscribe a device: 201 when new, 200 when the endpoint was already this user's."""
        _, roles = await self.require_user(user_id, "notify")
        req = self.load(schemas.SubscriptionIn(), self.body())
        sub, created = await self.services.push.subscribe(user_id, list(roles), req)
        self.ok(sub, 201 if created else 200)

    async def get(self, user_id: str) -> None:
        """A user's subscribed devices, without their keys."""
        await self.require_user(user_id, "read")
        self.ok({"items": await self.services.push.list_subscriptions(user_id)})


class SubscriptionHandler(APIHandler):
    audit_action = "push.unsubscribe"

    async def delete(self, user_id: str, subscription_id: str) -> None:
        """Remove one of a user's subscriptions."""
        await self.require_user(user_id, "notify")
        if not await self.services.push.subscriptions.delete(user_id, subscription_id):
            raise NotFound("no such subscription for this user")
        self.ok({"id": subscription_id})


class PreferencesHandler(APIHandler):
    audit_action = "push.preferences"

    async def get(self, user_id: str) -> None:
        """A user's push preferences and quiet hours."""
        await self.require_user(user_id, "read", "notify")
        self.ok(await self.services.push.preferences.get(user_id))

    async def put(self, user_id: str) -> None:
        """Replace a user's push preferences and quiet hours."""
        await self.require_user(user_id, "read", "notify")
        req = self.load(schemas.PreferencesIn(), self.body())
        self.ok(await self.services.push.preferences.put(user_id, req))


default_handlers = [
    (r"/v1/push/vapid-public-key", VapidKeyHandler),
    (rf"/v1/users/{ID}/push-subscriptions", SubscriptionsHandler),
    (rf"/v1/users/{ID}/push-subscriptions/{SUBSCRIPTION_ID}", SubscriptionHandler),
    (rf"/v1/users/{ID}/preferences", PreferencesHandler),
]
