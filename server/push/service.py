"""When to push and to whom: the planner, the sweep and the push handler (CONTRACT §6, §7).

All push work is entries in the one due-work queue, so exactly one node does each, and a
node that dies mid-push leaves its entries to another when their lease runs out.

Keeping the ingest path cheap (issue 17): creating a notification adds no write for push
unless it is ``critical`` (queued at once by the planner, before it is stored). Every other
notification is found afterwards by one *sweep* entry that walks the feed in ``seq`` order
(the sequencer makes that the order documents become visible, with no gaps, on every node)
and queues ``push:<id>`` only for notifications whose grace period has passed, that no
socket acknowledged (``delivered_at``), and whose user has a subscription, in one write per
page. Its position is a document in MongoDB, so a restarted or other node carries on where
the sweep stopped; a sweep repeated after a crash queues nothing twice, because an entry's
key is its ``_id``. The price: a push waits the grace period plus at most one sweep interval.

Per device, what the push service answered decides: sent, gone (the subscription is
deleted), retried (429, 5xx, no answer: a ``push:<id>:<subscription>`` entry due after the
backoff or Retry-After), or failed. Every attempt goes into the timeline under a key made
of the entry and the subscription, so a push retaken after a crash skips the devices it
already reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.app.errors import Conflict, ValidationFailed
from server.app.metrics import METRICS
from server.app.outbound import url_problem
from server.app.schemas import default_title
from server.app.store import FOREVER, is_hidden
from server.app.timeutil import EPOCH, as_datetime, iso, millis, utcnow
from server.feed.scheduler import Scheduler
from server.feed.timeline import Timeline
from server.push.preferences import Preferences, quiet_until, wants_push
from server.push.subscriptions import MAX_PER_USER, Subscriptions
from server.push.subscriptions import public as public_subscription
from server.push.vapid import DEV_SUBJECT, Vapid
from server.push.webpush import LATER, URGENCY, Answer, Sender, topic_of

log = logging.getLogger("notify.push")

KIND, SWEEP = "push", "push-sweep"
SWEEP_KEY = "push-sweep"
PAGE = 1000  # notifications read per sweep step
AUDIENCE_PAGE = 200  # subscriptions per step of a broadcast's fan-out
MISSING_WAIT = 30.0  # seconds a push waits for its notification to be stored
MAX_BACKOFF = 3600.0
GENERIC_TITLE = "New notification"
SENT = (200, 201, 202)
GONE = (404, 410)
# What sending one device came to: the outcome, when to try again (None: never), and how
# many attempts that next try has behind it.
Result = tuple[str, datetime | None, int]
SWEEP_FIELDS = {
    "_id": 1, "user_id": 1, "audience": 1, "priority": 1, "critical": 1, "seq": 1,
    "created_at": 1, "deliver_at": 1, "visible_until": 1, "delivered_at": 1,
}  # fmt: skip


def at_ms(ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return EPOCH + timedelta(milliseconds=ms)


def sent_at(doc: dict) -> datetime:
    """When a notification reached the feed: its creation, or its ``deliver_at`` if later."""
    created = as_datetime(doc["created_at"])
    deliver = as_datetime(doc.get("deliver_at"))
    return max(created, deliver) if deliver is not None else created


class PushService:
    """Plans, sweeps for and sends the pushes of one node (``node.push``)."""

    def __init__(self, settings, db: AsyncDatabase, notifications, scheduler: Scheduler):
        self.settings = settings
        self.notifications = notifications
        self.docs = notifications.store.notifications
        self.timeline: Timeline = notifications.timeline
        self.scheduler = scheduler
        self.subscriptions = Subscriptions(db)
        self.preferences = Preferences(db)
        self.state = db.push_state
        self.db = db
        self.vapid: Vapid | None = None
        self.sender: Sender | None = None
        self._deadline: float | None = None  # the batch being sent starts no request after it
        # (monotonic time, this node's hub seq) at each sweep here: what it had dispatched by
        # then was sent by then, so a grace period later all of it is old enough to push.
        self._marks: deque[tuple[float, int]] = deque()

    # ---- life ----------------------------------------------------------------------------

    @staticmethod
    def subject(settings) -> str:
        """The VAPID subject; a start-up error outside development when it is not set."""
        subject = settings.vapid_subject
        if not subject:
            if settings.env != "development":
                raise SystemExit("NOTIFY_VAPID_SUBJECT (mailto: or https:) is required")
            return DEV_SUBJECT
        if not subject.startswith(("mailto:", "https://")):
            raise SystemExit("NOTIFY_VAPID_SUBJECT must be a mailto: or https: URL")
        return subject

    async def start(self) -> None:
        """Load the VAPID key, create indexes, register the queue's kinds, start the sweep."""
        s = self.settings
        self.vapid = await Vapid.load(self.db, s.vapid_private_key, self.subject(s))
        self.sender = Sender(
            self.vapid, s.outbound_allow_private, s.push_timeout_seconds, s.push_concurrency
        )
        await self.subscriptions.create_indexes()
        high = await self.notifications.store.high_seq()
        # The sweep starts at the feed's end on a deployment's first start; another node
        # upserting at the same moment makes the same document.
        with contextlib.suppress(DuplicateKeyError):
            await self.state.update_one(
                {"_id": "sweep"}, {"$setOnInsert": {"after": high}}, upsert=True
            )
        self.scheduler.register(KIND, self._push)
        self.scheduler.register(SWEEP, self._sweep)
        await self.scheduler.enqueue(SWEEP, SWEEP_KEY, utcnow())

    def stop(self) -> None:
        """Close the HTTP client."""
        if self.sender is not None:
            self.sender.close()

    # ---- subscriptions -----------------------------------------------------------------

    async def subscribe(self, user_id: str, roles: list[str], sub: dict) -> tuple[dict, bool]:
        """Store a device's subscription (validated shape); True if new for this user.

        The endpoint's address is checked here only if it is a literal one; a host name is
        checked when it is resolved for sending (see ``server/app/outbound.py``).
        """
        problem = url_problem(sub["endpoint"], self.settings.outbound_allow_private)
        if problem:
            raise ValidationFailed("the subscription is not valid", {"endpoint": [problem]})
        if await self.subscriptions.count(user_id) >= MAX_PER_USER:
            existing = {s["endpoint"] for s in await self.subscriptions.list(user_id)}
            if sub["endpoint"] not in existing:
                raise Conflict(f"a user may subscribe at most {MAX_PER_USER} devices")
        stored, created = await self.subscriptions.put(user_id, roles, sub, utcnow())
        return public_subscription(stored), created

    async def list_subscriptions(self, user_id: str) -> list[dict]:
        """A user's subscriptions as the API shows them."""
        return [public_subscription(s) for s in await self.subscriptions.list(user_id)]

    # ---- what gets queued --------------------------------------------------------------

    async def plan(self, docs: list[dict]) -> None:
        """Planner: queue critical notifications' pushes for when they are sent (at once)."""
        urgent = [d for d in docs if d["critical"]]
        if not urgent:
            return  # the common case costs nothing: the sweep finds the rest later
        now_ms = millis(utcnow())
        items = []
        for d in urgent:
            due = max(now_ms, millis(d["deliver_at"])) if d.get("deliver_at") else now_ms
            items.append((KIND, f"push:{d['_id']}", at_ms(due), {"due": due}, d["_id"]))
        await self.scheduler.enqueue_many(items)

    async def push_now(self, doc: dict, reason: str) -> None:
        """Queue an immediate push of this notification, whatever the grace period."""
        nid = doc.get("_id") or doc["id"]
        due = millis(utcnow())
        await self.scheduler.enqueue(
            KIND, f"push:{nid}:{reason}", utcnow(), {"due": due, "force": True}, ref=nid
        )

    async def _sweep(self, entries: list[dict]) -> dict[str, int]:
        """Queue pushes for notifications whose grace period has passed unacknowledged."""
        now = utcnow()
        state = await self.state.find_one({"_id": "sweep"}) or {"after": 0}
        horizon = now - timedelta(seconds=self.settings.push_grace_seconds)
        # Only what is past its grace period: reading the younger ones too (up to a page of
        # them, every sweep) only to stop at the first held MongoDB up for every write.
        after, bound = state["after"], self._old_enough()
        page = []
        if bound > after:
            page = await self.docs.find(
                {"seq": {"$gt": after, "$lte": bound}}, SWEEP_FIELDS, sort=[("seq", 1)], limit=PAGE
            ).to_list()
        ready = []
        for doc in page:
            if sent_at(doc) > horizon:
                break  # later ones are younger still: the next sweep takes them
            ready.append(doc)
        if ready:
            wanted = [d for d in ready if _sweepable(d, now)]
            users = [d["user_id"] for d in wanted if d.get("user_id") is not None]
            subscribed = await self.subscriptions.subscribed(users) if users else set()
            due = millis(now)
            items = [
                (KIND, f"push:{d['_id']}", now, {"due": due}, d["_id"])
                for d in wanted
                if d.get("user_id") is None or d["user_id"] in subscribed
            ]
            await self.scheduler.enqueue_many(items)
            await self.state.update_one({"_id": "sweep"}, {"$max": {"after": ready[-1]["seq"]}})
        pause = 0.0 if len(ready) == PAGE else self.settings.push_sweep_seconds
        return {e["_id"]: millis(now) + int(pause * 1000) for e in entries}

    def _old_enough(self) -> int:
        """The highest seq this node had dispatched a grace period ago; 0 if it was not
        sweeping yet (a node that just took the sweep over starts a grace period later)."""
        clock, marks = time.monotonic(), self._marks
        marks.append((clock, self.notifications.hub.seq))
        cutoff = clock - self.settings.push_grace_seconds
        while len(marks) > 1 and marks[1][0] <= cutoff:
            marks.popleft()
        return marks[0][1] if marks[0][0] <= cutoff else 0

    # ---- sending -----------------------------------------------------------------------

    async def _push(self, entries: list[dict]) -> dict[str, int]:
        """Do due push entries; returns those to try again and when (epoch ms)."""
        loop = asyncio.get_running_loop()
        # No request starts after a third of the lease: one started before it ends within
        # the push timeout, so the claim is done before its lease runs out (keep the lease
        # above 1.5 times NOTIFY_PUSH_TIMEOUT_SECONDS) and no other node sends it as well.
        # One batch at a time per node (the scheduler's loop), so one deadline at a time.
        deadline = self._deadline = loop.time() + self.scheduler.lease_ms / 3000
        now = utcnow()
        refs = list({e["ref"] for e in entries})
        docs = {d["_id"]: d async for d in self.docs.find({"_id": {"$in": refs}})}
        users = {d["user_id"] for d in docs.values() if d.get("user_id") is not None}
        users |= {e["payload"]["user_id"] for e in entries if e["payload"].get("user_id")}
        prefs = await self.preferences.for_users(list(users)) if users else {}
        subs = await self.subscriptions.for_users(list(users)) if users else {}
        again: dict[str, int] = {}
        sends = []
        for entry in entries:
            doc = docs.get(entry["ref"])
            if doc is None:
                if millis(now) < entry["payload"].get("due", 0) + MISSING_WAIT * 1000:
                    again[entry["_id"]] = millis(now) + 1000  # planned before it is stored
                continue
            if loop.time() > deadline:
                again[entry["_id"]] = millis(now)
                continue
            if doc.get("audience") is not None and not entry["payload"].get("user_id"):
                sends.append(self._broadcast(entry, doc, deadline, again))
                continue
            sends.append(self._personal(entry, doc, prefs, subs, now, again))
        await asyncio.gather(*sends)
        return again

    async def _personal(
        self, entry: dict, doc: dict, prefs: dict, subs: dict, now: datetime, again: dict
    ) -> None:
        """One notification to one user's devices (or one device, for a retry)."""
        payload, key = entry["payload"], entry["_id"]
        user_id = doc.get("user_id") or payload.get("user_id")
        if not self._live(doc, now):
            return
        sid = payload.get("subscription_id")
        if sid is not None:  # a retry of one device
            sub = next((s for s in subs.get(user_id, []) if s["_id"] == sid), None)
            if sub is None:
                return  # unsubscribed since
            attempt = payload.get("offset", 0) + entry["attempts"]
            personal = doc.get("user_id") is not None
            _, retry, _ = await self._deliver(doc, sub, attempt, f"{key}:{attempt}", personal)
            if retry is not None:
                again[key] = millis(retry)
            return
        critical = doc["critical"]
        force = payload.get("force", False)
        if not critical and not force and doc.get("delivered_at"):
            return  # a socket acknowledged it within the grace period
        if not critical:
            mine = prefs.get(user_id) or {}
            if not wants_push(mine, doc["type"]):
                return
            until = quiet_until(mine.get("quiet_hours"), now)
            if until is not None:
                if doc.get("user_id") is not None:
                    await self.timeline.record(
                        doc["_id"], "push_deferred", key=f"{key}:deferred:{millis(until)}",
                        until=iso(until),
                    )  # fmt: skip
                METRICS.push_deferred.inc()
                again[key] = millis(until)
                return
        targets = subs.get(user_id, [])
        if entry["attempts"] > 1:  # retaken after a crash: skip the devices already done
            targets = await self._not_done(key, targets)
        personal = doc.get("user_id") is not None
        results = await asyncio.gather(
            *(self._deliver(doc, s, 1, f"{key}:{s['_id']}", personal) for s in targets)
        )
        await self._queue_retries(key, doc, targets, results)

    async def _broadcast(self, entry: dict, doc: dict, deadline: float, again: dict) -> None:
        """A high or critical broadcast to every subscribed member of its audience, in pages."""
        key, now = entry["_id"], utcnow()
        if not self._live(doc, now):
            return
        loop = asyncio.get_running_loop()
        progress_id = f"progress:{key}"
        progress = await self.state.find_one({"_id": progress_id}) or {}
        after, total = progress.get("after"), progress.get("sent", 0)
        while True:
            page = await self.subscriptions.audience_page(doc["audience"], after, AUDIENCE_PAGE)
            if not page:
                break
            targets = page
            if not doc["critical"]:
                prefs = await self.preferences.for_users([s["user_id"] for s in page])
                targets = await self._defer_quiet(key, doc, page, prefs, now)
            results = await asyncio.gather(
                *(self._deliver(doc, s, 1, None, False) for s in targets)
            )
            await self._queue_retries(key, doc, targets, results)
            total += sum(1 for outcome, _, _ in results if outcome == "sent")
            after = page[-1]["_id"]
            await self.state.update_one(
                {"_id": progress_id}, {"$set": {"after": after, "sent": total}}, upsert=True
            )
            if loop.time() > deadline:
                again[key] = millis(utcnow())  # the rest on the next claim, from ``after``
                return
        await self.timeline.record(doc["_id"], "push_sent", key=f"{key}:done", devices=total)
        await self.state.delete_one({"_id": progress_id})

    async def _defer_quiet(
        self, key: str, doc: dict, page: list[dict], prefs: dict, now: datetime
    ) -> list[dict]:
        """The page's devices to push now; members in quiet hours get their own later entry."""
        targets, later = [], []
        for sub in page:
            mine = prefs.get(sub["user_id"]) or {}
            if not wants_push(mine, doc["type"]):
                continue
            until = quiet_until(mine.get("quiet_hours"), now)
            if until is None:
                targets.append(sub)
            else:
                payload = {"due": millis(until), "user_id": sub["user_id"]}
                later.append((KIND, f"{key}:{sub['user_id']}", until, payload, doc["_id"]))
        if later:
            METRICS.push_deferred.inc(len(later))
            await self.scheduler.enqueue_many(later)
        return targets

    async def _not_done(self, key: str, subs: list[dict]) -> list[dict]:
        """The subscriptions with no recorded outcome under this entry yet."""
        keys = [f"{key}:{s['_id']}" for s in subs]
        cursor = self.timeline.collection.find({"_id": {"$in": keys}}, {"_id": 1})
        done = {d["_id"] async for d in cursor}
        return [s for s, k in zip(subs, keys, strict=True) if k not in done]

    async def _queue_retries(
        self, key: str, doc: dict, subs: list[dict], results: list[Result]
    ) -> None:
        """An entry per device to try again, due at its backoff."""
        items = [
            (
                KIND,
                f"{key}:{sub['_id']}",
                at,
                {"due": millis(at), "subscription_id": sub["_id"], "offset": offset,
                 "user_id": sub["user_id"]},
                doc["_id"],
            )
            for sub, (_, at, offset) in zip(subs, results, strict=True)
            if at is not None
        ]  # fmt: skip
        if items:
            await self.scheduler.enqueue_many(items)

    async def _deliver(
        self, doc: dict, sub: dict, attempt: int, tkey: str | None, personal: bool
    ) -> Result:
        """Send to one device and record the outcome: the outcome, when to try again (or
        None), and how many attempts that retry has behind it."""
        now = utcnow()
        answer = await self.sender.send(
            sub, self._payload(doc), self._ttl(doc, now), URGENCY[doc["priority"]],
            topic_of(doc["_id"]), self._deadline,
        )  # fmt: skip
        status = answer.status
        if status == LATER:  # not sent: the claim's time is up; another claim sends it
            return "later", now, attempt - 1
        fields = {"subscription_id": sub["_id"], "status": status or None}
        retry_at = None
        if status in SENT:
            outcome, event = "sent", "push_sent"
        elif status in GONE:
            outcome, event = "gone", "push_failed"
            await self.subscriptions.gone(sub["_id"], sub["endpoint"])
            fields["reason"] = "subscription gone"
        elif _retryable(answer) and attempt < self.settings.push_attempts:
            outcome, event = "retry", "push_failed"
            retry_at = now + timedelta(seconds=self._backoff(attempt, answer))
            fields["retry_at"] = iso(retry_at)
        else:
            outcome = "refused" if answer.reason == "address refused" else "failed"
            event = "push_failed"
        if answer.reason:
            fields["reason"] = answer.reason
        METRICS.push_attempts.labels(outcome).inc()
        if personal:  # broadcasts keep no per-user events (CONTRACT §8): a summary instead
            await self.timeline.record(doc["_id"], event, key=tkey, attempt=attempt, **fields)
        return outcome, retry_at, attempt

    def _backoff(self, attempt: int, answer: Answer) -> float:
        base = self.settings.push_retry_seconds * 2 ** (attempt - 1)
        return min(MAX_BACKOFF, max(base, answer.retry_after or 0.0))

    def _payload(self, doc: dict) -> bytes:
        """What the device decrypts: no health information unless the deployment allows it."""
        body = {
            "id": doc["_id"],
            "type": doc["type"],
            "priority": doc["priority"],
            "cursor": str(doc["seq"]) if doc.get("seq") is not None else None,
            "title": default_title(doc["type"], doc.get("data") or {}) or GENERIC_TITLE,
        }
        if self.settings.push_content == "full":
            body["title"] = doc["title"]
            body["message"] = doc["message"]
        return json.dumps(body, separators=(",", ":")).encode()

    def _ttl(self, doc: dict, now: datetime) -> int:
        expires = as_datetime(doc.get("expires_at"))
        if expires is None or expires >= FOREVER:
            return self.settings.push_ttl_seconds
        return max(0, int((expires - now).total_seconds()))

    def _live(self, doc: dict, now: datetime) -> bool:
        """Not hidden, not expired."""
        return not is_hidden(doc) and as_datetime(doc["visible_until"]) > now


def _retryable(answer: Answer) -> bool:
    if answer.status == 0:
        return answer.reason != "address refused"
    return answer.status == 429 or answer.status >= 500


def _sweepable(doc: dict, now: datetime) -> bool:
    """A notification the sweep queues a push for (critical ones were queued at once)."""
    if doc.get("critical") or doc.get("delivered_at") or is_hidden(doc):
        return False
    if as_datetime(doc["visible_until"]) <= now:
        return False
    return doc.get("user_id") is not None or doc["priority"] == "high"
