"""The notification socket: authenticate, subscribe to the hub, pass frames on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from marshmallow import ValidationError
from tornado import httputil, websocket
from tornado.iostream import IOStream, StreamClosedError

from server.app import logs, schemas
from server.app.errors import Unauthorized, envelope, retry_after
from server.app.metrics import METRICS
from server.app.node import Node
from server.auth import origins
from server.auth.credentials import Principal
from server.auth.ratelimit import FrameGate, Limiter, OpenGate
from server.delivery import wire
from server.delivery.hub import Subscription
from server.delivery.protocol import POLICY

log = logging.getLogger("notify.ws")

# What an open socket's request keeps as headers: they are read only by the handshake, and a
# browser's (cookies included) cost an idle socket a kilobyte or more. Never written to.
NO_HEADERS = httputil.HTTPHeaders()
NO_ARGUMENTS: dict[str, list[bytes]] = {}  # the same, for the query's arguments


SENT, CLOSED, FULL = "sent", "closed", "full"


def stream_send(conn: websocket.WebSocketProtocol | None, data: bytes, limit: int) -> str:
    """Write an already framed message to a socket now, never waiting on a slow reader.

    With nothing queued on the stream, the bytes go straight to the non-blocking socket: one
    system call, and no future or callback per socket, which is what makes a fan-out to
    thousands of sockets cheap. What the kernel does not take (a slow reader), and anything
    written while something is queued (order), goes to the stream's buffer, which Tornado
    flushes as the socket drains; a socket error is left for that buffered write to meet, so
    the stream closes the usual way. TLS streams always take the buffered path.

    Returns SENT, CLOSED, or FULL when more than ``limit`` bytes would be queued (a slow
    reader, whom the caller drops rather than let memory grow).
    """
    if conn is None:
        return CLOSED
    stream = conn.stream
    # conn.is_closing() and len() spelled out: this runs once per socket in every fan-out,
    # and each call costs more than the test it wraps (Tornado is pinned; see the tests).
    if stream._closed or conn.client_terminated or conn.server_terminated:
        return CLOSED  # the stream closed, or a close frame went out
    queued = stream._write_buffer._size
    if not queued and type(stream) is IOStream:
        try:
            sent = stream.socket.send(data)
        except OSError:  # would block; or an error, met again by the buffered write below
            sent = 0
        if sent == len(data):
            return SENT
        if sent:
            data = memoryview(data)[sent:]
    if queued + len(data) > limit:
        return FULL
    try:
        stream.write(data)  # Tornado retrieves the future's error itself
    except StreamClosedError:
        return CLOSED
    return CLOSED if stream.closed() else SENT


class NotificationSocket(websocket.WebSocketHandler):
    """``GET /v1/ws/notifications``: one device of one user; ``server.delivery.protocol``
    decides what it receives, this class admits, frames and writes."""

    # This class's own per-socket state lives in slots, not in the instance dict: Tornado
    # already keeps 27 attributes there, and from 30 on CPython 3.11 stops sharing the
    # dict's keys between instances, which costs 1.3 KiB more per socket (bench connections).
    # A new attribute belongs here too.
    __slots__ = (
        "_send_limit", "bad_frames", "gate", "ip", "principal", "request_id", "since",
        "subscription", "timer", "user_agent", "wanted",
    )  # fmt: skip
    transport = "websocket"  # what the dashboard's connection list shows

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.principal: Principal | None = None
        self.subscription: Subscription | None = None
        self.request_id = ""
        self.since: int | None = None
        self.user_agent = ""
        self.ip: str | None = None
        self.wanted: str | None = None
        self.bad_frames = 0
        self.gate: FrameGate | OpenGate | None = None
        self.timer: asyncio.TimerHandle | None = None
        super().__init__(*args, **kwargs)
        # Read once: send_frame runs once per socket in every fan-out.
        self._send_limit: int = self.services.settings.send_buffer_bytes

    @property
    def services(self) -> Node:
        return self.settings["services"]

    def check_origin(self, origin: str | None) -> bool:
        """Allow the configured Origins; with none configured, only the same host."""
        request = self.request
        return origins.socket_allowed(
            origin, request.host, request.protocol, self.services.settings.origins, cookies=False
        )

    def get(self, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        """Refuse bad Origins (403), bad tokens (401) and bad queries (400) before upgrading."""
        # Not a coroutine: Tornado awaits what this returns, Tornado's own upgrade, which runs
        # the frame loop for the socket's life. A coroutine here would await it, and its frame
        # (344 bytes, and its locals: the query, the token) would live as long.
        if self._admitted():
            return super().get(*args, **kwargs)
        return None

    def _admitted(self) -> bool:
        """Check the request; answer and return False if it may not upgrade.

        Per credential first: a valid token's connects count against its user's limit
        only (a clinic shares one address); refusals, and connects whose token will come
        in the auth frame, count against the address (given back when the frame is good).
        """
        request = self.request
        self.request_id = logs.request_id(request.headers.get("X-Request-Id"))
        logs.REQUEST_ID.set(self.request_id)  # the socket's own log lines carry it too
        self.set_header("X-Request-Id", self.request_id)
        self.ip = request.remote_ip
        limits = self.services.limits
        if not self.check_origin(request.headers.get("Origin")):
            return self._fail(403, "forbidden", "this Origin is not allowed")
        given = request.query_arguments
        args_in = {k: v[-1].decode("utf-8", "replace") for k, v in given.items()}
        repeated = {k: ["give it once"] for k, v in given.items() if len(v) != 1}
        self._forget_query()
        if repeated:  # as with JSON keys: which of two tokens would a proxy have checked?
            return self._fail(400, "validation_error", "the query is not valid", repeated)
        try:
            query = schemas.shared(schemas.SocketQuery).load(args_in)
        except ValidationError as err:
            return self._fail(400, "validation_error", "the query is not valid", err.messages)
        since = query.get("since")
        self.since = None if since is None else int(since)
        self.user_agent = request.headers.get("User-Agent", "")[:200]
        token, wanted = query.get("token"), query.get("user_id")
        self.wanted = wanted
        if not token:  # the auth frame follows: the address lends this connect until then
            wait = limits.connect_ip.take(self.ip or "")
            return self._too_many(limits.connect_ip, wait) if wait else True
        try:
            self.principal = self.services.tokens.check(token)
        except Unauthorized as exc:
            return self._fail(401, "unauthorized", exc.message)
        if wanted is not None and wanted != self.principal.id:
            self.services.protocol.note(self, "access.denied", wanted)
            return self._fail(403, "forbidden", "user_id does not match the token")
        wait = limits.connect_user.take(self.principal.id)
        return self._too_many(limits.connect_user, wait) if wait else True

    def _fail(self, status: int, code: str, message: str, fields: dict | None = None) -> bool:
        """Refuse a connect without a valid token: counted against the address, and a 429
        instead once the address is past its limit; False."""
        limit = self.services.limits.connect_ip
        wait = limit.take(self.ip or "")
        if wait:
            return self._too_many(limit, wait)
        return self._refuse(status, code, message, fields)

    def _too_many(self, limit: Limiter, wait: float) -> bool:
        limit.refusal(wait)  # counted in the metrics
        self.set_header("Retry-After", retry_after(wait))
        return self._refuse(429, "rate_limited", "too many connection attempts; retry later")

    def _forget_query(self) -> None:
        """Keep no copy of the query for the socket's life: its token is a credential (and
        five copies of it cost a socket about 1 KiB)."""
        request = self.request
        request.uri, request.query = request.path, ""
        request.arguments, request.query_arguments = NO_ARGUMENTS, NO_ARGUMENTS
        # Tornado's HTTP/1 connection keeps the request line (the URI, token included) for
        # the response's sake, which reads only its method and version.
        conn = request.connection
        start_line = getattr(conn, "_request_start_line", None)
        if isinstance(start_line, httputil.RequestStartLine):
            conn._request_start_line = start_line._replace(path=request.path)

    def _refuse(self, status: int, code: str, message: str, fields: dict | None = None) -> bool:
        """Answer with the contract's error envelope instead of upgrading; False."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(wire.encode(envelope(code, message, fields)))
        return False

    async def open(self, *args: Any, **kwargs: Any) -> None:
        """Start at once with a query token; otherwise wait for the auth frame."""
        self._forget_response()
        protocol = self.services.protocol
        if self.principal is not None:
            await protocol.start(self)
        else:
            protocol.await_auth(self, self.services.settings.auth_timeout)

    def _forget_response(self) -> None:
        """Drop what only the upgrade's answer needed, which Tornado keeps as long as the
        socket: its headers (sent by now; none is set on a socket, and Tornado refuses
        set_header), the request's headers (read for the last time) and the template
        helpers (which Tornado itself drops at close): 1.5 KB a socket."""
        self._headers = NO_HEADERS
        self.request.headers = NO_HEADERS
        self.ui = None

    async def on_message(self, message: str | bytes) -> None:
        """Hand a client frame to the protocol."""
        await self.services.protocol.on_frame(self, message)

    def send_frame(self, data: bytes) -> bool:
        """The hub's fast path: send framed bytes; drop the socket if it reads too slowly."""
        outcome = stream_send(self.ws_connection, data, self._send_limit)
        if outcome is SENT:
            return True
        if outcome is FULL:
            METRICS.slow_readers.inc()
            self.close(POLICY, "reading too slowly; reconnect with since")
        return False

    def on_close(self) -> None:
        """Leave the hub and drop references."""
        self.services.protocol.end(self, self.close_code)

    def on_ping(self, data: bytes) -> None:
        """Protocol-level pings are answered by Tornado."""


default_handlers = [(r"/v1/ws/notifications", NotificationSocket)]
