"""The dashboard served on a free loopback port, for the API and browser tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from aioqueue import AioQueue
from aioqueue.dashboard import serve
from aioqueue.testing import free_port


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
    """The first truthy value of ``check()``, polled until a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def served(app: AioQueue, **options: Any) -> AsyncIterator[str]:
    """``serve(app)`` on a free loopback port, until the block ends."""
    port = free_port()
    server = asyncio.create_task(serve(app, port=port, **options))
    base = f"http://127.0.0.1:{port}/"
    try:
        async with httpx.AsyncClient() as client:
            async def up() -> bool:
                if server.done():
                    server.result()  # raises what stopped it
                try:
                    return (await client.get(base + "api/config")).status_code in (200, 401)
                except httpx.TransportError:
                    return False

            await eventually(up)
        yield base
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
