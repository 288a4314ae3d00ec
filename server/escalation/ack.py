"""Acknowledging a notification: a person's deliberate act, not a delivery receipt."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from server.app.errors import Conflict, NotFound
from server.app.metrics import METRICS
from server.app.store import Store, is_hidden
from server.app.timeutil import utcnow
from server.feed.notifications import audiences
from server.feed.render import public
from server.feed.scheduler import Scheduler
from server.feed.timeline import Timeline

ESCALATE = "escalate"  # the due-work kind of a ladder's step
ACK_EXPIRY = "ack_expiry"  # the due-work kind that notes an unacknowledged expiry
LADDER_KINDS = [ESCALATE, ACK_EXPIRY]


class Acknowledgements:
    """Sets ``acknowledged_at`` / ``acknowledged_by`` once, and tells everyone who cares."""

    def __init__(
        self,
        store: Store,
        timeline: Timeline,
        scheduler: Scheduler | None,
        publish_event: Callable[[dict], Awaitable[None]],
    ):
        self.store = store
        self.timeline = timeline
        self.scheduler = scheduler
        self.publish_event = publish_event

    async def acknowledge(
        self,
        notification_id: str,
        by: str,
        note: str | None = None,
        user_id: str | None = None,
        roles: tuple[str, ...] = (),
    ) -> dict:
        """Acknowledge a user's notification; the second time changes nothing.

        ``user_id`` is the user the caller speaks for (their token, or the path of a call
        with an API key); None for staff, who act on any user's behalf.
        """
        doc = await self.store.get(notification_id)
        if doc is None or is_hidden(doc) or not _reachable(doc, user_id, roles):
            raise NotFound("no such notification for this user")
        if doc.get("user_id") is None:
            raise Conflict("a broadcast is not acknowledged: it has no one user to answer for it")
        now = utcnow()
        if not await self.store.acknowledge(notification_id, by, now):
            return public(await self.store.get(notification_id) or doc)
        doc.update(acknowledged_at=now, acknowledged_by=by)
        METRICS.acknowledged.labels(_kind_of(by)).inc()
        await self.timeline.record(
            notification_id,
            "acknowledged",
            key=f"{notification_id}:acknowledged",
            at=now,
            by=by,
            note=note,
        )
        if self.scheduler is not None:  # the ladder stops (a step running now checks again)
            await self.scheduler.drop(notification_id, [ESCALATE])
        await self.publish_event(
            {"kind": "acknowledged", "user_id": doc["user_id"], "id": notification_id}
        )
        return public(doc)


def _reachable(doc: dict, user_id: str | None, roles: tuple[str, ...]) -> bool:
    """The caller's user owns it (or is in a broadcast's audience); staff reach every one."""
    if user_id is None:
        return True
    if doc.get("user_id") is not None:
        return doc["user_id"] == user_id
    return doc.get("audience") in audiences(roles)


def _kind_of(by: str) -> str:
    """The metric's label: ``key``, ``staff`` or ``user`` (user ids may hold a colon too)."""
    for kind in ("key", "staff"):
        if by.startswith(f"{kind}:"):
            return kind
    return "user"
