"""Outbound webhooks (CONTRACT §9) end to end: real nodes, a real receiver on 127.0.0.1.

The receiver (tests/webhook_receiver.py) verifies each request with the ``standardwebhooks``
package's verifier. Retry delays, the request timeout and the queue's poll are settings,
scaled down here; every wait polls for its condition.
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

import pytest
import pytest_asyncio

from server.app.outbound import BlockedAddress, PublicResolver, url_problem
from server.webhooks.events import EVENT_TYPES
from tests.conftest import ALL_SCOPES
from tests.support import Api, Socket, serve_node
from tests.webhook_receiver import Receiver, until

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parent.parent

FAST = {
    "outbound_allow_private": True,
    "webhook_retry_seconds": "0.2,0.2,0.2",
    "webhook_timeout_seconds": 3.0,
    "schedule_poll_seconds": 0.1,
    "schedule_lease_seconds": 2.0,
    "webhook_cache_seconds": 0.2,
}


@pytest_asyncio.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest_asyncio.fixture
async def wnode(settings, mongo_uri):
    """A node that may call 127.0.0.1, with fast retries."""
    running = await serve_node(settings.with_(**FAST), mongo_uri)
    yield running
    await running.stop()


@pytest_asyncio.fixture
async def wapi(wnode):
    key, _ = await wnode.node.api_keys.create("tests", ALL_SCOPES)
    return Api(wnode.url, key)


async def register(api: Api, receiver: Receiver, path: str, events=None, **behaviour) -> dict:
    """A receiver route and the webhook pointing at it (its secret given to the route)."""
    route = receiver.route(path, **behaviour)
    body = {"url": receiver.url(path), "events": events or list(EVENT_TYPES)}
    created = await api.post("/v1/webhooks", body, expect=201)
    route.secret = created["secret"]
    return created


async def read_one(api: Api, user: str = "p-1") -> str:
    """A notification, read: the ``read`` event it makes. Its id."""
    nid = (await api.notify(user, title="Potassium 6.1", data={"lab": "K+"}))["id"]
    await api.post(f"/v1/users/{user}/notifications/{nid}/read")
    return nid


async def deliveries(api: Api, hook: dict, **query) -> list[dict]:
    return (await api.get(f"/v1/webhooks/{hook['id']}/deliveries", query=query))["items"]


# ---- registration ---------------------------------------------------------------------------


async def test_register_shows_the_secret_once_and_never_logs_it(wapi, receiver, caplog):
    caplog.set_level(logging.DEBUG, logger="notify")
    body = {"url": receiver.url("a"), "events": ["notification.read"], "description": "EHR"}
    created = await wapi.post("/v1/webhooks", body, expect=201)
    assert set(created) == {"id", "url", "events", "secret", "description", "created_at"}
    assert created["url"] == receiver.url("a") and created["events"] == ["notification.read"]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]+=*", created["secret"])
    assert len(base64.b64decode(created["secret"][6:])) >= 24
    listed = (await wapi.get("/v1/webhooks"))["items"]
    assert [h["id"] for h in listed] == [created["id"]]
    assert "secret" not in listed[0] and listed[0]["description"] == "EHR"
    assert created["secret"] not in caplog.text
    assert created["secret"][6:] not in caplog.text
    assert (await wapi.delete(f"/v1/webhooks/{created['id']}")) == {"id": created["id"]}
    assert (await wapi.get("/v1/webhooks"))["items"] == []
    await wapi.delete(f"/v1/webhooks/{created['id']}", expect=404)
    await wapi.get(f"/v1/webhooks/{created['id']}/deliveries", expect=404)


BAD_WEBHOOKS = [
    ({}, "url"),
    ({"url": "https://example.com/h"}, "events"),
    ({"url": "https://example.com/h", "events": []}, "events"),
    ({"url": "https://example.com/h", "events": ["notification.sent"]}, "events"),
    ({"url": "https://example.com/h", "events": "notification.read"}, "events"),
    ({"url": "https://example.com/h", "events": ["notification.read"], "secret": "x"}, "secret"),
    ({"url": "https://example.com/h", "events": ["notification.read"], "description": 5},
     "description"),
    ({"url": "https://example.com/h", "events": ["notification.read"],
      "description": "x" * 501}, "description"),
    ({"url": "http://example.com/h", "events": ["notification.read"]}, "url"),
    ({"url": "https://127.0.0.1/h", "events": ["notification.read"]}, "url"),
    ({"url": "https://10.1.2.3/h", "events": ["notification.read"]}, "url"),
    ({"url": "https://[::1]/h", "events": ["notification.read"]}, "url"),
    ({"url": "https://169.254.169.254/latest", "events": ["notification.read"]}, "url"),
    ({"url": "https://localhost/h", "events": ["notification.read"]}, "url"),
    ({"url": "https://ehr.internal/h", "events": ["notification.read"]}, "url"),
    ({"url": "ftp://example.com/h", "events": ["notification.read"]}, "url"),
    ({"url": "https://user:pw@example.com/h", "events": ["notification.read"]}, "url"),
    ({"url": "https:///h", "events": ["notification.read"]}, "url"),
    ({"url": "https://example.com:99999/h", "events": ["notification.read"]}, "url"),
    ({"url": "not a url", "events": ["notification.read"]}, "url"),
    ({"url": "https://example.com/" + "a" * 2048, "events": ["notification.read"]}, "url"),
    ({"url": 7, "events": ["notification.read"]}, "url"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), BAD_WEBHOOKS)
async def test_bad_webhooks_are_400_and_store_nothing(api, body, field):
    error = await api.post("/v1/webhooks", body, expect=400)
    assert error["code"] == "validation_error" and field in error["fields"], error
    assert (await api.get("/v1/webhooks"))["items"] == []


async def test_bad_bodies_credentials_and_ids(api, node):
    for raw in (b"", b"[]", b"{", b'{"url": "https://example.com", "url": "x"}'):
        error = await api.call("POST", "/v1/webhooks", raw=raw, expect=400)
        assert error["code"] == "validation_error"
    notify_only, _ = await node.node.api_keys.create("notify", ["notify", "read"])
    good = {"url": "https://example.com/h", "events": ["notification.read"]}
    await api.post("/v1/webhooks", good, key=notify_only, expect=403)
    await api.get("/v1/webhooks", key=notify_only, expect=403)
    await api.post("/v1/webhooks", good, key="", expect=401)
    assert (await api.get("/v1/webhooks"))["items"] == []
    created = await api.post("/v1/webhooks", good, expect=201)  # https on a public name
    hook = f"/v1/webhooks/{created['id']}"
    await api.delete(hook, key=notify_only, expect=403)
    for query in ({"status": "lost"}, {"limit": "0"}, {"limit": "x"}, {"other": "1"}):
        await api.get(hook + "/deliveries", query=query, expect=400)
    await api.post(hook + "/deliveries/0123456789abcdef01234567/retry", expect=404)
    await api.post("/v1/webhooks/nope/deliveries/0123456789abcdef01234567/retry", expect=404)
    await api.delete("/v1/webhooks/-bad", expect=404)


async def test_urls_are_public_https_unless_private_is_allowed():
    assert url_problem("https://example.com/hook?x=1", False) is None
    assert url_problem("https://93.184.215.14:8443/h", False) is None
    for url in ("http://example.com", "https://192.168.1.5", "https://[::ffff:10.0.0.1]/",
                "https://100.64.0.1/", "https://0.0.0.0/", "https://intranet/"):  # fmt: skip
        assert url_problem(url, False) is not None, url
    assert url_problem("http://127.0.0.1:8080/h", True) is None
    assert url_problem("ftp://127.0.0.1/h", True) is not None


async def test_names_are_checked_when_sent_against_dns_rebinding():
    """The resolver the client connects through drops loopback and private addresses."""
    with pytest.raises(BlockedAddress):
        await PublicResolver(allow_private=False).resolve("localhost", 443)
    assert await PublicResolver(allow_private=True).resolve("localhost", 443)


# ---- deliveries -----------------------------------------------------------------------------


async def test_an_event_arrives_signed_without_health_information(wapi, receiver):
    hook = await register(wapi, receiver, "a", ["notification.read"])
    nid = await read_one(wapi)
    route = receiver.routes["a"]
    await until(lambda: route.ok_ids())
    got = route.requests[0]
    assert got.verified
    assert got.body["type"] == "notification.read"
    data = got.body["data"]
    assert data["notification_id"] == nid and data["user_id"] == "p-1"
    assert data["type"] == "custom" and data["priority"] == "normal" and data["at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", got.body["timestamp"])
    text = repr(got.body)
    assert "Potassium" not in text and "K+" not in text and "title" not in data
    listed = await until(lambda: _with_status(deliveries(wapi, hook), "succeeded"), timeout=10)
    assert listed[0]["webhook_id"] == got.webhook_id
    assert listed[0]["attempts"] == 1 and listed[0]["last_status"] == 204
    assert listed[0]["notification_id"] == nid and listed[0]["next_attempt_at"] is None


async def _with_status(pending, status: str) -> list[dict] | None:
    items = await pending
    return items if items and all(d["status"] == status for d in items) else None


async def test_the_documented_plain_hmac_check_accepts_a_real_request(wapi, receiver):
    """docs/webhooks.md's standard-library example, run on what the service really sent."""
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def verify" in b)
    space: dict = {}
    exec(compile(example, "docs/webhooks.md", "exec"), space)  # noqa: S102 - our own docs
    hook = await register(wapi, receiver, "doc", ["notification.read"])
    await read_one(wapi)
    route = receiver.routes["doc"]
    await until(lambda: route.ok_ids())
    got = route.requests[0]
    assert space["verify"](hook["secret"], got.headers, got.raw)
    assert not space["verify"](hook["secret"], got.headers, got.raw + b" ")
    other = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert not space["verify"](other, got.headers, got.raw)


