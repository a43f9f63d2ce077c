"""What operators see and do: workers, queues, events, statistics, remote control, actions.

One API for the CLI (``aioqueue status|inspect|control|queues|events|purge``), the web
dashboard and the Prometheus exporter, built only on state kept in Redis (the worker
registry, the events stream, the per-minute counters, the queues themselves), so any
number of readers can come and go without losing history::

    monitor = Monitor(app)
    await monitor.workers()            # [WorkerInfo, ...]: live workers and their load
    await monitor.queues()             # [QueueDetails, ...]
    await monitor.recent_events(100)   # the newest task/worker events
    await monitor.inspect("active")    # {worker: answer}: asks every worker, 1 s
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from .broker import QueueDetails
from .control import encode_control
from .errors import ConfigurationError
from .events import Event, decode_event, encode_event, minute_of
from .flow import parse_rate

if TYPE_CHECKING:
    from .app import AioQueue

__all__ = ("AuditEntry", "Monitor", "WorkerInfo")

#: What ``inspect`` can ask a worker.
INSPECT_WHAT = ("active", "reserved", "scheduled", "registered", "stats", "revoked")
#: What ``control`` can tell a worker.
CONTROL_OPS = ("ping", "shutdown", "rate_limit", "cancel")


class WorkerInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """A worker's description of itself, refreshed in Redis every 2 seconds."""

    name: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    last_seen: float
    running: int = 0
    processed: int = 0
    #: 1-minute load average of the host, when known.
    load: float | None = None
    events: bool = False
    version: str = ""

    @property
    def uptime_s(self) -> float:
        return max(0.0, self.last_seen - self.started_at)


class AuditEntry(msgspec.Struct, frozen=True):
    """An action taken from the dashboard or the CLI: who did what, when."""

    timestamp: float
    who: str
    action: str
    target: str
    detail: str = ""


_worker_decoder = msgspec.msgpack.Decoder(WorkerInfo)
_audit_decoder = msgspec.msgpack.Decoder(AuditEntry)
_encoder = msgspec.msgpack.Encoder()


def encode_worker_info(info: WorkerInfo) -> bytes:
    return _encoder.encode(info)


