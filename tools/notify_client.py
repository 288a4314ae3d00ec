"""Listen to a user's notification socket from a terminal: ``python -m tools.notify_client``.

Prints every frame as one JSON line on standard output as it arrives; connection news goes
to standard error. Acks each notification, reconnects with backoff and resumes with
``since`` = the last cursor, so nothing is missed across a restart of the service. With
``--send-test`` it also sends itself a test notification through the REST API (an API key
with the ``notify`` scope), which makes a one-line smoke test:

    NOTIFY_TOKEN=... NOTIFY_API_KEY=... python -m tools.notify_client \\
        --url http://127.0.0.1:7556 --send-test --count 1 --timeout 10

Exit status: 0 when ``--count`` notifications arrived (or ``--send-test`` alone sent one),
1 on ``--timeout``, 2 when the service refuses the token or the request (it will not change
by retrying), 130 on Ctrl-C. The token and the API key are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import sys
from typing import Any
from urllib.parse import urlencode, urlsplit

from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tools.integrator import AsyncNotifyApi, NotifyError

SOCKET_PATH = "/v1/ws/notifications"
PERMANENT = {400, 401, 403}  # refusals that retrying with the same token cannot change


class Refused(Exception):
    """The service refused the connection for good (bad token, bad query, Origin)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.notify_client",
        description="Print a user's notifications as JSON lines; ack, reconnect and resume.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:7556", help="the service's base URL")
    parser.add_argument("--token", help="connection token (default: $NOTIFY_TOKEN)")
    parser.add_argument("--since", help="resume after this cursor")
    parser.add_argument("--no-ack", action="store_true", help="do not send delivery receipts")
    parser.add_argument("--count", type=int, help="exit 0 after this many notifications")
    parser.add_argument("--timeout", type=float, help="exit 1 after this many seconds")
    parser.add_argument("--ping", type=float, default=20.0, help="seconds between pings")
    parser.add_argument("--min-delay", type=float, default=0.5, help="first reconnect delay")
    parser.add_argument("--max-delay", type=float, default=30.0, help="longest reconnect delay")
    test = parser.add_argument_group("sending a test notification")
    test.add_argument("--send-test", action="store_true", help="POST /v1/ws/test-notification")
    test.add_argument("--api-key", help="API key with the notify scope (default: $NOTIFY_API_KEY)")
    test.add_argument("--user-id", help="recipient (default: the token's user)")
    test.add_argument("--title", default="Test notification")
    test.add_argument("--message", default="Sent by tools.notify_client")
    args = parser.parse_args(argv)
    args.token = args.token or os.environ.get("NOTIFY_TOKEN")
    args.api_key = args.api_key or os.environ.get("NOTIFY_API_KEY")
    if args.since is not None and not args.since.isdigit():
        parser.error("--since must be a cursor (digits)")
    if not args.token and not args.send_test:
        parser.error("give --token (or set NOTIFY_TOKEN), or --send-test")
    if args.send_test and not args.api_key:
        parser.error("--send-test needs --api-key (or NOTIFY_API_KEY)")
    if args.send_test and not (args.user_id or args.token):
        parser.error("--send-test needs --user-id or a token")
    return args


def token_subject(token: str) -> str | None:
    """The ``sub`` claim of a JWT, read without verifying it (the service verifies)."""
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def later(cursor: str | None, candidate: Any) -> str | None:
    """The larger of two cursors (decimal strings)."""
    if not isinstance(candidate, str) or not candidate.isdigit():
        return cursor
    if cursor is None or int(candidate) > int(cursor):
        return candidate
    return cursor


