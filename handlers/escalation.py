"""Acknowledging a notification over REST (CONTRACT §8)."""

from __future__ import annotations

from handlers.base import APIHandler
from server.app import schemas
from server.auth.credentials import Principal

ID = f"({schemas.ID_CHARS})"


def acknowledged_by(principal: Principal) -> str:
    """Who the record names: the user for their own token, ``key:<name>`` for an API key."""
    return principal.id if principal.kind == "token" else f"key:{principal.name}"


class AcknowledgeHandler(APIHandler):
    audit_action = "notifications.acknowledge"

    async def post(self, user_id: str, notification_id: str) -> None:
        """Acknowledge one of the user's notifications, with an optional note; idempotent."""
        principal, roles = await self.require_user(user_id)
        req = self.load(
            schemas.shared(schemas.AcknowledgeIn), self.body() if self.request.body else {}
        )
        self.ok(
            await self.services.escalation.acks.acknowledge(
                notification_id, acknowledged_by(principal), req["note"], user_id, roles
            )
        )


default_handlers = [
    (rf"/v1/users/{ID}/notifications/{ID}/acknowledge", AcknowledgeHandler),
]