async def test_only_subscribed_types_and_the_first_delivered_are_sent(wnode, wapi, receiver):
    await register(wapi, receiver, "d", ["notification.delivered"])
    await register(wapi, receiver, "r", ["notification.read"])
    nid = (await wapi.notify("p-2"))["id"]
    token = await wapi.token("p-2")
    sockets = [await Socket.open(wnode.url, token) for _ in range(2)]
    for sock in sockets:
        await sock.expect("welcome")
        sock.send({"type": "ack", "id": nid})
    await until(lambda: receiver.routes["d"].ok_ids())
    detail = await until(lambda: _delivered_twice(wapi, nid))
    assert len([e for e in detail if e["event"] == "delivered"]) == 2
    await wapi.post(f"/v1/users/p-2/notifications/{nid}/read")
    await until(lambda: receiver.routes["r"].ok_ids())
    for sock in sockets:
        sock.close()
    assert [r.body["type"] for r in receiver.routes["d"].requests] == ["notification.delivered"]
    assert [r.body["type"] for r in receiver.routes["r"].requests] == ["notification.read"]
    assert "connection_id" in receiver.routes["d"].requests[0].body["data"]


async def _delivered_twice(api: Api, nid: str) -> list[dict] | None:
    timeline = (await api.get(f"/v1/notifications/{nid}"))["timeline"]
    return timeline if sum(e["event"] == "delivered" for e in timeline) == 2 else None


