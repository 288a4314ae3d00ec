"""What a connection receives and what its frames do, whatever carries them.

The WebSocket handler and the SSE handler only admit, frame and write: the order of welcome,
replay, ``replay_done`` and live frames, the answers to client frames and when a connection
is closed are decided here, once. A connection (a ``Peer``) is anything that can send the
hub's pre-framed bytes, close with a code, and keep the few fields below.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import pymongo
from marshmallow import ValidationError
from pymongo.errors import PyMongoError

from server.app import schemas
from server.app.audit import Audit, actor_of
from server.app.errors import NotFound, OverCapacity, ServiceError, Unauthorized
from server.app.metrics import METRICS
from server.app.store import Store
from server.app.timeutil import utcnow
from server.app.user_records import UserRecords
from server.auth.credentials import Principal, Tokens
from server.auth.ratelimit import FrameGate, OpenGate, RateLimits
from server.delivery import wire
from server.delivery.hub import Hub, Subscription
from server.escalation.ack import Acknowledgements
from server.feed.notifications import Notifications

log = logging.getLogger("notify.protocol")

NORMAL, GOING_AWAY, POLICY, TOO_BIG, TRY_LATER = 1000, 1001, 1008, 1009, 1013
MAX_BAD_FRAMES = 20


class Peer(Protocol):
    """One connection as the protocol sees it; the transport keeps these fields."""

    principal: Principal | None
    subscription: Subscription | None
    bad_frames: int
    gate: FrameGate | OpenGate | None
    timer: asyncio.TimerHandle | None
    request_id: str
    since: int | None  # the client's cursor, until the replay has read it
    user_agent: str  # until subscribed (the subscription keeps it)
    ip: str | None
    wanted: str | None  # the seed's ``user_id`` query parameter: must equal the token's sub

    def send_frame(self, data: bytes) -> bool:
        """Write pre-framed bytes; False if the connection is gone or was dropped."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a close code."""


