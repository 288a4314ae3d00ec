"""The notification socket: authenticate, subscribe to the hub, pass frames on."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlparse

from marshmallow import ValidationError
from pymongo.errors import PyMongoError
from tornado import websocket
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from server import schemas, wire
from server.auth import Principal
from server.errors import NotFound, OverCapacity, ServiceError, Unauthorized
from server.hub import Subscription
from server.metrics import METRICS
from server.node import Node
from server.render import public

log = logging.getLogger("notify.ws")

NORMAL, GOING_AWAY, POLICY, TOO_BIG, TRY_LATER = 1000, 1001, 1008, 1009, 1013
MAX_BAD_FRAMES = 20


def stream_send(conn: websocket.WebSocketProtocol | None, data: bytes, limit: int) -> str:
    """Write an already framed message to a socket's stream without waiting.

    Returns "sent", "closed", or "full" when the socket holds more than ``limit`` unsent
    bytes (a slow reader, whom the caller drops rather than let memory grow).
    """
    stream = getattr(conn, "stream", None)
    if stream is None or stream.closed() or conn.is_closing():
        return "closed"
    if len(stream._write_buffer) + len(data) > limit:
        return "full"
    try:
        stream.write(data).add_done_callback(_quiet)
    except StreamClosedError:
        return "closed"
    return "sent"


def _quiet(fut: Any) -> None:
    fut.exception()  # a write to a socket that closed meanwhile is not an error


class NotificationSocket(websocket.WebSocketHandler):
    """``GET /v1/ws/notifications``: one device of one user."""

    principal: Principal | None = None
    subscription: Subscription | None = None

    @property
    def services(self) -> Node:
        return self.settings["services"]

    def check_origin(self, origin: str) -> bool:
        """Allow the configured Origins; with none configured, only the same host."""
        allowed = self.services.settings.origins
        if allowed:
            return origin.rstrip("/") in allowed or "*" in allowed
        return urlparse(origin).netloc.lower() == self.request.host.lower()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse bad Origins (403), bad tokens (401) and bad queries (400) before upgrading."""
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            return self._refuse(403, "forbidden", "this Origin is not allowed")
        args_in = {
            k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()
        }
        try:
            self.query_in = schemas.SocketQuery().load(args_in)
        except ValidationError as err:
            return self._refuse(400, "validation_error", "the query is not valid", err.messages)
        token = self.query_in.get("token")
        if token:
            try:
                self.principal = self.services.tokens.check(token)
            except Unauthorized as exc:
                return self._refuse(401, "unauthorized", exc.message)
            wanted = self.query_in.get("user_id")
            if wanted is not None and wanted != self.principal.id:
                return self._refuse(403, "forbidden", "user_id does not match the token")
        await super().get(*args, **kwargs)

    def _refuse(self, status: int, code: str, message: str, fields: dict | None = None) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        error: dict[str, Any] = {"code": code, "message": message}
        if fields:
            error["fields"] = fields
        self.finish(json.dumps({"success": False, "error": error}))

    async def open(self, *args: Any, **kwargs: Any) -> None:
        """Start at once with a query token; otherwise wait for the auth frame."""
        self.bad_frames = 0
        if self.principal is not None:
            await self._start()
        else:
            timeout = self.services.settings.auth_timeout
            self._auth_timer = IOLoop.current().call_later(timeout, self._auth_timeout)

    def _auth_timeout(self) -> None:
        if self.principal is None:
            self.close(POLICY, "no auth frame in time")

    async def _start(self) -> None:
        node, principal = self.services, self.principal
        wanted = self.query_in.get("user_id")
        if wanted is not None and wanted != principal.id:
            return self.close(POLICY, "user_id does not match the token")
        info = {"user_agent": self.request.headers.get("User-Agent", "")[:200]}
        info["ip"] = self.request.remote_ip
        try:
            self.subscription = node.hub.subscribe(self, principal.id, principal.roles, info)
        except OverCapacity as exc:
            return self.close(TRY_LATER, exc.message)
        roles = self.subscription.roles
        since = self.query_in.get("since")
        try:
            await node.store.remember_user(
                principal.id, list(roles), self.subscription.info["connected_at"]
            )
            unread = await node.notifications.unread_count(principal.id, roles)
            replay = None
            if since is not None:
                replay = await node.notifications.replay(principal.id, roles, int(since))
        except PyMongoError:
            METRICS.storage_errors.inc()
            return self.close(TRY_LATER, "storage unavailable; retry")
        if self.subscription is None:  # closed while we waited
            return
        cursor = max(node.hub.seq, int(since or 0))
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
        self.subscription.go_live(replayed, done)

    # ---- frames from the client ----------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        """Validate a client frame and act on it; a bad frame gets an error frame."""
        try:
            frame = schemas.load_frame(message)
        except ValidationError as err:
            return self._bad_frame("bad_frame", "the frame is not valid", err.messages)
        kind = frame["type"]
        if self.principal is None:
            if kind != "auth":
                return self.close(POLICY, "authenticate first")
            try:
                self.principal = self.services.tokens.check(frame["token"])
            except Unauthorized:
                return self.close(POLICY, "the token is not valid")
            IOLoop.current().remove_timeout(self._auth_timer)
            return await self._start()
        if kind == "ping":
            return self._send({"type": "pong"})
        if kind == "auth":
            return self._bad_frame("already_authenticated", "this socket is authenticated")
        if self.subscription is None:
            return
        try:
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
        """The hub's fast path: queue framed bytes; drop the socket if it reads too slowly."""
        outcome = stream_send(self.ws_connection, data, self.services.settings.send_buffer_bytes)
        if outcome == "full":
            METRICS.slow_readers.inc()
            self.close(POLICY, "reading too slowly; reconnect with since")
        return outcome == "sent"

    def _send(self, message: dict) -> None:
        self.send_frame(wire.frame(message))

    def on_close(self) -> None:
        """Leave the hub and drop references."""
        if self.subscription is not None:
            self.services.hub.unsubscribe(self.subscription)
            self.subscription = None
        timer = getattr(self, "_auth_timer", None)
        if timer is not None:
            IOLoop.current().remove_timeout(timer)

    def on_ping(self, data: bytes) -> None:
        """Protocol-level pings are answered by Tornado."""


def _notification_frame(doc: dict) -> bytes:
    return wire.frame({"type": "notification", "notification": public(doc)})


default_handlers = [(r"/v1/ws/notifications", NotificationSocket)]
