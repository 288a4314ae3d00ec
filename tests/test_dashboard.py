"""The staff dashboard over real HTTP: sessions, roles, XSRF, forms, pages and the staff socket.

``Browser`` below is a small cookie-keeping HTTP client (Tornado's AsyncHTTPClient); it
sends the XSRF token the way a form does, and can leave it out to test the refusal.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_asyncio
from argon2 import PasswordHasher
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

import run
from server.dashboard.activity import Sample
from server.ops import cli
from tests.support import Api, Socket, serve_node, wait_for

pytestmark = pytest.mark.asyncio

ADMIN_PASSWORD = "admin-password-123"
NURSE_PASSWORD = "nurse-password-456"
SCRIPT = "<script>alert(1)</script>"
ROOT = Path(__file__).resolve().parent.parent
# Argon2id with small costs: the tests check the flow, not the hash's strength (a real
# node uses argon2-cffi's RFC 9106 defaults, which take a good fraction of a second here).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Browser:
    """Cookies in a jar, forms posted with the XSRF token, redirects not followed."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.jar: dict[str, str] = {}
        self.set_cookies: list[str] = []
        self.http = AsyncHTTPClient()

    async def request(
        self,
        method: str,
        path: str,
        form: dict[str, Any] | None = None,
        xsrf: bool = True,
        headers: dict[str, str] | None = None,
    ) -> HTTPResponse:
        body = None
        if method == "POST":
            if "_xsrf" not in self.jar:
                await self.request("GET", "/dashboard/login")  # any page sets the XSRF cookie
            fields = dict(form or {})
            if xsrf:
                fields["_xsrf"] = self.jar["_xsrf"]
            body = urlencode(fields, doseq=True)
        hdrs = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.jar.items()), **(headers or {})}
        req = HTTPRequest(
            self.base_url + path, method, headers=hdrs, body=body, follow_redirects=False
        )
        resp = await self.http.fetch(req, raise_error=False)
        for header in resp.headers.get_list("Set-Cookie"):
            self.set_cookies.append(header)
            cookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                if not morsel.value or morsel["max-age"] == "0":  # cleared
                    self.jar.pop(name, None)
                else:
                    self.jar[name] = morsel.value
        return resp

    async def get(self, path: str, **kw: Any) -> HTTPResponse:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, form: dict[str, Any] | None = None, **kw: Any):
        return await self.request("POST", path, form, **kw)

    async def login(self, username: str, password: str) -> HTTPResponse:
        resp = await self.post("/dashboard/login", {"username": username, "password": password})
        assert resp.code == 302, (resp.code, text(resp)[:500])
        return resp


def text(resp: HTTPResponse) -> str:
    return resp.body.decode()


def field_errors(resp: HTTPResponse, name: str) -> list[str]:
    """The error messages shown beside one form field."""
    html = text(resp)
    match = re.search(rf'data-field="{name}">(.*?)</div>', html, re.S)
    assert match, f"no field {name} in the page"
    return re.findall(r'<p class="field-error">(.*?)</p>', match.group(1))


@pytest_asyncio.fixture
async def accounts(node):
    staff = node.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("boss", ADMIN_PASSWORD, "admin", "test")
    await staff.create("nurse", NURSE_PASSWORD, "staff", "test")
    return staff


@pytest_asyncio.fixture
async def admin(node, accounts):
    browser = Browser(node.url)
    await browser.login("boss", ADMIN_PASSWORD)
    return browser


@pytest_asyncio.fixture
async def nurse(node, accounts):
    browser = Browser(node.url)
    await browser.login("nurse", NURSE_PASSWORD)
    return browser


STAFF_PAGES = [
    "/dashboard",
    "/dashboard/connections",
    "/dashboard/compose",
    "/dashboard/history",
    "/dashboard/test-client",
    "/dashboard/account",
]
ADMIN_PAGES = [
    "/dashboard/api-keys",
    "/dashboard/staff",
    "/dashboard/audit",
    "/dashboard/audit.csv",
    "/dashboard/webhooks",
]
POSTS = [
    "/dashboard/logout",
    "/dashboard/compose",
    "/dashboard/account",
    "/dashboard/test-client/token",
    "/dashboard/history/0123456789abcdef01234567/cancel",
    "/dashboard/api-keys",
    "/dashboard/api-keys/k1/revoke",
    "/dashboard/staff",
    "/dashboard/staff/nurse",
    "/dashboard/webhooks/w1/deliveries/d1/retry",
]


