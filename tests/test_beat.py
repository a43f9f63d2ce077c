"""Tests for aioqueue.beat: leader election, tick claims, restarts, on a real Redis.

Firing counts are measured over short observation windows (that sleep IS the measurement);
everything else waits on a condition under ``fail_after``.  Tick identity comes from the
broker's claim keys: each fired tick leaves exactly one, so "messages sent == ticks claimed,
and the claimed ticks are consecutive" means no tick was doubled or lost.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
import redis.asyncio as aioredis

from aioqueue import AioQueue, BrokerConnectionError, ConfigurationError
from aioqueue.beat import Beat, describe
from aioqueue.schedules import crontab

LEASE_TTL = 1.0
TICK_S = 0.1


def make_app(
    url: str, schedule: dict[str, dict[str, Any]] | None = None, **settings: Any
) -> AioQueue:
    settings.setdefault("beat_lease_ttl", LEASE_TTL)
    settings.setdefault("task_ignore_result", True)  # beat-only apps wait for no result
    return AioQueue("beatapp", broker=url, beat_schedule=schedule or {}, **settings)


def interval(seconds: float, task: str = "tasks.ping") -> dict[str, dict[str, Any]]:
    return {"ping": {"task": task, "schedule": seconds}}


@asynccontextmanager
async def running(beat: Beat) -> AsyncIterator[anyio.Event]:
    """Run ``beat`` in the background; yields its stop event (set on exit)."""
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(beat.run, stop)
            try:
                yield stop
            finally:
                stop.set()
    finally:
        await beat.app.close()


async def wait_until(condition: Callable[[], Any], timeout_s: float = 5.0) -> None:
    """Wait for a condition (sync or async) to hold, failing after ``timeout_s``."""
    with anyio.fail_after(timeout_s):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)


@pytest.fixture
async def probe(redis_url: str) -> AsyncIterator[AioQueue]:
    """An app that only looks at what the beats under test left in Redis."""
    app = make_app(redis_url)
    yield app
    await app.close()


async def sent(app: AioQueue) -> int:
    """Messages in the default queue (beat-only apps: nobody consumes them)."""
    return (await app.broker.queue_sizes(["default"]))["default"][0]


async def claimed(url: str, name: str = "ping") -> list[float]:
    """The ticks claimed for schedule ``name``, sorted (epoch seconds)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k.decode() async for k in client.scan_iter(f"aioqueue:beat:tick:{name}:*")]
    finally:
        await client.aclose()
    return sorted(float(k.rsplit(":", 1)[1]) for k in keys)


def assert_consecutive(ticks: list[float], step: float) -> None:
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(ticks)]
    assert all(gap == step for gap in gaps), f"ticks {ticks} are not {step}s apart"


def ticks_in(start: float, end: float, step: float) -> int:
    """Epoch-anchored ticks in ``(start, end]``."""
    return math.floor(end / step) - math.floor(start / step)


# -- firing ----------------------------------------------------------------------------------


async def test_interval_fires_once_per_tick(redis_url: str, probe: AioQueue) -> None:
    app = make_app(redis_url, interval(0.2))
    beat = Beat(app, tick_s=TICK_S)
    started = time.time()
    async with running(beat):
        await anyio.sleep(2.0)  # the observation window
    ended = time.time()
    count, ticks = await sent(probe), await claimed(redis_url)
    # First start fires nothing before its baseline (set at the first step, just after
    # `started`), and a tick may fall after the last step before `ended`: up to 2 fewer.
    expected = ticks_in(started, ended, 0.2)
    assert expected - 2 <= count <= expected
    assert count == len(ticks) and started < ticks[0] and ticks[-1] <= ended
    assert_consecutive(ticks, 0.2)


