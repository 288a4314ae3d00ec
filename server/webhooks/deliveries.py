"""Webhook deliveries (the ``webhook_deliveries`` collection): one per event and endpoint.

A delivery keeps the exact body it signs, so every retry sends the same bytes under the
same ``webhook-id``. Its ``_id`` is derived from what it is about (the timeline event, or the
notification for once-only types, and the endpoint), so the same event handed over twice,
by two nodes or after a restart, is stored once.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.app.timeutil import iso, utcnow

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
STATUSES = (PENDING, SUCCEEDED, FAILED)


def delivery_id(about: str, endpoint_id: str) -> str:
    """A delivery's id: 24 hex characters derived from its event and its endpoint."""
    return hashlib.sha256(f"{about}|{endpoint_id}".encode()).hexdigest()[:24]


class Deliveries:
    """Store, list and update deliveries."""

    def __init__(self, db: AsyncDatabase, retention_days: int):
        self.collection = db.webhook_deliveries
        self.retention = timedelta(days=retention_days)

    async def create_indexes(self) -> None:
        """An endpoint's deliveries newest first (by status too); TTL on ``purge_at``."""
        await self.collection.create_indexes(
            [
                IndexModel([("endpoint_id", 1), ("created_at", DESCENDING)], name="by_endpoint"),
                IndexModel(
                    [("endpoint_id", 1), ("status", 1), ("created_at", DESCENDING)],
                    name="by_status",
                ),
                IndexModel("purge_at", expireAfterSeconds=0, name="purge_at"),
            ]
        )

    async def add(
        self, did: str, endpoint_id: str, kind: str, notification_id: str, body: str
    ) -> dict | None:
        """Store a new pending delivery; None when this one was stored already."""
        now = utcnow()
        record = {
            "_id": did,
            "webhook_id": f"msg_{did}",
            "endpoint_id": endpoint_id,
            "type": kind,
            "notification_id": notification_id,
            "status": PENDING,
            "attempts": 0,
            "last_status": None,
            "next_attempt_at": now,
            "created_at": now,
            "purge_at": now + self.retention,
            "body": body,
        }
        try:
            await self.collection.insert_one(record)
        except DuplicateKeyError:
            return None
        return record

    async def get(self, did: str) -> dict | None:
        """One delivery, or None."""
        return await self.collection.find_one({"_id": did})

    async def attempted(
        self, did: str, status: str, code: int | None, next_at: datetime | None
    ) -> None:
        """Record one attempt's outcome: the HTTP status (None: no answer) and what follows."""
        await self.collection.update_one(
            {"_id": did},
            {
                "$set": {"status": status, "last_status": code, "next_attempt_at": next_at},
                "$inc": {"attempts": 1},
            },
        )

    async def list(self, endpoint_id: str, status: str | None, limit: int) -> list[dict]:
        """An endpoint's deliveries, newest first, optionally of one status."""
        query: dict = {"endpoint_id": endpoint_id}
        if status:
            query["status"] = status
        sort = [("created_at", DESCENDING), ("_id", DESCENDING)]
        return await self.collection.find(query, {"body": 0}, sort=sort, limit=limit).to_list()

    async def forget_endpoint(self, endpoint_id: str) -> None:
        """Delete the deliveries of a deleted endpoint."""
        await self.collection.delete_many({"endpoint_id": endpoint_id})


def public(record: dict) -> dict:
    """A delivery as the API shows it (CONTRACT §9)."""
    return {
        "id": record["_id"],
        "webhook_id": record["webhook_id"],
        "type": record["type"],
        "notification_id": record["notification_id"],
        "status": record["status"],
        "attempts": record["attempts"],
        "last_status": record.get("last_status"),
        "next_attempt_at": iso(record.get("next_attempt_at")),
        "created_at": iso(record.get("created_at")),
    }