# ---- signing in ---------------------------------------------------------------------------


async def test_root_and_every_page_send_a_stranger_to_the_login(node, accounts):
    browser = Browser(node.url)
    resp = await browser.get("/")
    assert resp.code == 302 and resp.headers["Location"] == "/dashboard"
    for path in STAFF_PAGES + ADMIN_PAGES:
        resp = await browser.get(path)
        assert resp.code == 302, path
        assert resp.headers["Location"].startswith("/dashboard/login?next=%2Fdashboard"), path


async def test_forms_refuse_a_stranger_even_with_the_xsrf_token(node, accounts):
    browser = Browser(node.url)
    for path in POSTS:
        resp = await browser.post(path, {"action": "disable"})
        assert resp.code == 403, path
        assert "text/html" in resp.headers["Content-Type"]


async def test_forms_refuse_a_post_without_the_xsrf_token(node, admin):
    for path in [*POSTS, "/dashboard/login"]:
        resp = await admin.post(path, {"action": "disable"}, xsrf=False)
        assert resp.code == 403, path
        assert "_xsrf" in text(resp)
        # A forged token fails as well.
        resp = await admin.post(path, {"_xsrf": "2|00|00|00"}, xsrf=False)
        assert resp.code == 403, path
    # Nothing was done: the admin is still signed in and nurse still enabled.
    assert (await admin.get("/dashboard")).code == 200
    assert not (await node.node.dashboard.store.account("nurse"))["disabled"]


