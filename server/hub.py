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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from server import wire
from server.errors import OverCapacity
from server.metrics import METRICS
from server.render import public
from server.timeutil import utcnow

log = logging.getLogger("notify.hub")


class Connection(Protocol):
    """What the hub needs of a socket: send pre-framed bytes, and close."""

    def send_frame(self, data: bytes) -> bool:
        """Queue a framed message; False if the socket is gone or had to be dropped."""

    def close(self, code: int, reason: str) -> None:
        """Close the socket with a close code."""


_ids = itertools.count(1)


@dataclass(eq=False)
class Subscription:
    """One socket's place in the hub: its user, and how far its feed has gone."""

    conn: Connection
    user_id: str
    roles: tuple[str, ...]
    info: dict = field(default_factory=dict)
    id: str = field(default_factory=lambda: f"c{next(_ids)}")
    last_seq: int = 0
    pending: list[tuple[int, bytes]] | None = field(default_factory=list)
    overflowed: bool = False

    def offer(self, seq: int, data: bytes, limit: int) -> None:
        """Send a sequenced frame, or hold it while the socket is still replaying."""
        if self.pending is not None:
            if len(self.pending) >= limit:
                self.overflowed = True
            else:
                self.pending.append((seq, data))
            return
        if seq > self.last_seq:
            self.last_seq = seq
            if self.conn.send_frame(data):
                METRICS.delivered.inc()

    def go_live(self, replayed: Iterable[tuple[int, bytes]], marker: bytes | None = None) -> None:
        """Send the replay and ``marker``, then what arrived meanwhile, then deliver live."""
        held, self.pending = self.pending or [], None
        for seq, data in replayed:
            self.offer(seq, data, 0)
        if marker is not None:
            self.conn.send_frame(marker)
        for seq, data in held:
            self.offer(seq, data, 0)


class Hub:
    """This node's connections, and ordered delivery to them."""

    def __init__(
        self,
        fetch_range: Callable[[int, int], Awaitable[list[dict]]],
        max_connections: int,
        max_per_user: int,
        replay_limit: int,
    ):
        self._fetch_range = fetch_range
        self.max_connections = max_connections
        self.max_per_user = max_per_user
        self.hold_limit = replay_limit * 4 + 1000
        self.by_user: dict[str, set[Subscription]] = {}
        self.by_role: dict[str, set[Subscription]] = {}
        self.everyone: set[Subscription] = set()
        self.seq = 0
        self._lock = asyncio.Lock()
        self._empty = asyncio.Event()

    # ---- membership ----------------------------------------------------------------------

    def subscribe(
        self, conn: Connection, user_id: str, roles: Iterable[str], info: dict | None = None
    ) -> Subscription:
        """Add a socket (holding its live frames until ``go_live``); enforces the caps."""
        if len(self.everyone) >= self.max_connections:
            raise OverCapacity("this node is at its connection limit")
        mine = self.by_user.get(user_id, ())
        if len(mine) >= self.max_per_user:
            raise OverCapacity("this user has too many connections")
        sub = Subscription(conn, user_id, tuple(dict.fromkeys(roles)), info or {})
        sub.info.setdefault("connected_at", utcnow())
        self.everyone.add(sub)
        self._empty.clear()
        self.by_user.setdefault(user_id, set()).add(sub)
        for role in sub.roles:
            self.by_role.setdefault(role, set()).add(sub)
        METRICS.connections.set(len(self.everyone))
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a socket and drop every reference to it."""
        self.everyone.discard(sub)
        _discard(self.by_user, sub.user_id, sub)
        for role in sub.roles:
            _discard(self.by_role, role, sub)
        METRICS.connections.set(len(self.everyone))
        if not self.everyone:
            self._empty.set()

    def user_subscriptions(self, user_id: str) -> set[Subscription]:
        """The sockets of one user on this node."""
        return self.by_user.get(user_id, set())

    def stats(self) -> dict:
        """Connections and users on this node."""
        return {"connections": len(self.everyone), "users": len(self.by_user)}

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
                METRICS.bus_lag.observe(max(0.0, (now - doc["created_at"]).total_seconds()))
                self._fanout(doc)
                self.seq = doc["seq"]
            if upto is not None and self.seq >= upto:
                return

    def _fanout(self, doc: dict) -> None:
        targets = self._targets(doc)
        if not targets:
            return
        data = wire.frame({"type": "notification", "notification": public(doc)})
        seq, limit = doc["seq"], self.hold_limit
        for sub in tuple(targets):
            sub.offer(seq, data, limit)

    def _targets(self, doc: dict) -> set[Subscription]:
        if doc.get("user_id") is not None:
            return self.by_user.get(doc["user_id"], set())
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


def _discard(index: dict[str, set[Subscription]], key: str, sub: Subscription) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(sub)
        if not members:
            del index[key]
