"""The service worker (static/notify-sw.js) and the portal example page in real Chromium.

DevTools' ``ServiceWorker.deliverPushMessage`` hands the worker the payload the service
would encrypt for this notification (the browser's push service is out of reach here); the
test reads what the worker showed (``registration.getNotifications()``), that it told the
open page to sync, and what a click does: the open portal page is told which notification to
show. Headless Chromium cannot click a system notification, so the click is a
``notificationclick`` event dispatched in the worker with the shown notification.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.browser import browser  # noqa: F401
from tests.support import WAIT, Api

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]

PAGE = "/static/portal-example.html"
REPEAT = WAIT / 2


async def push_until_shown(page, cdp, origin: str, registration_id: str, data: str, script: str):
    """Deliver a push through DevTools, then evaluate an async script until it returns
    something (wait_for_function takes a promise for a true value, so it cannot wait on
    getNotifications()).

    A push not shown within REPEAT seconds is delivered again, as a push service retries a
    message the browser did not take: on a loaded machine one delivery was never shown in
    20 s (1 of 14 loaded runs of the suite; cause not found). A notification's id is its
    tag, so a repeat replaces it and the tests still see exactly one (a payload without an id
    has no tag: a late first one and its repeat would be two, and fail the test).
    """
    message = {"origin": origin, "registrationId": registration_id, "data": data}
    deadline = time.monotonic() + WAIT
    while True:
        await cdp.send("ServiceWorker.deliverPushMessage", message)
        again = min(time.monotonic() + REPEAT, deadline)
        while (found := await page.evaluate(script)) is None and time.monotonic() < again:
            await asyncio.sleep(0.05)
        if found is not None:
            return found
        assert time.monotonic() < deadline, "no notification shown"


async def watch_registrations(cdp) -> list[dict]:
    """Service worker registrations as DevTools reports them (their ids deliver pushes)."""
    registrations: list[dict] = []
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda e: registrations.extend(e["registrations"]),
    )
    await cdp.send("ServiceWorker.enable")
    return registrations


async def test_the_worker_shows_a_push_syncs_the_page_and_opens_it_on_click(
    browser,  # noqa: F811
    node,
    api: Api,
):
    sent = await api.post(
        "/v1/notifications",
        {"user_id": "p-1", "type": "lab_result", "title": "HbA1c 9.1 %", "message": "secret",
         "priority": "critical", "data": {"lab_result_id": "l-1"}},
        expect=201,
    )  # fmt: skip
    doc = await node.node.store.get(sent["id"])
    payload = node.node.push._payload(doc).decode()  # what the device decrypts
    assert "secret" not in payload and "HbA1c" not in payload

    context = await browser.new_context()
    await context.grant_permissions(["notifications"], origin=node.url)
    page = await context.new_page()
    token = await api.token("p-1")
    await page.goto(f"{node.url}{PAGE}?token={token}")
    await page.wait_for_function("window.ready === true")
    assert await page.locator("#enable-push").inner_text() == "Enable notifications on this device"

    cdp = await context.new_cdp_session(page)
    registrations = await watch_registrations(cdp)
    await page.evaluate(
        """async () => {
            const url = "/static/notify-sw.js?portal=" + encodeURIComponent(location.pathname);
            await navigator.serviceWorker.register(url);
            await navigator.serviceWorker.ready;
        }"""
    )
    await page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=WAIT * 1000)
    [registration] = [r for r in registrations if not r.get("isDeleted")][-1:]

    [note] = await push_until_shown(
        page,
        cdp,
        node.url,
        registration["registrationId"],
        payload,
        """async () => {
            const reg = await navigator.serviceWorker.ready;
            const all = await reg.getNotifications();
            return all.length ? all.map(n => ({title: n.title, body: n.body, tag: n.tag,
                icon: n.icon, data: n.data, requireInteraction: n.requireInteraction})) : null;
        }""",
    )
    assert note["title"] == "Lab results ready" and note["tag"] == sent["id"]
    assert note["body"] == "Open the patient portal to read it."  # generic, no content
    assert note["icon"].endswith("/static/clinic-icon.png") and note["requireInteraction"]
    assert note["data"]["url"] == f"{node.url}{PAGE}?notification={sent['id']}"
    await page.wait_for_function("id => window.syncs.includes(id)", arg=sent["id"])
    await page.wait_for_function("id => !!document.getElementById('n-' + id)", arg=sent["id"])

    [worker] = context.service_workers
    await worker.evaluate(
        """async () => {
            const [n] = await self.registration.getNotifications();
            self.dispatchEvent(new NotificationEvent("notificationclick", {notification: n}));
        }"""
    )
    await page.wait_for_function("id => window.opened.includes(id)", arg=sent["id"])
    assert await page.get_attribute(f"#n-{sent['id']}", "class") == "opened"
    left = await page.evaluate(
        "async () => (await (await navigator.serviceWorker.ready).getNotifications()).length"
    )
    assert left == 0  # a click closes it
    await context.close()


async def test_a_push_without_json_still_shows_a_notification(browser, node):  # noqa: F811
    context = await browser.new_context()
    await context.grant_permissions(["notifications"], origin=node.url)
    page = await context.new_page()
    await page.goto(f"{node.url}/static/clinic-icon.png")
    cdp = await context.new_cdp_session(page)
    registrations = await watch_registrations(cdp)
    await page.evaluate(
        "async () => { await navigator.serviceWorker.register('/static/notify-sw.js');"
        " await navigator.serviceWorker.ready; }"
    )
    rid = [r for r in registrations if not r.get("isDeleted")][-1]["registrationId"]
    shown = await push_until_shown(
        page,
        cdp,
        node.url,
        rid,
        "not json",
        """async () => {
            const all = await (await navigator.serviceWorker.ready).getNotifications();
            return all.length ? all.map(n => n.title) : null;
        }""",
    )
    assert shown == ["New notification"]
    await context.close()


async def test_the_enable_button_subscribes_or_says_why_not(browser, node, api: Api):  # noqa: F811
    """The browser's own push service is out of reach from these machines: enablePush()
    then fails with push_unavailable after permission and the VAPID key; where it is
    reachable, the subscription is registered for the user."""
    context = await browser.new_context()
    await context.grant_permissions(["notifications"], origin=node.url)
    page = await context.new_page()
    token = await api.token("p-1")
    await page.goto(f"{node.url}{PAGE}?token={token}")
    await page.wait_for_function("window.ready === true")
    await page.click("#enable-push")
    await page.wait_for_function(
        "!['', 'asking…'].includes(document.getElementById('push-status').textContent)",
        timeout=WAIT * 1000,
    )
    status = await page.inner_text("#push-status")
    registered = (await api.get("/v1/users/p-1/push-subscriptions"))["items"]
    if status == "on":
        [sub] = registered
        assert sub["endpoint"].startswith("https://")
    else:
        assert status == "push_unavailable" and registered == []
    await context.close()
