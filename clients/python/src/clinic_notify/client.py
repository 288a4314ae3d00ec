"""``NotifyClient`` (blocking) and ``AsyncNotifyClient`` (asyncio), over httpx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Callable, Union

import httpx

from clinic_notify.calls import Call, Operations, read_answer, retry_delay
from clinic_notify.errors import NotifyError
from clinic_notify.listen import Listener

TokenSource = Union[str, Callable[[], Union[str, Awaitable[str]]]]
USER_AGENT = "clinic-notify-python/0.2.0"


class _Base:
    """What both clients hold: the base URL, the key's headers, timeouts and retry policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
    ):
        if not api_key:
            raise ValueError("an API key is required")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}({self.base_url!r})"

    def _request(self, call: Call) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "params": call.params(),
            "content": call.content(),
            "headers": {**self._headers, **call.headers()},
        }

    def _answer(self, call: Call, response: httpx.Response) -> Any:
        retry_after = response.headers.get("Retry-After")
        return read_answer(call, response.status_code, response.content, retry_after)

    def _unreachable(self, exc: Exception) -> NotifyError:
        return NotifyError("unreachable", f"{self.base_url}: {type(exc).__name__}: {exc}")


class NotifyClient(_Base, Operations[Any]):
    """The REST API, blocking: each method returns the answer's ``data``.

    Retries 429 and 503 answers (waiting what ``Retry-After`` says) and failed connections up
    to ``retries`` times; every write carries an ``Idempotency-Key``, the same on its retries.
    Use it as a context manager, or call ``close()``, to release its connections.
    """

    def __init__(self, base_url: str, api_key: str, **options: Any):
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(timeout=self.timeout)

    def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                try:
                    response = self._http.request(**self._request(call))
                except httpx.TransportError as exc:
                    raise self._unreachable(exc) from None
                return self._answer(call, response)
            except NotifyError as error:
                delay = retry_delay(error, attempt, self.retries, self.max_retry_wait)
                if delay is None:
                    raise
            attempt += 1
            time.sleep(delay)

    def close(self) -> None:
        """Release the connections."""
        self._http.close()

    def __enter__(self) -> NotifyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncNotifyClient(_Base, Operations[Awaitable[Any]]):
    """The REST API for asyncio: each method is awaited for ``data``; and ``listen``.

    Same retries and Idempotency-Key as ``NotifyClient``. ``async with`` it, or ``await
    client.aclose()``.
    """

    def __init__(self, base_url: str, api_key: str | None = None, **options: Any):
        # listen() alone needs no API key, only a connection token.
        super().__init__(base_url, api_key or "-", **options)
        if not api_key:
            del self._headers["Authorization"]
        self._http = httpx.AsyncClient(timeout=self.timeout)

    async def _send(self, call: Call) -> Any:
        attempt = 0
        while True:
            try:
                try:
                    response = await self._http.request(**self._request(call))
                except httpx.TransportError as exc:
                    raise self._unreachable(exc) from None
                return self._answer(call, response)
            except NotifyError as error:
                delay = retry_delay(error, attempt, self.retries, self.max_retry_wait)
                if delay is None:
                    raise
            attempt += 1
            await asyncio.sleep(delay)

    def listen(
        self,
        user_id: str | None,
        token: TokenSource,
        *,
        since: str | None = None,
        frames: bool = False,
        **options: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """The user's notifications as they arrive: ``async for n in client.listen(uid, tok)``.

        Acks each one, drops duplicates by id, reconnects with capped, jittered backoff and
        resumes with ``since`` = the last cursor seen, so nothing is missed across an outage.
        ``token`` is a token, or a function (sync or async) giving a fresh one on each
        connect. ``frames=True`` yields every frame (welcome, replay_done...) instead.
        Raises NotifyError when the service refuses the token or the request for good.
        ``options``: ``ack``, ``min_delay``, ``max_delay``, ``ping_interval``, ``on_status``
        (a function given a line of connection news).
        """
        listener = Listener(self.base_url, user_id, token, since=since, **options)
        return listener.frames() if frames else listener.notifications()

    async def aclose(self) -> None:
        """Release the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncNotifyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
