"""Expiry (feed, replay, unread count, retention) and priority (critical first, unacknowledged)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from server.app.timeutil import as_datetime, iso, utcnow
from settings import Settings
from tests.support import Api, Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio


# Long enough for a few REST calls and a socket on a loaded machine before items expire;
# the test checks that it was (rather than failing on a wrong answer).
BEFORE_EXPIRY = 4.0


def later(seconds: float) -> str:
    return iso(utcnow() + timedelta(seconds=seconds))


def on_a_whole_second(at_least: float) -> datetime:
    """A time at least this far ahead, on a whole second.

    The embedded server compares dates to the whole second, so an item may leave a feed up
    to a second early (never late); an expiry on a whole second makes the tests exact.
    """
    ahead = utcnow() + timedelta(seconds=at_least + 1)
    return ahead.replace(microsecond=0)


async def _only(view: Api, notification_id: str) -> bool:
    return await feed_ids(view, "p-1") == [notification_id]


async def replayed(url: str, token: str, since: str = "0") -> tuple[dict, list[str]]:
    """Connect with ``since``; the welcome frame and the ids replayed before replay_done."""
    sock = await Socket.open(url, token, since=since)
    welcome = await sock.expect("welcome")
    await sock.expect("replay_done")
    ids = [f["notification"]["id"] for f in sock.frames if f["type"] == "notification"]
    sock.close()
    return welcome, ids


async def feed_ids(api: Api, user_id: str, **query) -> list[str]:
    page = await api.get(f"/v1/users/{user_id}/notifications", query=query or None)
    return [i["id"] for i in page["items"]]


# ---- expiry -----------------------------------------------------------------------------


async def test_expired_items_leave_feed_replay_and_unread_count(node, api):
    token = await api.token("p-1", ["patient"])
    user = Api(node.url, token)  # the patient's own view: roles from the token
    expiry = on_a_whole_second(BEFORE_EXPIRY)
    keep = await api.notify("p-1", "Stays")
    brief = await api.notify("p-1", "Goes", expires_at=iso(expiry))
    body = {"audience": "patient", "title": "Flu shots", "message": "m", "expires_at": iso(expiry)}
    shared = await api.post("/v1/broadcasts", body, expect=201)
    assert brief["expires_at"] == shared["expires_at"] == iso(expiry)
    everything = {keep["id"], brief["id"], shared["id"]}

    assert set(await feed_ids(user, "p-1")) == everything
    assert set(await feed_ids(user, "p-1", unread="true")) == everything
    assert (await user.get("/v1/users/p-1/unread-count"))["count"] == 3
    welcome, ids = await replayed(node.url, token)
    assert welcome["unread_count"] == 3 and set(ids) == everything
    # Now the patient has been seen, an API key's view includes the role broadcast too.
    assert set(await feed_ids(api, "p-1")) == everything

    assert utcnow() < expiry, "the machine took longer than BEFORE_EXPIRY for the checks above"
    await wait_for(lambda: _only(user, keep["id"]), what="the expiry")
    assert utcnow() >= expiry - timedelta(seconds=1)  # never early (to the whole second)
    for view in (user, api):
        assert await feed_ids(view, "p-1") == [keep["id"]]
        assert await feed_ids(view, "p-1", unread="true") == [keep["id"]]
        assert (await view.get("/v1/users/p-1/unread-count"))["count"] == 1
    welcome, ids = await replayed(node.url, token)
    assert welcome["unread_count"] == 1 and ids == [keep["id"]]
    # Reading everything counts only what is still visible.
    assert (await user.post("/v1/users/p-1/notifications/read-all"))["count"] == 1


async def test_marking_an_expired_item_read_changes_no_count(node, api):
    expiry = on_a_whole_second(0.0)
    brief = await api.notify("p-1", expires_at=iso(expiry))
    await wait_for(lambda: _feed_is_empty(api, "p-1"), what="the expiry")
    assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 0
    await api.post(f"/v1/users/p-1/notifications/{brief['id']}/read")
    assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 0


async def test_a_scheduled_notification_that_expired_unsent_is_dropped(node, api):
    sock = await Socket.open(node.url, await api.token("p-1"))
    await sock.expect("welcome")
    scheduler = node.node.scheduler
    await scheduler.stop()  # as if every node were down past its expiry
    # Its time a few seconds ahead: a slow request must not find it due already (that is
    # sent at once, scheduler or not).
    expires_at = on_a_whole_second(BEFORE_EXPIRY)
    created = await api.notify(
        "p-1", deliver_at=iso(expires_at - timedelta(seconds=1)), expires_at=iso(expires_at)
    )
    assert created["cursor"] is None, "scheduled, not sent at once: the request was too slow"
    await wait_for(lambda: utcnow() > expires_at, what="its expiry")  # every node still down
    scheduler.start()
    await wait_for(lambda: _no_entries(scheduler), what="the entry to be dropped")
    assert await node.node.store.notifications.find({"_id": created["id"]}).to_list() == []
    after = await api.notify("p-1", "sent after")  # the next frame: nothing came before it
    assert (await sock.expect("notification"))["notification"]["id"] == after["id"]


async def _no_entries(scheduler) -> bool:
    return not await scheduler.store.collection.find({"kind": "send"}).to_list()


async def test_retention_ttl_follows_the_setting(settings, mongo_uri):
    running = await serve_node(settings.with_(retention_days=7), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("t", ["notify"])
        api = Api(running.url, key)
        expires = utcnow() + timedelta(hours=2)
        dated = await api.notify("p-1", expires_at=iso(expires))
        plain = await api.notify("p-1")
        notifications = running.node.store.notifications
        indexes = await notifications.index_information()
        ttl = next(i for i in indexes.values() if i.get("expireAfterSeconds") is not None)
        assert ttl["key"] == [("purge_at", 1)] and ttl["expireAfterSeconds"] == 0
        docs = {d["_id"]: d for d in await notifications.find({}).to_list()}
        assert docs[dated["id"]]["purge_at"] == expires.replace(
            microsecond=expires.microsecond // 1000 * 1000
        ) + timedelta(days=7)
        assert docs[plain["id"]]["purge_at"] == docs[plain["id"]]["created_at"] + timedelta(days=7)
    finally:
        await running.stop()


# ---- priority ---------------------------------------------------------------------------


async def test_feed_pages_critical_first_then_newest_first(node, api):
    made = []
    for n, priority in enumerate(["normal", "critical", "low", "critical", "high", "critical"]):
        made.append(await api.notify("p-1", f"n{n}", priority=priority))
    body = {"audience": "all", "title": "Fire drill", "message": "m", "priority": "critical"}
    drill = await api.post("/v1/broadcasts", body, expect=201)
    critical = [drill["id"]] + [m["id"] for m in reversed(made) if m["priority"] == "critical"]
    rest = [m["id"] for m in reversed(made) if m["priority"] != "critical"]

    seen, tokens, before = [], [], None
    while True:
        query = {"limit": 3, **({"before": before} if before else {})}
        page = await api.get("/v1/users/p-1/notifications", query=query)
        seen += [i["id"] for i in page["items"]]
        before = page["next"]
        if before is None:
            break
        tokens.append(before)
    assert seen == critical + rest
    assert tokens[0].startswith("c.") and tokens[-1].startswith("n.")
    whole = await api.get("/v1/users/p-1/notifications", query={"limit": 50})
    assert [i["id"] for i in whole["items"]] == critical + rest and whole["next"] is None


async def test_feed_paging_exactly_at_the_section_boundary(node, api):
    c1 = await api.notify("p-1", "c1", priority="critical")
    c2 = await api.notify("p-1", "c2", priority="critical")
    n1 = await api.notify("p-1", "n1")
    first = await api.get("/v1/users/p-1/notifications", query={"limit": 2})
    assert [i["id"] for i in first["items"]] == [c2["id"], c1["id"]]
    assert first["next"] == f"c.{c1['cursor']}"
    second = await api.get(
        "/v1/users/p-1/notifications", query={"limit": 2, "before": first["next"]}
    )
    assert [i["id"] for i in second["items"]] == [n1["id"]] and second["next"] is None


async def test_unread_and_type_filters_page_across_sections(node, api):
    c1 = await api.notify("p-1", "c1", priority="critical")
    c2 = await api.notify("p-1", "c2", priority="critical")
    n1 = await api.notify("p-1", "n1")
    n2 = await api.notify("p-1", "n2")
    lab = {"user_id": "p-1", "type": "lab_result", "data": {"lab_result_id": "l-1"}}
    lab_c = await api.post("/v1/notifications", {**lab, "priority": "critical"}, expect=201)
    await api.post(f"/v1/users/p-1/notifications/{c2['id']}/read")
    await api.post(f"/v1/users/p-1/notifications/{n2['id']}/read")
    unread, before = [], None
    while True:
        query = {"limit": 1, "unread": "true", **({"before": before} if before else {})}
        page = await api.get("/v1/users/p-1/notifications", query=query)
        unread += [i["id"] for i in page["items"]]
        if (before := page["next"]) is None:
            break
    assert unread == [lab_c["id"], c1["id"], n1["id"]]
    assert await feed_ids(api, "p-1", type="lab_result") == [lab_c["id"]]
    assert await feed_ids(api, "p-1", type="custom", limit="2") == [c2["id"], c1["id"]]


@pytest.mark.parametrize("before", ["x.5", "c.", "c.-1", "5.5", "c.5.5", "n5", ""])
async def test_bad_page_tokens_are_refused(node, api, before):
    query = {"before": before}
    error = await api.get("/v1/users/p-1/notifications", query=query, expect=400)
    assert error["code"] == "validation_error"


async def test_a_plain_cursor_pages_the_normal_section(node, api):
    n1 = await api.notify("p-1", "n1")
    n2 = await api.notify("p-1", "n2")
    await api.notify("p-1", "c1", priority="critical")
    assert await feed_ids(api, "p-1", before=n2["cursor"]) == [n1["id"]]


@pytest.mark.filterwarnings("ignore::pytest.PytestWarning")
async def test_critical_ack_seconds_defaults_to_five_minutes():
    assert Settings().critical_ack_seconds == 300
    assert Settings.from_env({"NOTIFY_CRITICAL_ACK_SECONDS": "60"}).critical_ack_seconds == 60


async def test_unacknowledged_notifications(settings, mongo_uri):
    """Listed until a person acknowledges (a delivery receipt is not enough): critical
    ones by default, others that ask for it, none that opted out (CONTRACT §8)."""
    running = await serve_node(settings.with_(critical_ack_seconds=3600), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("t", ["notify", "broadcast", "tokens", "read"])
        api = Api(running.url, key)
        notifications = running.node.notifications
        assert notifications.critical_ack == timedelta(seconds=3600)  # the setting reaches it
        phone = await Socket.open(running.url, await api.token("p-1"))
        laptop = await Socket.open(running.url, await api.token("p-2"))
        await phone.expect("welcome")
        await laptop.expect("welcome")
        acked = await api.notify("p-1", "acked", priority="critical")
        received = await api.notify("p-2", "received", priority="critical")
        missed = await api.notify("p-2", "missed", ack_required=True)
        await api.notify("p-3", "normal one")
        await api.notify("p-3", "opted out", priority="critical", ack_required=False)
        body = {"audience": "all", "title": "b", "message": "m", "priority": "critical"}
        await api.post("/v1/broadcasts", body, expect=201)
        gone = await api.notify("p-4", "gone", priority="critical", expires_at=later(1))
        phone.send(
            {
                "type": "acknowledge",
                "id": (await phone.expect("notification"))["notification"]["id"],
            }
        )
        laptop.send(
            {"type": "ack", "id": (await laptop.expect("notification"))["notification"]["id"]}
        )
        scheduled = await api.notify("p-5", "later", priority="critical", deliver_at=later(3))
        assert await notifications.unacknowledged() == []  # none an hour old

        # Wait for what the clock and the sockets do; the age limit is then set around
        # the notifications' own times, so no assertion races the clock.
        await phone.expect("acknowledged")
        await wait_for(lambda: _delivered(api, "p-2", received["id"]), what="the receipt")
        await wait_for(lambda: _absent(api, "p-4", gone["id"]), what="the expiry")
        await wait_for(lambda: _present(api, "p-5", scheduled["id"]), what="the scheduled one")
        sent_at = as_datetime(scheduled["deliver_at"])
        # Older than the scheduled one's creation, younger than its sending: it is not
        # flagged, because its age counts from when it went out.
        notifications.critical_ack = utcnow() - sent_at + timedelta(seconds=1.5)
        flagged = await notifications.unacknowledged()
        assert [n["id"] for n in flagged] == [missed["id"], received["id"]]
        assert flagged[1]["delivered_at"] is not None and flagged[1]["priority"] == "critical"
        notifications.critical_ack = timedelta(0)
        flagged = await notifications.unacknowledged()
        # No expired one, no acknowledged one, none that opted out or never needed it.
        assert [n["id"] for n in flagged] == [scheduled["id"], missed["id"], received["id"]]
        assert [n["id"] for n in await notifications.unacknowledged(limit=1)] == [scheduled["id"]]
        assert acked["id"] not in [n["id"] for n in flagged]
    finally:
        await running.stop()


async def _delivered(api: Api, user_id: str, notification_id: str) -> bool:
    page = await api.get(f"/v1/users/{user_id}/notifications")
    return any(i["id"] == notification_id and i["delivered_at"] for i in page["items"])


async def _present(api: Api, user_id: str, notification_id: str) -> bool:
    return notification_id in await feed_ids(api, user_id)


async def _absent(api: Api, user_id: str, notification_id: str) -> bool:
    return notification_id not in await feed_ids(api, user_id)


async def _feed_is_empty(api: Api, user_id: str) -> bool:
    return await feed_ids(api, user_id) == []