async def test_login_sets_a_hardened_session_cookie_and_logout_ends_it(node, accounts):
    browser = Browser(node.url)
    resp = await browser.post(
        "/dashboard/login",
        {"username": "Nurse", "password": NURSE_PASSWORD, "next": "/dashboard/history?user=p-1"},
    )
    assert resp.code == 302 and resp.headers["Location"] == "/dashboard/history?user=p-1"
    session = next(c for c in browser.set_cookies if c.startswith("notify_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    assert "Secure" not in session  # plain HTTP here; see the next test
    xsrf = next(c for c in browser.set_cookies if c.startswith("_xsrf="))
    assert "SameSite=Strict" in xsrf
    page = await browser.get("/dashboard")
    assert page.code == 200 and "nurse" in text(page)
    token = browser.jar["notify_session"]

    resp = await browser.post("/dashboard/logout")
    assert resp.code == 302 and resp.headers["Location"] == "/dashboard/login"
    assert "notify_session" not in browser.jar
    # The old cookie is dead on the server too, not only forgotten by the browser.
    browser.jar["notify_session"] = token
    assert (await browser.get("/dashboard")).code == 302


async def test_secure_cookies_setting_marks_cookies_secure(settings, mongo_uri):
    running = await serve_node(settings.with_(secure_cookies=True), mongo_uri)
    try:
        running.node.dashboard.staff.hasher = FAST_HASHER
        await running.node.dashboard.staff.create("boss", ADMIN_PASSWORD, "admin", "test")
        browser = Browser(running.url)
        await browser.login("boss", ADMIN_PASSWORD)
        for name in ("notify_session=", "_xsrf="):
            cookie = next(c for c in browser.set_cookies if c.startswith(name))
            assert "Secure" in cookie
    finally:
        await running.stop()


@pytest.mark.parametrize(
    ("form", "status", "field"),
    [
        ({"username": "boss", "password": "wrong-password"}, 401, None),
        ({"username": "nobody", "password": ADMIN_PASSWORD}, 401, None),
        ({"username": "", "password": ADMIN_PASSWORD}, 400, "username"),
        ({"username": "boss"}, 400, "password"),
        ({"username": "boss", "password": ADMIN_PASSWORD, "next": "//evil.example"}, 400, None),
        ({"username": "boss", "password": ADMIN_PASSWORD, "extra": "x"}, 400, None),
    ],
)
async def test_bad_logins_are_refused_without_a_session(node, accounts, form, status, field):
    browser = Browser(node.url)
    resp = await browser.post("/dashboard/login", form)
    assert resp.code == status
    assert "notify_session" not in browser.jar
    if status == 401:
        assert "wrong username or password" in text(resp)
    if field:
        assert field_errors(resp, field)


async def test_login_page_ignores_an_outside_next(node, accounts):
    resp = await Browser(node.url).get("/dashboard/login?next=https://evil.example/")
    assert 'name="next" value="/dashboard"' in text(resp)


async def test_repeated_failed_logins_are_slowed_down(node, accounts):
    browser = Browser(node.url)
    codes = []
    for _ in range(7):
        resp = await browser.post("/dashboard/login", {"username": "boss", "password": "guess-1"})
        codes.append(resp.code)
    assert codes[:6] == [401] * 6 and codes[-1] == 429  # 5 free failures, then a wait
    assert int(resp.headers["Retry-After"]) >= 1
    # Even the right password waits now; another account is not held up.
    resp = await browser.post("/dashboard/login", {"username": "boss", "password": ADMIN_PASSWORD})
    assert resp.code == 429 and "notify_session" not in browser.jar
    await browser.login("nurse", NURSE_PASSWORD)
    failures = await node.node.audit.recent(action="staff.login_failed")
    assert len(failures) == 6 and all("guess" not in json.dumps(e, default=str) for e in failures)


async def test_disabled_account_cannot_log_in_and_its_sessions_end(node, admin, nurse):
    resp = await admin.post("/dashboard/staff/nurse", {"action": "disable"})
    assert resp.code == 302
    assert (await nurse.get("/dashboard")).code == 302
    resp = await Browser(node.url).post(
        "/dashboard/login", {"username": "nurse", "password": NURSE_PASSWORD}
    )
    assert resp.code == 401
    await admin.post("/dashboard/staff/nurse", {"action": "enable"})
    await Browser(node.url).login("nurse", NURSE_PASSWORD)


async def test_pages_carry_a_strict_content_security_policy(admin):
    for path in [*STAFF_PAGES, "/dashboard/login", "/dashboard/nope"]:
        resp = await admin.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        # No inline script anywhere: only JSON data blocks and files from /static/.
        for tag in re.findall(r"<script[^>]*>", text(resp)):
            assert 'src="/static/' in tag or 'type="application/json"' in tag, (path, tag)


# ---- roles --------------------------------------------------------------------------------


async def test_staff_see_their_pages_but_not_the_admin_ones(nurse):
    for path in STAFF_PAGES:
        resp = await nurse.get(path)
        assert resp.code == 200, path
        assert "Administration" not in text(resp)
    for path in ADMIN_PAGES:
        resp = await nurse.get(path)
        assert resp.code == 403, path
        assert "this page is for admins" in text(resp)
    for path in ["/dashboard/api-keys", "/dashboard/staff", "/dashboard/staff/boss"]:
        resp = await nurse.post(path, {"name": "x", "scopes": "read", "action": "disable"})
        assert resp.code == 403, path


async def test_admins_see_every_page(admin):
    for path in STAFF_PAGES + ADMIN_PAGES:
        assert (await admin.get(path)).code == 200, path
    resp = await admin.get("/dashboard")
    assert "Administration" in text(resp)


async def test_unknown_dashboard_page_is_an_html_404(admin):
    resp = await admin.get("/dashboard/no-such-page")
    assert resp.code == 404 and "This page does not exist" in text(resp)


# ---- compose ------------------------------------------------------------------------------


def compose_form(**fields: str) -> dict[str, str]:
    base = {"target": "user", "type": "custom", "priority": "normal", "tz_offset": "0"}
    return {**base, **fields}


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"user_id": "p-1", "title": ""}, "title", "Missing data"),
        ({"user_id": "", "title": "Hi"}, "user_id", "enter the user"),
        ({"user_id": "bad id!", "title": "Hi"}, "user_id", "not a valid id"),
        ({"target": "users", "user_ids": "p-1, bad!id", "title": "Hi"}, "user_ids", "entry 2"),
        ({"target": "role", "role": "", "title": "Hi", "message": "m"}, "role", "enter a role"),
        ({"target": "role", "role": "Bad Role", "title": "Hi", "message": "m"}, "role", "role"),
        ({"target": "all", "title": "Hi", "message": ""}, "message", "Length must be"),
        ({"user_id": "p-1", "type": "appointment", "data": "{}"}, "data", "appointment_id"),
        ({"user_id": "p-1", "title": "Hi", "data": "{nope"}, "data", "not valid JSON"),
        ({"user_id": "p-1", "title": "Hi", "data": "[1]"}, "data", "a JSON object"),
        ({"user_id": "p-1", "title": "Hi", "priority": "urgent"}, "priority", "Must be one of"),
        ({"user_id": "p-1", "title": "x" * 201}, "title", "Length must be between"),
        ({"user_id": "p-1", "title": "Hi", "deliver_at": "tomorrow"}, "deliver_at", "a date"),
        (
            {
                "user_id": "p-1",
                "title": "Hi",
                "deliver_at": "2030-01-02T10:00",
                "expires_at": "2030-01-01T10:00",
            },
            "expires_at",
            "after deliver_at",
        ),
    ],
)
async def test_compose_shows_the_api_schemas_errors_beside_the_fields(
    node, nurse, fields, field, message
):
    resp = await nurse.post("/dashboard/compose", compose_form(**fields))
    assert resp.code == 400
    errors = field_errors(resp, field)
    assert any(message in e for e in errors), errors
    assert "Please correct the fields" in text(resp)
    # A refused form stores nothing.
    assert await node.node.store.notifications.find_one({}) is None


