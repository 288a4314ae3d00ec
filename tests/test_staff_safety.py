"""What a staff member can do stays within their role, and ends when the account changes:
the test client's tokens, sessions after a demotion, a disabled or deleted account, one
revoke path for API keys, and a ``Retry-After`` on every 503."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from server.ops import cli
from tests.conftest import ALL_SCOPES
from tests.support import serve_node
from tests.test_dashboard import ADMIN_PASSWORD, FAST_HASHER, NURSE_PASSWORD, Browser
from tests.test_storage_faults import TIMEOUTS, database  # noqa: F401 - a fixture

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def quick(settings, mongo_uri):
    """A node whose staff sockets check their session twice a second."""
    running = await serve_node(settings.with_(staff_recheck_seconds=0.5), mongo_uri)
    staff = running.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("boss", ADMIN_PASSWORD, "admin", "test")
    await staff.create("nurse", NURSE_PASSWORD, "staff", "test")
    await staff.create("second", ADMIN_PASSWORD, "admin", "test")
    yield running
    await running.stop()


async def logged_in(node, username: str, password: str) -> Browser:
    browser = Browser(node.url)
    await browser.login(username, password)
    return browser


async def staff_socket(node, browser: Browser):
    url = node.url.replace("http", "ws", 1) + "/dashboard/ws"
    cookie = "; ".join(f"{k}={v}" for k, v in browser.jar.items())
    return await websocket_connect(HTTPRequest(url, headers={"Origin": node.url, "Cookie": cookie}))


async def closed_with(conn, timeout: float = 10.0) -> int | None:
    """Read until the socket closes; its close code."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await asyncio.wait_for(conn.read_message(), deadline - asyncio.get_running_loop().time()):
        pass
    return conn.close_code


# ---- the test client ------------------------------------------------------------------------


async def test_the_test_client_mints_only_a_patients_or_ones_own_role(quick):
    nurse = await logged_in(quick, "nurse", NURSE_PASSWORD)
    boss = await logged_in(quick, "boss", ADMIN_PASSWORD)
    for browser, roles in [
        (nurse, "admin"),
        (nurse, "patient,admin"),
        (nurse, "doctor"),
        (boss, "admin"),  # not even an admin's own role
        (boss, "staff"),  # nor a role the admin does not hold
    ]:
        resp = await browser.post(
            "/dashboard/test-client/token", {"user_id": "p-5", "roles": roles}
        )
        assert resp.code == 400, roles
        assert json.loads(resp.body)["fields"]["roles"], roles
    refused = await quick.node.audit.recent(action="test_client.token_refused")
    assert len(refused) == 5 and refused[0]["target"] == "p-5"
    assert await quick.node.audit.recent(action="test_client.token") == []

    for browser, roles in [
        (nurse, "patient"),
        (nurse, "staff"),
        (nurse, "patient,staff"),
        (boss, "patient"),
    ]:
        resp = await browser.post(
            "/dashboard/test-client/token", {"user_id": "p-5", "roles": roles}
        )
        assert resp.code == 200, roles
        token = json.loads(resp.body)["token"]
        assert set(quick.node.tokens.check(token).roles) == set(roles.split(","))
    assert len(await quick.node.audit.recent(action="test_client.token")) == 4


# ---- sessions end when the account changes --------------------------------------------------


@pytest.mark.parametrize("change", ["demote", "disable", "delete"])
async def test_a_changed_account_loses_its_sessions_and_staff_sockets(quick, change):
    username, password = (
        ("second", ADMIN_PASSWORD) if change == "demote" else ("nurse", NURSE_PASSWORD)
    )
    member = await logged_in(quick, username, password)
    other_device = await logged_in(quick, username, password)
    conn = await staff_socket(quick, member)
    assert (await member.get("/dashboard")).code == 200
    staff = quick.node.dashboard.staff
    if change == "demote":
        await staff.set_role("staff:boss", username, "staff")
    elif change == "disable":
        await staff.set_disabled("staff:boss", username, True)
    else:  # no page deletes accounts: an operator removing the document in MongoDB
        await quick.node.store.db.staff.delete_one({"_id": username})
    for browser in (member, other_device):
        resp = await browser.get("/dashboard")
        assert resp.code == 302 and resp.headers["Location"].startswith("/dashboard/login")
    assert await closed_with(conn) == 1008


async def test_a_promotion_or_the_same_role_again_keeps_the_session(quick):
    nurse = await logged_in(quick, "nurse", NURSE_PASSWORD)
    await quick.node.dashboard.staff.set_role("staff:boss", "nurse", "staff")
    assert (await nurse.get("/dashboard")).code == 200
    await quick.node.dashboard.staff.set_role("staff:boss", "nurse", "admin")
    assert (await nurse.get("/dashboard/staff")).code == 200


# ---- one revoke path ----------------------------------------------------------------------


async def test_the_command_line_revokes_as_the_dashboard_does(node, settings, mongo_uri):
    api_keys = node.node.api_keys
    by_cli, _ = await api_keys.create("by-cli", ALL_SCOPES)
    by_page, _ = await api_keys.create("by-page", ALL_SCOPES)
    ids = {r["name"]: r["_id"] for r in await node.node.store.list_api_keys()}
    await api_keys.check(by_cli)
    await api_keys.check(by_page)

    record = await cli.revoke_api_key(settings.with_(mongodb_uri=mongo_uri), ids["by-cli"])
    assert record["name"] == "by-cli"
    staff = node.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("boss", ADMIN_PASSWORD, "admin", "test")
    boss = await logged_in(node, "boss", ADMIN_PASSWORD)
    resp = await boss.post(f"/dashboard/api-keys/{ids['by-page']}/revoke")
    assert resp.code == 302

    entries = await node.node.audit.recent(action="api_key.revoke")
    assert {(e["actor"], e["target"]) for e in entries} == {
        ("cli", ids["by-cli"]),
        ("staff:boss", ids["by-page"]),
    }
    assert {e["detail"]["name"] for e in entries} == {"by-cli", "by-page"}
    for key in (by_cli, by_page):
        req = HTTPRequest(node.url + "/v1/ws/stats", headers={"Authorization": f"Bearer {key}"})
        assert (await AsyncHTTPClient().fetch(req, raise_error=False)).code == 401


# ---- Retry-After on 503 -------------------------------------------------------------------


async def test_storage_down_answers_503_with_retry_after(database, settings):  # noqa: F811
    running = await serve_node(settings.with_(**TIMEOUTS), database.uri)
    try:
        key, _ = await running.node.api_keys.create("k", ALL_SCOPES)
        database.stop()
        for path in ("/v1/users/p-1/unread-count", "/readyz", "/dashboard/login"):
            req = HTTPRequest(
                running.url + path, headers={"Authorization": f"Bearer {key}"}, request_timeout=30
            )
            resp = await AsyncHTTPClient().fetch(req, raise_error=False)
            if path == "/dashboard/login":  # the login form reads nothing: post it
                continue
            assert resp.code == 503, (path, resp.code)
            assert int(resp.headers["Retry-After"]) >= 1, path
        boss = Browser(running.url)
        resp = await boss.post("/dashboard/login", {"username": "boss", "password": "x" * 12})
        assert resp.code == 503 and int(resp.headers["Retry-After"]) >= 1
        database.start()
    finally:
        await running.stop()
