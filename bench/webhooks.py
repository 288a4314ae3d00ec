"""``webhooks``: signed webhook deliveries per second to a local receiver.

The service (``NOTIFY_OUTBOUND_ALLOW_PRIVATE=true``) has one endpoint registered for
``notification.read``, served by a receiver in this process on 127.0.0.1 that checks every
signature (HMAC-SHA256 as Standard Webhooks defines it) and answers 204. N notifications are
stored for one user (batched), then one ``read-all`` makes N ``read`` events at once: the
figure is N over the time from that request to the receiver's N-th distinct ``webhook-id``
(each event: the notification read, a delivery stored, a due-work entry claimed, a signed
POST, the outcome recorded). Duplicates, bad signatures and deliveries not ``succeeded``
are counted and must be zero. Every process shares one machine: the receiver's and the
load's CPU time are the service's competition, so the rate is a floor, not a ceiling.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import time
from collections import Counter

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from bench.report import Options, Report, cpu_line
from bench.service import HOST, Service

DEFAULT_EVENTS = 2000
TARGET_PER_SECOND = 100.0
USER = "wh-bench"
NOTE = {"user_id": USER, "type": "custom", "title": "Bench", "message": "m"}


class Received:
    """What the receiver saw: webhook-ids and signatures that did not verify."""

    def __init__(self, secret: str):
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.ids: Counter = Counter()
        self.bad = 0
        self.last_at = 0.0
        self.changed = asyncio.Event()

    def take(self, headers, body: bytes) -> None:
        msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        mac = hmac.new(self.key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
        expected = "v1," + base64.b64encode(mac.digest()).decode()
        if not hmac.compare_digest(expected, headers.get("webhook-signature", "")):
            self.bad += 1
        self.ids[msg_id] += 1
        self.last_at = time.monotonic()
        self.changed.set()


class _Hook(web.RequestHandler):
    def initialize(self, received: list[Received]) -> None:
        self.received = received

    def check_xsrf_cookie(self) -> None:
        pass

    def post(self) -> None:
        self.received[0].take(self.request.headers, self.request.body)
        self.set_status(204)


async def run(opts: Options, out: Report) -> None:
    """Register, make N events with one request, count deliveries until all arrived."""
    events = opts.sized(DEFAULT_EVENTS)
    holder: list[Received] = []
    server = HTTPServer(web.Application([(r"/hook", _Hook, {"received": holder})]))
    sockets = bind_sockets(0, HOST)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    service = await Service.start(
        opts.workdir, {"NOTIFY_OUTBOUND_ALLOW_PRIVATE": "true"}, opts.mongodb_uri
    )
    try:
        admin = service.http(await _admin_key(service))
        hook = await admin.json(
            "POST",
            "/v1/webhooks",
            {"url": f"http://{HOST}:{port}/hook", "events": ["notification.read"]},
            expect=201,
        )
        received = Received(hook["secret"])
        holder.append(received)
        api = service.api()
        for _ in range(events):  # one user: one read-all then makes every event
            await api.json("POST", "/v1/notifications", NOTE, expect=201)
        cpu = service.cpu()
        started = time.monotonic()
        marked = await api.json("POST", f"/v1/users/{USER}/notifications/read-all")
        answered = time.monotonic() - started
        deadline = started + max(60.0, events / 20)
        while len(received.ids) < events and time.monotonic() < deadline:
            received.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(received.changed.wait(), 5)
        seconds = max(received.last_at - started, 1e-9)
        out.line(cpu_line(cpu, service.cpu(), len(received.ids), "webhook delivery"))
        rate = len(received.ids) / seconds
        out.line(
            f"{len(received.ids)}/{events} delivered in {seconds:.2f}s = {rate:.0f}/s "
            f"(read-all of {marked['count']} answered in {answered:.2f}s; one endpoint, "
            "4 requests in flight at most; receiver in the load process)"
        )
        duplicates = sum(n - 1 for n in received.ids.values())
        succeeded = await _succeeded(service, events)
        out.line(
            f"duplicates={duplicates} bad_signatures={received.bad} succeeded={succeeded}/{events}"
        )
        metrics = await service.metrics()
        attempts = metrics.get('notify_webhook_attempts_total{outcome="success"}', 0.0)
        out.line(f"attempts counted by the service: success={attempts:.0f}")
        out.target("webhook_deliveries_per_second", rate, TARGET_PER_SECOND, below=False)
        out.target("webhook_undelivered", events - len(received.ids), 0)
        out.target("webhook_not_recorded_succeeded", events - succeeded, 0)
        out.target("webhook_duplicates_or_bad", duplicates + received.bad, 0)
    finally:
        await service.stop()
        server.stop()


async def _succeeded(service: Service, events: int) -> int:
    """Deliveries recorded as succeeded (written just after each 204), counted in MongoDB."""
    from server.app.store import connect

    client = connect(service.uri, 5000)
    try:
        deadline = time.monotonic() + 30
        while True:
            count = await client[service.db].webhook_deliveries.count_documents(
                {"status": "succeeded"}
            )
            if count >= events or time.monotonic() > deadline:
                return count
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _admin_key(service: Service) -> str:
    from server.app.store import Store, connect
    from server.auth.credentials import ApiKeys

    client = connect(service.uri, 5000)
    try:
        key, _ = await ApiKeys(Store(client, service.db)).create("bench-admin", ["admin"])
    finally:
        await client.close()
    return key
