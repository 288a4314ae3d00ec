"""The browser fixture itself: Chromium opens a page served by a node."""

from __future__ import annotations

import pytest

from tests.browser import browser  # noqa: F401

pytestmark = [pytest.mark.asyncio, pytest.mark.browser]


async def test_chromium_reads_a_page_from_the_service(node, browser):  # noqa: F811
    page = await browser.new_page()
    response = await page.goto(node.url + "/healthz")
    assert response.status == 200
    assert '"status": "ok"' in await page.content()
