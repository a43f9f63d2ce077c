"""An in-process broker with the Redis broker's semantics, for tests and single processes.

Messages, pending deliveries, delays, results and dead letters live in plain Python
structures owned by one :class:`MemoryBroker`; blocking reads wait on an event that every
write sets. One event loop at a time uses it (everything here runs on that loop, so no
locks are needed).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..flow import Admission, Gate
from ._lanes import LanePlanner
from .base import (
    REPLY_CAP,
    DeadLetter,
    Delivery,
    Enqueue,
    Outcome,
    QueueDetails,
    Release,
    Revocations,
    SettleFailure,
)

__all__ = ("MemoryBroker",)

#: As long as the Redis broker keeps its settle guards, and as long as its reply lists.
SETTLE_GUARD_TTL_S = 3600.0


@dataclass
class _Pending:
    consumer: str
    payload: bytes
    delivered_at: float
    deliveries: int
    priority: int = 0


@dataclass
class _Queue:
    #: Priority -> its waiting messages (a lane, as a stream on Redis); lane 0 always.
    lanes: dict[int, OrderedDict[str, bytes]] = field(
        default_factory=lambda: {0: OrderedDict()})
    pending: dict[str, _Pending] = field(default_factory=dict)
    delayed: list[tuple[float, int, int, bytes]] = field(default_factory=list)
    dead: OrderedDict[str, DeadLetter] = field(default_factory=OrderedDict)

    def lane(self, priority: int) -> OrderedDict[str, bytes]:
        found = self.lanes.get(priority)
        if found is None:
            found = self.lanes[priority] = OrderedDict()
            self.lanes = dict(sorted(self.lanes.items()))
        return found

    @property
    def waiting(self) -> int:
        return sum(len(lane) for lane in self.lanes.values())

    def oldest_waiting(self) -> str | None:
        firsts = [next(iter(lane)) for lane in self.lanes.values() if lane]
        return min(firsts, key=_entry_order) if firsts else None


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class MemoryBroker:
    """Everything in this process's memory; nothing survives the process."""

    #: Most replies one reply list keeps (see :data:`~aioqueue.broker.base.REPLY_CAP`).
    reply_cap: int = REPLY_CAP

    def __init__(self, url: str = "memory://") -> None:
        self.display_url = url
        self._queues: defaultdict[str, _Queue] = defaultdict(_Queue)
        self._ids = itertools.count(1)
        self._results: dict[str, tuple[bytes, float]] = {}
        # Capped as the Redis broker caps its reply lists: nobody may be listening.
        self._replies: defaultdict[str, deque[bytes]] = defaultdict(
            lambda: deque(maxlen=self.reply_cap))
        self._revoked: dict[str, float] = {}
        self._terminate: dict[str, float] = {}
        #: (queue, message id) -> until when a replayed hand-back/retry/dead letter is ignored.
        self._guards: dict[tuple[str, str], float] = {}
        self._subscribers: list[MemoryObjectSendStream[bytes]] = []
        self._changed = anyio.Event()
        self._interrupted = False
        self._replies_interrupted = False
        self._lease: tuple[str, float] | None = None
        #: Monitoring: workers (name -> (info, expires at)), logs, per-minute counters,
        #: declared queues, control replies.
        self._workers: dict[str, tuple[bytes, float]] = {}
        self._logs: defaultdict[str, deque[tuple[str, bytes]]] = defaultdict(deque)
        self._stats: defaultdict[int, dict[str, int]] = defaultdict(dict)
        self._declared: set[str] = set()
        self._control_replies: defaultdict[str, list[bytes]] = defaultdict(list)
        #: Cap of the events log when settle records events (as the Redis broker's).
        self.events_max_len = 100_000
        self.events_stats_ttl_s = 7 * 86400.0
        self._ticks: dict[str, float] = {}
        self._last_runs: dict[str, float] = {}
        self._schedules: dict[str, str] = {}
        self._closed = False
        self.lanes = LanePlanner()
        #: Flow control, as the Redis broker keeps it (see aioqueue.flow): rate state (next
        #: start, seconds) and grants; slots held (key -> task id -> lease end) and parked
        #: runs (key -> (task id, queue, priority, payload)), with each key's limit;
        #: producer gates (key -> (task id, until, payload)); order keys' holders and
        #: waiting tasks; rate limits set at run time.
        self._rate_next: dict[str, float] = {}
        self._rate_grants: set[tuple[str, str]] = set()
        self._slots: defaultdict[str, dict[str, float]] = defaultdict(dict)
        self._slot_waiting: defaultdict[str, deque[tuple[str, str, int, bytes]]] = (
            defaultdict(deque))
        self._slot_limits: dict[str, int] = {}
        self._gates: dict[tuple[str, str], tuple[str, float, bytes]] = {}
        self._order_holders: dict[str, str] = {}
        self._order_waiting: defaultdict[str, deque[tuple[str, Enqueue]]] = defaultdict(deque)
        self._rate_limits: dict[str, str] = {}

    def lanes_of(self, queue: str) -> tuple[int, ...]:
        """The priority lanes of ``queue`` a worker reads, first to last."""
        return tuple(self._queues[queue].lanes)

    async def refresh_lanes(self, queues: Sequence[str]) -> None:
        return None  # in-process: every lane is known as it is made

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _new_id(self) -> str:
        return f"{int(time.time() * 1000)}-{next(self._ids)}"

    async def _wait_change(self, timeout_s: float) -> None:
        changed = self._changed
        with anyio.move_on_after(timeout_s):
            await changed.wait()

    async def connect(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self._notify()
        for send in self._subscribers:
            await send.aclose()
        self._subscribers.clear()

    def _add(self, item: Enqueue) -> None:
        q = self._queues[item.queue]
        if item.due_at is None:
            q.lane(item.priority)[self._new_id()] = item.payload
        else:
            heapq.heappush(q.delayed, (item.due_at, next(self._ids), item.priority, item.payload))

    async def enqueue(self, items: Sequence[Enqueue]) -> None:
        for item in items:
            self._add(item)
            self._declared.add(item.queue)
        self._notify()

    async def ensure_queues(self, queues: Sequence[str]) -> None:
        for q in queues:
            _ = self._queues[q]
            self._declared.add(q)

    def _take(self, queues: Sequence[str], consumer: str, count: int) -> list[Delivery]:
        out: list[Delivery] = []
        now = time.monotonic()
        lanes, share = self.lanes.plan(queues, self.lanes_of, count)
        for i, (name, priority) in enumerate(lanes):
            q = self._queues[name]
            ready = q.lane(priority)
            # As fetch.lua: the first `share` lanes together give at most one message.
            want = count if i >= share else (len(out) + 1 if not out else len(out))
            while ready and len(out) < min(count, want):
                entry_id, payload = ready.popitem(last=False)
                q.pending[entry_id] = _Pending(consumer, payload, now, 1, priority)
                out.append(Delivery(name, entry_id, payload, 1, priority))
        self.lanes.taken([(d.queue, d.priority) for d in out], self.lanes_of)
        return out

    async def fetch(
        self, queues: Sequence[str], consumer: str, count: int, timeout_s: float
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while True:
            out = self._take(queues, consumer, count)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0 or self._interrupted or self._closed:
                self._interrupted = False
                return out
            await self._wait_change(remaining)

    async def interrupt_fetch(self) -> None:
        self._interrupted = True
        self._notify()

    async def reclaim(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int
    ) -> list[Delivery]:
        out: list[Delivery] = []
        now = time.monotonic()
        for name in queues:
            for entry_id, p in self._queues[name].pending.items():
                if len(out) >= count:
                    return out
                if now - p.delivered_at >= idle_s:
                    p.consumer, p.delivered_at = consumer, now
                    p.deliveries += 1
                    out.append(Delivery(name, entry_id, p.payload, p.deliveries, p.priority))
        return out

    async def take_over_dead(
        self, queues: Sequence[str], consumer: str, idle_s: float, count: int,
        expires_before: float = 0.0,
    ) -> list[Delivery]:
        return []  # one process: its consumers die with it, and so does the broker

    async def keep_claimed(self, consumer: str, deliveries: Sequence[Delivery]) -> list[Delivery]:
        now = time.monotonic()
        lost: list[Delivery] = []
        for d in deliveries:
            p = self._queues[d.queue].pending.get(d.message_id)
            if p is not None and p.consumer == consumer:
                p.delivered_at = now
            else:
                lost.append(d)
        return lost

    async def settle(self, outcomes: Sequence[Outcome]) -> list[SettleFailure]:
        now = time.time()
        if len(self._guards) > 10_000:
            self._guards = {k: until for k, until in self._guards.items() if until > now}
        for o in outcomes:
            if o.record is not None and o.task_id is not None:
                self._results[o.task_id] = (o.record, now + o.result_ttl_s)
                if o.reply_to is not None:
                    self._replies[o.reply_to].append(o.record)
            d = o.delivery
            # As the Redis broker's guards: a replayed outcome never hands back, reschedules
            # or dead-letters its delivery twice.
            guard = None if d is None else (d.queue, d.message_id)
            first = guard is None or self._guards.get(guard, 0.0) <= now
            if guard is not None and (o.requeue is not None or o.dead_reason is not None):
                self._guards[guard] = now + SETTLE_GUARD_TTL_S
            if o.requeue is not None and first:
                self._add(o.requeue)
            if d is not None:
                q = self._queues[d.queue]
                q.pending.pop(d.message_id, None)
                if o.dead_reason is not None and first:
                    entry_id = self._new_id()
                    q.dead[entry_id] = DeadLetter(d.queue, entry_id, d.payload, o.dead_reason,
                                                  now, d.priority)
            if o.release is not None:
                self._release(o.release)
            if o.events:
                self._append("events", [data for data, _, _ in o.events], self.events_max_len)
                self._count({(minute, field): 1 for _, field, minute in o.events})
        self._notify()
        return []  # nothing here can refuse a write

    # -- flow control ----------------------------------------------------------------------
    def _release(self, release: Release) -> None:
        if release.unique is not None:
            gate = self._gates.get(("unique", release.unique))
            if gate is not None and gate[0] == release.task_id:
                del self._gates["unique", release.unique]
        if release.order is not None and self._order_holders.get(release.order) == \
                release.task_id:
            waiting = self._order_waiting[release.order]
            if waiting:
                next_id, item = waiting.popleft()
                self._order_holders[release.order] = next_id
                self._add(item)
            else:
                del self._order_holders[release.order]
        if release.slot is not None:
            self._slots[release.slot].pop(release.task_id, None)
            self._start_parked(release.slot, release.lease_s)

    def _start_parked(self, key: str, lease_s: float) -> int:
        """Start parked runs of ``key`` while it has free slots (lapsed leases freed)."""
        held, now = self._slots[key], time.time()
        for task_id in [t for t, until in held.items() if until <= now]:
            del held[task_id]
        waiting, started = self._slot_waiting[key], 0
        while waiting and len(held) < self._slot_limits.get(key, 0):
            task_id, queue, priority, payload = waiting.popleft()
            held[task_id] = now + lease_s
            self._add(Enqueue(queue, payload, None, priority))
            started += 1
        if not waiting:
            self._slot_limits.pop(key, None)
        return started

    async def enqueue_gated(self, item: Enqueue, gate: Gate,
                            build: Callable[[str], bytes]) -> str | None:
        self._declared.add(item.queue)
        now = time.time()
        if gate.kind == "order":
            if gate.key in self._order_holders:
                self._order_waiting[gate.key].append((gate.task_id, item))
            else:
                self._order_holders[gate.key] = gate.task_id
                self._add(item)
            self._notify()
            return None
        found = self._gates.get((gate.kind, gate.key))
        if found is not None and found[1] <= now:
            found = None
        if gate.kind == "debounce":
            q = self._queues[item.queue]
            if found is not None:
                waiting_id, _, old = found
                entry = next((e for e in q.delayed if e[3] == old), None)
                if entry is not None:  # still waiting: this call replaces it
                    q.delayed.remove(entry)
                    heapq.heapify(q.delayed)
                    item.payload = build(waiting_id)
                    self._add(item)
                    self._gates[gate.kind, gate.key] = (waiting_id, now + gate.ttl_s,
                                                        item.payload)
                    return waiting_id
            self._add(item)
            self._gates[gate.kind, gate.key] = (gate.task_id, now + gate.ttl_s, item.payload)
            return None
        if found is not None:
            return found[0]
        self._gates[gate.kind, gate.key] = (gate.task_id, now + gate.ttl_s, b"")
        self._add(item)
        self._notify()
        return None

    async def admit_many(self, runs: Sequence[tuple[Delivery, Admission]],
                         lease_s: float) -> list[bool]:
        return [self._admit(delivery, admission, lease_s) for delivery, admission in runs]

    def _admit(self, delivery: Delivery, admission: Admission, lease_s: float) -> bool:
        payload = delivery.payload
        now = time.time()
        reserved = False
        q = self._queues[delivery.queue]
        rate = admission.rate_key
        if rate is not None:
            grant = (rate, admission.task_id)
            if grant in self._rate_grants:
                self._rate_grants.discard(grant)
            else:
                at = max(self._rate_next.get(rate, 0.0), now)
                self._rate_next[rate] = at + admission.rate_interval_s
                # As admit.lua: due within 10 ms runs now.
                if at > now + 0.010:
                    self._rate_grants.add(grant)
                    q.pending.pop(delivery.message_id, None)
                    heapq.heappush(q.delayed, (at, next(self._ids), delivery.priority, payload))
                    return False
                reserved = True
        key = admission.slot_key
        if key is not None:
            held = self._slots[key]
            for task_id in [t for t, until in held.items() if until <= now]:
                del held[task_id]
            if admission.task_id in held or len(held) < admission.slot_max:
                held[admission.task_id] = now + lease_s
                return True
            if reserved and rate is not None:
                self._rate_grants.add((rate, admission.task_id))
            self._slot_waiting[key].append(
                (admission.task_id, delivery.queue, delivery.priority, payload))
            self._slot_limits[key] = admission.slot_max
            q.pending.pop(delivery.message_id, None)
            return False
        return True

    async def renew_slots(self, held: Sequence[tuple[str, str]], lease_s: float) -> None:
        until = time.time() + lease_s
        for key, task_id in held:
            if task_id in self._slots[key]:
                self._slots[key][task_id] = until

    async def promote_slots(self, lease_s: float) -> int:
        started = sum(self._start_parked(key, lease_s) for key in list(self._slot_limits))
        if started:
            self._notify()
        return started

    async def rate_limits(self) -> dict[str, str]:
        return dict(self._rate_limits)

    async def set_rate_limit(self, task: str, rate: str | None) -> None:
        if rate is None:
            self._rate_limits.pop(task, None)
        else:
            self._rate_limits[task] = rate

    async def move_due(self, queues: Sequence[str], now: float) -> int:
        moved = 0
        for name in queues:
            q = self._queues[name]
            while q.delayed and q.delayed[0][0] <= now:
                _, _, priority, payload = heapq.heappop(q.delayed)
                q.lane(priority)[self._new_id()] = payload
                moved += 1
        if moved:
            self._notify()
        return moved

    async def forget_consumer(self, queues: Sequence[str], consumer: str) -> None:
        return None  # consumers are not tracked apart from their pending entries

    async def prune_consumers(self, queues: Sequence[str], consumer: str, idle_s: float) -> int:
        return 0  # likewise: nothing to prune

    async def get_result(self, task_id: str) -> bytes | None:
        found = self._results.get(task_id)
        if found is None:
            return None
        record, expires_at = found
        if expires_at <= time.time():
            del self._results[task_id]
            return None
        return record

    async def get_results(self, task_ids: Sequence[str]) -> list[bytes | None]:
        return [await self.get_result(task_id) for task_id in task_ids]

    async def set_result(self, task_id: str, record: bytes, ttl_s: float) -> None:
        self._results[task_id] = (record, time.time() + ttl_s)

    async def compare_and_set_result(self, task_id: str, record: bytes,
                                     expected: bytes | None, ttl_s: float) -> bool:
        if await self.get_result(task_id) != expected:
            return False
        await self.set_result(task_id, record, ttl_s)
        return True

    def abandon(self) -> None:
        """Nothing to close: no sockets."""

    # -- monitoring ------------------------------------------------------------------------
    async def register_worker(self, name: str, info: bytes, ttl_s: float) -> None:
        self._workers[name] = (info, time.time() + ttl_s)

    async def unregister_worker(self, name: str) -> None:
        self._workers.pop(name, None)

    async def workers(self) -> dict[str, bytes]:
        now = time.time()
        self._workers = {n: w for n, w in self._workers.items() if w[1] > now}
        return {name: info for name, (info, _) in self._workers.items()}

    def _append(self, log: str, entries: Sequence[bytes], max_len: int) -> None:
        stream = self._logs[log]
        for entry in entries:
            stream.append((self._new_id(), entry))
        while len(stream) > max_len:
            stream.popleft()

    async def append_log(self, log: str, entries: Sequence[bytes], max_len: int) -> None:
        self._append(log, entries, max_len)
        self._notify()

    async def read_log(self, log: str, *, after: str | None = None, count: int = 100,
                       block_s: float = 0.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + block_s
        while True:
            stream = self._logs[log]
            if after is None:
                return list(stream)[-count:] if count else []
            newer = [(i, e) for i, e in stream if _entry_order(i) > _entry_order(after)]
            remaining = deadline - time.monotonic()
            if newer or remaining <= 0 or self._closed:
                return newer[:count]
            await self._wait_change(remaining)

    def _count(self, counts: dict[tuple[int, str], int]) -> None:
        for (minute, field_name), n in counts.items():
            fields = self._stats[minute]
            fields[field_name] = fields.get(field_name, 0) + n

    async def count_stats(self, counts: dict[tuple[int, str], int], ttl_s: float) -> None:
        self._count(counts)

    async def stats(self, minutes: Sequence[int]) -> dict[int, dict[str, int]]:
        return {m: dict(self._stats[m]) for m in minutes if self._stats.get(m)}

    async def known_queues(self) -> list[str]:
        return sorted(self._declared | {n for n, q in self._queues.items()
                                        if q.waiting or q.pending or q.delayed or q.dead})

    async def queue_details(self, queues: Sequence[str]) -> list[QueueDetails]:
        out = []
        for name in queues:
            q = self._queues[name]
            oldest = None
            first = q.oldest_waiting()
            if first is not None:
                oldest = _entry_order(first)[0] / 1000
            out.append(QueueDetails(name, waiting=q.waiting, running=len(q.pending),
                                    delayed=len(q.delayed), dead=len(q.dead),
                                    oldest_waiting_at=oldest))
        return out

    async def purge_queue(self, queue: str) -> int:
        q = self._queues[queue]
        n = q.waiting + len(q.delayed)
        for lane in q.lanes.values():
            lane.clear()
        q.delayed.clear()
        return n

    async def publish_control(self, message: bytes) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(message)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(subscriber)

    async def push_control_reply(self, key: str, reply: bytes) -> None:
        self._control_replies[key].append(reply)

    async def take_control_replies(self, key: str) -> list[bytes]:
        return self._control_replies.pop(key, [])

    async def delete_result(self, task_id: str) -> None:
        self._results.pop(task_id, None)

    async def publish_progress(self, task_id: str, record: bytes, ttl_s: float,
                               reply_to: str | None) -> None:
        await self.set_result(task_id, record, ttl_s)
        if reply_to is not None:
            self._replies[reply_to].append(record)
            self._notify()

    async def wait_replies(self, reply_to: str, timeout_s: float) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while True:
            replies = self._replies.get(reply_to)
            if replies:
                out = list(replies)
                replies.clear()
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed or self._replies_interrupted:
                self._replies_interrupted = False
                return []
            await self._wait_change(remaining)

    async def interrupt_replies(self) -> None:
        self._replies_interrupted = True
        self._notify()

    async def revoke(
        self, task_id: str, until: float, control: bytes, *, terminate: bool = False,
        record: bytes | None = None, expected: bytes | None = None, ttl_s: float = 0.0,
    ) -> bool:
        if record is not None:
            if await self.get_result(task_id) != expected:
                return False
            await self.set_result(task_id, record, ttl_s)
        self._revoked[task_id] = until
        if terminate:
            self._terminate[task_id] = until
        for send in list(self._subscribers):
            try:
                send.send_nowait(control)
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._subscribers.remove(send)
        return True

    async def revocations(self, now: float) -> Revocations:
        self._revoked = {k: v for k, v in self._revoked.items() if v > now}
        self._terminate = {k: v for k, v in self._terminate.items() if v > now}
        return Revocations(revoked=set(self._revoked), terminate=set(self._terminate))

    async def control_messages(self) -> AsyncIterator[bytes]:
        send, receive = anyio.create_memory_object_stream[bytes](1000)
        self._subscribers.append(send)
        async with receive:
            yield b""  # subscribed
            async for message in receive:
                yield message

    async def queue_sizes(self, queues: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        return {
            name: (
                self._queues[name].waiting + len(self._queues[name].pending),
                len(self._queues[name].delayed),
                len(self._queues[name].dead),
            )
            for name in queues
        }

    async def dead_letters(self, queue: str, count: int) -> list[DeadLetter]:
        return list(itertools.islice(self._queues[queue].dead.values(), count))

    async def requeue_dead(self, queue: str, entry_ids: Sequence[str] | None) -> int:
        q = self._queues[queue]
        ids = list(q.dead) if entry_ids is None else [i for i in entry_ids if i in q.dead]
        for entry_id in ids:
            letter = q.dead.pop(entry_id)
            q.lane(letter.priority)[self._new_id()] = letter.payload
        self._notify()
        return len(ids)

    async def purge_dead(self, queue: str) -> int:
        n = len(self._queues[queue].dead)
        self._queues[queue].dead.clear()
        return n

    async def acquire_lease(self, owner: str, ttl_s: float) -> bool:
        now = time.monotonic()
        if self._lease is None or self._lease[0] == owner or self._lease[1] <= now:
            self._lease = (owner, now + ttl_s)
            return True
        return False

    async def release_lease(self, owner: str) -> None:
        if self._lease is not None and self._lease[0] == owner:
            self._lease = None

    async def claim_tick(self, name: str, tick: float, ttl_s: float) -> bool:
        key = f"{name}:{tick:.3f}"
        now = time.monotonic()
        if len(self._ticks) > 10_000:  # expired claims would otherwise pile up forever
            self._ticks = {k: until for k, until in self._ticks.items() if until > now}
        if self._ticks.get(key, 0.0) > now:
            return False
        self._ticks[key] = now + ttl_s
        return True

    async def last_runs(self) -> dict[str, float]:
        return dict(self._last_runs)

    async def set_last_run(self, name: str, tick: float) -> None:
        self._last_runs[name] = tick

    async def replace_schedules(self, schedules: dict[str, str]) -> None:
        for gone in set(self._schedules) - set(schedules):
            self._last_runs.pop(gone, None)
        self._schedules = dict(schedules)
