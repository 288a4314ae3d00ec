"""Who connected, with which roles: written in batches, never making a connect wait.

A feed read with an API key needs a user's roles (the audiences of their broadcasts), and
the dashboard shows when a user was last seen. Every socket that opens notes its user here;
a writer task sends what was noted every ``delay`` seconds as one bulk write (a morning's
thousands of connects cost a handful of writes), and what is still queued at shutdown.
The same roles noted again within ``REMEMBER_EVERY`` seconds are not written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from server.app.metrics import METRICS
from server.app.store import Store

log = logging.getLogger("notify.users")

REMEMBER_EVERY = 300.0  # seconds: the same roles are not written again sooner
REMEMBERED_MAX = 100_000
QUEUE_MAX = 50_000  # users waiting to be written while storage is down (newest kept)
WRITE_CHUNK = 1000


class UserRecords:
    """The ``users`` collection's last-seen records, coalesced."""

    def __init__(self, store: Store, delay: float = 0.05):
        self.store = store
        self.delay = delay
        self._queue: dict[str, tuple[tuple[str, ...], datetime]] = {}
        self._writing: dict[str, tuple[tuple[str, ...], datetime]] = {}  # being written now
        # user id -> (roles, monotonic time) of the last write queued for it
        self._remembered: dict[str, tuple[tuple[str, ...], float]] = {}
        self._wake = asyncio.Event()
        self._halt = asyncio.Event()  # cuts the gathering delay short when stopping
        self._task: asyncio.Task | None = None
        self._stopping = False

    def note(self, user_id: str, roles: tuple[str, ...], at: datetime) -> None:
        """Queue a user's roles as seen now; returns at once."""
        mark = time.monotonic()
        known = self._remembered.get(user_id)
        if known is not None and known[0] == roles and mark - known[1] < REMEMBER_EVERY:
            return
        if len(self._remembered) >= REMEMBERED_MAX:
            self._remembered.clear()
        self._remembered[user_id] = (roles, mark)
        if len(self._queue) >= QUEUE_MAX:
            del self._queue[next(iter(self._queue))]
        self._queue[user_id] = (roles, at)
        self._wake.set()

    def queued_roles(self, user_id: str) -> tuple[str, ...] | None:
        """The roles noted here for a user and not yet written (a feed read right after a
        connect must not miss them), or None."""
        record = self._queue.get(user_id) or self._writing.get(user_id)
        return record[0] if record is not None else None

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="user-records")

    async def stop(self) -> None:
        """Stop the writer, then write what is still queued (briefly)."""
        self._stopping = True
        self._halt.set()
        self._wake.set()
        # The driver can swallow a cancellation that lands mid-write and the task then goes
        # on: it ends by itself at the flag, and is cancelled again until it has ended.
        task, self._task = self._task, None
        while task is not None and not task.done():
            await asyncio.wait([task], timeout=0.5)
            task.cancel()
        with contextlib.suppress(PyMongoError, TimeoutError):
            await asyncio.wait_for(self.flush(), 2.0)

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            # Let a wave of connects gather into one write (a node stopping need not wait).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), self.delay)
            self._wake.clear()
            try:
                await self.flush()
            except PyMongoError as exc:
                METRICS.storage_errors.inc()
                log.warning("could not write last-seen records yet: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
                self._wake.set()

    async def flush(self) -> None:
        """Write every queued record now; on failure they stay queued."""
        batch, self._queue = self._queue, {}
        self._writing = batch
        ops = [
            UpdateOne(
                {"_id": user_id},
                {
                    "$set": {"roles": list(roles), "last_seen": at},
                    "$setOnInsert": {"first_seen": at},
                },
                upsert=True,
            )
            for user_id, (roles, at) in batch.items()
        ]
        try:
            for start in range(0, len(ops), WRITE_CHUNK):
                await self.store.users.bulk_write(ops[start : start + WRITE_CHUNK], ordered=False)
        except BaseException:  # storage failed, or the writer was cancelled mid-write
            for user_id, record in batch.items():  # newer notes win over the failed ones
                self._queue.setdefault(user_id, record)
            raise
        finally:
            self._writing = {}
