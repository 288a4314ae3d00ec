"""REST routes of the contract: success, envelopes, bad inputs, scopes and cross-user access."""

from __future__ import annotations

import jwt
import pytest

from tests.support import TOKEN_SECRET, Api

pytestmark = pytest.mark.asyncio

APPOINTMENT = {
    "user_id": "p-1001",
    "type": "appointment",
    "data": {"appointment_id": "a-77", "status": "confirmed", "starts_at": "2026-12-02T09:30:00Z"},
}


async def count_stored(node) -> int:
    return len(await node.node.store.notifications.find({}, {"_id": 1}).to_list())


# ---- creating ------------------------------------------------------------------------


async def test_create_appointment_with_default_title(api):
    n = await api.post("/v1/notifications", APPOINTMENT, expect=201)
    assert n["title"] == "Appointment confirmed"
    assert n["user_id"] == "p-1001" and n["type"] == "appointment" and n["priority"] == "normal"
    assert n["data"]["starts_at"] == "2026-12-02T09:30:00.000Z"
    assert n["created_at"].endswith("Z") and n["cursor"].isdigit()
    assert n["read_at"] is None and n["delivered_at"] is None and n["expires_at"] is None


@pytest.mark.parametrize(
    "kind, data, title",
    [
        ("lab_result", {"lab_result_id": "l-1", "test_name": "CBC"}, "Lab results ready"),
        (
            "ai_analysis",
            {"analysis_id": "x-1", "analysis_type": "symptoms"},
            "AI analysis complete",
        ),
        ("system_alert", {"maintenance": True}, "System alert"),
        ("appointment", {"appointment_id": "a", "status": "cancelled"}, "Appointment cancelled"),
    ],
)
async def test_default_titles_by_type(api, kind, data, title):
    n = await api.post(
        "/v1/notifications", {"user_id": "p-1", "type": kind, "data": data}, expect=201
    )
    assert n["title"] == title


async def test_create_for_many_users_returns_every_stored_notification(api, node):
    body = {
        "user_ids": ["p-1", "p-2", "p-3"],
        "type": "custom",
        "title": "Flu shots",
        "message": "m",
    }
    made = await api.post("/v1/notifications", body, expect=201)
    assert [n["user_id"] for n in made] == ["p-1", "p-2", "p-3"]
    assert len({n["id"] for n in made}) == 3
    assert await count_stored(node) == 3


@pytest.mark.parametrize(
    "body, field",
    [
        ({"type": "custom", "title": "t"}, "user_id"),
        ({**APPOINTMENT, "user_ids": ["a"]}, "user_id"),
        ({"user_id": "p-1", "type": "nope", "title": "t"}, "type"),
        ({"user_id": "p-1", "title": "t"}, "type"),
        ({"user_id": "p-1", "type": "custom"}, "title"),
        ({"user_id": "p-1", "type": "custom", "title": ""}, "title"),
        ({"user_id": "p-1", "type": "custom", "title": "x" * 201}, "title"),
        ({"user_id": {"$gt": ""}, "type": "custom", "title": "t"}, "user_id"),
        ({"user_id": "p 1", "type": "custom", "title": "t"}, "user_id"),
        ({"user_id": 5, "type": "custom", "title": "t"}, "user_id"),
        ({"user_ids": [], "type": "custom", "title": "t"}, "user_ids"),
        ({"user_ids": ["ok", {"$ne": 1}], "type": "custom", "title": "t"}, "user_ids"),
        ({"user_ids": [f"u{i}" for i in range(1001)], "type": "custom", "title": "t"}, "user_ids"),
        ({"user_id": "p-1", "type": "custom", "title": "t", "priority": "urgent"}, "priority"),
        ({"user_id": "p-1", "type": "custom", "title": "t", "surprise": 1}, "surprise"),
        ({"user_id": "p-1", "type": "custom", "title": "t", "data": []}, "data"),
        ({"user_id": "p-1", "type": "custom", "title": "t", "data": {"$set": {"a": 1}}}, "data"),
        ({"user_id": "p-1", "type": "custom", "title": "t", "data": {"b": "x" * 17000}}, "data"),
        ({"user_id": "p-1", "type": "appointment", "data": {"status": "confirmed"}}, "data"),
        (
            {
                "user_id": "p-1",
                "type": "appointment",
                "data": {"appointment_id": "a", "status": "maybe"},
            },
            "data",
        ),
        (
            {
                "user_id": "p-1",
                "type": "appointment",
                "data": {"appointment_id": "a", "status": "confirmed", "x": 1},
            },
            "data",
        ),
        ({"user_id": "p-1", "type": "lab_result", "data": {}}, "data"),
        ({"user_id": "p-1", "type": "ai_analysis", "data": {"analysis_id": "a"}}, "data"),
        (
            {"user_id": "p-1", "type": "custom", "title": "t", "expires_at": "2026-13-01"},
            "expires_at",
        ),
        (
            {"user_id": "p-1", "type": "custom", "title": "t", "expires_at": "2026-12-01T10:00:00"},
            "expires_at",
        ),
        ({"user_id": "p-1", "type": "custom", "title": "t", "message": 7}, "message"),
    ],
)
async def test_bad_notifications_are_400_and_store_nothing(api, node, body, field):
    err = await api.post("/v1/notifications", body, expect=400)
    assert err["code"] == "validation_error"
    assert field in err["fields"], err
    assert await count_stored(node) == 0


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[1, 2]", b'"text"', b"{", b"\xff\xfe", b"[" * 5000 + b"]" * 5000]
)
async def test_bodies_that_are_not_json_objects_are_400(api, node, raw):
    err = await api.post("/v1/notifications", raw=raw, expect=400)
    assert err["code"] == "validation_error"
    assert await count_stored(node) == 0


