"""Every MongoDB query the staff dashboard makes: accounts, sessions, history, audiences.

Kept apart from ``store.py`` (the service's hot paths) because none of it runs per
notification or per socket: a page view or a staff action triggers it.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.app.errors import Conflict

# Most user ids read to size a broadcast's audience (a figure for the outcome, not a bill).
AUDIENCE_SCAN_LIMIT = 100_000


class StaffStore:
    """Collections ``staff`` and ``staff_sessions``; read-only views of the notification data."""

    def __init__(self, db: AsyncDatabase):
        self.db = db
        self.staff = db.staff
        self.sessions = db.staff_sessions
        self.notifications = db.notifications
        self.reads = db.reads
        self.users = db.users

    async def create_indexes(self) -> None:
        """Session expiry and lookups; read counts per broadcast for the history page."""
        await self.sessions.create_indexes(
            [
                IndexModel("expires_at", expireAfterSeconds=0, name="expiry_ttl"),
                IndexModel([("username", ASCENDING)], name="username"),
            ]
        )
        await self.reads.create_index([("notification_id", ASCENDING)], name="notification")

    # ---- accounts ----------------------------------------------------------------------

    async def insert_account(self, doc: dict) -> None:
        """Store a new account; a taken username is a Conflict."""
        try:
            await self.staff.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict("that username is taken", {"username": ["already taken"]}) from None

    async def account(self, username: str) -> dict | None:
        """One account by username."""
        return await self.staff.find_one({"_id": username})

    async def accounts(self) -> list[dict]:
        """Every account, by username, without password hashes."""
        cursor = self.staff.find({}, {"password_hash": 0}, sort=[("_id", ASCENDING)])
        return await cursor.to_list()

    async def any_account(self) -> bool:
        """True once at least one account exists."""
        return await self.staff.find_one({}, {"_id": 1}) is not None

    async def active_admins(self) -> list[str]:
        """Usernames of enabled admins."""
        docs = await self.staff.find({"role": "admin", "disabled": False}, {"_id": 1}).to_list()
        return [d["_id"] for d in docs]

    async def update_account(self, username: str, changes: dict) -> dict | None:
        """Set fields of an account; returns it (without its hash), or None if unknown."""
        return await self.staff.find_one_and_update(
            {"_id": username},
            {"$set": changes},
            projection={"password_hash": 0},
            return_document=ReturnDocument.AFTER,
        )

    # ---- sessions ----------------------------------------------------------------------

    async def insert_session(self, doc: dict) -> None:
        """Store a session (keyed by the hash of its cookie value)."""
        await self.sessions.insert_one(doc)

    async def session(self, digest: str) -> dict | None:
        """The session with this hash."""
        return await self.sessions.find_one({"_id": digest})

    async def delete_session(self, digest: str) -> None:
        """End one session."""
        await self.sessions.delete_one({"_id": digest})

    async def delete_sessions_of(self, username: str) -> None:
        """End every session of an account (disabled, or its password changed)."""
        await self.sessions.delete_many({"username": username})

    # ---- history -----------------------------------------------------------------------

    async def history(self, filters: dict[str, Any], before: str | None, limit: int) -> list[dict]:
        """Notifications and broadcasts newest first (``_id`` order: scheduled ones too)."""
        query = dict(filters)
        if before:
            query["_id"] = {"$lt": before}
        cursor = self.notifications.find(query, sort=[("_id", DESCENDING)], limit=limit)
        return await cursor.to_list()

    async def read_counts(self, ids: list[str]) -> dict[str, int]:
        """How many users have read each of these broadcasts."""
        if not ids:
            return {}
        docs = await self.reads.find(
            {"notification_id": {"$in": ids}}, {"notification_id": 1}
        ).to_list()
        counts: dict[str, int] = {}
        for doc in docs:
            counts[doc["notification_id"]] = counts.get(doc["notification_id"], 0) + 1
        return counts

    async def known_users(self, audience: str) -> set[str]:
        """Users seen on a socket who belong to a broadcast audience (``all`` or a role)."""
        query: dict[str, Any] = {} if audience == "all" else {"roles": audience}
        docs = await self.users.find(query, {"_id": 1}, limit=AUDIENCE_SCAN_LIMIT).to_list()
        return {d["_id"] for d in docs}

    async def scheduled(self, limit: int) -> list[dict]:
        """Notifications waiting for their ``deliver_at`` (feed/scheduler.py), soonest first."""
        cursor = self.db.scheduled.find(
            {"doc": {"$exists": True}}, sort=[("deliver_at", ASCENDING)], limit=limit
        )
        return [entry["doc"] | {"state": entry.get("state")} for entry in await cursor.to_list()]
