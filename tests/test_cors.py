"""CORS on the REST API: portals on the Origins of NOTIFY_ALLOWED_ORIGINS, over real sockets.

The browser's half (a page on one origin calling the service on another) is in
tests/test_client_js.py; here, the headers themselves.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.conftest import ALL_SCOPES
from tests.support import serve_node

pytestmark = pytest.mark.asyncio

PORTAL = "https://portal.clinic.example"
EVIL = "https://evil.example"
FEED = "/v1/users/p-1/notifications"
CORS_HEADERS = {
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Max-Age",
    "Access-Control-Expose-Headers",
    "Access-Control-Allow-Credentials",
}


@contextlib.asynccontextmanager
async def serving(settings, mongo_uri, origins: str = "", **changes):
    """A node allowing ``origins``, and an API key with every scope."""
    running = await serve_node(settings.with_(allowed_origins=origins, **changes), mongo_uri)
    try:
        key, _ = await running.node.api_keys.create("tests", ALL_SCOPES)
        running.key = key
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture
async def portal_node(settings, mongo_uri):
    async with serving(settings, mongo_uri, f"{PORTAL}/, https://staff.clinic.example") as n:
        yield n


async def fetch(node, method: str, path: str, origin: str | None = None, **headers):
    """One request, with an Origin if given; never raises on a status."""
    if origin:
        headers["Origin"] = origin
    body = b"" if method in ("POST", "PUT") else None
    req = HTTPRequest(node.url + path, method=method, headers=headers, body=body)
    return await AsyncHTTPClient().fetch(req, raise_error=False)


def preflight(node, path: str, origin: str, method: str = "GET"):
    """What a browser sends before a call with ``Authorization``."""
    return fetch(
        node,
        "OPTIONS",
        path,
        origin,
        **{
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


def cors_headers(resp) -> set[str]:
    return {name for name in CORS_HEADERS if name in resp.headers}


async def test_preflight_from_an_allowed_origin(portal_node):
    resp = await preflight(portal_node, FEED, PORTAL)
    assert resp.code == 204 and resp.body == b""
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == PORTAL
    assert h["Vary"] == "Origin"
    assert h["Access-Control-Allow-Methods"] == "GET"
    allowed = {v.strip().lower() for v in h["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-request-id"} <= allowed
    assert int(h["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in h  # bearer tokens, never cookies
    # No credential needed, and a preflight is not a read of the user's feed.
    mark_read = await preflight(portal_node, f"{FEED}/n-1/read", PORTAL, "POST")
    assert mark_read.code == 204 and mark_read.headers["Access-Control-Allow-Methods"] == "POST"
    auth = {"Authorization": f"Bearer {portal_node.key}"}
    assert (await fetch(portal_node, "GET", FEED, PORTAL, **auth)).code == 200
    await portal_node.node.audit.flush()
    reads = await portal_node.node.audit.recent(limit=100, action="notifications.feed")
    assert [e["detail"]["method"] for e in reads] == ["GET"]  # the call, not its preflight


async def test_preflight_from_an_origin_not_allowed_gets_no_cors_headers(portal_node):
    resp = await preflight(portal_node, FEED, EVIL)
    assert resp.code == 403
    assert json.loads(resp.body)["error"]["code"] == "forbidden"
    assert cors_headers(resp) == set()
    # A prefix of an allowed Origin is another Origin.
    assert (await preflight(portal_node, FEED, PORTAL + ".evil.example")).code == 403


async def test_answers_and_errors_carry_cors_headers_for_an_allowed_origin(portal_node):
    ok = await fetch(portal_node, "GET", FEED, PORTAL, Authorization=f"Bearer {portal_node.key}")
    assert ok.code == 200 and json.loads(ok.body)["success"] is True
    assert ok.headers["Access-Control-Allow-Origin"] == PORTAL
    assert ok.headers["Vary"] == "Origin"
    exposed = {v.strip() for v in ok.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"X-Request-Id", "Retry-After"} <= exposed
    assert "Access-Control-Allow-Credentials" not in ok.headers
    # Errors too, or the browser hides the contract's envelope from the page.
    for resp, status in [
        (await fetch(portal_node, "GET", FEED, PORTAL), 401),
        (await fetch(portal_node, "GET", FEED, PORTAL, Authorization="Bearer nonsense"), 401),
        (await fetch(portal_node, "GET", "/v2/nothing", PORTAL), 404),
        (await fetch(portal_node, "PUT", FEED, PORTAL, Authorization="Bearer x"), 405),
    ]:
        assert resp.code == status, (resp.code, resp.body)
        assert resp.headers["Access-Control-Allow-Origin"] == PORTAL
        assert json.loads(resp.body)["success"] is False
    bad_query = await fetch(
        portal_node, "GET", FEED + "?limit=x", PORTAL, Authorization=f"Bearer {portal_node.key}"
    )
    assert bad_query.code == 400 and bad_query.headers["Access-Control-Allow-Origin"] == PORTAL


async def test_no_cors_headers_without_an_origin_or_for_another_one(portal_node):
    auth = {"Authorization": f"Bearer {portal_node.key}"}
    for origin in [None, EVIL, "null", "http://[::1"]:
        resp = await fetch(portal_node, "GET", FEED, origin, **auth)
        assert resp.code == 200, origin
        assert cors_headers(resp) == set() and "Vary" not in resp.headers, origin
    unauthorized = await fetch(portal_node, "GET", FEED, EVIL)
    assert unauthorized.code == 401 and cors_headers(unauthorized) == set()
    # The dashboard (cookies) stays same-origin whatever the setting.
    page = await fetch(portal_node, "GET", "/dashboard/login", PORTAL)
    assert cors_headers(page) == set()
    refused = await preflight(portal_node, "/dashboard/login", PORTAL, "POST")
    assert refused.code == 405 and cors_headers(refused) == set()


async def test_a_rate_limited_answer_carries_cors_and_exposes_retry_after(settings, mongo_uri):
    async with serving(
        settings, mongo_uri, PORTAL, rate_rest_ip=0.01, rate_rest_ip_burst=3
    ) as node:
        codes = [(await preflight(node, FEED, PORTAL)).code for _ in range(3)]
        assert codes == [204, 204, 204]
        limited = await preflight(node, FEED, PORTAL)  # preflights count like any request
        assert limited.code == 429
        assert limited.headers["Access-Control-Allow-Origin"] == PORTAL
        assert "Retry-After" in limited.headers
        assert "Retry-After" in limited.headers["Access-Control-Expose-Headers"]


async def test_star_allows_any_origin_and_names_it(settings, mongo_uri):
    async with serving(settings, mongo_uri, "*") as node:
        for origin in [PORTAL, EVIL, "http://localhost:3000"]:
            resp = await preflight(node, FEED, origin)
            assert resp.code == 204 and resp.headers["Access-Control-Allow-Origin"] == origin
            got = await fetch(node, "GET", FEED, origin, Authorization=f"Bearer {node.key}")
            assert got.headers["Access-Control-Allow-Origin"] == origin
            assert "Access-Control-Allow-Credentials" not in got.headers


async def test_default_setting_is_same_host_only(node, api_key):
    host = node.url  # http://127.0.0.1:PORT: the request's own host
    auth = {"Authorization": f"Bearer {api_key}"}
    same = await fetch(node, "GET", FEED, host, **auth)
    assert same.code == 200 and cors_headers(same) == set()
    plain = await fetch(node, "OPTIONS", FEED)  # no Origin: not a preflight, just the methods
    assert plain.code == 204 and plain.headers["Allow"] == "GET"
    assert cors_headers(plain) == set()
    own = await preflight(node, FEED, host)
    assert own.code == 204 and cors_headers(own) == set()
    other = await preflight(node, FEED, PORTAL)
    assert other.code == 403 and cors_headers(other) == set()
    resp = await fetch(node, "GET", FEED, PORTAL, **auth)
    assert resp.code == 200 and cors_headers(resp) == set()
