"""GET /v1/openapi.json: generated from the marshmallow schemas, true to the app and its answers.

Real answers of every route (successes and the errors a route documents) are checked against
the document with schemathesis' own response validation, the check CI's schemathesis run
applies to generated requests.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
import schemathesis
from marshmallow import Schema
from schemathesis.core.transport import Response
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.routing import PathMatches

from handlers.routes import make_app
from server.app import openapi, schemas

# CONTRACT.md section 2, as (method, path) with the document's parameter names.
CONTRACT_ROUTES = {
    ("post", "/v1/tokens"),
    ("post", "/v1/notifications"),
    ("post", "/v1/broadcasts"),
    ("get", "/v1/users/{user_id}/notifications"),
    ("get", "/v1/users/{user_id}/unread-count"),
    ("post", "/v1/users/{user_id}/notifications/{notification_id}/read"),
    ("post", "/v1/users/{user_id}/notifications/read-all"),
    ("post", "/v1/users/{user_id}/notifications/{notification_id}/ack"),
    ("post", "/v1/users/{user_id}/notifications/{notification_id}/acknowledge"),
    ("get", "/v1/notifications/{notification_id}"),
    ("delete", "/v1/notifications/{notification_id}"),
    ("get", "/v1/presence"),
    ("get", "/v1/ws/stats"),
    ("post", "/v1/ws/test-notification"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("delete", "/v1/webhooks/{webhook_id}"),
    ("get", "/v1/webhooks/{webhook_id}/deliveries"),
    ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    # CONTRACT.md section 6 and 7
    ("get", "/v1/push/vapid-public-key"),
    ("post", "/v1/users/{user_id}/push-subscriptions"),
    ("get", "/v1/users/{user_id}/push-subscriptions"),
    ("delete", "/v1/users/{user_id}/push-subscriptions/{subscription_id}"),
    ("get", "/v1/users/{user_id}/preferences"),
    ("put", "/v1/users/{user_id}/preferences"),
}
METHODS = ("get", "post", "put", "patch", "delete")


def operations(doc: dict) -> set[tuple[str, str]]:
    return {(m, p) for p, ops in doc["paths"].items() for m in ops if m in METHODS}


def sample(path: str) -> str:
    """A concrete URL path for a documented one."""
    path = path.replace("{user_id}", "p-1001").replace("{notification_id}", "n-1")
    path = path.replace("{subscription_id}", "0123abcd")
    return path.replace("{webhook_id}", "w-1").replace("{delivery_id}", "d-1")


@pytest.fixture
def doc() -> dict:
    return json.loads(openapi.document())


class Checker:
    """Checks a real answer against the document: its status is documented, its body fits."""

    def __init__(self, doc: dict, base_url: str):
        self.doc = doc
        self.schema = schemathesis.openapi.from_dict(doc)
        self.base_url = base_url
        self.client = AsyncHTTPClient()
        self.seen: set[tuple[str, str, int]] = set()

    async def call(
        self, method: str, path: str, url: str, key: str | None, body=None, **kw
    ) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        payload = kw.pop("raw", None) or (None if body is None else json.dumps(body))
        if payload is None and method.upper() == "POST":
            payload = b""
        req = HTTPRequest(self.base_url + url, method=method.upper(), headers=headers, body=payload)
        resp = await self.client.fetch(req, raise_error=False)
        documented = self.doc["paths"][path][method]["responses"]
        assert str(resp.code) in documented, f"{method} {url}: {resp.code} is not documented"
        answer = Response(
            status_code=resp.code,
            headers={k.lower(): [v] for k, v in resp.headers.get_all()},
            content=resp.body,
            request=requests.Request(method.upper(), self.base_url + url).prepare(),
            elapsed=resp.request_time or 0.0,
            verify=False,
        )
        self.schema[path][method.upper()].validate_response(answer)  # raises on a mismatch
        self.seen.add((method, path, resp.code))
        return resp.code, json.loads(resp.body) if path != "/metrics" else {}


@pytest.mark.asyncio
async def test_served_without_a_credential_as_plain_openapi(node):
    resp = await AsyncHTTPClient().fetch(node.url + "/v1/openapi.json")
    assert resp.headers["Content-Type"].startswith("application/json")
    doc = json.loads(resp.body)
    assert doc["openapi"] == "3.0.3" and "success" not in doc
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key, or a connection token",
    }
    assert doc["paths"]["/v1/openapi.json"]["get"]["security"] == []
    assert doc["paths"]["/v1/tokens"]["post"]["security"] == [{"bearer": []}]


def test_every_route_of_the_contract_is_described(doc):
    assert operations(doc) == CONTRACT_ROUTES


@pytest.mark.asyncio
async def test_the_document_and_the_app_route_alike(doc, node):
    """Each documented operation reaches a handler implementing it, and each REST handler
    method is documented (pages and the two live transports aside)."""
    app = make_app(node.node)
    rules = [r for r in app.wildcard_router.rules if isinstance(r.matcher, PathMatches)]

    def handler_for(url: str) -> type[web.RequestHandler]:
        return next(r.target for r in rules if r.matcher.regex.match(url))

    def implements(handler: type[web.RequestHandler], method: str) -> bool:
        return getattr(handler, method) is not getattr(web.RequestHandler, method)

    documented = operations(doc)
    for method, path in documented:
        assert implements(handler_for(sample(path)), method), (method, path)
    rest = re.compile(r"^/(v1/|healthz|readyz|metrics)")
    for rule in rules:
        pattern = rule.matcher.regex.pattern
        live = ("/v1/ws/notifications", "/v1/sse/notifications")  # streams, not REST
        if not rest.match(pattern) or pattern.startswith(live):
            continue
        for method in METHODS:
            if implements(rule.target, method):
                assert any(
                    m == method and rule.matcher.regex.match(sample(p)) for m, p in documented
                ), f"{method} {pattern} is not in the document"


def test_components_come_from_the_marshmallow_schemas(doc):
    components = doc["components"]["schemas"]
    for name in ("NotificationIn", "BroadcastIn", "TokenIn", "TestNotificationIn"):
        schema: Schema = getattr(schemas, name)()
        described = components[name]
        assert set(described["properties"]) == {f.data_key or n for n, f in schema.fields.items()}
        required = {f.data_key or n for n, f in schema.fields.items() if f.required}
        assert set(described.get("required", [])) == required
        assert described["additionalProperties"] is False  # unknown fields are a 400
    assert components["NotificationIn"]["properties"]["user_id"]["pattern"] == schemas.ID_PATTERN
    feed = doc["paths"]["/v1/users/{user_id}/notifications"]["get"]["parameters"]
    assert {p["name"] for p in feed if p["in"] == "query"} == set(schemas.FeedQuery().fields)
    assert set(components["NotificationOut"]["properties"]) == set(schemas.NotificationOut().fields)
    error = components["ErrorEnvelope"]
    assert error["properties"]["success"]["enum"] == [False]
    assert set(components["ErrorOut"]["properties"]) == {"code", "message", "fields"}


def test_error_statuses_follow_from_what_a_route_takes(doc):
    responses = {(m, p): set(doc["paths"][p][m]["responses"]) for m, p in operations(doc)}
    assert responses[("post", "/v1/notifications")] == {
        "201", "400", "401", "403", "409", "413", "422", "429", "503",
    }  # fmt: skip
    assert {"409", "422"} <= responses[("post", "/v1/webhooks")]
    assert "422" not in responses[("get", "/v1/webhooks")]
    assert {"404", "409"} <= responses[("delete", "/v1/notifications/{notification_id}")]
    assert "404" in responses[("get", "/v1/users/{user_id}/unread-count")]
    assert "400" in responses[("get", "/v1/presence")]
    assert "401" not in responses[("get", "/healthz")]
    limited = doc["components"]["responses"]["RateLimited"]
    assert "Retry-After" in limited["headers"]


@pytest.fixture
def settings(settings):
    # The 405 scan sends every wrong method of every route without a credential, over a
    # hundred requests from one address: more than the default per-address limit allows
    # (docs/security.md), which this test is not about.
    return settings.with_(rate_rest_ip=0)


@pytest.mark.asyncio
async def test_every_405_carries_allow_with_the_documented_methods(node, doc):
    client = AsyncHTTPClient()
    for path, ops in doc["paths"].items():
        allowed = {m.upper() for m in ops if m in METHODS}
        # OPTIONS is answered on every route (CORS preflights, tests/test_cors.py), with the
        # same Allow as a 405.
        plain = await client.fetch(HTTPRequest(node.url + sample(path), method="OPTIONS"))
        assert plain.code == 204 and set(plain.headers["Allow"].split(", ")) == allowed, path
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE"} - allowed:
            body = b"{}" if method in ("POST", "PUT", "PATCH") else None
            req = HTTPRequest(node.url + sample(path), method=method, body=body)
            resp = await client.fetch(req, raise_error=False)
            assert resp.code == 405, (method, path, resp.code)
            assert set(resp.headers["Allow"].split(", ")) == allowed, (method, path)
            assert json.loads(resp.body)["error"]["code"] == "method_not_allowed"


@pytest.mark.asyncio
async def test_real_answers_match_the_document(node, api, api_key, doc):
    check = Checker(doc, node.url)
    user = "p-1001"
    token = await api.token(user, ["patient"])
    other = await api.token("p-2002", ["patient"])
    key = api_key
    notify_only, _ = await node.node.api_keys.create("notify-only", ["notify"])

    code, out = await check.call("post", "/v1/tokens", "/v1/tokens", key, {"user_id": user})
    assert code == 201
    assert (await check.call("post", "/v1/tokens", "/v1/tokens", key, {"user_id": ""}))[0] == 400
    assert (await check.call("post", "/v1/tokens", "/v1/tokens", None, {"user_id": user}))[0] == 401
    assert (await check.call("post", "/v1/tokens", "/v1/tokens", notify_only, {"user_id": user}))[
        0
    ] == 403
    huge = b'{"user_id": "' + b"x" * (node.node.settings.max_body_bytes + 1) + b'"}'
    assert (await check.call("post", "/v1/tokens", "/v1/tokens", key, raw=huge))[0] == 413

    one = {"user_id": user, "type": "appointment", "priority": "high",
           "data": {"appointment_id": "a-77", "status": "confirmed"}}  # fmt: skip
    code, out = await check.call("post", "/v1/notifications", "/v1/notifications", key, one)
    assert code == 201 and out["data"]["title"] == "Appointment confirmed"
    first_id = out["data"]["id"]
    many = {"user_ids": [user, "p-2002"], "type": "custom", "title": "T", "data": {"k": [1]}}
    code, out = await check.call("post", "/v1/notifications", "/v1/notifications", key, many)
    assert code == 201 and len(out["data"]) == 2
    bad = {"user_id": user, "type": "custom", "title": "x", "extra": 1}
    code, out = await check.call("post", "/v1/notifications", "/v1/notifications", key, bad)
    assert code == 400 and "extra" in out["error"]["fields"]

    cast = {"audience": "patient", "title": "Closed", "message": "Closed on Friday"}
    code, out = await check.call("post", "/v1/broadcasts", "/v1/broadcasts", key, cast)
    assert code == 201 and out["data"]["user_id"] is None

    feed = "/v1/users/{user_id}/notifications"
    for url, who in [
        (f"/v1/users/{user}/notifications?limit=2", key),
        (f"/v1/users/{user}/notifications?unread=true&type=custom", token),
    ]:
        assert (await check.call("get", feed, url, who))[0] == 200
    assert (await check.call("get", feed, f"/v1/users/{user}/notifications", other))[0] == 403
    assert (await check.call("get", feed, f"/v1/users/{user}/notifications?limit=0", key))[0] == 400
    assert (await check.call("get", feed, "/v1/users/-bad/notifications", key))[0] == 404

    count = "/v1/users/{user_id}/unread-count"
    code, out = await check.call("get", count, f"/v1/users/{user}/unread-count", token)
    assert code == 200 and out["data"]["count"] == 3

    read = "/v1/users/{user_id}/notifications/{notification_id}/read"
    url = f"/v1/users/{user}/notifications/{first_id}/read"
    code, out = await check.call("post", read, url, token)
    assert code == 200 and out["data"]["read_at"] is not None
    assert (await check.call("post", read, f"/v1/users/{user}/notifications/nope/read", key))[
        0
    ] == 404
    read_all = "/v1/users/{user_id}/notifications/read-all"
    code, out = await check.call("post", read_all, f"/v1/users/{user}/notifications/read-all", key)
    assert code == 200 and out["data"]["count"] == 1  # the key knows no roles: not the broadcast

    code, out = await check.call("get", "/v1/presence", f"/v1/presence?user_ids={user},x", key)
    assert code == 200 and out["data"][user] == {"online": False, "connections": 0}
    assert (await check.call("get", "/v1/presence", "/v1/presence", key))[0] == 400
    assert (await check.call("get", "/v1/ws/stats", "/v1/ws/stats", key))[0] == 200
    test = {"user_id": user, "title": "Test", "message": "hello"}
    path = "/v1/ws/test-notification"
    assert (await check.call("post", path, path, key, test))[0] == 201

    later = {**one, "deliver_at": "2099-01-01T09:00:00+01:00"}
    code, out = await check.call("post", "/v1/notifications", "/v1/notifications", key, later)
    assert code == 201 and out["data"]["cursor"] is None  # scheduled: no place in the feed yet
    cancel = "/v1/notifications/{notification_id}"
    url = f"/v1/notifications/{out['data']['id']}"
    code, out = await check.call("delete", cancel, url, key)
    assert code == 200 and out["data"]["deliver_at"] == "2099-01-01T08:00:00.000Z"
    code, _ = await check.call("delete", cancel, f"/v1/notifications/{first_id}", key)
    assert code == 409  # already sent
    assert (await check.call("delete", cancel, "/v1/notifications/missing", key))[0] == 404

    again = {"Idempotency-Key": "doc-1"}
    code, out = await check.call(
        "post", "/v1/broadcasts", "/v1/broadcasts", key, cast, headers=again
    )
    assert code == 201
    code, replay = await check.call(
        "post", "/v1/broadcasts", "/v1/broadcasts", key, cast, headers=again
    )
    assert code == 201 and replay == out
    other = {**cast, "title": "Open"}
    code, out = await check.call(
        "post", "/v1/broadcasts", "/v1/broadcasts", key, other, headers=again
    )
    assert code == 422 and out["error"]["code"] == "idempotency_mismatch"

    hooks = "/v1/webhooks"
    hook = {"url": "https://example.com/hook", "events": ["notification.read"]}
    code, out = await check.call("post", hooks, hooks, key, hook)
    assert code == 201 and out["data"]["secret"].startswith("whsec_")
    hook_id = out["data"]["id"]
    assert (await check.call("post", hooks, hooks, key, {**hook, "events": ["x"]}))[0] == 400
    assert (await check.call("post", hooks, hooks, notify_only, hook))[0] == 403
    code, out = await check.call("get", hooks, hooks, key)
    assert code == 200 and "secret" not in out["data"]["items"][0]
    listed = "/v1/webhooks/{webhook_id}/deliveries"
    code, out = await check.call("get", listed, f"/v1/webhooks/{hook_id}/deliveries", key)
    assert code == 200 and out["data"]["items"] == []
    url = f"/v1/webhooks/{hook_id}/deliveries?status=lost"
    assert (await check.call("get", listed, url, key))[0] == 400
    retry = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"
    url = f"/v1/webhooks/{hook_id}/deliveries/0123456789abcdef01234567/retry"
    assert (await check.call("post", retry, url, key))[0] == 404
    one_hook = "/v1/webhooks/{webhook_id}"
    assert (await check.call("delete", one_hook, f"/v1/webhooks/{hook_id}", key))[0] == 200
    assert (await check.call("delete", one_hook, f"/v1/webhooks/{hook_id}", key))[0] == 404

    for path in ("/healthz", "/readyz", "/metrics", "/v1/openapi.json"):
        assert (await check.call("get", path, path, None))[0] == 200
    assert {c for _, p, c in check.seen if p == "/v1/tokens"} == {201, 400, 401, 403, 413}


def test_operation_ids_are_unique_and_readable(doc):
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"(get|post|put|delete)[A-Z][A-Za-z0-9]+", i) for i in ids)
