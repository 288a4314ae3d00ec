"""Scheduled notifications and cancelling, on real nodes sharing one real database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import pytest

from server.app.timeutil import iso, millis, utcnow
from tests.support import WAIT, Api, Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio

# How far ahead a test schedules what it checks before its time: room for a few REST calls
# on a loaded machine (each test asserts that it was early enough, rather than racing).
LEAD = 3.0


def later(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Wait until ``check`` is true (the scheduler works in the background)."""
    await wait_for(check, timeout)


async def sentinel_next(api: Api, sock: Socket, user_id: str) -> None:
    """Nothing else arrived: a notification sent now is the socket's next frame of its kind."""
    marker = await api.notify(user_id, "sentinel")
    assert (await sock.expect("notification"))["notification"]["id"] == marker["id"]


async def stored(running, notification_id: str) -> list[dict]:
    return await running.node.store.notifications.find({"_id": notification_id}).to_list()


def sends(entries: list[dict]) -> list[dict]:
    """The scheduled notifications among claimed entries (other kinds share the queue)."""
    return [e for e in entries if e.get("kind") == "send"]


async def waiting(running) -> list[dict]:
    return await running.node.scheduler.store.collection.find({"kind": "send"}).to_list()


async def listen(url: str, api: Api, user_id: str, roles: list[str] | None = None) -> Socket:
    sock = await Socket.open(url, await api.token(user_id, roles))
    await sock.expect("welcome")
    return sock


# ---- delivery ---------------------------------------------------------------------------


async def test_sent_once_at_its_time_with_two_nodes(node, second_node, api):
    on_first = await listen(node.url, api, "p-1")
    on_second = await listen(second_node.url, api, "p-1")
    due = later(LEAD)
    created = await api.notify("p-1", "Take your medication", deliver_at=iso(due))
    assert created["cursor"] is None and created["deliver_at"] == iso(due)
    assert created["delivered_at"] is None
    feed = await api.get("/v1/users/p-1/notifications")
    assert feed["items"] == []  # not before its time
    assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 0
    assert utcnow() < due, "the checks above took longer than LEAD"

    frame = await on_first.expect("notification")
    late = (utcnow() - due).total_seconds()
    # Never early; late by at most one poll of the scheduler, plus a loaded machine's slack.
    assert -0.05 <= late < node.node.settings.schedule_poll_seconds + 4, late
    sent = frame["notification"]
    assert sent["id"] == created["id"] and sent["cursor"] is not None
    assert {k: v for k, v in sent.items() if k != "cursor"} == {
        k: v for k, v in created.items() if k != "cursor"
    }
    assert (await on_second.expect("notification"))["notification"] == sent
    await sentinel_next(api, on_first, "p-1")
    await on_second.expect("notification")  # the same sentinel: no second copy before it
    assert on_second.frames[-1]["notification"]["title"] == "sentinel"
    assert len(await stored(node, created["id"])) == 1
    assert await waiting(node) == []
    feed = await api.get("/v1/users/p-1/notifications")
    assert [i["id"] for i in feed["items"]][1:] == [created["id"]]  # after the sentinel


async def test_many_due_at_once_are_each_sent_once_by_racing_nodes(node, second_node, api):
    users = [f"p-{i}" for i in range(40)]
    body = {"user_ids": users, "type": "custom", "title": "Clinic closed", "message": "m"}
    created = await api.post(
        "/v1/notifications", {**body, "deliver_at": iso(later(0.8))}, expect=201
    )
    ids = {c["id"] for c in created}

    async def all_sent() -> bool:
        return not await waiting(node)

    await eventually(all_sent)
    docs = await node.node.store.notifications.find({"_id": {"$in": list(ids)}}).to_list()
    assert {d["_id"] for d in docs} == ids and len(docs) == len(ids)
    seqs = sorted(d["seq"] for d in docs)
    assert seqs == list(range(seqs[0], seqs[0] + len(ids)))  # dense: none sent twice


