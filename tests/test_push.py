"""Web Push (CONTRACT §6) and preferences (§7) against a local push service that decrypts.

Every push goes through the real sending path to ``tests/pushservice.py`` on 127.0.0.1,
which verifies the VAPID JWT and decrypts the message with the subscriber's private key.
Times are scaled by settings (grace, sweep, retry); "not pushed" is shown with a later
notification that is pushed: the sweep takes notifications in feed order, so once the later
one arrives, the earlier one was decided.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from server.app.outbound import BlockedAddress, PublicResolver, url_problem
from server.push.preferences import quiet_until
from server.push.service import PushService
from settings import Settings
from tests.conftest import ALL_SCOPES
from tests.pushservice import PushServer, unb64url
from tests.support import Api, Socket, serve_node
from tests.test_dashboard import FAST_HASHER, Browser, text

pytestmark = pytest.mark.asyncio

FAST = {
    "outbound_allow_private": True,
    "push_grace_seconds": 0.5,
    "push_sweep_seconds": 0.1,
    "schedule_poll_seconds": 0.1,
    "push_retry_seconds": 0.2,
    "push_attempts": 3,
}


@pytest_asyncio.fixture
async def push_server():
    server = await PushServer().start()
    yield server
    await server.stop()


async def start(settings, mongo_uri, push_server, **changes):
    running = await serve_node(settings.with_(**{**FAST, **changes}), mongo_uri)
    key, _ = await running.node.api_keys.create("tests", ALL_SCOPES)
    push_server.vapid_key = running.node.push.vapid.public_key
    return running, Api(running.url, key)


@pytest_asyncio.fixture
async def fast(settings, mongo_uri, push_server):
    running, api = await start(settings, mongo_uri, push_server)
    yield running, api
    await running.stop()


async def subscribe(api: Api, push_server: PushServer, user: str, name: str | None = None):
    sub = push_server.add(name or user)
    data = await api.post(f"/v1/users/{user}/push-subscriptions", sub.subscription(), expect=201)
    return data["id"]


async def lab(api: Api, user: str, **extra) -> dict:
    body = {"user_id": user, "type": "lab_result", "title": "HbA1c 9.1 %", "message": "secret"}
    body["data"] = {"lab_result_id": "l-1"}
    return await api.post("/v1/notifications", {**body, **extra}, expect=201)


async def timeline(api: Api, nid: str, event: str, count: int = 1, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        events = (await api.get(f"/v1/notifications/{nid}"))["timeline"]
        found = [e for e in events if e["event"] == event]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, events
        await asyncio.sleep(0.05)


async def left_after_push(running, nid: str) -> list[str]:
    """Queue entries about a notification once its push entry is done (retries would stay)."""
    queue = running.node.scheduler.store.collection
    deadline = time.monotonic() + 20
    while await queue.find_one({"_id": f"push:{nid}"}) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return [e["_id"] async for e in queue.find({"ref": nid})]


# ---- the VAPID key and subscriptions --------------------------------------------------------


async def test_vapid_key_is_one_p256_point_for_every_node(node, second_node, api):
    first = await api.get("/v1/push/vapid-public-key", key="")
    second = await Api(second_node.url).get("/v1/push/vapid-public-key")
    raw = unb64url(first["public_key"])
    assert len(raw) == 65 and raw[0] == 4
    assert first == second


async def test_subscribe_again_updates_one_row_and_keys_never_show(fast, push_server):
    _, api = fast
    sub = push_server.add("dev-1")
    token = await api.token("p-1")
    first = await api.post(
        "/v1/users/p-1/push-subscriptions", sub.subscription(device="Phone"), key=token, expect=201
    )
    assert set(first) == {"id", "endpoint", "device", "created_at"}
    again = await api.post(
        "/v1/users/p-1/push-subscriptions", sub.subscription(device="Laptop"), key=token
    )
    assert again["id"] == first["id"] and again["device"] == "Laptop"
    listed = await api.get("/v1/users/p-1/push-subscriptions", key=token)
    assert listed == {"items": [again]}
    assert "keys" not in str(listed) and sub.subscription()["keys"]["auth"] not in str(listed)
    other = await api.token("p-2")
    await api.get("/v1/users/p-1/push-subscriptions", key=other, expect=403)
    await api.post("/v1/users/p-1/push-subscriptions", sub.subscription(), key=other, expect=403)
    await api.delete(f"/v1/users/p-1/push-subscriptions/{first['id']}", key=token)
    assert (await api.get("/v1/users/p-1/push-subscriptions"))["items"] == []
    await api.delete(f"/v1/users/p-1/push-subscriptions/{first['id']}", expect=404)


async def test_scopes_of_subscription_routes(fast, push_server):
    running, api = fast
    read, _ = await running.node.api_keys.create("read-only", ["read"])
    notify, _ = await running.node.api_keys.create("notify-only", ["notify"])
    sub = push_server.add("dev-s").subscription()
    await api.post("/v1/users/p-1/push-subscriptions", sub, key=read, expect=403)
    await api.post("/v1/users/p-1/push-subscriptions", sub, key=notify, expect=201)
    await api.get("/v1/users/p-1/push-subscriptions", key=notify, expect=403)
    await api.get("/v1/users/p-1/push-subscriptions", key=read)
    await api.get("/v1/users/p-1/preferences", key=read)
    await api.call("PUT", "/v1/users/p-1/preferences", {"push": False}, key=notify)


def _bad_subscriptions(good: dict) -> list[tuple[str, dict]]:
    keys = good["keys"]
    off_curve = "BA" + "A" * 85  # 65 bytes starting 0x04, not a point on P-256
    return [
        ("not a URL", {**good, "endpoint": "not a url"}),
        ("ftp", {**good, "endpoint": "ftp://push.example.com/x"}),
        ("no host", {**good, "endpoint": "https:///x"}),
        ("user info", {**good, "endpoint": "https://u:p@push.example.com/x"}),
        ("p256dh not base64", {**good, "keys": {**keys, "p256dh": "!!!"}}),
        ("p256dh short", {**good, "keys": {**keys, "p256dh": keys["p256dh"][:40]}}),
        ("p256dh off curve", {**good, "keys": {**keys, "p256dh": off_curve}}),
        ("auth 15 bytes", {**good, "keys": {**keys, "auth": "AAAAAAAAAAAAAAAAAAAA"}}),
        ("no keys", {"endpoint": good["endpoint"]}),
        ("no auth", {**good, "keys": {"p256dh": keys["p256dh"]}}),
        ("unknown field", {**good, "extra": 1}),
        ("unknown key field", {**good, "keys": {**keys, "x": "y"}}),
        ("endpoint number", {**good, "endpoint": 5}),
        ("long device", {**good, "device": "x" * 101}),
        ("expiration text", {**good, "expirationTime": "soon"}),
    ]


async def test_bad_subscriptions_are_400_and_store_nothing(fast, push_server):
    _, api = fast
    good = push_server.add("dev-b").subscription()
    for name, body in _bad_subscriptions(good):
        error = await api.post("/v1/users/p-1/push-subscriptions", body, expect=400)
        assert error["code"] == "validation_error", name
    await api.post("/v1/users/p-1/push-subscriptions", raw=b"[1]", expect=400)
    assert (await api.get("/v1/users/p-1/push-subscriptions"))["items"] == []


async def test_private_addresses_refused_unless_allowed(node, api, push_server):
    good = push_server.add("dev-p").subscription()
    for endpoint in (
        good["endpoint"],  # http on 127.0.0.1
        "https://127.0.0.1/push/x",
        "https://10.1.2.3/push/x",
        "https://[::1]/push/x",
        "https://169.254.169.254/latest",
        "https://localhost/push/x",
    ):
        await api.post(
            "/v1/users/p-1/push-subscriptions", {**good, "endpoint": endpoint}, expect=400
        )
    assert (await api.get("/v1/users/p-1/push-subscriptions"))["items"] == []
    # A public name is accepted now; its addresses are checked when it is resolved to send.
    ok = {**good, "endpoint": "https://push.example.com/wpush/v2/abc"}
    await api.post("/v1/users/p-1/push-subscriptions", ok, expect=201)
    assert url_problem("https://8.8.8.8/x", False) is None


async def test_resolver_refuses_names_of_private_addresses():
    with pytest.raises(BlockedAddress):
        await PublicResolver(allow_private=False).resolve("localhost", 443)
    assert await PublicResolver(allow_private=True).resolve("localhost", 443)


# ---- sending -----------------------------------------------------------------------------


async def test_push_is_encrypted_signed_and_carries_no_health_information(fast, push_server):
    _, api = fast
    sid = await subscribe(api, push_server, "p-1")
    sent = await lab(api, "p-1", priority="high")
    [push] = await push_server.wait_for(lambda: push_server.to("p-1"))
    assert push.payload == {
        "id": sent["id"],
        "type": "lab_result",
        "priority": "high",
        "cursor": sent["cursor"],
        "title": "Lab results ready",
    }
    assert push.headers["Urgency"] == "high"
    assert push.headers["Topic"] == sent["id"] and len(push.headers["Topic"]) <= 32
    assert 86000 < int(push.headers["Ttl"]) <= 86400
    [event] = await timeline(api, sent["id"], "push_sent")
    assert event["subscription_id"] == sid and event["status"] == 201
    assert push_server.errors == []


async def test_full_content_and_ttl_from_expiry(settings, mongo_uri, push_server):
    running, api = await start(settings, mongo_uri, push_server, push_content="full")
    try:
        await subscribe(api, push_server, "p-1")
        expires = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        sent = await lab(api, "p-1", priority="low", expires_at=expires)
        [push] = await push_server.wait_for(lambda: push_server.to("p-1"))
        assert push.payload["title"] == "HbA1c 9.1 %" and push.payload["message"] == "secret"
        assert push.payload["id"] == sent["id"] and push.headers["Urgency"] == "low"
        assert 500 < int(push.headers["Ttl"]) <= 600
    finally:
        await running.stop()


async def test_an_ack_within_the_grace_period_means_no_push(settings, mongo_uri, push_server):
    running, api = await start(settings, mongo_uri, push_server, push_grace_seconds=3.0)
    try:
        await subscribe(api, push_server, "p-1")
        sock = await Socket.open(running.url, await api.token("p-1"))
        await sock.expect("welcome")
        acked = await lab(api, "p-1")
        frame = await sock.expect("notification")
        sock.send({"type": "ack", "id": frame["notification"]["id"]})
        await timeline(api, acked["id"], "delivered")
        sock.close()
        later = await lab(api, "p-1")
        pushes = await push_server.wait_for(lambda: push_server.to("p-1"), timeout=30)
        assert [p.payload["id"] for p in pushes] == [later["id"]]
    finally:
        await running.stop()


async def test_the_sweep_reads_only_notifications_past_their_grace_period(
    settings, mongo_uri, push_server, db_name
):
    """Reading the young ones too (a page of them every sweep) held MongoDB up for every
    write: the sweep bounds its read by what its node had dispatched a grace period ago."""
    from pymongo import monitoring

    grace, read = 1.5, []

    class Reads(monitoring.CommandListener):
        def started(self, event):
            pass

        def succeeded(self, event):
            cursor = event.reply.get("cursor", {}) if event.command_name == "find" else {}
            if event.database_name == db_name and cursor.get("ns", "").endswith(".notifications"):
                read.append((time.time(), cursor.get("firstBatch", [])))

        def failed(self, event):
            pass

    monitoring.register(Reads())  # for the clients made from now on: the node's
    running, api = await start(settings, mongo_uri, push_server, push_grace_seconds=grace)
    try:
        await subscribe(api, push_server, "p-1")
        sent = [await lab(api, "p-1") for _ in range(3)]
        await push_server.wait_for(lambda: len(push_server.to("p-1")) == 3)
        await asyncio.sleep(0.5)  # a few sweeps more with nothing left to push
        swept = [(at, d) for at, batch in read for d in batch if set(d) >= {"seq", "created_at"}]
        assert {d["_id"] for _, d in swept} >= {n["id"] for n in sent}
        for at, doc in swept:  # none younger than the grace period when it was read
            assert at - doc["created_at"].replace(tzinfo=UTC).timestamp() >= grace - 0.05
    finally:
        await running.stop()


async def test_critical_is_pushed_at_once_whatever_the_sockets_did(
    settings, mongo_uri, push_server
):
    running, api = await start(settings, mongo_uri, push_server, push_grace_seconds=3600)
    try:
        await subscribe(api, push_server, "p-1")
        sock = await Socket.open(running.url, await api.token("p-1"))
        await sock.expect("welcome")
        sent = await lab(api, "p-1", priority="critical")
        frame = await sock.expect("notification")
        sock.send({"type": "ack", "id": frame["notification"]["id"]})
        [push] = await push_server.wait_for(lambda: push_server.to("p-1"))
        assert push.payload["id"] == sent["id"] and push.payload["priority"] == "critical"
        sock.close()
    finally:
        await running.stop()


async def test_push_now_pushes_again_regardless_of_grace(settings, mongo_uri, push_server):
    running, api = await start(settings, mongo_uri, push_server, push_grace_seconds=3600)
    try:
        await subscribe(api, push_server, "p-1")
        sent = await lab(api, "p-1")
        doc = await running.node.store.get(sent["id"])
        await running.node.push.push_now(doc, "escalation-1")
        await running.node.push.push_now(doc, "escalation-1")  # the same reason: once
        [push] = await push_server.wait_for(lambda: push_server.to("p-1"))
        assert push.payload["id"] == sent["id"]
        await running.node.push.push_now(doc, "escalation-2")
        await push_server.wait_for(lambda: len(push_server.to("p-1")) == 2)
    finally:
        await running.stop()


async def test_escalation_pushes_the_original_again(fast, push_server):
    _, api = fast
    await subscribe(api, push_server, "p-1")
    steps = [{"after_seconds": 1, "to_role": "nurse"}, {"after_seconds": 2, "to_role": "nurse"}]
    sent = await lab(api, "p-1", priority="critical", escalation=steps)
    await push_server.wait_for(lambda: len(push_server.to("p-1")) == 3)  # at once, 1 s, 2 s
    assert {p.payload["id"] for p in push_server.to("p-1")} == {sent["id"]}
    assert len(await timeline(api, sent["id"], "push_sent", count=3)) == 3


async def test_410_deletes_the_subscription(fast, push_server):
    _, api = fast
    sid = await subscribe(api, push_server, "p-1")
    push_server.answer("p-1", 410)
    sent = await lab(api, "p-1")
    [event] = await timeline(api, sent["id"], "push_failed")
    assert event["status"] == 410 and event["subscription_id"] == sid
    assert (await api.get("/v1/users/p-1/push-subscriptions"))["items"] == []


async def test_429_waits_for_retry_after_then_sends(fast, push_server):
    _, api = fast
    await subscribe(api, push_server, "p-1")
    push_server.answer("p-1", (429, {"Retry-After": "1"}))
    sent = await lab(api, "p-1")
    await push_server.wait_for(lambda: push_server.to("p-1"))
    first, second = push_server.to("p-1", accepted=False)
    assert (first.status, second.status) == (429, 201)
    assert second.at - first.at >= 0.9  # Retry-After 1 s, though the backoff is 0.2 s
    [failed] = await timeline(api, sent["id"], "push_failed")
    assert failed["status"] == 429 and failed["retry_at"]
    [ok] = await timeline(api, sent["id"], "push_sent")
    assert ok["status"] == 201 and ok["attempt"] == 2


async def test_5xx_is_retried_at_most_push_attempts_times(fast, push_server):
    running, api = fast
    await subscribe(api, push_server, "p-1")
    push_server.answer("p-1", 500, 503, 502, 201)  # the fourth would succeed: never asked
    sent = await lab(api, "p-1")
    failed = await timeline(api, sent["id"], "push_failed", count=3)
    assert [e["status"] for e in failed] == [500, 503, 502]
    assert "retry_at" not in failed[-1] and failed[0]["retry_at"]
    assert len(push_server.to("p-1", accepted=False)) == 3
    assert await left_after_push(running, sent["id"]) == []


async def test_413_and_other_4xx_fail_without_retry(fast, push_server):
    running, api = fast
    await subscribe(api, push_server, "p-1")
    push_server.answer("p-1", 413)
    sent = await lab(api, "p-1")
    [event] = await timeline(api, sent["id"], "push_failed")
    assert event["status"] == 413 and "retry_at" not in event
    assert await left_after_push(running, sent["id"]) == []
    assert len((await api.get("/v1/users/p-1/push-subscriptions"))["items"]) == 1  # kept


async def test_every_device_of_the_user_gets_it(fast, push_server):
    _, api = fast
    await subscribe(api, push_server, "p-1", "phone")
    await subscribe(api, push_server, "p-1", "laptop")
    await subscribe(api, push_server, "p-2", "other")
    sent = await lab(api, "p-1")
    await push_server.wait_for(lambda: push_server.to("phone") and push_server.to("laptop"))
    await timeline(api, sent["id"], "push_sent", count=2)
    assert push_server.to("other") == []


async def test_broadcasts_pushed_only_when_high_or_critical(fast, push_server):
    _, api = fast
    for user, role in (("n-1", "nurse"), ("n-2", "nurse"), ("p-9", "patient")):
        token = await api.token(user, [role])
        sub = push_server.add(user).subscription()
        await api.post(f"/v1/users/{user}/push-subscriptions", sub, key=token, expect=201)
    body = {"audience": "nurse", "title": "Ward 3 closed", "message": "m"}
    normal = await api.post("/v1/broadcasts", {**body, "priority": "normal"}, expect=201)
    high = await api.post("/v1/broadcasts", {**body, "priority": "high"}, expect=201)
    everyone = {**body, "audience": "all", "priority": "critical"}
    critical = await api.post("/v1/broadcasts", everyone, expect=201)
    await push_server.wait_for(lambda: len(push_server.to("n-1")) == 2)
    await push_server.wait_for(lambda: len(push_server.to("n-2")) == 2)
    await push_server.wait_for(lambda: push_server.to("p-9"))
    for nurse in ("n-1", "n-2"):
        ids = sorted(p.payload["id"] for p in push_server.to(nurse))
        assert ids == sorted([high["id"], critical["id"]])
    assert [p.payload["id"] for p in push_server.to("p-9")] == [critical["id"]]
    assert normal["id"] not in {p.payload["id"] for p in push_server.accepted}
    [summary] = await timeline(api, high["id"], "push_sent")
    assert summary["devices"] == 2 and "subscription_id" not in summary


# ---- preferences and quiet hours --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus_Mons"}},
        {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "../../etc/passwd"}},
        {"quiet_hours": {"start": "24:00", "end": "07:00", "timezone": "Europe/Berlin"}},
        {"quiet_hours": {"start": "7:00", "end": "08:00", "timezone": "Europe/Berlin"}},
        {"quiet_hours": {"start": "07:60", "end": "08:00", "timezone": "Europe/Berlin"}},
        {"quiet_hours": {"start": "07:00", "end": "07:00", "timezone": "Europe/Berlin"}},
        {"quiet_hours": {"start": "22:00", "timezone": "Europe/Berlin"}},
        {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "UTC", "x": 1}},
        {"types": {"prescription": {"push": False}}},
        {"types": {"appointment": {"push": "no"}}},
        {"types": {"appointment": {}}},
        {"types": {"appointment": {"push": True, "email": True}}},
        {"push": "yes"},
        {"sms": True},
        {"types": []},
    ],
)
async def test_bad_preferences_are_400_and_store_nothing(fast, body):
    _, api = fast
    error = await api.call("PUT", "/v1/users/p-1/preferences", body, expect=400)
    assert error["code"] == "validation_error" and error["fields"]
    stored = await api.get("/v1/users/p-1/preferences")
    assert stored == {"push": True, "types": {}, "quiet_hours": None}


async def test_preferences_round_trip_and_turn_pushes_off(fast, push_server):
    _, api = fast
    await subscribe(api, push_server, "p-1")
    token = await api.token("p-1")
    prefs = {
        "push": True,
        "types": {"lab_result": {"push": False}},
        "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
    }
    prefs["quiet_hours"] = None
    assert await api.call("PUT", "/v1/users/p-1/preferences", prefs, key=token) == prefs
    assert await api.get("/v1/users/p-1/preferences", key=token) == prefs
    muted = await lab(api, "p-1")
    body = {"user_id": "p-1", "type": "ai_analysis"}
    body["data"] = {"analysis_id": "a-1", "analysis_type": "ecg"}
    later = await api.post("/v1/notifications", body, expect=201)
    pushes = await push_server.wait_for(lambda: push_server.to("p-1"))
    assert [p.payload["id"] for p in pushes] == [later["id"]]
    assert muted["id"] not in {p.payload["id"] for p in push_server.accepted}
    # push off for everything: only critical gets through
    await api.call("PUT", "/v1/users/p-1/preferences", {"push": False}, key=token)
    await lab(api, "p-1", type="system_alert", data={})
    critical = await lab(api, "p-1", priority="critical")
    await push_server.wait_for(lambda: len(push_server.to("p-1")) == 2)
    assert push_server.to("p-1")[-1].payload["id"] == critical["id"]


async def test_quiet_hours_span_midnight_in_the_users_time_zone():
    quiet = {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
    at = datetime(2026, 12, 3, 21, 30, tzinfo=UTC)  # 22:30 in Berlin (UTC+1)
    assert quiet_until(quiet, at) == datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    assert quiet_until(quiet, datetime(2026, 12, 4, 5, 59, tzinfo=UTC)) == datetime(
        2026, 12, 4, 6, 0, tzinfo=UTC
    )
    assert quiet_until(quiet, datetime(2026, 12, 4, 6, 0, tzinfo=UTC)) is None
    assert quiet_until(quiet, datetime(2026, 12, 3, 20, 59, tzinfo=UTC)) is None
    # Summer time: 07:00 in Berlin is 05:00 UTC
    assert quiet_until(quiet, datetime(2026, 7, 1, 1, 0, tzinfo=UTC)) == datetime(
        2026, 7, 1, 5, 0, tzinfo=UTC
    )
    day = {"start": "09:00", "end": "17:00", "timezone": "America/New_York"}
    assert quiet_until(day, datetime(2026, 12, 3, 15, 0, tzinfo=UTC)) == datetime(
        2026, 12, 3, 22, 0, tzinfo=UTC
    )
    assert quiet_until(day, datetime(2026, 12, 3, 23, 0, tzinfo=UTC)) is None
    assert quiet_until(None, at) is None


@pytest.mark.slow  # quiet hours are minutes: it waits for the next one to begin (up to 70 s)
async def test_quiet_hours_defer_until_they_end_once_across_a_restart(
    settings, mongo_uri, push_server
):
    """Quiet hours ending at the next minute: the push waits for it, survives a restart."""
    running, api = await start(settings, mongo_uri, push_server)
    await subscribe(api, push_server, "p-1")
    now = datetime.now(UTC)
    if now.second >= 50:  # leave the test time to make its notification inside the span
        await asyncio.sleep(61 - now.second)
        now = datetime.now(UTC)
    end = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": end.strftime("%H:%M")}
    prefs = {"quiet_hours": {**quiet, "timezone": "UTC"}}
    await api.call("PUT", "/v1/users/p-1/preferences", prefs)
    sent = await lab(api, "p-1")
    critical = await lab(api, "p-1", priority="critical")  # ignores quiet hours
    await push_server.wait_for(lambda: push_server.to("p-1"))
    [deferred] = await timeline(api, sent["id"], "push_deferred")
    assert deferred["until"] == end.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    await running.stop()  # the deferred push is a queue entry: another node start sends it
    running, api = await start(settings, mongo_uri, push_server)
    try:
        await push_server.wait_for(lambda: len(push_server.to("p-1")) == 2, timeout=90)
        assert [p.payload["id"] for p in push_server.to("p-1")] == [critical["id"], sent["id"]]
        assert time.time() >= end.timestamp()
        await timeline(api, sent["id"], "push_sent")
        assert len(await timeline(api, sent["id"], "push_deferred")) == 1
        await lab(api, "p-1")  # a later push: the deferred one did not go out twice
        await push_server.wait_for(lambda: len(push_server.to("p-1")) == 3)
        assert [p.payload["id"] for p in push_server.to("p-1")].count(sent["id"]) == 1
    finally:
        await running.stop()


async def test_critical_ignores_every_preference(fast, push_server):
    _, api = fast
    await subscribe(api, push_server, "p-1")
    now = datetime.now(UTC)
    quiet = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=2)).strftime("%H:%M"),
        "timezone": "UTC",
    }
    prefs = {"push": False, "types": {"lab_result": {"push": False}}, "quiet_hours": quiet}
    await api.call("PUT", "/v1/users/p-1/preferences", prefs)
    sent = await lab(api, "p-1", priority="critical")
    [push] = await push_server.wait_for(lambda: push_server.to("p-1"))
    assert push.payload["id"] == sent["id"]


async def test_the_vapid_subject_is_required_outside_development():
    with pytest.raises(SystemExit, match="NOTIFY_VAPID_SUBJECT"):
        PushService.subject(Settings(env="production"))
    with pytest.raises(SystemExit, match="mailto"):
        PushService.subject(Settings(vapid_subject="http://clinic.example"))
    assert PushService.subject(Settings(env="production", vapid_subject="mailto:it@c.example"))
    assert PushService.subject(Settings()).startswith("mailto:")


async def test_the_dashboard_shows_devices_pushes_and_the_push_timeline(fast, push_server):
    running, api = fast
    await subscribe(api, push_server, "p-1", "phone")
    await subscribe(api, push_server, "p-1", "laptop")
    push_server.answer("laptop", 410)
    sent = await lab(api, "p-1")
    await timeline(api, sent["id"], "push_failed")
    await timeline(api, sent["id"], "push_sent")
    staff = running.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("nurse", "a-long-password-1", "staff", "test")
    browser = Browser(running.url)
    await browser.login("nurse", "a-long-password-1")
    history = text(await browser.get("/dashboard/history?user=p-1"))
    assert 'data-push-devices="1"' in history  # the laptop's subscription was gone (410)
    detail = text(await browser.get(f"/dashboard/history/{sent['id']}"))
    assert 'data-event="push_sent"' in detail and 'data-event="push_failed"' in detail
    overview = await running.node.dashboard.overview()
    assert overview["pushed_hour"] >= 1 and overview["push_failed_hour"] >= 1
    assert sum(p["pushed"] or 0 for p in overview["chart"]) >= 1
    page = text(await browser.get("/dashboard"))
    assert 'data-figure="pushed_minute"' in page and "legend-push_failed" in page


async def test_a_claim_starts_no_push_after_a_third_of_its_lease(settings, mongo_uri, push_server):
    """A batch whose pushes wait long for a slot leaves the rest to a later claim: none is
    lost, none sent twice, and the claim ends well within its lease."""
    running, api = await start(
        settings, mongo_uri, push_server, schedule_lease_seconds=0.9, push_concurrency=1
    )
    try:
        for name in ("d-1", "d-2", "d-3"):
            await subscribe(api, push_server, "p-1", name)
        push_server.hold()
        sent = await lab(api, "p-1", priority="critical")
        await push_server.wait_for(lambda: push_server.waiting == 1)
        held_since = time.monotonic()
        await push_server.wait_for(lambda: time.monotonic() - held_since > 0.5)  # deadline 0.3
        push_server.release()
        await push_server.wait_for(
            lambda: all(push_server.to(d) for d in ("d-1", "d-2", "d-3")), timeout=30
        )
        assert sorted(p.subscriber for p in push_server.attempts) == ["d-1", "d-2", "d-3"]
        events = await timeline(api, sent["id"], "push_sent", count=3)
        assert [e["attempt"] for e in events] == [1, 1, 1]
        # The held one went out under the first claim; the other two under entries of their
        # own (keys end in the attempt), queued when the first claim's time was up.
        keys = [
            e["_id"]
            async for e in running.node.notifications.timeline.collection.find(
                {"notification_id": sent["id"], "event": "push_sent"}
            )
        ]
        assert sorted(k.count(":") for k in keys) == [2, 3, 3], keys
    finally:
        await running.stop()
