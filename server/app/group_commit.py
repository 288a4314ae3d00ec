"""Group commit: what concurrent callers hand in at once goes to MongoDB as one operation.

Each caller waits for the operation that holds its items and gets its result, so an answer
still means "stored" (or, for a read, "read after I asked"); while one operation is on its
way, the next callers' items gather for the one after it. Under load a burst of requests
costs one round trip, not one each; alone, a caller waits for nothing but its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import pymongo

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Runs ``operation`` on the items of every waiting caller together, one at a time."""

    def __init__(self, operation: Callable[[list[T]], Awaitable[Any]], timeout: float):
        self.operation = operation
        self.timeout = timeout  # each operation's own budget: no caller's deadline is shared
        self._waiting: list[tuple[list[T], asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def add(self, items: list[T]) -> Any:
        """Hand in ``items``; returns the result of the operation that took them, which
        started after this call."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._task is None:
            # A fresh context: the task must not inherit this caller's request deadline.
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    with pymongo.timeout(self.timeout):
                        result = await self.operation([i for items, _ in batch for i in items])
                except Exception as exc:  # each caller gets the failure of its own operation
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(result)
        finally:
            self._task = None
            for _, future in self._waiting:  # cancelled (shutdown): nobody runs these now
                if not future.done():
                    future.cancel()
            self._waiting = []
