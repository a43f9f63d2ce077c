"""The dashboard page in a real browser: headless Chromium (Debian's, driven by Playwright)
against ``serve()`` on a free loopback port and a real worker.

Skipped only when Chromium or Playwright is missing or Chromium cannot start here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from aioqueue import AioQueue
from tests.dashboard_server import served

CHROMIUM = "/usr/bin/chromium"
#: Without the background-networking flags Chromium's connections are refused on a closed
#: network; the rest keep it from doing anything but show the page.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
#: How long the page may take to show what happened (it is pushed within ~1 s).
SHOWN_MS = 10_000


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (as root)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `pip install playwright`")
    async with async_playwright() as pw:
        try:
            launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:
            pytest.skip(f"Chromium cannot be launched on this machine: {exc}")
        try:
            yield launched
        finally:
            await launched.close()


async def test_the_page_follows_tasks_live_and_retries_a_failure(app: AioQueue,
                                                                   browser: Any) -> None:
    from playwright.async_api import expect

    app.conf.update(worker_send_task_events=True)
    attempts: list[int] = []

    @app.task(name="ui.greet")
    async def greet(name: str) -> str:
        return f"hello {name}"

    @app.task(name="ui.fragile")
    async def fragile(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise ValueError("boom on the first try")
        return n + 1

    async with app.worker(concurrency=2, name="w-ui"), served(app) as base:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(base + "#/tasks")
        await expect(page.locator("#live")).to_have_class("live ok", timeout=SHOWN_MS)
        await page.evaluate("window.loadedOnce = true")  # gone if the page reloads

        # 1. A task run after the page loaded shows up, without a reload.
        handle = await greet.delay("web")
        assert await handle.get(timeout=10) == "hello web"
        row = page.locator(f'#tasks-table tr[data-task-id="{handle.id}"]')
        await expect(row).to_have_attribute("data-state", "SUCCESS", timeout=SHOWN_MS)
        await expect(row).to_contain_text("ui.greet")
        await expect(row).to_contain_text("('web',)")

        # 2. A failure's traceback is in its detail view, opened from the failed list.
        failed = await fragile.delay(41)
        with pytest.raises(ValueError):
            await failed.get(timeout=10)
        await page.click('#nav a[data-page="failed"]')
        failed_row = page.locator(f'#failed-table tr[data-task-id="{failed.id}"]')
        await expect(failed_row).to_contain_text("ValueError: boom on the first try",
                                                 timeout=SHOWN_MS)
        await failed_row.locator("a.id").click()
        traceback = page.locator("#task-traceback")
        await expect(traceback).to_contain_text("Traceback (most recent call last)",
                                                timeout=SHOWN_MS)
        await expect(traceback).to_contain_text("ValueError: boom on the first try")
        await expect(page.locator("#task-state .badge")).to_have_text("FAILURE")

        # 3. Retry sends it again; the page follows the new task until it succeeds.
        await page.click("#retry-btn")
        await expect(page.locator("#task-state .badge")).to_have_attribute(
            "data-state", "SUCCESS", timeout=SHOWN_MS)
        new_id = unquote(page.url.split("#/task/", 1)[1])
        assert new_id != failed.id
        await expect(page.locator("#task-result")).to_have_text("42", timeout=SHOWN_MS)
        assert await app.AsyncResult(new_id).get(timeout=10) == 42
        assert attempts == [41, 41]

        # The retry is in the audit log, with its link back.
        await page.click('#nav a[data-page="audit"]')
        await expect(page.locator("#audit-table tbody")).to_contain_text(f"as {new_id}",
                                                                         timeout=SHOWN_MS)
        assert await page.evaluate("window.loadedOnce") is True
        assert errors == []
        await page.close()