async def test_every_event_type_maps_from_the_timeline(wnode, wapi, receiver):
    """acknowledged, escalated and push_failed come from other capabilities' timeline events."""
    await register(wapi, receiver, "all")
    nid = (await wapi.notify("p-3", priority="critical"))["id"]
    timeline = wnode.node.notifications.timeline
    await timeline.record(nid, "acknowledged", by="p-3", note="called the lab, K+ recheck")
    await timeline.record(nid, "escalated", level=1, to={"role": "nurse"})
    await timeline.record(nid, "push_failed", subscription_id="s1", status=410)
    await timeline.record(nid, "push_sent", subscription_id="s1", status=201)  # no webhook
    await timeline.record(nid, "expired", key=f"{nid}:expired", unacknowledged=True)
    other = (await wapi.notify("p-3"))["id"]
    await timeline.record(other, "expired")  # expired, not unacknowledged: no webhook
    route = receiver.routes["all"]
    await until(lambda: len(route.ok_ids()) == 4)
    by_type = {r.body["type"]: r.body["data"] for r in route.requests}
    assert set(by_type) == {
        "notification.acknowledged", "notification.escalated", "notification.push_failed",
        "notification.expired_unacknowledged",
    }  # fmt: skip
    assert by_type["notification.expired_unacknowledged"]["notification_id"] == nid
    assert {r.body["data"]["notification_id"] for r in route.requests} == {nid}
    assert by_type["notification.acknowledged"]["by"] == "p-3"
    assert "note" not in by_type["notification.acknowledged"]  # free text stays inside
    assert by_type["notification.escalated"]["level"] == 1
    assert by_type["notification.escalated"]["to"] == {"role": "nurse"}
    assert by_type["notification.push_failed"]["status"] == 410
    assert all(r.verified for r in route.requests)


