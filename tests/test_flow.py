"""Flow control on both brokers: priorities, rate limits, concurrency limits per key,
unique / debounce / cooldown, ordered per key (see ``aioqueue.flow``).

Every test takes ``any_app``, so it runs on a real Redis and on ``memory://``: the two
brokers keep the same semantics or a test fails.
"""

from __future__ import annotations

import random
import time
from typing import Any

import anyio
import pytest

from aioqueue import AioQueue, State
from aioqueue.errors import ConfigurationError
from aioqueue.monitor import Monitor

DEFAULT = ["default"]


async def drain(app: AioQueue, concurrency: int = 1, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        await app.worker(concurrency=concurrency, queues=DEFAULT, burst=True).run()


# -- priorities ----------------------------------------------------------------------------
async def test_priority_order_is_strict_within_a_queue(any_app: AioQueue) -> None:
    any_app.conf.priority_share_every = 0
    any_app.broker.lanes.share_every = 0
    ran: list[tuple[int, int]] = []

    @any_app.task(name="t.prio")
    async def job(priority: int, n: int) -> None:
        ran.append((priority, n))

    sent = [(p, n) for n, p in enumerate([5, 9, 0, 3, 0, 9, 1, 5, 0])]
    for p, n in sent:
        await job.apply_async((p, n), priority=p)
    await drain(any_app)
    # 0 first; the order they were sent within one priority.
    assert ran == sorted(sent)


async def test_task_option_and_default_priority(any_app: AioQueue) -> None:
    any_app.broker.lanes.share_every = 0
    any_app.conf.task_default_priority = 4
    ran: list[str] = []

    @any_app.task(name="t.urgent", priority=1)
    async def urgent() -> None:
        ran.append("urgent")

    @any_app.task(name="t.plain")
    async def plain() -> None:
        ran.append("plain")

    @any_app.task(name="t.bulk", priority=9)
    async def bulk() -> None:
        ran.append("bulk")

    await bulk.delay()
    await plain.delay()
    await urgent.delay()
    await plain.apply_async(priority=0)  # the call's priority beats all
    await drain(any_app)
    assert ran == ["plain", "urgent", "plain", "bulk"]


async def test_lower_priorities_get_their_bounded_share(any_app: AioQueue) -> None:
    """With share_every = N, the k-th waiting low-priority task runs among the first
    k x (N + 1) tasks a worker takes, however many higher ones wait."""
    share = 3
    any_app.broker.lanes.share_every = share
    ran: list[int] = []

    @any_app.task(name="t.share")
    async def job(priority: int) -> None:
        ran.append(priority)

    for _ in range(40):
        await job.apply_async((0,), priority=0)
    for _ in range(4):
        await job.apply_async((9,), priority=9)
    await drain(any_app)
    low_positions = [i + 1 for i, p in enumerate(ran) if p == 9]
    assert len(low_positions) == 4
    for k, position in enumerate(low_positions, start=1):
        assert position <= k * (share + 1), (k, position, ran)


async def test_delayed_and_retried_tasks_keep_their_priority(any_app: AioQueue) -> None:
    any_app.broker.lanes.share_every = 0
    seen: list[tuple[str, int, int]] = []

    @any_app.task(name="t.keep", bind=True, max_retries=2)
    async def job(self: Any, tag: str) -> None:
        seen.append((tag, self.request.priority, self.request.retries))
        if tag == "retry" and self.request.retries == 0:
            raise self.retry(countdown=0)

    await job.apply_async(("retry",), priority=7)
    await job.apply_async(("later",), priority=6, countdown=0.05)
    await drain(any_app)
    assert sorted(seen) == [("later", 6, 0), ("retry", 7, 0), ("retry", 7, 1)]


async def test_a_priority_out_of_range_is_refused_by_name(any_app: AioQueue) -> None:
    @any_app.task(name="t.p")
    async def job() -> None: ...

    with pytest.raises(ValueError, match=r"priority of t\.p must be a whole number from 0"):
        await job.apply_async(priority=10)
    with pytest.raises(ConfigurationError, match="task_default_priority"):
        any_app.conf.task_default_priority = -1
        any_app.conf.validate()


# -- rate limits ---------------------------------------------------------------------------
async def test_a_rate_limit_spaces_runs_and_loses_nothing(any_app: AioQueue) -> None:
    starts: list[float] = []

    @any_app.task(name="t.limited", rate_limit="20/s")
    async def job(n: int) -> int:
        starts.append(time.monotonic())
        return n

    handles = [await job.delay(n) for n in range(15)]
    await drain(any_app, concurrency=10)
    assert [await h for h in handles] == list(range(15))
    starts.sort()
    # 15 runs at 20/s: 14 intervals of 50 ms (the first runs at once).
    assert starts[-1] - starts[0] >= 14 * 0.05 * 0.9
    assert [await h.state() for h in handles] == [State.SUCCESS] * len(handles)


async def test_a_rate_limit_set_at_run_time_applies_and_is_listed(any_app: AioQueue) -> None:
    starts: list[float] = []

    @any_app.task(name="t.free")
    async def job() -> None:
        starts.append(time.monotonic())

    monitor = Monitor(any_app)
    await monitor.set_rate_limit("t.free", "10/s")
    assert (await monitor.rate_limits())["t.free"] == "10/s"
    for _ in range(6):
        await job.delay()
    await drain(any_app, concurrency=6)
    assert max(starts) - min(starts) >= 5 * 0.1 * 0.9
    await monitor.set_rate_limit("t.free", None)
    assert "t.free" not in await monitor.rate_limits()
    with pytest.raises(ConfigurationError, match="like '10/s'"):
        await monitor.set_rate_limit("t.free", "fast")


# -- concurrency limits --------------------------------------------------------------------
async def test_concurrency_per_key_is_a_limit_and_fair_between_keys(any_app: AioQueue) -> None:
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    finished: list[str] = []

    @any_app.task(name="t.per_customer", max_concurrency=2,
                  concurrency_key=lambda customer, **_: customer)
    async def job(customer: str, n: int) -> None:
        running[customer] = running.get(customer, 0) + 1
        peak[customer] = max(peak.get(customer, 0), running[customer])
        await anyio.sleep(0.03)
        running[customer] -= 1
        finished.append(f"{customer}{n}")

    for n in range(12):
        await job.delay("a", n)
    for n in range(2):
        await job.delay("b", n)
    await drain(any_app, concurrency=10)
    assert peak == {"a": 2, "b": 2}
    assert len(finished) == 14
    # b's two tasks, sent after all of a's, did not wait for a's backlog.
    assert finished.index("b1") < finished.index("a11")


async def test_max_concurrency_without_a_key_holds_for_the_task(any_app: AioQueue) -> None:
    now = peak = 0

    @any_app.task(name="t.one_at_a_time", max_concurrency=1)
    async def job() -> None:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        await anyio.sleep(0.01)
        now -= 1

    handles = [await job.delay() for _ in range(8)]
    await drain(any_app, concurrency=8)
    assert peak == 1
    assert [await h.state() for h in handles] == [State.SUCCESS] * len(handles)


# -- unique, debounce, cooldown ------------------------------------------------------------
async def test_unique_calls_share_one_task_until_it_ends(any_app: AioQueue) -> None:
    runs: list[int] = []

    @any_app.task(name="t.unique")
    async def job(doc: int) -> int:
        runs.append(doc)
        return doc

    first = await job.apply_async((1,), unique_for=30)
    second = await job.apply_async((1,), unique_for=30)
    other = await job.apply_async((2,), unique_for=30)
    assert second.id == first.id and other.id != first.id
    await drain(any_app)
    assert sorted(runs) == [1, 2]
    # Ended: the next call is a new task.
    third = await job.apply_async((1,), unique_for=30)
    assert third.id != first.id
    await drain(any_app)
    assert await third == 1


async def test_a_task_option_unique_key_holds_through_retries(any_app: AioQueue) -> None:
    tries: list[int] = []

    @any_app.task(name="t.unique_retry", bind=True, unique_for=30,
                  unique_key=lambda user, **_: str(user), max_retries=1)
    async def job(self: Any, user: int, note: str) -> str:
        tries.append(self.request.retries)
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return note

    first = await job.delay(7, "a")
    again = await job.delay(7, "b")  # same user: joins the first
    assert again.id == first.id
    await drain(any_app)
    assert tries == [0, 1] and await first == "a"


async def test_debounce_runs_the_last_call_once(any_app: AioQueue) -> None:
    runs: list[str] = []

    @any_app.task(name="t.debounced")
    async def job(text: str) -> str:
        runs.append(text)
        return text

    handles = [await job.apply_async((t,), debounce=0.3, unique_key="doc-1")
               for t in ("a", "ab", "abc")]
    assert len({h.id for h in handles}) == 1
    await drain(any_app)
    assert runs == ["abc"]
    assert [await h for h in handles] == ["abc"] * 3


async def test_cooldown_runs_the_first_call_and_drops_the_rest(any_app: AioQueue) -> None:
    runs: list[str] = []

    @any_app.task(name="t.cool", cooldown=30)
    async def job(text: str) -> str:
        runs.append(text)
        return text

    first = await job.delay("first")
    second = await job.delay("second")
    assert second.id == first.id
    await drain(any_app)
    assert runs == ["first"] and await second == "first"


async def test_one_gate_per_call(any_app: AioQueue) -> None:
    @any_app.task(name="t.both")
    async def job() -> None: ...

    with pytest.raises(ConfigurationError, match="choose one of"):
        await job.apply_async(unique_for=5, debounce=1)


# -- ordered per key -----------------------------------------------------------------------
async def test_ordered_per_key_under_concurrency_and_retries(any_app: AioQueue) -> None:
    rng = random.Random(7)
    log: list[tuple[str, int]] = []
    active: dict[str, int] = {}
    overlap = False

    @any_app.task(name="t.ordered", bind=True, max_retries=3,
                  order_key=lambda account, **_: account)
    async def job(self: Any, account: str, n: int, fail_first: bool) -> None:
        nonlocal overlap
        active[account] = active.get(account, 0) + 1
        overlap = overlap or active[account] > 1
        await anyio.sleep(rng.random() * 0.01)
        active[account] -= 1
        if fail_first and self.request.retries == 0:
            raise self.retry(countdown=0.01)
        log.append((account, n))

    sent: dict[str, list[int]] = {"x": [], "y": [], "z": []}
    for n in range(30):
        account = "xyz"[n % 3]
        sent[account].append(n)
        await job.delay(account, n, n % 7 == 0)
    await drain(any_app, concurrency=10)
    assert not overlap
    for account, numbers in sent.items():
        assert [n for a, n in log if a == account] == numbers


# -- routing -------------------------------------------------------------------------------
async def test_routes_give_queue_and_priority_in_celerys_order(any_app: AioQueue) -> None:
    any_app.broker.lanes.share_every = 0

    def by_size(name: str, args: Any, kwargs: Any, options: Any, task: Any = None,
                **_: Any) -> Any:
        return "big" if args and args[0] > 100 else None

    any_app.conf.task_routes = [by_size, {"reports.*": {"queue": "reports", "priority": 9},
                                          "reports.urgent": {"queue": "reports", "priority": 0}}]
    ran: list[str] = []

    @any_app.task(name="reports.monthly")
    async def monthly(size: int) -> None:
        ran.append("monthly")

    @any_app.task(name="reports.urgent")
    async def urgent(size: int) -> None:
        ran.append("urgent")

    await monthly.delay(1)
    await urgent.delay(1)
    await monthly.delay(500)  # the function answers first: to "big"
    assert (await any_app.broker.queue_sizes(["reports", "big"])) == {
        "reports": (2, 0, 0), "big": (1, 0, 0)}
    with anyio.fail_after(10):
        await any_app.worker(concurrency=1, queues=["reports"], burst=True).run()
    assert ran == ["urgent", "monthly"]  # exact name (priority 0) before the glob's 9


async def test_annotations_give_every_task_a_rate_limit(any_app: AioQueue) -> None:
    any_app.conf.task_annotations = {"*": {"rate_limit": "100/s"}}

    @any_app.task(name="t.annotated")
    async def job() -> None: ...

    assert job.options.rate_limit == "100/s"
    assert (await Monitor(any_app).rate_limits())["t.annotated"] == "100/s"


async def test_a_revoked_parked_run_gives_its_slot_back(any_app: AioQueue) -> None:
    """A run parked for a slot, revoked meanwhile, frees the slot it was promoted into (or
    the next run would wait for the lease to lapse: visibility_timeout)."""
    any_app.conf.visibility_timeout = 30.0  # a lapsing lease must not be what frees it
    release = anyio.Event()
    ran: list[str] = []

    @any_app.task(name="t.single", max_concurrency=1)
    async def job(tag: str) -> str:
        ran.append(tag)
        if tag == "first":
            await release.wait()
        return tag

    async with any_app.worker(concurrency=4, queues=DEFAULT) as worker:
        first = await job.delay("first")
        with anyio.fail_after(5):
            while ran != ["first"]:
                await anyio.sleep(0.01)
        second = await job.delay("second")
        with anyio.fail_after(5):
            while worker.parked != 1:  # parked: the slot is taken
                await anyio.sleep(0.01)
        await any_app.revoke(second.id)
        release.set()
        third = await job.delay("third")
        with anyio.fail_after(5):  # well under visibility_timeout (30 s)
            assert await third == "third"
        assert await first == "first"
        assert await second.state() == State.REVOKED
    assert ran == ["first", "third"]


async def test_a_rate_above_a_thousand_per_second_is_enforced(any_app: AioQueue) -> None:
    """Intervals under 1 ms: 2,000/s once read as "no limit" (the interval rounded to 0)."""
    starts: list[float] = []

    @any_app.task(name="t.fast_limit", rate_limit="2000/s")
    async def job() -> None:
        starts.append(time.monotonic())

    await job.delay_many([() for _ in range(400)])
    await drain(any_app, concurrency=50)
    assert len(starts) == 400
    assert max(starts) - min(starts) >= 399 / 2000 * 0.9


async def test_a_requeued_dead_letter_goes_back_to_its_priority(any_app: AioQueue) -> None:
    any_app.broker.lanes.share_every = 0
    await any_app.send_task("t.not_yet", args=("low",), priority=9)
    await drain(any_app)  # not registered: dead-lettered, from lane 9
    [letter] = await any_app.broker.dead_letters("default", 10)
    assert letter.priority == 9
    ran: list[str] = []

    @any_app.task(name="t.not_yet")
    async def job(tag: str) -> None:
        ran.append(tag)

    assert await any_app.broker.requeue_dead("default", None) == 1
    await job.apply_async(("high",), priority=0)  # sent after, runs first: lane 0
    await drain(any_app)
    assert ran == ["high", "low"]