async def test_compose_refuses_a_form_with_an_unknown_field(node, nurse):
    resp = await nurse.post("/dashboard/compose", compose_form(user_id="p-1", title="t", x="1"))
    assert resp.code == 400
    assert await node.node.store.notifications.find_one({}) is None


async def _online(node, wanted: dict[str, int]) -> bool:
    """The cluster's presence shows each user with this many sockets."""
    found = await node.node.presence(list(wanted))
    return {u: found[u]["connections"] for u in wanted} == wanted


async def test_compose_sends_to_a_user_and_tells_who_got_it(node, api, nurse):
    first = await Socket.open(node.url, await api.token("p-1"))
    second = await Socket.open(node.url, await api.token("p-1"))
    await first.expect("welcome")
    await second.expect("welcome")
    # Presence is written a moment after a socket opens.
    await wait_for(lambda: _online(node, {"p-1": 2}), what="presence of both sockets")
    resp = await nurse.post(
        "/dashboard/compose",
        compose_form(target="users", user_ids="p-1\np-2", title=SCRIPT, message="Hello"),
    )
    assert resp.code == 200
    page = text(resp)
    assert "Stored</strong> as 2 notifications" in page
    assert re.search(r"data-outcome-devices>2<.*data-outcome-users>1<", page, re.S)
    assert "data-outcome-offline>1<" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and SCRIPT not in page
    frame = await first.expect("notification")
    assert frame["notification"]["title"] == SCRIPT
    await second.expect("notification")
    entries = await node.node.audit.recent(action="notification.send")
    assert entries[0]["actor"] == "staff:nurse" and entries[0]["detail"]["count"] == 2
    assert SCRIPT not in json.dumps(entries[0], default=str)  # never a title in the audit
    first.close()
    second.close()


async def test_compose_broadcasts_to_a_role(node, api, nurse):
    doctor = await Socket.open(node.url, await api.token("d-1", ["doctor"]))
    patient = await Socket.open(node.url, await api.token("p-9", ["patient"]))
    await doctor.expect("welcome")
    await patient.expect("welcome")
    resp = await nurse.post(
        "/dashboard/compose",
        compose_form(target="role", role="doctor", type="system_alert", title="Rota", message="m"),
    )
    assert resp.code == 200
    page = text(resp)
    assert "as 1 broadcast" in page and "data-outcome-devices>1<" in page
    assert (await doctor.expect("notification"))["notification"]["title"] == "Rota"
    mine = await api.notify("p-9", "sentinel")  # the patient's next frame: no Rota before it
    assert (await patient.expect("notification"))["notification"]["id"] == mine["id"]
    doctor.close()
    patient.close()


