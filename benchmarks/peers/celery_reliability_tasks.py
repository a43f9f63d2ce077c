"""Celery's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``celery -A benchmarks.peers.celery_reliability_tasks worker`` (default prefork
pool, one process per CPU). ``BENCH_RELIABILITY_SAFE=1``: Celery's documented opt-in for
surviving a killed worker (late acks, reject on worker lost, a short visibility timeout).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

from benchmarks._reliability import SyncRecorder, safe_settings
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

# The default prefork pool runs nproc synchronous 50 ms tasks per worker (2 x 2 x 20/s at
# most on a 2-core machine, less while workers restart): 200/s would only build a backlog
# that outlasts the bound. 100 prefork processes per worker are not a sane configuration.
MAX_RATE = 40.0
NOTE = ("default prefork pool (`-c` = nproc), defaults otherwise: `task_acks_late=False`, "
        "so a message is acknowledged when its task starts and a task running in a killed "
        "worker is gone; messages prefetched but not started stay unacknowledged and are "
        "restored after the Redis transport's `visibility_timeout` (default 3600 s).")
SAFE_NOTE = ("as `celery`, plus `task_acks_late=True`, `task_reject_on_worker_lost=True` and "
             "`broker_transport_options={'visibility_timeout': 10}` (without the last, a "
             "killed worker's unacknowledged tasks wait an hour; the whole worker is "
             "killed, so there is no parent left to reject them at once).")

app = Celery("bench_rel", broker=os.environ[REDIS_URL_ENV])
app.conf.broker_connection_retry_on_startup = True  # silences a Celery 5 warning only
if safe_settings():
    app.conf.task_acks_late = True
    app.conf.task_reject_on_worker_lost = True
    app.conf.broker_transport_options = {"visibility_timeout": 10}

_recorder = SyncRecorder()


@app.task(ignore_result=True)
def work(i: int) -> None:
    _recorder.work(i)


def worker_cmd() -> list[str]:
    return [venv_bin("celery"), "-A", __name__, "worker", "--loglevel", "WARNING"]


class Producer:
    """Celery's client is synchronous: every call on one dedicated thread."""

    async def start(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-client")

    async def send(self, i: int) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, work.delay, i)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, app.close)
        self._thread.shutdown(wait=True)
