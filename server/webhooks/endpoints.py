"""Registered webhook endpoints (the ``webhooks`` collection) and each node's cached list.

Every timeline event asks which endpoints want it, so the answer comes from memory: the list
is read again at most every ``cache_seconds`` (one small query), and at once on the node that
created or deleted an endpoint. With no endpoint registered an event costs a dict lookup.
"""

from __future__ import annotations

import asyncio
import time

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from server.app.timeutil import iso, utcnow
from server.webhooks.signing import new_secret


class Endpoints:
    """Create, list and delete webhook endpoints; ``wanting`` answers from a short cache."""

    def __init__(self, db: AsyncDatabase, cache_seconds: float):
        self.collection = db.webhooks
        self.cache_seconds = cache_seconds
        self._cached: list[dict] = []
        self._read_at = float("-inf")
        self._refreshing: asyncio.Future | None = None
        self._changes = 0  # this node's changes: a read begun before one is stale at once

    async def create_indexes(self) -> None:
        """Newest first for the list."""
        await self.collection.create_index([("created_at", ASCENDING)], name="created_at")

    async def create(self, url: str, events: list[str], description: str | None) -> dict:
        """Store a new endpoint with a fresh signing secret; the record (secret included)."""
        record = {
            "_id": str(ObjectId()),
            "url": url,
            "events": list(dict.fromkeys(events)),
            "description": description,
            "secret": new_secret(),
            "created_at": utcnow(),
        }
        await self.collection.insert_one(record)
        self.forget()
        return record

    async def list(self) -> list[dict]:
        """Every endpoint, newest first, without secrets."""
        cursor = self.collection.find({}, {"secret": 0}, sort=[("created_at", DESCENDING)])
        return await cursor.to_list()

    async def get(self, endpoint_id: str) -> dict | None:
        """One endpoint with its secret, or None."""
        return await self.collection.find_one({"_id": endpoint_id})

    async def delete(self, endpoint_id: str) -> bool:
        """Remove an endpoint; False if there was none."""
        deleted = (await self.collection.delete_one({"_id": endpoint_id})).deleted_count == 1
        self.forget()
        return deleted

    def forget(self) -> None:
        """Read the list again on the next event (this node changed it)."""
        self._read_at = float("-inf")
        self._changes += 1
        self._refreshing = None  # a read under way may have missed the change

    async def wanting(self, kind: str) -> list[dict]:
        """The endpoints subscribed to an event type (from the cache, refreshed when stale)."""
        if time.monotonic() - self._read_at > self.cache_seconds:
            await self._refresh()
        return [e for e in self._cached if kind in e["events"]]

    async def sending(self, endpoint_id: str) -> dict | None:
        """An endpoint to send to (URL and secret), from the cache (refreshed when stale)."""
        if time.monotonic() - self._read_at > self.cache_seconds:
            await self._refresh()
        for endpoint in self._cached:
            if endpoint["_id"] == endpoint_id:
                return endpoint
        # Deleted, or made on another node since this one last read the list.
        return await self.get(endpoint_id)

    async def _refresh(self) -> None:
        # One read however many events arrive while it runs.
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read())
        future = self._refreshing
        try:
            await asyncio.shield(future)
        finally:
            if self._refreshing is future and future.done():
                self._refreshing = None

    async def _read(self) -> None:
        started, changes = time.monotonic(), self._changes
        fields = {"events": 1, "url": 1, "secret": 1}
        self._cached = await self.collection.find({}, fields).to_list()
        if changes == self._changes:
            self._read_at = started


def public(record: dict, secret: bool = False) -> dict:
    """An endpoint as the API shows it (the secret only when just created)."""
    out = {
        "id": record["_id"],
        "url": record["url"],
        "events": record["events"],
        "description": record.get("description"),
        "created_at": iso(record.get("created_at")),
    }
    if secret:
        out["secret"] = record["secret"]
    return out