async def test_memory_broker_and_failing_schedule_isolated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = AioQueue(
        "mem",
        broker="memory://",
        task_ignore_result=True,
        beat_lease_ttl=LEASE_TTL,
        beat_schedule={
            "good": {"task": "tasks.good", "schedule": 0.1},
            "bad": {"task": "tasks.bad", "schedule": 0.1},
        },
    )
    real_send = app.send_task

    async def send_task(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tasks.bad":
            raise RuntimeError("boom")
        return await real_send(name, *args, **kwargs)

    app.send_task = send_task  # type: ignore[method-assign]
    beat = Beat(app, tick_s=0.05)
    with caplog.at_level(logging.INFO, logger="aioqueue.beat"):
        async with running(beat):
            await wait_until(lambda: _ge(app, 3))
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failures and all("schedule bad (tasks.bad) failed" in r.getMessage() for r in failures)
    assert beat.is_leader is False  # released on the way out


async def _ge(app: AioQueue, n: int) -> bool:
    return await sent(app) >= n


async def test_broker_outage_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    app = AioQueue("mem", broker="memory://", beat_lease_ttl=LEASE_TTL)
    beat = Beat(app, tick_s=0.02)
    broker = app.broker
    real_acquire, failures = broker.acquire_lease, 0

    async def flaky_acquire(owner: str, ttl_s: float) -> bool:
        nonlocal failures
        if failures < 5:
            failures += 1
            raise BrokerConnectionError("cannot reach Redis at redis://x: down")
        return await real_acquire(owner, ttl_s)

    broker.acquire_lease = flaky_acquire  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="aioqueue.beat"):
        async with running(beat):
            await wait_until(lambda: beat.is_leader)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("broker unavailable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


# -- several beats -----------------------------------------------------------------------


async def test_two_beats_fire_each_tick_once(redis_url: str, probe: AioQueue) -> None:
    app_a, app_b = make_app(redis_url, interval(0.2)), make_app(redis_url, interval(0.2))
    beat_a = Beat(app_a, owner="a", tick_s=TICK_S)
    beat_b = Beat(app_b, owner="b", tick_s=TICK_S)
    started = time.time()
    async with running(beat_a), running(beat_b):
        await wait_until(lambda: beat_a.is_leader or beat_b.is_leader)
        assert not (beat_a.is_leader and beat_b.is_leader)
        await anyio.sleep(2.5)  # the observation window
    ended = time.time()
    count, ticks = await sent(probe), await claimed(redis_url)
    expected = ticks_in(started, ended, 0.2)
    assert count == len(ticks) and expected - 2 <= count <= expected
    assert_consecutive(ticks, 0.2)


async def test_crashed_leader_hands_over_without_doubling_or_losing(
    redis_url: str, probe: AioQueue
) -> None:
    # The interval exceeds lease TTL + tick: no tick may fall into the handover gap unsent.
    step = 1.5
    app_a, app_b = make_app(redis_url, interval(step)), make_app(redis_url, interval(step))
    beats = {"a": Beat(app_a, owner="a", tick_s=TICK_S), "b": Beat(app_b, owner="b", tick_s=TICK_S)}
    async with running(beats["a"]) as stop_a, running(beats["b"]) as stop_b:
        await wait_until(lambda: any(b.is_leader for b in beats.values()))
        leader = next(n for n, b in beats.items() if b.is_leader)
        follower = beats["b" if leader == "a" else "a"]
        await wait_until(lambda: _ge(probe, 1), timeout_s=step + 2)

        async def no_release(owner: str) -> None:  # a crash: the lease is left to expire
            pass

        crashed = beats[leader]
        crashed.app.broker.release_lease = no_release  # type: ignore[method-assign]
        (stop_a if leader == "a" else stop_b).set()
        crashed_at = time.monotonic()
        await wait_until(lambda: follower.is_leader, timeout_s=LEASE_TTL + 2)
        # Not before the lease expired (the crash left it held), not later than one tick after.
        assert LEASE_TTL - TICK_S - 0.05 <= time.monotonic() - crashed_at <= LEASE_TTL + 0.4
        await wait_until(lambda: _ge(probe, 3), timeout_s=2 * step + 2)
    ticks = await claimed(redis_url)
    assert await sent(probe) == len(ticks) >= 3
    assert_consecutive(ticks, step)


async def test_clean_stop_hands_over_at_once(redis_url: str) -> None:
    beat_a = Beat(make_app(redis_url, interval(0.2)), owner="a", tick_s=TICK_S)
    beat_b = Beat(make_app(redis_url, interval(0.2)), owner="b", tick_s=TICK_S)
    async with running(beat_a) as stop_a:
        await wait_until(lambda: beat_a.is_leader)
        async with running(beat_b):
            stop_a.set()
            stopped_at = time.monotonic()
            await wait_until(lambda: beat_b.is_leader, timeout_s=LEASE_TTL)
            # The lease was released: no waiting for it to expire.
            assert time.monotonic() - stopped_at < LEASE_TTL / 2


async def test_restart_neither_repeats_nor_skips(redis_url: str, probe: AioQueue) -> None:
    step = 0.5
    first = Beat(make_app(redis_url, interval(step)), tick_s=TICK_S)
    async with running(first):
        await wait_until(lambda: _ge(probe, 1), timeout_s=step + 2)
    before = await claimed(redis_url)
    # Down long enough to miss several ticks: they collapse into one, the latest.
    await anyio.sleep(3 * step)
    second = Beat(make_app(redis_url, interval(step)), tick_s=TICK_S)
    restarted = time.time()
    async with running(second) as stop:
        await wait_until(lambda: _ge(probe, len(before) + 1), timeout_s=1.0)
        stop.set()
    after = await claimed(redis_url)
    assert after[: len(before)] == before  # the last tick was not fired again
    caught_up = after[len(before)]
    # The latest tick missed, sent at once on restart; the older ones were not sent at all.
    assert math.floor(restarted / step) * step <= caught_up <= restarted + 0.3
    assert caught_up - before[-1] >= 2 * step
    assert await sent(probe) == len(after)


async def test_schedule_change_replaces_stored_schedules(redis_url: str, probe: AioQueue) -> None:
    old = {"a": {"task": "t.a", "schedule": 60.0}, "b": {"task": "t.b", "schedule": 60.0}}
    beat = Beat(make_app(redis_url, old), tick_s=TICK_S)
    async with running(beat):
        await wait_until(lambda: _cursors(beat.app, {"a", "b"}))
    kept = (await probe.broker.last_runs())["a"]
    new = {"a": old["a"], "c": {"task": "t.c", "schedule": crontab(minute="*/5")}}
    beat = Beat(make_app(redis_url, new), tick_s=TICK_S)
    async with running(beat):
        await wait_until(lambda: _cursors(beat.app, {"a", "c"}))
    client = aioredis.Redis.from_url(redis_url)
    stored = await client.hgetall("aioqueue:beat:schedules")
    await client.aclose()
    assert stored == {b"a": b"every 60s", b"c": b"crontab(minute='*/5', hour='*', day_of_week='*')"}
    runs = await probe.broker.last_runs()
    assert set(runs) == {"a", "c"} and runs["a"] == kept  # b dropped, a's cursor kept


async def _cursors(app: AioQueue, names: set[str]) -> bool:
    return set(await app.broker.last_runs()) == names


# -- inside a worker ---------------------------------------------------------------------


async def test_worker_with_beat_runs_decorated_periodic_task(redis_url: str) -> None:
    app = AioQueue("beatapp", broker=redis_url, beat_lease_ttl=LEASE_TTL)
    calls: list[tuple[str, int]] = []
    done = anyio.Event()

    @app.periodic(0.2, args=("hi",), kwargs={"n": 7})
    @app.task
    async def greet(word: str, n: int) -> None:
        calls.append((word, n))
        if len(calls) == 2:
            done.set()

    assert describe(app, 1)[0][:3] == (greet.name, greet.name, "every 0.2s")
    try:
        async with app.worker(concurrency=4, queues=["default"], beat=True):
            with anyio.fail_after(5):
                await done.wait()
    finally:
        await app.close()
    assert calls[:2] == [("hi", 7), ("hi", 7)]


# -- validation and describe ---------------------------------------------------------------


def test_unknown_task_reported() -> None:
    app = AioQueue(
        "mem",
        broker="memory://",
        beat_schedule={
            "known": {"task": "mem.known", "schedule": 10},
            "typo": {"task": "mem.knwon", "schedule": 10},
        },
    )
    app.task(name="mem.known")(lambda: None)
    assert Beat(app).unknown_tasks() == ["mem.knwon"]


async def test_unknown_task_logged_at_start(caplog: pytest.LogCaptureFixture) -> None:
    app = AioQueue("mem", broker="memory://", beat_schedule=interval(10, "elsewhere.job"))
    beat = Beat(app)
    with caplog.at_level(logging.WARNING, logger="aioqueue.beat"):
        async with running(beat):
            await wait_until(lambda: beat.is_leader)
    assert any(
        "ping" in r.getMessage() and "elsewhere.job" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"task": "t", "schedule": "often"}, "'nightly'.*often"),
        ({"task": "t", "schedule": -1}, "'nightly'.*positive|'nightly'.*at least"),
        ({"task": "t"}, "'nightly'.*schedule"),
        ({"schedule": 5}, "'nightly'.*task"),
        ({"task": "t", "schedule": 5, "arg": (1,)}, "'nightly'.*arg"),
        ({"task": "t", "schedule": 5, "args": "abc"}, "'nightly'.*args"),
        ({"task": "t", "schedule": 5, "options": {"colour": 1}}, "'nightly'.*colour"),
        ({"task": "t", "schedule": 5, "args": (object(),)}, "'nightly'.*argument 0"),
    ],
)
def test_invalid_schedule_names_it(entry: dict[str, Any], message: str) -> None:
    app = AioQueue("mem", broker="memory://", beat_schedule={"nightly": entry})
    with pytest.raises(ConfigurationError, match=message):
        Beat(app)
    with pytest.raises(ConfigurationError, match=message):
        describe(app)


