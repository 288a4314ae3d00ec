"""@clinic-notify/react (clients/react) in headless Chromium, with React 18 in StrictMode.

React comes from npm (``.ci/run`` installs it under ``tests/.react``). The node serves the page
(static/test-pages/react.html); React's UMD builds and the two packages' own files reach the
browser through Playwright's routing under the node's own origin, as a portal on the same
host would; an import map resolves "react", "@clinic-notify/client" and "@clinic-notify/react".
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.browser import browser  # noqa: F401
from tests.support import QUIET, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "tests" / ".react" / "node_modules"
INSTALL = "npm install --no-save --prefix tests/.react react@18.3.1 react-dom@18.3.1"  # as .ci/run

# The hook imports from "react"; the page's import map points that at React's UMD global.
SHIM = (
    "const R = globalThis.React;\nexport const { useCallback, useEffect, useRef, useState } = R;\n"
)


def files() -> dict[str, tuple[str, bytes]]:
    """What the page loads from /react-test/, by name: (content type, body)."""
    umd = {
        "react.js": MODULES / "react" / "umd" / "react.development.js",
        "react-dom.js": MODULES / "react-dom" / "umd" / "react-dom.development.js",
    }
    if not all(path.exists() for path in umd.values()):
        if os.environ.get("CI"):
            pytest.fail(f"React is missing: .ci/run must run {INSTALL}")
        pytest.skip(f"the React hook test needs React: {INSTALL}")
    js = "text/javascript"
    served = {name: (js, path.read_bytes()) for name, path in umd.items()}
    packaged = {
        "hooks.mjs": ROOT / "clients" / "react" / "index.mjs",
        "client.mjs": ROOT / "clients" / "js" / "index.mjs",
        "notify-client.js": ROOT / "clients" / "js" / "notify-client.js",
    }
    served.update({name: (js, path.read_bytes()) for name, path in packaged.items()})
    served["react-shim.js"] = (js, SHIM.encode())
    return served


async def sockets_of(node, user_id: str, count: int) -> None:
    """Wait until the node holds exactly ``count`` sockets of the user, and still does."""
    for _ in range(2):
        await wait_for(
            lambda: len(node.node.hub.user_subscriptions(user_id)) == count,
            what=f"{user_id} with {count} sockets",
        )
        # An absence (no second socket opening late) can only be watched for a while.
        await asyncio.sleep(QUIET)


async def test_the_hook_lists_history_and_live_marks_read_and_keeps_one_socket(
    node,
    api,
    browser,  # noqa: F811
):
    served = files()
    context = await browser.new_context()

    async def serve(route) -> None:
        kind, body = served[route.request.url.rsplit("/", 1)[1]]
        await route.fulfill(status=200, content_type=kind, body=body)

    await context.route(f"{node.url}/react-test/*", serve)
    try:
        before = await api.notify("p-1", "Appointment confirmed")
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{node.url}/static/test-pages/react.html")
        await page.wait_for_function("window.ready === true")
        options = {"token": await api.token("p-1"), "userId": "p-1", "minDelay": 100}
        await page.evaluate("o => mount(o)", options)
        await page.wait_for_function("document.getElementById('status').textContent === 'open'")
        await page.wait_for_selector(f"li[data-id='{before['id']}']")
        await sockets_of(node, "p-1", 1)  # StrictMode mounts twice: the first one closed

        live = await api.notify("p-1", "Lab results ready")
        await page.wait_for_function("document.querySelectorAll('#list li').length === 2")
        titles = await page.eval_on_selector_all("#list li", "lis => lis.map(li => li.textContent)")
        assert titles == ["Lab results ready", "Appointment confirmed"]  # newest first
        await page.wait_for_function("document.getElementById('unread').textContent === '2'")

        await page.evaluate("id => hook.markRead(id)", live["id"])
        await page.wait_for_selector(f"li[data-id='{live['id']}'][data-read='yes']")
        await page.wait_for_function("document.getElementById('unread').textContent === '1'")
        assert (await api.get("/v1/users/p-1/unread-count"))["count"] == 1
        await page.evaluate("hook.markAllRead()")
        await page.wait_for_selector(f"li[data-id='{before['id']}'][data-read='yes']")
        await page.wait_for_function("document.getElementById('unread').textContent === '0'")

        # acknowledge(id, note), and an acknowledgement made elsewhere (the acknowledged event)
        await page.evaluate("id => hook.acknowledge(id, 'seen it')", live["id"])
        await page.wait_for_selector(f"li[data-id='{live['id']}'][data-acknowledged='yes']")
        stored = (await api.get(f"/v1/notifications/{live['id']}"))["notification"]
        assert stored["acknowledged_by"] == "p-1"
        await api.post(f"/v1/users/p-1/notifications/{before['id']}/acknowledge")
        await page.wait_for_selector(f"li[data-id='{before['id']}'][data-acknowledged='yes']")

        await page.evaluate("root.unmount()")
        await sockets_of(node, "p-1", 0)  # unmounting closes the socket

        # The earlier system's name: useWebSocketNotifications(userId, options).
        legacy = {"token": await api.token("p-1"), "minDelay": 100, "historySize": 0}
        await page.evaluate("o => mount(o, true)", legacy)
        await page.wait_for_function("document.getElementById('connected').textContent === 'true'")
        await sockets_of(node, "p-1", 1)
        again = await api.notify("p-1", "Reminder")
        await page.wait_for_selector(f"li[data-id='{again['id']}']")
        assert await page.evaluate("hook.transport") == "websocket"
        await page.evaluate("root.unmount()")
        await sockets_of(node, "p-1", 0)
        assert errors == []
    finally:
        await context.close()


async def test_the_readmes_options_table_matches_the_hook_and_its_types():
    """clients/react: the options the hook takes beyond the client's, in README, code and types."""
    import re

    package = ROOT / "clients" / "react"
    readme = (package / "README.md").read_text()
    block = readme.split("<!-- options -->")[1].split("<!-- /options -->")[0]
    documented = re.findall(r"^\| `(\w+)` \|", block, re.M)
    types = (package / "index.d.ts").read_text()
    interface = types.split("interface UseNotificationsOptions")[1].split("}")[0]
    declared = re.findall(r"^\s+(\w+)\?:", interface, re.M)
    hook = (package / "index.mjs").read_text()
    # The hook takes its own options out before handing the rest to the client.
    taken = re.search(r"const \{ (.*?), \.\.\.clientOptions \} = options;", hook).group(1)
    own = [part.split(":")[0].strip() for part in taken.split(",")]
    assert sorted(documented) == sorted(declared) == sorted(own)
    assert "historySize === undefined ? 50" in hook and "| `historySize` | number | `50` |" in block
