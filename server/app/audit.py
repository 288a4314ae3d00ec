"""The audit trail in MongoDB: who did what, never a notification body or a credential.

``record`` writes an entry and waits for it (staff actions, rare). ``note`` is for hot
paths (feed reads, sockets opening and closing): it queues the entry and returns at once;
a background task writes the queue in batches. The queue is bounded: when storage is down
for long, the oldest waiting entries are dropped and counted (``notify_audit_dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError

from server.app.metrics import METRICS
from server.app.timeutil import millis, utcnow

log = logging.getLogger("notify.audit")

QUEUE_MAX = 20000
BATCH = 500
COALESCE = 0.05  # seconds the writer waits for more entries before a write


def actor_of(principal: Any) -> str:
    """How an audit entry names a caller: ``api_key:<id>`` or ``user:<token subject>``."""
    kind = "api_key" if principal.kind == "api_key" else "user"
    return f"{kind}:{principal.id}"


class Audit:
    """Writes and reads audit entries (collection ``audit``, kept ``retention_days``)."""

    def __init__(self, db: AsyncDatabase, retention_days: int = 365):
        self.collection = db.audit
        self.retention = timedelta(days=retention_days)
        self._queue: list[dict] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    async def create_indexes(self) -> None:
        """The TTL and lookup indexes."""
        # Not (at_ms, _id): the embedded server refuses every insert into a collection with
        # _id inside another index.
        await self.collection.create_indexes(
            [
                IndexModel("purge_at", expireAfterSeconds=0, name="purge_ttl"),
                IndexModel([("at_ms", DESCENDING)], name="at_ms"),
            ]
        )

    def entry(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> dict:
        """The stored form of one entry (kept until its ``purge_at``)."""
        now = utcnow()
        return {
            "_id": str(ObjectId()),
            "at": now,
            "at_ms": millis(now),  # the page order; see ``recent``
            "actor": actor,
            "action": action,
            "target": target,
            "detail": detail,
            "purge_at": now + self.retention,
        }

    def note(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        """Queue one entry without waiting (hot paths); written shortly by the writer task."""
        if len(self._queue) >= QUEUE_MAX:
            del self._queue[0]
            METRICS.audit_dropped.inc()
        self._queue.append(self.entry(actor, action, target, detail))
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        """Start the writer of queued entries."""
        self._task = asyncio.create_task(self._run(), name="audit")

    async def flush(self, within: float = 5.0) -> None:
        """Wait until every queued entry is written (or ``within`` seconds pass)."""
        if self._task is None or self._task.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)

    async def stop(self) -> None:
        """Write what is queued (briefly), then stop the writer."""
        await self.flush(2.0)
        # The driver can swallow a cancellation that lands mid-write, and the writer would
        # then wait for entries for good: cancel again until it has ended.
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.5)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE)  # a wave of sockets opening: one write, not dozens
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                if await self._write(batch):
                    delay = 0.1
                    if len(self._queue) < BATCH:  # not a full batch yet: let more gather
                        await asyncio.sleep(COALESCE)
                    continue
                room = max(QUEUE_MAX - len(self._queue), 0)
                kept = batch[len(batch) - room :] if room < len(batch) else batch
                if len(kept) < len(batch):
                    METRICS.audit_dropped.inc(len(batch) - len(kept))
                self._queue[:0] = kept
                await asyncio.sleep(delay)  # storage down: the queue waits, bounded
                delay = min(delay * 2, 5.0)
            self._idle.set()

    async def _write(self, batch: list[dict]) -> bool:
        try:
            await self.collection.insert_many(batch, ordered=False)
        except BulkWriteError as exc:  # a retried batch: entries already in are fine
            errors = exc.details.get("writeErrors", [])
            if all(e.get("code") == 11000 for e in errors):
                return True
            METRICS.storage_errors.inc()
            return False
        except PyMongoError:
            METRICS.storage_errors.inc()
            log.warning("could not write %d audit entries yet", len(batch))
            return False
        return True

    async def record(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        """Append one entry; a storage failure is counted and logged, never raised."""
        entry = self.entry(actor, action, target, detail)
        try:
            await self.collection.insert_one(entry)
        except PyMongoError:
            METRICS.storage_errors.inc()
            log.warning("could not write an audit entry for %s", action)

    async def recent(
        self,
        limit: int = 100,
        before: str | None = None,
        actor: str | None = None,
        action: str | None = None,
    ) -> list[dict]:
        """Entries newest first, optionally filtered; ``before`` is a ``page_key``.

        Paged by (``at_ms``, ``_id``), not by time alone: entries often share a millisecond
        (a wave of sockets opening), and the embedded server compares dates to the second,
        so ``at < t`` would skip the rest of a page's last second there. The entries of the
        key's own millisecond that came before it are left out here rather than by an
        ``$or``, which the embedded server runs as a full scan.
        """
        query: dict[str, Any] = {}
        if actor:
            query["actor"] = actor
        if action:
            query["action"] = action
        if before is None:
            return await self._newest(query, limit)
        at_ms, last_id = parse_page_key(before)
        shown = {**query, "at_ms": {"$eq": at_ms}, "_id": {"$gte": last_id}}
        skip = len(await self.collection.find(shown, {"_id": 1}).to_list())
        found = await self._newest({**query, "at_ms": {"$lte": at_ms}}, limit + skip)
        older = [e for e in found if e["at_ms"] < at_ms or e["_id"] < last_id]
        return older[:limit]

    async def _newest(self, query: dict[str, Any], limit: int) -> list[dict]:
        order = [("at_ms", DESCENDING), ("_id", DESCENDING)]
        return await self.collection.find(query, sort=order, limit=limit).to_list()


def page_key(entry: dict) -> str:
    """Where the page after ``entry`` starts: ``<at_ms>.<_id>``."""
    return f"{entry['at_ms']}.{entry['_id']}"


def parse_page_key(key: str) -> tuple[int, str]:
    """A ``page_key`` back into (``at_ms``, ``_id``); the schema has checked its shape."""
    at_ms, last_id = key.split(".", 1)
    return int(at_ms), last_id
