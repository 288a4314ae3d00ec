"""The browser library (clients/js, served as /static/notify-client.js) in headless Chromium.

The pages under static/test-pages/ load the library (as an ES module or with a plain script
tag) and render what it reports; ``fetchToken`` plays the portal's backend, minting tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import jwt
import pytest

from server.auth.credentials import Tokens
from tests.browser import browser  # noqa: F401
from tests.support import TOKEN_SECRET, WAIT, Api, serve_node, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]

FAST = {"minDelay": 100, "maxDelay": 800}
MINTER = Tokens(TOKEN_SECRET, 600, 86400)


async def open_client(context, base_url: str, page_name: str = "notify.html", **options):
    """A page of the test harness, with its client started with ``options``."""
    page = await context.new_page()
    await page.goto(f"{base_url}/static/test-pages/{page_name}")
    await page.wait_for_function("window.ready === true")
    await page.evaluate("o => startClient(o)", {**FAST, **options})
    return page


async def token_backend(context, user_id: str = "p-1") -> list[str]:
    """Expose ``fetchToken`` to every page of the context; returns the tokens it minted."""
    minted: list[str] = []

    def fetch_token() -> str:
        minted.append(MINTER.mint(user_id, ["patient"], 600)[0])
        return minted[-1]

    await context.expose_function("fetchToken", fetch_token)
    return minted


async def wait_status(page, status: str, timeout: float = WAIT * 1000) -> None:
    await page.wait_for_function(
        "s => document.getElementById('status').textContent === s", arg=status, timeout=timeout
    )


async def wait_shown(page, count: int, timeout: float = WAIT * 1000) -> list[dict]:
    await page.wait_for_function(
        "n => document.querySelectorAll('#list li').length >= n", arg=count, timeout=timeout
    )
    return await page.evaluate("shown()")


async def events(page, kind: str) -> list[dict]:
    return await page.evaluate("k => window.events.filter(e => e.type === k)", kind)


def signed(sub: str, exp: float, secret: str = TOKEN_SECRET) -> str:
    return jwt.encode({"sub": sub, "roles": ["patient"], "exp": int(exp)}, secret, "HS256")


def assert_in_order_once(shown: list[dict], expected: list[dict]) -> None:
    assert [s["id"] for s in shown] == [e["id"] for e in expected]
    cursors = [int(s["cursor"]) for s in shown]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)


async def test_the_service_serves_the_packages_file(node):
    """One source: /static/notify-client.js is clients/js/notify-client.js, byte for byte."""
    from pathlib import Path

    from tornado.httpclient import AsyncHTTPClient

    package = Path(__file__).resolve().parent.parent / "clients" / "js" / "notify-client.js"
    served = await AsyncHTTPClient().fetch(node.url + "/static/notify-client.js")
    assert served.body == package.read_bytes()
    assert "javascript" in served.headers["Content-Type"]


async def test_live_notification_as_module_and_as_plain_script(node, api, browser):  # noqa: F811
    for user, page_name, loaded_as, options in [
        ("p-1", "notify.html", "module", {}),
        ("p-2", "notify-classic.html", "script", {"url": "/"}),  # a relative URL works too
    ]:
        context = await browser.new_context()
        token = await api.token(user)
        page = await open_client(context, node.url, page_name, token=token, **options)
        assert await page.evaluate("window.loadedAs") == loaded_as
        refused = await page.evaluate(
            "() => { try { new NotifyClient({}); return null } catch (e) { return e.message } }"
        )
        assert "token" in refused
        await wait_status(page, "open")
        created = await api.notify(user, "Lab ready")
        [shown] = await wait_shown(page, 1)
        assert shown == {
            "id": created["id"],
            "cursor": created["cursor"],
            "title": "Lab ready",
            "read": "no",
        }
        assert await page.text_content("#unread") == "1"
        # The client acked it: the service recorded the delivery.
        await wait_for(lambda user=user: _delivered(api, user), what="the delivery receipt")
        # The cursor is kept per user in localStorage.
        stored = await page.evaluate(f"localStorage.getItem('notify-client:cursor:{user}')")
        assert stored == created["cursor"]
        await context.close()


async def _delivered(api: Api, user: str) -> bool:
    return bool((await api.get(f"/v1/users/{user}/notifications"))["items"][0]["delivered_at"])


async def test_restart_loses_nothing_and_repeats_nothing(settings, mongo_uri, browser):  # noqa: F811
    first = await serve_node(settings, mongo_uri)
    port = first.port
    key, _ = await first.node.api_keys.create("tests", ["notify", "tokens", "read"])
    api = Api(first.url, key)
    context = await browser.new_context()
    await token_backend(context)
    page = await open_client(context, first.url, token=await api.token("p-1"))
    await wait_status(page, "open")
    before = [await api.notify("p-1", f"before {i}") for i in range(2)]
    await wait_shown(page, 2)

    await first.stop()
    await page.wait_for_function("window.events.some(e => e.code === 1001)")
    # While this port is dead, another node on the same database takes notifications.
    other = await serve_node(settings.with_(node_id="other"), mongo_uri)
    try:
        during = [await Api(other.url, key).notify("p-1", f"during {i}") for i in range(5)]
    finally:
        await other.stop()
    await page.wait_for_function(  # the page fails a few reconnects
        "window.events.filter(e => e.type === 'status' && e.retryIn != null).length >= 3",
        timeout=WAIT * 1000,
    )
    again = await serve_node(settings.with_(port=port, node_id="again"), mongo_uri)
    try:
        await wait_status(page, "open")
        await wait_shown(page, 7)
        after = await Api(again.url, key).notify("p-1", "after")
        last = await Api(again.url, key).notify("p-1", "sentinel")  # nothing came twice before
        shown = await wait_shown(page, 9)
        assert_in_order_once(shown, [*before, *during, after, last])
        assert [s["title"] for s in shown][2:7] == [f"during {i}" for i in range(5)]
        sources = {e["id"]: e["source"] for e in await events(page, "notification")}
        assert [sources[d["id"]] for d in during] == ["replay"] * 5
        assert sources[after["id"]] == "live"
        # Backoff: capped by maxDelay while down, back to minDelay after the reconnect.
        closed = [e for e in await events(page, "status") if e.get("retryIn") is not None]
        assert len(closed) >= 3
        assert all(50 <= e["retryIn"] <= 800 for e in closed)
        assert closed[0]["code"] == 1001 and closed[0]["retryIn"] <= 100
        assert await page.text_content("#unread") == "9"
    finally:
        await again.stop()
        await context.close()


async def test_reload_resumes_from_the_stored_cursor(node, api, browser):  # noqa: F811
    context = await browser.new_context()
    await token_backend(context)
    page = await open_client(context, node.url, token=await api.token("p-1"))
    await wait_status(page, "open")
    seen = [await api.notify("p-1", f"seen {i}") for i in range(2)]
    await wait_shown(page, 2)
    await page.goto("about:blank")  # the tab unloads; the socket goes away
    missed = [await api.notify("p-1", f"missed {i}") for i in range(3)]

    await page.goto(node.url + "/static/test-pages/notify.html")
    await page.wait_for_function("window.ready === true")
    resumed_from = await page.evaluate(
        "o => startClient(o)", {**FAST, "token": await api.token("p-1")}
    )
    assert resumed_from == seen[-1]["cursor"]
    await wait_shown(page, 3)
    last = await api.notify("p-1", "sentinel")  # nothing else (nothing seen again) before it
    shown = await wait_shown(page, 4)
    assert_in_order_once(shown, [*missed, last])
    assert [s["title"] for s in shown] == ["missed 0", "missed 1", "missed 2", "sentinel"]
    [opened] = [e for e in await events(page, "status") if e["status"] == "open"]
    assert opened["recovered"] is True
    await context.close()


async def test_a_gap_longer_than_the_replay_is_filled_from_the_feed(
    settings,
    mongo_uri,
    browser,  # noqa: F811
):
    running = await serve_node(settings.with_(replay_limit=3), mongo_uri)
    context = await browser.new_context()
    try:
        key, _ = await running.node.api_keys.create("tests", ["notify", "tokens", "read"])
        api = Api(running.url, key)
        await token_backend(context)
        page = await open_client(context, running.url, token=await api.token("p-1"))
        await wait_status(page, "open")
        first = await api.notify("p-1", "first")
        await wait_shown(page, 1)
        await page.goto("about:blank")
        missed = [await api.notify("p-1", f"missed {i}") for i in range(8)]
        missed.append(await api.notify("p-1", "urgent", priority="critical"))
        missed += [await api.notify("p-1", f"late {i}") for i in range(2)]
        await api.notify("p-2", "someone else's")

        await page.goto(running.url + "/static/test-pages/notify.html")
        await page.wait_for_function("window.ready === true")
        await page.evaluate("o => startClient(o)", FAST)
        await wait_shown(page, len(missed))
        # Live delivery carries on after the fill (and nothing came twice before it), and
        # the cursor moved past the gap.
        late = await api.notify("p-1", "live again")
        shown = await wait_shown(page, len(missed) + 1)
        assert_in_order_once(shown, [*missed, late])
        assert first["id"] not in {s["id"] for s in shown}
        [opened] = [e for e in await events(page, "status") if e["status"] == "open"]
        assert opened["recovered"] is False
        sources = [e["source"] for e in await events(page, "notification")]
        assert sources == ["feed"] * 8 + ["replay"] * 3 + ["live"]
        assert await page.evaluate("client.cursor") == late["cursor"]
    finally:
        await context.close()
        await running.stop()


async def test_a_stored_cursor_beyond_the_feed_is_dropped_for_the_services(
    node,
    api,
    browser,  # noqa: F811
):
    """The database was restored from a backup: the tab's cursor is one it never handed out."""
    context = await browser.new_context()
    await token_backend(context)
    made = [await api.notify("p-1", f"kept {i}") for i in range(2)]
    ahead = str(int(made[-1]["cursor"]) + 1000)
    page = await context.new_page()
    await page.goto(node.url + "/static/test-pages/notify.html")
    await page.wait_for_function("window.ready === true")
    await page.evaluate(f"localStorage.setItem('notify-client:cursor:p-1', '{ahead}')")
    assert await page.evaluate("o => startClient(o)", {**FAST, "userId": "p-1"}) == ahead
    await wait_status(page, "open")
    [opened] = [e for e in await events(page, "status") if e["status"] == "open"]
    assert opened["recovered"] is False  # the page reloads its list (loadFeed) if it wants
    assert await page.evaluate("client.cursor") == made[-1]["cursor"]
    live = await api.notify("p-1", "live")
    shown = await wait_shown(page, 1)
    assert [s["id"] for s in shown] == [live["id"]]  # nothing old replayed or filled in
    stored = await page.evaluate("localStorage.getItem('notify-client:cursor:p-1')")
    assert stored == live["cursor"]
    await context.close()


