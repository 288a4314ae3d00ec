"""The dashboard in headless Chromium: log in, send from the compose form, watch it arrive in
the test client of a second browser context, and watch connections come and go live.

``UPDATE_SCREENSHOTS=1`` makes the last test write the README's screenshots to ``docs/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio
from argon2 import PasswordHasher

from server.dashboard.activity import Sample
from tests.browser import browser  # noqa: F401
from tests.support import Socket, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]

PASSWORD = "nurse-password-456"
SCRIPT = "<script>alert(1)</script>"
DOCS = Path(__file__).resolve().parent.parent / "docs"
WAIT = 10_000  # ms


@pytest_asyncio.fixture
async def staff_account(node):
    staff = node.node.dashboard.staff
    staff.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    await staff.create("nurse", PASSWORD, "admin", "test")


async def signed_in(browser, node, path: str = "/dashboard"):  # noqa: F811
    """A new browser context, logged in through the form, on ``path``."""
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: dialogs.append(d.message))
    page.dialogs = dialogs
    await page.goto(node.url + path)
    assert "/dashboard/login" in page.url
    await page.fill("#f-username", "nurse")
    await page.fill("#f-password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(node.url + path, timeout=WAIT)
    return context, page


async def test_send_from_compose_and_watch_it_arrive(node, browser, staff_account):  # noqa: F811
    staff_ctx, staff = await signed_in(browser, node, "/dashboard/connections")
    await staff.wait_for_selector(".live-status.is-live", timeout=WAIT)
    client_ctx, client = await signed_in(browser, node, "/dashboard/test-client")

    # The test client mints a token server-side and opens the real socket.
    await client.fill("#tc-user", "p-1001")
    await client.click("[data-client-open]")
    await client.wait_for_selector("[data-client-status].is-live", timeout=WAIT)
    assert "Connected as p-1001" in await client.text_content("[data-client-status]")

    # It shows up on the live connection list, without a reload.
    row = staff.locator("tr[data-connection]", has_text="p-1001")
    await row.wait_for(timeout=WAIT)
    assert "patient" in await row.text_content()
    assert "HeadlessChrome" in await row.text_content()

    # Send from the compose form, with a title that would run if it were not escaped.
    await staff.goto(node.url + "/dashboard/compose")
    await staff.check("input[name=target][value=user]")
    await staff.fill("#f-user_id", "p-1001")
    await staff.select_option("#f-priority", "high")
    await staff.fill("#f-title", SCRIPT)
    await staff.fill("#f-message", "Your results are ready.")
    await staff.click("form[data-compose] button[type=submit]")
    await staff.wait_for_selector("[data-outcome]", timeout=WAIT)
    assert await staff.text_content("[data-outcome-devices]") == "1"
    assert await staff.text_content("[data-outcome-users]") == "1"
    assert await staff.text_content("[data-outcome-offline]") == "0"
    assert SCRIPT in await staff.text_content("[data-outcome] h2")

    # It arrives in the other context's test client, as text.
    received = client.locator("[data-received] tr[data-received-id]")
    await received.first.wait_for(timeout=WAIT)
    assert SCRIPT in await received.first.text_content()
    await client.click("[data-received] tr[data-received-id] >> text=Ack")
    await client.locator("[data-frames] li.out", has_text='"ack"').wait_for(timeout=WAIT)
    await client.click("[data-send=ping]")
    await client.locator("[data-frames] li.in", has_text='"pong"').wait_for(timeout=WAIT)

    # The history shows it escaped, and received once the ack is stored.
    await staff.goto(node.url + "/dashboard/history?user=p-1001")
    history = staff.locator("tr[data-notification]")
    assert SCRIPT in await history.first.text_content()
    for _ in range(20):
        if "received" in await history.first.text_content():
            break
        await staff.reload()
        history = staff.locator("tr[data-notification]")
    assert "received" in await history.first.text_content()
    assert "acknowledged" not in await history.first.text_content()  # a receipt, not a person

    # The person acknowledges (CONTRACT §8): the client hears it back, the history shows who.
    await client.click("[data-received] tr[data-received-id] >> text=Acknowledge")
    await client.locator("[data-frames] li.in", has_text='"acknowledged"').wait_for(timeout=WAIT)
    await staff.reload()
    assert "acknowledged p-1001" in " ".join(
        (await staff.locator("tr[data-notification]").first.text_content()).split()
    )
    assert staff.dialogs == [] and client.dialogs == []

    # Closing the test client's page closes its socket: the row goes away live.
    await staff.goto(node.url + "/dashboard/connections")
    await staff.locator("tr[data-connection]", has_text="p-1001").wait_for(timeout=WAIT)
    await client_ctx.close()
    await staff.locator("tr[data-connection]", has_text="p-1001").wait_for(
        state="detached", timeout=WAIT
    )
    await staff_ctx.close()


async def test_logging_out_and_a_wrong_password(node, browser, staff_account):  # noqa: F811
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(node.url + "/dashboard/login")
    await page.fill("#f-username", "nurse")
    await page.fill("#f-password", "not-the-password")
    await page.click("button[type=submit]")
    assert "wrong username or password" in await page.text_content(".alert-error")
    await page.fill("#f-password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector(".live-status.is-live", timeout=WAIT)
    await page.click(".logout button")
    await page.wait_for_url("**/dashboard/login", timeout=WAIT)
    await page.goto(node.url + "/dashboard/compose")
    assert "/dashboard/login" in page.url
    await context.close()


async def test_screenshots_of_the_overview_and_compose(node, browser, staff_account, tmp_path):  # noqa: F811
    """Renders both pages with real sockets and sends (checked here); with
    UPDATE_SCREENSHOTS=1 they go to docs/ for the README."""
    target = DOCS if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    target.mkdir(exist_ok=True)
    services = node.node
    sockets = await some_traffic(node)
    simulate_an_hour(services.dashboard.activity)
    context, page = await signed_in(browser, node, "/dashboard")
    await page.wait_for_selector(".live-status.is-live", timeout=WAIT)
    await page.wait_for_selector("[data-chart] svg path.line-connections", timeout=WAIT)
    await page.locator("[data-critical] tr", has_text="p-3001").wait_for(timeout=WAIT)
    assert await page.text_content("[data-figure=connections]") == "7"
    await page.screenshot(path=str(target / "dashboard-overview.png"), full_page=True)

    await page.goto(node.url + "/dashboard/compose")
    await page.check("input[name=target][value=role]")
    await page.fill("#f-role", "patient")
    await page.select_option("#f-type", "system_alert")
    await page.fill("#f-title", "Clinic closed on Friday")
    await page.fill("#f-message", "The clinic is closed on Friday 4 December for staff training.")
    await page.click("form[data-compose] button[type=submit]")
    await page.wait_for_selector("[data-outcome]", timeout=WAIT)
    assert await page.text_content("[data-outcome-devices]") == "6"
    assert await page.text_content("[data-outcome-offline]") == "3"
    await page.screenshot(path=str(target / "dashboard-compose.png"), full_page=True)
    for name in ("dashboard-overview.png", "dashboard-compose.png"):
        assert (target / name).stat().st_size > 10_000
    await context.close()
    for socket in sockets:
        socket.close()


async def some_traffic(node) -> list[Socket]:
    """Seven sockets (five patients, one on two devices, and a doctor), three patients seen
    before but offline, a few notifications, and one critical nobody acknowledged."""
    services = node.node
    for user in ("p-2001", "p-2002", "p-2003"):
        gone = await Socket.open(node.url, services.tokens.mint(user, ["patient"])[0])
        await gone.expect("welcome")
        gone.close()
    sockets = []
    for user, roles in [*((f"p-100{i}", ["patient"]) for i in range(1, 6)), ("d-7", ["doctor"])]:
        sockets.append(await Socket.open(node.url, services.tokens.mint(user, roles)[0]))
    sockets.append(await Socket.open(node.url, services.tokens.mint("p-1001", ["patient"])[0]))
    for socket in sockets:
        await socket.expect("welcome")
    base = {"type": "custom", "priority": "normal", "message": "m", "data": {}}
    for user in ("p-1001", "p-1002", "p-1003"):
        await services.notifications.create({**base, "user_id": user, "title": "Reminder"})
    services.notifications.critical_ack *= 0
    await services.notifications.create(
        {**base, "user_id": "p-3001", "priority": "critical", "title": "Call the clinic today"}
    )
    # Cluster presence is written a moment after sockets open.
    online = {**{f"p-100{i}": 1 for i in range(2, 6)}, "p-1001": 2, "d-7": 1}
    await wait_for(lambda: _online(node, online), what="presence of every socket")
    return sockets


async def _online(node, wanted: dict[str, int]) -> bool:
    found = await node.node.presence(list(wanted))
    return {u: found[u]["connections"] for u in wanted} == wanted


def simulate_an_hour(activity) -> None:
    """Fill the sampler with a plausible past hour, so the screenshot's chart shows a shape.

    The simulated counts lead up to the real ones of now, so the figures stay consistent.
    Only the screenshot does this; every other test sees the sampler's real samples.
    """
    now = activity.sample()
    activity.samples.clear()
    seq, delivered = float(now.seq), now.delivered
    past = []
    for i in range(1, 721):
        minute = (720 - i) / 12
        busy = 20 < minute < 24 or 41 < minute < 43
        connections = round(2 + 4 * minute / 60 + ((i // 41) % 3))
        seq -= 0.05 + (0.6 if busy else 0)
        delivered -= 0.1 + (1.5 if busy else 0)
        past.append(Sample(now.at - i * 5, connections, connections, max(0, int(seq)), delivered))
    activity.samples.extend(reversed(past))
    activity.samples.append(now)
