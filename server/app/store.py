"""Every MongoDB query of the service lives here (PyMongo's ``AsyncMongoClient``).

The store knows documents, never sockets. Times are aware UTC datetimes; ids are strings.
Queries avoid ``$or`` and ``count_documents`` on hot paths: the embedded server runs both
as full scans, and the same shapes are as fast on a real MongoDB. For the same reason the
leading field of an index is matched with ``{"$eq": v}``, never a bare ``v`` or ``$in``: the
embedded server turns those into array-or-scalar matches that no index serves (a full scan
per query, 20 ms at 10,000 documents), while ``$eq`` becomes a plain indexed comparison; a
null match is written ``{"$eq": None}`` too (a quarter less database time for the unread
query there). On MongoDB both forms mean the same for these scalar fields.

The embedded server stores a datetime written by ``$set`` on an existing document as text
(see ``timeutil.as_datetime``): such fields are only displayed, never range-compared; a time
that a query compares after an update is kept as epoch milliseconds (``*_ms`` fields).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.errors import BulkWriteError, PyMongoError

from server.app.errors import StorageUnavailable
from server.app.timeutil import as_datetime

log = logging.getLogger("notify.store")

# Stored in place of "never expires" so that visibility is a single range test.
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)
# ``visible_until`` of a hidden document (a failed batch's leftovers).
HIDDEN = datetime(1970, 1, 1, tzinfo=UTC)


def connect(uri: str, timeout_ms: int) -> AsyncMongoClient:
    """A client for the running loop; it connects lazily and fails fast when storage is down."""
    return AsyncMongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=max(timeout_ms * 3, 10000),
        appname="clinic-notify",
    )


class Store:
    """The service's collections and the queries on them."""

    def __init__(self, client: AsyncMongoClient, db_name: str, retention_days: int = 90):
        self.client = client
        self.db = client[db_name]
        self.retention = timedelta(days=retention_days)
        self.notifications = self.db.notifications
        self.reads = self.db.reads
        self.users = self.db.users
        self.api_keys = self.db.api_keys
        self.events = self.db.events
        self.meta = self.db.meta

    async def create_indexes(self) -> None:
        """Create every index; safe when several nodes start at once (same spec is a no-op)."""
        # One command per collection: a node (and every test) starts with a round trip each.
        await self.notifications.create_indexes(
            [
                IndexModel([("seq", ASCENDING)], unique=True, name="seq"),
                IndexModel([("user_id", ASCENDING), ("seq", DESCENDING)], name="user_seq"),
                IndexModel([("audience", ASCENDING), ("seq", DESCENDING)], name="audience_seq"),
                IndexModel([("user_id", ASCENDING), ("read_at", ASCENDING)], name="user_unread"),
                IndexModel("purge_at", expireAfterSeconds=0, name="purge_ttl"),
                IndexModel(
                    [
                        ("ack_required", ASCENDING),
                        ("acknowledged_at", ASCENDING),
                        ("seq", DESCENDING),
                    ],
                    name="ack_pending",
                ),
            ]
        )
        await self.reads.create_indexes(
            [
                IndexModel([("user_id", ASCENDING)], name="user"),
                IndexModel("purge_at", expireAfterSeconds=0, name="purge_ttl"),
            ]
        )
        await self.api_keys.create_index("hash", unique=True, name="hash")
        await self.events.create_index("at", expireAfterSeconds=3600, name="at_ttl")

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers."""
        try:
            await self.db.command("ping")
        except PyMongoError as exc:
            raise StorageUnavailable("storage is unreachable") from exc

    # ---- the sequenced feed -------------------------------------------------------------

    async def high_seq(self) -> int:
        """The highest sequence number ever used (kept in meta so TTL deletes never lower it)."""
        last = await self.notifications.find_one({}, {"seq": 1}, sort=[("seq", DESCENDING)])
        mark = await self.meta.find_one({"_id": "seq"})
        return max(last["seq"] if last else 0, mark["high"] if mark else 0)

    async def last_seq(self) -> int:
        """The highest seq stored now (one indexed read; ``high_seq`` also reads the mark)."""
        last = await self.notifications.find_one({}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return last["seq"] if last else 0

    async def append(self, docs: list[dict]) -> int:
        """Insert docs in seq order; returns how many went in before a seq was found taken.

        Raises ``AlreadyStored`` when a document's ``_id`` is already in the feed (a
        scheduled notification sent before a crash); the documents before it went in.
        """
        if not docs:
            return 0
        try:
            await self.notifications.insert_many(docs, ordered=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            taken = _duplicate_key(errors[0]) if errors else None
            if taken == "_id":
                raise AlreadyStored(int(errors[0]["index"])) from None
            if taken == "seq":
                return int(errors[0]["index"])
            raise
        return len(docs)

    async def hide(self, ids: list[str]) -> None:
        """Make notifications invisible to feeds and replay (a refused batch's leftovers)."""
        await self.notifications.update_many(
            {"_id": {"$in": ids}}, {"$set": {"visible_until": HIDDEN}}
        )

    async def mark_high_seq(self, seq: int) -> None:
        """Remember the highest sequence number used."""
        await self.meta.update_one({"_id": "seq"}, {"$max": {"high": seq}}, upsert=True)

    async def seq_range(self, after: int, upto: int | None = None, limit: int = 1000) -> list[dict]:
        """Sequenced documents with after < seq <= upto, in order."""
        bound: dict[str, int] = {"$gt": after}
        if upto is not None:
            bound["$lte"] = upto
        cursor = self.notifications.find({"seq": bound}, sort=[("seq", ASCENDING)], limit=limit)
        return await cursor.to_list()

    async def replay(
        self, user_id: str, audiences: list[str], after: int, limit: int, now: datetime
    ) -> list[dict]:
        """The newest ``limit`` visible items of a user's feed with seq > after, oldest first."""
        personal = {"user_id": {"$eq": user_id}, "seq": {"$gt": after}}
        personal["visible_until"] = {"$gt": now}
        shared = {"audience": {"$in": audiences}, "seq": {"$gt": after}}
        shared["visible_until"] = {"$gt": now}
        found = await self._merged(personal, shared, limit, DESCENDING)
        return sorted(found, key=lambda d: d["seq"])

    async def feed_page(
        self,
        user_id: str,
        audiences: list[str],
        now: datetime,
        critical: bool,
        before: int | None,
        kind: str | None,
        limit: int,
    ) -> list[dict]:
        """One section (critical or not) of a user's feed, newest first."""
        base: dict[str, Any] = {"visible_until": {"$gt": now}, "critical": critical}
        if before is not None:
            base["seq"] = {"$lt": before}
        if kind:
            base["type"] = kind
        personal = {"user_id": {"$eq": user_id}, **base}
        shared = {"audience": {"$in": audiences}, **base}
        return await self._merged(personal, shared, limit, DESCENDING)

    async def _merged(self, personal: dict, shared: dict, limit: int, order: int) -> list[dict]:
        sort = [("seq", order)]
        found = await self.notifications.find(personal, sort=sort, limit=limit).to_list()
        for audience in dict.fromkeys(shared["audience"]["$in"]):  # one indexed query each
            query = {**shared, "audience": {"$eq": audience}}
            found += await self.notifications.find(query, sort=sort, limit=limit).to_list()
        both = sorted(found, key=lambda d: d["seq"], reverse=order == DESCENDING)
        return both[:limit]

    async def unread_personal_ids(self, user_id: str, now: datetime) -> list[str]:
        """Ids of a user's own unread, visible notifications."""
        query = {"user_id": {"$eq": user_id}, "read_at": {"$eq": None}}
        query["visible_until"] = {"$gt": now}
        docs = await self.notifications.find(query, {"_id": 1}).to_list()
        return [d["_id"] for d in docs]

    async def unread_personal(self, user_id: str, now: datetime) -> dict[str, float]:
        """A user's own unread, visible notifications: id to visible-until (epoch seconds)."""
        query = {"user_id": {"$eq": user_id}, "read_at": {"$eq": None}}
        query["visible_until"] = {"$gt": now}
        docs = await self.notifications.find(query, {"_id": 1, "visible_until": 1}).to_list()
        return {d["_id"]: as_datetime(d["visible_until"]).timestamp() for d in docs}

    async def users_with_unread(self, now: datetime, limit: int) -> set[str] | None:
        """Every user with an unread, visible notification of their own; None past ``limit``."""
        pipeline = [
            {"$match": {"read_at": {"$eq": None}, "visible_until": {"$gt": now}}},
            {"$group": {"_id": "$user_id"}},
            {"$limit": limit + 2},  # + the broadcasts' None
        ]
        users = {d["_id"] async for d in await self.notifications.aggregate(pipeline)}
        users.discard(None)
        return users if len(users) <= limit else None

    async def broadcast_ids(self, audiences: list[str], now: datetime) -> list[str]:
        """Ids of the visible broadcasts to any of these audiences."""
        ids: list[str] = []
        for audience in dict.fromkeys(audiences):  # one indexed query per audience
            query = {"audience": {"$eq": audience}, "visible_until": {"$gt": now}}
            ids += [d["_id"] for d in await self.notifications.find(query, {"_id": 1}).to_list()]
        return ids

    async def visible_broadcasts(self, audience: str, now: datetime) -> list[dict]:
        """The broadcasts to one audience visible at ``now``, oldest first."""
        query = {"audience": {"$eq": audience}, "visible_until": {"$gt": now}}
        return await self.notifications.find(query, sort=[("seq", ASCENDING)]).to_list()

    async def read_map(self, user_id: str, ids: Iterable[str]) -> dict[str, datetime]:
        """Which of these broadcast ids the user has read, and when."""
        keys = [f"{user_id}|{i}" for i in ids]
        if not keys:
            return {}
        docs = await self.reads.find({"_id": {"$in": keys}}).to_list()
        return {d["notification_id"]: d["read_at"] for d in docs}

    async def get(self, notification_id: str) -> dict | None:
        """One sequenced notification or broadcast by id."""
        return await self.notifications.find_one({"_id": notification_id})

    async def mark_read(self, user_id: str, notification_id: str, now: datetime) -> bool:
        """Mark the user's own notification read; True if it was unread."""
        result = await self.notifications.update_one(
            {"_id": notification_id, "user_id": user_id, "read_at": {"$eq": None}},
            {"$set": {"read_at": now}},
        )
        return result.modified_count == 1

    async def mark_broadcasts_read(self, user_id: str, ids: list[str], now: datetime) -> int:
        """Record that a user read these broadcasts; returns how many were new."""
        if not ids:
            return 0
        already = await self.read_map(user_id, ids)
        fresh = [i for i in ids if i not in already]
        if not fresh:
            return 0
        purge = now + self.retention
        docs = [
            {"_id": f"{user_id}|{i}", "user_id": user_id, "notification_id": i, "read_at": now}
            | {"purge_at": purge}
            for i in fresh
        ]
        try:
            await self.reads.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            dups = [e for e in exc.details.get("writeErrors", []) if e.get("code") == 11000]
            if len(dups) != len(exc.details.get("writeErrors", [])):
                raise
            return len(fresh) - len(dups)
        return len(fresh)

    async def mark_all_read(self, user_id: str, ids: list[str], now: datetime) -> None:
        """Mark these personal notifications of a user read."""
        if ids:
            await self.notifications.update_many(
                {"_id": {"$in": ids}, "user_id": user_id, "read_at": {"$eq": None}},
                {"$set": {"read_at": now}},
            )

    async def mark_delivered(self, user_id: str, notification_id: str, now: datetime) -> None:
        """Record the first delivery receipt of a user's own notification."""
        await self.notifications.update_one(
            {"_id": notification_id, "user_id": user_id, "delivered_at": None},
            {"$set": {"delivered_at": now}},
        )

    async def acknowledge(self, notification_id: str, by: str, now: datetime) -> bool:
        """Record a person's acknowledgement of a notification; True if it was the first."""
        result = await self.notifications.update_one(
            {"_id": notification_id, "acknowledged_at": {"$eq": None}},
            {"$set": {"acknowledged_at": now, "acknowledged_by": by}},
        )
        return result.modified_count == 1

    async def unacknowledged(
        self, created_before: datetime, now: datetime, before_seq: int | None, limit: int
    ) -> list[dict]:
        """Visible personal notifications that need acknowledgement and lack it, newest first."""
        query: dict[str, Any] = {
            "ack_required": {"$eq": True},
            "acknowledged_at": {"$eq": None},
            # Personal only. Not $ne/$type: the embedded server mis-answers both combined
            # with the null test; a string range means the same on a real MongoDB.
            "user_id": {"$gt": ""},
            "created_at": {"$lte": created_before},
            "visible_until": {"$gt": now},
        }
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        cursor = self.notifications.find(query, sort=[("seq", DESCENDING)], limit=limit)
        return await cursor.to_list()

    # ---- users -------------------------------------------------------------------------

    async def remember_user(self, user_id: str, roles: list[str], now: datetime) -> None:
        """Record a user's roles as last seen (sockets note theirs through ``UserRecords``)."""
        await self.users.update_one(
            {"_id": user_id},
            {"$set": {"roles": roles, "last_seen": now}, "$setOnInsert": {"first_seen": now}},
            upsert=True,
        )

    async def user_roles(self, user_id: str) -> list[str]:
        """The roles a user last connected with, or none."""
        doc = await self.users.find_one({"_id": user_id}, {"roles": 1})
        return list(doc.get("roles", [])) if doc else []

    # ---- API keys ----------------------------------------------------------------------

    async def insert_api_key(self, doc: dict) -> None:
        """Store a new API key record (its hash, never the key)."""
        await self.api_keys.insert_one(doc)

    async def api_key_by_hash(self, digest: str) -> dict | None:
        """The key record with this hash, or None."""
        return await self.api_keys.find_one({"hash": digest})

    async def list_api_keys(self) -> list[dict]:
        """Every key record, newest first, without hashes."""
        cursor = self.api_keys.find({}, {"hash": 0}, sort=[("created_at", DESCENDING)])
        return await cursor.to_list()

    async def api_key_by_id(self, key_id: str) -> dict | None:
        """The key record with this id, without its hash, or None."""
        return await self.api_keys.find_one({"_id": key_id}, {"hash": 0})

    async def expire_api_key(self, key_id: str, at: datetime) -> None:
        """Make a key stop working at ``at`` (the end of a rotation's grace period)."""
        await self.api_keys.update_one({"_id": key_id}, {"$set": {"expires_at": at}})

    async def revoke_api_key(self, key_id: str, now: datetime) -> dict | None:
        """Revoke a key by id; returns the record, or None if no such key."""
        return await self.api_keys.find_one_and_update(
            {"_id": key_id},
            {"$set": {"revoked_at": now}},
            projection={"hash": 0},
            return_document=ReturnDocument.AFTER,
        )

    # ---- events between nodes ----------------------------------------------------------

    async def insert_event(self, event: dict) -> None:
        """Publish a small event (read state) for every node's bus."""
        await self.events.insert_one(event)

    async def events_since(self, since: datetime, limit: int = 5000) -> list[dict]:
        """Events published at or after ``since``, oldest first (a bus catching up)."""
        cursor = self.events.find({"at": {"$gte": since}}, sort=[("at", ASCENDING)], limit=limit)
        return await cursor.to_list()

    def watch(
        self, collection: str, resume_after: dict | None, skip_origin: str | None = None
    ) -> Any:
        """A change stream of inserts into one collection (collection-level: see DESIGN);
        ``skip_origin``: not the inserts whose ``origin`` is that (a node's own echoes)."""
        match: dict[str, Any] = {"operationType": "insert"}
        if skip_origin is not None:
            match["fullDocument.origin"] = {"$ne": skip_origin}
        pipeline = [{"$match": match}]
        return self.db[collection].watch(
            pipeline, resume_after=resume_after, max_await_time_ms=1000
        )


class AlreadyStored(Exception):
    """A document's ``_id`` is already in the feed; ``index`` is its place in the batch."""

    def __init__(self, index: int):
        super().__init__(f"document {index} of the batch is already stored")
        self.index = index


def _duplicate_key(error: dict) -> str | None:
    """Which unique key a write error refused: "_id", "seq", another, or None.

    MongoDB names the index in ``keyPattern``; the embedded server only in ``errmsg``
    ("UNIQUE constraint failed: notifications._id" or "... index 'idx_notifications_seq'").
    """
    if error.get("code") != 11000:
        return None
    pattern = error.get("keyPattern")
    if pattern:
        return next(iter(pattern))
    message = str(error.get("errmsg", ""))
    if "_id" in message:
        return "_id"
    return "seq" if "seq" in message else "other"


def is_hidden(doc: dict) -> bool:
    """True for a document ``hide`` made invisible (the embedded server reads it as text)."""
    until = doc.get("visible_until")
    if until is None or isinstance(until, datetime):
        return until is not None and until <= HIDDEN
    return str(until).startswith("1970-01-01")