async def test_read_in_one_tab_updates_the_unread_count_in_another(node, api, browser):  # noqa: F811
    context = await browser.new_context()
    await token_backend(context)
    tab_a = await open_client(context, node.url, useGetToken=True)
    tab_b = await open_client(context, node.url, useGetToken=True)
    await wait_status(tab_a, "open")
    await wait_status(tab_b, "open")
    made = [await api.notify("p-1", f"n{i}") for i in range(3)]
    await wait_shown(tab_a, 3)
    await wait_shown(tab_b, 3)
    assert await tab_b.text_content("#unread") == "3"

    await tab_a.evaluate("id => client.markRead(id)", made[0]["id"])
    await tab_b.wait_for_function("document.getElementById('unread').textContent === '2'")
    read = await tab_b.evaluate("shown()")
    assert [s["read"] for s in read] == ["yes", "no", "no"]
    assert await tab_a.text_content("#unread") == "2"

    await tab_b.evaluate("client.markAllRead()")
    await tab_a.wait_for_function("document.getElementById('unread').textContent === '0'")
    assert [s["read"] for s in await tab_a.evaluate("shown()")] == ["yes"] * 3
    assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 0

    # A bad id comes back as an error event, and the socket stays up.
    await tab_a.evaluate("client.markRead('no-such-id')")
    await tab_a.wait_for_function("window.events.some(e => e.type === 'error')")
    [error] = await events(tab_a, "error")
    assert error["code"] == "not_found"
    assert await tab_a.evaluate("client.status") == "open"
    await context.close()


