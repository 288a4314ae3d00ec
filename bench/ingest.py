"""``ingest``: notifications accepted and stored per second, single and batched.

Single: keep-alive connections each POST one notification after another for a while; the
rate counts 201 answers (each one stored in MongoDB before its answer), checked against the
documents in the database afterwards. Batched: ``user_ids`` of 1,000 recipients per request,
two requests in flight. The baseline is the database itself: raw ``insert_many`` of as many
documents of the same shape (copied from what the service stored), in batches of 1,000, into
a collection with the same indexes in the same database, in the same run.
"""

from __future__ import annotations

import asyncio
import time

from bson import ObjectId

from bench.http import HttpConn
from bench.profile import profiled
from bench.report import Options, Report, cpu_line
from bench.service import HOST, Baseline, Proc, Service

DEFAULT_SECONDS = 10.0
DEFAULT_BATCHED = 20_000
SINGLE_CONNECTIONS = 16
BATCH = 1000
BATCH_CONNECTIONS = 2
TARGET_SINGLE_RATIO = 0.6  # single-request rate against the bare Tornado JSON handler
TARGET_BATCH_RATIO = 0.7
BODY = {
    "type": "lab_result",
    "title": "Lab results ready",
    "message": "Your blood test results are ready to view.",
    "data": {"lab_result_id": "lr-1", "test_name": "Full blood count"},
}


# The closed loop (issue 15): a critical lab value that must be acknowledged, with a ladder.
# Its timeline will hold deliveries, pushes, escalations and the acknowledgement; ingest
# queues its push and its first escalation step (one queue write per batch).
CLOSED_LOOP = {
    **BODY,
    "priority": "critical",
    "ack_required": True,
    "escalation": [
        {"after_seconds": 3600, "to_role": "nurse"},
        {"after_seconds": 7200, "to_user_ids": ["dr-7"]},
    ],
}
QUEUE = "scheduled"  # the due-work queue (server/feed/scheduler.py)
ROUNDS = 3  # alternating rounds of each body in the closed-loop comparison


async def single(
    server: Proc, seconds: float, path: str = "/v1/notifications", body: dict = BODY
) -> tuple[int, int, float]:
    """One notification per request from many connections; (stored, failed, seconds)."""
    ok = failed = 0
    stop = time.monotonic() + seconds

    async def worker(n: int) -> None:
        nonlocal ok, failed
        conn, i = HttpConn(HOST, server.port, getattr(server, "key", None)), 0
        try:
            while time.monotonic() < stop:
                i += 1
                status, _ = await conn.request("POST", path, {**body, "user_id": f"s{n}-{i % 500}"})
                ok += status == 201
                failed += status != 201
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(SINGLE_CONNECTIONS)))
    return ok, failed, time.monotonic() - started


