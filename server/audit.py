"""The audit trail in MongoDB: who did what, never a notification body or a credential."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from server.metrics import METRICS
from server.timeutil import utcnow

log = logging.getLogger("notify.audit")


class Audit:
    """Writes and reads audit entries (collection ``audit``, kept ``retention_days``)."""

    def __init__(self, db: AsyncDatabase, retention_days: int = 365):
        self.collection = db.audit
        self.retention = timedelta(days=retention_days)

    async def create_indexes(self) -> None:
        """The TTL and lookup indexes."""
        await self.collection.create_index("purge_at", expireAfterSeconds=0, name="purge_ttl")
        await self.collection.create_index([("at", DESCENDING)], name="at")

    async def record(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        """Append one entry; a storage failure is counted and logged, never raised."""
        now = utcnow()
        entry = {
            "_id": str(ObjectId()),
            "at": now,
            "actor": actor,
            "action": action,
            "target": target,
            "detail": detail,
            "purge_at": now + self.retention,
        }
        try:
            await self.collection.insert_one(entry)
        except PyMongoError:
            METRICS.storage_errors.inc()
            log.warning("could not write an audit entry for %s", action)

    async def recent(
        self,
        limit: int = 100,
        before: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[dict]:
        """Entries newest first, optionally filtered."""
        query: dict[str, Any] = {}
        if before is not None:
            query["at"] = {"$lt": before}
        if actor:
            query["actor"] = actor
        if action:
            query["action"] = action
        cursor = self.collection.find(query, sort=[("at", DESCENDING)], limit=limit)
        return await cursor.to_list()
