"""The due-work queue: work that must happen later, done by exactly one node.

Every kind of later work is one entry in one collection, claimed with a lease: a scheduled
notification (kind ``send``, sent at ``deliver_at``), and the kinds other capabilities
register with ``Scheduler.register`` (a push after its grace period, an escalation step, a
webhook retry). A kind's handler gets the entries claimed for it; what it does not ask to
retry is done and deleted. An entry's ``_id`` is its key, so enqueueing the same work twice
stores it once: that, and the claim below, is what makes "exactly once" hold across nodes.

For scheduled notifications:

A scheduled notification waits in the ``scheduled`` collection under the ``_id`` it will
have in ``notifications``. Every node runs a loop that sleeps until the earliest due time
(woken early when this node schedules something sooner, and never longer than the poll
bound, which is how it hears of other nodes' schedules), then claims what is due with one
conditional update: each entry moves to ``sending`` with a claim token and a lease, and an
entry can match only one node's update. The claimer appends the notifications to the feed
under their own ``_id`` and then deletes the entries. A node that dies mid-send leaves its
lease to run out, and another node takes the entries again; if the first had already
appended them, the unique ``_id`` refuses the second insert, the sequencer reports them as
already stored, and they are counted as sent: nothing is sent twice.

The time the claim compares is kept as epoch milliseconds (``claim_ms``): the embedded
server keeps a datetime written by ``$set`` as text (see ``server/app/store.py``) and compares
dates to the whole second only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from server.app.errors import Conflict, StorageUnavailable
from server.app.group_commit import GroupCommit
from server.app.metrics import METRICS
from server.app.timeutil import millis, utcnow
from server.feed.sequencer import Sequencer

log = logging.getLogger("notify.scheduler")

PENDING, SENDING = "pending", "sending"
SEND = "send"  # the kind of a scheduled notification (entries written before kinds had none)
RETRY_AFTER_FAILURE = 2.0  # seconds before a claim that failed to send is free again
BATCH = 500


# A kind's handler: given the entries claimed for it, returns the ids of those to try again
# and when (epoch ms); every other entry is done. Raising retries them all a little later.
Handler = Callable[[list[dict]], Awaitable[dict[str, int] | None]]


def _entry(
    kind: str, key: str, due_ms: int, payload: dict[str, Any], ref: str | None, now: datetime
) -> dict:
    """A pending queue entry (see ``ScheduledStore``)."""
    entry = {
        "_id": key,
        "kind": kind,
        "state": PENDING,
        "claim_ms": due_ms,
        "claimed_by": None,
        "claim": None,
        "attempts": 0,
        "scheduled_at": now,
        "payload": payload,
    }
    if ref is not None:
        entry["ref"] = ref
    return entry


class ScheduledStore:
    """The ``scheduled`` collection: the due-work queue.

    An entry is ``{_id, kind, state, claim_ms, claimed_by, claim, attempts, ref, ...}``:
    a scheduled notification adds ``deliver_at`` and ``doc`` (the notification as it will be
    stored), other kinds a ``payload``; ``ref`` names the notification the work is about.
    ``claim_ms`` is when the entry may next be claimed: its due time while pending, the end
    of the lease while claimed. Entries are deleted once done, cancelled or expired.
    """

    def __init__(self, db: AsyncDatabase):
        self.collection = db.scheduled

    async def create_indexes(self) -> None:
        """The due-time index the claim and the sleep both use."""
        await self.collection.create_indexes(
            [
                IndexModel([("claim_ms", ASCENDING)], name="claim_ms"),
                IndexModel([("ref", ASCENDING)], name="ref", sparse=True),
            ]
        )

    async def put(
        self, kind: str, key: str, due_ms: int, payload: dict[str, Any], ref: str | None = None
    ) -> bool:
        """Enqueue one piece of work under its key; False if that key is already queued."""
        try:
            await self.collection.insert_one(_entry(kind, key, due_ms, payload, ref, utcnow()))
        except DuplicateKeyError:
            return False
        return True

    async def put_many(
        self, entries: list[tuple[str, str, int, dict[str, Any], str | None]]
    ) -> None:
        """Enqueue several ``(kind, key, due_ms, payload, ref)`` in one write; keys already
        queued are kept as they are."""
        now = utcnow()
        docs = [
            _entry(kind, key, due_ms, payload, ref, now)
            for kind, key, due_ms, payload, ref in entries
        ]
        try:
            await self.collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    async def drop(self, ref: str, kinds: list[str]) -> int:
        """Delete the pending work of these kinds about one notification; how many."""
        result = await self.collection.delete_many(
            {"ref": ref, "kind": {"$in": kinds}, "state": PENDING}
        )
        return result.deleted_count

    async def add(self, docs: list[dict], now: datetime) -> None:
        """Store notifications to send later; all or none (best effort on a storage failure)."""
        entries = [
            {
                "_id": d["_id"],
                "kind": SEND,
                "state": PENDING,
                "deliver_at": d["deliver_at"],
                "claim_ms": millis(d["deliver_at"]),
                "claimed_by": None,
                "claim": None,
                "attempts": 0,
                "scheduled_at": now,
                "doc": d,
            }
            for d in docs
        ]
        try:
            await self.collection.insert_many(entries, ordered=True)
        except PyMongoError:
            with contextlib.suppress(PyMongoError):
                ids = [e["_id"] for e in entries]
                await self.collection.delete_many({"_id": {"$in": ids}, "state": PENDING})
            raise

    async def next_due_ms(self) -> int | None:
        """When the earliest entry may be claimed, or None if nothing waits."""
        first = await self.collection.find_one(
            {"claim_ms": {"$gte": 0}}, {"claim_ms": 1}, sort=[("claim_ms", ASCENDING)]
        )
        return None if first is None else int(first["claim_ms"])

    async def claim(self, node_id: str, now_ms: int, lease_ms: int, limit: int) -> list[dict]:
        """Atomically take up to ``limit`` entries due at ``now_ms`` for this node."""
        return await self.take(await self.due(now_ms, limit), node_id, now_ms, lease_ms)

    async def due(self, now_ms: int, limit: int) -> list[str]:
        """Ids of entries claimable at ``now_ms``, soonest first (another node may race us)."""
        cursor = self.collection.find(
            {"claim_ms": {"$lte": now_ms}}, {"_id": 1}, sort=[("claim_ms", ASCENDING)], limit=limit
        )
        return [d["_id"] for d in await cursor.to_list()]

    async def take(self, ids: list[str], node_id: str, now_ms: int, lease_ms: int) -> list[dict]:
        """Claim those of ``ids`` still claimable; returns the entries this call won.

        Each entry is updated only if it is still claimable, so when nodes race for one,
        exactly one update matches it; the claim token tells which entries this call won.
        """
        if not ids:
            return []
        token = str(ObjectId())
        await self.collection.update_many(
            {"_id": {"$in": ids}, "claim_ms": {"$lte": now_ms}},
            {
                "$set": {
                    "state": SENDING,
                    "claim_ms": now_ms + lease_ms,
                    "claim": token,
                    "claimed_by": node_id,
                },
                "$inc": {"attempts": 1},
            },
        )
        return await self.collection.find({"_id": {"$in": ids}, "claim": token}).to_list()

    async def done(self, entries: list[dict]) -> None:
        """Remove entries this claim sent (or found expired); a retaken entry is left alone."""
        for token in {e["claim"] for e in entries}:
            ids = [e["_id"] for e in entries if e["claim"] == token]
            await self.collection.delete_many({"_id": {"$in": ids}, "claim": token})

    async def release(self, entries: list[dict], at_ms: int) -> None:
        """Let any node retake these claimed entries from ``at_ms`` (still ``sending``)."""
        for token in {e["claim"] for e in entries}:
            ids = [e["_id"] for e in entries if e["claim"] == token]
            await self.collection.update_many(
                {"_id": {"$in": ids}, "claim": token}, {"$set": {"claim_ms": at_ms}}
            )

    async def retry(self, entries: list[dict], at_ms: dict[str, int]) -> None:
        """Free claimed entries for another attempt, each at its own time."""
        # One write per claim and time: a handler that leases a whole batch (webhooks) gives
        # every entry the same time, and the loop should not wait for a write per entry.
        groups: dict[tuple[str, int], list[str]] = {}
        for entry in entries:
            groups.setdefault((entry["claim"], at_ms[entry["_id"]]), []).append(entry["_id"])
        for (claim, when), ids in groups.items():
            await self.collection.update_many(
                {"_id": {"$in": ids}, "claim": claim},
                {"$set": {"claim_ms": when, "state": PENDING}},
            )

    async def settle(self, entry: dict, at_ms: int | None) -> bool:
        """Finish a claimed entry whose work went on after its handler returned.

        ``at_ms`` None deletes it, else it is free again from ``at_ms``. The claim token is
        replaced, so the scheduler's own later update of the same claim changes nothing;
        False when another node retook the entry meanwhile (its lease ran out).
        """
        match = {"_id": entry["_id"], "claim": entry["claim"]}
        if at_ms is None:
            return (await self.collection.delete_one(match)).deleted_count == 1
        change = {"claim_ms": at_ms, "state": PENDING, "claim": str(ObjectId())}
        return (await self.collection.update_one(match, {"$set": change})).matched_count == 1

    async def cancel(self, entry_id: str) -> dict | None:
        """Delete a pending entry (not claimed yet); returns it, or None."""
        return await self.collection.find_one_and_delete({"_id": entry_id, "state": PENDING})

    async def get(self, entry_id: str) -> dict | None:
        """One entry by id."""
        return await self.collection.find_one({"_id": entry_id})


class Scheduler:
    """This node's share of the due work: scheduled notifications and registered kinds."""

    def __init__(
        self,
        store: ScheduledStore,
        sequencer: Sequencer,
        node_id: str,
        retention: timedelta,
        lease_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        write_timeout: float = 5.0,
    ):
        self.store = store
        self.sequencer = sequencer
        self.node_id = node_id
        self.retention = retention
        self.lease_ms = int(lease_seconds * 1000)
        self.poll = poll_seconds
        self._wake = asyncio.Event()
        self._wake_ms: int | None = None  # when the sleeping loop looks next; None: awake
        self._holding: list[dict] = []  # entries claimed and not yet finished
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.handlers: dict[str, Handler] = {SEND: self._send}
        # Planners of concurrent requests queue their work in one write.
        self._queued = GroupCommit(self.store.put_many, write_timeout)

    def register(self, kind: str, handler: Handler) -> None:
        """Have ``handler`` do the entries of ``kind`` when they are due."""
        self.handlers[kind] = handler

    async def enqueue(
        self,
        kind: str,
        key: str,
        due_at: datetime,
        payload: dict[str, Any] | None = None,
        ref: str | None = None,
    ) -> bool:
        """Queue work of a registered kind for ``due_at``; False if ``key`` is queued already."""
        due_ms = millis(due_at)
        added = await self.store.put(kind, key, due_ms, payload or {}, ref)
        if added and (self._wake_ms is None or due_ms < self._wake_ms):
            self._wake.set()
        return added

    async def enqueue_many(self, work: list[tuple[str, str, datetime, dict, str | None]]) -> None:
        """Queue several ``(kind, key, due_at, payload, ref)`` in one write with those of
        other callers at the same moment; keys already queued stay as they are."""
        if not work:
            return
        entries = [(k, key, millis(due), p, ref) for k, key, due, p, ref in work]
        await self._queued.add(entries)
        earliest = min(e[2] for e in entries)
        if self._wake_ms is None or earliest < self._wake_ms:
            self._wake.set()

    async def drop(self, ref: str, kinds: list[str]) -> int:
        """Forget pending work of these kinds about notification ``ref``."""
        return await self.store.drop(ref, kinds)

    async def settle(self, entry: dict, at: datetime | None) -> bool:
        """Finish an entry a handler handed on to background work (see ``ScheduledStore``).

        Such a handler returns ``{entry_id: lease_end_ms}`` for it, so that another node
        takes it again if this one dies; the background work then settles it: done (None),
        or due again at ``at``.
        """
        at_ms = None if at is None else millis(at)
        settled = await self.store.settle(entry, at_ms)
        if at_ms is not None and (self._wake_ms is None or at_ms < self._wake_ms):
            self._wake.set()
        return settled

    def start(self) -> None:
        """Start the loop."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        """Stop the loop; what it held mid-send is released for another node at once."""
        if self._task:
            # Python 3.11's wait_for swallows a cancel that arrives as the event it waits
            # for is set (the loop then ran on, and stop() waited for ever): the loop also
            # checks this flag.
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._holding:
            with contextlib.suppress(PyMongoError):
                await self.store.release(self._holding, millis(utcnow()))
            self._holding = []

    async def schedule(self, docs: list[dict]) -> list[dict]:
        """Store notifications to send at their ``deliver_at``; returns them unsent."""
        try:
            await self.store.add(docs, utcnow())
        except PyMongoError as exc:
            raise StorageUnavailable("storage is unavailable") from exc
        earliest = min(millis(d["deliver_at"]) for d in docs)
        if self._wake_ms is None or earliest < self._wake_ms:
            self._wake.set()
        return docs

    async def cancel(self, notification_id: str) -> dict | None:
        """Cancel a notification not yet sent: its document, None if unknown, 409 if sending."""
        entry = await self.store.cancel(notification_id)
        if entry is not None:
            return entry["doc"]
        if await self.store.get(notification_id) is not None:
            raise Conflict("this notification is being sent")
        return None

    async def send_due(self) -> int:
        """Claim what is due now and do it; returns how many entries were claimed."""
        entries = await self.store.claim(self.node_id, millis(utcnow()), self.lease_ms, BATCH)
        if not entries:
            return 0
        self._holding = entries
        by_kind: dict[str, list[dict]] = {}
        for entry in entries:
            by_kind.setdefault(entry.get("kind") or SEND, []).append(entry)
        failed: Exception | None = None
        for kind, mine in by_kind.items():
            try:
                await self._do(kind, mine)
            except Exception as exc:  # one kind's failure must not hold up the others
                failed = failed or exc
        self._holding = []
        if failed is not None:
            raise failed
        return len(entries)

    async def _do(self, kind: str, entries: list[dict]) -> None:
        """Run one kind's handler; done entries are deleted, the others freed to retry."""
        handler = self.handlers.get(kind)
        if handler is None:  # a kind this node's version does not know: leave it to others
            log.warning("no handler for %d entries of kind %s", len(entries), kind)
            await self.store.release(entries, millis(utcnow()) + self.lease_ms)
            return
        try:
            again = await handler(entries) or {}
        except Exception:
            retry_ms = millis(utcnow()) + int(RETRY_AFTER_FAILURE * 1000)
            with contextlib.suppress(PyMongoError):
                await self.store.release(entries, retry_ms)
            raise
        if again:
            await self.store.retry([e for e in entries if e["_id"] in again], again)
        await self.store.done([e for e in entries if e["_id"] not in again])

    async def _send(self, entries: list[dict]) -> None:
        """Send scheduled notifications (kind ``send``) into the feed."""
        now = utcnow()
        live = [e for e in entries if e["doc"]["visible_until"] > now]
        if len(live) < len(entries):
            log.info("%d scheduled notifications expired unsent", len(entries) - len(live))
        docs = [self._ready(e["doc"], now) for e in live]
        if docs:
            await self.sequencer.append(docs, idempotent=True)
        for doc in docs:
            if doc.get("seq") is not None:
                METRICS.created.labels(doc["type"]).inc()

    def _ready(self, doc: dict, now: datetime) -> dict:
        """The notification as sent now: kept from its sending time, not its scheduling."""
        expires = doc.get("expires_at")
        return {**doc, "purge_at": (expires or now) + self.retention}

    async def _run(self) -> None:
        while not self._stopping:
            # Busy, not asleep: anything scheduled from now on sets the event.
            self._wake_ms = None
            self._wake.clear()
            try:
                while await self.send_due() >= BATCH:
                    pass
                wait = await self._until_next()
            except (PyMongoError, StorageUnavailable) as exc:
                METRICS.storage_errors.inc()
                log.warning("scheduled delivery failed: %s", type(exc).__name__)
                wait = self.poll
            except Exception:  # the loop must outlive any one bad batch
                log.exception("scheduled delivery failed")
                wait = self.poll
            self._wake_ms = millis(utcnow()) + int(wait * 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _until_next(self) -> float:
        """Seconds to sleep: until the next due entry, at most the poll bound."""
        due = await self.store.next_due_ms()
        if due is None:
            return self.poll
        left = (due - millis(utcnow())) / 1000
        return min(self.poll, max(0.002, left + 0.002))
