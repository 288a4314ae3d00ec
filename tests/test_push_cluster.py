"""Web Push across three node processes: one VAPID key, no push twice, none lost to SIGKILL.

Three ``run.py`` processes share one database; the local push service runs in the test.
The push service holds the first push, the node that claimed it (its queue entry says
which) is killed with SIGKILL, and once its lease runs out another node sends it: the
device gets it once (the held request's connection died with its node, so a push service
never confirmed it). Then the survivors push a mix of critical (planned at once) and
normal (found by the sweep) notifications, each exactly once.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.nodes import Nodes, running
from tests.pushservice import PushServer
from tests.support import Api
from tests.test_webhooks_cluster import ENV  # the outbound and queue settings, and these:
from tests.webhook_receiver import until

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

LEASE, TIMEOUT = 3.0, 2.0  # a claimed push is its node's for LEASE seconds
PUSH_ENV = {
    "NOTIFY_PUSH_GRACE_SECONDS": "0.3",
    "NOTIFY_PUSH_SWEEP_SECONDS": "0.1",
    "NOTIFY_PUSH_TIMEOUT_SECONDS": str(TIMEOUT),
    "NOTIFY_SCHEDULE_LEASE_SECONDS": str(LEASE),
}


@pytest_asyncio.fixture
async def push_server():
    server = await PushServer().start()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def cluster(mongo_uri, db_name, tmp_path):
    nodes = Nodes(mongo_uri, db_name, tmp_path, 3, {**ENV, **PUSH_ENV})
    async with running(nodes) as started:
        yield started


async def test_one_key_no_push_twice_none_lost_to_sigkill(cluster, push_server):
    nodes, key, db = cluster
    apis = [Api(nodes.url(i), key) for i in range(3)]
    keys = {(await api.get("/v1/push/vapid-public-key"))["public_key"] for api in apis}
    assert len(keys) == 1  # every node signs with the deployment's one key
    push_server.vapid_key = keys.pop()
    users = [f"p-{i}" for i in range(6)]
    for i, user in enumerate(["p-kill", *users]):
        sub = push_server.add(user).subscription()
        await apis[i % 3].post(f"/v1/users/{user}/push-subscriptions", sub, expect=201)

    push_server.hold()
    held = await apis[1].post(
        "/v1/notifications",
        {"user_id": "p-kill", "type": "lab_result", "data": {"lab_result_id": "l-1"},
         "priority": "critical"},
        expect=201,
    )  # fmt: skip
    await until(lambda: push_server.waiting == 1, timeout=20)
    entry = await db.scheduled.find_one({"_id": f"push:{held['id']}"})
    claimer = entry["claimed_by"]
    nodes.kill(claimer)  # it sent the push and waits for an answer that never comes
    push_server.release()
    await until(lambda: push_server.to("p-kill"), timeout=30)
    assert [p.payload["id"] for p in push_server.to("p-kill")] == [held["id"]]
    assert len(push_server.to("p-kill", accepted=False)) == 2  # the dead node's, unconfirmed

    live = [i for i in range(3) if f"node-{i}" != claimer]
    sent = []
    for n in range(24):
        api = apis[live[n % 2]]
        user = users[n % len(users)]
        priority = "critical" if n % 3 == 0 else "normal"
        body = {"user_id": user, "type": "custom", "title": f"t{n}", "priority": priority}
        sent.append((user, (await api.post("/v1/notifications", body, expect=201))["id"]))
    await until(lambda: len(push_server.accepted) == 1 + len(sent), timeout=60)
    for user in users:
        got = [p.payload["id"] for p in push_server.to(user)]
        assert sorted(got) == sorted(nid for u, nid in sent if u == user)
    assert push_server.errors == []
