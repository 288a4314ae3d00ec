"""Broadcasts to everyone or a role: live delivery, late joiners, per-user read state, cost."""

from __future__ import annotations

import pytest

from server.app.timeutil import utcnow
from tests.support import Api, Socket, wait_for

pytestmark = pytest.mark.asyncio


async def listen(url: str, api: Api, user_id: str, roles: list[str], **query) -> Socket:
    sock = await Socket.open(url, await api.token(user_id, roles), **query)
    sock.welcome = await sock.expect("welcome")
    return sock


async def broadcast(api: Api, audience: str, title: str = "Clinic notice", **fields) -> dict:
    body = {"audience": audience, "title": title, "message": "Closed on Friday", **fields}
    return await api.post("/v1/broadcasts", body, expect=201)


async def ids_in_feed(api: Api, user_id: str, **query) -> list[str]:
    page = await api.get(f"/v1/users/{user_id}/notifications", query=query or None)
    return [i["id"] for i in page["items"]]


async def unread(api: Api, user_id: str) -> int:
    return (await api.get(f"/v1/users/{user_id}/unread-count"))["count"]


# ---- live delivery ----------------------------------------------------------------------


async def test_to_all_reaches_every_connected_user_on_both_nodes(node, second_node, api):
    patient = await listen(node.url, api, "p-1", ["patient"])
    staff = await listen(second_node.url, api, "s-1", ["staff"])
    no_roles = await listen(second_node.url, api, "x-1", [])
    sent = await broadcast(api, "all", priority="high")
    assert sent["audience"] == "all" and sent["user_id"] is None
    assert sent["type"] == "system_alert" and sent["priority"] == "high"
    assert sent["cursor"] is not None and sent["read_at"] is None
    for sock in (patient, staff, no_roles):
        assert (await sock.expect("notification"))["notification"] == sent
    last = await broadcast(api, "all", "sentinel")
    for sock in (patient, staff, no_roles):  # no second copy anywhere before it
        await sock.only_then(last["id"])


async def test_to_a_role_reaches_that_role_only(node, second_node, api):
    staff_here = await listen(node.url, api, "s-1", ["staff"])
    staff_there = await listen(second_node.url, api, "s-2", ["admin", "staff"])
    patient_here = await listen(node.url, api, "p-1", ["patient"])
    patient_there = await listen(second_node.url, api, "p-2", ["patient"])
    sent = await broadcast(api, "staff", "Huddle at 8")
    assert sent["audience"] == "staff"
    for sock in (staff_here, staff_there):
        assert (await sock.expect("notification"))["notification"]["id"] == sent["id"]
    assert await ids_in_feed(api, "p-1") == [] and await unread(api, "p-1") == 0
    assert await ids_in_feed(api, "s-2") == [sent["id"]] and await unread(api, "s-2") == 1
    for user, sock in (("p-1", patient_here), ("p-2", patient_there)):  # nothing before it
        await sock.only_then((await api.notify(user, "sentinel"))["id"])


async def test_every_device_of_a_member_gets_it_once(node, second_node, api):
    phone = await listen(node.url, api, "p-1", ["patient"])
    laptop = await listen(second_node.url, api, "p-1", ["patient"])
    sent = await broadcast(api, "patient")
    for sock in (phone, laptop):
        assert (await sock.expect("notification"))["notification"]["id"] == sent["id"]
    last = await broadcast(api, "patient", "sentinel")
    for sock in (phone, laptop):  # once: no second copy before the next one
        await sock.only_then(last["id"])


# ---- users who come later ---------------------------------------------------------------


async def test_a_user_first_seen_after_the_broadcast_sees_it(node, second_node, api):
    to_all = await broadcast(api, "all", "Everyone")
    to_patients = await broadcast(api, "patient", "Patients")
    await broadcast(api, "staff", "Staff only")
    assert await node.node.store.users.find_one({"_id": "p-new"}) is None  # never seen

    token = await api.token("p-new", ["patient"])
    sock = await Socket.open(second_node.url, token, since="0")
    welcome = await sock.expect("welcome")
    assert welcome["unread_count"] == 2
    await sock.expect("replay_done")
    # A broadcast this node has not dispatched yet when the socket connects reaches it live,
    # right after replay_done (CONTRACT §3: every missed one, in order, none twice).
    while len([f for f in sock.frames if f["type"] == "notification"]) < 2:
        await sock.expect("notification")
    replayed = [f["notification"]["id"] for f in sock.frames if f["type"] == "notification"]
    assert replayed == [to_all["id"], to_patients["id"]]

    expected = [to_patients["id"], to_all["id"]]  # newest first
    assert await ids_in_feed(Api(node.url, token), "p-new") == expected
    assert await unread(Api(node.url, token), "p-new") == 2

    # Seen once, the user's roles are known to an integrator's view as well: as soon as the
    # node's batched write of the user record lands (a connect never waits for it).
    async def known() -> bool:
        return await ids_in_feed(api, "p-new") == expected

    await wait_for(known)
    assert await unread(api, "p-new") == 2
    assert await ids_in_feed(api, "p-new", unread="true") == expected


