"""Celery task module (redis broker + redis result backend).

Worker: ``celery -A benchmarks.peers.celery_tasks worker`` (default prefork pool).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from benchmarks.peers.base import REDIS_URL_ENV

_url = os.environ[REDIS_URL_ENV]

app = Celery("bench", broker=_url, backend=_url)
# Only silences Celery 5's deprecation warning; retrying is already the behaviour.
app.conf.broker_connection_retry_on_startup = True


@app.task
def noop() -> None:
    return None


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def sleepy() -> None:
    # Prefork workers are synchronous: the Celery equivalent of asyncio.sleep(0.05).
    time.sleep(0.05)