async def test_compose_to_everyone_reaches_every_socket_and_tells_how_many(node, api, nurse):
    people = [("p-1", ["patient"]), ("p-1", ["patient"]), ("d-1", ["doctor"]), ("x-1", [])]
    socks = [await Socket.open(node.url, await api.token(u, roles)) for u, roles in people]
    for sock in socks:
        await sock.expect("welcome")
    online = {"p-1": 2, "d-1": 1, "x-1": 1}
    await wait_for(lambda: _online(node, online), what="presence of every socket")
    resp = await nurse.post(
        "/dashboard/compose",
        compose_form(target="all", type="system_alert", title="Fire drill", message="At 10"),
    )
    assert resp.code == 200
    page = text(resp)
    assert "as 1 broadcast" in page
    assert re.search(r"data-outcome-devices>4<.*data-outcome-users>3<", page, re.S), page
    stored = await node.node.store.notifications.find({}).to_list()
    assert [(d["audience"], d["title"]) for d in stored] == [("all", "Fire drill")]
    for sock in socks:
        frame = (await sock.expect("notification"))["notification"]
        assert (frame["id"], frame["audience"]) == (stored[0]["_id"], "all")
    entries = await node.node.audit.recent(action="broadcast.send")
    assert [e["actor"] for e in entries] == ["staff:nurse"]
    for sock in socks:
        sock.close()


async def test_compose_schedules_and_history_can_cancel(node, nurse):
    resp = await nurse.post(
        "/dashboard/compose",
        compose_form(user_id="p-3", title="Later", deliver_at="2099-01-01T09:30", tz_offset="-60"),
    )
    assert resp.code == 200 and "Scheduled" in text(resp)
    assert '<time datetime="2099-01-01T08:30:00.000Z">' in text(resp)  # 09:30 at UTC+1
    listing = await nurse.get("/dashboard/history?status=scheduled")
    ids = re.findall(r'data-notification="([0-9a-f]{24})"', text(listing))
    assert len(ids) == 1 and "Later" in text(listing)
    resp = await nurse.post(f"/dashboard/history/{ids[0]}/cancel")
    assert resp.code == 302
    listing = await nurse.get("/dashboard/history?status=scheduled")
    assert "was cancelled" in text(listing) and "Later" not in text(listing)
    resp = await nurse.post(f"/dashboard/history/{ids[0]}/cancel")
    assert "no such scheduled notification" in text(await nurse.get("/dashboard/history"))


# ---- history ------------------------------------------------------------------------------


async def test_history_filters_escapes_and_pages(node, api, nurse):
    await api.post(
        "/v1/notifications",
        {"user_ids": [f"u-{i:02d}" for i in range(55)], "type": "custom", "title": "Bulk"},
        expect=201,
    )
    crit = await api.notify("p-7", title=SCRIPT, priority="critical")
    await api.post(f"/v1/users/p-7/notifications/{crit['id']}/read", expect=200)
    await api.post(
        "/v1/broadcasts", {"audience": "all", "title": "Closed", "message": "m"}, expect=201
    )

    page = text(await nurse.get("/dashboard/history"))
    assert page.count('data-notification="') == 50 and "Older →" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and SCRIPT not in page
    older = re.search(r'href="(/dashboard/history\?[^"]*before=[^"]+)"', page).group(1)
    rest = text(await nurse.get(older.replace("&amp;", "&")))
    assert rest.count('data-notification="') == 7 and "Older →" not in rest
    assert '<a class="button" href="/dashboard/history?">Newest</a>' in rest

    mine = text(await nurse.get("/dashboard/history?user=p-7&status=read"))
    assert mine.count('data-notification="') == 1 and "critical" in mine
    assert (
        text(await nurse.get("/dashboard/history?user=p-7&status=unread")).count(
            'data-notification="'
        )
        == 0
    )
    shared = text(await nurse.get("/dashboard/history?kind=broadcast"))
    assert shared.count('data-notification="') == 1 and "everyone" in shared
    crit_only = text(await nurse.get("/dashboard/history?priority=critical&type=custom"))
    assert crit_only.count('data-notification="') == 1
    assert (
        text(await nurse.get("/dashboard/history?since=2000-01-01&until=2000-01-02")).count(
            'data-notification="'
        )
        == 0
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("type=nope", "type"),
        ("since=yesterday", "since"),
        ("since=2026-02-02&until=2026-02-01", "until"),
        ("user=bad%20id", "user"),
    ],
)
async def test_history_shows_bad_filters_beside_them(nurse, query, field):
    resp = await nurse.get(f"/dashboard/history?{query}")
    assert resp.code == 400 and field_errors(resp, field)


# ---- admin: API keys, staff, audit --------------------------------------------------------


