"""What the dashboard shows, as JSON-ready dicts: pure functions over ``Monitor`` data.

Tasks are rebuilt from the events stream (``aioqueue.events``): every event of a task id
is folded into one row whose state is the latest event's. Nothing here decodes a task's
arguments or results: events carry them as bounded ``repr`` strings already.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import AioQueueError
from ..events import STATE_OF, Event, EventType, short_repr

if TYPE_CHECKING:
    from ..app import AioQueue
    from ..broker import QueueDetails
    from ..broker.base import DeadLetter
    from ..monitor import AuditEntry, Monitor, WorkerInfo

#: The states a task row can be in (the per-minute counters use the same names).
STATES = ("SENT", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED", "DEAD")
#: States that end a run: a later event of the same run never comes before these.
_FINAL_RANK = 2
_RANK = {"SENT": 0, "STARTED": 1}
#: Failed states a task can be retried from (when its event kept the message).
RETRIABLE_STATES = frozenset({"FAILURE", "DEAD"})
_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


def stream_id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (``"0-0"`` for anything malformed)."""
    if not _STREAM_ID.fullmatch(entry_id):
        return (0, 0)
    ms, seq = entry_id.split("-")
    return (int(ms), int(seq))


def valid_stream_id(entry_id: str | None) -> str | None:
    """``entry_id`` when it is a stream entry id, else None."""
    return entry_id if entry_id is not None and _STREAM_ID.fullmatch(entry_id) else None


# -- events and tasks ----------------------------------------------------------------------
def event_json(entry_id: str, event: Event) -> dict[str, Any]:
    """An event for the page: every field but the message payload, plus its stream id."""
    data = msgspec.structs.asdict(event)
    data.pop("payload", None)
    data = {k: v for k, v in data.items() if v is not None}
    data["id"] = entry_id
    data["state"] = STATE_OF.get(event.type)
    data["retriable"] = event.payload is not None
    return data


