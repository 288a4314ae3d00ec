"""Headless Chromium (Debian's package) driven by Playwright, for page tests.

``browser`` is an async fixture: import it in a test module with
``from tests.browser import browser  # noqa: F401`` and mark tests ``@pytest.mark.browser``.
Without Chromium the tests are skipped with a message, except under CI (``CI=true``), where
a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest
import pytest_asyncio

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """Debian's Chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest_asyncio.fixture
async def browser():
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run must install Debian's chromium package")
        pytest.skip("browser tests need Chromium: sudo apt-get install chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