ROTATED = "a-rotated-secret-0123456789-abcdefghij"


STALE_TOKENS = {
    # the token's exp has passed: the client asks for a new one before connecting
    "expired": (lambda: signed("p-1", time.time() - 60), {}),
    # signed with an old secret: the service closes with 1008 after the auth frame
    "refused after the auth frame": (lambda: signed("p-1", time.time() + 600, ROTATED), {}),
    # the same in the URL: the upgrade fails (401, unreadable); the 2nd failure is the cue
    "refused at the upgrade": (
        lambda: signed("p-1", time.time() + 600, ROTATED),
        {"tokenInUrl": True},
    ),
}


async def test_a_stale_token_is_replaced_through_the_callback(node, api, browser):  # noqa: F811
    for case, (stale, options) in STALE_TOKENS.items():
        context = await browser.new_context()
        minted = await token_backend(context)
        page = await context.new_page()
        sockets = []
        page.on("websocket", lambda ws, sockets=sockets: sockets.append(ws.url))
        await page.goto(node.url + "/static/test-pages/notify.html")
        await page.wait_for_function("window.ready === true")
        await page.evaluate("o => startClient(o)", {**FAST, "token": stale(), **options})
        await wait_status(page, "open")
        assert len(minted) == 1 and await page.evaluate("window.tokenRequests") == 1, case
        in_url = [url for url in sockets if "token=" in url]
        assert len(in_url) == (len(sockets) if options else 0), case
        created = await api.notify("p-1", case)
        shown = await wait_shown(page, 1)
        assert shown[-1]["id"] == created["id"], case
        # REST calls use the fresh token too.
        feed = await page.evaluate("client.loadFeed({limit: 1})")
        assert [n["id"] for n in feed["items"]] == [created["id"]], case
        await context.close()