async def test_claims_are_exclusive_when_nodes_race(node, second_node, api):
    body = {"user_ids": [f"p-{i}" for i in range(30)], "type": "custom", "title": "t"}
    # Far ahead, so that only the claims below can take them.
    await api.post("/v1/notifications", {**body, "deliver_at": iso(later(3600))}, expect=201)
    now_ms = millis(later(3601))
    stores = [node.node.scheduler.store, second_node.node.scheduler.store]
    won = await asyncio.gather(
        *(s.claim(f"n{i}", now_ms, 60000, 500) for i, s in enumerate(stores * 3))
    )
    taken = [e["_id"] for entries in won for e in sends(entries)]
    assert len(taken) == 30 and len(set(taken)) == 30
    # While the lease holds, nobody else can claim them; once it ends, one node can.
    assert sends(await stores[1].claim("late", now_ms + 59000, 60000, 500)) == []
    retaken = await asyncio.gather(*(s.claim("late", now_ms + 60001, 1000, 500) for s in stores))
    assert sum(len(sends(r)) for r in retaken) == 30
    assert len({e["_id"] for r in retaken for e in sends(r)}) == 30


async def test_a_node_that_looked_before_another_claimed_takes_nothing(node, second_node, api):
    await api.notify("p-1", deliver_at=iso(later(3600)))
    first, second = node.node.scheduler.store, second_node.node.scheduler.store
    now_ms = millis(later(3601))
    seen = [i for i in await second.due(now_ms, 10) if i != "push-sweep"]  # the second looks
    assert len(seen) == 1
    assert len(sends(await first.claim("first", now_ms, 60000, 10))) == 1  # the first claims
    assert await second.take(seen, "second", now_ms, 60000) == []  # ... the second gets none
    [entry] = await waiting(node)
    assert entry["claimed_by"] == "first" and entry["attempts"] == 1


async def test_a_list_of_users_each_get_their_own(node, api):
    socks = {u: await listen(node.url, api, u) for u in ("p-1", "p-2")}
    body = {"user_ids": ["p-1", "p-2"], "type": "lab_result", "data": {"lab_result_id": "l-1"}}
    created = await api.post(
        "/v1/notifications", {**body, "deliver_at": iso(later(0.5))}, expect=201
    )
    assert [c["user_id"] for c in created] == ["p-1", "p-2"]
    for user, sock in socks.items():
        got = (await sock.expect("notification"))["notification"]
        assert got["user_id"] == user and got["title"] == "Lab results ready"


async def test_scheduled_broadcast_reaches_its_role_at_its_time(node, api):
    staff = await listen(node.url, api, "s-1", ["staff"])
    patient = await listen(node.url, api, "p-1", ["patient"])
    body = {
        "audience": "staff",
        "title": "Huddle",
        "message": "Room 2",
        "deliver_at": iso(due := later(1.0)),
    }
    created = await api.post("/v1/broadcasts", body, expect=201)
    assert created["cursor"] is None and created["audience"] == "staff"
    assert (await staff.expect("notification"))["notification"]["id"] == created["id"]
    assert utcnow() >= due  # not before its time
    await sentinel_next(api, patient, "p-1")  # the patient got no staff broadcast before


async def test_deliver_at_in_the_past_sends_at_once(node, api):
    sock = await listen(node.url, api, "p-1")
    created = await api.notify("p-1", deliver_at="2020-01-01T00:00:00+02:00")
    assert created["cursor"] is not None and created["deliver_at"] == "2019-12-31T22:00:00.000Z"
    assert (await sock.expect("notification"))["notification"]["id"] == created["id"]
    assert await waiting(node) == []


async def test_appointment_reminder_24_hours_before_starts_at(node, api):
    sock = await listen(node.url, api, "p-1001")
    # The README's recipe: deliver_at = starts_at - 24 h (here the visit is 24 h + 0.5 s away).
    starts_at = utcnow() + timedelta(hours=24, seconds=0.5)
    deliver_at = starts_at - timedelta(hours=24)
    body = {
        "user_id": "p-1001",
        "type": "appointment",
        "data": {"appointment_id": "a-77", "status": "reminder", "starts_at": iso(starts_at)},
        "deliver_at": iso(deliver_at),
        "expires_at": iso(starts_at),
    }
    created = await api.post("/v1/notifications", body, expect=201)
    assert created["title"] == "Appointment reminder" and created["cursor"] is None
    got = (await sock.expect("notification"))["notification"]
    assert got["id"] == created["id"] and got["data"]["starts_at"] == iso(starts_at)


