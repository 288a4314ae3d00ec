"""One node's acknowledgement and escalation, wired into the shared pieces.

The ladder's steps are due work on the one queue (``server/feed/scheduler.py``), queued by
a planner before a notification is stored; the ``acknowledged`` frame crosses nodes on the
bus like read state; a cancelled notification's queued steps are dropped when the timeline
records the cancellation.
"""

from __future__ import annotations

from server.app.store import Store
from server.delivery.bus import Bus
from server.escalation import ladder
from server.escalation.ack import ACK_EXPIRY, ESCALATE, LADDER_KINDS, Acknowledgements
from server.escalation.expiry import Expiry
from server.escalation.steps import Steps
from server.feed.notifications import Notifications
from server.feed.scheduler import Scheduler
from server.push.service import PushService


class Escalation:
    """Acknowledgements, the ladder's planner and the handlers of its due work."""

    def __init__(
        self,
        store: Store,
        notifications: Notifications,
        scheduler: Scheduler,
        bus: Bus,
        push: PushService,
    ):
        self.store = store
        self.notifications = notifications
        self.scheduler = scheduler
        self.push = push
        timeline = notifications.timeline
        self.acks = Acknowledgements(store, timeline, scheduler, bus.publish_event)
        self.steps = Steps(store, notifications, timeline, scheduler.store, self.repush)
        self.expiry = Expiry(store, timeline, scheduler.store)

    def wire(self) -> None:
        """Register the planner, the due-work handlers and the timeline listener."""
        self.notifications.planners.append(self.plan)
        self.scheduler.register(ESCALATE, self.steps.run)
        self.scheduler.register(ACK_EXPIRY, self.expiry.run)
        self.notifications.timeline.listeners.append(self._on_event)

    async def plan(self, docs: list[dict]) -> None:
        """Queue the ladder's steps (and the expiry note) of notifications about to be stored;
        one write for the batch, none when no notification needs acknowledgement."""
        await self.scheduler.enqueue_many(ladder.plan(docs))

    async def repush(self, doc: dict, level: int) -> None:
        """The original again to its user (CONTRACT §6): a push whatever the grace period."""
        await self.push.push_now(doc, f"escalation:{level}")  # once per step, also on retries

    async def _on_event(self, entry: dict) -> None:
        """A cancelled notification's ladder goes with it."""
        if entry["event"] == "cancelled":
            await self.scheduler.drop(entry["notification_id"], LADDER_KINDS)
