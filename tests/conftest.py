"""Shared fixtures: apps on the session's real redis-server (see ``aioqueue.testing``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from aioqueue import AioQueue

# Opt-in, as users enable it too: a plugin that every installer of the package got would
# put fixtures named redis_server/redis_url into every user's test suite.
pytest_plugins = ("aioqueue.testing",)


#: Short timeouts, so failure paths show within a test's time.
TEST_SETTINGS: dict[str, Any] = {
    "visibility_timeout": 2.0,
    "shutdown_timeout": 2.0,
    "broker_connection_timeout": 2.0,
    "delayed_poll_interval": 0.02,
}


@pytest.fixture
async def app(redis_url: str) -> AsyncIterator[AioQueue]:
    """An app on the test Redis with short timeouts, closed after the test."""
    application = AioQueue("tests", broker=redis_url, **TEST_SETTINGS)
    yield application
    await application.close()


@pytest.fixture
async def memory_app() -> AsyncIterator[AioQueue]:
    """An app on the in-process memory broker."""
    application = AioQueue("tests", broker="memory://", delayed_poll_interval=0.02)
    yield application
    await application.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    """A plain redis client, to write straight into the streams as an attacker or bug would."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["redis", "memory"])
async def any_app(request: pytest.FixtureRequest) -> AsyncIterator[AioQueue]:
    """The ``app`` settings on each broker in turn: a test using this must pass on both.

    Tests change a setting with ``any_app.conf.update(...)`` before their first broker call.
    """
    url = request.getfixturevalue("redis_url") if request.param == "redis" else "memory://"
    application = AioQueue("tests", broker=url, **TEST_SETTINGS)
    yield application
    await application.close()