async def test_oversized_body_is_413(api, node):
    big = {"user_id": "p-1", "type": "custom", "title": "t", "message": "x" * 1_100_000}
    err = await api.post("/v1/notifications", big, expect=413)
    assert err["code"] == "payload_too_large"
    assert await count_stored(node) == 0


# ---- credentials and scopes -------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, body, scope",
    [
        ("POST", "/v1/tokens", {"user_id": "p-1"}, "tokens"),
        ("POST", "/v1/notifications", APPOINTMENT, "notify"),
        ("POST", "/v1/broadcasts", {"audience": "all", "title": "t", "message": "m"}, "broadcast"),
        ("GET", "/v1/presence?user_ids=a", None, "read"),
        ("GET", "/v1/ws/stats", None, "read"),
        (
            "POST",
            "/v1/ws/test-notification",
            {"user_id": "a", "title": "t", "message": "m"},
            "notify",
        ),
        ("DELETE", "/v1/notifications/abc", None, "notify"),
        ("GET", "/v1/users/p-1/notifications", None, "read"),
    ],
)
async def test_each_route_needs_a_credential_and_its_scope(node, method, path, body, scope):
    anonymous = Api(node.url)
    err = await anonymous.call(method, path, body, expect=401)
    assert err["code"] == "unauthorized"
    wrong = await anonymous.call(method, path, body, key="nk_not-a-real-key", expect=401)
    assert wrong["code"] == "unauthorized"
    others = [s for s in ("notify", "broadcast", "tokens", "read") if s != scope]
    key, _ = await node.node.api_keys.create("narrow", others[:1])
    err = await anonymous.call(method, path, body, key=key, expect=403)
    assert err["code"] == "forbidden"


async def test_admin_scope_covers_every_scope(node):
    key, _ = await node.node.api_keys.create("admin", ["admin"])
    api = Api(node.url, key)
    made = await api.post("/v1/notifications", APPOINTMENT, expect=201)  # notify
    body = {"audience": "all", "title": "t", "message": "m"}
    await api.post("/v1/broadcasts", body, expect=201)  # broadcast
    await api.post("/v1/tokens", {"user_id": "p-1"}, expect=201)  # tokens
    await api.get("/v1/ws/stats")  # read
    await api.get(f"/v1/users/{made['user_id']}/unread-count")
    await api.delete("/v1/notifications/no-such-id", expect=404)  # notify: past the scope check


async def test_revoked_key_is_refused(node):
    key, record = await node.node.api_keys.create("old", ["read"])
    api = Api(node.url, key)
    await api.get("/v1/ws/stats")
    await node.node.store.revoke_api_key(record["_id"], record["created_at"])
    assert (await api.get("/v1/ws/stats", expect=401))["code"] == "unauthorized"


# ---- tokens -----------------------------------------------------------------------------


async def test_minted_token_carries_the_claims(api):
    data = await api.post(
        "/v1/tokens", {"user_id": "p-1", "roles": ["patient"], "ttl_seconds": 120}, expect=201
    )
    claims = jwt.decode(data["token"], TOKEN_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "p-1" and claims["roles"] == ["patient"]
    assert claims["exp"] - claims["iat"] == 120
    assert data["expires_at"].endswith("Z")


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "p-1", "roles": "patient"}, "roles"),
        ({"user_id": "p-1", "roles": ["Not A Role"]}, "roles"),
        ({"user_id": "p-1", "ttl_seconds": 5}, "ttl_seconds"),
        ({"user_id": "p-1", "ttl_seconds": "60"}, "ttl_seconds"),
        ({"user_id": "p-1", "admin": True}, "admin"),
    ],
)
async def test_bad_token_requests(api, body, field):
    err = await api.post("/v1/tokens", body, expect=400)
    assert field in err["fields"]


# ---- the feed, unread count and read state ----------------------------------------------


