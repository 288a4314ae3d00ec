"""``GET /v1/sse/notifications``: the socket's stream as Server-Sent Events (CONTRACT §10).

For networks whose proxies block WebSockets. ``server.delivery.protocol`` decides what the
connection receives (welcome, replay, ``replay_done``, live frames), exactly as for a socket;
this handler admits the request, and writes each frame as an event: ``id:`` its cursor,
``event:`` its type, ``data:`` its JSON. Reads, acks and acknowledgements go over REST.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from handlers.base import APIHandler
from server.app import logs, schemas
from server.app.errors import Forbidden, Unauthorized, ValidationFailed
from server.app.metrics import METRICS
from server.auth import origins
from server.auth.ratelimit import FrameGate, OpenGate
from server.delivery import wire
from server.delivery.hub import Subscription
from server.delivery.protocol import POLICY


class NotificationStream(APIHandler):
    """One device of one user, over SSE; counted by the hub like a socket."""

    transport = "sse"  # what the dashboard's connection list shows

    def initialize(self) -> None:
        # The fields the protocol keeps on a connection (server.delivery.protocol.Peer).
        self.subscription: Subscription | None = None
        self.since: int | None = None
        self.user_agent = ""
        self.ip: str | None = None
        self.wanted: str | None = None
        self.bad_frames = 0
        self.gate: FrameGate | OpenGate | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[int] | None = None
        self._unsent_limit: int = self.services.settings.send_buffer_bytes

    async def prepare(self) -> None:
        # Not APIHandler's: its storage budget spans the whole request, and this one lasts
        # hours. The protocol bounds its own storage calls.
        logs.REQUEST_ID.set(self.request_id)
        self.ip = self.request.remote_ip

    async def get(self) -> None:
        """Admit (429, 403, 400, 401 as the socket's upgrade), then stream until closed."""
        node = self.services
        limits = node.limits
        try:
            self._admit()
        except (Forbidden, Unauthorized, ValidationFailed):
            # As the socket's upgrade: a refusal counts against the address, and once the
            # address is past its limit it is a 429; a valid token counts against its user.
            wait = limits.connect_ip.take(self.ip or "")
            if wait:
                raise limits.connect_ip.refusal(wait) from None
            raise
        limits.connect_user.check(self.principal.id)
        request = self.request
        self.user_agent = request.headers.get("User-Agent", "")[:200]
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once
        self.closed = asyncio.get_running_loop().create_future()
        self._write(b": stream open\n\n")
        await node.protocol.start(self)
        keepalive = asyncio.ensure_future(self._keep_alive())
        try:
            code = await self.closed
        finally:
            keepalive.cancel()
            node.protocol.end(self, code)

    def _admit(self) -> None:
        """Check the Origin, the query and the token (per credential first, see ``get``)."""
        node, request = self.services, self.request
        if not origins.socket_allowed(
            request.headers.get("Origin"), request.host, request.protocol,
            node.settings.origins, cookies=False,
        ):  # fmt: skip
            raise Forbidden("this Origin is not allowed")
        query = self.query(schemas.shared(schemas.SocketQuery))
        since = query.get("since") or self._last_event_id()
        self.since = None if since is None else int(since)
        self.principal = node.tokens.check(self._token(query))
        self.wanted = query.get("user_id")
        if self.wanted is not None and self.wanted != self.principal.id:
            raise Forbidden("user_id does not match the token")

    def _token(self, query: dict[str, Any]) -> str:
        header = self.request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip()
        if query.get("token"):
            return query["token"]
        raise Unauthorized("send Authorization: Bearer <connection token>, or ?token=")

    def _last_event_id(self) -> str | None:
        value = self.request.headers.get("Last-Event-ID")
        if value is None:
            return None
        if not value.isdigit() or len(value) > 18:
            raise ValidationFailed("the request is not valid", {"Last-Event-ID": ["not a cursor"]})
        return value

    async def _keep_alive(self) -> None:
        """A comment line every NOTIFY_SSE_KEEPALIVE_SECONDS, so proxies keep it open."""
        every = self.services.settings.sse_keepalive_seconds
        while True:
            await asyncio.sleep(every)
            self._write(b": keep-alive\n\n")

    # ---- the protocol's Peer -------------------------------------------------------------

    def send_frame(self, data: bytes) -> bool:
        """The hub's bytes (one or more WebSocket text frames) as events."""
        if self.closed is None or self.closed.done():
            return False
        return self._write(b"".join(event(payload) for payload in wire.payloads(data)))

    def close(self, code: int, reason: str) -> None:
        """End the stream; a last ``close`` event tells the client why (a socket's close)."""
        if self.closed is None or self.closed.done():
            return
        last = wire.encode({"type": "close", "code": code, "reason": reason})
        self._write(b"event: close\ndata: " + last + b"\n\n")
        self.closed.set_result(code)
        if not self._finished:
            self.finish()

    def _write(self, chunk: bytes) -> bool:
        stream = self.request.connection.stream
        if stream.closed():
            self.on_connection_close()
            return False
        if len(stream._write_buffer) + len(chunk) > self._unsent_limit:
            METRICS.slow_readers.inc()
            self.close(POLICY, "reading too slowly; reconnect with since")
            return False
        self.write(chunk)
        self.flush().add_done_callback(_retrieve)
        return True

    def on_connection_close(self) -> None:
        """The client went away."""
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(1001)


def event(payload: bytes) -> bytes:
    """One frame's JSON as an SSE event: ``id:`` its cursor, ``event:`` its type."""
    frame = json.loads(payload)
    kind = frame.get("type", "message")
    cursor = (frame.get("notification") or {}).get("cursor") or frame.get("cursor")
    head = b"id: %s\n" % cursor.encode() if isinstance(cursor, str) else b""
    return head + b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


def _retrieve(future: asyncio.Future) -> None:
    """Consume a flush's error (the client left): the stream's close is handled above."""
    if not future.cancelled():
        future.exception()


default_handlers = [(r"/v1/sse/notifications", NotificationStream)]
