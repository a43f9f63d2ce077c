"""The start-up row's task body, shared by every library's task module.

The task records the wall-clock time at which it ran in ``bench:first_run`` with a plain
(sync) redis-py client of its own, so the harness can compute spawn -> first task without
knowing anything about the library. A sync SET on loopback costs ~0.1 ms, once per spawn.
"""

from __future__ import annotations

import os
import time

import redis

from benchmarks.peers.base import REDIS_URL_ENV

FIRST_RUN_KEY = "bench:first_run"

_client: redis.Redis | None = None


def record_first_run() -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ[REDIS_URL_ENV])
    _client.set(FIRST_RUN_KEY, repr(time.time()))
