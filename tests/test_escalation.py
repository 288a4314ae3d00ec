"""Acknowledgement and escalation (CONTRACT §8) on one node and two, in this process.

Ladders in these tests climb after 1 or 2 seconds (``after_seconds`` is a whole number of
at least 1); every wait polls for its condition with a deadline, never sleeps before an
assertion. The three-process cluster with a node killed mid-step is in
``tests/test_escalation_cluster.py``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from server.app.metrics import METRICS
from server.app.timeutil import iso, utcnow
from server.escalation import ladder
from tests.support import Api, Socket, serve_node
from tests.test_dashboard import FAST_HASHER, Browser, text

pytestmark = pytest.mark.asyncio

NURSE_PASSWORD = "nurse-password-1"


async def wait_until(check, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll an async condition until it holds (work happens in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met in time")
        await asyncio.sleep(0.05)


async def timeline(api: Api, nid: str) -> list[dict]:
    return (await api.get(f"/v1/notifications/{nid}"))["timeline"]


async def critical(api: Api, user_id: str, **fields) -> dict:
    body = {"user_id": user_id, "type": "lab_result", "priority": "critical"}
    body["data"] = {"lab_result_id": "lr-1"}
    return await api.post("/v1/notifications", {**body, **fields}, expect=201)


def alerts_in(db, nid: str):
    """Every stored alert escalated from one notification (an indexed scan is not needed)."""
    return db.notifications.find({"data.escalated_from": nid}).to_list()


def repushes_of(node) -> list[tuple[str, str]]:
    """What the node's push service is asked to push again (its real push_now still runs)."""
    push = node.node.push
    calls: list[tuple[str, str]] = []
    real = push.push_now

    async def push_now(doc: dict, reason: str) -> None:
        calls.append((doc["_id"], reason))
        await real(doc, reason)

    push.push_now = push_now
    return calls


async def queued(node, nid: str) -> list[str]:
    """The escalation work queued about a notification (other capabilities' aside)."""
    query = {"ref": nid, "kind": {"$in": ["escalate", "ack_expiry"]}}
    entries = await node.node.scheduler.store.collection.find(query).to_list()
    return sorted(e["_id"] for e in entries)


# ---- the fields ---------------------------------------------------------------------------


async def test_fields_and_their_defaults(api):
    normal = await api.notify("f-1", "Appointment moved")
    assert (normal["ack_required"], normal["acknowledged_at"], normal["acknowledged_by"]) == (
        False,
        None,
        None,
    )
    assert normal["escalation"] is None
    crit = await critical(api, "f-1")
    assert crit["ack_required"] is True and crit["escalation"] is None
    assert (await critical(api, "f-1", ack_required=False))["ack_required"] is False
    assert (await api.notify("f-1", "please confirm", ack_required=True))["ack_required"]
    ladder_ = [
        {"after_seconds": 300, "to_role": "nurse"},
        {"after_seconds": 900, "to_user_ids": ["dr-7"]},
    ]
    climbing = await api.notify("f-1", "high", priority="high", escalation=ladder_)
    # A ladder climbs until someone acknowledges: it implies ack_required.
    assert climbing["ack_required"] is True and climbing["escalation"] == ladder_
    many = await api.post(
        "/v1/notifications",
        {"user_ids": ["f-2", "f-3"], "type": "custom", "title": "t", "escalation": ladder_},
        expect=201,
    )
    assert [n["escalation"] for n in many] == [ladder_, ladder_]
    # The feed and the socket show the same fields.
    item = (await api.get("/v1/users/f-1/notifications"))["items"][0]
    assert {"ack_required", "acknowledged_at", "acknowledged_by", "escalation"} <= set(item)
    broadcast = await api.post(
        "/v1/broadcasts",
        {"audience": "all", "title": "t", "message": "m", "priority": "critical"},
        expect=201,
    )
    assert broadcast["ack_required"] is False and broadcast["escalation"] is None
    for extra in ({"ack_required": True}, {"escalation": ladder_}):
        body = {"audience": "all", "title": "t", "message": "m", **extra}
        error = await api.post("/v1/broadcasts", body, expect=400)
        assert list(error["fields"]) == list(extra)


