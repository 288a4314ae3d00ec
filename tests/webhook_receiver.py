"""A webhook receiver on 127.0.0.1 that checks every request as an integrator would.

Each path is one endpoint (``Receiver.route``) with the secret the service gave it; every
request is verified with the ``standardwebhooks`` package's own verifier (not the service's
code), and kept with its ``webhook-id`` and whether it verified. A route can be told to
answer 500 for its next N requests, or to hang (never answer) its next N requests until
``release()``; otherwise it answers 204.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


@dataclass
class Received:
    """One request as the receiver saw it."""

    webhook_id: str
    timestamp: str
    body: Any
    verified: bool
    raw: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    answered: int | None = None  # the status it answered; None while hanging


@dataclass
class Route:
    """One endpoint: its secret and its behaviour."""

    secret: str | None = None
    fail_next: int = 0
    hang_next: int = 0
    requests: list[Received] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    most_in_flight: int = 0

    def ok_ids(self) -> list[str]:
        """The webhook-ids answered with a 2xx, in order (a duplicate appears twice)."""
        return [r.webhook_id for r in self.requests if r.answered and r.answered < 300]

    def ids(self) -> Counter:
        """How often each webhook-id arrived."""
        return Counter(r.webhook_id for r in self.requests)

    def release(self) -> None:
        """Let every hanging request finish (with a 204)."""
        self.released.set()


class _Handler(web.RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self, path: str) -> None:
        route = self.receiver.routes.get(path)
        if route is None:
            raise web.HTTPError(404)
        text = self.request.body.decode()
        headers = {k: v for k, v in self.request.headers.get_all()}
        try:
            Webhook(route.secret).verify(text, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        seen = Received(
            self.request.headers.get("webhook-id", ""),
            self.request.headers.get("webhook-timestamp", ""),
            json.loads(text),
            verified,
            self.request.body,
            {k.lower(): v for k, v in headers.items()},
        )
        route.requests.append(seen)
        route.in_flight += 1
        route.most_in_flight = max(route.most_in_flight, route.in_flight)
        try:
            if not verified:
                seen.answered = 400
            elif route.hang_next > 0:
                route.hang_next -= 1
                await route.released.wait()
                seen.answered = 204
            elif route.fail_next > 0:
                route.fail_next -= 1
                seen.answered = 500
            else:
                seen.answered = 204
        finally:
            route.in_flight -= 1
        self.set_status(seen.answered)
        self.finish()


class Receiver:
    """The receiving server; ``await start()`` in the test's loop, ``stop()`` after."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.server: HTTPServer | None = None
        self.port = 0

    async def start(self) -> Receiver:
        app = web.Application([(r"/(.*)", _Handler, {"receiver": self})])
        self.server = HTTPServer(app)
        sockets = bind_sockets(0, "127.0.0.1")
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def route(self, path: str, **behaviour: Any) -> Route:
        """A new endpoint at ``path`` (its secret is set once the service gave one)."""
        self.routes[path] = Route(**behaviour)
        return self.routes[path]

    async def stop(self) -> None:
        for route in self.routes.values():
            route.release()
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()


async def until(check, timeout: float = 15.0, every: float = 0.05) -> Any:
    """Poll ``check`` (sync or async) until it returns something true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not true within {timeout} s: {getattr(check, '__name__', check)}"
            )
        await asyncio.sleep(every)
