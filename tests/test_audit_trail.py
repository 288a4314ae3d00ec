"""The audit trail: who read whose notifications, sockets opened and closed, refusals."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from server.app.audit import Audit, page_key
from tests.support import Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio

SECRET_TITLE = "Biopsy result: malignant"
SECRET_MESSAGE = "Please call Dr. House about your CT scan"


async def entries(node, **query) -> list[dict]:
    await node.node.audit.flush()
    return list(reversed(await node.node.audit.recent(limit=1000, **query)))


async def test_reads_of_a_users_notifications_are_audited_with_who_and_where(node, api):
    key_id = (await node.node.store.list_api_keys())[0]["_id"]
    made = await api.notify("p-1", SECRET_TITLE, message=SECRET_MESSAGE)
    token = await api.token("p-1")
    await api.get("/v1/users/p-1/notifications")
    await api.get("/v1/users/p-1/unread-count", key=token)
    await api.post(f"/v1/users/p-1/notifications/{made['id']}/read", key=token)
    await api.post("/v1/users/p-1/notifications/read-all")

    found = [e for e in await entries(node) if e["action"].startswith("notifications.")]
    assert [(e["actor"], e["action"], e["target"]) for e in found] == [
        (f"api_key:{key_id}", "notifications.feed", "p-1"),
        ("user:p-1", "notifications.unread_count", "p-1"),
        ("user:p-1", "notifications.mark_read", "p-1"),
        (f"api_key:{key_id}", "notifications.mark_all_read", "p-1"),
    ]
    first = found[0]["detail"]
    assert first["ip"] == "127.0.0.1" and first["method"] == "GET" and first["status"] == 200
    assert first["path"] == "/v1/users/p-1/notifications" and first["key_name"] == "tests"
    assert first["request_id"]
    assert found[2]["detail"]["path"].endswith(f"/{made['id']}/read")


async def test_cross_user_attempts_are_refused_and_audited(node, api):
    intruder = await api.token("p-2")
    for method, path in [
        ("GET", "/v1/users/p-1/notifications"),
        ("GET", "/v1/users/p-1/unread-count"),
        ("POST", "/v1/users/p-1/notifications/read-all"),
        ("POST", "/v1/users/p-1/notifications/abc/read"),
    ]:
        await api.call(method, path, key=intruder, expect=403)
    notify_only, _ = await node.node.api_keys.create("narrow", ["notify"])
    await api.get("/v1/users/p-1/notifications", key=notify_only, expect=403)
    url = node.url.replace("http", "ws") + f"/v1/ws/notifications?token={intruder}&user_id=p-1"
    with pytest.raises(HTTPClientError):
        await websocket_connect(url)

    denied = await entries(node, action="access.denied")
    assert [(e["actor"], e["target"]) for e in denied[:4]] == [("user:p-2", "p-1")] * 4
    assert [e["detail"]["status"] for e in denied[:4]] == [403] * 4
    assert denied[4]["actor"].startswith("api_key:") and denied[4]["target"] == "p-1"
    assert denied[5]["actor"] == "user:p-2" and denied[5]["target"] == "p-1"
    assert denied[5]["detail"]["ip"] == "127.0.0.1"
    assert not await entries(node, action="notifications.feed")  # refused is not a read


async def test_sockets_opened_and_closed_are_audited_with_user_and_address(node, api):
    sock = await Socket.open(node.url, await api.token("p-7"))
    welcome = await sock.expect("welcome")
    sock.close()
    await wait_for(lambda: entries(node, action="socket.close"), what="the close's entry")
    opened = await entries(node, action="socket.open")
    closed = await entries(node, action="socket.close")
    assert [(e["actor"], e["target"]) for e in opened] == [("user:p-7", "p-7")]
    assert [(e["actor"], e["target"]) for e in closed] == [("user:p-7", "p-7")]
    for e in opened + closed:
        assert e["detail"]["ip"] == "127.0.0.1"
        assert e["detail"]["connection_id"] == welcome["connection_id"]
    assert closed[0]["at"] >= opened[0]["at"]


async def test_the_trail_never_holds_bodies_or_credentials(node, api, api_key):
    token = await api.token("p-1")
    sock = await Socket.open(node.url, token)
    await sock.expect("welcome")
    made = await api.notify("p-1", SECRET_TITLE, message=SECRET_MESSAGE, data={"dx": "C50.9"})
    await sock.expect("notification")
    await api.get("/v1/users/p-1/notifications", key=token)
    await api.get("/v1/users/p-2/notifications", key=token, expect=403)
    await api.post(f"/v1/users/p-1/notifications/{made['id']}/read")
    sock.close()
    await wait_for(lambda: entries(node, action="socket.close"), what="the close's entry")
    text = json.dumps(await entries(node), default=str)
    assert "notifications.feed" in text and "socket.open" in text
    for secret in (token, api_key, SECRET_TITLE, SECRET_MESSAGE, "C50.9"):
        assert secret not in text


async def test_entries_are_kept_for_the_retention_period_by_a_ttl_index(settings, mongo_uri):
    running = await serve_node(settings.with_(audit_retention_days=7), mongo_uri)
    try:
        audit: Audit = running.node.audit
        indexes = await audit.collection.index_information()
        ttl = [i for i in indexes.values() if i.get("expireAfterSeconds") is not None]
        assert [(i["key"], i["expireAfterSeconds"]) for i in ttl] == [([("purge_at", 1)], 0)]
        audit.note("user:p-1", "socket.open", "p-1")
        await audit.record("staff:ann", "staff.create", "bob", role="staff")
        for e in await entries(running):
            assert e["purge_at"] - e["at"] == timedelta(days=7)
    finally:
        await running.stop()


async def test_the_queue_of_entries_not_yet_written_is_bounded(settings, mongo_uri, monkeypatch):
    """``note`` never waits; past the bound the oldest waiting entries are dropped."""
    import server.app.audit as audit_module

    running = await serve_node(settings, mongo_uri)
    try:
        audit = running.node.audit
        monkeypatch.setattr(audit_module, "QUEUE_MAX", 5)
        for i in range(8):
            audit.note("user:p-1", "socket.open", f"p-{i}")
        await audit.flush()
        targets = [e["target"] for e in await entries(running)]
        assert targets == [f"p-{i}" for i in range(3, 8)]  # the oldest three were dropped
    finally:
        await running.stop()


async def test_stop_writes_what_is_queued(settings, mongo_uri):
    running = await serve_node(settings, mongo_uri)
    running.node.audit.note("user:p-1", "socket.close", "p-1")
    await running.stop()
    check = await serve_node(settings, mongo_uri)
    try:
        assert check.node is not running.node
        found = await check.node.audit.recent(action="socket.close")
        assert [e["target"] for e in found] == ["p-1"]
    finally:
        await check.stop()


async def test_pages_of_the_trail_skip_nothing_when_entries_share_a_moment(node):
    """Paging by time alone would skip the rest of a page's last millisecond (on MongoDB)
    or second (the embedded server compares dates to the second)."""
    audit: Audit = node.node.audit
    base = audit.entry("staff:ann", "staff.login", "", {})
    moments = [0, 0, 0, 1, 1, 250, 999, 999, 1000, 2000]  # ms after a whole second
    stored = []
    for i, offset in enumerate(moments):
        entry = {**base, "_id": f"{i:024x}", "target": f"t{i}"}
        entry["at_ms"] = base["at_ms"] // 1000 * 1000 + offset
        stored.append(entry)
    await audit.collection.insert_many(stored)
    newest_first = [e["target"] for e in sorted(stored, key=page_key, reverse=True)]
    for size in (1, 2, 3, 4):
        seen, before = [], None
        while True:
            page = await audit.recent(limit=size, before=before, action="staff.login")
            seen += [e["target"] for e in page]
            if len(page) < size:
                break
            before = page_key(page[-1])
        assert seen == newest_first, size  # every entry once, in order, whatever the size
