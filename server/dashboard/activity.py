"""What the dashboard's overview shows over time, and the staff sockets that watch it live.

``Activity`` samples a few figures every few seconds and keeps the last hour in memory: the
open sockets, the users online, the feed's sequence number (every stored notification or
broadcast takes the next one, cluster-wide, so its growth is what was sent across the
cluster) and the frames this process wrote to sockets. Sampling reads counters that exist
anyway, so the delivery path does no extra work for the dashboard.

``LiveFeed`` pushes the overview and the connection list to the staff sockets (through a
small protocol, so no Tornado object lives here), once a second while any is open; the
hub's listener marks the list changed so it goes out within that second.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from server.app.metrics import METRICS
from server.app.timeutil import iso

if TYPE_CHECKING:
    from server.delivery.hub import Hub, Subscription

log = logging.getLogger("notify.activity")

HOUR = 3600.0
CHART_MINUTES = 60
SERIES = ("connections", "sent", "delivered", "pushed", "push_failed")
MAX_ROWS = 200  # connections listed at once; the filter finds the rest


@dataclass(frozen=True)
class Sample:
    """The figures at one moment."""

    at: float  # wall-clock seconds
    connections: int
    users: int
    seq: int
    delivered: float
    pushed: float = 0.0  # pushes this process had sent (push services' 2xx)
    push_failed: float = 0.0  # push attempts that did not succeed (retried ones included)


def push_totals() -> tuple[float, float]:
    """Pushes this process sent, and push attempts that failed (any other outcome)."""
    sent = failed = 0.0
    for metric in METRICS.push_attempts.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                if sample.labels.get("outcome") == "sent":
                    sent += sample.value
                else:
                    failed += sample.value
    return sent, failed


def delivered_total() -> float:
    """Notification frames this process has written to sockets."""
    value = METRICS.registry.get_sample_value("notify_frames_delivered_total")
    return value or 0.0


class Activity:
    """Samples a node's figures every ``interval`` seconds and keeps the last hour."""

    def __init__(self, hub: Hub, interval: float = 5.0, clock: Callable[[], float] = time.time):
        self.hub = hub
        self.interval = interval
        self.clock = clock
        self.samples: deque[Sample] = deque(maxlen=int(HOUR / interval) + 2)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Take the first sample and keep sampling in the background."""
        self.samples.append(self.sample())
        self._task = asyncio.create_task(self._run(), name="activity")

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.samples.append(self.sample())

    def sample(self) -> Sample:
        """The figures now (not stored)."""
        hub = self.hub
        local = hub.stats()
        return Sample(
            self.clock(),
            local["connections"],
            local["users"],
            hub.seq,
            delivered_total(),
            *push_totals(),
        )

    def _at(self, when: float, times: list[float]) -> Sample | None:
        """The last sample taken at or before ``when`` (else the first one, if any)."""
        if not self.samples:
            return None
        i = bisect.bisect_right(times, when)
        return self.samples[max(i - 1, 0)]

    def rates(self, now: Sample) -> dict[str, int]:
        """Sent (cluster-wide) and delivered (this process) in the last minute and hour."""
        out, times = {}, [s.at for s in self.samples]
        for name, seconds in (("minute", 60.0), ("hour", HOUR)):
            then = self._at(now.at - seconds, times) or now
            out[f"sent_{name}"] = max(0, now.seq - then.seq)
            out[f"delivered_{name}"] = max(0, round(now.delivered - then.delivered))
            out[f"pushed_{name}"] = max(0, round(now.pushed - then.pushed))
            out[f"push_failed_{name}"] = max(0, round(now.push_failed - then.push_failed))
        return out

    def chart(self, now: Sample) -> list[dict[str, Any]]:
        """One point a minute over the last hour: sockets open, notifications sent and
        frames delivered in that minute (None where the node was not yet running)."""
        if not self.samples:
            self.samples.append(now)
        times = [s.at for s in self.samples]
        first = times[0]
        end = (now.at // 60 + 1) * 60
        points = []
        for i in range(CHART_MINUTES, 0, -1):
            start, stop = end - i * 60, end - (i - 1) * 60
            if stop <= first:
                points.append({"t": _iso(start), **dict.fromkeys(SERIES)})
                continue
            a = self._at(start, times) or now
            b = now if stop > now.at else (self._at(stop, times) or now)
            points.append(
                {
                    "t": _iso(start),
                    "connections": b.connections,
                    "sent": max(0, b.seq - a.seq),
                    "delivered": max(0, round(b.delivered - a.delivered)),
                    "pushed": max(0, round(b.pushed - a.pushed)),
                    "push_failed": max(0, round(b.push_failed - a.push_failed)),
                }
            )
        return points


def _iso(seconds: float) -> str:
    return iso(datetime.fromtimestamp(seconds, UTC))


class Watcher(Protocol):
    """A staff socket as the live feed sees it."""

    user_filter: str

    def send_json(self, message: dict) -> None:
        """Send one message (dropped if the socket is gone)."""


class LiveFeed:
    """Pushes the overview and the connection list to every open staff socket."""

    def __init__(self, hub: Hub, overview: Callable[[], Any], interval: float = 1.0):
        self.hub = hub
        self.overview = overview
        self.interval = interval
        self.watchers: set[Watcher] = set()
        self.changed = True
        self._task: asyncio.Task | None = None

    def observe(self, user_id: str) -> None:
        """The hub's listener (a user's sockets changed): the list goes out on the next tick."""
        self.changed = True

    def add(self, watcher: Watcher) -> None:
        """A staff socket opened: send it everything at once, then keep it updated."""
        self.watchers.add(watcher)
        self.changed = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="live-feed")
        else:
            self.refresh(watcher)

    def remove(self, watcher: Watcher) -> None:
        """A staff socket closed."""
        self.watchers.discard(watcher)

    def refresh(self, watcher: Watcher) -> None:
        """Send one watcher its connection list now (its filter changed)."""
        watcher.send_json(self.connections(watcher.user_filter))

    async def stop(self) -> None:
        """Stop pushing."""
        self.watchers.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        ticks = 0
        while self.watchers:
            try:
                overview = await self.overview()
            except Exception:  # storage down: skip a tick, the page keeps its last figures
                log.warning("overview figures unavailable", exc_info=True)
                overview = None
            # The connection list goes out when it changed, and every 5 s for last activity.
            send_list, self.changed = self.changed or ticks % 5 == 0, False
            for watcher in tuple(self.watchers):
                if overview is not None:
                    watcher.send_json({"type": "overview", **overview})
                if send_list:
                    self.refresh(watcher)
            ticks += 1
            await asyncio.sleep(self.interval)

    def connections(self, prefix: str = "") -> dict[str, Any]:
        """The newest connections on this node (of users whose id starts with ``prefix``)."""
        hub = self.hub
        if prefix:
            subs = [
                s for uid, group in hub.by_user.items() if uid.startswith(prefix) for s in group
            ]
        else:
            subs = hub.everyone
        newest = heapq.nlargest(MAX_ROWS, subs, key=lambda s: s.connected_at)
        return {
            "type": "connections",
            "filter": prefix,
            "total": len(hub.everyone),
            "matching": len(subs),
            "items": [connection_row(s) for s in newest],
        }


def connection_row(sub: Subscription) -> dict[str, Any]:
    """One connection as the dashboard lists it."""
    return {
        "id": sub.id,
        "user_id": sub.user_id,
        "roles": list(sub.roles),
        "user_agent": sub.user_agent,
        "ip": sub.ip,
        "transport": getattr(sub.conn, "transport", "websocket"),
        "since": iso(sub.connected_at),
        "last_active": iso(sub.last_active or sub.connected_at),
    }
