"""``stalled``: server memory while 100 stalled readers sit through a fan-out.

Some clients read normally; 100 more connect, then stop reading (small receive buffers,
reading paused). A series of large broadcasts (about 20 KB each, more than the kernel's
socket buffers and the service's ``send_buffer_bytes`` can hold for a stalled socket) goes
to everyone while the server's RSS is sampled. The service closes each stalled socket (1008)
once its unsent bytes would pass the cap, so its memory stays bounded; the baseline buffers
without limit. Normal readers must get every broadcast. A smaller ``--size`` sends fewer
broadcasts too (too few to fill a stalled socket: the smoke test's size).
"""

from __future__ import annotations

import asyncio
import time

from bench.clients import LoadClients
from bench.fanout import frame_text
from bench.report import Options, Report
from bench.service import Baseline, Proc, Service

DEFAULT_NORMAL = 200
STALLED = 100
BROADCASTS = 300
SEND_BUFFER = 262_144  # the service's send_buffer_bytes for this scenario
# 5,000 four-byte characters: about 20 KB on the wire, the largest message allowed.
BIG = {"audience": "all", "title": "Large announcement", "message": "\U0001f3e5" * 5000}


class Sampler:
    """A server's RSS every ``every`` seconds, in the background."""

    def __init__(self, server: Proc, every: float = 0.1):
        self.server, self.every = server, every
        self.samples: list[int] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append(self.server.rss_kb())
            await asyncio.sleep(self.every)

    async def stop(self) -> list[int]:
        """Stop sampling; the samples (KiB)."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.samples.append(self.server.rss_kb())
        return self.samples


async def connect_both(server: Proc, clients: LoadClients, normal: int, stalled: int) -> None:
    """The stalled clients first (small receive buffers), then the normal ones."""
    users = [f"u{i}" for i in range(stalled + normal)]
    paths = [server.socket_path(u) for u in users]
    await clients.split("connect", "paths", paths[:stalled], host="127.0.0.1", port=server.port,
                        welcome=server.welcomes, rcvbuf=4096)  # fmt: skip
    await clients.each("stall", count=stalled)  # one client process holds them all
    await clients.connect(server, paths[stalled:])


def describe(name: str, samples: list[int], status: list[dict]) -> tuple[float, str]:
    """Growth of RSS over the run (MiB), and a line about it."""
    start, peak, end = samples[0], max(samples), samples[-1]
    closed: dict[str, int] = {}
    for s in status:
        for code, n in s["closed"].items():
            closed[code] = closed.get(code, 0) + n
    growth = (peak - start) / 1024
    return growth, (
        f"{name}: rss start={start / 1024:.1f}MiB peak={peak / 1024:.1f}MiB "
        f"end={end / 1024:.1f}MiB growth={growth:.1f}MiB; sockets closed by code {closed}"
    )


async def run(opts: Options, out: Report) -> None:
    """The service, then the baseline, through the same series of broadcasts."""
    normal = opts.sized(DEFAULT_NORMAL)
    stalled = min(STALLED, normal)
    broadcasts = min(BROADCASTS, max(5, BROADCASTS * normal // DEFAULT_NORMAL))
    clients = await LoadClients.start(normal + stalled, 1)
    settings = {"NOTIFY_SEND_BUFFER_BYTES": str(SEND_BUFFER)}
    try:
        service = await Service.start(opts.workdir, settings, mongodb_uri=opts.mongodb_uri)
        try:
            await connect_both(service, clients, normal, stalled)
            await clients.each("reset", target=broadcasts)
            api = service.api()
            sampler = Sampler(service)
            started = time.monotonic()
            for _ in range(broadcasts):
                stored = await api.json("POST", "/v1/broadcasts", BIG, expect=201)
            api.close()
            got = await clients.each("wait", timeout=120)
            seconds = time.monotonic() - started
            samples = await sampler.stop()
            status = await clients.each("status")
            dropped = (await service.metrics()).get("notify_slow_readers_dropped_total", 0)
        finally:
            await clients.each("close")
            await service.stop()
        text = frame_text(stored)
        growth, line = describe("service", samples, status)
        complete = sum(len(a["arrivals"]) for a in got)
        out.line(
            f"{line}; slow readers dropped={dropped:.0f}/{stalled}; normal readers with all "
            f"{broadcasts} broadcasts={complete}/{normal} in {seconds:.1f}s"
        )
        baseline = await Baseline.start(opts.workdir)
        try:
            await connect_both(baseline, clients, normal, stalled)
            await clients.each("reset", target=broadcasts)
            sampler = Sampler(baseline)
            for _ in range(broadcasts):
                await baseline.broadcast(text)
            got = await clients.each("wait", timeout=120)
            base_samples = await sampler.stop()
            status = await clients.each("status")
        finally:
            await clients.each("close")
            await baseline.stop()
    finally:
        await clients.stop()
    base_growth, line = describe("baseline", base_samples, status)
    complete = sum(len(a["arrivals"]) for a in got)
    out.line(f"{line}; normal readers with all broadcasts={complete}/{normal}")
    out.line(f"ratio rss growth baseline/service: {base_growth / max(growth, 0.1):.0f}")
    bound = stalled * SEND_BUFFER / 1048576
    out.line(
        f"frame {len(text.encode()) / 1024:.1f}KiB x {broadcasts} broadcasts; service bound "
        f"{stalled} x send_buffer_bytes = {bound:.1f}MiB"
    )
    out.target("service_rss_growth_mib", growth, bound)
    out.target("slow_readers_not_dropped", stalled - dropped, 0)
