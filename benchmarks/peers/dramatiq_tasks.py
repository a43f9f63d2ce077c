"""Dramatiq actor module (Redis broker; Results middleware on the Redis backend).

Worker: ``dramatiq benchmarks.peers.dramatiq_tasks --processes 1 --threads N``. Dramatiq
actors are synchronous functions run by the worker's thread pool; only ``add`` stores its
result (``store_results=True``), the round trip's ``message.get_result(block=True)``.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from benchmarks.peers._first_run import record_first_run
from benchmarks.peers.base import REDIS_URL_ENV

_url = os.environ[REDIS_URL_ENV]

result_backend = RedisBackend(url=_url)
broker = RedisBroker(url=_url)
broker.add_middleware(Results(backend=result_backend))
dramatiq.set_broker(broker)


@dramatiq.actor
def noop() -> None:
    return None


@dramatiq.actor(store_results=True)
def add(x: int, y: int) -> int:
    return x + y


@dramatiq.actor
def sleepy() -> None:
    # Threads: a blocking sleep releases the GIL, so N threads sleep at once.
    time.sleep(0.05)


@dramatiq.actor
def big(payload: str) -> None:
    return None


@dramatiq.actor
def first_run() -> None:
    record_first_run()
