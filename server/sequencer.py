"""Gives every stored notification its place in the one feed order, cluster-wide.

Each node writes through one task that batches whatever requests are waiting (group
commit) and inserts them with consecutive ``seq`` values under a unique index. A node only
uses seq n after it has seen n - 1 stored (its own insert, or a duplicate-key refusal that
sends it to re-read the highest seq), so the order in which documents become visible is the
seq order, with no gaps: replay by ``seq > cursor`` can never skip an item that commits
later. This needs no multi-document transaction, which the embedded server cannot run
concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pymongo.errors import PyMongoError

from server.errors import StorageUnavailable
from server.metrics import METRICS
from server.store import Store

log = logging.getLogger("notify.sequencer")

MAX_BATCH = 5000
HIGH_MARK_EVERY = 1000


class Sequencer:
    """Appends documents to the sequenced feed through one writer task."""

    def __init__(self, store: Store, after_append: Callable[[list[dict]], Awaitable[None]]):
        self.store = store
        self.after_append = after_append
        self._waiting: list[tuple[list[dict], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._next: int | None = None
        self._marked = 0
        self._marked_at = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="sequencer")

    async def stop(self) -> None:
        """Stop the writer task; requests still waiting fail."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, fut in self._waiting:
            if not fut.done():
                fut.set_exception(StorageUnavailable("the service is shutting down"))

    async def append(self, docs: list[dict]) -> list[dict]:
        """Store documents with their seq; returns once they are in MongoDB."""
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append((docs, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch = self._take()
                try:
                    docs = await self._write([d for req, _ in batch for d in req])
                except (PyMongoError, StorageUnavailable) as exc:
                    METRICS.storage_errors.inc()
                    log.warning("storage write failed: %s", type(exc).__name__)
                    self._next = None
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(StorageUnavailable("storage is unavailable"))
                    continue
                for req, fut in batch:
                    if not fut.done():
                        fut.set_result(req)
                try:
                    await self.after_append(docs)
                except Exception:  # delivery must never stop the writer
                    log.exception("delivery after append failed")

    def _take(self) -> list[tuple[list[dict], asyncio.Future]]:
        taken, size = [], 0
        while self._waiting and (not taken or size + len(self._waiting[0][0]) <= MAX_BATCH):
            req = self._waiting.pop(0)
            taken.append(req)
            size += len(req[0])
        return taken

    async def _write(self, docs: list[dict]) -> list[dict]:
        if self._next is None:
            self._next = await self.store.high_seq() + 1
        pending = docs
        try:
            while pending:
                for offset, doc in enumerate(pending):
                    doc["seq"] = self._next + offset
                stored = await self.store.append(pending)
                self._next += stored
                pending = pending[stored:]
                if pending:  # another node took our next seq: it is stored, so re-read
                    self._next = await self.store.high_seq() + 1
        except PyMongoError:
            await self._undo(docs)
            raise
        await self._mark_high()
        return docs

    async def _undo(self, docs: list[dict]) -> None:
        """After a failed batch, hide what did go in, so a refused request shows nothing.

        Hidden rather than deleted: a deleted top seq could be handed out again, and a
        client that already saw it would then skip its replacement.
        """
        try:
            await self.store.hide([d["_id"] for d in docs])
        except PyMongoError:
            log.warning("could not hide a partly written batch of %d", len(docs))

    async def _mark_high(self) -> None:
        last = (self._next or 1) - 1
        now = time.monotonic()
        if last - self._marked >= HIGH_MARK_EVERY or now - self._marked_at > 60:
            await self.store.mark_high_seq(last)
            self._marked, self._marked_at = last, now