def test_unknown_timezone_names_it() -> None:
    # Caught as early as possible: when the setting is made, not when beat starts.
    with pytest.raises(ConfigurationError, match="timezone: unknown timezone 'Mars/Olympus_Mons'"):
        AioQueue("mem", broker="memory://", timezone="Mars/Olympus_Mons")
    app = AioQueue("mem", broker="memory://")
    app.conf.timezone = "Mars/Olympus_Mons"  # set around validation: beat still refuses it
    with pytest.raises(ConfigurationError, match="Mars/Olympus_Mons"):
        Beat(app)


def test_same_name_declared_twice() -> None:
    app = AioQueue("mem", broker="memory://", beat_schedule={"dup": {"task": "x", "schedule": 1}})

    @app.periodic(5, name="dup")
    @app.task
    def job() -> None: ...

    with pytest.raises(ConfigurationError, match="'dup'"):
        Beat(app)


def test_describe_crontab_in_shanghai() -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    app = AioQueue(
        "mem",
        broker="memory://",
        timezone="Asia/Shanghai",
        beat_schedule={
            "report": {"task": "reports.send", "schedule": crontab(minute="0", hour="10,17")},
        },
    )
    now = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai
    [(name, task, text, fires)] = describe(app, 3, now)
    assert (name, task) == ("report", "reports.send")
    assert text == "crontab(minute='0', hour='10,17', day_of_week='*')"
    assert fires == [
        datetime(2026, 1, 1, 17, tzinfo=shanghai),
        datetime(2026, 1, 2, 10, tzinfo=shanghai),
        datetime(2026, 1, 2, 17, tzinfo=shanghai),
    ]
    assert all(f.tzinfo == shanghai for f in fires)
    assert fires[0].astimezone(UTC) == datetime(2026, 1, 1, 9, tzinfo=UTC)