async def test_api_keys_are_shown_once_work_and_can_be_revoked(node, admin):
    resp = await admin.post("/dashboard/api-keys", {"name": "portal", "scopes": ["notify", "read"]})
    assert resp.code == 201
    key = re.search(r"data-new-key>([^<]+)<", text(resp)).group(1)
    client = Api(node.url, key)
    await client.get("/v1/ws/stats")
    listing = text(await admin.get("/dashboard/api-keys"))
    assert key not in listing and key[:10] in listing
    key_id = re.search(r'data-key="([^"]+)"', listing).group(1)
    resp = await admin.post(f"/dashboard/api-keys/{key_id}/revoke")
    assert resp.code == 302
    await client.get("/v1/ws/stats", expect=401)
    actions = [e["action"] for e in await node.node.audit.recent(actor="staff:boss")]
    assert "api_key.create" in actions and "api_key.revoke" in actions
    assert key not in json.dumps(await node.node.audit.recent(), default=str)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"name": "x"}, "scopes"),
        ({"name": "", "scopes": ["read"]}, "name"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
    ],
)
async def test_api_key_form_errors(node, admin, form, field):
    resp = await admin.post("/dashboard/api-keys", form)
    assert resp.code == 400
    assert "field-error" in text(resp) and field in text(resp)
    assert await node.node.store.list_api_keys() == []


async def test_staff_accounts_create_change_role_and_guard_the_last_admin(node, admin):
    resp = await admin.post(
        "/dashboard/staff",
        {"username": "Reception", "password": "reception-pass-1", "role": "staff"},
    )
    assert resp.code == 302
    reception = Browser(node.url)
    await reception.login("reception", "reception-pass-1")
    assert (await reception.get("/dashboard/staff")).code == 403
    await admin.post("/dashboard/staff/reception", {"action": "role", "role": "admin"})
    assert (await reception.get("/dashboard/staff")).code == 200

    for form, field in [
        ({"username": "reception", "password": "another-pass-1", "role": "staff"}, "username"),
        ({"username": "x!", "password": "another-pass-1", "role": "staff"}, "username"),
        ({"username": "newbie", "password": "short", "role": "staff"}, "password"),
        ({"username": "newbie", "password": "another-pass-1", "role": "root"}, "role"),
    ]:
        resp = await admin.post("/dashboard/staff", form)
        assert resp.code == 400 and field_errors(resp, field), form

    # Demote and disable the other admin; then "boss" is the last one and cannot be demoted.
    await admin.post("/dashboard/staff/reception", {"action": "disable"})
    resp = await admin.post("/dashboard/staff/boss", {"action": "role", "role": "staff"})
    assert "last enabled admin" in text(await admin.get("/dashboard/staff"))
    resp = await admin.post("/dashboard/staff/boss", {"action": "disable"})
    assert "cannot disable your own account" in text(await admin.get("/dashboard/staff"))
    account = await node.node.dashboard.store.account("boss")
    assert account["role"] == "admin" and not account["disabled"]
    assert "argon2id" in account["password_hash"]
    actions = {e["action"] for e in await node.node.audit.recent(actor="staff:boss")}
    assert {"staff.create", "staff.role", "staff.disable"} <= actions


async def test_audit_page_and_csv_export(node, admin):
    await node.node.audit.record("staff:boss", "custom.test", "=HYPERLINK(1)", note=SCRIPT)
    page = await admin.get("/dashboard/audit")
    assert "staff.login" in text(page) and "&lt;script&gt;" in text(page)
    assert SCRIPT not in text(page)
    filtered = text(await admin.get("/dashboard/audit?action=custom.test"))
    assert "custom.test" in filtered and "staff.login<" not in filtered
    resp = await admin.get("/dashboard/audit.csv?action=custom.test")
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(text(resp))))
    assert rows[0] == ["at", "actor", "action", "target", "detail"]
    assert rows[1][2] == "custom.test" and rows[1][3] == "'=HYPERLINK(1)"
    assert (await admin.get("/dashboard/audit?before=not-a-time")).code == 400
    assert any(e["action"] == "audit.export" for e in await node.node.audit.recent())


