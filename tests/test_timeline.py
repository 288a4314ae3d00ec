"""The timeline (CONTRACT §8) and the due-work queue every later kind of work shares."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from server.app.timeutil import iso, utcnow
from tests.support import Socket, serve_node

pytestmark = pytest.mark.asyncio


async def wait_until(check, timeout: float = 15.0) -> None:
    """Poll an async condition until it holds (work happens in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def events(api, notification_id: str) -> list[str]:
    detail = await api.get(f"/v1/notifications/{notification_id}")
    return [e["event"] for e in detail["timeline"]]


async def test_created_delivered_per_connection_and_read_in_order(node, api):
    token = await api.token("p-1")
    phone, laptop = await Socket.open(node.url, token), await Socket.open(node.url, token)
    welcomes = [await phone.expect("welcome"), await laptop.expect("welcome")]
    created = await api.notify("p-1", "Lab results ready")
    for sock in (phone, laptop):
        frame = await sock.expect("notification")
        sock.send({"type": "ack", "id": frame["notification"]["id"]})
        sock.send({"type": "ack", "id": frame["notification"]["id"]})  # once per connection
    path = f"/v1/notifications/{created['id']}"

    async def both_delivered() -> bool:
        return (await events(api, created["id"])).count("delivered") == 2

    await wait_until(both_delivered)
    await api.post(f"/v1/users/p-1/notifications/{created['id']}/read")
    await api.post(f"/v1/users/p-1/notifications/{created['id']}/read")  # read once
    detail = await api.get(path)
    assert detail["notification"]["id"] == created["id"]
    timeline = detail["timeline"]
    assert [e["event"] for e in timeline] == ["created", "delivered", "delivered", "read"]
    assert {e["connection_id"] for e in timeline if e["event"] == "delivered"} == {
        w["connection_id"] for w in welcomes
    }
    ats = [e["at"] for e in timeline]
    assert ats == sorted(ats) and ats[0] == created["created_at"]
    for sock in (phone, laptop):
        sock.close()


async def test_read_all_and_broadcasts_without_per_user_events(node, api):
    first, second = await api.notify("p-2", "a"), await api.notify("p-2", "b")
    broadcast = await api.post(
        "/v1/broadcasts", {"audience": "all", "title": "Closed Friday", "message": "m"}, expect=201
    )
    await api.post("/v1/users/p-2/notifications/read-all")
    assert await events(api, first["id"]) == ["created", "read"]
    assert await events(api, second["id"]) == ["created", "read"]
    assert await events(api, broadcast["id"]) == ["created"]


async def test_scheduled_then_cancelled_and_expired(node, api):
    due = utcnow() + timedelta(hours=1)
    later = await api.notify("p-3", "Reminder", deliver_at=iso(due))
    assert await events(api, later["id"]) == ["created", "scheduled"]
    await api.delete(f"/v1/notifications/{later['id']}")
    # Cancelled: no longer stored as scheduled, so the timeline is gone with it (404).
    await api.get(f"/v1/notifications/{later['id']}", expect=404)
    expiring = await api.notify("p-3", "Soon gone", expires_at=iso(utcnow() + timedelta(seconds=1)))

    async def expired() -> bool:
        return (await events(api, expiring["id"]))[-1] == "expired"

    await wait_until(expired)


async def test_cancel_is_on_record(node, api):
    due = utcnow() + timedelta(hours=1)
    later = await api.notify("p-4", "Reminder", deliver_at=iso(due))
    await api.delete(f"/v1/notifications/{later['id']}")
    entry = await node.node.notifications.timeline.collection.find_one(
        {"notification_id": later["id"]}
    )
    assert entry["event"] == "cancelled"


async def test_timeline_needs_read_scope_and_a_known_id(node, api):
    notify_only, _ = await node.node.api_keys.create("notify-only", ["notify"])
    created = await api.notify("p-5")
    error = await api.get(f"/v1/notifications/{created['id']}", key=notify_only, expect=403)
    assert error["code"] == "forbidden"
    patient = await api.token("p-5")
    await api.get(f"/v1/notifications/{created['id']}", key=patient, expect=403)
    error = await api.get("/v1/notifications/no-such-id", expect=404)
    assert error["code"] == "not_found"
    await api.get("/v1/notifications/bad%20id", expect=404)


# ---- the due-work queue -------------------------------------------------------------------


async def test_queued_work_runs_once_across_nodes_and_retries_when_asked(node, settings, mongo_uri):
    other = await serve_node(settings.with_(node_id="other"), mongo_uri)
    ran: list[tuple[str, str, int]] = []

    def handler_for(name: str):
        async def handle(entries: list[dict]) -> dict[str, int]:
            again = {}
            for entry in entries:
                ran.append((name, entry["_id"], entry["attempts"]))
                if entry["payload"].get("fail_first") and entry["attempts"] == 1:
                    again[entry["_id"]] = 0  # at once
            return again

        return handle

    try:
        for running, name in ((node, "first"), (other, "second")):
            running.node.scheduler.register("test-kind", handler_for(name))
        scheduler = node.node.scheduler
        due = utcnow() + timedelta(milliseconds=300)
        assert await scheduler.enqueue("test-kind", "work:1", due, {"n": 1}, ref="n-1")
        assert not await scheduler.enqueue("test-kind", "work:1", due, {"n": 1}, ref="n-1")
        assert await scheduler.enqueue("test-kind", "work:2", due, {"fail_first": True})
        assert await scheduler.enqueue("test-kind", "work:3", due + timedelta(hours=1), {}, "n-3")

        async def two_done() -> bool:
            left = await scheduler.store.collection.find({"kind": "test-kind"}).to_list()
            return [e["_id"] for e in left] == ["work:3"]

        await wait_until(two_done)
        by_id: dict[str, list[int]] = {}
        for _, key, attempts in ran:
            by_id.setdefault(key, []).append(attempts)
        assert by_id == {"work:1": [1], "work:2": [1, 2]}
        assert await scheduler.drop("n-3", ["test-kind"]) == 1
        assert await scheduler.store.collection.count_documents({"kind": "test-kind"}) == 0
    finally:
        await other.stop()


async def test_a_failing_kind_does_not_hold_up_scheduled_sends(node, api):
    async def broken(entries: list[dict]) -> None:
        raise RuntimeError("this kind always fails")

    scheduler = node.node.scheduler
    scheduler.register("broken", broken)
    due = utcnow() + timedelta(milliseconds=300)
    await scheduler.enqueue("broken", "broken:1", due, {})
    sock = await Socket.open(node.url, await api.token("p-6"))
    await sock.expect("welcome")
    created = await api.notify("p-6", "Still sent", deliver_at=iso(due))
    frame = await sock.expect("notification", timeout=15)
    assert frame["notification"]["id"] == created["id"]
    entry = await scheduler.store.get("broken:1")
    assert entry is not None and entry["attempts"] >= 1  # kept for another try
    sock.close()


async def test_listeners_hear_each_stored_event_once(node, api):
    heard: list[tuple[str, str]] = []

    async def listener(entry: dict) -> None:
        heard.append((entry["notification_id"], entry["event"]))

    async def broken(entry: dict) -> None:
        raise RuntimeError("a listener's failure stays its own")

    node.node.notifications.timeline.listeners += [broken, listener]
    first, second = await api.notify("p-7", "a"), await api.notify("p-7", "b")
    await api.post(f"/v1/users/p-7/notifications/{first['id']}/read")
    await api.post(f"/v1/users/p-7/notifications/{first['id']}/read")
    await api.post("/v1/users/p-7/notifications/read-all")
    assert heard == [(first["id"], "read"), (second["id"], "read")]


async def test_planners_see_every_notification_before_it_is_stored(node, api):
    seen: list[tuple[str, bool]] = []
    notifications = node.node.notifications

    async def planner(docs: list[dict]) -> None:
        for doc in docs:
            stored = await notifications.store.get(doc["_id"])
            seen.append((doc["title"], stored is None))

    notifications.planners.append(planner)
    await api.notify("p-8", "now")
    await api.notify("p-8", "later", deliver_at=iso(utcnow() + timedelta(hours=1)))
    await api.post(
        "/v1/broadcasts", {"audience": "all", "title": "everyone", "message": "m"}, expect=201
    )
    assert seen == [("now", True), ("later", True), ("everyone", True)]


async def test_a_failing_planner_stores_nothing(node, api):
    from pymongo.errors import AutoReconnect

    async def down(docs: list[dict]) -> None:
        raise AutoReconnect("storage went away")

    node.node.notifications.planners.append(down)
    error = await api.post(
        "/v1/notifications",
        {"user_id": "p-9", "type": "custom", "title": "t", "message": "m"},
        expect=503,
    )
    assert error["code"] == "storage_unavailable"
    node.node.notifications.planners.clear()
    assert (await api.get("/v1/users/p-9/notifications"))["items"] == []


async def test_a_receipt_over_rest_is_delivered_once_per_connection(node, api):
    created = await api.notify("p-10", "Lab results ready")
    patient = await api.token("p-10")
    path = f"/v1/users/p-10/notifications/{created['id']}/ack"
    first = await api.post(path, {"connection_id": "sse-a"}, key=patient)
    assert first["id"] == created["id"] and first["delivered_at"] is not None
    await api.post(path, {"connection_id": "sse-a"}, key=patient)  # the same connection again
    await api.post(path, {"connection_id": "sse-b"}, key=patient)
    await api.post(path, key=patient)  # no body: one receipt for "rest"
    timeline = (await api.get(f"/v1/notifications/{created['id']}"))["timeline"]
    delivered = [e["connection_id"] for e in timeline if e["event"] == "delivered"]
    assert delivered == ["sse-a", "sse-b", "rest"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"connection_id": "has space"}, 400),
        ({"connection_id": ""}, 400),
        ({"connection_id": 7}, 400),
        ({"connection_id": "x" * 65}, 400),
        ({"other": "field"}, 400),
    ],
)
async def test_bad_receipts_are_refused_and_record_nothing(node, api, body, status):
    created = await api.notify("p-11")
    patient = await api.token("p-11")
    path = f"/v1/users/p-11/notifications/{created['id']}/ack"
    error = await api.post(path, body, key=patient, expect=status)
    assert error["code"] == "validation_error"
    assert await events(api, created["id"]) == ["created"]


async def test_receipts_belong_to_their_user(node, api):
    created = await api.notify("p-12")
    other = await api.token("p-13")
    await api.post(f"/v1/users/p-12/notifications/{created['id']}/ack", key=other, expect=403)
    mine = await api.token("p-13")
    await api.post(f"/v1/users/p-13/notifications/{created['id']}/ack", key=mine, expect=404)
    assert await events(api, created["id"]) == ["created"]


async def test_connection_ids_differ_across_processes(node, api):
    sock = await Socket.open(node.url, await api.token("p-14"))
    welcome = await sock.expect("welcome")
    prefix, _, number = welcome["connection_id"].rpartition("-")
    assert prefix.startswith("c") and len(prefix) == 7 and number.isdigit()
    sock.close()