async def test_an_integrator_sees_broadcasts_to_all_for_a_user_never_seen(node, api):
    to_all = await broadcast(api, "all")
    await broadcast(api, "patient")
    # Roles are learnt from the user's token; before that, only "all" applies.
    assert await ids_in_feed(api, "p-unknown") == [to_all["id"]]
    assert await unread(api, "p-unknown") == 1


async def test_replay_since_a_cursor_includes_broadcasts_missed(node, api):
    first = await broadcast(api, "patient", "one")
    sock = await listen(node.url, api, "p-1", ["patient"])
    sock.close()
    missed = await broadcast(api, "patient", "two")
    await broadcast(api, "staff", "not for patients")
    again = await listen(node.url, api, "p-1", ["patient"], since=first["cursor"])
    await again.expect("replay_done")
    replayed = [f["notification"]["id"] for f in again.frames if f["type"] == "notification"]
    assert replayed == [missed["id"]]


# ---- read state is per user -------------------------------------------------------------


async def test_read_state_is_per_user_over_rest(node, api):
    tokens = {u: await api.token(u, ["patient"]) for u in ("p-1", "p-2")}
    views = {u: Api(node.url, t) for u, t in tokens.items()}
    p1_phone = await listen(node.url, api, "p-1", ["patient"])
    p2_phone = await listen(node.url, api, "p-2", ["patient"])
    sent = await broadcast(api, "patient")
    await p1_phone.expect("notification")
    await p2_phone.expect("notification")

    marked = await views["p-1"].post(f"/v1/users/p-1/notifications/{sent['id']}/read")
    assert marked["id"] == sent["id"] and marked["read_at"] is not None
    assert (await p1_phone.expect("read"))["ids"] == [sent["id"]]
    assert (await p1_phone.expect("unread_count"))["count"] == 0
    assert await unread(views["p-1"], "p-1") == 0
    assert await unread(views["p-2"], "p-2") == 1
    assert await ids_in_feed(views["p-1"], "p-1", unread="true") == []
    assert await ids_in_feed(views["p-2"], "p-2", unread="true") == [sent["id"]]
    p1_item = (await views["p-1"].get("/v1/users/p-1/notifications"))["items"][0]
    p2_item = (await views["p-2"].get("/v1/users/p-2/notifications"))["items"][0]
    assert p1_item["read_at"] == marked["read_at"] and p2_item["read_at"] is None
    # Marking it read again changes nothing and keeps the first time.
    again = await views["p-1"].post(f"/v1/users/p-1/notifications/{sent['id']}/read")
    assert again["read_at"] == marked["read_at"]
    # No frame of p-1's reads reached p-2, and marking again sent p-1 none.
    for user, sock in (("p-1", p1_phone), ("p-2", p2_phone)):
        await sock.only_then((await api.notify(user, "sentinel"))["id"])


async def test_read_state_is_per_user_over_the_socket(node, second_node, api):
    p1_phone = await listen(node.url, api, "p-1", ["patient"])
    p1_laptop = await listen(second_node.url, api, "p-1", ["patient"])
    p2_phone = await listen(node.url, api, "p-2", ["patient"])
    sent = await broadcast(api, "patient")
    for sock in (p1_phone, p1_laptop, p2_phone):
        await sock.expect("notification")
    p1_phone.send({"type": "read", "id": sent["id"]})
    assert (await p1_laptop.expect("read"))["ids"] == [sent["id"]]
    assert (await p1_laptop.expect("unread_count"))["count"] == 0
    await p2_phone.only_then((await api.notify("p-2", "sentinel"))["id"])  # no read frame
    assert await unread(api, "p-2") == 2
    p2_phone.send({"type": "read_all"})
    assert (await p2_phone.expect("unread_count"))["count"] == 0
    await p1_laptop.only_then((await api.notify("p-1", "sentinel"))["id"])  # none of p-2's


