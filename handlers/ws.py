"""The notification socket: authenticate, subscribe to the hub, pass frames on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import pymongo
from marshmallow import ValidationError
from pymongo.errors import PyMongoError
from tornado import httputil, websocket
from tornado.iostream import IOStream, StreamClosedError

from server import logs, origins, schemas, wire
from server.audit import actor_of
from server.auth import Principal
from server.errors import NotFound, OverCapacity, ServiceError, Unauthorized, retry_after
from server.hub import Subscription
from server.metrics import METRICS
from server.node import Node
from server.ratelimit import FrameGate, Limiter, OpenGate
from server.render import public
from server.timeutil import utcnow

log = logging.getLogger("notify.ws")

NORMAL, GOING_AWAY, POLICY, TOO_BIG, TRY_LATER = 1000, 1001, 1008, 1009, 1013
# What an open socket's request keeps as headers: they are read only by the handshake, and a
# browser's (cookies included) cost an idle socket a kilobyte or more. Never written to.
NO_HEADERS = httputil.HTTPHeaders()
NO_ARGUMENTS: dict[str, list[bytes]] = {}  # the same, for the query's arguments
MAX_BAD_FRAMES = 20


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
    if conn is None or conn.is_closing():  # the stream closed, or a close frame went out
        return CLOSED
    stream = conn.stream
    queued = len(stream._write_buffer)
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
    """``GET /v1/ws/notifications``: one device of one user."""

    # This class's own per-socket state lives in slots, not in the instance dict: Tornado
    # already keeps 27 attributes there, and from 30 on CPython 3.11 stops sharing the
    # dict's keys between instances, which costs 1.3 KiB more per socket (bench connections).
    # A new attribute belongs here too.
    __slots__ = (
        "_gate", "_send_limit", "_timer", "bad_frames", "principal", "query_in", "request_id",
        "subscription",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.principal: Principal | None = None
        self.subscription: Subscription | None = None
        self.request_id = ""
        self.query_in: dict | None = None
        self.bad_frames = 0
        self._gate: FrameGate | OpenGate | None = None
        self._timer: asyncio.TimerHandle | None = None
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
        self.request_id = logs.request_id(self.request.headers.get("X-Request-Id"))
        logs.REQUEST_ID.set(self.request_id)  # the socket's own log lines carry it too
        self.set_header("X-Request-Id", self.request_id)
        limits = self.services.limits
        if not self.check_origin(self.request.headers.get("Origin")):
            return self._fail(403, "forbidden", "this Origin is not allowed")
        given = self.request.query_arguments
        args_in = {k: v[-1].decode("utf-8", "replace") for k, v in given.items()}
        repeated = {k: ["give it once"] for k, v in given.items() if len(v) != 1}
        self._forget_query()
        if repeated:  # as with JSON keys: which of two tokens would a proxy have checked?
            return self._fail(400, "validation_error", "the query is not valid", repeated)
        try:
            self.query_in = schemas.shared(schemas.SocketQuery).load(args_in)
        except ValidationError as err:
            return self._fail(400, "validation_error", "the query is not valid", err.messages)
        token = self.query_in.pop("token", None)  # no copy kept once checked
        if not token:  # the auth frame follows: the address lends this connect until then
            wait = limits.connect_ip.take(self.request.remote_ip or "")
            return self._too_many(limits.connect_ip, wait) if wait else True
        try:
            self.principal = principal = self.services.tokens.check(token)
        except Unauthorized as exc:
            return self._fail(401, "unauthorized", exc.message)
        wanted = self.query_in.get("user_id")
        if wanted is not None and wanted != principal.id:
            self._audit("access.denied", wanted)
            return self._fail(403, "forbidden", "user_id does not match the token")
        wait = limits.connect_user.take(principal.id)
        if wait:
            return self._too_many(limits.connect_user, wait)
        return True

    def _fail(self, status: int, code: str, message: str, fields: dict | None = None) -> bool:
        """Refuse a connect without a valid token: counted against the address, and a 429
        instead once the address is past its limit; False."""
        limit = self.services.limits.connect_ip
        wait = limit.take(self.request.remote_ip or "")
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

    def _audit(self, action: str, target: str, **detail: Any) -> None:
        detail.update(ip=self.request.remote_ip, request_id=self.request_id)
        self.services.audit.note(actor_of(self.principal), action, target, **detail)

    def _refuse(self, status: int, code: str, message: str, fields: dict | None = None) -> bool:
        """Answer with the contract's error envelope instead of upgrading; False."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        error: dict[str, Any] = {"code": code, "message": message}
        if fields:
            error["fields"] = fields
        self.finish(json.dumps({"success": False, "error": error}))
        return False

    async def open(self, *args: Any, **kwargs: Any) -> None:
        """Start at once with a query token; otherwise wait for the auth frame."""
        self._forget_response()
        if self.principal is not None:
            await self._start()
        else:
            timeout = self.services.settings.auth_timeout
            self._timer = asyncio.get_running_loop().call_later(timeout, self._auth_timeout)

    def _forget_response(self) -> None:
        """Drop what only the upgrade's answer needed, which Tornado keeps as long as the
        socket: its headers (sent by now; none is set on a socket, and Tornado refuses
        set_header) and the template helpers (which Tornado itself drops at close): 1.5 KB
        a socket."""
        self._headers = NO_HEADERS
        self.ui = None

    def _token_expired(self) -> None:
        self.close(POLICY, "token expired; reconnect with a fresh token")

    def _auth_timeout(self) -> None:
        if self.principal is None:
            self.close(POLICY, "no auth frame in time")

    async def _start(self) -> None:
        node, principal = self.services, self.principal
        wanted = self.query_in.get("user_id")
        if wanted is not None and wanted != principal.id:
            return self.close(POLICY, "user_id does not match the token")
        agent = self.request.headers.get("User-Agent", "")[:200]
        self.request.headers = NO_HEADERS  # read for the last time (see NO_HEADERS)
        try:
            self.subscription = node.hub.subscribe(
                self, principal.id, principal.roles, agent, self.request.remote_ip
            )
        except OverCapacity as exc:
            return self.close(TRY_LATER, exc.message)
        if principal.expires_at is not None:  # the contract closes 1008 when the token expires
            left = (principal.expires_at - utcnow()).total_seconds()
            # asyncio's timer, not IOLoop.call_later: Tornado's wraps the callback in two more
            # objects, which cost a socket 250 bytes for as long as the token lives.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, left), self._token_expired)
        self._audit("socket.open", principal.id, connection_id=self.subscription.id)
        roles = self.subscription.roles
        since = self.query_in.get("since")
        self.query_in = None  # read for the last time: free it for the socket's life
        try:
            with pymongo.timeout(node.settings.storage_timeout):  # a hung MongoDB: 1013
                await node.store.remember_user(
                    principal.id, list(roles), self.subscription.connected_at
                )
                unread, replay = await node.notifications.on_connect(
                    principal.id, roles, None if since is None else int(since), node.hub.seq
                )
        except PyMongoError:
            METRICS.storage_errors.inc()
            return self.close(TRY_LATER, "storage unavailable; retry")
        if self.subscription is None:  # closed while we waited
            return
        cursor = replay.since if replay else self.subscription.start_seq
        self._send(
            {
                "type": "welcome",
                "user_id": principal.id,
                "connection_id": self.subscription.id,
                "unread_count": unread,
                "recovered": replay.recovered if replay else True,
                "cursor": str(cursor),
            }
        )
        if replay is None:
            return self.subscription.go_live(())
        replayed = [(d["seq"], _notification_frame(d)) for d in replay.items]
        done = wire.frame({"type": "replay_done", "cursor": str(replay.cursor)})
        self.subscription.go_live(replayed, done, after=replay.since)

    # ---- frames from the client ----------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        """Validate a client frame and act on it; a bad frame gets an error frame."""
        if not self._admit():
            return
        if self.subscription is not None:  # the dashboard's "last activity" of this socket
            self.subscription.last_active = utcnow()
        try:
            frame = schemas.load_frame(message)
        except ValidationError as err:
            return self._bad_frame("bad_frame", "the frame is not valid", err.messages)
        kind = frame["type"]
        if self.principal is None:
            if kind != "auth":
                return self.close(POLICY, "authenticate first")
            try:
                principal = self.services.tokens.check(frame["token"])
            except Unauthorized:
                return self.close(POLICY, "the token is not valid")
            limits = self.services.limits
            limits.connect_ip.give(self.request.remote_ip or "")  # lent at the upgrade
            wait = limits.connect_user.take(principal.id)
            if wait:
                limits.connect_user.refusal(wait)
                return self.close(TRY_LATER, "too many connects for this user; retry later")
            self.principal = principal
            self._timer.cancel()
            return await self._start()
        if kind == "ping":
            return self._send({"type": "pong"})
        if kind == "auth":
            return self._bad_frame("already_authenticated", "this socket is authenticated")
        if self.subscription is None:
            return
        try:
            with pymongo.timeout(self.services.settings.storage_timeout):
                await self._act(kind, frame)
        except NotFound as exc:
            self._bad_frame("not_found", exc.message)
        except ServiceError as exc:
            self._bad_frame(exc.code, exc.message)
        except PyMongoError:
            METRICS.storage_errors.inc()
            self._send({"type": "error", "code": "storage_unavailable", "message": "try again"})

    async def _act(self, kind: str, frame: dict) -> None:
        notifications, sub = self.services.notifications, self.subscription
        if kind == "ack":
            await notifications.ack(sub.user_id, sub.roles, frame["id"])
        elif kind == "read":
            await notifications.mark_read(sub.user_id, sub.roles, frame["id"])
        elif kind == "read_all":
            await notifications.mark_all_read(sub.user_id, sub.roles)

    def _bad_frame(self, code: str, message: str, fields: dict | None = None) -> None:
        self.bad_frames += 1
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if fields:
            error["fields"] = fields
        self._send(error)
        if self.bad_frames > MAX_BAD_FRAMES:
            self.close(POLICY, "too many bad frames")

    # ---- frames to the client ------------------------------------------------------------

    def send_frame(self, data: bytes) -> bool:
        """The hub's fast path: send framed bytes; drop the socket if it reads too slowly."""
        outcome = stream_send(self.ws_connection, data, self._send_limit)
        if outcome is SENT:
            return True
        if outcome is FULL:
            METRICS.slow_readers.inc()
            self.close(POLICY, "reading too slowly; reconnect with since")
        return False

    def _send(self, message: dict) -> None:
        self.send_frame(wire.frame(message))

    def _admit(self) -> bool:
        """The socket's frame limit: past it an error frame, and if it persists, 1008."""
        if self._gate is None:
            self._gate = self.services.limits.frame_gate()
        verdict = self._gate.admit()
        if verdict == "ok":
            return True
        if verdict == "refuse":
            self._send({"type": "error", "code": "rate_limited", "message": "too many frames"})
        else:
            self.close(POLICY, "too many frames")
        return False

    def on_close(self) -> None:
        """Leave the hub and drop references."""
        if self.subscription is not None:
            sub = self.subscription
            self.services.hub.unsubscribe(sub)
            self.subscription = None
            self._audit("socket.close", sub.user_id, connection_id=sub.id, code=self.close_code)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()

    def on_ping(self, data: bytes) -> None:
        """Protocol-level pings are answered by Tornado."""


def _notification_frame(doc: dict) -> bytes:
    return wire.frame({"type": "notification", "notification": public(doc)})


default_handlers = [(r"/v1/ws/notifications", NotificationSocket)]
