"""The staff dashboard's services: accounts, live figures, and what its pages show.

``Dashboard`` is one node's bundle (``node.dashboard``), started and stopped with the node.
Nothing here knows about HTTP; the handlers in ``handlers/dashboard*.py`` render it.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.app.audit import Audit, page_key
from server.app.timeutil import iso, utcnow
from server.auth.ratelimit import RateLimits
from server.dashboard.activity import Activity, LiveFeed
from server.dashboard.staff import StaffAccounts
from server.dashboard.staff_store import StaffStore
from server.delivery.hub import Hub
from server.escalation.ack import Acknowledgements
from server.feed.notifications import Notifications
from server.feed.render import public
from settings import Settings

HISTORY_PAGE = 50
AUDIT_PAGE = 100
AUDIT_EXPORT_MAX = 10_000
CRITICAL_EVERY = 5.0  # seconds the overview reuses its list of unacknowledged criticals


class Dashboard:
    """One node's dashboard services."""

    def __init__(
        self,
        settings: Settings,
        db: AsyncDatabase,
        hub: Hub,
        notifications: Notifications,
        audit: Audit,
        limits: RateLimits,
        stats: Callable[[], Awaitable[dict]],
        presence: Callable[[list[str]], Awaitable[dict[str, dict]]],
        acknowledgements: Acknowledgements,
        push_devices: Callable[[list[str]], Awaitable[dict[str, int]]] | None = None,
    ):
        self.acknowledgements = acknowledgements  # staff acknowledge on a user's behalf
        self.push_devices = push_devices  # devices subscribed to Web Push, per user
        self.hub = hub
        self.notifications = notifications
        self.audit = audit
        self.stats = stats  # the cluster's figures (every node's, from MongoDB)
        self.presence = presence
        self.store = StaffStore(db)
        self.staff = StaffAccounts(self.store, audit, limits, settings.staff_session_hours)
        self.activity = Activity(hub)
        self.live = LiveFeed(hub, self.overview)
        self._critical: tuple[float, list[dict]] = (0.0, [])

    async def start(self) -> None:
        """Indexes, the sampler, and the hub listener that keeps the connection list live."""
        await self.store.create_indexes()
        self.activity.start()
        self.hub.listeners.append(self.live.observe)

    async def stop(self) -> None:
        """Stop pushing and sampling."""
        if self.live.observe in self.hub.listeners:
            self.hub.listeners.remove(self.live.observe)
        await self.live.stop()
        await self.activity.stop()

    # ---- overview ----------------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        """The overview's figures: connections, users, sent and delivered, the hour's chart."""
        now = self.activity.sample()
        stats = await self.stats()
        return {
            "at": iso(utcnow()),
            "connections": stats["connected_clients"],
            "users": stats["connected_users"],
            "nodes": [
                {k: n.get(k) for k in ("node_id", "connections", "users")}
                for n in stats.get("nodes", [])
            ],
            **self.activity.rates(now),
            "chart": self.activity.chart(now),
            "critical": await self.critical(),
        }

    async def critical(self) -> list[dict]:
        """Notifications that need acknowledgement and lack it past the grace period
        (critical ones by default; cached for a few seconds)."""
        fetched, items = self._critical
        if time.monotonic() - fetched > CRITICAL_EVERY:
            found = await self.notifications.unacknowledged(limit=50)
            keys = ("id", "user_id", "title", "priority", "created_at", "deliver_at")
            items = [{k: d[k] for k in keys} for d in found]
            self._critical = (time.monotonic(), items)
        return items

    async def notification(self, notification_id: str) -> dict[str, Any]:
        """One notification with its timeline, for its page (history links to it)."""
        return await self.notifications.detail(notification_id)

    async def acknowledge(self, notification_id: str, actor: str, note: str | None) -> dict:
        """A staff member acknowledges on the user's behalf; on the audit log with the note."""
        doc = await self.acknowledgements.acknowledge(notification_id, actor, note)
        await self.audit.record(
            actor, "notification.acknowledge", notification_id, user_id=doc["user_id"], note=note
        )
        self._critical = (0.0, [])  # the overview shows it gone at once
        return doc

    # ---- history -----------------------------------------------------------------------

    async def history(self, query: dict[str, Any]) -> dict[str, Any]:
        """A page of notifications and broadcasts, newest first, with delivery and read state."""
        if query.get("status") == "scheduled":
            waiting = await self.store.scheduled(HISTORY_PAGE)
            return {"items": [_row(d, {}) for d in waiting], "next": None}
        docs = await self.store.history(
            history_filters(query), query.get("before"), HISTORY_PAGE + 1
        )
        more = len(docs) > HISTORY_PAGE
        docs = docs[:HISTORY_PAGE]
        shared = [d["_id"] for d in docs if d.get("audience") is not None]
        reads = await self.store.read_counts(shared)
        rows = [_row(d, reads) for d in docs]
        users = list({r["user_id"] for r in rows if r["user_id"] is not None})
        if self.push_devices is not None and users:
            devices = await self.push_devices(users)
            for row in rows:
                row["push_devices"] = devices.get(row["user_id"], 0)
        return {
            "items": rows,
            "next": docs[-1]["_id"] if more and docs else None,
        }

    # ---- audit -------------------------------------------------------------------------

    async def audit_page(self, query: dict[str, Any]) -> dict[str, Any]:
        """A page of the audit log, newest first."""
        entries = await self.audit.recent(
            AUDIT_PAGE + 1, query.get("before"), query.get("actor"), query.get("action")
        )
        more = len(entries) > AUDIT_PAGE
        entries = entries[:AUDIT_PAGE]
        return {
            "items": [audit_row(e) for e in entries],
            "next": page_key(entries[-1]) if more and entries else None,
        }

    async def audit_csv(self, query: dict[str, Any]) -> str:
        """The audit entries matching a filter as CSV (at most AUDIT_EXPORT_MAX, newest first)."""
        entries = await self.audit.recent(
            AUDIT_EXPORT_MAX, query.get("before"), query.get("actor"), query.get("action")
        )
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["at", "actor", "action", "target", "detail"])
        for entry in entries:
            row = audit_row(entry)
            writer.writerow(
                [_cell(row[k]) for k in ("at", "actor", "action", "target")]
                + [_cell(row["detail"])]
            )
        return out.getvalue()


