"""The visible broadcasts of each audience, held in memory for what sockets read on connect.

Every socket that connects needs its user's unread count, and a reconnecting one its replay;
both include the broadcasts of the user's audiences. Those are few and the same for every
member, so a node reads an audience's broadcasts from MongoDB once and reuses them, rather
than querying per socket (a morning's 5,000 connects would be 10,000 queries more).

Why reuse is exact: the hub dispatches every stored notification and broadcast, from any
node, once and in seq order. A load taken while the hub dispatched no broadcast therefore
holds every broadcast up to the hub's last dispatched seq, and anything later reaches a socket live
(it subscribed before reading). A newer broadcast makes every load stale, and so does age
(``max_age``: documents hidden or purged by MongoDB in the meantime). Expiry is applied at
each read, from ``visible_until``. When a load is due, the sockets that connect while it
is on its way wait for that one load (a reload at 1,000 connects a second was otherwise a
read per connect until the first came back), unless a broadcast was dispatched since it
began: they then start a newer one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

from server.app.store import Store
from server.app.timeutil import as_datetime, utcnow
from server.delivery.hub import Hub


@dataclass
class _Loaded:
    docs: list[dict]
    mark: int  # the hub's broadcast count when the load began
    at: float  # monotonic time of the load


class BroadcastCache:
    """Each audience's visible broadcasts, reloaded after the hub dispatches a new one."""

    def __init__(self, store: Store, hub: Hub, max_age: float = 30.0):
        self.store = store
        self.hub = hub
        self.max_age = max_age
        self._loaded: dict[str, _Loaded] = {}
        self._loading: dict[str, tuple[int, asyncio.Future]] = {}  # audience: (mark, load)

    async def visible(self, audiences: list[str], now: datetime) -> list[dict]:
        """The broadcasts to any of these audiences visible at ``now``, oldest first."""
        found: list[dict] = []
        for audience in dict.fromkeys(audiences):
            found += [d for d in await self._of(audience) if _visible(d, now)]
        return sorted(found, key=lambda d: d["seq"])

    async def _of(self, audience: str) -> list[dict]:
        loaded = self._loaded.get(audience)
        mark, clock = self.hub.broadcasts_seen, time.monotonic()
        if loaded is not None and loaded.mark == mark and clock - loaded.at <= self.max_age:
            return loaded.docs
        loading = self._loading.get(audience)
        if loading is None or loading[0] != mark:
            loading = (mark, asyncio.ensure_future(self._load(audience, mark, clock)))
            self._loading[audience] = loading
        # Shielded: a socket that closes meanwhile must not cancel the others' load.
        return await asyncio.shield(loading[1])

    async def _load(self, audience: str, mark: int, clock: float) -> list[dict]:
        try:
            docs = await self.store.visible_broadcasts(audience, utcnow())
            self._loaded[audience] = _Loaded(docs, mark, clock)
            return docs
        finally:
            if self._loading.get(audience, (None,))[0] == mark:
                del self._loading[audience]


def _visible(doc: dict, now: datetime) -> bool:
    until = as_datetime(doc.get("visible_until"))
    return until is not None and until > now