@dataclass(slots=True)
class TaskRow:
    """One task as rebuilt from its events."""

    id: str
    events: list[tuple[str, Event]]

    def latest(self) -> tuple[str, Event]:
        """The event that says the task's current state.

        Stream order, except that a later run (more retries) or a later step of the same
        run (started after sent, a result after started) wins over an event recorded out of
        order (a replayed settle batch, a producer's ``task-sent`` landing late).
        """
        def key(item: tuple[int, tuple[str, Event]]) -> tuple[int, int, int]:
            index, (_, event) = item
            state = STATE_OF.get(event.type, "")
            return (event.retries, _RANK.get(state, _FINAL_RANK), index)

        return max(enumerate(self.events), key=key)[1]

    @property
    def state(self) -> str:
        return STATE_OF.get(self.latest()[1].type, "?")

    @property
    def last_seen(self) -> float:
        return max(e.timestamp for _, e in self.events)

    @property
    def first_seen(self) -> float:
        return min(e.timestamp for _, e in self.events)

    def retry_event(self) -> Event | None:
        """The newest failure or dead-letter event that kept the task's message."""
        for _, event in reversed(self.events):
            if event.type in (EventType.FAILED, EventType.DEAD) and event.payload is not None:
                return event
        return None

    def summary(self, retried_as: Mapping[str, str] | None = None,
                retry_of: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The row for the task list (and the head of the detail view)."""
        entry_id, current = self.latest()
        state = STATE_OF.get(current.type, "?")

        def newest(field: str) -> Any:
            for _, event in reversed(self.events):
                value = getattr(event, field)
                if value is not None:
                    return value
            return None

        sent_at = current.sent_at if current.sent_at is not None else newest("sent_at")
        if current.type == EventType.SENT and sent_at is None:
            sent_at = current.timestamp
        started_at = current.started_at
        wait = None
        if started_at is not None and sent_at is not None:
            wait = max(0.0, started_at - sent_at)
        dead_reason = None
        if current.type == EventType.DEAD and current.info:
            dead_reason = str(current.info.get("reason", ""))
        row: dict[str, Any] = {
            "id": self.id,
            "state": state,
            "name": newest("name"),
            "queue": newest("queue"),
            "worker": newest("worker"),
            "args": newest("args"),
            "kwargs": newest("kwargs"),
            "result": current.result if state == "SUCCESS" else None,
            "exception": current.exception,
            "traceback": current.traceback,
            "dead_reason": dead_reason,
            "retries": current.retries,
            "sent_at": sent_at,
            "started_at": started_at,
            "runtime": current.runtime,
            "wait": wait,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "event_id": entry_id,
            "retriable": state in RETRIABLE_STATES and self.retry_event() is not None,
            "retried_as": (retried_as or {}).get(self.id),
            "retry_of": (retry_of or {}).get(self.id),
        }
        return row


def group_tasks(events: Iterable[tuple[str, Event]]) -> dict[str, TaskRow]:
    """Task events (oldest first) folded into one row per task id, in first-seen order."""
    rows: dict[str, TaskRow] = {}
    for entry_id, event in events:
        if event.task_id is None or event.type not in STATE_OF:
            continue
        row = rows.get(event.task_id)
        if row is None:
            row = rows[event.task_id] = TaskRow(event.task_id, [])
        row.events.append((entry_id, event))
    return rows


@dataclass(slots=True)
class TaskFilter:
    """What the task list is narrowed to. Empty fields match everything."""

    name: str = ""
    states: frozenset[str] = frozenset()
    queue: str = ""
    task_id: str = ""
    since: float | None = None
    until: float | None = None

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> TaskFilter:
        """From query parameters or a JSON body: ``name``, ``state`` (comma-separated),
        ``queue``, ``id``, ``since`` and ``until`` (epoch seconds)."""
        def text(key: str) -> str:
            value = params.get(key)
            if isinstance(value, list | tuple):  # a JSON body may give states as a list
                value = ",".join(map(str, value))
            return str(value).strip()[:200] if value not in (None, "") else ""

        def number(key: str) -> float | None:
            value = params.get(key)
            if value in (None, ""):
                return None
            try:
                return float(value)
            except (TypeError, ValueError):
                pass
            raise ValueError(f"{key} must be a number (epoch seconds), got {value!r}")

        states = frozenset(s.strip().upper() for s in text("state").split(",") if s.strip())
        unknown = states - set(STATES)
        if unknown:
            raise ValueError(f"unknown state(s) {', '.join(sorted(unknown))}: choose from "
                             f"{', '.join(STATES)}")
        return cls(name=text("name"), states=states, queue=text("queue"),
                   task_id=text("id"), since=number("since"), until=number("until"))

    def matches(self, row: TaskRow, summary: Mapping[str, Any]) -> bool:
        if self.states and summary["state"] not in self.states:
            return False
        if self.name and self.name.lower() not in str(summary["name"] or "").lower():
            return False
        if self.queue and summary["queue"] != self.queue:
            return False
        if self.task_id and self.task_id.lower() not in row.id.lower():
            return False
        if self.since is not None and row.last_seen < self.since:
            return False
        return not (self.until is not None and row.last_seen > self.until)


def retry_links(audit: Sequence[AuditEntry]) -> tuple[dict[str, str], dict[str, str]]:
    """From the audit log: {failed id: the id it was retried as} and the reverse."""
    retried_as: dict[str, str] = {}
    retry_of: dict[str, str] = {}
    for entry in audit:
        if entry.action == "retry" and entry.detail.startswith("as "):
            new_id = entry.detail[3:].strip()
            retried_as[entry.target] = new_id
            retry_of[new_id] = entry.target
    return retried_as, retry_of


def task_list(events: Sequence[tuple[str, Event]], flt: TaskFilter, limit: int,
              audit: Sequence[AuditEntry] = ()) -> dict[str, Any]:
    """The newest ``limit`` tasks matching ``flt``, with what the filter bar offers."""
    rows = group_tasks(events)
    retried_as, retry_of = retry_links(audit)
    matched = []
    names: set[str] = set()
    queues: set[str] = set()
    for row in rows.values():
        summary = row.summary(retried_as, retry_of)
        if summary["name"]:
            names.add(summary["name"])
        if summary["queue"]:
            queues.add(summary["queue"])
        if flt.matches(row, summary):
            summary.pop("traceback")  # the detail view has it
            matched.append(summary)
    matched.sort(key=lambda s: (s["last_seen"], stream_id_key(s["event_id"])), reverse=True)
    return {
        "tasks": matched[:limit],
        "total": len(matched),
        "scanned_events": len(events),
        "oldest_event_at": events[0][1].timestamp if events else None,
        "names": sorted(names),
        "queues": sorted(queues),
        "last_event_id": events[-1][0] if events else None,
    }


def task_detail(task_id: str, events: Sequence[tuple[str, Event]], stored: Any,
                audit: Sequence[AuditEntry] = ()) -> dict[str, Any]:
    """One task: its row, every event of it, and its stored result (``ResultInfo``)."""
    row = group_tasks(events).get(task_id)
    retried_as, retry_of = retry_links(audit)
    return {
        "task": None if row is None else row.summary(retried_as, retry_of),
        "events": [] if row is None else [event_json(i, e) for i, e in row.events],
        "stored": result_json(stored),
        "retried_as": retried_as.get(task_id),
        "retry_of": retry_of.get(task_id),
    }


def result_json(info: Any) -> dict[str, Any] | None:
    """A ``ResultInfo`` for the page (the value or exception as a bounded ``repr``)."""
    if info is None:
        return None
    if isinstance(info, BaseException):
        return {"state": "?", "error": str(info)}
    value = info.result
    shown = None
    if value is not None:
        shown = (f"{type(value).__name__}: {value}" if isinstance(value, BaseException)
                 else short_repr(value))
    date_done = info.date_done
    return {
        "state": str(info.state),
        "result": shown,
        "traceback": info.traceback,
        "date_done": None if date_done is None else date_done.timestamp(),
        "retries": info.retries,
        "task": info.task,
        "worker": info.worker,
    }


# -- overview ------------------------------------------------------------------------------
def worker_json(info: WorkerInfo, now: float) -> dict[str, Any]:
    return {
        "name": info.name,
        "hostname": info.hostname,
        "pid": info.pid,
        "queues": list(info.queues),
        "concurrency": info.concurrency,
        "running": info.running,
        "processed": info.processed,
        "load": info.load,
        "uptime_s": info.uptime_s,
        "started_at": info.started_at,
        "last_seen": info.last_seen,
        "seen_ago_s": max(0.0, now - info.last_seen),
        "events": info.events,
        "version": info.version,
    }


def queue_json(details: QueueDetails, now: float) -> dict[str, Any]:
    oldest = details.oldest_waiting_at
    return {
        "name": details.name,
        "waiting": details.waiting,
        "running": details.running,
        "delayed": details.delayed,
        "dead": details.dead,
        "oldest_waiting_at": oldest,
        "oldest_waiting_age_s": None if oldest is None else max(0.0, now - oldest),
    }


def throughput_json(per_minute: Mapping[int, Mapping[str, int]]) -> dict[str, Any]:
    """``Monitor.throughput`` as chart columns: one count per minute and state, the
    failure rate (failed / finished, %, null for a minute where nothing finished) and a
    per-task table of the whole window."""
    minutes = sorted(per_minute)
    series = {state: [0] * len(minutes) for state in STATES}
    by_task: dict[str, dict[str, int]] = {}
    for i, minute in enumerate(minutes):
        for field, count in per_minute[minute].items():
            name, _, state = field.rpartition("|")
            if state not in series:
                continue
            series[state][i] += count
            counts = by_task.setdefault(name or "?", dict.fromkeys(STATES, 0))
            counts[state] += count
    failure_rate: list[float | None] = []
    for i in range(len(minutes)):
        failed = series["FAILURE"][i] + series["DEAD"][i]
        finished = failed + series["SUCCESS"][i]
        failure_rate.append(None if finished == 0 else round(100.0 * failed / finished, 2))
    totals = {state: sum(values) for state, values in series.items()}
    tasks = []
    for name, counts in sorted(by_task.items()):
        failed = counts["FAILURE"] + counts["DEAD"]
        finished = failed + counts["SUCCESS"]
        tasks.append({"name": name, **counts,
                      "failure_rate": None if finished == 0 else
                      round(100.0 * failed / finished, 2)})
    return {"minutes": [m * 60 for m in minutes], "series": series,
            "failure_rate": failure_rate, "totals": totals, "tasks": tasks}


async def overview(monitor: Monitor, minutes: int = 60) -> dict[str, Any]:
    """Workers, queues and the last ``minutes`` of throughput, in one snapshot."""
    workers = await monitor.workers()
    names = set(await monitor.broker.known_queues())
    for worker in workers:
        names.update(worker.queues)
    names.add(monitor.app.conf.task_default_queue)
    queues = await monitor.queues(sorted(names))
    throughput = await monitor.throughput(minutes)
    now = time.time()
    return {
        "now": now,
        "workers": [worker_json(w, now) for w in workers],
        "queues": [queue_json(q, now) for q in queues],
        "throughput": throughput_json(throughput),
    }


# -- dead letters ----------------------------------------------------------------------------
def dead_letter_json(app: AioQueue, letter: DeadLetter) -> dict[str, Any]:
    """A dead letter with its message decoded to name and arguments, when it decodes."""
    out: dict[str, Any] = {
        "queue": letter.queue,
        "entry_id": letter.entry_id,
        "reason": letter.reason,
        "failed_at": letter.failed_at or None,
        "size": len(letter.payload),
        "task": None, "task_id": None, "args": None, "kwargs": None, "retries": None,
        "decode_error": None,
    }
    try:
        message = app.serializer.decode_message(letter.payload)
    except (AioQueueError, ValueError, TypeError) as exc:
        out["decode_error"] = str(exc)[:500]
        return out
    out.update(task=message.task, task_id=message.id, args=short_repr(message.args),
               kwargs=short_repr(message.kwargs), retries=message.retries)
    return out


# -- schedules -------------------------------------------------------------------------------
async def schedules(app: AioQueue, n: int = 3) -> dict[str, Any]:
    """Beat schedules with their next ``n`` fire times and the last tick fired."""
    from ..beat import describe

    out: dict[str, Any] = {"timezone": str(app.conf.timezone), "schedules": [], "error": None}
    try:
        described = describe(app, n=n)
    except AioQueueError as exc:
        out["error"] = str(exc)
        return out
    try:
        last_runs = await app.broker.last_runs()
    except AioQueueError:
        last_runs = {}
    for name, task, description, upcoming in described:
        out["schedules"].append({
            "name": name,
            "task": task,
            "schedule": description,
            "next": [t.timestamp() for t in upcoming],
            "next_local": [t.isoformat() for t in upcoming],
            "last_run": last_runs.get(name),
            "registered": task in app.tasks,
        })
    return out


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {"timestamp": entry.timestamp, "who": entry.who, "action": entry.action,
            "target": entry.target, "detail": entry.detail,
            "at": datetime.fromtimestamp(entry.timestamp, UTC).isoformat()}