async def batched(service: Service, total: int) -> tuple[int, float]:
    """``total`` notifications, ``BATCH`` recipients a request; (stored, seconds)."""
    requests = [[f"b{r}-{i}" for i in range(BATCH)] for r in range(max(1, total // BATCH))]
    stored = 0

    async def worker(mine: list[list[str]]) -> None:
        nonlocal stored
        conn = HttpConn(HOST, service.port, service.key)
        try:
            for users in mine:
                got = await conn.json(
                    "POST", "/v1/notifications", {**BODY, "user_ids": users}, expect=201
                )
                stored += len(got)
        finally:
            conn.close()

    started = time.monotonic()
    shares = [requests[n::BATCH_CONNECTIONS] for n in range(BATCH_CONNECTIONS)]
    await asyncio.gather(*(worker(share) for share in shares))
    return stored, time.monotonic() - started


async def raw(service: Service, total: int) -> tuple[int, float]:
    """``insert_many`` of ``total`` documents shaped like the service's; (inserted, seconds)."""
    from server.app.store import connect

    client = connect(service.uri, 30000)
    try:
        db = client[service.db]
        sample = await db.notifications.find_one({"type": BODY["type"]})
        target = db.raw_notifications
        for name, spec in (await db.notifications.index_information()).items():
            if name != "_id_":
                options = {k: v for k, v in spec.items() if k in ("unique", "expireAfterSeconds")}
                await target.create_index(spec["key"], name=name, **options)
        base = 10**12
        started = time.monotonic()
        for at in range(0, total, BATCH):
            docs = [
                {**sample, "_id": str(ObjectId()), "seq": base + at + i, "user_id": f"r{at + i}"}
                for i in range(min(BATCH, total - at))
            ]
            await target.insert_many(docs, ordered=True)
        seconds = time.monotonic() - started
        count = await target.count_documents({})
        await target.drop()
    finally:
        await client.close()
    return count, seconds


async def closed_loop(service: Service, opts: Options, out: Report) -> None:
    """Single-request ingest of plain notifications and of critical ones with
    acknowledgement and a ladder, alternating rounds on the same service: what the timeline
    and the closed loop cost the ingest path, and the timeline documents it wrote."""
    seconds = opts.timed(DEFAULT_SECONDS) / 2
    rates: dict[str, list[float]] = {"plain": [], "closed loop": []}
    before = await counts(service)
    for _ in range(ROUNDS):
        for name, body in (("plain", BODY), ("closed loop", CLOSED_LOOP)):
            ok, failed, took = await single(service, seconds, body=body)
            rates[name].append(ok / took)
            if failed:
                out.line(f"{name}: {failed} requests failed")
    after = await counts(service)
    plain, loop = (sorted(r)[len(r) // 2] for r in rates.values())
    out.line(
        f"timeline: single-request ingest, median of {ROUNDS} alternating rounds of "
        f"{seconds:.0f}s: plain {plain:.0f}/s, critical with ack_required and a 2-step "
        f"ladder {loop:.0f}/s (ratio {loop / plain:.2f})"
    )
    out.line(
        "timeline: written during these rounds: timeline documents "
        f"{after['timeline'] - before['timeline']}, due-work queue entries "
        f"{after['queue'] - before['queue']} (pushes and first escalation steps)"
    )
    out.target("timeline_writes_on_ingest", after["timeline"] - before["timeline"], 0)


async def counts(service: Service) -> dict[str, int]:
    """Documents in the timeline and in the due-work queue."""
    from server.app.store import connect

    client = connect(service.uri, 30000)
    try:
        db = client[service.db]
        return {
            "timeline": await db.timeline.count_documents({}),
            "queue": await db[QUEUE].count_documents({}),
        }
    finally:
        await client.close()


async def stored_count(service: Service) -> int:
    """How many notifications the service's database holds."""
    from server.app.store import connect

    client = connect(service.uri, 30000)
    try:
        return await client[service.db].notifications.count_documents({})
    finally:
        await client.close()


async def run(opts: Options, out: Report) -> None:
    """Single, batched, then raw; rates and ratios; then the bare Tornado ceiling."""
    total = opts.sized(DEFAULT_BATCHED)
    single_rate = await run_service(opts, out, total)
    baseline = await Baseline.start(opts.workdir)
    try:
        ok, _, seconds = await single(baseline, opts.timed(DEFAULT_SECONDS), "/accept")
    finally:
        await baseline.stop()
    out.line(
        f"bare Tornado ceiling: {ok / seconds:.0f}/s answered by a handler that only parses "
        f"the JSON and answers 201 ({SINGLE_CONNECTIONS} connections, same client)"
    )
    ratio = single_rate / (ok / seconds)
    out.line(f"ratio single/bare Tornado: {ratio:.2f}")
    out.target("single_over_bare", ratio, TARGET_SINGLE_RATIO, below=False)


async def run_service(opts: Options, out: Report, total: int) -> float:
    """The service's single and batched rates, and raw insert_many into its database; the
    single rate."""
    service = await Service.start(opts.workdir, mongodb_uri=opts.mongodb_uri)
    try:
        cpu = service.cpu()
        async with profiled(opts, out, service.pid, "ingest-single"):
            ok, failed, seconds = await single(service, opts.timed(DEFAULT_SECONDS))
        out.line(cpu_line(cpu, service.cpu(), ok, "single notification"))
        in_db = await stored_count(service)
        single_rate = ok / seconds
        out.line(
            f"single: {ok} stored in {seconds:.1f}s = {single_rate:.0f}/s "
            f"({SINGLE_CONNECTIONS} connections, failed={failed}, in database {in_db})"
        )
        cpu = service.cpu()
        stored, seconds = await batched(service, total)
        out.line(cpu_line(cpu, service.cpu(), stored, "batched notification"))
        batch_rate = stored / seconds
        out.line(
            f"batched: {stored} stored in {seconds:.1f}s = {batch_rate:.0f}/s "
            f"({BATCH} per request, {BATCH_CONNECTIONS} in flight)"
        )
        inserted, seconds = await raw(service, stored)
        raw_rate = inserted / seconds
        out.line(f"raw insert_many: {inserted} in {seconds:.1f}s = {raw_rate:.0f}/s")
        out.line(f"ratio batched/raw: {batch_rate / raw_rate:.2f}")
        out.target("batched_over_raw", batch_rate / raw_rate, TARGET_BATCH_RATIO, below=False)
        final = await stored_count(service)
        out.line(f"in database: {final} (accepted {ok + stored})")
        out.target("accepted_but_not_stored", ok + stored - final, 0)
        await closed_loop(service, opts, out)
    finally:
        await service.stop()
    return single_rate
