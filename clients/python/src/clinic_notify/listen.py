"""A user's notification socket, kept open across failures and resumed with ``since``."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from collections.abc import AsyncIterator
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from clinic_notify.errors import NotifyError

SOCKET_PATH = "/v1/ws/notifications"
POLICY = 1008
SEEN_IDS = 5000


def later(cursor: str | None, candidate: Any) -> str | None:
    """The larger of two cursors (decimal strings)."""
    if not isinstance(candidate, str) or not candidate.isdigit():
        return cursor
    if cursor is None or int(candidate) > int(cursor):
        return candidate
    return cursor


class Listener:
    """One user's socket: connect, authenticate with the first frame, ack, resume."""

    def __init__(
        self,
        base_url: str,
        user_id: str | None,
        token: Any,
        *,
        since: str | None = None,
        ack: bool = True,
        min_delay: float = 0.5,
        max_delay: float = 30.0,
        ping_interval: float = 20.0,
        open_timeout: float = 10.0,
        on_status: Callable[[str], None] | None = None,
    ):
        if since is not None and not str(since).isdigit():
            raise ValueError("since must be a cursor (digits)")
        self.base = base_url.rstrip("/")
        self.user_id = user_id
        self.token = token
        self.cursor = since
        self.ack = ack
        self.min_delay = min_delay
        self.max_delay = max(max_delay, min_delay)
        self.ping_interval = ping_interval
        self.open_timeout = open_timeout
        self.say = on_status or (lambda line: None)
        self.seen: dict[str, None] = {}  # ordered: the oldest are forgotten first

    def url(self) -> str:
        parts = urlsplit(self.base)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = {k: v for k, v in {"user_id": self.user_id, "since": self.cursor}.items() if v}
        tail = f"?{urlencode(query)}" if query else ""
        return f"{scheme}://{parts.netloc}{parts.path}{SOCKET_PATH}{tail}"

    async def _token(self) -> str:
        if not callable(self.token):
            return str(self.token)
        value = self.token()
        return str(await value) if inspect.isawaitable(value) else str(value)

    async def notifications(self) -> AsyncIterator[dict[str, Any]]:
        """Each new notification once, in order."""
        async for frame in self.frames():
            if frame.get("type") == "notification":
                yield frame["notification"]

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        """Every frame from the service, but a notification already seen (at-least-once)."""
        attempt = 0
        while True:
            where = f"{self.base}{SOCKET_PATH}" + (f" since={self.cursor}" if self.cursor else "")
            self.say(f"connecting to {where}")
            welcomed = False
            try:
                async with connect(
                    self.url(),
                    open_timeout=self.open_timeout,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_interval,
                    user_agent_header="clinic-notify-python",
                ) as ws:
                    await ws.send(json.dumps({"type": "auth", "token": await self._token()}))
                    async for raw in ws:
                        frame = self._read(raw)
                        if frame is None:
                            continue
                        if frame.get("type") == "welcome":
                            welcomed, attempt = True, 0
                        elif frame.get("type") == "error" and not welcomed:
                            # The answer to the auth frame: the token is not even well formed.
                            code, message = frame.get("code"), frame.get("message")
                            raise NotifyError(
                                str(code or "unauthorized"), str(message or code), 401
                            )
                        elif frame.get("type") == "notification" and self.ack:
                            note_id = frame["notification"].get("id")
                            await ws.send(json.dumps({"type": "ack", "id": note_id}))
                        yield frame
                self._closed(ws.close_code, ws.close_reason, welcomed)
            except InvalidStatus as exc:
                self._refused(exc)
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                self.say(f"could not connect: {type(exc).__name__}: {exc}")
            except ConnectionClosed as exc:
                said = exc.rcvd
                self._closed(said.code if said else None, said.reason if said else "", welcomed)
            ceiling = min(self.max_delay, self.min_delay * 2 ** min(attempt, 20))
            delay = ceiling / 2 + random.random() * ceiling / 2
            attempt += 1
            self.say(f"reconnecting in {delay:.1f}s")
            await asyncio.sleep(delay)

    def _closed(self, code: int | None, reason: str | None, welcomed: bool) -> None:
        """The socket closed: news, or NotifyError when it refused the token (1008 before
        the welcome: a bad or expired token will not get better by retrying)."""
        self.say(f"closed: {code} {reason or ''}".rstrip())
        if code == POLICY and not welcomed:
            raise NotifyError("unauthorized", reason or "the token was refused", 401)

    def _refused(self, exc: InvalidStatus) -> None:
        """A refused upgrade: raise for answers retrying cannot change, else go on."""
        status = exc.response.status_code
        try:
            error = json.loads(exc.response.body or b"{}").get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        failure = NotifyError(
            str(error.get("code") or f"http_{status}"),
            str(error.get("message") or f"the socket's upgrade answered {status}"),
            status,
            error.get("fields"),
        )
        if failure.refused:
            raise failure from None
        self.say(f"could not connect: {failure}")

    def _read(self, raw: str | bytes) -> dict[str, Any] | None:
        """Parse a frame and keep the cursor; None for a duplicate notification or non-JSON."""
        try:
            frame = json.loads(raw)
        except ValueError:
            self.say(f"not JSON: {raw[:200]!r}")
            return None
        if not isinstance(frame, dict):
            return None
        kind = frame.get("type")
        if kind == "welcome" and self.cursor is None:
            self.cursor = later(None, frame.get("cursor"))
        elif kind == "replay_done":
            self.cursor = later(self.cursor, frame.get("cursor"))
        elif kind == "notification" and isinstance(frame.get("notification"), dict):
            note = frame["notification"]
            self.cursor = later(self.cursor, note.get("cursor"))
            if note.get("id") in self.seen:
                return None  # delivery is at-least-once: drop the duplicate
            self.seen[note.get("id")] = None
            if len(self.seen) > SEEN_IDS:
                del self.seen[next(iter(self.seen))]
        return frame