class Listener:
    """One user's socket, kept open across failures, resuming where it stopped."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.base = args.url.rstrip("/")
        self.cursor: str | None = args.since
        self.seen: set[str] = set()
        self.received = 0
        self.test_sent = False
        self.welcomed = False

    def say(self, text: str) -> None:
        """A line of connection news on standard error, with any secret blanked out."""
        for secret in (self.args.token, self.args.api_key):
            if secret:
                text = text.replace(secret, "***")
        print(text, file=sys.stderr, flush=True)

    def socket_url(self) -> str:
        parts = urlsplit(self.base)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = {"token": self.args.token}
        if self.cursor is not None:
            query["since"] = self.cursor
        return f"{scheme}://{parts.netloc}{parts.path}{SOCKET_PATH}?{urlencode(query)}"

    async def run(self) -> int:
        """Connect, print, reconnect, until ``--count`` is reached (or forever)."""
        attempt = 0
        while True:
            where = f"{self.base}{SOCKET_PATH}" + (f" since={self.cursor}" if self.cursor else "")
            self.say(f"connecting to {where}")
            try:
                conn = await websocket_connect(
                    self.socket_url(),
                    connect_timeout=10,
                    ping_interval=self.args.ping,
                    ping_timeout=self.args.ping,  # Tornado caps it at the interval
                )
            except HTTPClientError as exc:
                if exc.code in PERMANENT:
                    raise Refused(f"the service refused the connection: HTTP {exc.code}") from None
                self.say(f"could not connect: HTTP {exc.code}")
            except OSError as exc:
                self.say(f"could not connect: {exc.strerror or type(exc).__name__}")
            else:
                if await self.follow(conn):
                    return 0
                attempt = 0 if self.welcomed else attempt
                self.say(f"closed: {conn.close_code} {conn.close_reason or ''}".rstrip())
            ceiling = min(self.args.max_delay, self.args.min_delay * 2 ** min(attempt, 20))
            delay = ceiling / 2 + random.random() * ceiling / 2
            attempt += 1
            self.say(f"reconnecting in {delay:.1f}s")
            await asyncio.sleep(delay)

    async def follow(self, conn: WebSocketClientConnection) -> bool:
        """Print frames until the socket closes; True once ``--count`` is reached."""
        self.welcomed = False
        try:
            while (raw := await conn.read_message()) is not None:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    self.say(f"not JSON: {raw[:200]!r}")
                    continue
                print(json.dumps(frame, ensure_ascii=False), flush=True)  # one line each
                if isinstance(frame, dict) and await self.handle(conn, frame):
                    return True
        finally:
            conn.close()
        return False

    async def handle(self, conn: WebSocketClientConnection, frame: dict) -> bool:
        """Act on one frame; True once ``--count`` is reached."""
        kind = frame.get("type")
        if kind == "welcome":
            self.welcomed = True
            if self.cursor is None:
                self.cursor = later(None, frame.get("cursor"))
            if self.args.send_test and not self.test_sent:
                await self.send_test()
        elif kind == "replay_done":
            self.cursor = later(self.cursor, frame.get("cursor"))
        elif kind == "notification":
            note = frame.get("notification") or {}
            self.cursor = later(self.cursor, note.get("cursor"))
            if note.get("id") in self.seen:
                return False  # at-least-once delivery: a duplicate counts once
            self.seen.add(note.get("id"))
            if not self.args.no_ack:
                await conn.write_message(json.dumps({"type": "ack", "id": note.get("id")}))
            self.received += 1
            return self.args.count is not None and self.received >= self.args.count
        return False

    async def send_test(self) -> dict:
        """POST a test notification; prints the stored one as a JSON line on stderr."""
        user_id = self.args.user_id or token_subject(self.args.token or "")
        api = AsyncNotifyApi(self.base, self.args.api_key)
        stored = await api.send_test_notification(user_id, self.args.title, self.args.message)
        self.test_sent = True
        self.say(f"sent test notification {stored['id']} to {user_id}")
        return stored


async def main_async(args: argparse.Namespace) -> int:
    """Run the listener (and the test sender) within the optional timeout."""
    listener = Listener(args)
    if not args.token:  # --send-test alone: send, print the stored notification, done
        stored = await listener.send_test()
        print(json.dumps(stored, ensure_ascii=False), flush=True)
        return 0
    try:
        return await asyncio.wait_for(listener.run(), args.timeout)
    except TimeoutError:
        listener.say(f"timed out after {args.timeout}s with {listener.received} notifications")
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(main_async(args))
    except Refused as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except NotifyError as exc:
        print(f"the service refused the test notification: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