async def test_the_audit_pages_older_link_reaches_every_entry_once(node, admin):
    audit = node.node.audit
    entries = [audit.entry("staff:boss", "custom.page", f"t{i:03}", {}) for i in range(130)]
    await audit.collection.insert_many(entries)  # most share a millisecond
    seen, url = [], "/dashboard/audit?action=custom.page"
    while url:
        page = text(await admin.get(url))
        seen += re.findall(r"t\d{3}", page)
        older = re.search(r'rel="next" href="([^"]+)"', page)
        url = older.group(1).replace("&amp;", "&") if older else None
    assert sorted(seen) == sorted(e["target"] for e in entries) and len(seen) == 130


# ---- account and test client --------------------------------------------------------------


async def test_changing_ones_password(node, nurse):
    for form, field in [
        (
            {"current": "wrong-password", "new": "new-password-1", "confirm": "new-password-1"},
            "current",
        ),
        ({"current": NURSE_PASSWORD, "new": "short", "confirm": "short"}, "new"),
        (
            {"current": NURSE_PASSWORD, "new": "new-password-1", "confirm": "other-pass-1"},
            "confirm",
        ),
    ]:
        resp = await nurse.post("/dashboard/account", form)
        assert resp.code == 400 and field_errors(resp, field), form
    resp = await nurse.post(
        "/dashboard/account",
        {"current": NURSE_PASSWORD, "new": "new-password-1", "confirm": "new-password-1"},
    )
    assert resp.code == 302 and resp.headers["Location"] == "/dashboard/login"
    assert (await nurse.get("/dashboard")).code == 302
    fresh = Browser(node.url)
    resp = await fresh.post("/dashboard/login", {"username": "nurse", "password": NURSE_PASSWORD})
    assert resp.code == 401
    await fresh.login("nurse", "new-password-1")


async def test_test_client_token_opens_the_users_socket(node, nurse):
    resp = await nurse.post("/dashboard/test-client/token", {"user_id": "p-5", "roles": "patient"})
    assert resp.code == 200
    answer = json.loads(resp.body)
    assert answer["user_id"] == "p-5" and answer["roles"] == ["patient"]
    principal = node.node.tokens.check(answer["token"])
    assert principal.id == "p-5"
    assert (principal.expires_at - node.node.started_at).total_seconds() < 400
    socket = await Socket.open(node.url, answer["token"])
    assert (await socket.expect("welcome"))["user_id"] == "p-5"
    socket.close()
    entry = (await node.node.audit.recent(action="test_client.token"))[0]
    assert entry["target"] == "p-5" and answer["token"] not in json.dumps(entry, default=str)
    for form in ({"user_id": "bad id"}, {"user_id": "p-5", "roles": "Not A Role"}, {}):
        resp = await nurse.post("/dashboard/test-client/token", form)
        assert resp.code == 400 and json.loads(resp.body)["fields"], form


# ---- the staff socket ---------------------------------------------------------------------


async def staff_socket(node, browser: Browser | None, origin: str | None = None):
    url = node.url.replace("http", "ws", 1) + "/dashboard/ws"
    headers = {"Origin": origin or node.url}
    if browser is not None:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in browser.jar.items())
    return await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=5))