async def test_offline_pauses_reconnecting_until_online(node, api, browser):  # noqa: F811
    context = await browser.new_context()
    await token_backend(context)
    page = await context.new_page()
    await page.goto(node.url + "/static/test-pages/notify.html")
    await page.wait_for_function("window.ready === true")
    await context.set_offline(True)
    await page.evaluate("o => startClient(o)", FAST)
    await wait_status(page, "offline")
    statuses = await events(page, "status")
    assert [s["status"] for s in statuses] == ["offline"] and statuses[0]["offline"] is True
    assert await page.evaluate("window.tokenRequests") == 0
    # No retry is pending: only the browser's "online" event starts the next attempt.
    assert await page.evaluate("client._timer === null")
    await context.set_offline(False)
    await wait_status(page, "open")
    assert [s["status"] for s in await events(page, "status")] == ["offline", "connecting", "open"]
    # Going offline with the socket open says so at once, not after the ping timeout.
    await context.set_offline(True)
    await wait_status(page, "offline", timeout=5000)  # the ping would take 20 s
    missed = await api.notify("p-1", "while offline")
    await context.set_offline(False)
    await wait_status(page, "open")
    [shown] = await wait_shown(page, 1)
    assert shown["id"] == missed["id"]
    await context.close()


async def pump(src, dst, passing=lambda: True) -> None:
    """Copy bytes from one stream to another; while ``passing()`` is false they vanish."""
    with contextlib.suppress(ConnectionError):
        while data := await src.read(65536):
            if passing():  # silent: bytes vanish, nobody is told
                dst.write(data)
                await dst.drain()
    dst.close()


