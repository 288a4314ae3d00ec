"""Notifications: create, feed, unread count, read state, replay. No HTTP in here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId
from pymongo.errors import PyMongoError

from server.app.errors import Conflict, NotFound, StorageUnavailable, ValidationFailed
from server.app.group_commit import GroupCommit
from server.app.metrics import METRICS, child
from server.app.store import FOREVER, Store
from server.app.timeutil import utcnow
from server.delivery.broadcast_cache import BroadcastCache
from server.delivery.hub import Hub, notification_frame
from server.delivery.recent import (
    CENSUS_MAX,
    REPLAY_FROM_DB,
    UNREAD_FROM_DB,
    UNREAD_FROM_MEMORY,
)
from server.feed.render import public
from server.feed.sequencer import Sequencer
from server.feed.timeline import Timeline

log = logging.getLogger("notify.notifications")

CRITICAL = "critical"


def audiences(roles: tuple[str, ...] | list[str]) -> list[str]:
    """The broadcast audiences a user with these roles belongs to."""
    return ["all", *roles]


@dataclass
class Replay:
    """What a reconnecting socket missed: (seq, notification frame) pairs, oldest first."""

    frames: list[tuple[int, bytes]]
    recovered: bool
    cursor: int
    since: int  # where the client is taken to be: its cursor, or the feed's end if beyond


class Notifications:
    """The notification service of one node."""

    def __init__(
        self,
        store: Store,
        sequencer: Sequencer,
        hub: Hub,
        publish_event: Callable[[dict], Awaitable[None]],
        node_id: str,
        replay_limit: int,
        timeline: Timeline,
    ):
        self.store = store
        self.sequencer = sequencer
        self.hub = hub
        self.publish_event = publish_event
        self.node_id = node_id
        self.timeline = timeline
        # Called with documents about to be stored (now or scheduled): capabilities that act
        # on a notification later (push, escalation) queue that work here.
        self.planners: list[Callable[[list[dict]], Awaitable[None]]] = []
        self.replay_limit = replay_limit
        self.retention = store.retention
        self.scheduler = None  # set by the app when scheduling is wired in
        self.users = None  # the node's last-seen records (UserRecords), set by the app
        self.critical_ack = timedelta(seconds=300)  # the node sets critical_ack_seconds
        self.broadcasts = BroadcastCache(store, hub)  # read on every connect: kept in memory
        # The feed's end, read once for all the reconnects that asked while the last read
        # was on its way (each needs a read that began after it asked; a storm shares them).
        self._feed_end = GroupCommit(lambda _: store.last_seq(), sequencer.write_timeout)

    # ---- create ------------------------------------------------------------------------

    def build(self, payload: dict, now: datetime, **target: str | None) -> dict:
        """A stored document from a validated payload, for one user or one audience."""
        expires = payload.get("expires_at")
        return {
            "_id": str(ObjectId()),
            "user_id": target.get("user_id"),
            "audience": target.get("audience"),
            "type": payload["type"],
            "priority": payload["priority"],
            "critical": payload["priority"] == CRITICAL,
            "title": payload["title"],
            "message": payload["message"],
            "data": payload["data"],
            "created_at": now,
            "deliver_at": payload.get("deliver_at"),
            "expires_at": expires,
            "visible_until": expires or FOREVER,
            "purge_at": (expires or now) + self.retention,
            "delivered_at": None,
            "read_at": None,
            "origin": self.node_id,
            # Per user (CONTRACT §8): a broadcast is never acknowledged and never escalates.
            "ack_required": target.get("user_id") is not None
            and bool(payload.get("ack_required", payload["priority"] == CRITICAL)),
            "acknowledged_at": None,
            "acknowledged_by": None,
            "escalation": payload.get("escalation") if target.get("user_id") else None,
        }

    async def create(self, payload: dict) -> list[dict]:
        """Store one notification per recipient (all or none), then deliver them."""
        now = utcnow()
        recipients = payload.get("user_ids") or [payload["user_id"]]
        docs = [self.build(payload, now, user_id=u) for u in dict.fromkeys(recipients)]
        stored = await self._store(docs, payload, now)
        return [public(d) for d in stored]

    async def broadcast(self, payload: dict) -> dict:
        """Store one broadcast for an audience, then deliver it to every member online."""
        now = utcnow()
        doc = self.build(payload, now, audience=payload["audience"])
        stored = await self._store([doc], payload, now)
        return public(stored[0])

    async def _store(self, docs: list[dict], payload: dict, now: datetime) -> list[dict]:
        expires_at = payload.get("expires_at")
        if expires_at is not None and expires_at <= now:  # nobody could ever see it
            raise ValidationFailed(
                "the request is not valid", {"expires_at": ["must be in the future"]}
            )
        deliver_at = payload.get("deliver_at")
        if deliver_at is not None and deliver_at > now:
            if self.scheduler is None:
                raise ValidationFailed("scheduling is not available", {"deliver_at": ["later"]})
            await self._plan(docs)
            return await self.scheduler.schedule(docs)
        await self._plan(docs)
        stored = await self.sequencer.append(docs)
        child(METRICS.created, payload["type"]).inc(len(stored))
        return stored

    async def _plan(self, docs: list[dict]) -> None:
        """Let each planner queue its later work (a push, a ladder) before the docs are stored.

        Before, not after: a node that dies between the two then leaves queued work whose
        notification is missing (its handler drops it), never a stored notification whose
        push or escalation was lost.
        """
        for planner in self.planners:
            try:
                await planner(docs)
            except PyMongoError as exc:
                raise StorageUnavailable("storage is unavailable") from exc

    async def cancel(self, notification_id: str) -> dict:
        """Cancel a scheduled notification not yet sent; 409 once sent or sending, else 404."""
        if self.scheduler is not None:
            doc = await self.scheduler.cancel(notification_id)
            if doc is not None:
                await self.timeline.record(notification_id, "cancelled")
                return public(doc)
        if await self.store.get(notification_id) is not None:
            raise Conflict("this notification was already sent")
        raise NotFound("no such scheduled notification")

    # ---- reading -----------------------------------------------------------------------

    async def roles_of(self, user_id: str, roles: tuple[str, ...] | None) -> tuple[str, ...]:
        """The roles a user is known by: the token's, or those last seen on a socket."""
        if roles is not None:
            return roles
        queued = self.users.queued_roles(user_id) if self.users is not None else None
        if queued is not None:  # seen on a socket here a moment ago, not yet written
            return queued
        return tuple(await self.store.user_roles(user_id))

    async def feed(
        self, user_id: str, roles: tuple[str, ...], query: dict
    ) -> dict[str, list[dict] | str | None]:
        """A page of the user's feed: critical first, then newest first."""
        now, limit = utcnow(), query["limit"]
        section, before = _parse_feed_token(query.get("before"))
        aud = audiences(roles)
        items: list[tuple[str, dict]] = []
        sections = (False,) if section == "n" else (True, False)
        for critical in sections:
            name = "c" if critical else "n"
            bound = before if section == name else None
            while len(items) <= limit:
                page = await self.store.feed_page(
                    user_id, aud, now, critical, bound, query.get("type"), limit + 1
                )
                read = await self._read_broadcasts(user_id, page)
                for doc in page:
                    if not (query["unread"] and _is_read(doc, read)):
                        items.append((name, _with_read(doc, read)))
                if len(page) <= limit:
                    break
                bound = page[-1]["seq"]
        more = len(items) > limit
        items = items[:limit]
        next_token = f"{items[-1][0]}.{items[-1][1]['cursor']}" if more and items else None
        return {"items": [i for _, i in items], "next": next_token}

    async def _read_broadcasts(self, user_id: str, docs: list[dict]) -> dict[str, datetime]:
        shared = [d["_id"] for d in docs if d.get("audience") is not None]
        if not shared:
            return {}
        return await self.store.read_map(user_id, shared)

    async def census(self) -> None:
        """Count the users who may have unread notifications (``RecentFeed``'s census)."""
        recent, users = self.hub.recent, None
        recent.begin_census(self.hub.seq)  # before any await: nothing dispatched is missed
        try:
            users = await self.store.users_with_unread(utcnow(), CENSUS_MAX)
        except PyMongoError as exc:
            log.warning("unread census failed: %s", type(exc).__name__)
        finally:
            recent.end_census(users)

    async def keep_census(self, every: float) -> None:
        """Take the census now and every ``every`` seconds (it drops users who read all)."""
        while True:
            await self.census()
            await asyncio.sleep(every)

    async def unread_count(self, user_id: str, roles: tuple[str, ...]) -> int:
        """Unread, visible notifications and broadcasts of a user."""
        now = utcnow()
        return await self._unread(
            user_id, await self.broadcasts.visible(audiences(roles), now), now
        )

    async def on_connect(
        self, user_id: str, roles: tuple[str, ...], since: int | None, dispatched: int
    ) -> tuple[int, Replay | None]:
        """A connecting socket's unread count, and its replay if it gave ``since``.

        Both come from memory when the node can prove it holds what they need (the recent
        window, ``server.delivery.recent``), else from MongoDB. Both read the same moment's
        visible broadcasts. A cursor past ``dispatched`` (this node's hub) is checked
        against the feed's end.
        """
        now = utcnow()
        aud = tuple(audiences(roles))
        shared = await self.broadcasts.visible(list(aud), now)
        recent, clock = self.hub.recent, now.timestamp()
        # Memory answers only a node that has heard out its change stream and has no
        # failed write's leftovers pending (they may be in the window until the hub moves on).
        memory = self.hub.current and not self.hub.withheld
        unread = recent.unread(user_id, aud, shared, clock) if memory else None
        if unread is None:
            UNREAD_FROM_DB.inc()
            unread = await self._load_unread(user_id, aud, shared, now)
        else:
            UNREAD_FROM_MEMORY.inc()
        if since is None:
            return unread, None
        if since > dispatched and since > (end := await self.store.high_seq()):
            # Never handed out here (a cursor from another deployment, or a database
            # restored from a backup): resume from the feed's end, and say that what was
            # missed is not known, so the client pages the REST feed.
            # Nothing to read: what is stored after ``end`` reaches the socket through the hub.
            METRICS.replay_truncated.inc()
            return unread, Replay([], False, end, end)
        if memory:
            # The window holds what this node dispatched; what another node stored a moment
            # ago may still be on its way here, and replay_done must follow everything stored
            # before the connect: memory answers only when nothing stored is newer.
            memory = self.hub.seq >= await self._feed_end.add([])
        own = recent.replay(user_id, since, clock) if memory else None
        if not memory:
            REPLAY_FROM_DB.inc()
        if own is None:
            docs = await self.store.replay(user_id, [], since, self.replay_limit + 1, now)
            own = [(d["seq"], notification_frame(d)) for d in docs]
        return unread, self._replay(own, shared, since)

    async def _load_unread(
        self, user_id: str, aud: tuple[str, ...], shared: list[dict], now: datetime
    ) -> int:
        """The unread count from MongoDB; the node keeps it and follows it from then on."""
        recent = self.hub.recent
        recent.begin_load(user_id)
        personal = read = None
        try:
            personal = await self.store.unread_personal(user_id, now)
            read = await self.store.read_map(user_id, [d["_id"] for d in shared])
        finally:
            if read is None:
                personal = None
            recent.end_load(user_id, aud, personal and dict(personal), set(read or ()))
        return len(personal) + len(shared) - len(read)

    async def _unread(self, user_id: str, shared: list[dict], now: datetime) -> int:
        own = await self.store.unread_personal_ids(user_id, now)
        ids = [d["_id"] for d in shared]
        read = await self.store.read_map(user_id, ids)  # no query when none is visible
        return len(own) + len(ids) - len(read)

    async def mark_read(self, user_id: str, roles: tuple[str, ...], notification_id: str) -> dict:
        """Mark one notification read for a user; tells all of the user's devices."""
        doc = await self.store.get(notification_id)
        if doc is None or not _belongs(doc, user_id, roles):
            raise NotFound("no such notification for this user")
        now = utcnow()
        if doc.get("audience") is not None:
            changed = await self.store.mark_broadcasts_read(user_id, [doc["_id"]], now) > 0
            read_at = (
                now if changed else (await self.store.read_map(user_id, [doc["_id"]]))[doc["_id"]]
            )
        else:
            changed = await self.store.mark_read(user_id, doc["_id"], now)
            read_at = doc.get("read_at") or now
            if changed:
                await self.timeline.record(doc["_id"], "read", at=now)
        doc["read_at"] = read_at
        if changed:
            await self._announce_read(user_id, roles, [doc["_id"]])
        return public(doc, read_at=read_at)

    async def mark_all_read(self, user_id: str, roles: tuple[str, ...]) -> int:
        """Mark everything unread of a user read; returns how many were marked."""
        now = utcnow()
        own = await self.store.unread_personal_ids(user_id, now)
        shared = await self.store.broadcast_ids(audiences(roles), now)
        await self.store.mark_all_read(user_id, own, now)
        await self.timeline.record_each(own, "read")
        already = await self.store.read_map(user_id, shared)
        fresh = [i for i in shared if i not in already]
        await self.store.mark_broadcasts_read(user_id, fresh, now)
        ids = own + fresh
        if ids:
            await self._announce_read(user_id, roles, ids)
        return len(ids)

    async def ack(
        self, user_id: str, roles: tuple[str, ...], notification_id: str, connection_id: str
    ) -> dict:
        """A device's delivery receipt: ``delivered`` once per connection in the timeline."""
        doc = await self.store.get(notification_id)
        if doc is None or not _belongs(doc, user_id, roles):
            raise NotFound("no such notification for this user")
        if doc.get("user_id") == user_id:
            now = utcnow()
            await self.store.mark_delivered(user_id, notification_id, now)
            doc["delivered_at"] = doc.get("delivered_at") or now
            await self.timeline.record(
                notification_id,
                "delivered",
                key=f"{notification_id}:delivered:{connection_id}",
                at=now,
                connection_id=connection_id,
            )
        return public(doc)

    async def detail(self, notification_id: str) -> dict:
        """A notification (sent or still scheduled) with its timeline (CONTRACT §8)."""
        doc = await self.store.get(notification_id)
        if doc is None and self.scheduler is not None:
            entry = await self.scheduler.store.get(notification_id)
            doc = entry.get("doc") if entry is not None else None
        if doc is None:
            raise NotFound("no such notification")
        return {"notification": public(doc), "timeline": await self.timeline.events(doc)}

    async def _announce_read(self, user_id: str, roles: tuple[str, ...], ids: list[str]) -> None:
        count = await self.unread_count(user_id, roles)
        await self.publish_event({"kind": "read", "user_id": user_id, "ids": ids, "count": count})

    async def unacknowledged(self, limit: int = 50) -> list[dict]:
        """Personal notifications that need acknowledgement, unacknowledged ``critical_ack``
        after they were sent (CONTRACT §8: listed until someone acknowledges them).

        Newest first. The age counts from sending: ``deliver_at`` for a scheduled one.
        """
        now = utcnow()
        cutoff = now - self.critical_ack
        found: list[dict] = []
        before = None
        while len(found) < limit:
            page = await self.store.unacknowledged(cutoff, now, before, limit)
            # Exact here: the embedded server compares dates to the whole second only.
            found += [d for d in page if sent_at(d) <= cutoff]
            if len(page) < limit:
                break
            before = page[-1]["seq"]
        return [public(d) for d in found[:limit]]

    async def store_once(self, docs: list[dict]) -> list[dict]:
        """Plan and store documents whose ``_id`` says what they are (an escalation's alert):
        a retry after a crash finds them stored and stores nothing twice (``seq`` None)."""
        await self._plan(docs)
        stored = await self.sequencer.append(docs, idempotent=True)
        for doc in stored:
            if doc.get("seq") is not None:
                METRICS.created.labels(doc["type"]).inc()
        return stored

    # ---- replay ------------------------------------------------------------------------

    def _replay(self, own: list[tuple[int, bytes]], shared: list[dict], since: int) -> Replay:
        """What a socket missed after ``since``: at most the replay limit, oldest first.

        ``own`` are the user's personal notifications after ``since`` (from the window or
        MongoDB), ``shared`` the visible broadcasts of the user's audiences.
        """
        limit = self.replay_limit + 1
        found = own[-limit:] + [(d["seq"], d) for d in shared if d["seq"] > since]
        found = sorted(found, key=lambda item: item[0])[-limit:]
        recovered = len(found) <= self.replay_limit
        if not recovered:
            found = found[1:]
            METRICS.replay_truncated.inc()
        METRICS.replayed.inc(len(found))
        cursor = found[-1][0] if found else since
        frames = [(seq, f if type(f) is bytes else notification_frame(f)) for seq, f in found]
        return Replay(frames, recovered, cursor, since)


def _parse_feed_token(token: str | None) -> tuple[str | None, int | None]:
    if not token:
        return None, None
    if "." in token:
        section, seq = token.split(".", 1)
        return section, int(seq)
    return "n", int(token)


def sent_at(doc: dict) -> datetime:
    """When a notification went out: its creation, or its ``deliver_at`` if scheduled."""
    deliver_at = doc.get("deliver_at")
    return max(doc["created_at"], deliver_at) if deliver_at is not None else doc["created_at"]


def _belongs(doc: dict, user_id: str, roles: tuple[str, ...]) -> bool:
    if doc.get("user_id") is not None:
        return doc["user_id"] == user_id
    return doc.get("audience") in audiences(roles)


def _is_read(doc: dict, read: dict[str, datetime]) -> bool:
    return doc.get("read_at") is not None or doc["_id"] in read


def _with_read(doc: dict, read: dict[str, datetime]) -> dict:
    return public(doc, read_at=read.get(doc["_id"]))