async def read_until(conn, kind: str, check=lambda m: True, timeout: float = 5.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        raw = await asyncio.wait_for(conn.read_message(), max(left, 0.01))
        assert raw is not None, "the staff socket closed"
        message = json.loads(raw)
        if message["type"] == kind and check(message):
            return message


async def test_staff_socket_needs_a_session_and_this_origin(node, nurse):
    with pytest.raises(HTTPClientError) as refused:
        await staff_socket(node, None)
    assert refused.value.code == 401
    with pytest.raises(HTTPClientError) as refused:
        await staff_socket(node, nurse, origin="http://evil.example")
    assert refused.value.code == 403


async def test_staff_socket_streams_the_overview_and_live_connections(node, api, nurse):
    conn = await staff_socket(node, nurse)
    overview = await read_until(conn, "overview")
    assert overview["connections"] == 0 and len(overview["chart"]) == 60
    await read_until(conn, "connections", lambda m: m["items"] == [])

    patient = await Socket.open(node.url, await api.token("p-42"))
    await patient.expect("welcome")
    listed = await read_until(conn, "connections", lambda m: m["items"])
    row = listed["items"][0]
    assert row["user_id"] == "p-42" and row["roles"] == ["patient"] and row["since"]
    await read_until(conn, "overview", lambda m: m["connections"] == 1 and m["users"] == 1)

    conn.write_message(json.dumps({"type": "filter", "user": "q-"}))
    filtered = await read_until(conn, "connections", lambda m: m["filter"] == "q-")
    assert filtered["items"] == [] and filtered["total"] == 1
    conn.write_message(json.dumps({"type": "filter", "user": "p-4"}))
    await read_until(conn, "connections", lambda m: m["filter"] == "p-4" and m["items"])
    conn.write_message("not json")
    assert (await read_until(conn, "error"))["code"] == "bad_frame"

    await api.notify("p-42", title="Live")
    await patient.expect("notification")
    await read_until(
        conn, "overview", lambda m: m["sent_minute"] >= 1 and m["delivered_minute"] >= 1
    )
    patient.close()
    await read_until(conn, "connections", lambda m: m["items"] == [])
    conn.close()


async def test_staff_socket_closes_when_the_session_ends(node, nurse):
    conn = await staff_socket(node, nurse)
    await read_until(conn, "overview")
    await nurse.post("/dashboard/logout")
    handler = next(iter(node.node.dashboard.live.watchers))
    await handler._check_session()
    while (await conn.read_message()) is not None:
        pass
    assert conn.close_code == 1008


async def test_overview_lists_unacknowledged_critical_notifications(node, api, nurse):
    node.node.notifications.critical_ack = node.node.notifications.critical_ack * 0
    await api.notify("p-8", title=SCRIPT, priority="critical")
    page = text(await nurse.get("/dashboard"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "p-8" in page
    assert SCRIPT not in page


# ---- first start and the command line -----------------------------------------------------


async def test_first_start_creates_one_admin(node):
    staff = node.node.dashboard.staff
    staff.hasher = FAST_HASHER
    password = await staff.ensure_first_admin()
    assert password and len(password) >= 16
    assert await staff.ensure_first_admin() is None
    await Browser(node.url).login("admin", password)


async def test_create_staff_command_reads_the_password_from_stdin(
    node, settings, mongo_uri, monkeypatch, capsys
):
    settings = settings.with_(mongodb_uri=mongo_uri)
    args = run.parse_args(["create-staff", "--username", "Desk", "--role", "staff"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("desk-password-1\n"))
    assert await asyncio.to_thread(cli.run_command, args, settings) == 0
    out = capsys.readouterr().out
    assert "Created the staff account 'desk'" in out and "desk-password-1" not in out
    await Browser(node.url).login("desk", "desk-password-1")

    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert await asyncio.to_thread(cli.run_command, args, settings) == 1
    assert "between 10 and 256 characters" in capsys.readouterr().out
    with pytest.raises(Exception, match="taken"):
        await cli.create_staff(settings, "desk", "staff", "desk-password-2")
    assert (
        await cli.create_staff(settings, "desk", "admin", "desk-password-2", reset=True) == "reset"
    )
    await Browser(node.url).login("desk", "desk-password-2")


async def test_activity_rates_and_chart_from_samples(node):
    activity = node.node.dashboard.activity
    now = 1_800_000_000.0  # on a minute boundary
    activity.samples.clear()
    activity.samples.extend(
        [
            Sample(now - 7200, 1, 1, 0, 0.0),  # older than the hour: only a baseline
            Sample(now - 3000, 2, 2, 10, 5.0),
            Sample(now - 90, 4, 3, 40, 50.0),
            Sample(now - 30, 5, 4, 45, 70.0),
        ]
    )
    current = Sample(now + 10, 6, 5, 50, 80.0)
    rates = activity.rates(current)
    assert rates == {
        "sent_minute": 10,  # 50 - 40 (the sample at or before a minute ago)
        "delivered_minute": 30,
        "sent_hour": 50,
        "delivered_hour": 80,
        "pushed_minute": 0,  # no push in these samples
        "push_failed_minute": 0,
        "pushed_hour": 0,
        "push_failed_hour": 0,
    }
    chart = activity.chart(current)
    assert len(chart) == 60
    assert chart[-1]["t"].endswith(":00.000Z") and chart[-1]["connections"] == 6
    assert chart[-1] == {**chart[-1], "sent": 5, "delivered": 10}  # since the minute began
    assert chart[-2] == {**chart[-2], "connections": 5, "sent": 5, "delivered": 20}
    assert sum(p["sent"] for p in chart) == 50 - 0