async def test_retries_keep_the_webhook_id_until_success(wapi, receiver):
    hook = await register(wapi, receiver, "flaky", ["notification.read"], fail_next=2)
    await read_one(wapi)
    route = receiver.routes["flaky"]
    await until(lambda: route.ok_ids())
    assert len(route.requests) == 3 and len(route.ids()) == 1
    assert [r.answered for r in route.requests] == [500, 500, 204]
    assert len({r.timestamp for r in route.requests}) >= 1 and all(
        r.verified for r in route.requests
    )
    done = await until(lambda: _with_status(deliveries(wapi, hook), "succeeded"))
    assert done[0]["attempts"] == 3 and done[0]["last_status"] == 204


async def test_the_last_failure_is_failed_recorded_and_retried_by_hand(wnode, wapi, receiver):
    from server.webhooks.metrics import ATTEMPTS, DELIVERIES

    failed_before = DELIVERIES.labels("failed")._value.get()
    http_errors_before = ATTEMPTS.labels("http_error")._value.get()
    hook = await register(wapi, receiver, "down", ["notification.read"], fail_next=100)
    nid = await read_one(wapi)
    failed = await until(lambda: _with_status(deliveries(wapi, hook), "failed"))
    assert failed[0]["attempts"] == 4 and failed[0]["last_status"] == 500  # 1 + 3 retries
    assert failed[0]["next_attempt_at"] is None
    route = receiver.routes["down"]
    assert len(route.requests) == 4 and len(route.ids()) == 1
    assert await deliveries(wapi, hook, status="failed") == failed
    assert await deliveries(wapi, hook, status="succeeded") == []
    timeline = (await wapi.get(f"/v1/notifications/{nid}"))["timeline"]
    lost = [e for e in timeline if e["event"] == "webhook_failed"]
    assert len(lost) == 1 and lost[0]["delivery_id"] == failed[0]["id"]
    assert DELIVERIES.labels("failed")._value.get() == failed_before + 1
    assert ATTEMPTS.labels("http_error")._value.get() == http_errors_before + 4
    metrics = (await wapi.client.fetch(wnode.url + "/metrics")).body.decode()
    assert 'notify_webhook_deliveries_total{outcome="failed"}' in metrics

    retry = f"/v1/webhooks/{hook['id']}/deliveries/{failed[0]['id']}/retry"
    assert (await wapi.post(retry, expect=202))["id"] == failed[0]["id"]
    await until(lambda: len(route.requests) == 5)
    again = await until(lambda: _attempts(deliveries(wapi, hook), 5))
    assert again[0]["status"] == "failed" and len(route.ids()) == 1  # one attempt, still failed
    route.fail_next = 0
    await wapi.post(retry, expect=202)
    done = await until(lambda: _with_status(deliveries(wapi, hook), "succeeded"))
    assert done[0]["attempts"] == 6 and route.ok_ids() == [failed[0]["webhook_id"]]
    error = await wapi.post(retry, expect=409)  # only a failed delivery is retried
    assert error["code"] == "conflict"


