"""Escalation across three node processes, one of them killed with SIGKILL mid-step.

Each node runs ``tests/stall_step.py`` (``run.py`` whose first attempt at a step stalls after
storing its alerts): the node that claims a step first stores the alerts and then holds the
claim until the test kills it with SIGKILL. Its lease (``NOTIFY_SCHEDULE_LEASE_SECONDS``,
scaled down here) runs out, another node takes the step again, stores no second alert (the
alert ids are derived from the step), re-pushes, records ``escalated`` once and finishes it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from server.app.store import connect
from tests.nodes import make_key
from tests.support import Api, Socket
from tests.test_cluster import Cluster

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

LEASE = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three nodes of ``tests.stall_step`` with a short lease and a quick poll."""
    c = Cluster(tmp_path_factory.mktemp("escalation-cluster"))
    c.program = ("-m", "tests.stall_step")
    c.env |= {
        "NOTIFY_HEARTBEAT_SECONDS": "0.3",
        "NOTIFY_NODE_TIMEOUT_SECONDS": "1.5",
        "NOTIFY_SCHEDULE_LEASE_SECONDS": str(LEASE),
        "NOTIFY_SCHEDULE_POLL_SECONDS": "0.2",
    }
    c.embedded.start()
    try:
        c.start()
        c.key = asyncio.run(make_key(c.uri, c.db))
        yield c
    finally:
        c.stop()


async def until(check, timeout: float = 20.0, what: str = "condition"):
    """Poll until ``check()`` returns something true; returns it."""
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)
    return found


async def test_a_node_killed_mid_step_its_step_is_done_once_by_another(cluster):
    apis = [Api(cluster.url(i), cluster.key) for i in range(3)]
    client = connect(cluster.embedded.uri, 3000)
    db = client[cluster.db]
    try:
        sockets = []
        for i, api in enumerate(apis):  # a nurse and a doctor on every node
            sockets.append(
                await Socket.open(cluster.url(i), await api.token(f"nurse-{i}", ["nurse"]))
            )
        doctor = await Socket.open(cluster.url(2), await apis[2].token("dr-1", ["doctor"]))
        patient = await Socket.open(cluster.url(1), await apis[1].token("p-1"))
        for sock in (*sockets, doctor, patient):
            await sock.expect("welcome")
        steps = [
            {"after_seconds": 1, "to_role": "nurse"},
            {"after_seconds": 2, "to_user_ids": ["dr-1", "dr-2"]},
        ]
        body = {"user_id": "p-1", "type": "custom", "title": "K+ 6.8", "priority": "critical"}
        created = await apis[0].post("/v1/notifications", {**body, "escalation": steps}, expect=201)
        nid = created["id"]

        async def claimed_mid_step() -> dict | None:
            entry = await db.scheduled.find_one({"_id": f"escalate:{nid}:1"})
            alert = await db.notifications.find_one({"data.escalated_from": nid})
            if entry is None or entry["state"] != "sending" or alert is None:
                return None
            stalled = f"STALLED {nid} 1" in cluster.log(int(entry["claimed_by"][-1]))
            return entry if stalled else None

        entry = await until(claimed_mid_step, what="a node claimed step 1 and stored its alert")
        victim = int(entry["claimed_by"].removeprefix("node-"))
        cluster.kill(victim)
        killed_at = time.monotonic()

        async def both_steps_done() -> bool:
            left = await db.scheduled.count_documents({"ref": nid})
            events = await db.timeline.count_documents(
                {"notification_id": nid, "event": "escalated"}
            )
            return left == 0 and events == 2

        await until(both_steps_done, timeout=30, what="both steps done after the kill")
        assert time.monotonic() - killed_at >= LEASE - 0.5  # only once the lease ran out
        alerts = await db.notifications.find({"data.escalated_from": nid}).to_list()
        assert sorted((a["data"]["level"], a["user_id"] or a["audience"]) for a in alerts) == [
            (1, "nurse"),
            (2, "dr-1"),
            (2, "dr-2"),
        ]
        # Step 2 stalled on its first attempt too (a node that hangs rather than dies): its
        # lease ran out the same way. Every step's alerts are there once, recorded once.
        events = await db.timeline.find({"notification_id": nid, "event": "escalated"}).to_list()
        assert sorted(e["fields"]["level"] for e in events) == [1, 2]
        # Every live nurse socket hears the role's one alert; the doctor, their own.
        for i, sock in enumerate(sockets):
            if i == victim:
                continue
            alert = (await sock.expect("notification", timeout=15))["notification"]
            assert alert["data"] == {"escalated_from": nid, "user_id": "p-1", "level": 1}
            await sock.nothing(0.3)
        if victim != 2:
            mine = (await doctor.expect("notification", timeout=15))["notification"]
            assert mine["user_id"] == "dr-1" and mine["data"]["level"] == 2
        detail = await apis[(victim + 1) % 3].get(f"/v1/notifications/{nid}")
        assert [(e["level"], e["to"]) for e in detail["timeline"] if e["event"] == "escalated"] == [
            (1, {"role": "nurse"}),
            (2, {"user_ids": ["dr-1", "dr-2"]}),
        ]
    finally:
        await client.close()


@pytest.fixture
def nodes(cluster):
    """The cluster with all three nodes running (a node killed before is started again)."""
    for i, proc in enumerate(cluster.procs):
        if proc is None or proc.poll() is not None:
            cluster.start_node(i)
    for i in range(3):
        cluster.wait_ready(i)
    return cluster


async def test_acknowledged_reaches_the_users_devices_on_the_other_nodes(nodes):
    apis = [Api(nodes.url(i), nodes.key) for i in range(3)]
    devices = [await Socket.open(nodes.url(i), await apis[i].token("ack-1")) for i in range(3)]
    for sock in devices:
        await sock.expect("welcome")
    created = await apis[1].post(
        "/v1/notifications",
        {"user_id": "ack-1", "type": "custom", "title": "Call us", "priority": "critical"},
        expect=201,
    )
    for sock in devices:
        await sock.expect("notification")
    devices[0].send({"type": "acknowledge", "id": created["id"], "note": "calling"})
    for sock in devices:
        assert await sock.expect("acknowledged", timeout=15) == {
            "type": "acknowledged",
            "id": created["id"],
        }
    again = await apis[2].post(f"/v1/users/ack-1/notifications/{created['id']}/acknowledge")
    assert again["acknowledged_by"] == "ack-1"
    for sock in devices:
        await sock.nothing(0.3)  # the second acknowledgement changes nothing, tells nobody
