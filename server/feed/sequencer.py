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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import pymongo
from pymongo.errors import PyMongoError

from server.app.errors import StorageUnavailable
from server.app.metrics import METRICS
from server.app.store import AlreadyStored, Store

log = logging.getLogger("notify.sequencer")

MAX_BATCH = 5000
HIGH_MARK_EVERY = 1000


class Sequencer:
    """Appends documents to the sequenced feed through one writer task."""

    def __init__(
        self,
        store: Store,
        after_append: Callable[[list[dict]], Awaitable[None]],
        write_timeout: float = 5.0,
        withheld: dict[str, int] | None = None,
        node_id: str | None = None,
    ):
        # Stamped as each document's ``origin`` when it is written: the node that stored it
        # (which a scheduled one's creator need not be) leaves it out of its own change
        # stream, having delivered it directly.
        self.node_id = node_id
        self.store = store
        self.after_append = after_append
        # A request waits at most this long in the queue, and its write at most this long
        # in MongoDB: storage that hangs is a 503, never a request that hangs.
        self.write_timeout = write_timeout
        # Ids (and seqs) of a failed batch's documents that the hub must not deliver; shared
        # with the hub. ``unhidden`` are those still to be hidden in MongoDB (retried).
        self.withheld: dict[str, int] = {} if withheld is None else withheld
        self.unhidden: dict[str, int] = {}
        self._waiting: list[tuple[list[dict], asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._next: int | None = None
        self._marked = 0
        self._marked_at = 0.0
        self._task: asyncio.Task | None = None
        self._keep: set[str] = set()  # ids of idempotent requests: never hidden by _undo

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

    async def append(self, docs: list[dict], idempotent: bool = False) -> list[dict]:
        """Store documents with their seq; returns once they are in MongoDB.

        A document whose ``_id`` is already stored is skipped and comes back with ``seq``
        None. ``idempotent`` requests (the scheduler's, retried under the same ``_id``) are
        left in place when their batch fails, not hidden: their retry finds them stored.
        """
        if idempotent:
            self._keep.update(d["_id"] for d in docs)
        loop = asyncio.get_running_loop()
        request = (docs, loop.create_future())
        self._waiting.append(request)
        self._wake.set()
        # A plain timer, not wait_for(shield(...)): that costs a few more loop turns on
        # every request, and this is the path of every notification stored.
        timer = loop.call_later(self.write_timeout, self._withdraw, request)
        try:
            return await request[1]
        finally:
            timer.cancel()

    def _withdraw(self, request: tuple[list[dict], asyncio.Future]) -> None:
        """The write timeout passed: a request still queued fails, with nothing written."""
        for i, queued in enumerate(self._waiting):
            if queued is request:
                del self._waiting[i]
                self._forget([request])
                METRICS.storage_errors.inc()
                if not request[1].done():
                    request[1].set_exception(StorageUnavailable("storage did not answer in time"))
                return
        # Taken by the writer: being written, and its own timeout ends the write.

    @property
    def clean(self) -> bool:
        """False while a failed batch's leftovers are not yet hidden in MongoDB."""
        return not self.unhidden

    async def _run(self) -> None:
        while True:
            if self.unhidden:  # storage was down: retry hiding leftovers until it is back
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.25)
                await self._hide_leftovers()
            else:
                await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                batch = self._take()
                try:
                    docs = await self._write([d for req, _ in batch for d in req])
                    self._forget(batch)
                except (PyMongoError, StorageUnavailable) as exc:
                    self._forget(batch)
                    METRICS.storage_errors.inc()
                    log.warning("storage write failed: %s", type(exc).__name__)
                    self._next = None
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(StorageUnavailable("storage is unavailable"))
                    continue
                except Exception as exc:  # e.g. a value BSON cannot encode: a bug, not an outage
                    self._forget(batch)  # fail this batch (a 500), but never stop the writer
                    log.exception("write failed")
                    self._next = None
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for req, fut in batch:
                    if not fut.done():
                        fut.set_result(req)
                try:
                    await self.after_append(docs)
                except Exception:  # delivery must never stop the writer
                    log.exception("delivery after append failed")
                if self.withheld and docs:  # the hub has dispatched past older leftovers
                    first = docs[0]["seq"]
                    for key in [k for k, seq in self.withheld.items() if seq < first]:
                        del self.withheld[key]

    def _forget(self, batch: list[tuple[list[dict], asyncio.Future]]) -> None:
        if self._keep:
            self._keep.difference_update(d["_id"] for req, _ in batch for d in req)

    def _take(self) -> list[tuple[list[dict], asyncio.Future]]:
        taken, size = [], 0
        while self._waiting and (not taken or size + len(self._waiting[0][0]) <= MAX_BATCH):
            req = self._waiting.pop(0)
            taken.append(req)
            size += len(req[0])
        return taken

    async def _write(self, docs: list[dict]) -> list[dict]:
        pending, written = docs, []
        try:
            with pymongo.timeout(self.write_timeout):
                await self._hide_leftovers(strict=True)
                if self._next is None:
                    self._next = await self.store.high_seq() + 1
                written = await self._insert(pending)
        except Exception:  # storage errors, and documents it refused to encode
            await self._undo([d for d in docs if d.get("seq") is not None])
            raise
        await self._mark_high()
        return written

    async def _insert(self, pending: list[dict]) -> list[dict]:
        written: list[dict] = []
        while pending:
            for offset, doc in enumerate(pending):
                doc["seq"] = self._next + offset
                if self.node_id is not None:
                    doc["origin"] = self.node_id
            try:
                stored = await self.store.append(pending)
            except AlreadyStored as dup:  # sent before (a retried schedule): skip it
                stored = dup.index
                pending[stored]["seq"] = None
                written += pending[:stored]
                self._next += stored
                pending = pending[stored + 1 :]
                continue
            written += pending[:stored]
            self._next += stored
            pending = pending[stored:]
            if pending:  # another node took our next seq: it is stored, so re-read
                self._next = await self.store.high_seq() + 1
        return written

    async def _undo(self, docs: list[dict]) -> None:
        """After a failed batch, hide what did go in, so a refused request shows nothing.

        Hidden rather than deleted: a deleted top seq could be handed out again, and a
        client that already saw it would then skip its replacement. Documents of idempotent
        requests stay: their retry finds them stored and counts them as sent. Until they
        are hidden (storage may be down), the hub withholds them and the writer retries.
        """
        docs = [d for d in docs if d["_id"] not in self._keep]
        if not docs:
            return
        leftovers = {d["_id"]: d["seq"] for d in docs}
        self.withheld.update(leftovers)  # at once: before any await lets the hub run
        self.unhidden.update(leftovers)
        self._wake.set()  # the writer retries until they are hidden
        await self._hide_leftovers()

    async def _hide_leftovers(self, strict: bool = False) -> None:
        """Hide a failed batch's leftovers; ``strict`` raises if storage refuses."""
        if not self.unhidden:
            return
        ids = list(self.unhidden)
        try:
            with pymongo.timeout(min(self.write_timeout, 2.0)):
                await self.store.hide(ids)
        except PyMongoError:
            METRICS.storage_errors.inc()
            log.warning("could not hide %d leftovers of a failed write yet", len(ids))
            if strict:
                raise
            return
        for key in ids:
            self.unhidden.pop(key, None)
        log.info("hid %d leftovers of a failed write", len(ids))

    async def _mark_high(self) -> None:
        last = (self._next or 1) - 1
        now = time.monotonic()
        if last - self._marked >= HIGH_MARK_EVERY or now - self._marked_at > 60:
            try:
                with pymongo.timeout(min(self.write_timeout, 2.0)):
                    await self.store.mark_high_seq(last)
            except PyMongoError:  # the batch is stored: a mark missed now is made next time
                METRICS.storage_errors.inc()
                return
            self._marked, self._marked_at = last, now
