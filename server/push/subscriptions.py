"""The ``push_subscriptions`` collection: a user's devices that accept Web Push.

A subscription's ``_id`` is derived from its endpoint, so the same browser subscribing again
updates its one row (also when two requests race), and the row moves to whoever subscribed
last: a shared computer's browser reaches the patient now using it, not the one before.
Keys are kept to encrypt with and never leave the service.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.app.timeutil import as_datetime, iso

MAX_PER_USER = 20  # devices of one user; a 21st is a 409


def subscription_id(endpoint: str) -> str:
    """The id of the subscription of an endpoint (stable, not guessable from outside)."""
    return hashlib.sha256(endpoint.encode()).hexdigest()[:24]


def public(sub: dict) -> dict:
    """A subscription as the API shows it: no keys."""
    return {
        "id": sub["_id"],
        "endpoint": sub["endpoint"],
        "device": sub.get("device"),
        "created_at": iso(sub["created_at"]),
    }


class Subscriptions:
    """Stores and finds push subscriptions."""

    def __init__(self, db: AsyncDatabase):
        self.collection = db.push_subscriptions

    async def create_indexes(self) -> None:
        """By user (sending, listing) and by role (broadcasts)."""
        await self.collection.create_indexes(
            [
                IndexModel([("user_id", ASCENDING)], name="user"),
                IndexModel([("roles", ASCENDING)], name="roles"),
            ]
        )

    async def count(self, user_id: str) -> int:
        """How many devices a user has subscribed."""
        return await self.collection.count_documents({"user_id": user_id})

    async def put(
        self, user_id: str, roles: list[str], sub: dict, now: datetime
    ) -> tuple[dict, bool]:
        """Store or update a subscription; True if it is new for this user."""
        sid = subscription_id(sub["endpoint"])
        fields = {
            "user_id": user_id,
            "roles": list(roles),
            "endpoint": sub["endpoint"],
            "p256dh": sub["keys"]["p256dh"],
            "auth": sub["keys"]["auth"],
            "device": sub.get("device"),
            "expiration_time": sub.get("expirationTime"),
            "updated_at": now,
        }
        try:
            await self.collection.insert_one({"_id": sid, **fields, "created_at": now})
            return {"_id": sid, **fields, "created_at": now}, True
        except DuplicateKeyError:
            pass  # known: update it in place (one row per endpoint, also when racing)
        before = await self.collection.find_one_and_update(
            {"_id": sid}, {"$set": fields}, return_document=ReturnDocument.BEFORE
        )
        moved = before is None or before.get("user_id") != user_id
        created_at = now if moved else as_datetime(before["created_at"])
        if moved:  # another user's browser until now: a new device for this user
            await self.collection.update_one({"_id": sid}, {"$set": {"created_at": now}})
        return {"_id": sid, **fields, "created_at": created_at}, moved

    async def list(self, user_id: str) -> list[dict]:
        """A user's subscriptions, oldest first."""
        cursor = self.collection.find({"user_id": user_id}, sort=[("created_at", ASCENDING)])
        return await cursor.to_list()

    async def delete(self, user_id: str, sid: str) -> bool:
        """Remove one of a user's subscriptions; False if there was none."""
        result = await self.collection.delete_one({"_id": sid, "user_id": user_id})
        return result.deleted_count == 1

    async def gone(self, sid: str, endpoint: str) -> None:
        """Remove a subscription the push service says is gone (unless re-subscribed since)."""
        await self.collection.delete_one({"_id": sid, "endpoint": endpoint})

    async def for_users(self, user_ids: list[str]) -> dict[str, list[dict]]:
        """The subscriptions of these users, by user."""
        found: dict[str, list[dict]] = {}
        async for sub in self.collection.find({"user_id": {"$in": list(set(user_ids))}}):
            found.setdefault(sub["user_id"], []).append(sub)
        return found

    async def get(self, sid: str) -> dict | None:
        """One subscription by id."""
        return await self.collection.find_one({"_id": sid})

    async def subscribed(self, user_ids: list[str]) -> set[str]:
        """Which of these users have at least one subscription."""
        cursor = self.collection.find({"user_id": {"$in": list(set(user_ids))}}, {"user_id": 1})
        return {d["user_id"] async for d in cursor}

    async def audience_page(self, audience: str, after: str | None, limit: int) -> list[dict]:
        """A page of the subscriptions of a broadcast's audience, in id order."""
        # $in, not equality: the embedded server's multikey index misses {"roles": "x"}.
        query: dict = {} if audience == "all" else {"roles": {"$in": [audience]}}
        if after is not None:
            query["_id"] = {"$gt": after}
        cursor = self.collection.find(query, sort=[("_id", ASCENDING)], limit=limit)
        return await cursor.to_list()

    async def counts(self, user_ids: list[str]) -> dict[str, int]:
        """Subscribed devices per user, for the dashboard."""
        counts: dict[str, int] = {}
        async for d in self.collection.find({"user_id": {"$in": user_ids}}, {"user_id": 1}):
            counts[d["user_id"]] = counts.get(d["user_id"], 0) + 1
        return counts
