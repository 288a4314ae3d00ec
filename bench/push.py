"""``push``: Web Push messages per second to users with no socket, and the CPU per push.

N users (default 5,000) each have one device subscribed (the first 20 through the API, the
rest written in bulk: subscribing is setup, not measured) whose push service is a local one in this
process on 127.0.0.1 (``tests/pushservice.py``): it verifies every VAPID JWT and decrypts
every message with the device's private key, as a browser's push service and the browser
would. Then N notifications are stored (``user_ids`` batches of 1,000) for users with no
socket, with ``NOTIFY_PUSH_GRACE_SECONDS=0``; the figure is N over the time from the first
request to the N-th distinct push accepted (each push: found by the sweep, a queue entry
claimed, encrypted, signed, posted, its outcome in the timeline). Duplicates and pushes that
failed a check must be zero. The push service's decryption runs in the load process on the
same machine: its CPU is the service's competition, so the rate is a floor; the service's
CPU per push is its own process's CPU time over N.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

from bench.report import Options, Report, cpu_line
from bench.service import Service
from tests.pushservice import PushServer

DEFAULT_USERS = 5000
TARGET_PER_SECOND = 100.0
BATCH = 1000
VIA_API = 20  # subscriptions made through the API; the rest written directly (setup, not measured)
SETTINGS = {
    "NOTIFY_OUTBOUND_ALLOW_PRIVATE": "true",
    "NOTIFY_PUSH_GRACE_SECONDS": "0",
    "NOTIFY_PUSH_SWEEP_SECONDS": "0.2",
    "NOTIFY_SCHEDULE_POLL_SECONDS": "0.2",
}


async def run(opts: Options, out: Report) -> None:
    """Subscribe N users, store one notification for each, count pushes until all arrived."""
    users = [f"push-{i}" for i in range(opts.sized(DEFAULT_USERS))]
    push = await PushServer().start()
    service = await Service.start(opts.workdir, SETTINGS, opts.mongodb_uri)
    try:
        api = service.api()
        key = await api.json("GET", "/v1/push/vapid-public-key")
        push.vapid_key = key["public_key"]
        subs = [push.add(user).subscription() for user in users]
        for user, sub in list(zip(users, subs, strict=True))[:VIA_API]:
            await api.json("POST", f"/v1/users/{user}/push-subscriptions", sub, expect=201)
        await _store_subscriptions(service, users[VIA_API:], subs[VIA_API:])
        cpu = service.cpu()
        started = time.monotonic()
        for i in range(0, len(users), BATCH):
            body = {"user_ids": users[i : i + BATCH], "type": "lab_result",
                    "data": {"lab_result_id": "l-1"}}  # fmt: skip
            await api.json("POST", "/v1/notifications", body, expect=201)
        stored = time.monotonic() - started
        deadline = started + max(60.0, len(users) / 20)
        while len(push.accepted) < len(users) and time.monotonic() < deadline:
            push.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(push.changed.wait(), 5)
        got = Counter(p.subscriber for p in push.accepted)
        last = max((p.at for p in push.accepted), default=started)
        seconds = max(last - started, 1e-9)
        rate = len(got) / seconds
        out.line(cpu_line(cpu, service.cpu(), len(got), "push"))
        out.line(
            f"{len(got)}/{len(users)} pushed in {seconds:.2f}s = {rate:.0f}/s "
            f"(stored in {stored:.2f}s; every push decrypted and its JWT verified by the "
            "local push service in the load process)"
        )
        duplicates = sum(n - 1 for n in got.values())
        out.line(f"duplicates={duplicates} errors={len(push.errors)}")
        metrics = await service.metrics()
        sent = metrics.get('notify_push_attempts_total{outcome="sent"}', 0.0)
        out.line(f"attempts counted by the service: sent={sent:.0f}")
        out.target("pushes_per_second", rate, TARGET_PER_SECOND, below=False)
        out.target("push_not_delivered", len(users) - len(got), 0)
        out.target("push_duplicates_or_errors", duplicates + len(push.errors), 0)
    finally:
        await service.stop()
        await push.stop()


async def _store_subscriptions(service: Service, users: list[str], subs: list[dict]) -> None:
    """Subscriptions as the API stores them, written in bulk: subscribing is not measured."""
    from server.app.store import connect
    from server.app.timeutil import utcnow
    from server.push.subscriptions import subscription_id

    now = utcnow()
    docs = [
        {
            "_id": subscription_id(sub["endpoint"]),
            "user_id": user,
            "roles": ["patient"],
            "endpoint": sub["endpoint"],
            "p256dh": sub["keys"]["p256dh"],
            "auth": sub["keys"]["auth"],
            "device": None,
            "expiration_time": None,
            "updated_at": now,
            "created_at": now,
        }
        for user, sub in zip(users, subs, strict=True)
    ]
    client = connect(service.uri, 5000)
    try:
        for i in range(0, len(docs), BATCH):
            await client[service.db].push_subscriptions.insert_many(docs[i : i + BATCH])
    finally:
        await client.close()
