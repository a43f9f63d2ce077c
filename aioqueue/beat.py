"""Beat: send periodic tasks on time, from any number of processes, each tick exactly once.

Three pieces of state in the broker make it safe to run several beats (``aioqueue beat`` or
workers started with ``--beat``) against one Redis:

* **The leader lease.** Every ``tick_s`` each beat tries to take or renew one lease of
  ``beat_lease_ttl`` seconds; only the holder fires.  A leader that dies stops renewing and
  another beat takes over within ``beat_lease_ttl`` plus one tick.  A beat that stops cleanly
  releases the lease, so the next one takes over at its next tick.
* **The tick claim.** Before sending tick T of schedule S, the leader claims ``(S, T)`` with
  ``SET NX``.  Only the claimer sends, so a tick fires at most once even while two beats both
  believe they lead (the moment a lease expires under a slow leader).  Tick timestamps are
  the same in every process (see :mod:`aioqueue.schedules`), which is what makes the claim
  key shared.
* **The cursor** (``last_run``): the last tick handled per schedule.  It is what a restarted
  or newly elected beat starts from.

Policies, in the order they come up:

* **First start of a schedule** (no cursor stored): nothing fires; ``now`` is recorded as the
  cursor and the schedule fires from its next tick on.  A newly deployed hourly job does not
  run at once for an hour that began before it existed.
* **Catch-up**: ticks missed while no beat ran collapse into ONE firing of the most recent
  missed tick (``due_tick``), never a burst of N.
* **Restart / handover**: the cursor and the claims live in the broker, so a restarted or new
  leader neither fires the last tick again nor skips a tick that fell in the gap.
* **Changed deployment**: on becoming leader a beat stores its own declared schedules
  (``replace_schedules``), which forgets the cursors of schedules no longer declared; no
  manual purge.  A schedule name declared again later starts over as a first start.

Delivery is at most once per tick: a tick claimed by a beat that dies before sending it is
lost rather than risk sending it twice.  A send that fails because the broker is down is
retried by the claimer at its next tick while that tick is still the latest one due.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import anyio

from .errors import AioQueueError, BrokerError, ConfigurationError
from .schedules import Schedule, as_schedule, due_tick, next_fire_times, resolve_timezone

if TYPE_CHECKING:
    from .app import AioQueue

__all__ = ("Beat", "ScheduleEntry", "collect_schedules", "describe")

log = logging.getLogger("aioqueue.beat")

#: Bounds of a tick claim's lifetime.  The claim must outlive any beat that could still
#: consider that tick due (a racing leader, a stale cursor), which is a few ticks at most
#: because a failed claim moves the cursor on; the floor and ceiling keep Redis tidy.
_CLAIM_TTL_MIN_S = 60.0
_CLAIM_TTL_MAX_S = 7 * 86400.0
#: After ``stop`` is set, how long a broker call in progress may finish before it is
#: cancelled (during an outage a call retries for up to ``broker_connection_timeout``).
_STOP_GRACE_S = 1.0
#: How long releasing the lease on the way out may take.
_RELEASE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """One validated schedule: a ``beat_schedule`` entry or an ``@app.periodic`` one."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]