STEP = {"after_seconds": 60, "to_role": "nurse"}
BAD_LADDERS = [
    ("not a list", "nurse", ["Not a valid list."]),
    ("empty", [], ["between 1 and 5 steps"]),
    ("six steps", [{"after_seconds": i + 1, "to_role": "nurse"} for i in range(6)], None),
    ("zero seconds", [{"after_seconds": 0, "to_role": "nurse"}], None),
    ("negative", [{"after_seconds": -5, "to_role": "nurse"}], None),
    ("fraction", [{"after_seconds": 1.5, "to_role": "nurse"}], None),
    ("text", [{"after_seconds": "60", "to_role": "nurse"}], None),
    ("boolean", [{"after_seconds": True, "to_role": "nurse"}], None),
    ("null seconds", [{"after_seconds": None, "to_role": "nurse"}], None),
    ("no seconds", [{"to_role": "nurse"}], None),
    ("equal", [STEP, STEP], None),
    ("decreasing", [STEP, {"after_seconds": 30, "to_user_ids": ["dr-7"]}], None),
    ("no target", [{"after_seconds": 60}], None),
    ("both targets", [{"after_seconds": 60, "to_role": "nurse", "to_user_ids": ["a"]}], None),
    ("no user ids", [{"after_seconds": 60, "to_user_ids": []}], None),
    ("bad user id", [{"after_seconds": 60, "to_user_ids": ["no spaces"]}], None),
    ("ids not a list", [{"after_seconds": 60, "to_user_ids": "dr-7"}], None),
    ("bad role", [{"after_seconds": 60, "to_role": "Head Nurse"}], None),
    ("everyone", [{"after_seconds": 60, "to_role": "all"}], None),
    ("unknown field", [{"after_seconds": 60, "to_role": "nurse", "urgent": True}], None),
    ("step not an object", [60], None),
    ("operator", [{"after_seconds": {"$gt": 0}, "to_role": "nurse"}], None),
]


@pytest.mark.parametrize("name,escalation,messages", BAD_LADDERS, ids=[b[0] for b in BAD_LADDERS])
async def test_every_invalid_ladder_is_a_400_that_stores_nothing(
    node, api, name, escalation, messages
):
    for body in (
        {"user_id": "bad-1", "type": "custom", "title": "t", "escalation": escalation},
        {"user_ids": ["bad-1", "bad-2"], "type": "custom", "title": "t", "escalation": escalation},
    ):
        error = await api.post("/v1/notifications", body, expect=400)
        assert error["code"] == "validation_error" and list(error["fields"]) == ["escalation"]
        if messages:
            assert error["fields"]["escalation"] == messages
    assert (await api.get("/v1/users/bad-1/notifications"))["items"] == []
    about = {"kind": {"$in": ["escalate", "ack_expiry", "send"]}}  # not a push sweep
    assert await node.node.scheduler.store.collection.count_documents(about) == 0


async def test_field_messages_name_the_step(api):
    body = {"user_id": "bad-3", "type": "custom", "title": "t"}
    error = await api.post(
        "/v1/notifications",
        {**body, "escalation": [STEP, {**STEP, "after_seconds": 60}]},
        expect=400,
    )
    assert error["fields"] == {
        "escalation": {"1": {"after_seconds": ["must be greater than the step before's"]}}
    }
    error = await api.post(
        "/v1/notifications", {**body, "escalation": [{"after_seconds": 5}]}, expect=400
    )
    assert error["fields"] == {
        "escalation": {"0": {"to_role": ["give exactly one of to_role or to_user_ids"]}}
    }
    both = {**body, "ack_required": False, "escalation": [STEP]}
    error = await api.post("/v1/notifications", both, expect=400)
    assert error["fields"] == {"ack_required": ["an escalation ladder needs ack_required"]}
    for value in (1, "true", None):
        error = await api.post("/v1/notifications", {**body, "ack_required": value}, expect=400)
        assert list(error["fields"]) == ["ack_required"]


# ---- acknowledging ------------------------------------------------------------------------


async def test_acknowledge_with_the_users_token_once(node, api):
    created = await critical(api, "a-1")
    token = await api.token("a-1")
    path = f"/v1/users/a-1/notifications/{created['id']}/acknowledge"
    first = await api.post(path, {"note": "seen, calling the clinic"}, key=token)
    assert first["id"] == created["id"] and first["acknowledged_by"] == "a-1"
    assert first["acknowledged_at"] is not None
    again = await api.post(path, {"note": "a second note"}, key=token)  # 200, nothing changes
    assert again["acknowledged_at"] == first["acknowledged_at"]
    assert again["acknowledged_by"] == "a-1"
    events = await timeline(api, created["id"])
    acks = [e for e in events if e["event"] == "acknowledged"]
    assert acks == [
        {
            "at": first["acknowledged_at"],
            "event": "acknowledged",
            "by": "a-1",
            "note": "seen, calling the clinic",
        }
    ]
    item = (await api.get("/v1/users/a-1/notifications"))["items"][0]
    assert item["acknowledged_at"] == first["acknowledged_at"]