async def test_feed_newest_first_with_paging_and_filters(api):
    made = [await api.notify("p-1", f"n{i}") for i in range(5)]
    lab = await api.post(
        "/v1/notifications",
        {"user_id": "p-1", "type": "lab_result", "data": {"lab_result_id": "l1"}},
        expect=201,
    )
    page = await api.get("/v1/users/p-1/notifications", query={"limit": 4})
    assert [n["id"] for n in page["items"]] == [lab["id"]] + [m["id"] for m in made[::-1][:3]]
    rest = await api.get("/v1/users/p-1/notifications", query={"limit": 4, "before": page["next"]})
    assert [n["id"] for n in rest["items"]] == [m["id"] for m in made[1::-1]]
    assert rest["next"] is None
    labs = await api.get("/v1/users/p-1/notifications", query={"type": "lab_result"})
    assert [n["id"] for n in labs["items"]] == [lab["id"]]
    await api.post(f"/v1/users/p-1/notifications/{made[0]['id']}/read")
    unread = await api.get("/v1/users/p-1/notifications", query={"unread": "true"})
    assert made[0]["id"] not in [n["id"] for n in unread["items"]] and len(unread["items"]) == 5


@pytest.mark.parametrize(
    "query, field",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"type": "nope"}, "type"),
        ({"unread": "maybe"}, "unread"),
        ({"before": "abc"}, "before"),
        ({"before": "x.5"}, "before"),
        ({"sort": "asc"}, "sort"),
    ],
)
async def test_bad_feed_queries(api, query, field):
    err = await api.get("/v1/users/p-1/notifications", query=query, expect=400)
    assert field in err["fields"]


async def test_unread_count_read_and_read_all(api):
    a = await api.notify("p-1", "a")
    await api.notify("p-1", "b")
    await api.notify("p-2", "other user")
    assert (await api.get("/v1/users/p-1/unread-count")) == {"count": 2}
    read = await api.post(f"/v1/users/p-1/notifications/{a['id']}/read")
    assert read["id"] == a["id"] and read["read_at"] is not None
    again = await api.post(f"/v1/users/p-1/notifications/{a['id']}/read")
    assert again["read_at"] == read["read_at"]
    assert (await api.get("/v1/users/p-1/unread-count")) == {"count": 1}
    assert (await api.post("/v1/users/p-1/notifications/read-all")) == {"count": 1}
    assert (await api.post("/v1/users/p-1/notifications/read-all")) == {"count": 0}
    assert (await api.get("/v1/users/p-2/unread-count")) == {"count": 1}


async def test_marking_an_unknown_or_someone_elses_notification_is_404(api):
    theirs = await api.notify("p-2")
    err = await api.post(f"/v1/users/p-1/notifications/{theirs['id']}/read", expect=404)
    assert err["code"] == "not_found"
    await api.post("/v1/users/p-1/notifications/nope/read", expect=404)


async def test_a_users_token_reaches_only_that_users_notifications(node, api):
    await api.notify("p-1")
    theirs = await api.notify("p-2")
    own = Api(node.url, await api.token("p-1"))
    assert len((await own.get("/v1/users/p-1/notifications"))["items"]) == 1
    assert (await own.get("/v1/users/p-1/unread-count")) == {"count": 1}
    for method, path in [
        ("GET", "/v1/users/p-2/notifications"),
        ("GET", "/v1/users/p-2/unread-count"),
        ("POST", f"/v1/users/p-2/notifications/{theirs['id']}/read"),
        ("POST", "/v1/users/p-2/notifications/read-all"),
    ]:
        err = await own.call(method, path, expect=403)
        assert err["code"] == "forbidden"
    for method, path, body in [
        ("POST", "/v1/notifications", APPOINTMENT),
        ("POST", "/v1/tokens", {"user_id": "p-2"}),
        ("GET", "/v1/ws/stats", None),
    ]:
        await own.call(method, path, body, expect=403)
    assert (await api.get("/v1/users/p-2/unread-count")) == {"count": 1}


# ---- seed-compatible routes, health, errors ---------------------------------------------


async def test_stats_and_test_notification(node, api):
    stats = await api.get("/v1/ws/stats")
    assert stats["status"] == "active"
    assert stats["connected_clients"] == 0 and stats["connected_users"] == 0
    sent = await api.post(
        "/v1/ws/test-notification",
        {"user_id": "test-user-123", "title": "Test Notification", "message": "Hello WebSocket!"},
        expect=201,
    )
    assert sent["user_id"] == "test-user-123" and sent["message"] == "Hello WebSocket!"
    err = await api.post("/v1/ws/test-notification", {"user_id": "x", "title": "t"}, expect=400)
    assert "message" in err["fields"]


async def test_health_readiness_and_metrics(node):
    anonymous = Api(node.url)
    assert (await anonymous.get("/healthz"))["status"] == "ok"
    assert (await anonymous.get("/readyz"))["status"] == "ready"
    resp = await anonymous.client.fetch(node.url + "/metrics")
    assert b"notify_connections" in resp.body


async def test_unknown_paths_and_methods(node):
    anonymous = Api(node.url)
    assert (await anonymous.get("/v2/nothing", expect=404))["code"] == "not_found"
    await anonymous.call("PUT", "/v1/tokens", {}, expect=405)
    assert anonymous.last.headers["Allow"] == "POST"
