"""Periodic tasks with beat: an interval and a crontab read in Shanghai time.

Run, from this directory, a worker that also schedules (any number of them is safe: one
leads, each tick is sent once)::

    aioqueue worker beat_app:app --beat

or a worker and a separate scheduler::

    aioqueue worker beat_app:app
    aioqueue beat beat_app:app

``aioqueue beat beat_app:app --list`` prints the schedules and their next fire times.
A schedule's first tick is the first one after it is deployed: nothing is sent for ticks
from before, and ticks missed while no beat ran are sent once, not one by one.
"""

from __future__ import annotations

import os

from aioqueue import AioQueue, crontab

app = AioQueue(
    "beat_demo",
    broker=os.environ.get("AIOQUEUE_BROKER", "redis://localhost:6379/0"),
    # crontab fields are wall-clock time in this zone; intervals do not depend on it.
    timezone="Asia/Shanghai",
    # Its own queue, so that workers of other apps on the same Redis (like the demo's
    # examples/tasks.py worker) never receive tasks they do not know.
    task_default_queue="beat_demo",
)


# An explicit name, so the schedules below hold whatever module path this file is run as.
@app.task(name="examples.hello")
async def hello(who: str) -> str:
    """Greet ``who`` (what the schedules below send)."""
    greeting = f"hello, {who}"
    print(greeting)
    return greeting


app.conf.beat_schedule = {
    "hello-every-second": {
        "task": "examples.hello",
        "schedule": 1.0,
        "args": ("world",),
        # A greeting nobody consumed within 10 s is stale: let the worker drop it.
        "options": {"expires": 10.0},
    },
    "hello-at-10-and-17-shanghai": {
        "task": "examples.hello",
        "schedule": crontab(minute="0", hour="10,17"),
        "kwargs": {"who": "Shanghai office"},
    },
}


# The same thing as a decorator, next to the task it runs (put it above @app.task).
@app.periodic(crontab(minute="*/5"), args=("every five minutes",))
@app.task(name="examples.five_minutes")
async def five_minutes(note: str) -> None:
    """Print ``note`` every five minutes."""
    print(note)
