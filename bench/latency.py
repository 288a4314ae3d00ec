"""``latency``: ``POST /v1/notifications`` to the socket frame, at two offered rates.

Every user is connected. A sender offers targeted notifications open-loop (on a fixed
schedule, whatever the answers take, from as many keep-alive connections as it needs) to
random users for a while at each rate, after a short warm-up at that rate that is not
counted. Each notification carries the sender's
``time.monotonic()`` in its ``data``; the client that receives the frame subtracts it from
its own (one clock for every process on the machine). So a latency includes the HTTP
request, validation, the MongoDB write, the fan-out and the socket. The baseline relays the
same requests (no validation, no storage) to the same number of sockets.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable

from bench.clients import LoadClients
from bench.http import HttpConn
from bench.profile import profiled
from bench.report import Options, Report, cpu_line, ms, pct
from bench.service import HOST, Baseline, Service

DEFAULT_USERS = 5_000
RATES = (200, 1000)
DEFAULT_SECONDS = 10.0
MAX_CONNECTIONS = 256
TARGET_P99 = 0.050  # seconds, at the first rate
SETTLE = 2.0
WARM_UP = 2.0


class Offer:
    """An open-loop sender: ``rate`` requests a second for ``seconds``, on schedule."""

    def __init__(self, port: int, key: str | None, send: Callable[[HttpConn, str], Awaitable]):
        self.port, self.key, self.send = port, key, send
        self.idle: list[HttpConn] = []
        self.opened = self.ok = self.failed = self.late = 0
        self.answers: list[float] = []

    async def _one(self, user_id: str, behind: bool) -> None:
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            self.opened += 1
            conn = HttpConn(HOST, self.port, self.key)
        started = time.monotonic()
        try:
            status = await self.send(conn, user_id)
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            self.failed += 1
            conn.close()
            return
        self.answers.append(time.monotonic() - started)
        self.ok += status in (200, 201)
        self.failed += status not in (200, 201)
        self.late += behind
        self.idle.append(conn)

    async def run(self, users: list[str], rate: int, seconds: float) -> float:
        """Send ``rate * seconds`` requests on schedule; the rate actually offered."""
        rng = random.Random(rate)
        total, sent, tasks = int(rate * seconds), 0, set()
        started = time.monotonic()
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                busy = len(tasks) >= MAX_CONNECTIONS
                if busy:  # the server is far behind: do not open without bound
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(self._one(rng.choice(users), busy))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.001)
        offered = sent / (time.monotonic() - started)
        if tasks:
            await asyncio.wait(tasks)
        for conn in self.idle:
            conn.close()
        return offered


def service_sender(seq: list[int]) -> Callable[[HttpConn, str], Awaitable[int]]:
    """POST one custom notification, stamped, to a user."""

    async def send(conn: HttpConn, user_id: str) -> int:
        seq[0] += 1
        body = {
            "user_id": user_id,
            "type": "custom",
            "title": "Your results are ready",
            "message": "Log in to see them.",
            "data": {"bench_t": time.monotonic(), "n": seq[0]},
        }
        status, _ = await conn.request("POST", "/v1/notifications", body)
        return status

    return send


def baseline_sender(baseline: Baseline) -> Callable[[HttpConn, str], Awaitable[int]]:
    """Relay a notification-shaped frame, stamped, through the baseline to a user."""

    async def send(conn: HttpConn, user_id: str) -> int:
        note = {"id": "x", "user_id": user_id, "type": "custom", "title": "Your results",
                "data": {"bench_t": time.monotonic()}}  # fmt: skip
        text = json.dumps({"type": "notification", "notification": note})
        return await baseline.send(conn, user_id, text)

    return send


async def measure(
    name: str, port: int, key: str | None, send, clients: LoadClients, users, opts, out
) -> dict[int, float]:
    """Each rate in turn; the p99 of each."""
    p99s = {}
    for rate in RATES:
        # A warm-up at the rate, not counted: connections opened, caches and the garbage
        # collector's first full pass after the connect storm behind us.
        await Offer(port, key, send).run(users, rate, min(WARM_UP, opts.timed(WARM_UP)))
        await asyncio.sleep(min(SETTLE, opts.timed(SETTLE)))
        await clients.each("latencies")  # start clean
        offer = Offer(port, key, send)
        offered = await offer.run(users, rate, opts.timed(DEFAULT_SECONDS))
        await asyncio.sleep(min(SETTLE, opts.timed(SETTLE)))
        lat = [x for a in await clients.each("latencies") for x in a["latencies"]]
        p99s[rate] = pct(lat, 99)
        out.line(
            f"{name} at {rate}/s (offered {offered:.0f}/s): frames={len(lat)}/{offer.ok} "
            f"p50={ms(pct(lat, 50))} p99={ms(p99s[rate])} max={ms(max(lat, default=0))} "
            f"| answer p50={ms(pct(offer.answers, 50))} p99={ms(pct(offer.answers, 99))} "
            f"failed={offer.failed} connections={offer.opened} behind={offer.late}"
        )
    return p99s


async def run(opts: Options, out: Report) -> None:
    """The service at each rate, then the baseline at each rate."""
    users = [f"u{i}" for i in range(opts.sized(DEFAULT_USERS))]
    clients = await LoadClients.start(len(users), opts.processes)
    try:
        service = await Service.start(opts.workdir, mongodb_uri=opts.mongodb_uri)
        try:
            got = await clients.connect(service, [service.socket_path(u) for u in users])
            out.line(f"service connected={got['connected']} failed={got['failed']}")
            cpu = service.cpu()
            async with profiled(opts, out, service.pid, "latency"):
                mine = await measure(
                    "service", service.port, service.key, service_sender([0]), clients, users,
                    opts, out,
                )  # fmt: skip
            sent = sum(int(r * opts.timed(DEFAULT_SECONDS)) for r in RATES)
            out.line(cpu_line(cpu, service.cpu(), sent, "notification"))
        finally:
            await clients.each("close")
            await service.stop()
        baseline = await Baseline.start(opts.workdir, by_user=True)
        try:
            got = await clients.connect(baseline, [baseline.socket_path(u) for u in users])
            out.line(f"baseline connected={got['connected']} failed={got['failed']}")
            theirs = await measure(
                "baseline", baseline.port, None, baseline_sender(baseline), clients, users,
                opts, out,
            )  # fmt: skip
        finally:
            await clients.each("close")
            await baseline.stop()
    finally:
        await clients.stop()
    for rate in RATES:
        out.line(f"ratio p99 service/baseline at {rate}/s: {mine[rate] / theirs[rate]:.1f}")
    out.target(f"p99_seconds_at_{RATES[0]}_per_s", mine[RATES[0]], TARGET_P99)
