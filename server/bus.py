"""Fan-out between nodes on MongoDB change streams; no broker besides MongoDB.

Each node watches two collections: ``notifications`` (every sequenced insert, from any
node) and ``events`` (read-state changes). A broken stream resumes after the last event it
handled; if it cannot, the hub catches up from MongoDB by seq, so a hiccup loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from bson import ObjectId
from pymongo.errors import OperationFailure, PyMongoError

from server.hub import Hub
from server.metrics import METRICS
from server.store import Store
from server.timeutil import utcnow

log = logging.getLogger("notify.bus")

# MongoDB's codes for a resume token that is too old or otherwise unusable.
LOST_HISTORY = {136, 280, 286}


class Bus:
    """This node's view of what every node writes."""

    def __init__(self, store: Store, hub: Hub, node_id: str, watch: bool = True):
        self.store = store
        self.hub = hub
        self.node_id = node_id
        self.watch = watch
        self.tokens: dict[str, dict | None] = {"notifications": None, "events": None}
        self._tasks: list[asyncio.Task] = []
        self._streams: dict[str, object] = {}
        self._stopping = False
        self.ready = asyncio.Event()

    def start(self) -> None:
        """Start watching (when enabled)."""
        if self.watch:
            self._tasks = [
                asyncio.create_task(self._follow("notifications", self._on_notification)),
                asyncio.create_task(self._follow("events", self._on_event)),
            ]
        else:
            self.ready.set()

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

    async def _follow(self, collection: str, handle) -> None:
        delay = 0.1
        opened = 0
        while not self._stopping:
            try:
                async with await self.store.watch(collection, self.tokens[collection]) as stream:
                    self._streams[collection] = stream
                    opened += 1
                    if opened > 1 or collection == "notifications":
                        # Anything stored while no stream was open is fetched by seq.
                        await self.hub.catch_up()
                    if collection == "notifications":
                        self.ready.set()
                    delay = 0.1
                    async for change in stream:
                        if self._stopping:
                            return
                        await handle(change["fullDocument"])
                        self.tokens[collection] = change["_id"]
            except asyncio.CancelledError:
                raise
            except OperationFailure as exc:
                if exc.code in LOST_HISTORY and self.tokens[collection] is not None:
                    log.warning("%s stream history lost; catching up by seq", collection)
                    METRICS.bus_restarts.labels("history_lost").inc()
                    self.tokens[collection] = None
                else:
                    log.warning("%s stream failed: %s", collection, exc.code)
                    METRICS.bus_restarts.labels("error").inc()
            except PyMongoError as exc:
                log.warning("%s stream broke: %s", collection, type(exc).__name__)
                METRICS.bus_restarts.labels("error").inc()
            except Exception:
                log.exception("%s stream handler failed", collection)
                METRICS.bus_restarts.labels("error").inc()
            await asyncio.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 5.0)

    async def _on_notification(self, doc: dict) -> None:
        await self.hub.advance(int(doc["seq"]))

    async def _on_event(self, doc: dict) -> None:
        if doc.get("origin") != self.node_id:
            self._deliver_event(doc)

    def _deliver_event(self, event: dict) -> None:
        if event.get("kind") == "read":
            self.hub.send_user(
                event["user_id"],
                [
                    {"type": "read", "ids": event["ids"]},
                    {"type": "unread_count", "count": event["count"]},
                ],
            )
