"""One node's acknowledgement and escalation, wired into the shared pieces.

The ladder's steps are due work on the one queue (``server/feed/scheduler.py``), queued by
a planner before a notification is stored; the ``acknowledged`` frame crosses nodes on the
bus like read state; a cancelled notification's queued steps are dropped when the timeline
records the cancellation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from server.app.store import Store
from server.delivery.bus import Bus
from server.delivery.hub import Hub, notification_frame
from server.escalation import ladder
from server.escalation.ack import ACK_EXPIRY, ESCALATE, LADDER_KINDS, Acknowledgements
from server.escalation.expiry import Expiry
from server.escalation.steps import Steps
from server.feed.notifications import Notifications
from server.feed.scheduler import Scheduler

log = logging.getLogger("notify.escalation")

REDELIVER = "redeliver"  # a bus event: send a stored notification to its user's sockets again


class Escalation:
    """Acknowledgements, the ladder's planner and the handlers of its due work."""

    def __init__(
        self,
        store: Store,
        notifications: Notifications,
        scheduler: Scheduler,
        bus: Bus,
        hub: Hub,
        push: Callable[[], Any] = lambda: None,
    ):
        self.store = store
        self.notifications = notifications
        self.scheduler = scheduler
        self.bus = bus
        self.hub = hub
        self.push = push  # the node's push service once it has one (CONTRACT §6), else None
        timeline = notifications.timeline
        self.acks = Acknowledgements(store, timeline, scheduler, bus.publish_event)
        self.steps = Steps(store, notifications, timeline, scheduler.store, self.repush)
        self.expiry = Expiry(store, timeline, scheduler.store)
        self._tasks: set[asyncio.Task] = set()

    def wire(self) -> None:
        """Register the planner, the due-work handlers, the listener and the bus event."""
        self.notifications.planners.append(self.plan)
        self.scheduler.register(ESCALATE, self.steps.run)
        self.scheduler.register(ACK_EXPIRY, self.expiry.run)
        self.notifications.timeline.listeners.append(self._on_event)
        self.bus.handlers[REDELIVER] = self._redeliver

    async def plan(self, docs: list[dict]) -> None:
        """Queue the ladder's steps (and the expiry note) of notifications about to be stored;
        one write for the batch, none when no notification needs acknowledgement."""
        await self.scheduler.enqueue_many(ladder.plan(docs))

    async def repush(self, doc: dict, level: int) -> None:
        """The original again to its user: a push (whatever the grace period) when the node
        pushes, else a frame to the user's sockets on every node."""
        push = self.push()
        if push is not None:
            await push.push_now(doc, f"escalation:{level}")  # once per step, also on retries
            return
        await self.bus.publish_event(
            {"kind": REDELIVER, "user_id": doc["user_id"], "id": doc["_id"]}
        )

    async def _on_event(self, entry: dict) -> None:
        """A cancelled notification's ladder goes with it."""
        if entry["event"] == "cancelled":
            await self.scheduler.drop(entry["notification_id"], LADDER_KINDS)

    def _redeliver(self, event: dict) -> None:
        """A bus event: send the notification to its user's sockets on this node."""
        user_id, nid = str(event.get("user_id")), str(event.get("id"))
        if not self.hub.user_subscriptions(user_id):
            return
        task = asyncio.create_task(self._send_again(user_id, nid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_again(self, user_id: str, nid: str) -> None:
        try:
            doc = await self.store.get(nid)
        except Exception:  # a missed repeat is not worth more than a line
            log.warning("could not read a notification to deliver it again")
            return
        if doc is None or doc.get("user_id") != user_id:
            return
        frame = notification_frame(doc)
        for sub in tuple(self.hub.user_subscriptions(user_id)):
            sub.conn.send_frame(frame)
