"""REST for integrators: each method parses, authorizes, calls a service, writes JSON."""

from __future__ import annotations

from handlers.base import ID, APIHandler
from server.app import schemas
from server.app.timeutil import iso


class TokensHandler(APIHandler):
    async def post(self) -> None:
        """Mint a connection token for a user (scope ``tokens``)."""
        await self.require_scope("tokens")
        req = self.load(schemas.TokenIn(), self.body())
        token, expires = self.services.tokens.mint(
            req["user_id"], req["roles"], req.get("ttl_seconds")
        )
        self.ok({"token": token, "expires_at": iso(expires)}, 201)


class NotificationsHandler(APIHandler):
    async def post(self) -> None:
        """Store and deliver a notification, or one per user of ``user_ids`` (scope ``notify``)."""
        await self.require_scope("notify")
        body = self.body()
        req = self.load(schemas.shared(schemas.NotificationIn), body)
        await self.once(body, 201, lambda: self._create(req))

    async def _create(self, req: dict) -> dict | list[dict]:
        stored = await self.services.notifications.create(req)
        return stored if "user_ids" in req else stored[0]


class NotificationHandler(APIHandler):
    async def get(self, notification_id: str) -> None:
        """A notification with its timeline, oldest event first (scope ``read``)."""
        await self.require_scope("read")
        self.ok(await self.services.notifications.detail(notification_id))

    async def delete(self, notification_id: str) -> None:
        """Cancel a scheduled notification not yet sent (scope ``notify``)."""
        await self.require_scope("notify")
        self.ok(await self.services.notifications.cancel(notification_id))


class BroadcastsHandler(APIHandler):
    async def post(self) -> None:
        """Store and deliver a broadcast to everyone or a role (scope ``broadcast``)."""
        await self.require_scope("broadcast")
        body = self.body()
        req = self.load(schemas.BroadcastIn(), body)
        await self.once(body, 201, lambda: self.services.notifications.broadcast(req))


class FeedHandler(APIHandler):
    audit_action = "notifications.feed"

    async def get(self, user_id: str) -> None:
        """A user's feed, critical first then newest first, with cursor paging."""
        _, roles = await self.require_user(user_id)
        query = self.query(schemas.FeedQuery())
        self.ok(await self.services.notifications.feed(user_id, roles, query))


class UnreadCountHandler(APIHandler):
    audit_action = "notifications.unread_count"

    async def get(self, user_id: str) -> None:
        """How many notifications a user has not read."""
        _, roles = await self.require_user(user_id)
        self.ok({"count": await self.services.notifications.unread_count(user_id, roles)})


class MarkReadHandler(APIHandler):
    audit_action = "notifications.mark_read"

    async def post(self, user_id: str, notification_id: str) -> None:
        """Mark one notification read; every device of the user hears of it."""
        _, roles = await self.require_user(user_id)
        self.ok(await self.services.notifications.mark_read(user_id, roles, notification_id))


class AckHandler(APIHandler):
    audit_action = "notifications.ack"

    async def post(self, user_id: str, notification_id: str) -> None:
        """A delivery receipt over REST (SSE has no client frames); the notification."""
        _, roles = await self.require_user(user_id)
        req = self.load(schemas.AckIn(), self.body() if self.request.body else {})
        connection = req["connection_id"] or "rest"
        notifications = self.services.notifications
        self.ok(await notifications.ack(user_id, roles, notification_id, connection))


class ReadAllHandler(APIHandler):
    audit_action = "notifications.mark_all_read"

    async def post(self, user_id: str) -> None:
        """Mark all of a user's notifications read."""
        _, roles = await self.require_user(user_id)
        self.ok({"count": await self.services.notifications.mark_all_read(user_id, roles)})


class PresenceHandler(APIHandler):
    async def get(self) -> None:
        """Whether users are online, and with how many sockets."""
        await self.require_scope("read")
        query = self.query(schemas.PresenceQuery())
        self.ok(await self.services.presence(query["user_ids"]))


class StatsHandler(APIHandler):
    async def get(self) -> None:
        """Connection statistics (the earlier system's shape, plus per-node detail)."""
        await self.require_scope("read")
        self.ok(await self.services.stats())


class TestNotificationHandler(APIHandler):
    async def post(self) -> None:
        """Send a test notification to a user (the earlier system's endpoint)."""
        await self.require_scope("notify")
        req = self.load(schemas.TestNotificationIn(), self.body())
        payload = {"type": "custom", "priority": "normal", "data": {"test": True}, **req}
        stored = await self.services.notifications.create(payload)
        self.ok(stored[0], 201)


default_handlers = [
    (r"/v1/tokens", TokensHandler),
    (r"/v1/notifications", NotificationsHandler),
    (rf"/v1/notifications/{ID}", NotificationHandler),
    (r"/v1/broadcasts", BroadcastsHandler),
    (rf"/v1/users/{ID}/notifications", FeedHandler),
    (rf"/v1/users/{ID}/unread-count", UnreadCountHandler),
    (rf"/v1/users/{ID}/notifications/read-all", ReadAllHandler),
    (rf"/v1/users/{ID}/notifications/{ID}/read", MarkReadHandler),
    (rf"/v1/users/{ID}/notifications/{ID}/ack", AckHandler),
    (r"/v1/presence", PresenceHandler),
    (r"/v1/ws/stats", StatsHandler),
    (r"/v1/ws/test-notification", TestNotificationHandler),
]
