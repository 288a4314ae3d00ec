"""Webhooks across node processes: a node killed with SIGKILL mid-send loses no event.

Three ``run.py`` processes share the session's database server; the receiver runs in the
test. The first attempt hangs at the receiver, the node that claimed it (the queue entry
says which) is killed with SIGKILL, and after its lease one of the other two sends the event
again, with the same ``webhook-id``, once.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.nodes import Nodes, running
from tests.support import Api
from tests.webhook_receiver import Receiver, until

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

LEASE, TIMEOUT = 1.0, 2.0  # a claimed attempt is the node's for LEASE + TIMEOUT seconds
ENV = {
    "NOTIFY_OUTBOUND_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
    "NOTIFY_WEBHOOK_RETRY_SECONDS": "0.5,0.5",
    "NOTIFY_WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
    "NOTIFY_SCHEDULE_LEASE_SECONDS": str(LEASE),
    "NOTIFY_SCHEDULE_POLL_SECONDS": "0.1",
    "NOTIFY_WEBHOOK_CACHE_SECONDS": "0.2",
}


@pytest_asyncio.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest_asyncio.fixture
async def cluster(mongo_uri, db_name, tmp_path):
    async with running(Nodes(mongo_uri, db_name, tmp_path, 3, ENV)) as started:
        yield started


async def test_a_node_killed_mid_send_leaves_the_event_to_another(cluster, receiver):
    nodes, key, db = cluster
    apis = [Api(nodes.url(i), key) for i in range(3)]
    route = receiver.route("k")
    body = {"url": receiver.url("k"), "events": ["notification.read"]}
    route.secret = (await apis[0].post("/v1/webhooks", body, expect=201))["secret"]
    for i, api in enumerate(apis):  # every node has read the webhook list once
        await until(lambda api=api, i=i: _heard_from(api, route, f"warm-{i}"), every=0)
    first_ids = set(route.ids())
    route.hang_next = 1

    nid = (await apis[1].notify("p-kill"))["id"]
    await apis[1].post(f"/v1/users/p-kill/notifications/{nid}/read")
    await until(lambda: _hanging_for(route, nid))
    entry = await _claimed_entry(db)
    claimer = entry["claimed_by"]
    nodes.kill(claimer)  # it sent the attempt and waits for an answer that never comes

    await until(lambda: _answered_for(route, nid), timeout=20)
    mine = [r for r in route.requests if r.body["data"]["notification_id"] == nid]
    assert len(mine) == 2 and mine[0].webhook_id == mine[1].webhook_id
    assert mine[0].answered is None and mine[1].answered == 204 and mine[1].verified
    live = [i for i in range(3) if f"node-{i}" != claimer]
    hook_id = (await apis[live[0]].get("/v1/webhooks"))["items"][0]["id"]
    done = await until(lambda: _status(apis[live[0]], hook_id, mine[0].webhook_id, "succeeded"))
    assert done["attempts"] == 1  # the killed node never recorded its attempt

    # The survivors deliver each later event once.
    later = []
    for n in range(6):
        api = apis[live[n % 2]]
        other = (await api.notify(f"p-{n}"))["id"]
        await api.post(f"/v1/users/p-{n}/notifications/{other}/read")
        later.append(other)
    await until(lambda: _all_answered(route, later))
    counts = route.ids()
    assert all(c == 1 for wid, c in counts.items() if wid not in first_ids | {mine[0].webhook_id})
    sent = [r.body["data"]["notification_id"] for r in route.requests]
    assert sorted(n for n in sent if n in later) == sorted(later)


async def _heard_from(api: Api, route, user: str) -> bool:
    """A read made on this node reached the receiver (within a few seconds)."""
    nid = (await api.notify(user))["id"]
    await api.post(f"/v1/users/{user}/notifications/{nid}/read")
    try:
        await until(lambda: _answered_for(route, nid), timeout=3)
    except AssertionError:
        return False
    return True


def _hanging_for(route, nid: str) -> bool:
    return any(
        r.body["data"]["notification_id"] == nid and r.answered is None for r in route.requests
    )


def _answered_for(route, nid: str) -> bool:
    return any(
        r.body["data"]["notification_id"] == nid and r.answered == 204 for r in route.requests
    )


def _all_answered(route, nids: list[str]) -> bool:
    done = {r.body["data"]["notification_id"] for r in route.requests if r.answered == 204}
    return set(nids) <= done


async def _claimed_entry(db) -> dict:
    async def claimed():
        entry = await db.scheduled.find_one({"kind": "webhook"})
        return entry if entry and entry.get("claimed_by") else None

    return await until(claimed)


async def _status(api: Api, hook_id: str, webhook_id: str, status: str) -> dict | None:
    items = (await api.get(f"/v1/webhooks/{hook_id}/deliveries"))["items"]
    found = [d for d in items if d["webhook_id"] == webhook_id]
    return found[0] if found and found[0]["status"] == status else None