# ---- restarts and crashes ---------------------------------------------------------------


async def test_schedule_survives_a_restart(settings, mongo_uri):
    first = await serve_node(settings.with_(node_id="first"), mongo_uri)
    key, _ = await first.node.api_keys.create("tests", ["notify", "tokens", "read"])
    await first.node.scheduler.stop()  # the first node never gets to send it
    created = await Api(first.url, key).notify("p-1", deliver_at=iso(due := later(0.5)))
    await first.stop()
    await wait_for(lambda: utcnow() > due, what="due while no node runs")
    second = await serve_node(settings.with_(node_id="second"), mongo_uri)
    try:
        api = Api(second.url, key)
        sock = await Socket.open(second.url, await api.token("p-1"), since="0")
        await sock.expect("welcome")
        got = (await sock.expect("notification"))["notification"]
        assert got["id"] == created["id"] and got["cursor"] is not None
        await eventually(lambda: _empty(second))
        assert len(await stored(second, created["id"])) == 1
    finally:
        await second.stop()


async def _empty(running) -> bool:
    return not await waiting(running)


async def test_a_claim_of_a_node_that_died_is_retaken(node, api):
    sock = await listen(node.url, api, "p-1")
    created = await api.notify("p-1", deliver_at=iso(later(3600)))
    store = node.node.scheduler.store
    # A node claims it and dies before appending; its lease runs out 0.3 s from now.
    [entry] = sends(await store.claim("dead-node", millis(later(3601)), 60000, 10))
    assert entry["claimed_by"] == "dead-node" and entry["state"] == "sending"
    await store.release([entry], millis(later(0.3)))
    got = (await sock.expect("notification", timeout=5))["notification"]
    assert got["id"] == created["id"]
    await eventually(lambda: _empty(node))
    await sentinel_next(api, sock, "p-1")


async def test_a_crash_between_append_and_mark_sent_does_not_send_twice(node, api):
    sock = await listen(node.url, api, "p-1")
    created = await api.notify("p-1", deliver_at=iso(later(3600)))
    scheduler = node.node.scheduler
    # A node claims it, appends it to the feed, and dies before removing its entry.
    [entry] = sends(await scheduler.store.claim("dead-node", millis(later(3601)), 60000, 10))
    doc = scheduler._ready(entry["doc"], utcnow())
    await node.node.sequencer.append([doc], idempotent=True)
    first = (await sock.expect("notification"))["notification"]
    assert first["id"] == created["id"]
    await scheduler.store.release([entry], millis(utcnow()))
    # This node retakes it; the unique _id refuses a second insert and it counts as sent.
    await eventually(lambda: _empty(node))
    await sentinel_next(api, sock, "p-1")
    [kept] = await stored(node, created["id"])
    assert str(kept["seq"]) == first["cursor"]


async def test_a_duplicate_id_is_already_stored_not_a_taken_seq(node, api):
    created = await api.notify("p-1")
    doc = (await stored(node, created["id"]))[0]
    again = {k: v for k, v in doc.items() if k != "seq"}
    fresh = {**again, "_id": "fresh-1"}
    result = await node.node.sequencer.append([again, fresh], idempotent=True)
    assert result[0]["seq"] is None and result[1]["seq"] == doc["seq"] + 1
    assert len(await stored(node, created["id"])) == 1
    assert len(await stored(node, "fresh-1")) == 1


# ---- cancelling -------------------------------------------------------------------------


async def test_cancel_before_it_is_sent(node, api):
    sock = await listen(node.url, api, "p-1")
    created = await api.notify("p-1", deliver_at=iso(later(3600)))
    cancelled = await api.delete(f"/v1/notifications/{created['id']}")
    assert cancelled == created
    # Its time, for the scheduler: nothing is left to claim, so nothing can be sent.
    assert sends(await node.node.scheduler.store.claim("any", millis(later(3601)), 60000, 10)) == []
    await sentinel_next(api, sock, "p-1")
    assert [i["title"] for i in (await api.get("/v1/users/p-1/notifications"))["items"]] == [
        "sentinel"
    ]
    assert await waiting(node) == [] and await stored(node, created["id"]) == []
    error = await api.delete(f"/v1/notifications/{created['id']}", expect=404)
    assert error["code"] == "not_found"