async def test_read_all_marks_broadcasts_for_that_user_only(node, api):
    await broadcast(api, "all")
    await broadcast(api, "patient")
    await api.notify("p-1")
    for user in ("p-1", "p-2"):
        await listen(node.url, api, user, ["patient"])  # seen, so its roles are known
    assert (await api.post("/v1/users/p-1/notifications/read-all"))["count"] == 3
    assert await unread(api, "p-1") == 0
    assert await unread(api, "p-2") == 2
    assert (await api.post("/v1/users/p-1/notifications/read-all"))["count"] == 0


async def test_a_broadcast_outside_the_users_audience_cannot_be_read(node, api):
    sent = await broadcast(api, "staff")
    view = Api(node.url, await api.token("p-1", ["patient"]))
    error = await view.post(f"/v1/users/p-1/notifications/{sent['id']}/read", expect=404)
    assert error["code"] == "not_found"
    sock = await listen(node.url, api, "p-1", ["patient"])
    sock.send({"type": "read", "id": sent["id"]})
    assert (await sock.expect("error"))["code"] == "not_found"
    assert await node.node.store.reads.find({}).to_list() == []


# ---- cost -------------------------------------------------------------------------------


async def test_a_broadcast_costs_one_document_not_one_per_user(node, api):
    store = node.node.store
    now = utcnow()
    for n in range(300):
        await store.remember_user(f"p-{n}", ["patient"], now)
    online = [await listen(node.url, api, f"p-{n}", ["patient"]) for n in range(5)]
    sent = await broadcast(api, "patient")
    for sock in online:
        assert (await sock.expect("notification"))["notification"]["id"] == sent["id"]
    assert len(await store.notifications.find({}, {"_id": 1}).to_list()) == 1
    assert await store.reads.find({}).to_list() == []
    # Reading costs one small document for the reader, nothing for anyone else.
    await api.post(f"/v1/users/p-7/notifications/{sent['id']}/read")
    reads = await store.reads.find({}).to_list()
    assert [(r["user_id"], r["notification_id"]) for r in reads] == [("p-7", sent["id"])]
    assert await unread(api, "p-8") == 1


# ---- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "audience"),
        ({"title": "t", "message": "m"}, "audience"),
        ({"audience": "All", "title": "t", "message": "m"}, "audience"),
        ({"audience": "", "title": "t", "message": "m"}, "audience"),
        ({"audience": "$where", "title": "t", "message": "m"}, "audience"),
        ({"audience": ["all"], "title": "t", "message": "m"}, "audience"),
        ({"audience": "staff nurses", "title": "t", "message": "m"}, "audience"),
        ({"audience": "all", "message": "m"}, "title"),
        ({"audience": "all", "title": "t"}, "message"),
        ({"audience": "all", "title": "", "message": "m"}, "title"),
        ({"audience": "all", "title": "t", "message": "m", "priority": "urgent"}, "priority"),
        ({"audience": "all", "title": "t", "message": "m", "type": "sms"}, "type"),
        ({"audience": "all", "title": "t", "message": "m", "user_id": "p-1"}, "user_id"),
        ({"audience": "all", "title": "t", "message": "m", "data": {"$set": 1}}, "data"),
        ({"audience": "all", "title": "t" * 201, "message": "m"}, "title"),
    ],
)
async def test_bad_broadcasts_are_refused_and_store_nothing(node, api, body, field):
    error = await api.post("/v1/broadcasts", body, expect=400)
    assert error["code"] == "validation_error" and field in error["fields"], error
    assert await node.node.store.notifications.find({}).to_list() == []


async def test_a_broadcast_needs_the_broadcast_scope(node, api):
    body = {"audience": "all", "title": "t", "message": "m"}
    notify_only, _ = await node.node.api_keys.create("notifier", ["notify"])
    assert (await api.post("/v1/broadcasts", body, key=notify_only, expect=403))["code"] == (
        "forbidden"
    )
    token = await api.token("p-1")
    await api.post("/v1/broadcasts", body, key=token, expect=403)
    await Api(node.url).post("/v1/broadcasts", body, expect=401)
    await api.post("/v1/broadcasts", raw=b"{not json", expect=400)
    assert await node.node.store.notifications.find({}).to_list() == []