def _entry(name: str, spec: object) -> ScheduleEntry:
    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(f"beat schedule {name!r}: {why}")

    if not isinstance(spec, Mapping):
        raise bad(f"expected a dict with 'task' and 'schedule', got {spec!r}")
    unknown = set(spec) - {"task", "schedule", "args", "kwargs", "options"}
    if unknown:
        raise bad(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    task, args = spec.get("task"), spec.get("args") or ()
    kwargs, options = spec.get("kwargs") or {}, spec.get("options") or {}
    if not isinstance(task, str) or not task:
        raise bad(f"'task' must be a task name, got {task!r}")
    if "schedule" not in spec:
        raise bad("'schedule' is missing")
    try:
        schedule = as_schedule(spec["schedule"])
    except (TypeError, ValueError) as exc:
        raise bad(str(exc)) from None
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise bad(f"'args' must be a list or tuple, got {args!r}")
    if not isinstance(kwargs, Mapping) or not isinstance(options, Mapping):
        raise bad("'kwargs' and 'options' must be dicts")
    return ScheduleEntry(name, task, schedule, tuple(args), dict(kwargs), dict(options))


def collect_schedules(app: AioQueue) -> tuple[list[ScheduleEntry], ZoneInfo]:
    """Validate ``app.conf.beat_schedule`` and ``app.periodic_tasks`` and the timezone.

    Raises ``ConfigurationError`` naming the offending schedule (bad value, unknown key, a
    name declared both ways, an option or argument that cannot be sent) or the unknown
    timezone.
    """
    try:
        zone = resolve_timezone(app.conf.timezone)
    except ValueError as exc:
        raise ConfigurationError(f"setting timezone: {exc}") from None
    entries = [_entry(name, spec) for name, spec in app.conf.beat_schedule.items()]
    for name, spec in app.periodic_tasks.items():
        if name in app.conf.beat_schedule:
            # Silently preferring one would make a schedule vanish depending on config.
            raise ConfigurationError(
                f"beat schedule {name!r} is declared both in beat_schedule and by @app.periodic"
            )
        entries.append(_entry(name, spec))
    for entry in entries:
        _check_sendable(app, entry)
    return entries, zone


def _check_sendable(app: AioQueue, entry: ScheduleEntry) -> None:
    # Building the message once (pure: no I/O) turns a misspelt option or an unserializable
    # argument into an error at start-up rather than a failure logged at every tick.
    try:
        app._build(entry.task, entry.args, entry.kwargs, **entry.options)
    except TypeError as exc:
        raise ConfigurationError(
            f"beat schedule {entry.name!r}: invalid options {entry.options!r}: {exc}"
        ) from None
    except (ValueError, AioQueueError) as exc:
        raise ConfigurationError(f"beat schedule {entry.name!r}: {exc}") from None


def describe(
    app: AioQueue, n: int = 3, now: datetime | None = None
) -> list[tuple[str, str, str, list[datetime]]]:
    """Return ``(name, task, schedule description, next n fire times)`` per schedule.

    Pure (no broker): what ``aioqueue beat --list`` prints.  Fire times are aware datetimes
    in the app's ``timezone``; ``now`` defaults to the current time.  Raises
    ``ConfigurationError`` like :func:`collect_schedules`.
    """
    entries, zone = collect_schedules(app)
    at = datetime.now(UTC) if now is None else now
    return [
        (
            e.name,
            e.task,
            e.schedule.describe(),
            [t.astimezone(zone) for t in next_fire_times(e.schedule, at, zone, n)],
        )
        for e in entries
    ]


class Beat:
    """The periodic scheduler: ``await Beat(app).run(stop)`` until ``stop`` is set.

    ``owner`` identifies this beat in the leader lease (default: host, pid and a random
    suffix).  ``tick_s`` is how often it renews the lease and looks for due ticks, so it
    bounds how late a tick fires; it is capped at a third of ``beat_lease_ttl`` so a healthy
    leader renews well before its lease runs out.  Construction validates the schedules and
    raises ``ConfigurationError`` (see :func:`collect_schedules`).
    """

    def __init__(self, app: AioQueue, *, owner: str | None = None, tick_s: float = 0.25) -> None:
        if tick_s <= 0:
            raise ConfigurationError(f"beat tick_s must be positive, not {tick_s!r}")
        self.app = app
        self.entries, self.zone = collect_schedules(app)
        self.owner = owner or f"{os.uname().nodename}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self.lease_ttl_s = float(app.conf.beat_lease_ttl)
        self.tick_s = min(tick_s, self.lease_ttl_s / 3)
        #: True while this beat holds the lease (as of its last renewal).
        self.is_leader = False
        # Whether the last renewal succeeded, even if this step failed before we could act
        # as leader: what decides releasing on the way out.
        self._holds_lease = False
        # Ticks we claimed whose send failed on a broker error: ours to retry, not re-claim.
        self._owed: dict[str, float] = {}

    def unknown_tasks(self) -> list[str]:
        """Task names scheduled here but not registered in this app (sorted, distinct).

        They are still sent by name (the task may live in another worker's app); a typo
        shows up as unroutable messages, hence the start-up warning.
        """
        return sorted({e.task for e in self.entries if e.task not in self.app.tasks})

    async def run(self, stop: anyio.Event) -> None:
        """Schedule until ``stop`` is set, then release the lease (if held) and return.

        Broker errors are logged once per outage and retried every tick; an error in one
        schedule is logged and never stops the others.
        """
        for entry in self.entries:
            if entry.task not in self.app.tasks:
                log.warning(
                    "Scheduler: schedule %s names task %s, which this app does not "
                    "register; sending it by name anyway",
                    entry.name,
                    entry.task,
                )
        log.info(
            "Scheduler: beat %s starting with %d schedule(s), timezone %s",
            self.owner,
            len(self.entries),
            self.zone.key,
        )
        try:
            async with anyio.create_task_group() as tg:

                async def cancel_after_grace() -> None:
                    await stop.wait()
                    await anyio.sleep(_STOP_GRACE_S)
                    tg.cancel_scope.cancel()

                tg.start_soon(cancel_after_grace)
                await self._loop(stop)
                tg.cancel_scope.cancel()
        finally:
            # Shielded: a worker shutting down cancels us, and releasing is what lets the
            # next beat take over at once instead of after the lease TTL.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_RELEASE_TIMEOUT_S):
                await self._release()
            log.info("Scheduler: beat %s stopped", self.owner)

    async def _loop(self, stop: anyio.Event) -> None:
        outage_since: float | None = None
        while not stop.is_set():
            try:
                await self._step()
            except BrokerError as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("Scheduler: broker unavailable (%s); retrying", exc)
            else:
                if outage_since is not None:
                    log.warning(
                        "Scheduler: broker reachable again after %.1fs",
                        time.monotonic() - outage_since,
                    )
                    outage_since = None
            with anyio.move_on_after(self.tick_s):
                await stop.wait()

    async def _release(self) -> None:
        if not self._holds_lease:
            return
        try:
            await self.app.broker.release_lease(self.owner)
        except BrokerError as exc:
            log.warning(
                "Scheduler: could not release the lease (%s); it expires in %.1fs",
                exc,
                self.lease_ttl_s,
            )
        else:
            self._holds_lease = False
            self._set_leader(False)

    def _set_leader(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            if leader:
                log.info("Scheduler: beat %s became the leader", self.owner)
            else:
                log.info("Scheduler: beat %s is no longer the leader", self.owner)

    async def _step(self) -> None:
        """Renew the lease; as leader, fire every due tick.  Broker errors propagate."""
        broker = self.app.broker
        held = self._holds_lease = await broker.acquire_lease(self.owner, self.lease_ttl_s)
        if not held:
            self._set_leader(False)
            return
        if not self.is_leader:
            # Declare on every accession (not once at start): the leader's deployment is the
            # one whose schedules are current, e.g. after a rolling upgrade.
            await broker.replace_schedules({e.name: e.schedule.describe() for e in self.entries})
            self._set_leader(True)
        cursors = await broker.last_runs()
        now = datetime.now(UTC)
        for entry in self.entries:
            try:
                await self._fire_if_due(entry, cursors.get(entry.name), now)
            except BrokerError:
                raise  # an outage concerns every schedule: abandon this step
            except Exception:
                log.exception("Scheduler: schedule %s (%s) failed", entry.name, entry.task)

    async def _fire_if_due(self, entry: ScheduleEntry, last: float | None, now: datetime) -> None:
        broker = self.app.broker
        if last is None:
            await broker.set_last_run(entry.name, now.timestamp())  # first start: baseline
            return
        tick = due_tick(entry.schedule, datetime.fromtimestamp(last, UTC), now, self.zone)
        if tick is None:
            return
        stamp = tick.timestamp()
        if self._owed.get(entry.name) != stamp:
            if not await broker.claim_tick(entry.name, stamp, self._claim_ttl_s(entry, tick)):
                # Another beat claimed it (or we did and the send failed for good): it is
                # handled, so move the cursor past it instead of re-claiming every tick.
                await broker.set_last_run(entry.name, stamp)
                return
            self._owed[entry.name] = stamp
        log.info("Scheduler: sending due task %s (%s)", entry.name, entry.task)
        try:
            # reply=False: beat never awaits, so results must not pile up in its reply list.
            await self.app.send_task(entry.task, entry.args, entry.kwargs, reply=False,
                                     **entry.options)
        except BrokerError:
            raise  # keep the claim in _owed: resend while this tick is the one due
        except Exception:
            del self._owed[entry.name]  # e.g. a bad option: retrying would fail the same way
            raise
        del self._owed[entry.name]
        await broker.set_last_run(entry.name, stamp)

    def _claim_ttl_s(self, entry: ScheduleEntry, tick: datetime) -> float:
        gap_s = (entry.schedule.next_after(tick, self.zone) - tick).total_seconds()
        return min(max(2 * gap_s, _CLAIM_TTL_MIN_S), _CLAIM_TTL_MAX_S)
