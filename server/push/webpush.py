"""Sending one Web Push message: RFC 8291 encryption, RFC 8292 VAPID, RFC 8030 headers.

The cryptography is http-ece's (what pywebpush builds on) and PyJWT's ES256; the request
goes through Tornado's async HTTP client with a resolver that refuses non-public addresses.
Encrypting one message costs a fraction of a millisecond, and it happens only after the
per-origin slot is taken, so at most ``concurrency`` of them run back to back on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import http_ece
from cryptography.hazmat.primitives.asymmetric import ec
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from server.app.outbound import BlockedAddress, PublicResolver
from server.app.timeutil import utcnow
from server.push.vapid import Vapid, b64url, unb64url

log = logging.getLogger("notify.push")

URGENCY = {"low": "low", "normal": "normal", "high": "high", "critical": "high"}
TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
LATER = -1  # the status of a message not sent: its slot came after the caller's deadline


@dataclass(frozen=True)
class Answer:
    """What a push service said: its status (0: no answer) and any Retry-After seconds."""

    status: int
    retry_after: float | None = None
    reason: str = ""


def topic_of(notification_id: str) -> str:
    """The Topic header: base64url, at most 32 characters, from the notification id."""
    if TOPIC_RE.match(notification_id):
        return notification_id
    return b64url(hashlib.sha256(notification_id.encode()).digest())[:32]


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """The ``aes128gcm`` body of one message for a subscription's keys (RFC 8291)."""
    sender = ec.generate_private_key(ec.SECP256R1())  # a fresh key per message, as required
    return http_ece.encrypt(
        payload,
        salt=os.urandom(16),
        private_key=sender,
        dh=unb64url(p256dh),
        auth_secret=unb64url(auth),
        version="aes128gcm",
    )


def origin_of(endpoint: str) -> str:
    """The endpoint's origin: the VAPID JWT's ``aud``."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - utcnow()).total_seconds())
    except (TypeError, ValueError):
        return None


class Sender:
    """Sends encrypted messages, a bounded number at once per push service."""

    def __init__(self, vapid: Vapid, allow_private: bool, timeout: float, concurrency: int):
        self.vapid = vapid
        self.timeout = timeout
        self.concurrency = concurrency
        self._slots: dict[str, asyncio.Semaphore] = {}
        # Its own client: the shared one's 10 connections would cap every origin together.
        self.client = AsyncHTTPClient(
            force_instance=True,
            max_clients=concurrency * 8,
            resolver=PublicResolver(allow_private=allow_private),
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    async def send(
        self,
        sub: dict,
        payload: bytes,
        ttl: int,
        urgency: str,
        topic: str,
        deadline: float | None = None,
    ) -> Answer:
        """Encrypt ``payload`` for ``sub`` and post it; never raises for the far end's faults.

        ``deadline`` (loop time): a message whose turn comes later is not sent (``LATER``).
        """
        origin = origin_of(sub["endpoint"])
        slot = self._slots.get(origin)
        if slot is None:
            slot = self._slots[origin] = asyncio.Semaphore(self.concurrency)
        async with slot:
            if deadline is not None and asyncio.get_running_loop().time() > deadline:
                return Answer(LATER, reason="later")
            body = encrypt(payload, sub["p256dh"], sub["auth"])
            request = HTTPRequest(
                sub["endpoint"],
                method="POST",
                body=body,
                headers={
                    "TTL": str(ttl),
                    "Urgency": urgency,
                    "Topic": topic,
                    "Content-Encoding": "aes128gcm",
                    "Content-Type": "application/octet-stream",
                    "Authorization": self.vapid.header(origin),
                },
                connect_timeout=self.timeout,
                request_timeout=self.timeout,
                follow_redirects=False,
            )
            try:
                resp = await self.client.fetch(request, raise_error=False)
            except BlockedAddress:
                return Answer(0, reason="address refused")
            except HTTPClientError as exc:  # 599: timeout or connection closed
                return Answer(0, reason=f"no answer ({exc.code})")
            except OSError as exc:
                return Answer(0, reason=f"no answer ({type(exc).__name__})")
        if resp.code == 599:
            return Answer(0, reason="no answer")
        return Answer(resp.code, retry_after(resp.headers.get("Retry-After")))