def history_filters(query: dict[str, Any]) -> dict[str, Any]:
    """The MongoDB filter of the history page's form."""
    filters: dict[str, Any] = {}
    personal = {"$type": "string"}  # $ne: null would also match a missing field
    if query.get("kind") == "personal":
        filters["user_id"] = personal
    elif query.get("kind") == "broadcast":
        filters["audience"] = {"$type": "string"}
    if query.get("user"):
        filters["user_id"] = query["user"]
    for name in ("type", "priority"):
        if query.get(name):
            filters[name] = query[name]
    status = query.get("status")
    if status in ("read", "unread", "delivered", "undelivered"):
        filters.setdefault("user_id", personal)
        field = "read_at" if status in ("read", "unread") else "delivered_at"
        filters[field] = None if status in ("unread", "undelivered") else {"$ne": None}
    span: dict[str, datetime] = {}
    if query.get("since"):
        span["$gte"] = datetime.combine(query["since"], clock_time(), UTC)
    if query.get("until"):
        span["$lt"] = datetime.combine(query["until"], clock_time(), UTC) + timedelta(days=1)
    if span:
        filters["created_at"] = span
    return filters


def _row(doc: dict, reads: dict[str, int]) -> dict[str, Any]:
    row = public(doc)
    row["audience"] = doc.get("audience")
    row["reads"] = reads.get(doc["_id"], 0)
    row["scheduled"] = doc.get("seq") is None
    row["state"] = doc.get("state")
    return row


def audit_row(entry: dict) -> dict[str, Any]:
    """An audit entry for the page and the CSV."""
    detail = entry.get("detail") or {}
    return {
        "at": iso(entry["at"]),
        "actor": entry.get("actor", ""),
        "action": entry.get("action", ""),
        "target": entry.get("target", ""),
        "detail": json.dumps(detail, default=str, ensure_ascii=False, sort_keys=True)
        if detail
        else "",
    }


def _cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
