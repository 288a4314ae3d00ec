"""``reconnect``: every client drops, notifications pile up, every client comes back.

Each user first receives a broadcast (its last cursor), then all sockets close, then 10
notifications per user are created (batched, ``data.i`` = 0..9), then every client
reconnects with ``since=<last cursor>`` at once. Each client checks what it replays before
``replay_done``: every ``i`` once (none lost), no id twice, cursors increasing. Measured:
the time from the first reconnect until the last client has its ``replay_done``. The
baseline is the floor: as many plain reconnects to the bare server (no auth, no replay).
"""

from __future__ import annotations

import time

from bench.clients import LoadClients
from bench.profile import profiled
from bench.report import Options, Report, cpu_line
from bench.service import HOST, Baseline, Service

DEFAULT_USERS = 5_000
MISSED = 10
BATCH = 1000
TARGET_OVER_FLOOR = 3.0  # all caught up, against as many plain reconnects to the bare server


async def pile_up(service: Service, users: list[str], out: Report) -> None:
    """``MISSED`` notifications per user, in batches of ``BATCH`` recipients."""
    api = service.api()
    started = time.monotonic()
    try:
        for i in range(MISSED):
            for at in range(0, len(users), BATCH):
                body = {
                    "user_ids": users[at : at + BATCH],
                    "type": "custom",
                    "title": f"Missed {i}",
                    "message": "Stored while you were away.",
                    "data": {"i": i},
                }
                await api.json("POST", "/v1/notifications", body, expect=201)
    finally:
        api.close()
    seconds = time.monotonic() - started
    out.line(f"created {MISSED * len(users)} notifications while away in {seconds:.1f}s")


async def run(opts: Options, out: Report) -> None:
    """Connect, warm up, drop, pile up, reconnect and verify; then the baseline floor."""
    users = [f"u{i}" for i in range(opts.sized(DEFAULT_USERS))]
    clients = await LoadClients.start(len(users), opts.processes)
    try:
        service = await Service.start(opts.workdir, mongodb_uri=opts.mongodb_uri)
        try:
            paths = [service.socket_path(u) for u in users]
            got = await clients.connect(service, paths, concurrency=32)
            out.line(f"connected={got['connected']} failed={got['failed']}")
            await clients.each("reset", target=1)
            api = service.api()
            body = {"audience": "all", "title": "Welcome", "message": "Warm-up broadcast"}
            await api.json("POST", "/v1/broadcasts", body, expect=201)
            api.close()
            arrived = sum(len(a["arrivals"]) for a in await clients.each("wait", timeout=60))
            out.line(f"warm-up broadcast reached {arrived} clients (their last cursor)")
            await clients.each("drop")
            await pile_up(service, users, out)
            async with profiled(opts, out, service.pid, "reconnect"):
                cpu_before = service.cpu()
                answers = await clients.each(
                    "reconnect", host=HOST, port=service.port, expect=MISSED, concurrency=32,
                    timeout=120,
                )  # fmt: skip
                cpu = cpu_line(cpu_before, service.cpu(), len(users), "reconnect")
        finally:
            await clients.each("close")
            await service.stop()
        baseline = await Baseline.start(opts.workdir)
        try:
            paths = [baseline.socket_path(u) for u in users]
            await clients.connect(baseline, paths, concurrency=32)
            await clients.each("drop")
            await clients.each("close")
            floor = await clients.connect(baseline, paths, concurrency=32)
        finally:
            await clients.each("close")
            await baseline.stop()
    finally:
        await clients.stop()
    started = min(a["started"] for a in answers)
    lasts = [a["last"] for a in answers if a["last"] is not None]
    seconds = (max(lasts) - started) if lasts else float("inf")
    total = {k: sum(a[k] for a in answers) for k in ("caught_up", "lost", "duplicated")}
    disorder = sum(a["out_of_order"] for a in answers)
    failed: dict[str, int] = {}
    for a in answers:
        for why, n in a["failed"].items():
            failed[why] = failed.get(why, 0) + n
    out.line(
        f"service: {total['caught_up']}/{len(users)} caught up in {seconds:.2f}s "
        f"({MISSED} missed each) lost={total['lost']} duplicated={total['duplicated']} "
        f"out_of_order={disorder} failed={failed}"
    )
    out.line(cpu)
    out.line(
        f"baseline floor: {floor['connected']} plain reconnects (no auth, no replay) "
        f"in {floor['seconds']:.2f}s"
    )
    out.line(f"ratio service/baseline floor: {seconds / floor['seconds']:.1f}")
    out.target("caught_up_over_floor", seconds / floor["seconds"], TARGET_OVER_FLOOR)
    out.target("lost_plus_duplicated", total["lost"] + total["duplicated"] + disorder, 0)
    out.target("not_caught_up", len(users) - total["caught_up"], 0)
