"""Browser tests: headless Chromium from Debian's packages, driven by Playwright's Python package
(never Playwright's own downloaded browsers), against real `legato serve` processes.

Without /usr/bin/chromium the tests skip locally and fail under CI=true, where `.ci/run` installs it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.integration.conftest import api, server, service  # noqa: F401 (fixtures used here)

CHROMIUM = Path(os.environ.get("LEGATO_CHROMIUM", "/usr/bin/chromium"))
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM}: apt-get install chromium (or set LEGATO_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(chromium), headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    await context.close()
    assert errors == [], f"the page's script failed: {errors}"


async def shot(page: Page, name: str) -> None:
    """A screenshot: for docs/ui.md when LEGATO_SCREENSHOTS=docs (`scripts/screenshots`), else
    beside the test's other files, so a test run leaves the checkout as it was."""
    where = os.environ.get("LEGATO_SCREENSHOTS")
    folder = DOCS_SCREENSHOTS if where == "docs" else Path(where or "/tmp/legato-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(folder / f"{name}.png"))
