"""Celery task module (redis broker + redis result backend).

Worker: ``celery -A benchmarks.peers.celery_tasks worker`` (prefork for the default-worker
phases, ``-P threads -c 500`` for the sleep test; see celery_peer.py).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from benchmarks.peers._first_run import record_first_run
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
    # Celery tasks are synchronous. The sleep test runs on the threads pool (-c 500):
    # a blocking sleep releases the GIL, so 500 of them sleep at once.
    time.sleep(0.05)


@app.task
def big(payload: str) -> None:
    return None


@app.task
def first_run() -> None:
    record_first_run()
