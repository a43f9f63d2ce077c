"""Shared fixtures: apps on the session's real redis-server (see ``aioqueue.testing``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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
async def apps() -> AsyncIterator[list[AioQueue]]:
    """Apps a test makes (it appends them), closed after it."""
    made: list[AioQueue] = []
    yield made
    for application in made:
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


@pytest.fixture(scope="session")
def backend_server() -> Iterator[Any]:
    """A second redis-server: a result backend on another server than the broker."""
    from aioqueue.testing import RedisServer  # registered as a plugin above: import late

    with RedisServer() as server:
        yield server


@pytest.fixture
def backend_url(backend_server: Any) -> str:
    """The backend server's URL, flushed before the test."""
    if backend_server.command("FLUSHALL") != b"+OK":
        raise RuntimeError("FLUSHALL failed on the backend redis-server")
    return backend_server.url


@pytest.fixture(scope="session")
def cluster_nodes_for_layouts() -> Iterator[Any]:
    """A Redis Cluster (3 masters, 3 replicas) for the ``cluster`` layout, made once."""
    from tests.cluster_nodes import running_cluster  # imports aioqueue.testing: late

    with running_cluster() as nodes:
        yield nodes


@pytest.fixture(params=["redis", "memory", "split", "cluster"])
async def any_app(request: pytest.FixtureRequest) -> AsyncIterator[AioQueue]:
    """The ``app`` settings on each layout in turn: a test using this must pass on all --
    one Redis, the in-process memory broker, ``split`` (results on another server than the
    queues: ``result_backend`` apart from ``broker_url``) and ``cluster`` (a Redis Cluster,
    ``redis+cluster://``, the app in one slot).

    Tests change a setting with ``any_app.conf.update(...)`` before their first broker call.
    """
    backend = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "cluster":
        nodes = request.getfixturevalue("cluster_nodes_for_layouts")
        nodes.flush()
        url = nodes.url()
    else:
        url = request.getfixturevalue("redis_url")
        if request.param == "split":
            backend = request.getfixturevalue("backend_url")
    application = AioQueue("tests", broker=url, backend=backend, **TEST_SETTINGS)
    yield application
    await application.close()