class Monitor:
    """Read and steer a running system through its app's broker (see the module doc)."""

    #: How long ``inspect``/``control`` wait for the workers' answers.
    REPLY_TIMEOUT_S = 1.0

    def __init__(self, app: AioQueue) -> None:
        self.app = app

    @property
    def broker(self) -> Any:
        return self.app.broker

    # -- reading -------------------------------------------------------------------------
    async def workers(self) -> list[WorkerInfo]:
        """The live workers, by name (one that stopped heartbeating 10 s ago is gone)."""
        out = []
        for raw in (await self.broker.workers()).values():
            try:
                out.append(_worker_decoder.decode(raw))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
        return sorted(out, key=lambda w: w.name)

    async def queue_names(self) -> list[str]:
        """Every known queue: declared ones, the workers' and the default."""
        names = set(await self.broker.known_queues())
        for worker in await self.workers():
            names.update(worker.queues)
        names.add(self.app.conf.task_default_queue)
        return sorted(names)

    async def queues(self, names: Sequence[str] | None = None) -> list[QueueDetails]:
        """Waiting / running / delayed / dead, and the oldest waiting message, per queue."""
        details: list[QueueDetails] = await self.broker.queue_details(
            list(names) if names else await self.queue_names())
        return details

    async def recent_events(self, count: int = 100) -> list[tuple[str, Event]]:
        """The newest ``count`` events, oldest first, with their stream ids."""
        return _decoded(await self.broker.read_log("events", count=count))

    async def events_after(self, after: str, count: int = 500,
                           block_s: float = 0.0) -> list[tuple[str, Event]]:
        """Events newer than the id ``after`` (waiting up to ``block_s`` for one)."""
        return _decoded(await self.broker.read_log("events", after=after, count=count,
                                                   block_s=block_s))

    async def tail(self, *, backlog: int = 0, block_s: float = 1.0
                   ) -> AsyncIterator[tuple[str, Event]]:
        """Follow the events as they come (after the ``backlog`` newest), forever."""
        raw = await self.broker.read_log("events", count=max(backlog, 1))
        last = raw[-1][0] if raw else "0-0"
        for item in _decoded(raw)[-backlog:] if backlog else []:
            yield item
        while True:
            batch = await self.broker.read_log("events", after=last, count=500,
                                               block_s=block_s)
            if batch:
                last = batch[-1][0]
            for item in _decoded(batch):
                yield item

    async def throughput(self, minutes: int = 60, *, now: float | None = None
                         ) -> dict[int, dict[str, int]]:
        """Per-minute counters of the last ``minutes``: {minute: {"name|STATE": n}}.

        Minutes are epoch seconds // 60, oldest first; a minute without events is
        present with an empty dict, so charts get a continuous axis.
        """
        last = minute_of(now)
        wanted = list(range(last - minutes + 1, last + 1))
        found = await self.broker.stats(wanted)
        return {m: found.get(m, {}) for m in wanted}

    async def task(self, task_id: str) -> Any:
        """A task's stored result (``ResultInfo``), PENDING when nothing is stored."""
        return await self.app.AsyncResult(task_id).info()

    async def audit_log(self, count: int = 100) -> list[AuditEntry]:
        """The newest actions, oldest first."""
        out = []
        for _, raw in await self.broker.read_log("audit", count=count):
            try:
                out.append(_audit_decoder.decode(raw))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
        return out

    # -- asking workers ------------------------------------------------------------------
    async def inspect(self, what: str, *, destination: str | None = None,
                      timeout_s: float | None = None) -> dict[str, Any]:
        """Ask every live worker (or one) ``what`` (see ``INSPECT_WHAT``); {worker: answer}."""
        if what not in INSPECT_WHAT:
            raise ConfigurationError(
                f"inspect {what!r}: choose one of {', '.join(INSPECT_WHAT)}")
        return await self._ask("inspect", {"what": what}, destination, timeout_s)

    async def control(self, op: str, *, destination: str | None = None,
                      timeout_s: float | None = None, **arguments: Any) -> dict[str, Any]:
        """Tell every live worker (or one) to ``op`` (see ``CONTROL_OPS``); {worker: answer}.

        ``cancel`` takes ``task_id`` (a revoke with terminate, recorded durably too);
        ``rate_limit`` takes ``task`` and ``rate`` (``"10/s"``).
        """
        if op not in CONTROL_OPS:
            raise ConfigurationError(f"control {op!r}: choose one of {', '.join(CONTROL_OPS)}")
        if op == "cancel":
            task_id = arguments.get("task_id")
            if not task_id:
                raise ConfigurationError("control cancel needs a task_id")
            await self.app.revoke(str(task_id), terminate=True)
        if op == "rate_limit":
            await self.set_rate_limit(str(arguments.get("task") or ""), arguments.get("rate"))
        return await self._ask(op, arguments, destination, timeout_s)

    async def set_rate_limit(self, task: str, rate: str | None) -> None:
        """Set a task's cluster-wide rate limit now and for workers started later (kept in
        Redis); ``None``, ``""`` or ``"0"`` removes it. Celery's ``control rate_limit``."""
        if not task:
            raise ConfigurationError("control rate_limit needs a task name")
        normalised = None if parse_rate(rate, f"rate limit of {task}") is None else str(rate)
        await self.broker.set_rate_limit(task, normalised)

    async def rate_limits(self) -> dict[str, str]:
        """Every rate limit in force: declared by registered tasks (and
        ``task_default_rate_limit``), overridden by those set at run time."""
        limits = {name: task.options.rate_limit for name, task in self.app.tasks.items()
                  if task.options.rate_limit}
        default = self.app.conf.task_default_rate_limit
        if default:
            limits = {name: limits.get(name, default) for name in self.app.tasks}
        limits.update(await self.broker.rate_limits())
        return dict(sorted((k, str(v)) for k, v in limits.items()))

    async def ping(self, timeout_s: float | None = None) -> dict[str, Any]:
        return await self.control("ping", timeout_s=timeout_s)

    async def _ask(self, op: str, arguments: dict[str, Any], destination: str | None,
                   timeout_s: float | None) -> dict[str, Any]:
        expected = {w.name for w in await self.workers()}
        if destination is not None:
            expected &= {destination}
        key = self.app.keys.control_reply(uuid.uuid4().hex)
        await self.broker.publish_control(encode_control(
            op, destination=destination, reply_to=key, arguments=arguments))
        answers: dict[str, Any] = {}
        deadline = time.monotonic() + (self.REPLY_TIMEOUT_S if timeout_s is None else timeout_s)
        while True:
            for raw in await self.broker.take_control_replies(key):
                try:
                    reply = msgspec.msgpack.decode(raw)
                except msgspec.DecodeError:
                    continue
                if isinstance(reply, dict) and "worker" in reply:
                    answers[str(reply["worker"])] = reply.get("answer")
            if (expected and expected <= answers.keys()) or time.monotonic() >= deadline:
                return dict(sorted(answers.items()))
            await anyio.sleep(0.02)

    # -- acting --------------------------------------------------------------------------
    async def record_action(self, who: str, action: str, target: str, detail: str = "") -> None:
        """Add to the audit log (kept capped at 10,000 entries)."""
        entry = AuditEntry(time.time(), who, action, target, detail)
        await self.broker.append_log("audit", [_encoder.encode(entry)], 10_000)

    async def purge(self, queue: str, *, who: str = "cli") -> int:
        """Delete the waiting and delayed messages of ``queue``; returns how many."""
        n = int(await self.broker.purge_queue(queue))
        await self.record_action(who, "purge", queue, f"{n} messages")
        return n

    async def requeue_dead(self, queue: str, entry_ids: Sequence[str] | None = None, *,
                           who: str = "cli") -> int:
        """Send dead letters (all, or these) back to their queue."""
        n = int(await self.broker.requeue_dead(queue, entry_ids))
        await self.record_action(who, "requeue dead", queue,
                                 f"{n} messages" + ("" if entry_ids is None else
                                                    f": {', '.join(entry_ids)}"))
        return n

    async def purge_dead(self, queue: str, *, who: str = "cli") -> int:
        n = int(await self.broker.purge_dead(queue))
        await self.record_action(who, "purge dead", queue, f"{n} messages")
        return n

    async def revoke(self, task_id: str, *, terminate: bool = False, who: str = "cli") -> None:
        await self.app.revoke(task_id, terminate=terminate)
        await self.record_action(who, "revoke", task_id, "terminate" if terminate else "")

    async def retry(self, event: Event, *, who: str = "cli") -> str:
        """Send a failed task again from its event (same task, arguments and options, a new
        id); returns the new id. Needs the message kept in the event (``payload``)."""
        if event.payload is None:
            raise ConfigurationError(
                f"task {event.task_id} cannot be retried from its event: its message was "
                f"not kept (over 64 KiB, or events were recorded without it)")
        serializer = self.app.serializer
        message = serializer.decode_message(event.payload)
        new_id = _new_id()
        again = msgspec.structs.replace(message, id=new_id, retries=0, eta=None, expires=None)
        from .broker import Enqueue

        await self.broker.enqueue([Enqueue(message.queue, serializer.encode(again))])
        await self.record_action(who, "retry", event.task_id or "?", f"as {new_id}")
        return new_id

    async def send_event(self, event: Event) -> None:
        """Record one event (and count it), as workers and producers do."""
        from .events import stat_field

        conf = self.app.conf
        await self.broker.append_log("events", [encode_event(event)], conf.events_max_len)
        if event.task_id is not None:
            await self.broker.count_stats(
                {(minute_of(event.timestamp), stat_field(event.name, event.type)): 1},
                conf.events_stats_ttl)


def _decoded(raw: list[tuple[str, bytes]]) -> list[tuple[str, Event]]:
    out = []
    for entry_id, data in raw:
        event = decode_event(data)
        if event is not None:
            out.append((entry_id, event))
    return out


def _new_id() -> str:
    from .app import new_task_id

    return new_task_id()
