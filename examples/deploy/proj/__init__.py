"""The app that examples/deploy runs on many hosts: workers, beat and the dashboard.

Nothing here names a server: every process reads its settings from the environment, so the
same image or checkout runs anywhere::

    AIOQUEUE_BROKER_URL=rediss://aioqueue:PASSWORD@redis.internal:6379/0?ssl_ca_certs=/etc/aioqueue/ca.pem
    aioqueue worker proj:app --processes 4 -l info

(``AIOQUEUE_<SETTING>`` variables override any setting: ``AIOQUEUE_WORKER_CONCURRENCY``,
``AIOQUEUE_VISIBILITY_TIMEOUT``... see docs/DEPLOYMENT.md.) Every task has an explicit name,
so producers that do not import this module can send to it by name.
"""

from __future__ import annotations

import asyncio

from aioqueue import AioQueue

#: key_prefix stays the default "aioqueue": the ACL in users.acl grants ~aioqueue:* only.
app = AioQueue("proj", result_expires=3600)


@app.task(name="proj.add")
async def add(x: int, y: int) -> int:
    """The round trip the deployment is checked with."""
    return x + y


@app.task(name="proj.slow")
async def slow(seconds: float) -> float:
    """Something that takes a while: for trying out shutdown_timeout and revoke."""
    await asyncio.sleep(seconds)
    return seconds


@app.task(name="proj.tick")
async def tick() -> str:
    """What beat sends every minute."""
    return "tick"


app.conf.beat_schedule = {
    "tick-every-minute": {
        "task": "proj.tick",
        "schedule": 60.0,
        # A tick nobody ran within a minute is stale: the next one is on its way.
        "options": {"expires": 60.0},
    },
}