async def _attempts(pending, n: int) -> list[dict] | None:
    items = await pending
    return items if items and items[0]["attempts"] == n else None


async def test_a_hanging_endpoint_never_delays_another(settings, mongo_uri, receiver):
    node = await serve_node(
        settings.with_(**{**FAST, "webhook_timeout_seconds": 30.0, "webhook_concurrency": 2}),
        mongo_uri,
    )
    try:
        key, _ = await node.node.api_keys.create("tests", ALL_SCOPES)
        api = Api(node.url, key)
        await register(api, receiver, "dead", ["notification.read"], hang_next=1000)
        await register(api, receiver, "live", ["notification.read"])
        for i in range(6):
            await read_one(api, f"p-{i}")
        live, dead = receiver.routes["live"], receiver.routes["dead"]
        await until(lambda: len(live.ok_ids()) == 6)
        await until(lambda: dead.in_flight == 2)
        # Everything reached the live endpoint while the dead one holds its requests (none
        # answered, none timed out: that takes 30 s), never more than its share at once.
        assert dead.most_in_flight == 2 and len(dead.requests) == 2
        assert all(r.answered is None for r in dead.requests)
        ping = await api.client.fetch(node.url + "/healthz")  # the loop is free
        assert ping.code == 200
    finally:
        await node.stop()


async def test_each_event_is_sent_once_by_one_of_three_nodes(settings, mongo_uri, receiver):
    nodes = [await serve_node(settings.with_(**FAST, node_id=f"n{i}"), mongo_uri) for i in range(3)]
    try:
        key, _ = await nodes[0].node.api_keys.create("tests", ALL_SCOPES)
        apis = [Api(n.url, key) for n in nodes]
        await register(apis[0], receiver, "x", ["notification.read", "notification.delivered"])
        ids = []
        for i in range(9):
            ids.append(await read_one(apis[i % 3], f"u-{i}"))
        route = receiver.routes["x"]
        await until(lambda: len(route.ok_ids()) >= 9)
        sent_for = sorted(r.body["data"]["notification_id"] for r in route.requests)
        assert sent_for == sorted(ids) and all(n == 1 for n in route.ids().values())
        # one notification acknowledged by sockets on all three nodes: one delivered event
        nid = (await apis[0].notify("u-all"))["id"]
        token = await apis[0].token("u-all")
        socks = [await Socket.open(n.url, token) for n in nodes]
        for sock in socks:
            await sock.expect("welcome")
            sock.send({"type": "ack", "id": nid})
        await until(lambda: any(r.body["type"] == "notification.delivered" for r in route.requests))
        await until(lambda: _delivered_count(apis[0], nid, 3))
        for sock in socks:
            sock.close()
        delivered = [r for r in route.requests if r.body["type"] == "notification.delivered"]
        assert len(delivered) == 1 and all(n == 1 for n in route.ids().values())
    finally:
        for n in nodes:
            await n.stop()


async def _delivered_count(api: Api, nid: str, n: int) -> bool:
    timeline = (await api.get(f"/v1/notifications/{nid}"))["timeline"]
    return sum(e["event"] == "delivered" for e in timeline) == n


