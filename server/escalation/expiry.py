"""A notification that needed acknowledgement and expired without it, put on the record.

The timeline derives a plain ``expired`` from ``expires_at`` when read; this one is stored,
when it happens, as ``expired`` with ``unacknowledged: true``, so that the timeline's
listeners (webhooks: ``notification.expired_unacknowledged``) hear of it once.
"""

from __future__ import annotations

from server.app.store import Store, is_hidden
from server.app.timeutil import as_datetime, millis, utcnow
from server.feed.scheduler import ScheduledStore
from server.feed.timeline import Timeline

NOT_SENT_YET_RETRY = 2.0  # seconds


class Expiry:
    """The ``ack_expiry`` kind's handler (queued at ``expires_at`` by the ladder's plan)."""

    def __init__(self, store: Store, timeline: Timeline, scheduled: ScheduledStore):
        self.store = store
        self.timeline = timeline
        self.scheduled = scheduled

    async def run(self, entries: list[dict]) -> dict[str, int]:
        """Record each unacknowledged expiry once; wait for ones not sent or not expired yet."""
        later: dict[str, int] = {}
        now = utcnow()
        for entry in entries:
            nid = entry["ref"]
            doc = await self.store.get(nid)
            if doc is None:
                # Still scheduled: its sending drops it as expired, then this finds nothing.
                if await self.scheduled.get(nid) is not None:
                    later[entry["_id"]] = millis(now) + int(NOT_SENT_YET_RETRY * 1000)
                continue
            expires = as_datetime(doc.get("expires_at"))
            acknowledged = as_datetime(doc.get("acknowledged_at"))
            if expires is None or is_hidden(doc):
                continue
            if acknowledged is not None and acknowledged <= expires:
                continue  # in time; one acknowledged after it expired still expired without
            if expires > now:  # a clock a little behind the one that claimed it
                later[entry["_id"]] = millis(expires)
                continue
            await self.timeline.record(
                nid, "expired", key=f"{nid}:expired", at=expires, unacknowledged=True
            )
        return later
