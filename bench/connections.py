"""``connections``: authenticated sockets held, server RSS per connection, connect rate.

Each user gets one socket with a token in the query; a socket counts once its ``welcome``
arrived (the baseline's once upgraded). RSS per connection is the server's resident set
growth over the idle-process RSS, divided by the sockets held, after a second's rest
(``--seconds``).
"""

from __future__ import annotations

import asyncio

from bench.clients import LoadClients
from bench.profile import profiled
from bench.report import Options, Report, cpu_line
from bench.service import Baseline, Proc, Service

STEPS = (10_000, 15_000)
TARGET_RSS_RATIO = 1.3
TARGET_RATE_RATIO = 0.5  # authenticated connects a second, against the bare server's


async def hold(
    server: Proc,
    clients: LoadClients,
    paths: list[str],
    steps: tuple[int, ...],
    out: Report,
    opts: Options,
) -> tuple[dict[int, float], dict[int, float]]:
    """Connect up to each step's count; the RSS per connection (KiB) and the connect rate
    at each step."""
    rest = opts.timed(1.0)
    await asyncio.sleep(rest / 2)
    idle = server.rss_kb()
    per_conn: dict[int, float] = {}
    rates: dict[int, float] = {}
    done = 0
    name = type(server).__name__.lower()
    for step in steps:
        cpu = server.cpu()
        async with profiled(opts, out, server.pid if done == 0 else None, f"{name}-connects"):
            got = await clients.connect(server, paths[done:step], concurrency=32)
        out.line(cpu_line(cpu, server.cpu(), step - done, f"{name} connect"))
        rates[step] = got["rate"]
        done = step
        await asyncio.sleep(rest)
        held = sum(a["open"] for a in await clients.each("status"))
        rss = server.rss_kb()
        per_conn[step] = (rss - idle) / max(held, 1)
        failed = f" failed={got['failed']}" if got["failed"] else ""
        out.line(
            f"{name} held={held}/{step} rss={rss / 1024:.1f}MiB (idle {idle / 1024:.1f}MiB) "
            f"rss_per_conn={per_conn[step]:.2f}KiB connect_rate={got['rate']:.0f}/s{failed}"
        )
    await clients.each("close")
    return per_conn, rates


async def run(opts: Options, out: Report) -> None:
    """Service, then baseline, at the same socket counts."""
    steps = (opts.size,) if opts.size else STEPS
    users = [f"u{i}" for i in range(max(steps))]
    clients = await LoadClients.start(max(steps), opts.processes)
    try:
        service = await Service.start(opts.workdir, mongodb_uri=opts.mongodb_uri)
        try:
            paths = [service.socket_path(u) for u in users]
            mine, my_rates = await hold(service, clients, paths, steps, out, opts)
        finally:
            await service.stop()
        baseline = await Baseline.start(opts.workdir)
        try:
            paths = [baseline.socket_path(u) for u in users]
            theirs, their_rates = await hold(baseline, clients, paths, steps, out, opts)
        finally:
            await baseline.stop()
    finally:
        await clients.stop()
    for step in steps:
        ratio = mine[step] / theirs[step] if theirs[step] > 0 else float("inf")
        out.line(f"ratio rss_per_conn service/baseline at {step}: {ratio:.2f}")
    out.target("rss_per_conn_ratio", ratio, TARGET_RSS_RATIO)
    first = steps[0]
    rate_ratio = my_rates[first] / their_rates[first]
    out.line(f"ratio connect_rate service/baseline at {first}: {rate_ratio:.2f}")
    out.target("connect_rate_ratio", rate_ratio, TARGET_RATE_RATIO, below=False)
