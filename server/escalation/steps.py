"""What a due step of a ladder does, on the one node that claimed it.

Unless the notification was acknowledged, expired, hidden or cancelled: store the step's
alerts (ids derived from the step, so a retry stores none twice), push the original to its
user again, and put ``escalated`` on the record (keyed: once per level). A node that dies
halfway leaves the entry to the lease; the next node repeats the step and only what was
missing happens.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from server.app.metrics import METRICS
from server.app.store import Store, is_hidden
from server.app.timeutil import as_datetime, millis, utcnow
from server.escalation import ladder
from server.feed.notifications import Notifications
from server.feed.scheduler import ScheduledStore
from server.feed.timeline import Timeline

log = logging.getLogger("notify.escalation")

NOT_SENT_YET_RETRY = 2.0  # seconds: a scheduled notification that is not sent yet


class Steps:
    """The ``escalate`` kind's handler."""

    def __init__(
        self,
        store: Store,
        notifications: Notifications,
        timeline: Timeline,
        scheduled: ScheduledStore,
        repush: Callable[[dict, int], Awaitable[None]],
    ):
        self.store = store
        self.notifications = notifications
        self.timeline = timeline
        self.scheduled = scheduled
        self.repush = repush

    async def run(self, entries: list[dict]) -> dict[str, int]:
        """Do each due step; returns the steps of notifications not sent yet, for later."""
        later: dict[str, int] = {}
        for entry in entries:
            nid, level = entry["ref"], int(entry["payload"]["level"])
            doc = await self.store.get(nid)
            if doc is None:
                if await self.scheduled.get(nid) is not None:  # sent soon; else cancelled
                    later[entry["_id"]] = millis(utcnow()) + int(NOT_SENT_YET_RETRY * 1000)
                continue
            if still_open(doc) and level <= len(doc.get("escalation") or ()):
                await self.escalate(doc, level)
        return later

    async def escalate(self, doc: dict, level: int) -> None:
        """Alert the step's targets, push the original again, and record it."""
        step = doc["escalation"][level - 1]
        due = ladder.step_due(doc, step["after_seconds"])
        payload = ladder.alert_payload(doc, level)
        now = utcnow()
        alerts = []
        for target in ladder.targets(step):
            kind, name = target
            built = self.notifications.build(
                payload, now, **({"user_id": name} if kind == "user" else {"audience": name})
            )
            built["_id"] = ladder.alert_id(doc["_id"], level, target, due)
            alerts.append(built)
        stored = await self.notifications.store_once(alerts)
        await self.repush(doc, level)
        recorded = await self.timeline.record(
            doc["_id"],
            "escalated",
            key=f"{doc['_id']}:escalated:{level}",
            at=now,
            level=level,
            to=ladder.to_field(step),
        )
        fresh = sum(1 for d in stored if d.get("seq") is not None)
        METRICS.escalations.labels("sent" if recorded else "repeated").inc()
        log.info("escalated a notification to level %d (%d new alerts)", level, fresh)


def still_open(doc: dict) -> bool:
    """Not acknowledged, not expired, not hidden: a ladder may still climb."""
    if doc.get("acknowledged_at") is not None or is_hidden(doc):
        return False
    expires = as_datetime(doc.get("expires_at"))
    return expires is None or expires > utcnow()
