"""Fan-out between nodes on MongoDB change streams; no broker besides MongoDB.

Each node watches two collections: ``notifications`` (every sequenced insert, from any
node) and ``events`` (read-state changes and acknowledgements). A change event is only a
doorbell: notifications are read back by seq, so the hub dispatches each one once and in
order, whichever way it came (this node's own write, or the stream). A stream that breaks
(primary step-down, network blip, the embedded server restarted) is reopened after the
last event handled; what a resume cannot replay (a token too old, or events written while
the embedded server kept no change log) is caught up from MongoDB: notifications by seq,
read events by time. Every break is logged with how long it lasted and what was caught up,
and counted (``notify_bus_gaps``, ``notify_bus_gap_items``).

The embedded server answers a change stream's getMore at once instead of waiting up to
``maxAwaitTimeMS`` for an event; after an empty answer that quick the bus pauses ``poll``
seconds, doubling while nothing comes up to ``poll_max`` and back to ``poll`` at the first
event, so that an idle node does not spin and a busy one hears the next event within
``poll``. A real MongoDB waits server-side and gets no pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import timedelta

from bson import ObjectId
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from server.app.metrics import METRICS
from server.app.store import Store
from server.app.timeutil import utcnow
from server.delivery import wire
from server.delivery.hub import Hub

log = logging.getLogger("notify.bus")

# MongoDB's codes for a resume token that is too old or otherwise unusable:
# CappedPositionLost, InvalidResumeToken, ChangeStreamFatalError, ChangeStreamHistoryLost.
LOST_HISTORY = {136, 260, 280, 286}
# Other command failures in a row before the token is dropped anyway (catch-up covers it).
TOKEN_FAILURES = 3
# An empty getMore answered faster than this did not wait server-side (the embedded server).
QUICK_ANSWER = 0.05
# Read events are caught up from this long before the stream was last seen healthy: room
# for clock skew between nodes (their ``at``) and for inserts in flight.
EVENT_SLACK = timedelta(seconds=30)
SEEN_EVENTS = 10000
EVENT_PAGE = 1000
# Longest pause between reopening attempts; each failed attempt also waits out the driver's
# server selection timeout, so a database that is down is not hammered.
MAX_RETRY_DELAY = 1.0

Handler = Callable[[dict], Awaitable[None]]


class Bus:
    """This node's view of what every node writes."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        node_id: str,
        watch: bool = True,
        poll: float = 0.025,
        poll_max: float = 0.2,
        own_notifications: bool = True,
    ):
        # ``own_notifications`` False: this node's own inserts reach its hub directly (the
        # sequencer's direct delivery), so its stream leaves them out. Its own events are
        # always left out: ``publish_event`` delivers them here first.
        self.own_notifications = own_notifications
        self.store = store
        self.hub = hub
        self.node_id = node_id
        self.watch = watch
        self.poll = poll
        self.poll_max = max(poll, poll_max)
        self.tokens: dict[str, dict | None] = {"notifications": None, "events": None}
        self._tasks: list[asyncio.Task] = []
        self._streams: dict[str, object] = {}
        self._stopping = False
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._events_heard = utcnow()  # every event published before this was handled
        self._started_at = self._events_heard
        self.ready = asyncio.Event()

    def start(self) -> None:
        """Start watching (when enabled)."""
        self._events_heard = self._started_at = utcnow()
        if self.watch:
            self.hub.current = False  # until the stream has been heard out once
            self._tasks = [
                asyncio.create_task(self._follow("notifications", self._on_notification)),
                asyncio.create_task(self._follow("events", self._on_event)),
            ]
        else:
            self.ready.set()

    @property
    def following(self) -> bool:
        """True while the notifications stream is open."""
        return "notifications" in self._streams

    async def stop(self) -> None:
        """Stop watching: close the streams, then end the tasks.

        Cancelling alone is not enough: the driver can absorb a cancellation that lands in
        the middle of a getMore and go on iterating, so the streams are closed first.
        """
        self._stopping = True
        for stream in list(self._streams.values()):
            with contextlib.suppress(Exception):
                await stream.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def publish_event(self, event: dict) -> None:
        """Deliver a read-state event here at once, and to the other nodes through MongoDB."""
        self._deliver_event(event)
        doc = {"_id": str(ObjectId()), "origin": self.node_id, "at": utcnow(), **event}
        try:
            await self.store.insert_event(doc)
        except PyMongoError:
            METRICS.storage_errors.inc()
            log.warning("could not publish a read event to other nodes")

    # ---- following a stream --------------------------------------------------------------

    async def _follow(self, collection: str, handle: Handler) -> None:
        """Keep a stream open for good: reopen after a break, then catch up what it missed."""
        delay, first, broke_at, refused = 0.1, True, None, 0
        while not self._stopping:
            try:
                own = collection == "notifications" and self.own_notifications
                skip = None if own else self.node_id
                watch = self.store.watch(collection, self.tokens[collection], skip_origin=skip)
                async with await watch as stream:
                    self._streams[collection] = stream
                    caught = await self._catch_up(collection, first)
                    if not first:
                        self._log_gap(collection, broke_at, caught)
                    first, broke_at, delay, refused = False, None, 0.1, 0
                    if collection == "notifications":
                        self.ready.set()
                    await self._drain(collection, stream, handle)
            except asyncio.CancelledError:
                raise
            except OperationFailure as exc:
                refused += 1
                self._on_refusal(collection, exc, refused)
            except ConnectionFailure as exc:
                log.warning("%s stream broke: %s", collection, type(exc).__name__)
                METRICS.bus_restarts.labels("error").inc()
            except PyMongoError as exc:
                log.warning("%s stream failed: %s", collection, type(exc).__name__)
                METRICS.bus_restarts.labels("error").inc()
            except Exception:
                log.exception("%s stream handler failed", collection)
                METRICS.bus_restarts.labels("error").inc()
            finally:
                self._streams.pop(collection, None)
                if collection == "events":  # reads elsewhere may go unheard meanwhile
                    self.hub.recent.forget_unread()
                else:  # other nodes' notifications go unheard meanwhile
                    self.hub.current = False
            if self._stopping:
                return
            if broke_at is None and not first:
                broke_at = time.monotonic()
            await asyncio.sleep(delay + random.random() * delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _on_refusal(self, collection: str, exc: OperationFailure, refused: int) -> None:
        """A command failure: drop a resume token MongoDB cannot use (catch-up covers it)."""
        lost = exc.code in LOST_HISTORY or refused >= TOKEN_FAILURES
        if lost and self.tokens[collection] is not None:
            log.warning("%s stream cannot resume (code %s); catching up", collection, exc.code)
            METRICS.bus_restarts.labels("history_lost").inc()
            self.tokens[collection] = None
        else:
            log.warning("%s stream failed: code %s", collection, exc.code)
            METRICS.bus_restarts.labels("error").inc()

    async def _drain(self, collection: str, stream, handle: Handler) -> None:
        """Handle events until the stream closes; remember the last one handled."""
        loop = asyncio.get_running_loop()
        cursor = _cursor_of(stream)
        pause = self.poll
        while stream.alive and not self._stopping:
            asked = loop.time()
            change = await stream.try_next()
            if _cursor_of(stream) is not cursor:
                # The driver resumed the stream by itself after an error. On MongoDB that
                # replays everything; the embedded server kept no change log while it was
                # down, so catch up as after any break.
                cursor = _cursor_of(stream)
                self._log_gap(collection, None, await self._catch_up(collection, first=False))
            if collection == "events":
                self._events_heard = utcnow()
            if change is None:
                if collection == "notifications":  # heard all there was: none waits here
                    self.hub.current = True
                if stream.resume_token is not None:  # past events the filter skipped
                    self.tokens[collection] = stream.resume_token
                if loop.time() - asked < QUICK_ANSWER:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, self.poll_max)
                continue
            pause = self.poll
            if collection == "notifications":  # more may be queued behind this one
                self.hub.current = False
            await handle(change.get("fullDocument") or {})
            self.tokens[collection] = change["_id"]

    async def _catch_up(self, collection: str, first: bool) -> int:
        """Fetch what the stream may have missed while it was not open; returns how many."""
        if collection == "notifications":
            before = self.hub.seq
            await self.hub.catch_up()
            return self.hub.seq - before
        # Never from before this node started: its sockets' welcome counts are newer.
        since = self._events_heard if first else self._events_heard - EVENT_SLACK
        since, caught = max(since, self._started_at), 0
        while True:
            page = await self.store.events_since(since, EVENT_PAGE)
            for doc in page:
                if self._first_time(doc["_id"]) and doc.get("origin") != self.node_id:
                    self._deliver_event(doc, late=True)
                    caught += 1
            if len(page) < EVENT_PAGE or page[-1]["at"] <= since:
                return caught
            since = page[-1]["at"]  # $gte: the boundary's events come again, and are skipped

    def _log_gap(self, collection: str, broke_at: float | None, caught: int) -> None:
        if collection == "events":
            self.hub.recent.forget_unread()
        METRICS.bus_gaps.labels(collection).inc()
        METRICS.bus_gap_items.labels(collection).inc(caught)
        if broke_at is None:
            how = "resumed by the driver"
        else:
            how = f"reopened after {time.monotonic() - broke_at:.1f} s"
        log.warning("%s stream %s; %d caught up from MongoDB", collection, how, caught)

    # ---- what the streams carry ----------------------------------------------------------

    async def _on_notification(self, doc: dict) -> None:
        seq = doc.get("seq")
        if isinstance(seq, int):
            await self.hub.advance(seq)
        else:  # not a plain number in the event (an unusual encoding): read from MongoDB
            await self.hub.catch_up()

    async def _on_event(self, doc: dict) -> None:
        if self._first_time(str(doc.get("_id"))) and doc.get("origin") != self.node_id:
            self._deliver_event(doc)

    def _first_time(self, event_id: str) -> bool:
        """Remember an event id; False if it was handled before (stream and catch-up overlap)."""
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > SEEN_EVENTS:
            self._seen.popitem(last=False)
        return True

    def _deliver_event(self, event: dict, late: bool = False) -> None:
        """Send a read or acknowledgement event's frames to the user's sockets here.

        A ``late`` event (caught up after a break) skips sockets that connected after it
        was published: their welcome already carried a newer unread count (and a feed
        fetched after it, the acknowledgement).
        """
        self._note_change(event)
        kind = event.get("kind")
        try:
            user_id = str(event["user_id"])
            if kind == "read":
                messages = [
                    {"type": "read", "ids": list(event["ids"])},
                    {"type": "unread_count", "count": int(event["count"])},
                ]
            elif kind == "acknowledged":
                messages = [{"type": "acknowledged", "id": str(event["id"])}]
            else:
                return
        except (KeyError, TypeError, ValueError):
            log.warning("ignored a malformed %s event", kind)
            return
        if not late:
            self.hub.send_user(user_id, messages)
            return
        frames = [wire.frame(m) for m in messages]
        for sub in tuple(self.hub.user_subscriptions(user_id)):
            if sub.connected_at <= event["at"]:
                for data in frames:
                    sub.conn.send_frame(data)

    def _note_change(self, event: dict) -> None:
        """Tell the recent window which notifications changed since they were sent."""
        try:
            user_id = str(event["user_id"])
            ids = [str(i) for i in event["ids"]] if "ids" in event else [str(event["id"])]
        except (KeyError, TypeError):
            return
        self.hub.recent.changed(user_id, ids, read=event.get("kind") == "read")


def _cursor_of(stream: object) -> object:
    """The server cursor under a change stream: a new one means the driver resumed it."""
    return getattr(stream, "_cursor", None)  # PyMongo's (pinned); None: no detection
