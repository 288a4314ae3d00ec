"""Who is connected to this node, and delivery to them in the feed's one order.

The hub sees every sequenced notification exactly once and in seq order, whichever path
brought it (this node's own writes, or the change stream from other nodes): a gap in the
sequence is filled from MongoDB before anything after it goes out, and anything at or below
the last dispatched seq is a duplicate and is dropped. Each connection therefore receives
its feed in order, and its last cursor is a safe place to resume from.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from server.app.errors import OverCapacity
from server.app.metrics import METRICS, child
from server.app.store import is_hidden
from server.app.timeutil import utcnow
from server.delivery import wire
from server.delivery.recent import RecentFeed
from server.feed.render import public

log = logging.getLogger("notify.hub")


class Connection(Protocol):
    """What the hub needs of a socket: send pre-framed bytes, and close."""

    def send_frame(self, data: bytes) -> bool:
        """Queue a framed message; False if the socket is gone or had to be dropped."""

    def close(self, code: int, reason: str) -> None:
        """Close the socket with a close code."""


_ids = itertools.count(1)
# Connection ids are unique across nodes (a receipt's timeline entry is keyed by one): this
# process's random prefix, then a counter.
_PREFIX = f"c{secrets.token_hex(3)}-"
# Frames of a replay written to a socket in one go (a few hundred KiB at most).
REPLAY_WRITE_FRAMES = 64


# Slots and plain fields, not an instance dict and an info dict: one of these lives as long
# as its socket, and those cost it about 150 bytes more (tracemalloc, bench connections).
@dataclass(eq=False, slots=True)
class Subscription:
    """One socket's place in the hub: its user, how far its feed has gone, and what the
    dashboard lists of it."""

    conn: Connection
    user_id: str
    roles: tuple[str, ...]
    user_agent: str = ""
    ip: str | None = ""
    connected_at: datetime = field(default_factory=utcnow)
    last_active: datetime | None = None  # the last frame from the client
    id: str = field(default_factory=lambda: f"{_PREFIX}{next(_ids)}")
    last_seq: int = 0
    pending: list[tuple[int, bytes]] | None = field(default_factory=list)
    overflowed: bool = False
    start_seq: int = 0

    def offer(self, seq: int, data: bytes, limit: int) -> bool:
        """Send a sequenced frame, or hold it while the socket is still replaying.

        True if sent or held. Called once per socket per notification: the caller counts
        (one metric update per fan-out, not per socket).
        """
        if self.pending is not None:
            if len(self.pending) >= limit:
                self.overflowed = True
                return False
            self.pending.append((seq, data))
            return True
        if seq > self.last_seq:
            self.last_seq = seq
            return self.conn.send_frame(data)
        return False

    def go_live(
        self,
        replayed: Iterable[tuple[int, bytes]],
        marker: bytes | None = None,
        after: int = 0,
        first: bytes = b"",
    ) -> None:
        """Send the replay and ``marker``, then what arrived meanwhile, then deliver live.

        What arrived while the replay was read is merged with it in seq order: a frame held
        meanwhile can sort before the newest replayed one (stored just after one of the
        replay's queries ran), and sent after it, it would be dropped as already seen.
        Nothing at or below ``after`` (the client's cursor) is sent, also when this node
        dispatches it only now: its change stream can lag behind the node the client left.
        ``first`` (the welcome) goes out before all of it, in the same write.
        """
        held, self.pending = self.pending or [], None
        self.last_seq = max(self.last_seq, after)
        if self.overflowed:
            # More arrived during the replay than a socket may hold: the client resumes
            # from its last cursor instead, so nothing is lost and memory stays bounded.
            if first:
                self.conn.send_frame(first)
            self.conn.close(1013, "too much arrived while replaying; reconnect with since")
            return
        replayed = list(replayed)
        upto = max((seq for seq, _ in replayed), default=0)
        frames: list[bytes] = [first] if first else []
        for seq, data in sorted([*replayed, *held], key=lambda item: item[0]):
            if marker is not None and seq > upto:
                frames.append(marker)
                marker = None
            if seq > self.last_seq:
                self.last_seq = seq
                frames.append(data)
        if marker is not None:
            frames.append(marker)
        METRICS.delivered.inc(len(replayed))
        # Written together, not one system call per frame: a reconnect replays dozens.
        for at in range(0, len(frames), REPLAY_WRITE_FRAMES):
            if not self.conn.send_frame(b"".join(frames[at : at + REPLAY_WRITE_FRAMES])):
                return


class Hub:
    """This node's connections, and ordered delivery to them."""

    def __init__(
        self,
        fetch_range: Callable[[int, int], Awaitable[list[dict]]],
        max_connections: int,
        max_per_user: int,
        replay_limit: int,
        window_bytes: int = 64 << 20,
    ):
        self._fetch_range = fetch_range
        self.max_connections = max_connections
        self.max_per_user = max_per_user
        self.hold_limit = replay_limit * 4 + 1000
        # A user's sockets as a tuple, not a set: most users have one or two, and a set per
        # user costs a socket 160 bytes more (bench connections).
        self.by_user: dict[str, tuple[Subscription, ...]] = {}
        self.by_role: dict[str, set[Subscription]] = {}
        self.everyone: set[Subscription] = set()
        self.seq = 0
        # How many broadcasts this hub has dispatched: a change tells the broadcast cache
        # that what it loaded is stale.
        self.broadcasts_seen = 0
        self._lock = asyncio.Lock()
        self._empty = asyncio.Event()
        # Ids (to seqs) of a failed write's leftovers, never to be delivered (the sequencer's).
        self.withheld: dict[str, int] = {}
        # Called with a user id whenever that user's sockets on this node change (presence).
        self.listeners: list[Callable[[str], None]] = []
        # What was dispatched lately, for replays and unread counts without a database read.
        self.recent = RecentFeed(window_bytes, replay_limit + 1)

    # ---- membership ----------------------------------------------------------------------

    def subscribe(
        self,
        conn: Connection,
        user_id: str,
        roles: Iterable[str],
        user_agent: str = "",
        ip: str | None = "",
    ) -> Subscription:
        """Add a socket (holding its live frames until ``go_live``); enforces the caps."""
        if len(self.everyone) >= self.max_connections:
            raise OverCapacity("this node is at its connection limit")
        mine = self.by_user.get(user_id, ())
        if len(mine) >= self.max_per_user:
            raise OverCapacity("this user has too many connections")
        roles = tuple(roles)  # a caller's tuple is kept as it is, not copied per socket
        if len(set(roles)) < len(roles):
            roles = tuple(dict.fromkeys(roles))
        sub = Subscription(conn, user_id, roles, user_agent, ip)
        # Everything up to here was dispatched before this socket: its starting seq.
        sub.start_seq = self.seq
        self.everyone.add(sub)
        self._empty.clear()
        self.by_user[user_id] = (*mine, sub)
        for role in sub.roles:
            self.by_role.setdefault(role, set()).add(sub)
        METRICS.connections.set(len(self.everyone))
        self._changed(user_id)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a socket and drop every reference to it."""
        self.everyone.discard(sub)
        rest = tuple(s for s in self.by_user.get(sub.user_id, ()) if s is not sub)
        if rest:
            self.by_user[sub.user_id] = rest
        else:
            self.by_user.pop(sub.user_id, None)
        for role in sub.roles:
            _discard(self.by_role, role, sub)
        METRICS.connections.set(len(self.everyone))
        if not self.everyone:
            self._empty.set()
        self._changed(sub.user_id)

    def _changed(self, user_id: str) -> None:
        METRICS.users.set(len(self.by_user))
        for listener in self.listeners:
            listener(user_id)

    def user_subscriptions(self, user_id: str) -> tuple[Subscription, ...]:
        """The sockets of one user on this node."""
        return self.by_user.get(user_id, ())

    def stats(self) -> dict:
        """Connections and users on this node."""
        return {"connections": len(self.everyone), "users": len(self.by_user)}

    def reach(self, doc: dict) -> tuple[int, set[str]]:
        """The sockets and the users on this node a document goes to (the dashboard's
        outcome of a send): the same targets delivery uses, counted, not sent to."""
        targets = self._targets(doc)
        return len(targets), {sub.user_id for sub in targets}

    # ---- delivery ------------------------------------------------------------------------

    async def deliver(self, docs: list[dict]) -> None:
        """Dispatch sequenced documents in seq order, filling gaps, dropping duplicates."""
        async with self._lock:
            for doc in sorted(docs, key=lambda d: d["seq"]):
                seq = doc["seq"]
                if seq <= self.seq:
                    METRICS.duplicates_dropped.inc()
                    continue
                if seq > self.seq + 1:
                    await self._fill(seq - 1)
                self._fanout(doc)
                self.seq = seq

    async def advance(self, seq: int) -> None:
        """Another node stored ``seq``: dispatch everything stored up to it and beyond.

        Change stream events are only a doorbell: the documents come from MongoDB by seq,
        so their types are exact and one query serves a burst of events.
        """
        if seq <= self.seq:
            METRICS.duplicates_dropped.inc()
            return
        await self.catch_up()

    async def catch_up(self) -> None:
        """Dispatch everything stored past the last dispatched seq (after a bus break)."""
        async with self._lock:
            await self._fill(None)

    async def _fill(self, upto: int | None) -> None:
        while True:
            missing = await self._fetch_range(self.seq, upto)
            if not missing:
                return
            METRICS.gap_fills.inc(len(missing))
            now = utcnow()
            for doc in missing:
                # A scheduled notification enters the feed at deliver_at, not at creation.
                entered = max(doc["created_at"], doc.get("deliver_at") or doc["created_at"])
                METRICS.bus_lag.observe(max(0.0, (now - entered).total_seconds()))
                self._fanout(doc)
                self.seq = doc["seq"]
            if upto is not None and self.seq >= upto:
                return

    def _fanout(self, doc: dict) -> None:
        if doc.get("audience") is not None:
            self.broadcasts_seen += 1
        if self.withheld:
            # A failed write's leftovers: the window may hold some that the stream brought
            # before the failure was known, so it starts again from here.
            self.recent.reset(doc["seq"])
            if doc["_id"] in self.withheld:
                return  # the caller got an error, no one gets it
        if is_hidden(doc):
            return
        targets = self._targets(doc)
        personal = doc.get("user_id") is not None
        if not targets:
            if personal:
                self.recent.record(doc, notification_frame(doc))
            return
        started = time.perf_counter()
        data = notification_frame(doc)
        if personal:
            self.recent.record(doc, data)
        seq, limit = doc["seq"], self.hold_limit
        handed = 0
        for sub in tuple(targets):
            # ``offer``'s common case inline: one call per socket fewer in a 10,000 loop.
            if sub.pending is None and seq > sub.last_seq:
                sub.last_seq = seq
                handed += sub.conn.send_frame(data)
            else:
                handed += sub.offer(seq, data, limit)
        METRICS.fanout_seconds.observe(time.perf_counter() - started)
        if handed:
            METRICS.delivered.inc(handed)
            child(METRICS.delivered_by_type, doc["type"]).inc(handed)
            METRICS.delivery_latency.observe(time.time() - doc["created_at"].timestamp())

    def _targets(self, doc: dict) -> Collection[Subscription]:
        if doc.get("user_id") is not None:
            return self.by_user.get(doc["user_id"], ())
        audience = doc.get("audience")
        if audience == "all":
            return self.everyone
        return self.by_role.get(audience, set())

    def send_user(self, user_id: str, messages: list[dict]) -> int:
        """Send unsequenced frames (read state) to every socket of a user on this node."""
        subs = self.by_user.get(user_id)
        if not subs:
            return 0
        frames = [wire.frame(m) for m in messages]
        for sub in tuple(subs):
            for data in frames:
                sub.conn.send_frame(data)
        return len(subs)

    async def emptied(self) -> None:
        """Wait until no socket is left."""
        if self.everyone:
            self._empty.clear()
            await self._empty.wait()

    def close_all(self, code: int, reason: str) -> None:
        """Close every socket (shutdown)."""
        for sub in tuple(self.everyone):
            sub.conn.close(code, reason)


def notification_frame(doc: dict) -> bytes:
    """The ``notification`` frame of a stored document, framed once for every connection."""
    return wire.frame({"type": "notification", "notification": public(doc)})


def _discard(index: dict[str, set[Subscription]], key: str, sub: Subscription) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(sub)
        if not members:
            del index[key]
