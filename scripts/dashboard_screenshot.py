"""Take ``docs/dashboard.png``, the README's picture of the dashboard.

Starts a throwaway ``redis-server``, two workers and the dashboard, runs a few hundred
tasks (some fail, some retry, one is dead-lettered), opens the overview in headless
Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright) and saves a screenshot::

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/dashboard.png] [--page overview]

Everything on the picture really ran, so the hour-long charts have one busy minute.
``--made-up-history`` fills the 59 minutes before with invented per-minute counts (the
counters workers write), to see what an hour of traffic looks like; never for the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from aioqueue import AioQueue, Task, crontab
from aioqueue.dashboard import serve
from aioqueue.events import minute_of
from aioqueue.testing import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class PaymentDeclined(Exception):
    pass


def make_app(url: str) -> AioQueue:
    app = AioQueue("shop", broker=url, worker_send_task_events=True,
                   task_send_sent_event=True, timezone="Europe/Paris")
    app.conf.beat_schedule = {
        "nightly-report": {"task": "shop.report", "schedule": crontab(minute="0", hour="2")},
        "sync-inventory": {"task": "shop.sync_inventory", "schedule": 300.0},
        "send-digest": {"task": "shop.send_email", "schedule": crontab(minute="*/15"),
                        "args": ("digest@example.com",)},
    }

    @app.task(name="shop.send_email", queue="emails")
    async def send_email(to: str) -> str:
        await asyncio.sleep(random.uniform(0.01, 0.08))
        return f"sent to {to}"

    @app.task(name="shop.resize_image", queue="images")
    async def resize_image(path: str, width: int = 800) -> dict[str, Any]:
        await asyncio.sleep(random.uniform(0.02, 0.15))
        return {"path": path, "width": width}

    @app.task(name="shop.charge_card")
    async def charge_card(order: int, amount: float) -> str:
        await asyncio.sleep(random.uniform(0.01, 0.05))
        if order % 9 == 0:
            raise PaymentDeclined(f"card declined for order {order}")
        return f"charged {amount:.2f}"

    @app.task(name="shop.sync_inventory", bind=True, default_retry_delay=0, max_retries=2)
    async def sync_inventory(self: Task[..., Any], sku: str) -> int:
        if self.request.retries == 0 and sku.endswith("7"):
            raise self.retry(exc=TimeoutError("warehouse API timed out"))
        return len(sku)

    @app.task(name="shop.report")
    async def report() -> None:
        return None

    return app


async def add_history(app: AioQueue) -> None:
    """Per-minute counts for the hour before now (see the module doc)."""
    now = minute_of()
    counts: dict[tuple[int, str], int] = {}
    rng = random.Random(7)
    for back in range(1, 60):
        minute = now - back
        wave = 1.0 + 0.6 * math.sin(back / 7.0)
        for name, base, fail in [("shop.send_email", 140, 0.0), ("shop.resize_image", 60, 0.01),
                                 ("shop.charge_card", 90, 0.04),
                                 ("shop.sync_inventory", 25, 0.0)]:
            n = int(base * wave * rng.uniform(0.8, 1.2))
            failed = int(n * fail * (4 if 20 <= back <= 24 else 1) * rng.uniform(0.5, 1.5))
            counts[(minute, f"{name}|SENT")] = n
            counts[(minute, f"{name}|STARTED")] = n
            counts[(minute, f"{name}|SUCCESS")] = n - failed
            counts[(minute, f"{name}|FAILURE")] = failed
            if name == "shop.sync_inventory":
                counts[(minute, f"{name}|RETRY")] = n // 10
    await app.broker.count_stats(counts, 3600)


async def run_tasks(app: AioQueue) -> None:
    emails, images = app.tasks["shop.send_email"], app.tasks["shop.resize_image"]
    charge, sync = app.tasks["shop.charge_card"], app.tasks["shop.sync_inventory"]
    handles = []
    for i in range(40):
        handles.append(await emails.delay(f"customer{i}@example.com"))
        handles.append(await charge.delay(1000 + i, 19.99 + i))
        if i % 2 == 0:
            handles.append(await images.delay(f"/media/products/{i}.jpg", width=640))
        if i % 5 == 0:
            handles.append(await sync.delay(f"SKU-{i:04d}7"))
    for handle in handles:
        with contextlib.suppress(Exception):
            await handle.get(timeout=30)
    # Something waiting and something delayed, for the queue table.
    await emails.apply_async(args=("later@example.com",), countdown=3600)
    await images.apply_async(args=("/media/big.tiff",), countdown=600)
    await app.broker.ensure_queues(["thumbnails"])  # nobody serves it: a backlog grows
    for i in range(12):
        await app.send_task("shop.resize_image", args=(f"/media/backlog/{i}.png",),
                            queue="thumbnails")
    # A dead letter: a message no worker can decode.
    from aioqueue.broker import Enqueue

    await app.broker.enqueue([Enqueue("default", b"\xc1not a message")])


async def wait_until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def main(out: Path, page_name: str, history: bool, width: int) -> None:
    from playwright.async_api import async_playwright

    with RedisServer() as redis:
        app = make_app(redis.url)
        port = free_port()
        base = f"http://127.0.0.1:{port}/"
        async with app.worker(concurrency=20, queues=["default", "emails"],
                              name="worker-1@shop-prod"), \
                app.worker(concurrency=8, queues=["images"], name="worker-2@shop-prod"):
            server = asyncio.create_task(serve(app, port=port))
            try:
                async with httpx.AsyncClient() as client:
                    async def up() -> bool:
                        try:
                            return (await client.get(base + "api/config")).status_code == 200
                        except httpx.HTTPError:
                            return False

                    await wait_until(up, 10, "the dashboard")
                if history:
                    await add_history(app)
                await run_tasks(app)

                async def dead_letter() -> bool:
                    return any(q.dead for q in await app.broker.queue_details(["default"]))

                await wait_until(dead_letter, 10, "the dead letter")
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                                       args=CHROMIUM_ARGS)
                    page = await browser.new_page(viewport={"width": width, "height": 900},
                                                  device_scale_factor=1)
                    await page.goto(base + "#/" + page_name)
                    await page.wait_for_selector("#live.ok", timeout=10_000)
                    if page_name == "overview":
                        await page.wait_for_selector("#workers-table tbody tr[data-worker]")
                        await page.wait_for_selector("#chart-throughput .uplot")
                    await page.wait_for_timeout(2500)  # one more live snapshot, for the picture
                    out.parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=str(out), full_page=True)
                    await browser.close()
            finally:
                server.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server
        await app.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--page", default="overview",
                        choices=["overview", "tasks", "failed", "scheduled", "audit"])
    # Off by default: the README's picture shows only what really ran.
    parser.add_argument("--made-up-history", action="store_true",
                        help="fill the previous hour's counters with invented numbers")
    parser.add_argument("--width", type=int, default=1400)
    ns = parser.parse_args()
    try:
        asyncio.run(main(ns.out, ns.page, ns.made_up_history, ns.width))
    except KeyboardInterrupt:
        sys.exit(130)