async def test_a_webhook_made_on_one_node_is_heard_on_another(settings, mongo_uri, receiver):
    first = await serve_node(settings.with_(**FAST, node_id="a"), mongo_uri)
    second = await serve_node(settings.with_(**FAST, node_id="b"), mongo_uri)
    try:
        key, _ = await first.node.api_keys.create("tests", ALL_SCOPES)
        api_a, api_b = Api(first.url, key), Api(second.url, key)
        await read_one(api_b, "before")  # the second node caches "no webhooks"
        hook = await register(api_a, receiver, "late", ["notification.read"])
        route = receiver.routes["late"]

        async def event_arrives() -> bool:
            await read_one(api_b, "after")
            return bool(route.ok_ids())

        await until(event_arrives, timeout=10, every=0.2)  # within the cache's seconds
        await api_a.delete(f"/v1/webhooks/{hook['id']}")
        assert all(r.verified for r in route.requests)
    finally:
        await second.stop()
        await first.stop()


# ---- the dashboard --------------------------------------------------------------------------


async def test_the_dashboard_lists_failed_deliveries_and_retries_them(wnode, wapi, receiver):
    from tests.test_dashboard import ADMIN_PASSWORD, FAST_HASHER, NURSE_PASSWORD, Browser

    staff = wnode.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("boss", ADMIN_PASSWORD, "admin", "test")
    await staff.create("nurse", NURSE_PASSWORD, "staff", "test")
    hook = await register(wapi, receiver, "page", ["notification.read"], fail_next=100)
    hook["description"] = None
    await read_one(wapi)
    failed = (await until(lambda: _with_status(deliveries(wapi, hook), "failed")))[0]
    admin = Browser(wnode.url)
    await admin.login("boss", ADMIN_PASSWORD)
    page = (await admin.get("/dashboard/webhooks")).body.decode()
    assert receiver.url("page") in page and failed["webhook_id"] in page
    action = f"/dashboard/webhooks/{hook['id']}/deliveries/{failed['id']}/retry"
    assert f'action="{action}"' in page and 'name="_xsrf"' in page
    assert hook["secret"] not in page
    assert (await admin.post(action, xsrf=False)).code == 403  # no XSRF token, no retry
    nurse = Browser(wnode.url)
    await nurse.login("nurse", NURSE_PASSWORD)
    assert (await nurse.post(action)).code == 403  # admins only
    route = receiver.routes["page"]
    assert len(route.requests) == 4
    route.fail_next = 0
    resp = await admin.post(action)
    assert resp.code == 302 and resp.headers["Location"] == "/dashboard/webhooks"
    done = await until(lambda: _with_status(deliveries(wapi, hook), "succeeded"))
    assert done[0]["attempts"] == 5 and route.ok_ids() == [failed["webhook_id"]]
    page = (await admin.get("/dashboard/webhooks")).body.decode()
    assert "The delivery is being sent again." in page and "No failed deliveries." in page
    entries = await wnode.node.audit.collection.find({"action": "webhook.retry"}).to_list()
    assert [e["target"] for e in entries] == [failed["id"]]
    again = await admin.post(action)  # no longer failed: said so, nothing sent
    assert again.code == 302 and len(route.requests) == 5


async def test_real_delivery_answers_match_the_openapi_document(wnode, wapi, receiver):
    import json

    from server.app import openapi
    from tests.test_openapi import Checker

    check = Checker(json.loads(openapi.document()), wnode.url)
    hook = await register(wapi, receiver, "doc-check", ["notification.read"], fail_next=100)
    await read_one(wapi)
    failed = await until(lambda: _with_status(deliveries(wapi, hook), "failed"))
    listed = "/v1/webhooks/{webhook_id}/deliveries"
    code, out = await check.call("get", listed, f"/v1/webhooks/{hook['id']}/deliveries", wapi.key)
    assert code == 200 and out["data"]["items"][0]["last_status"] == 500
    retry = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"
    url = f"/v1/webhooks/{hook['id']}/deliveries/{failed[0]['id']}/retry"
    receiver.routes["doc-check"].fail_next = 0
    code, out = await check.call("post", retry, url, wapi.key)
    assert code == 202 and out["data"]["webhook_id"] == failed[0]["webhook_id"]
    await until(lambda: _with_status(deliveries(wapi, hook), "succeeded"))
    code, out = await check.call("post", retry, url, wapi.key)
    assert code == 409 and out["error"]["code"] == "conflict"