class Blackhole:
    """A TCP relay to a node that can go silent without closing: a dead connection."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.open = asyncio.Event()
        self.open.set()
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pump(src, dst, self.open.is_set))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()


async def test_a_dead_connection_is_noticed_within_the_ping_timeout(node, api, browser):  # noqa: F811
    hole = Blackhole(node.port)
    port = await hole.start()
    context = await browser.new_context()
    try:
        await token_backend(context)
        base = f"http://127.0.0.1:{port}"
        ping = {"pingInterval": 1000, "pongTimeout": 1000}
        page = await open_client(context, base, **ping, connectTimeout=3000)
        await wait_status(page, "open")
        hole.open.clear()
        went_silent = await page.evaluate("Date.now()")
        await page.wait_for_function(
            "window.events.some(e => e.reason === 'no answer to ping')", timeout=WAIT * 1000
        )
        [dead, *_] = [e for e in await events(page, "status") if e.get("reason")]
        assert dead["reason"] == "no answer to ping"
        # One interval and the timeout, with a loaded machine's slack (the default pair is
        # 20 s, so this still tells the ping apart from anything slower).
        assert dead["at"] - went_silent <= 1000 + 1000 + 3000
        missed = await api.notify("p-1", "while the line was dead")
        hole.open.set()
        await wait_status(page, "open")
        [shown] = await wait_shown(page, 1)
        assert shown["id"] == missed["id"]
    finally:
        await context.close()
        await hole.stop()


async def test_a_portal_on_another_origin_uses_rest_when_that_origin_is_allowed(
    settings,
    mongo_uri,
    node,
    api,
    browser,  # noqa: F811
):
    """The page from http://localhost:PORT, the library pointed at http://127.0.0.1:PORT."""
    from tornado.netutil import bind_sockets

    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    portal = f"http://localhost:{port}"
    allowing = await serve_node(
        settings.with_(node_id="cors", allowed_origins=portal), mongo_uri, sockets=sockets
    )
    context = await browser.new_context()
    try:
        # Allowed: the socket opens, and the REST calls (preflighted: they send
        # Authorization) read the service's answers.
        page = await open_client(
            context, portal, token=await api.token("p-1"), url=allowing.url, userId="p-1"
        )
        assert await page.evaluate("location.origin") == portal != allowing.url
        await wait_status(page, "open")
        created = await api.notify("p-1", "Lab ready")
        await wait_shown(page, 1)
        feed = await page.evaluate("client.loadFeed({limit: 10})")
        assert [n["id"] for n in feed["items"]] == [created["id"]]
        await page.evaluate("client.close()")
        await wait_status(page, "closed")
        await page.evaluate("id => client.markRead(id)", created["id"])  # over REST now
        assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 0
        assert await page.text_content("#unread") == "0"
        assert await events(page, "error") == []
        await page.close()

        # Not allowed (the default: same host only): the browser blocks the REST calls, and
        # the socket's handshake is refused.
        other = f"http://localhost:{node.port}"
        page = await open_client(
            context, other, token=await api.token("p-1"), url=node.url, userId="p-1"
        )
        failed = await page.evaluate(
            """async id => {
                 const out = [];
                 for (const call of [() => client.loadFeed(), () => client.markRead(id)]) {
                   try { await call(); out.push("ok") } catch (e) { out.push(e.name) }
                 }
                 return out;
               }""",
            created["id"],
        )
        assert failed == ["TypeError", "TypeError"]  # fetch's network error: nothing to read
        # The library works out why and says what to do; the socket never opened.
        await page.wait_for_function("window.events.some(e => e.code === 'origin_refused')")
        statuses = [e["status"] for e in await events(page, "status")]
        assert "closed" in statuses and "open" not in statuses, statuses
        [hint] = [e for e in await events(page, "error") if e["code"] == "origin_refused"]
        assert other in hint["message"] and "NOTIFY_ALLOWED_ORIGINS" in hint["message"]
    finally:
        await context.close()
        await allowing.stop()


class WebSocketBlocker:
    """A relay to a node that refuses every WebSocket upgrade, as some hospital proxies do,
    and passes plain HTTP (the page, REST, the SSE stream) through."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.refused = 0
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if b"upgrade: websocket" in head.lower():
            self.refused += 1
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        up_writer.write(head)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()


async def test_behind_a_proxy_that_blocks_websockets_the_library_falls_back_to_sse(
    node,
    api,
    browser,  # noqa: F811
):
    blocker = WebSocketBlocker(node.port)
    port = await blocker.start()
    context = await browser.new_context()
    try:
        await token_backend(context)
        page = await open_client(context, f"http://127.0.0.1:{port}")
        await wait_status(page, "open")
        assert blocker.refused >= 1  # the socket was tried first, and refused
        assert await page.evaluate("client.transport") == "sse"
        [opened] = [e for e in await events(page, "status") if e["status"] == "open"]
        assert opened["transport"] == "sse"
        [sub] = node.node.hub.user_subscriptions("p-1")
        assert sub.conn.transport == "sse"

        made = await api.notify("p-1", "Lab ready")
        [shown] = await wait_shown(page, 1)
        assert shown["id"] == made["id"]
        await tab_reads(page, made["id"])
        assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 0

        # Away and back: the SSE stream resumes with since, like the socket.
        await page.evaluate("client.close()")
        missed = [await api.notify("p-1", f"missed {i}") for i in range(2)]
        await page.evaluate("client.connect()")
        shown = await wait_shown(page, 3)
        assert [s["id"] for s in shown] == [made["id"]] + [m["id"] for m in missed]
        sources = [e["source"] for e in await events(page, "notification")]
        assert sources == ["live", "replay", "replay"]
        assert await page.evaluate("client.transport") == "sse"
        assert [e for e in await events(page, "error")] == []
    finally:
        await context.close()
        await blocker.stop()


async def tab_reads(page, notification_id: str) -> None:
    """markRead (over REST on SSE) and wait for the page to show it read."""
    await page.evaluate("id => client.markRead(id)", notification_id)
    await page.wait_for_function("document.getElementById('unread').textContent === '0'")
    [shown] = await page.evaluate("shown()")
    assert shown["read"] == "yes"
