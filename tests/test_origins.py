"""One Origin check for both sockets (server/auth/origins.py): scheme, host and port; malformed
Origins refused with 403 before the upgrade, never a 500."""

from __future__ import annotations

import pytest
import pytest_asyncio
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from server.auth import origins
from tests.support import serve_node
from tests.test_dashboard import FAST_HASHER, NURSE_PASSWORD, Browser

PORTAL = "https://portal.clinic.example"


def refused_origins(node) -> dict[str, str]:
    """Origins neither socket may be opened from, on a node with no allow-list."""
    host = node.url.removeprefix("http://")
    return {
        "https-on-an-http-host": f"https://{host}",
        "ws-scheme": f"ws://{host}",
        "unclosed-ipv6": "http://[::1",
        "unclosed-ipv6-with-port": f"http://[::1:{node.port}",
        "null": "null",
        "a-path": f"{node.url}/dashboard",
        "a-query": f"{node.url}?x=1",
        "user-info": f"http://user@{host}",
        "port-out-of-range": "http://127.0.0.1:99999",
        "port-not-a-number": "http://127.0.0.1:port",
        "another-host": "http://evil.example",
        "another-port": f"http://127.0.0.1:{node.port + 1}",
        "empty": "",
        "too-long": f"http://{'a' * 300}.example",
    }


@pytest_asyncio.fixture
async def nurse(node):
    staff = node.node.dashboard.staff
    staff.hasher = FAST_HASHER
    await staff.create("nurse", NURSE_PASSWORD, "staff", "test")
    browser = Browser(node.url)
    await browser.login("nurse", NURSE_PASSWORD)
    return browser


async def open_status(url: str, headers: dict[str, str]) -> int:
    """101 for an upgrade (closed again at once), else the refusal's status."""
    try:
        conn = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=5))
    except HTTPClientError as exc:
        return exc.code
    conn.close()
    return 101


def patient_url(node, token: str) -> str:
    return node.url.replace("http", "ws", 1) + f"/v1/ws/notifications?token={token}"


def staff_url(node) -> str:
    return node.url.replace("http", "ws", 1) + "/dashboard/ws"


@pytest.mark.asyncio
async def test_both_sockets_refuse_the_same_origins_with_403(node, api, nurse):
    token = await api.token("p-1")
    cookie = {"Cookie": "; ".join(f"{k}={v}" for k, v in nurse.jar.items())}
    for name, origin in refused_origins(node).items():
        assert await open_status(patient_url(node, token), {"Origin": origin}) == 403, name
        staff = await open_status(staff_url(node), {"Origin": origin, **cookie})
        assert staff == 403, name
    # The page's own origin opens both.
    assert await open_status(patient_url(node, token), {"Origin": node.url}) == 101
    assert await open_status(staff_url(node), {"Origin": node.url, **cookie}) == 101
    # Without an Origin: an app may open the patients' socket; the cookie socket needs one.
    assert await open_status(patient_url(node, token), {}) == 101
    assert await open_status(staff_url(node), cookie) == 403


@pytest.mark.asyncio
async def test_the_allow_list_compares_the_scheme_and_is_not_for_the_staff_socket(
    settings, mongo_uri
):
    running = await serve_node(settings.with_(allowed_origins=f"{PORTAL}/"), mongo_uri)
    try:
        token = running.node.tokens.mint("p-1", ["patient"])[0]
        url = patient_url(running, token)
        assert await open_status(url, {"Origin": PORTAL}) == 101
        assert await open_status(url, {"Origin": PORTAL.upper()}) == 101  # case-insensitive
        assert await open_status(url, {"Origin": PORTAL.replace("https", "http")}) == 403
        assert await open_status(url, {"Origin": PORTAL + ":8443"}) == 403
        # The staff socket rides a cookie: only its own host, whatever the list says.
        assert await open_status(staff_url(running), {"Origin": PORTAL}) == 403
    finally:
        await running.stop()


def test_parse_names_an_origin_or_nothing():
    assert origins.parse("HTTPS://Portal.Example:8443/") == "https://portal.example:8443"
    for bad in ["http://[::1", "null", "javascript:alert(1)", "http://", "http://a b", "\x00"]:
        assert origins.parse(bad) is None, bad
    assert origins.allowed("http://[::1", "h", "http", frozenset({"*"})) is False
