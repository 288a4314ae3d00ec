"""A local Web Push service on 127.0.0.1 that does a real push service's checks.

- ``PushServer``: accepts ``POST /push/<subscriber>``; verifies the VAPID JWT (ES256 signature
  with the ``k`` key, ``aud`` = this origin, ``exp`` within 24 hours, a ``sub``), that ``k``
  is the service's key when told it, the RFC 8030 headers (TTL, Urgency, Topic), then
  decrypts the ``aes128gcm`` body with the subscriber's private key and auth secret (RFC
  8291). A request that fails a check is answered 400 and kept in ``errors``.
- ``answer(name, (status, headers), ...)`` queues the next answers for a subscriber (201 when
  none is queued); ``hold()`` makes answers wait until ``release()``.
- ``Subscriber``: what a browser makes: a P-256 key pair and a 16-byte auth secret, and
  the ``PushSubscription.toJSON()`` to register.
- ``accepted``: pushes answered 2xx on a connection still open (a sender that died before
  the answer did not get it delivered); ``attempts``: every request that passed the checks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field

import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Subscriber:
    """One browser's push subscription: its keys stay here, the JSON goes to the service."""

    def __init__(self, server: PushServer, name: str):
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.endpoint = f"{server.url}/push/{name}"

    def subscription(self, **extra) -> dict:
        point = self.key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)},
            **extra,
        }


@dataclass
class Push:
    """One request that passed every check."""

    subscriber: str
    status: int
    payload: dict
    headers: dict
    at: float = field(default_factory=time.monotonic)


class PushServer:
    """The local push service (see the module docstring)."""

    def __init__(self, vapid_key: str | None = None):
        self.vapid_key = vapid_key
        self.subscribers: dict[str, Subscriber] = {}
        self.queued: dict[str, list[tuple[int, dict]]] = {}
        self.attempts: list[Push] = []
        self.accepted: list[Push] = []
        self.errors: list[str] = []
        self.held: asyncio.Event | None = None
        self.waiting = 0  # requests held right now
        self.changed = asyncio.Event()
        self.server: HTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> PushServer:
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        app = web.Application([(r"/push/([A-Za-z0-9_.-]+)", PushHandler, {"server": self})])
        self.server = HTTPServer(app)
        self.server.add_sockets(sockets)
        return self

    async def stop(self) -> None:
        self.release()
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()

    def add(self, name: str) -> Subscriber:
        sub = self.subscribers[name] = Subscriber(self, name)
        return sub

    def answer(self, name: str, *answers: tuple[int, dict] | int) -> None:
        """Queue the next answers to a subscriber's pushes: a status or (status, headers)."""
        queue = self.queued.setdefault(name, [])
        queue += [(a, {}) if isinstance(a, int) else a for a in answers]

    def hold(self) -> None:
        self.held = asyncio.Event()

    def release(self) -> None:
        if self.held is not None:
            self.held.set()
            self.held = None

    def to(self, name: str, accepted: bool = True) -> list[Push]:
        """What reached a subscriber (accepted pushes, or every checked attempt)."""
        return [p for p in (self.accepted if accepted else self.attempts) if p.subscriber == name]

    async def wait_for(self, check, timeout: float = 20.0):
        """Poll ``check()`` until it returns something truthy; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen in {timeout}s; errors: {self.errors}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.2)

    # ---- the checks --------------------------------------------------------------------

    def check(self, name: str, headers, body: bytes) -> dict:
        """Verify a request like a push service and decrypt it; ValueError says what is wrong."""
        sub = self.subscribers.get(name)
        if sub is None:
            raise LookupError(name)
        ttl = headers.get("TTL", "")
        if not ttl.isdigit():
            raise ValueError(f"TTL {ttl!r}")
        if headers.get("Urgency") not in ("very-low", "low", "normal", "high"):
            raise ValueError(f"Urgency {headers.get('Urgency')!r}")
        if not TOPIC.match(headers.get("Topic", "")):
            raise ValueError(f"Topic {headers.get('Topic')!r}")
        if headers.get("Content-Encoding") != "aes128gcm":
            raise ValueError("Content-Encoding")
        found = re.fullmatch(
            r"vapid t=([^,\s]+),\s*k=([A-Za-z0-9_-]+)", headers.get("Authorization", "")
        )
        if not found:
            raise ValueError("Authorization is not vapid t=..., k=...")
        token, k = found.groups()
        if self.vapid_key is not None and k != self.vapid_key:
            raise ValueError("signed with another key than the service's")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(k))
        claims = jwt.decode(
            token, public, algorithms=["ES256"], audience=self.url,
            options={"require": ["aud", "exp", "sub"]},
        )  # fmt: skip
        if not time.time() < claims["exp"] <= time.time() + 24 * 3600:
            raise ValueError("exp not within 24 hours")
        if not str(claims["sub"]).startswith(("mailto:", "https://")):
            raise ValueError("sub")
        plain = http_ece.decrypt(
            body, private_key=sub.key, auth_secret=sub.auth, version="aes128gcm"
        )
        return json.loads(plain)


class PushHandler(web.RequestHandler):
    def initialize(self, server: PushServer) -> None:
        self.server = server
        self.gone = False

    def on_connection_close(self) -> None:
        self.gone = True

    async def _hold(self, held: asyncio.Event) -> None:
        """Wait until released, noticing a sender that went away meanwhile (killed)."""
        # Nothing reads the connection while a handler waits: read it, to see it close.
        closed = asyncio.ensure_future(self.request.connection.stream.read_bytes(1, partial=True))
        closed.add_done_callback(lambda f: f.cancelled() or f.exception())
        released = asyncio.ensure_future(held.wait())
        await asyncio.wait([closed, released], return_when=asyncio.FIRST_COMPLETED)
        if closed.done():
            self.gone = True
            released.cancel()

    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self, name: str) -> None:
        server = self.server
        try:
            payload = server.check(name, self.request.headers, self.request.body)
        except LookupError:
            self.set_status(404)
            return
        except Exception as exc:  # every failed check is a test failure to report
            server.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            server.changed.set()
            self.set_status(400)
            return
        queue = server.queued.get(name)
        status, headers = queue.pop(0) if queue else (201, {})
        push = Push(name, status, payload, dict(self.request.headers))
        if server.held is not None:
            server.waiting += 1
            server.changed.set()
            await self._hold(server.held)
            server.waiting -= 1
        server.attempts.append(push)
        if 200 <= status < 300 and not self.gone:
            server.accepted.append(push)
        server.changed.set()
        self.set_status(status)
        for k, v in headers.items():
            self.set_header(k, v)
