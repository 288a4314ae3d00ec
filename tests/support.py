"""Test helpers that talk to the real service over real sockets.

- ``Api``: REST calls that check the contract's envelope.
- ``Socket``: a WebSocket client that reads frames by type.
- ``serve_node``: start a node in this test's loop on a free port.
- ``wait_for``: poll a condition with a generous deadline (never a fixed sleep before an
  assertion; a loaded machine only makes the wait longer).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from handlers.routes import Running, start_node
from settings import Settings

TOKEN_SECRET = "test-secret-0123456789-abcdefghij"

# How long a test waits for something asynchronous before it fails. Generous on purpose: a
# wait ends as soon as its condition holds, so only a broken test ever waits this long.
WAIT = float(os.environ.get("NOTIFY_TEST_WAIT", "20"))
# The one window that stays: how long "nothing arrives" is watched. A slow machine can only
# make such a check weaker, never fail it; where a later frame can prove the absence
# instead (a sentinel sent after), the tests use that.
QUIET = 0.3


async def wait_for(
    condition: Callable[[], Any], timeout: float = WAIT, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` (sync or async) until it is truthy; return its value, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}; last {value!r}")
        await asyncio.sleep(interval)


def test_settings(db_name: str, **changes: Any) -> Settings:
    """Settings for a node under test: fixed secret, free port, its own database."""
    base = Settings(
        port=0,
        mongodb_db=db_name,
        token_secret=TOKEN_SECRET,
        api_key_cache_seconds=0.0,
        # Long enough that a loop stalled by a loaded machine (client and node share it
        # here) never drops a live socket; the ping tests set their own.
        ping_interval=30.0,
        ping_timeout=30.0,
        log_level="WARNING",
    )
    return base.with_(**changes)


async def stop_node(running: Running, timeout: float = 60.0) -> None:
    """Stop a node; one that does not stop in time fails with the stacks of its tasks.

    (pytest-timeout would only show the threads: the event loop idling in select.)
    """
    try:
        await asyncio.wait_for(running.stop(), timeout)
    except TimeoutError:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            print(f"--- {task.get_name()} {task.get_coro()}", file=out)
            task.print_stack(file=out)
        stacks = out.getvalue()
        raise AssertionError(f"the node did not stop in {timeout} s:\n{stacks}") from None


async def serve_node(settings: Settings, uri: str, **kw: Any) -> Running:
    """Start a node on a free loopback port and wait until its bus follows MongoDB and has
    heard its stream out once (until then it answers replays and unread counts from MongoDB,
    not memory: on a loaded machine a test's first connect could come before)."""
    running = await start_node(settings, uri, **kw)
    await asyncio.wait_for(running.node.bus.ready.wait(), WAIT)
    await wait_for(lambda: running.node.hub.current, interval=0.005, what="its stream heard out")
    return running


class ApiError(AssertionError):
    """A call answered with an unexpected status."""


class Api:
    """REST calls against one node; every answer's envelope is checked."""

    def __init__(self, base_url: str, key: str | None = None):
        self.base_url = base_url
        self.key = key
        self.client = AsyncHTTPClient()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        expect: int = 200,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """Make a request, assert the status and the envelope, return ``data`` or ``error``."""
        url = self.base_url + path + (("?" + urlencode(query)) if query else "")
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        credential = self.key if key is None else key
        if credential:
            hdrs["Authorization"] = f"Bearer {credential}"
        payload = raw if raw is not None else (None if body is None else json.dumps(body))
        if payload is None and method in ("POST", "PUT", "PATCH"):
            payload = b""
        req = HTTPRequest(url, method=method, headers=hdrs, body=payload, request_timeout=30)
        try:
            resp = await self.client.fetch(req, raise_error=False)
        except HTTPClientError as exc:  # pragma: no cover - network failure
            raise ApiError(str(exc)) from exc
        self.last = resp
        if resp.code != expect:
            raise ApiError(f"{method} {path}: {resp.code} != {expect}: {resp.body[:500]!r}")
        envelope = json.loads(resp.body)
        if 200 <= resp.code < 300:
            assert envelope["success"] is True and "data" in envelope, envelope
            return envelope["data"]
        assert envelope["success"] is False, envelope
        assert set(envelope["error"]) <= {"code", "message", "fields"}, envelope
        assert isinstance(envelope["error"]["code"], str) and envelope["error"]["message"]
        return envelope["error"]

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.call("POST", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.call("DELETE", path, **kw)

    async def token(self, user_id: str, roles: list[str] | None = None, ttl: int = 600) -> str:
        """Mint a connection token through the API."""
        body = {"user_id": user_id, "roles": roles or ["patient"], "ttl_seconds": ttl}
        return (await self.post("/v1/tokens", body, expect=201))["token"]

    async def notify(self, user_id: str, title: str = "Hello", **fields: Any) -> dict:
        """Create a custom notification for a user."""
        body = {"user_id": user_id, "type": "custom", "title": title, "message": "m", **fields}
        return await self.post("/v1/notifications", body, expect=201)


class Socket:
    """A real WebSocket client that collects frames and reads them by type."""

    def __init__(self, conn: WebSocketClientConnection):
        self.conn = conn
        self.frames: list[dict] = []

    @classmethod
    async def open(cls, base_url: str, token: str | None = None, **query: Any) -> Socket:
        """Connect to the notification socket (the upgrade must succeed)."""
        params = {k: v for k, v in {"token": token, **query}.items() if v is not None}
        url = base_url.replace("http", "ws", 1) + "/v1/ws/notifications"
        if params:
            url += "?" + urlencode(params)
        return cls(await websocket_connect(url, connect_timeout=10))

    async def recv(self, timeout: float = WAIT) -> dict | None:
        """The next frame (None once closed)."""
        raw = await asyncio.wait_for(self.conn.read_message(), timeout)
        if raw is None:
            return None
        frame = json.loads(raw)
        self.frames.append(frame)
        return frame

    async def expect(self, kind: str, timeout: float = WAIT) -> dict:
        """Read until a frame of this type arrives; other frames are kept in ``frames``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {kind!r} frame; saw {[f['type'] for f in self.frames]}")
            frame = await self.recv(left)
            if frame is None:
                raise AssertionError(f"closed ({self.conn.close_code}) before a {kind!r} frame")
            if frame["type"] == kind:
                return frame

    async def nothing(self, seconds: float = QUIET) -> None:
        """Assert that no frame arrives for a while."""
        try:
            frame = await self.recv(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def only_then(self, notification_id: str, timeout: float = WAIT) -> None:
        """The next frame is this notification: nothing at all arrived before it.

        Send a notification after the fact and call this, instead of watching for a while
        that nothing comes: it proves the absence however slow the machine is.
        """
        frame = await self.recv(timeout)
        assert frame is not None, f"closed ({self.conn.close_code}) before {notification_id}"
        got = frame.get("notification", {}).get("id") if frame["type"] == "notification" else None
        assert got == notification_id, f"{frame} arrived before {notification_id}"

    async def closed(self, timeout: float = WAIT) -> int | None:
        """Wait for the server to close; returns the close code."""
        while await self.recv(timeout) is not None:
            pass
        return self.conn.close_code

    def send(self, frame: dict | str) -> None:
        self.conn.write_message(frame if isinstance(frame, str) else json.dumps(frame))

    def close(self) -> None:
        self.conn.close()
