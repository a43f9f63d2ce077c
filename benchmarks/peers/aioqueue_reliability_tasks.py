"""aioqueue's task module for the SIGKILL reliability test (benchmarks/_reliability.py).

Worker: ``aioqueue worker benchmarks.peers.aioqueue_reliability_tasks:app -l warning -c 100``.
"""

from __future__ import annotations

import os
import shutil

from aioqueue import AioQueue
from benchmarks._reliability import AsyncRecorder
from benchmarks.peers.base import REDIS_URL_ENV, venv_bin

MAX_RATE = 200.0
NOTE = ('`aioqueue worker ... -c 100`, defaults otherwise: a message is acknowledged afte'
        "r the task ran; a dead worker's unacknowledged messages are taken over by anothe"
        "r worker once the dead one's connection is gone and its registration has gone un"
        'renewed for 4 s (about 4 s after a kill), by a worker that has itself been up fo'
        'r 4 s (so that after a Redis restart live workers re-register first): in this te'
        'st every worker is killed within about 2 s of starting, so the take-overs wait f'
        'or the kills to end; otherwise after `visibility_timeout` (default 30 s).')
SAFE_NOTE = NOTE  # the default is the safe setting

app = AioQueue("bench_rel", broker=os.environ[REDIS_URL_ENV])
_recorder = AsyncRecorder()


@app.task
async def work(i: int) -> None:
    await _recorder.work(i)


def worker_cmd() -> list[str]:
    script = venv_bin("aioqueue")
    prefix = [script] if shutil.which(script) else [venv_bin("python"), "-m", "aioqueue"]
    return [*prefix, "worker", f"{__name__}:app", "-l", "warning", "-c", "100"]


class Producer:
    async def start(self) -> None:
        return None

    async def send(self, i: int) -> None:
        await work.delay(i)

    async def close(self) -> None:
        await app.close()