async def test_acknowledge_with_an_api_key_names_the_key(node, api):
    reader, _ = await node.node.api_keys.create("ward-system", ["read"])
    created = await critical(api, "a-2")
    counted = METRICS.registry.get_sample_value("notify_acknowledged_total", {"by": "key"}) or 0
    done = await api.post(
        f"/v1/users/a-2/notifications/{created['id']}/acknowledge", key=reader
    )  # no body at all: the note is optional
    assert done["acknowledged_by"] == "key:ward-system"
    after = METRICS.registry.get_sample_value("notify_acknowledged_total", {"by": "key"})
    assert after == counted + 1
    events = await timeline(api, created["id"])
    assert events[-1] == {
        "at": done["acknowledged_at"],
        "event": "acknowledged",
        "by": "key:ward-system",
        "note": None,
    }


BAD_BODIES = [
    ("note not text", {"note": 5}),
    ("note too long", {"note": "x" * 1001}),
    ("unknown field", {"note": "ok", "by": "someone-else"}),
    ("an array", ["note"]),
    ("a string", "note"),
    ("operator", {"note": {"$ne": None}}),
]


@pytest.mark.parametrize("name,body", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_acknowledge_bodies_are_400_and_change_nothing(api, name, body):
    created = await critical(api, "a-3")
    path = f"/v1/users/a-3/notifications/{created['id']}/acknowledge"
    error = await api.post(path, body, expect=400)
    assert error["code"] == "validation_error"
    raw = await api.call("POST", path, raw=b"{not json", expect=400)
    assert raw["code"] == "validation_error"
    assert (await api.get(f"/v1/notifications/{created['id']}"))["notification"][
        "acknowledged_at"
    ] is None


async def test_who_may_acknowledge_what(node, api):
    created = await critical(api, "a-4")
    path = f"/v1/users/a-4/notifications/{created['id']}/acknowledge"
    notify_only, _ = await node.node.api_keys.create("sender", ["notify"])
    assert (await api.post(path, key=notify_only, expect=403))["code"] == "forbidden"
    other = await api.token("a-5")
    await api.post(path, key=other, expect=403)
    # Another user's notification under one's own path, an unknown id: 404.
    await api.post(
        f"/v1/users/a-5/notifications/{created['id']}/acknowledge", key=other, expect=404
    )
    await api.post("/v1/users/a-4/notifications/nope/acknowledge", expect=404)
    await api.post(path, key="", expect=401)
    broadcast = await api.post(
        "/v1/broadcasts", {"audience": "all", "title": "t", "message": "m"}, expect=201
    )
    error = await api.post(f"/v1/users/a-4/notifications/{broadcast['id']}/acknowledge", expect=409)
    assert error["code"] == "conflict"
    assert (await api.get(f"/v1/notifications/{created['id']}"))["notification"][
        "acknowledged_at"
    ] is None


async def test_acknowledge_frame_syncs_the_users_other_devices(node, api):
    token = await api.token("s-1")
    phone, laptop = await Socket.open(node.url, token), await Socket.open(node.url, token)
    stranger = await Socket.open(node.url, await api.token("s-2"))
    for sock in (phone, laptop, stranger):
        await sock.expect("welcome")
    created = await critical(api, "s-1")
    await phone.expect("notification")
    phone.send({"type": "acknowledge", "id": created["id"], "note": "on my way"})
    for sock in (phone, laptop):
        assert await sock.expect("acknowledged") == {"type": "acknowledged", "id": created["id"]}
    phone.send({"type": "acknowledge", "id": created["id"]})  # idempotent: no second frame
    await laptop.nothing(0.3)
    await stranger.nothing(0.1)
    stored = await api.get(f"/v1/notifications/{created['id']}")
    assert stored["notification"]["acknowledged_by"] == "s-1"
    assert [e["note"] for e in stored["timeline"] if e["event"] == "acknowledged"] == ["on my way"]


BAD_FRAMES = [
    ({"type": "acknowledge"}, "id"),
    ({"type": "acknowledge", "id": "x y"}, "id"),
    ({"type": "acknowledge", "id": "n-1", "note": 7}, "note"),
    ({"type": "acknowledge", "id": "n-1", "note": "x" * 1001}, "note"),
    ({"type": "acknowledge", "id": "n-1", "by": "me"}, "by"),
]


async def test_bad_acknowledge_frames_get_an_error_frame(node, api):
    sock = await Socket.open(node.url, await api.token("s-3"))
    await sock.expect("welcome")
    created = await critical(api, "s-3")
    await sock.expect("notification")
    for frame, field in BAD_FRAMES:
        sock.send(frame)
        error = await sock.expect("error")
        assert error["code"] == "bad_frame" and field in error["fields"], error
    sock.send({"type": "acknowledge", "id": "no-such-id"})
    assert (await sock.expect("error"))["code"] == "not_found"
    other = await critical(api, "s-4")
    sock.send({"type": "acknowledge", "id": other["id"]})  # not this user's
    assert (await sock.expect("error"))["code"] == "not_found"
    assert (await api.get(f"/v1/notifications/{created['id']}"))["notification"][
        "acknowledged_at"
    ] is None


async def test_acknowledged_frame_reaches_a_device_on_another_node(node, api, second_node):
    api_b = Api(second_node.url, api.key)
    phone = await Socket.open(node.url, await api.token("x-1"))
    tablet = await Socket.open(second_node.url, await api.token("x-1"))
    await phone.expect("welcome")
    await tablet.expect("welcome")
    created = await critical(api_b, "x-1")
    await phone.expect("notification")
    await tablet.expect("notification")
    phone.send({"type": "acknowledge", "id": created["id"]})
    assert await tablet.expect("acknowledged", timeout=10) == {
        "type": "acknowledged",
        "id": created["id"],
    }
    # And over REST on the second node, heard by the phone on the first.
    other = await critical(api, "x-1")
    await phone.expect("notification")
    await api_b.post(f"/v1/users/x-1/notifications/{other['id']}/acknowledge")
    assert (await phone.expect("acknowledged", timeout=10))["id"] == other["id"]


# ---- the ladder ---------------------------------------------------------------------------


async def test_ladder_to_a_role_then_to_users(node, api):
    db = node.node.store.db
    patient = await Socket.open(node.url, await api.token("l-1"))
    nurse = await Socket.open(node.url, await api.token("nurse-1", ["nurse"]))
    doctors = [
        await Socket.open(node.url, await api.token(d, ["doctor"])) for d in ("dr-1", "dr-2")
    ]
    for sock in (patient, nurse, *doctors):
        await sock.expect("welcome")
    steps = [
        {"after_seconds": 1, "to_role": "nurse"},
        {"after_seconds": 2, "to_user_ids": ["dr-1", "dr-2"]},
    ]
    pushed = repushes_of(node)
    created = await critical(api, "l-1", escalation=steps)
    assert await queued(node, created["id"]) == [
        f"escalate:{created['id']}:1",
        f"escalate:{created['id']}:2",
    ]
    first = await patient.expect("notification")
    assert first["notification"]["id"] == created["id"]
    # Level 1: the nurse role gets a critical system_alert broadcast; the patient, the
    # original again (no push service here: to the sockets).
    alert = (await nurse.expect("notification", timeout=15))["notification"]
    assert alert["type"] == "system_alert" and alert["priority"] == "critical"
    assert alert["audience"] == "nurse" and alert["user_id"] is None
    assert alert["data"] == {"escalated_from": created["id"], "user_id": "l-1", "level": 1}
    assert "lr-1" not in json.dumps(alert)  # nothing of the original's content
    # Level 2: each doctor gets their own alert.
    for sock, doctor in zip(doctors, ("dr-1", "dr-2"), strict=True):
        mine = (await sock.expect("notification", timeout=15))["notification"]
        assert mine["user_id"] == doctor and mine["ack_required"] is True
        assert mine["data"] == {"escalated_from": created["id"], "user_id": "l-1", "level": 2}

    async def both_recorded() -> bool:
        return (
            len([e for e in await timeline(api, created["id"]) if e["event"] == "escalated"]) == 2
        )

    await wait_until(both_recorded, what="two escalated events")
    # The original pushed again to the patient, once per level (CONTRACT §6 and §8): one
    # reason per level, as the push queue keeps one push per (notification, reason).
    assert pushed == [(created["id"], "escalation:1"), (created["id"], "escalation:2")]
    escalated = [e for e in await timeline(api, created["id"]) if e["event"] == "escalated"]
    assert [(e["level"], e["to"]) for e in escalated] == [
        (1, {"role": "nurse"}),
        (2, {"user_ids": ["dr-1", "dr-2"]}),
    ]
    alerts = await alerts_in(db, created["id"])
    assert sorted((a["data"]["level"], a["user_id"] or a["audience"]) for a in alerts) == [
        (1, "nurse"),
        (2, "dr-1"),
        (2, "dr-2"),
    ]
    assert await queued(node, created["id"]) == []
    # Acknowledging now changes the record, not the past: nothing more is sent.
    await api.post(f"/v1/users/l-1/notifications/{created['id']}/acknowledge")
    await nurse.nothing(0.3)


async def test_nothing_escalates_after_acknowledgement(node, api):
    nurse = await Socket.open(node.url, await api.token("nurse-2", ["nurse"]))
    await nurse.expect("welcome")
    created = await critical(api, "n-1", escalation=[{"after_seconds": 2, "to_role": "nurse"}])
    await api.post(f"/v1/users/n-1/notifications/{created['id']}/acknowledge")
    assert await queued(node, created["id"]) == []
    # A marker escalated later than the step would have been: when it arrives, the step's
    # time has passed, and nothing came before it.
    marker = await critical(api, "n-2", escalation=[{"after_seconds": 3, "to_role": "nurse"}])
    alert = (await nurse.expect("notification", timeout=15))["notification"]
    assert alert["data"]["escalated_from"] == marker["id"]
    assert await alerts_in(node.node.store.db, created["id"]) == []
    assert "escalated" not in [e["event"] for e in await timeline(api, created["id"])]


async def test_a_step_already_claimed_checks_acknowledgement_again(node, api):
    created = await critical(api, "n-3", escalation=[{"after_seconds": 60, "to_role": "nurse"}])
    await api.post(f"/v1/users/n-3/notifications/{created['id']}/acknowledge")
    # As if the step had been claimed before the acknowledgement dropped it.
    entry = {"_id": f"escalate:{created['id']}:1", "ref": created["id"], "payload": {"level": 1}}
    assert await node.node.escalation.steps.run([entry]) == {}
    assert await alerts_in(node.node.store.db, created["id"]) == []


async def test_nothing_escalates_after_expiry_and_the_expiry_is_on_record(node, api):
    nurse = await Socket.open(node.url, await api.token("nurse-3", ["nurse"]))
    await nurse.expect("welcome")
    soon = iso(utcnow() + timedelta(milliseconds=1500))
    created = await critical(
        api, "e-1", expires_at=soon, escalation=[{"after_seconds": 2, "to_role": "nurse"}]
    )
    acked = await critical(api, "e-1", expires_at=soon)
    await api.post(f"/v1/users/e-1/notifications/{acked['id']}/acknowledge")
    plain = await api.notify("e-1", "no ack needed", expires_at=soon)
    marker = await critical(api, "e-2", escalation=[{"after_seconds": 3, "to_role": "nurse"}])
    alert = (await nurse.expect("notification", timeout=15))["notification"]
    assert alert["data"]["escalated_from"] == marker["id"]
    assert await alerts_in(node.node.store.db, created["id"]) == []

    async def expiry_recorded() -> bool:
        return any(e.get("unacknowledged") for e in await timeline(api, created["id"]))

    await wait_until(expiry_recorded, what="expired_unacknowledged")
    events = await timeline(api, created["id"])
    assert [e["event"] for e in events] == ["created", "expired"]
    assert events[-1] == {"at": created["expires_at"], "event": "expired", "unacknowledged": True}
    # Acknowledged in time, or never needing it: the plain derived event, nothing stored.
    for other in (acked, plain):
        expired = [e for e in await timeline(api, other["id"]) if e["event"] == "expired"]
        assert expired == [{"at": other["expires_at"], "event": "expired"}]
    assert await queued(node, created["id"]) == []


async def test_acknowledged_after_it_expired_still_expired_unacknowledged(node, api):
    soon = utcnow() + timedelta(milliseconds=1200)
    late = await critical(api, "e-3", expires_at=iso(soon))
    in_time = await critical(api, "e-3", expires_at=iso(soon))
    scheduler, expiry = node.node.scheduler, node.node.escalation.expiry
    # Taken off the queue, to run them by hand after the acknowledgements below.
    entries = [await scheduler.store.get(f"ack-expiry:{n['id']}") for n in (late, in_time)]
    for n in (late, in_time):
        assert await scheduler.drop(n["id"], ["ack_expiry"]) == 1
    await api.post(f"/v1/users/e-3/notifications/{in_time['id']}/acknowledge")

    async def expired() -> bool:
        return "expired" in [e["event"] for e in await timeline(api, late["id"])]

    await wait_until(expired, what="the expiry")
    await api.post(f"/v1/users/e-3/notifications/{late['id']}/acknowledge")
    assert await expiry.run(entries) == {}
    assert (await timeline(api, late["id"]))[1] == {
        "at": late["expires_at"],
        "event": "expired",
        "unacknowledged": True,
    }
    assert [e for e in await timeline(api, in_time["id"]) if e["event"] == "expired"] == [
        {"at": in_time["expires_at"], "event": "expired"}
    ]


async def test_nothing_escalates_after_cancellation(node, api):
    nurse = await Socket.open(node.url, await api.token("nurse-4", ["nurse"]))
    await nurse.expect("welcome")
    later = iso(utcnow() + timedelta(hours=1))
    created = await critical(
        api, "c-1", deliver_at=later, escalation=[{"after_seconds": 1, "to_role": "nurse"}]
    )
    assert await queued(node, created["id"]) == [f"escalate:{created['id']}:1"]
    await api.delete(f"/v1/notifications/{created['id']}")
    assert await queued(node, created["id"]) == []
    assert await node.node.scheduler.store.get(created["id"]) is None
    # A step found after its notification was cancelled is dropped by its handler too.
    entry = {"_id": f"escalate:{created['id']}:1", "ref": created["id"], "payload": {"level": 1}}
    assert await node.node.escalation.steps.run([entry]) == {}
    await nurse.nothing(0.2)


async def test_a_scheduled_notifications_ladder_counts_from_its_sending(node, api):
    nurse = await Socket.open(node.url, await api.token("nurse-5", ["nurse"]))
    await nurse.expect("welcome")
    deliver = utcnow() + timedelta(seconds=1)
    created = await critical(
        api, "c-2", deliver_at=iso(deliver), escalation=[{"after_seconds": 1, "to_role": "nurse"}]
    )
    entry = await node.node.scheduler.store.get(f"escalate:{created['id']}:1")
    assert entry["claim_ms"] == int((deliver + timedelta(seconds=1)).timestamp() * 1000)
    alert = (await nurse.expect("notification", timeout=15))["notification"]
    assert alert["data"]["escalated_from"] == created["id"]


async def test_a_repeated_step_stores_no_second_alert(node, api):
    """A node that died after storing a step's alerts: the next one repeats the step."""
    db = node.node.store.db
    steps = [{"after_seconds": 60, "to_user_ids": ["dr-8", "dr-9"]}]
    created = await critical(api, "r-1", escalation=steps)
    doc = await node.node.store.get(created["id"])
    escalation = node.node.escalation
    await escalation.steps.escalate(doc, 1)
    await escalation.steps.escalate(doc, 1)
    alerts = await alerts_in(db, created["id"])
    assert sorted(a["user_id"] for a in alerts) == ["dr-8", "dr-9"]
    due = ladder.step_due(doc, 60)
    assert sorted(a["_id"] for a in alerts) == sorted(
        ladder.alert_id(created["id"], 1, ("user", u), due) for u in ("dr-8", "dr-9")
    )
    events = [e for e in await timeline(api, created["id"]) if e["event"] == "escalated"]
    assert len(events) == 1
    feed = (await api.get("/v1/users/dr-8/notifications"))["items"]
    assert [n["id"] for n in feed] == [a["_id"] for a in alerts if a["user_id"] == "dr-8"]


@pytest.mark.parametrize("peers", [1, 2], ids=["two nodes", "three nodes"])
async def test_each_alert_once_across_nodes(node, api, settings, mongo_uri, peers):
    quick = settings.with_(schedule_poll_seconds=0.1)
    others = [await serve_node(quick.with_(node_id=f"peer-{i}"), mongo_uri) for i in range(peers)]
    try:
        nurse = await Socket.open(node.url, await api.token("nurse-6", ["nurse"]))
        await nurse.expect("welcome")
        steps = [
            {"after_seconds": 1, "to_role": "nurse"},
            {"after_seconds": 2, "to_user_ids": ["dr-5", "dr-6"]},
        ]
        created = [await critical(api, f"t-{i}", escalation=steps) for i in range(5)]

        async def all_done() -> bool:
            for c in created:
                if await queued(node, c["id"]):
                    return False
            return True

        await wait_until(all_done, what="every step done")
        db = node.node.store.db
        for c in created:
            alerts = await alerts_in(db, c["id"])
            assert sorted((a["data"]["level"], a["user_id"] or a["audience"]) for a in alerts) == [
                (1, "nurse"),
                (2, "dr-5"),
                (2, "dr-6"),
            ]
            escalated = [e for e in await timeline(api, c["id"]) if e["event"] == "escalated"]
            assert sorted(e["level"] for e in escalated) == [1, 2]
        seen = [(await nurse.expect("notification", timeout=15))["notification"] for _ in created]
        assert sorted(a["data"]["escalated_from"] for a in seen) == sorted(c["id"] for c in created)
    finally:
        for other in others:
            await other.stop()


# ---- the dashboard ------------------------------------------------------------------------


async def test_staff_acknowledge_from_the_overview(node, api):
    staff = node.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("nurse", NURSE_PASSWORD, "staff", "test")
    browser = Browser(node.url)
    await browser.login("nurse", NURSE_PASSWORD)
    node.node.notifications.critical_ack *= 0
    crit = await critical(api, "d-1")
    asked = await api.notify("d-2", "Please confirm the new date", ack_required=True)
    await api.notify("d-3", "Nothing to confirm")
    node.node.dashboard._critical = (0.0, [])
    page = text(await browser.get("/dashboard"))
    for item in (crit, asked):
        assert f"/dashboard/notifications/{item['id']}/acknowledge" in page
    assert "d-3" not in page
    path = f"/dashboard/notifications/{crit['id']}/acknowledge"
    refused = await browser.post(path, {"note": "reached by phone"}, xsrf=False)
    assert refused.code == 403
    long = await browser.post(path, {"note": "x" * 1001})
    assert long.code == 302
    assert (await api.get(f"/v1/notifications/{crit['id']}"))["notification"][
        "acknowledged_at"
    ] is None
    done = await browser.post(path, {"note": "reached by phone"})
    assert done.code == 302 and done.headers["Location"] == "/dashboard"
    detail = await api.get(f"/v1/notifications/{crit['id']}")
    assert detail["notification"]["acknowledged_by"] == "staff:nurse"
    assert detail["timeline"][-1]["note"] == "reached by phone"
    entries = await node.node.audit.recent(10, None, None, "notification.acknowledge")
    assert [
        (e["actor"], e["target"], e["detail"]["note"], e["detail"]["user_id"]) for e in entries
    ] == [("staff:nurse", crit["id"], "reached by phone", "d-1")]
    assert entries[0]["at"] is not None
    page = text(await browser.get("/dashboard"))
    assert crit["id"] not in page and asked["id"] in page
    # Twice: nothing changes, and nothing more on the audit log than the attempt's outcome.
    await browser.post(path, {"note": "again"})
    detail = await api.get(f"/v1/notifications/{crit['id']}")
    assert detail["notification"]["acknowledged_by"] == "staff:nurse"
    assert [e["note"] for e in detail["timeline"] if e["event"] == "acknowledged"] == [
        "reached by phone"
    ]
    gone = await browser.post("/dashboard/notifications/nope/acknowledge", {"note": "x"})
    assert gone.code == 302


# ---- the Python client --------------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["sync", "async"])
async def test_the_python_client_sends_a_ladder_and_acknowledges(node, api, api_key, flavor):
    from tests.test_python_client import AsyncNotifyClient, Caller, NotifyClient

    client = Caller((NotifyClient if flavor == "sync" else AsyncNotifyClient)(node.url, api_key))
    steps = [{"after_seconds": 600, "to_role": "oncall"}]
    made = await client.send_lab_result_notification(
        "py-1", "lr-3", priority="critical", escalation=steps
    )
    assert made["ack_required"] is True and made["escalation"] == steps
    done = await client.acknowledge("py-1", made["id"], note="called back")
    assert done["acknowledged_by"] == "key:tests" and done["acknowledged_at"]
    again = await client.acknowledge("py-1", made["id"])
    assert again["acknowledged_at"] == done["acknowledged_at"]
    events = [e for e in await timeline(api, made["id"]) if e["event"] == "acknowledged"]
    assert [(e["by"], e["note"]) for e in events] == [("key:tests", "called back")]
    assert await queued(node, made["id"]) == []


async def test_the_history_page_shows_a_notifications_timeline(node, api):
    staff = node.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("nurse", NURSE_PASSWORD, "staff", "test")
    browser = Browser(node.url)
    await browser.login("nurse", NURSE_PASSWORD)
    steps = [{"after_seconds": 1, "to_role": "oncall"}]
    created = await critical(api, "h-1", escalation=steps, title="<b>K+</b> 6.8")

    async def escalated() -> bool:
        return "escalated" in [e["event"] for e in await timeline(api, created["id"])]

    await wait_until(escalated, what="the first step")
    listing = text(await browser.get("/dashboard/history?user=h-1"))
    assert f'href="/dashboard/history/{created["id"]}"' in listing
    page = text(await browser.get(f"/dashboard/history/{created['id']}"))
    assert "&lt;b&gt;K+&lt;/b&gt; 6.8" in page and "<b>K+</b>" not in page
    assert 'data-event="created"' in page and 'data-event="escalated"' in page
    assert "role <strong>oncall</strong>" in page and "needed, none yet" in page
    done = await browser.post(
        f"/dashboard/notifications/{created['id']}/acknowledge",
        {"note": "paged the on-call nurse", "next": f"/dashboard/history/{created['id']}"},
    )
    assert done.headers["Location"] == f"/dashboard/history/{created['id']}"
    page = text(await browser.get(f"/dashboard/history/{created['id']}"))
    assert 'data-event="acknowledged"' in page and "paged the on-call nurse" in page
    assert "staff:nurse" in page and "Acknowledge on the user" not in page
    away = await browser.post(
        f"/dashboard/notifications/{created['id']}/acknowledge",
        {"next": "https://elsewhere.example/"},
    )
    assert away.headers["Location"] == "/dashboard"  # never off the dashboard
    assert (await browser.get("/dashboard/history/no-such-id")).code == 404
    later = await api.notify("h-2", "Reminder", deliver_at=iso(utcnow() + timedelta(hours=1)))
    page = text(await browser.get(f"/dashboard/history/{later['id']}"))
    assert 'data-event="scheduled"' in page


# ---- what webhooks hear of it -------------------------------------------------------------


async def test_webhooks_hear_acknowledged_escalated_and_expired_unacknowledged(settings, mongo_uri):
    """The real flow (not recorded events) reaches a signed receiver once per event."""
    from tests.test_webhooks import FAST, register
    from tests.webhook_receiver import Receiver

    receiver = Receiver()
    await receiver.start()
    running = await serve_node(settings.with_(**FAST), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("ehr", ["notify", "read", "tokens", "admin"])
        api = Api(running.url, key)
        wanted = [
            "notification.acknowledged",
            "notification.escalated",
            "notification.expired_unacknowledged",
        ]
        await register(api, receiver, "ehr", wanted)
        climbing = await critical(
            api, "w-1", escalation=[{"after_seconds": 1, "to_role": "oncall"}]
        )
        soon = iso(utcnow() + timedelta(milliseconds=1500))
        expiring = await critical(api, "w-2", expires_at=soon)
        route = receiver.routes["ehr"]

        async def escalated_and_expired() -> bool:
            return set(wanted[1:]) <= {r.body["type"] for r in route.requests if r.answered}

        await wait_until(escalated_and_expired, what="escalated and expired webhooks")
        await api.post(
            f"/v1/users/w-1/notifications/{climbing['id']}/acknowledge", {"note": "seen"}
        )
        await api.post(f"/v1/users/w-1/notifications/{climbing['id']}/acknowledge")

        async def acknowledged() -> bool:
            return any(r.body["type"] == wanted[0] for r in route.requests if r.answered)

        await wait_until(acknowledged, what="the acknowledged webhook")
        by_type = {}
        for r in route.requests:
            by_type.setdefault(r.body["type"], []).append(r.body["data"])
        assert all(r.verified for r in route.requests)
        assert [d["notification_id"] for d in by_type["notification.escalated"]] == [climbing["id"]]
        assert by_type["notification.escalated"][0]["to"] == {"role": "oncall"}
        assert [(d["notification_id"], d["by"]) for d in by_type["notification.acknowledged"]] == [
            (climbing["id"], "key:ehr")
        ]
        assert [d["notification_id"] for d in by_type["notification.expired_unacknowledged"]] == [
            expiring["id"]
        ]
    finally:
        await running.stop()
        await receiver.stop()


async def test_the_sse_stream_hears_acknowledged_and_acknowledges_over_rest(node, api):
    from tests.test_sse import Stream

    token = await api.token("sse-1")
    stream = await Stream.open(node.url, token)
    try:
        await stream.expect("welcome")
        made = await critical(api, "sse-1")
        await stream.expect("notification")
        await api.post(f"/v1/users/sse-1/notifications/{made['id']}/acknowledge", key=token)
        event = await stream.expect("acknowledged")
        assert event["frame"] == {"type": "acknowledged", "id": made["id"]} and "id" not in event
    finally:
        await stream.close()