async def test_cancel_a_scheduled_broadcast(node, api):
    body = {"audience": "all", "title": "t", "message": "m", "deliver_at": iso(later(60))}
    created = await api.post("/v1/broadcasts", body, expect=201)
    assert (await api.delete(f"/v1/notifications/{created['id']}"))["id"] == created["id"]
    assert await waiting(node) == []


async def test_cancel_after_sent_is_a_conflict(node, api):
    sock = await listen(node.url, api, "p-1")
    created = await api.notify("p-1", deliver_at=iso(later(0.3)))
    await sock.expect("notification")
    await eventually(lambda: _empty(node))
    error = await api.delete(f"/v1/notifications/{created['id']}", expect=409)
    assert error["code"] == "conflict"
    immediate = await api.notify("p-1")
    assert (await api.delete(f"/v1/notifications/{immediate['id']}", expect=409))["code"] == (
        "conflict"
    )


async def test_cancel_while_being_sent_is_a_conflict(node, api):
    created = await api.notify("p-1", deliver_at=iso(later(3600)))
    await node.node.scheduler.store.claim("other-node", millis(later(3601)), 60000, 10)
    error = await api.delete(f"/v1/notifications/{created['id']}", expect=409)
    assert error["code"] == "conflict"
    assert len(await waiting(node)) == 1


async def test_cancel_needs_the_notify_scope(node, api):
    created = await api.notify("p-1", deliver_at=iso(later(60)))
    read_only, _ = await node.node.api_keys.create("reader", ["read"])
    path = f"/v1/notifications/{created['id']}"
    assert (await api.delete(path, key=read_only, expect=403))["code"] == "forbidden"
    token = await api.token("p-1")
    await api.delete(path, key=token, expect=403)
    bare = Api(node.url)
    await bare.delete(path, expect=401)
    assert len(await waiting(node)) == 1


@pytest.mark.parametrize("bad_id", ["no-such-id", "507f1f77bcf86cd799439011"])
async def test_cancel_of_an_unknown_id_is_not_found(node, api, bad_id):
    assert (await api.delete(f"/v1/notifications/{bad_id}", expect=404))["code"] == "not_found"


async def test_cancel_of_a_malformed_id_is_not_found(node, api):
    await api.delete("/v1/notifications/-bad%20id", expect=404)


# ---- bad input stores nothing -----------------------------------------------------------


def _bad_schedules() -> list[tuple[str, dict, str]]:
    soon = iso(later(3600))
    sooner = iso(later(1800))
    return [
        ("no offset", {"deliver_at": "2030-12-01T09:00:00"}, "deliver_at"),
        ("not a time", {"deliver_at": "tomorrow morning"}, "deliver_at"),
        ("a number", {"deliver_at": 1893456000}, "deliver_at"),
        ("an object", {"deliver_at": {"$gt": ""}}, "deliver_at"),
        ("expiry before delivery", {"deliver_at": soon, "expires_at": sooner}, "expires_at"),
        ("expiry at delivery", {"deliver_at": soon, "expires_at": soon}, "expires_at"),
        ("expiry in the past", {"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ("expiry without offset", {"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
    ]


@pytest.mark.parametrize(("case", "fields", "field"), _bad_schedules(), ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("path", ["/v1/notifications", "/v1/broadcasts"])
async def test_bad_times_are_refused_and_store_nothing(node, api, path, case, fields, field):
    body = {"type": "custom", "title": "t", "message": "m", **fields}
    body |= {"user_id": "p-1"} if path == "/v1/notifications" else {"audience": "all"}
    error = await api.post(path, body, expect=400)
    assert error["code"] == "validation_error" and field in error["fields"], (case, error)
    assert await waiting(node) == []
    assert await node.node.store.notifications.find({}).to_list() == []