async def test_escalation_acknowledgement_and_expiry_reach_webhooks(wnode, wapi, receiver):
    """The real paths: a ladder step, a REST acknowledgement, an unacknowledged expiry."""
    from datetime import UTC, datetime, timedelta

    kinds = ["notification.acknowledged", "notification.escalated",
             "notification.expired_unacknowledged"]  # fmt: skip
    await register(wapi, receiver, "esc", kinds)
    ladder = [{"after_seconds": 1, "to_role": "nurse"}]
    climbing = await wapi.notify("p-9", "K+ 6.9", priority="critical", escalation=ladder)
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    expiring = await wapi.notify("p-9", "confirm", ack_required=True, expires_at=soon)
    acked = await wapi.notify("p-9", "read me", ack_required=True)
    await wapi.post(
        f"/v1/users/p-9/notifications/{acked['id']}/acknowledge", {"note": "K+ rechecked"}
    )
    route = receiver.routes["esc"]

    def seen() -> dict[str, dict]:
        return {
            (r.body["type"], r.body["data"]["notification_id"]): r.body["data"]
            for r in route.requests
            if r.answered == 204
        }

    await until(lambda: len(seen()) >= 3, timeout=20)
    got = seen()
    escalated = got[("notification.escalated", climbing["id"])]
    assert escalated["level"] == 1 and escalated["to"] == {"role": "nurse"}
    assert escalated["priority"] == "critical" and "title" not in escalated
    ack = got[("notification.acknowledged", acked["id"])]
    assert ack["by"] == "key:tests" and "note" not in ack
    assert ("notification.expired_unacknowledged", expiring["id"]) in got
    assert all(r.verified for r in route.requests)
    assert "K+" not in repr([r.body for r in route.requests])


@pytest.mark.parametrize("bad", ["5,x", "-1", "5,,nan", "1e9", ",".join(["1"] * 21)])
async def test_a_malformed_retry_list_stops_start_up_with_a_sentence(settings, bad):
    with pytest.raises(SystemExit, match="NOTIFY_WEBHOOK_RETRY_SECONDS"):
        _ = settings.with_(webhook_retry_seconds=bad).webhook_retries
    assert settings.with_(webhook_retry_seconds="").webhook_retries == ()
    assert settings.webhook_retries == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)


async def test_a_real_failed_push_reaches_webhooks(wnode, wapi, receiver):
    """The push service (tests/pushservice.py) answers 410: push_failed, then the webhook."""
    from tests.pushservice import PushServer

    push_server = await PushServer().start()
    try:
        await register(wapi, receiver, "push", ["notification.push_failed"])
        sub = push_server.add("phone")
        push_server.answer("phone", 410)
        await wapi.post("/v1/users/p-7/push-subscriptions", sub.subscription(), expect=201)
        nid = (await wapi.notify("p-7", "Call the ward", priority="critical"))["id"]
        route = receiver.routes["push"]
        await until(lambda: route.ok_ids(), timeout=20)
        got = route.requests[0]
        assert got.verified and got.body["type"] == "notification.push_failed"
        data = got.body["data"]
        assert data["notification_id"] == nid and data["priority"] == "critical"
        assert data.get("status") == 410 and "Call the ward" not in repr(got.body)
        timeline = (await wapi.get(f"/v1/notifications/{nid}"))["timeline"]
        assert any(e["event"] == "push_failed" for e in timeline)
    finally:
        await push_server.stop()