class ConnectionProtocol:
    """Connect, resume, replay and live delivery, and the client's frames, for one node."""

    def __init__(
        self,
        hub: Hub,
        notifications: Notifications,
        store: Store,
        tokens: Tokens,
        audit: Audit,
        limits: RateLimits,
        storage_timeout: float,
        users: UserRecords,
        acknowledgements: Acknowledgements | None = None,
    ):
        self.users = users
        self.acknowledgements = acknowledgements
        self.hub = hub
        self.notifications = notifications
        self.store = store
        self.tokens = tokens
        self.audit = audit
        self.limits = limits
        self.storage_timeout = storage_timeout

    # ---- opening ---------------------------------------------------------------------

    async def start(self, peer: Peer) -> None:
        """Subscribe an authenticated peer, welcome it, replay from its cursor, go live."""
        principal, since = peer.principal, peer.since
        if peer.wanted is not None and peer.wanted != principal.id:
            return peer.close(POLICY, "user_id does not match the token")
        peer.since = peer.wanted = None
        try:
            sub = self.hub.subscribe(peer, principal.id, principal.roles, peer.user_agent, peer.ip)
        except OverCapacity as exc:
            return peer.close(TRY_LATER, exc.message)
        peer.subscription, peer.user_agent = sub, ""
        self._expire_with_token(peer, principal)
        self.note(peer, "socket.open", principal.id, connection_id=sub.id)
        self.users.note(principal.id, sub.roles, sub.connected_at)  # written in batches
        try:
            with pymongo.timeout(self.storage_timeout):  # a hung MongoDB: 1013
                unread, replay = await self.notifications.on_connect(
                    principal.id, sub.roles, since, self.hub.seq
                )
        except PyMongoError as exc:
            METRICS.storage_errors.inc()
            log.warning("a connect's read failed (%s): closed 1013", type(exc).__name__)
            return peer.close(TRY_LATER, "storage unavailable; retry")
        if peer.subscription is None:  # closed while we waited
            return
        cursor = replay.since if replay else sub.start_seq
        welcome = {
            "type": "welcome",
            "user_id": principal.id,
            "connection_id": sub.id,
            "unread_count": unread,
            "recovered": replay.recovered if replay else True,
            "cursor": str(cursor),
        }
        first = wire.frame(welcome)  # written together with what follows it
        if replay is None:
            return sub.go_live((), first=first)
        replayed = replay.frames
        done = wire.frame({"type": "replay_done", "cursor": str(replay.cursor)})
        sub.go_live(replayed, done, after=replay.since, first=first)

    def _expire_with_token(self, peer: Peer, principal: Principal) -> None:
        """Close with 1008 when the token expires (the contract's rule for sockets)."""
        if principal.expires_at is None:
            return
        left = (principal.expires_at - utcnow()).total_seconds()
        # asyncio's timer, not IOLoop.call_later: Tornado's wraps the callback in two more
        # objects, which cost a socket 250 bytes for as long as the token lives.
        peer.timer = asyncio.get_running_loop().call_later(
            max(0.0, left), peer.close, POLICY, "token expired; reconnect with a fresh token"
        )

    def await_auth(self, peer: Peer, timeout: float) -> None:
        """Close the peer unless it authenticates within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        peer.timer = loop.call_later(timeout, self._auth_timeout, peer)

    @staticmethod
    def _auth_timeout(peer: Peer) -> None:
        if peer.principal is None:
            peer.close(POLICY, "no auth frame in time")

    # ---- frames from the client ------------------------------------------------------

    async def on_frame(self, peer: Peer, raw: str | bytes) -> None:
        """Validate a client frame and act on it; a bad frame gets an error frame."""
        if not self._admit(peer):
            return
        sub = peer.subscription
        if sub is not None:  # the dashboard's "last activity" of this connection
            sub.last_active = utcnow()
        try:
            frame = schemas.load_frame(raw)
        except ValidationError as err:
            return self.bad_frame(peer, "bad_frame", "the frame is not valid", err.messages)
        kind = frame["type"]
        if peer.principal is None:
            return await self._authenticate(peer, frame)
        if kind == "ping":
            return send(peer, {"type": "pong"})
        if kind == "auth":
            return self.bad_frame(peer, "already_authenticated", "this socket is authenticated")
        if sub is None:
            return
        try:
            with pymongo.timeout(self.storage_timeout):
                await self._act(sub, kind, frame)
        except NotFound as exc:
            self.bad_frame(peer, "not_found", exc.message)
        except ServiceError as exc:
            self.bad_frame(peer, exc.code, exc.message)
        except PyMongoError:
            METRICS.storage_errors.inc()
            send(peer, {"type": "error", "code": "storage_unavailable", "message": "try again"})

    async def _authenticate(self, peer: Peer, frame: dict) -> None:
        if frame["type"] != "auth":
            return peer.close(POLICY, "authenticate first")
        try:
            principal = self.tokens.check(frame["token"])
        except Unauthorized:
            return peer.close(POLICY, "the token is not valid")
        # The address lent this connect a token at the upgrade: the frame proves it, so it
        # goes back, and the connect counts against the user instead (per credential first).
        self.limits.connect_ip.give(peer.ip or "")
        wait = self.limits.connect_user.take(principal.id)
        if wait:
            self.limits.connect_user.refusal(wait)  # counted in the metrics
            return peer.close(TRY_LATER, "too many connects for this user; retry later")
        peer.principal = principal
        if peer.timer is not None:
            peer.timer.cancel()
        await self.start(peer)

    async def _act(self, sub: Subscription, kind: str, frame: dict) -> None:
        notifications = self.notifications
        if kind == "ack":
            await notifications.ack(sub.user_id, sub.roles, frame["id"], sub.id)
        elif kind == "read":
            await notifications.mark_read(sub.user_id, sub.roles, frame["id"])
        elif kind == "read_all":
            await notifications.mark_all_read(sub.user_id, sub.roles)
        elif kind == "acknowledge" and self.acknowledgements is not None:
            await self.acknowledgements.acknowledge(
                frame["id"], sub.user_id, frame["note"], sub.user_id, sub.roles
            )

    def bad_frame(self, peer: Peer, code: str, message: str, fields: dict | None = None) -> None:
        """Answer a bad frame with an error frame; close with 1008 if they keep coming."""
        peer.bad_frames += 1
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if fields:
            error["fields"] = fields
        send(peer, error)
        if peer.bad_frames > MAX_BAD_FRAMES:
            peer.close(POLICY, "too many bad frames")

    def _admit(self, peer: Peer) -> bool:
        """The connection's frame limit: past it an error frame, and if it persists, 1008."""
        if peer.gate is None:
            peer.gate = self.limits.frame_gate()
        verdict = peer.gate.admit()
        if verdict == "ok":
            return True
        if verdict == "refuse":
            send(peer, {"type": "error", "code": "rate_limited", "message": "too many frames"})
        else:
            peer.close(POLICY, "too many frames")
        return False

    # ---- closing ---------------------------------------------------------------------

    def end(self, peer: Peer, code: int | None) -> None:
        """Leave the hub, stop the timer and drop references (the connection closed)."""
        sub = peer.subscription
        if sub is not None:
            self.hub.unsubscribe(sub)
            peer.subscription = None
            self.note(peer, "socket.close", sub.user_id, connection_id=sub.id, code=code)
        if peer.timer is not None:
            peer.timer.cancel()
            peer.timer = None

    def note(self, peer: Peer, action: str, target: str, **detail: Any) -> None:
        """An audit entry about this connection."""
        detail.update(ip=peer.ip, request_id=peer.request_id)
        self.audit.note(actor_of(peer.principal), action, target, **detail)


def send(peer: Peer, message: dict) -> None:
    """Frame and send one unsequenced message."""
    peer.send_frame(wire.frame(message))
