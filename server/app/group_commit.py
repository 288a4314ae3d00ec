"""Group commit: what concurrent callers hand in at once goes to MongoDB as one write.

Each caller waits for the write that holds its items, so an answer still means "stored";
while one write is on its way, the next callers' items gather for the one after it. Under
load a burst of requests costs one round trip, not one each; alone, a caller waits for
nothing but its own write.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import pymongo

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Writes the items of every waiting caller together, one write at a time."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]], timeout: float):
        self.write = write
        self.timeout = timeout  # each write's own budget: no caller's deadline is shared
        self._waiting: list[tuple[list[T], asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def add(self, items: list[T]) -> None:
        """Write ``items`` (with whatever else waits); returns once they are written."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._task is None:
            # A fresh context: the task must not inherit this caller's request deadline.
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())
        await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    with pymongo.timeout(self.timeout):
                        await self.write([item for items, _ in batch for item in items])
                except Exception as exc:  # each caller gets the failure of its own write
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._task = None
            for _, future in self._waiting:  # cancelled (shutdown): nobody writes these now
                if not future.done():
                    future.cancel()
            self._waiting = []
