"""What happened to each notification, oldest first (CONTRACT §8's timeline).

One document per event in the ``timeline`` collection, appended once and never updated, so
recording costs one insert and no read of the notification. What the notification itself
already says is not stored again: ``created``, ``scheduled`` and ``expired`` are derived from
its ``created_at``, ``deliver_at`` and ``expires_at`` when the timeline is read, which keeps
the ingest path free of timeline writes. The one exception: a notification that needed
acknowledgement and expired without it gets a stored ``expired`` event with
``unacknowledged: true`` (for webhooks), which then replaces the derived one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.app.timeutil import iso, utcnow

log = logging.getLogger("notify.timeline")

# Told of every stored event ({notification_id, event, at, fields}): how webhooks hear of
# what happened without each capability calling them.
Listener = Callable[[dict], Awaitable[None]]

EVENTS = (
    "created",
    "scheduled",
    "delivered",
    "push_sent",
    "push_failed",
    "push_deferred",
    "read",
    "acknowledged",
    "escalated",
    "expired",
    "cancelled",
    "webhook_failed",
)


class Timeline:
    """The ``timeline`` collection: append events, read one notification's history."""

    def __init__(self, db: AsyncDatabase, retention_days: int):
        self.collection = db.timeline
        self.retention = timedelta(days=retention_days)
        self.listeners: list[Listener] = []

    async def create_indexes(self) -> None:
        """One notification's events in order; entries leave with the retention period."""
        # Not (…, _id): the embedded server cannot build an index with _id in it.
        await self.collection.create_indexes(
            [
                IndexModel(
                    [("notification_id", ASCENDING), ("at", ASCENDING)], name="by_notification"
                ),
                IndexModel("purge_at", expireAfterSeconds=0, name="purge_at"),
            ]
        )

    async def record(
        self,
        notification_id: str,
        event: str,
        *,
        key: str | None = None,
        at: datetime | None = None,
        **fields: Any,
    ) -> bool:
        """Append one event; with ``key``, at most once per key (False if already there)."""
        if event not in EVENTS:
            raise ValueError(f"unknown timeline event {event!r}")
        at = at or utcnow()
        entry = {
            "_id": key or str(ObjectId()),
            "notification_id": notification_id,
            "event": event,
            "at": at,
            "purge_at": at + self.retention,
            "fields": fields,
        }
        try:
            await self.collection.insert_one(entry)
        except DuplicateKeyError:
            return False
        await self._tell([entry])
        return True

    async def record_each(self, notification_ids: list[str], event: str) -> None:
        """Append the same event, now, to several notifications in one write."""
        if not notification_ids:
            return
        at = utcnow()
        purge_at = at + self.retention
        entries = [
            {
                "_id": str(ObjectId()),
                "notification_id": nid,
                "event": event,
                "at": at,
                "purge_at": purge_at,
                "fields": {},
            }
            for nid in notification_ids
        ]
        await self.collection.insert_many(entries, ordered=False)
        await self._tell(entries)

    async def _tell(self, entries: list[dict]) -> None:
        """Hand stored events to the listeners; a listener's failure is theirs alone."""
        for listener in self.listeners:
            for entry in entries:
                try:
                    await listener(entry)
                except Exception:  # the event is recorded; a listener must not undo that
                    log.exception("a timeline listener failed on %s", entry["event"])

    async def has(self, notification_id: str, event: str) -> bool:
        """Whether an event of this kind was recorded for the notification."""
        found = await self.collection.find_one(
            {"notification_id": notification_id, "event": event}, {"_id": 1}
        )
        return found is not None

    async def events(self, doc: dict, now: datetime | None = None) -> list[dict]:
        """The notification's timeline as the contract shows it, oldest first."""
        now = now or utcnow()
        derived: list[tuple[datetime, dict]] = [(doc["created_at"], {"event": "created"})]
        if doc.get("deliver_at") is not None and doc["deliver_at"] > doc["created_at"]:
            derived.append((doc["created_at"], {"event": "scheduled"}))
        expires = doc.get("expires_at")
        if expires is not None and expires <= now:
            derived.append((expires, {"event": "expired"}))
        cursor = self.collection.find(
            {"notification_id": doc["_id"]}, sort=[("at", ASCENDING), ("_id", ASCENDING)]
        )
        stored = [(e["at"], {"event": e["event"], **e.get("fields", {})}) async for e in cursor]
        if any(event["event"] == "expired" for _, event in stored):
            # Stored when it expired unacknowledged (server/escalation/expiry.py): it says
            # more than the derived one, which would only repeat it.
            derived = [item for item in derived if item[1]["event"] != "expired"]
        merged = sorted(derived + stored, key=lambda item: item[0])  # stable: ties keep order
        return [{"at": iso(at), **event} for at, event in merged]
