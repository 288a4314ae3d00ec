"""Sending one signed attempt: an async HTTP client, timeouts, bounded concurrency per endpoint.

Each endpoint gets at most ``concurrency`` requests in flight; the client's own pool is large
enough that a slow or dead endpoint only ever fills its own slots, never another's, and a
request never waits longer than the timeout. Redirects are not followed (a redirect could
lead to a private address); names are resolved through ``PublicResolver`` at send time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError

from server.app.outbound import BlockedAddress, PublicResolver, url_problem
from server.webhooks import signing

POOL = 1000  # the client's connections in all; per endpoint the semaphore bounds them
MAX_ANSWER_BYTES = 65536  # what an endpoint may answer; the body is not read beyond this
USER_AGENT = "clinic-notify-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """One attempt's result: the HTTP status (None: no answer) and its kind for metrics."""

    status: int | None
    kind: str  # success, http_error, timeout, network_error, blocked

    @property
    def ok(self) -> bool:
        return self.kind == "success"


class Sender:
    """Signs and sends attempts; one per process, its client closed at shutdown."""

    def __init__(self, allow_private: bool, timeout: float, concurrency: int):
        self.allow_private = allow_private
        self.timeout = timeout
        self.concurrency = concurrency
        self.client = AsyncHTTPClient(
            force_instance=True,
            max_clients=POOL,
            resolver=PublicResolver(allow_private=allow_private),
            max_body_size=MAX_ANSWER_BYTES,
        )
        self._slots: dict[str, asyncio.Semaphore] = {}

    def slots(self, endpoint_id: str) -> asyncio.Semaphore:
        """The endpoint's semaphore of requests in flight."""
        slot = self._slots.get(endpoint_id)
        if slot is None:
            slot = self._slots[endpoint_id] = asyncio.Semaphore(self.concurrency)
        return slot

    async def send(self, endpoint: dict, msg_id: str, body: str) -> Outcome:
        """One signed POST of ``body`` to the endpoint (call holding one of its slots)."""
        if url_problem(endpoint["url"], self.allow_private) is not None:
            return Outcome(None, "blocked")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **signing.headers(endpoint["secret"], msg_id, int(time.time()), body),
        }
        request = HTTPRequest(
            endpoint["url"],
            method="POST",
            headers=headers,
            body=body.encode(),
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
            decompress_response=False,
        )
        try:
            response = await self.client.fetch(request, raise_error=False)
        except BlockedAddress:  # the name resolves to loopback or private addresses only
            return Outcome(None, "blocked")
        except HTTPTimeoutError:
            return Outcome(None, "timeout")
        except Exception:  # refused, reset, unknown name, TLS: no HTTP answer
            return Outcome(None, "network_error")
        if 200 <= response.code < 300:
            return Outcome(response.code, "success")
        return Outcome(response.code, "http_error")

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()
