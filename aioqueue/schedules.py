"""Schedule arithmetic for beat: Celery-style ``crontab`` and epoch-anchored intervals.

Pure functions of time: no Redis, no I/O, no clock reads.  Every instant passed in must be
timezone-aware and every instant returned is in UTC, so all beat processes in a cluster
derive identical tick timestamps and each tick can be claimed exactly once in Redis under
``schedule name + tick timestamp``.

DST behaviour of ``crontab`` evaluated in a zone with daylight saving (asserted in tests):

* Spring forward: wall-clock times inside the gap do not exist.  A schedule pinned to such a
  time (``30 2 * * *`` in Europe/Berlin on 2026-03-29) fires once, at the first instant after
  the gap (03:00 CEST = 01:00 UTC) -- croniter's behaviour, like Vixie cron.  A schedule that
  fires every hour (``15 * * * *``) simply has no tick in the missing hour.
* Fall back: wall-clock times in the repeated hour occur twice.  Schedules whose hour field
  covers every hour fire in both passes, because an hour of real time did elapse.  All other
  schedules fire on the first pass only: croniter yields the second (``fold=1``) match as
  well, and we drop it, so a daily ``30 2 * * *`` job runs once that day (Vixie cron does
  the same for fixed-time jobs).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "Interval", "Schedule", "as_schedule", "crontab", "due_tick", "every", "next_fire_times",
    "resolve_timezone",
]  # fmt: skip

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
# Celery accepts full weekday names; croniter only knows the three-letter forms.
_FULL_DAY_NAMES = {
    "sunday": "sun", "monday": "mon", "tuesday": "tue", "wednesday": "wed",
    "thursday": "thu", "friday": "fri", "saturday": "sat",
}  # fmt: skip

CronField = str | int | Iterable[int]


def resolve_timezone(tz: ZoneInfo | str) -> ZoneInfo:
    """Return ``tz`` as a ``ZoneInfo``; an unknown IANA name raises ``ValueError`` naming it."""
    if isinstance(tz, ZoneInfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # ValueError: malformed keys like "../x"
        raise ValueError(f"unknown timezone {tz!r}") from exc


def _aware(value: datetime, name: str) -> datetime:
    # A naive datetime would silently mean "local time of whichever host runs beat", which
    # is exactly the disagreement between schedulers this module exists to prevent.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


class Schedule(ABC):
    """A set of fire instants ("ticks"); subclasses are immutable and hashable."""

    __slots__ = ()

    @abstractmethod
    def next_after(self, after: datetime, tz: ZoneInfo | str) -> datetime:
        """Return the first tick strictly after the aware ``after``, in UTC."""

    @abstractmethod
    def describe(self) -> str:
        """Return a short human-readable description, as shown by ``aioqueue beat --list``."""

    def iter_ticks(self, after: datetime, tz: ZoneInfo | str) -> Iterator[datetime]:
        """Yield the ticks strictly after ``after`` in order, forever (slice it)."""
        zone = resolve_timezone(tz)
        tick = self.next_after(after, zone)
        while True:
            yield tick
            tick = self.next_after(tick, zone)

    def ticks_between(
        self,
        start_exclusive: datetime,
        end_inclusive: datetime,
        tz: ZoneInfo | str,
        *,
        limit: int = 10_000,
    ) -> list[datetime]:
        """Return the ticks in ``(start_exclusive, end_inclusive]``; more than ``limit`` raises
        ``ValueError`` rather than silently truncating or building a huge list."""
        _aware(end_inclusive, "end_inclusive")
        ticks: list[datetime] = []
        for tick in self.iter_ticks(start_exclusive, tz):
            if tick > end_inclusive:
                break
            if len(ticks) == limit:
                raise ValueError(f"more than {limit} ticks of {self.describe()} in range")
            ticks.append(tick)
        return ticks

    def latest_tick(
        self, after_exclusive: datetime, at_or_before: datetime, tz: ZoneInfo | str
    ) -> datetime | None:
        """Return the last tick in ``(after_exclusive, at_or_before]``, or None if there is none.

        Bisects using only ``next_after`` (so it can never disagree with it): a year of
        missed per-minute ticks costs ~40 ``next_after`` calls instead of 525,600.
        """
        zone = resolve_timezone(tz)
        lo, hi = _aware(after_exclusive, "after_exclusive"), _aware(at_or_before, "at_or_before")
        first = self.next_after(lo, zone)
        # Invariant: first == next_after(lo) <= hi, and no tick in (original hi, hi].
        if first > hi:
            return None
        while self.next_after(first, zone) <= hi:  # >= 2 ticks in (lo, hi]: halve the range
            mid = lo + (hi - lo) / 2
            if (tick := self.next_after(mid, zone)) <= hi:
                lo, first = mid, tick
            else:
                hi = mid
        return first


@dataclass(frozen=True)
class Interval(Schedule):
    """Fire every ``seconds`` seconds, ticks anchored on the Unix epoch.

    Tick k is at ``k * seconds`` after 1970-01-01T00:00Z, so every scheduler in a cluster
    agrees on tick boundaries without coordinating or knowing when the others started.
    The interval is kept as whole microseconds so the arithmetic is exact integer math.
    """

    seconds: float = field(compare=False)
    _micros: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        value: object = self.seconds
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"interval seconds must be a number, got {value!r}")
        micros = round(value * 1_000_000) if math.isfinite(value) else 0
        if micros < 1:
            raise ValueError(f"interval must be at least 1 microsecond, got {value!r} seconds")
        object.__setattr__(self, "_micros", micros)

    def next_after(self, after: datetime, tz: ZoneInfo | str) -> datetime:
        """Return the first epoch-anchored tick strictly after ``after`` (``tz`` is unused)."""
        elapsed = (_aware(after, "after") - _EPOCH) // _ONE_US  # floors, also before 1970
        return _EPOCH + timedelta(microseconds=(elapsed // self._micros + 1) * self._micros)

    def latest_tick(
        self, after_exclusive: datetime, at_or_before: datetime, tz: ZoneInfo | str
    ) -> datetime | None:
        """Return the last tick in ``(after_exclusive, at_or_before]`` in O(1), or None."""
        elapsed = (_aware(at_or_before, "at_or_before") - _EPOCH) // _ONE_US
        tick = _EPOCH + timedelta(microseconds=elapsed // self._micros * self._micros)
        return tick if tick > _aware(after_exclusive, "after_exclusive") else None

    def describe(self) -> str:
        """Return e.g. ``every 10s`` or ``every 0.5s``."""
        whole, frac = divmod(self._micros, 1_000_000)
        return f"every {whole}s" if not frac else f"every {self._micros / 1_000_000!r}s"


def every(seconds: float | timedelta) -> Interval:
    """Return an epoch-anchored ``Interval`` of ``seconds`` (a number or a ``timedelta``)."""
    if isinstance(seconds, timedelta):
        if seconds <= timedelta(0):
            raise ValueError(f"interval must be positive, got {seconds!r}")
        return Interval(seconds.total_seconds())
    return Interval(seconds)


def as_schedule(value: object) -> Schedule:
    """Coerce a beat_schedule entry's ``schedule`` value into a ``Schedule``.

    Accepts a ``Schedule``, a number of seconds > 0, or a positive ``timedelta``; anything
    else raises ``TypeError`` (wrong kind) or ``ValueError`` (not positive) naming the value.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, timedelta | float | int) and not isinstance(value, bool):
        return every(value)
    raise TypeError(
        f"cannot use {value!r} as a schedule: expected seconds > 0, a timedelta or a Schedule"
    )


def _cron_field(name: str, position: int, value: CronField) -> str:
    """Normalise one Celery-style field to cron text, raising ValueError naming the field."""
    if isinstance(value, str):
        # Celery reads "10, 17" (its parser splits on commas and int() ignores the spaces):
        # spaces around the comma-separated parts go; spaces inside one ("0 1") stay an error.
        text = ",".join(part.strip() for part in value.lower().split(","))
        for full, short in _FULL_DAY_NAMES.items():
            text = text.replace(full, short)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, Iterable) and not isinstance(value, bytes):
        items = list(value)
        if not items or not all(type(item) is int for item in items):
            raise ValueError(f"crontab {name}={value!r} is invalid: expected non-empty ints")
        text = ",".join(str(item) for item in sorted(set(items)))
    else:
        raise ValueError(f"crontab {name}={value!r} is invalid: expected str, int or ints")
    # Whitespace would shift the remaining fields of the 5-field expression we build.
    if not text or any(char.isspace() for char in text):
        raise ValueError(f"crontab {name}={value!r} is invalid: empty or contains whitespace")
    from croniter import croniter  # on first use: a fifth of a worker's imports otherwise

    probe = ["*"] * 5
    probe[position] = text
    try:
        croniter.expand(" ".join(probe))
    except (ValueError, TypeError) as exc:  # croniter's errors subclass these two
        raise ValueError(f"crontab {name}={value!r} is invalid: {exc}") from exc
    return text


class crontab(Schedule):  # lowercase: Celery's name, so beat_schedule configs port over
    """Celery-compatible cron schedule, evaluated as wall-clock time in the beat timezone.

    Fields take Celery's syntax: ``"*/15"``, ``"0"``, ``"10,17"``, ``"1-5"``, an int, or an
    iterable of ints; ``day_of_week`` also takes ``sun``..``sat`` / ``mon-fri`` / full names,
    with 0 and 7 both Sunday.  As in Celery (celery/celery#4307), a restricted
    ``day_of_month`` and ``day_of_week`` must BOTH match, unlike cron's "either".
    See the module docstring for DST behaviour.
    """

    __slots__ = ("_every_hour", "_expr", "_fields", "_key")
    _every_hour: bool
    _expr: str
    _fields: dict[str, str]
    _key: tuple[object, ...]

    def __init__(
        self,
        minute: CronField = "*",
        hour: CronField = "*",
        day_of_week: CronField = "*",
        day_of_month: CronField = "*",
        month_of_year: CronField = "*",
    ) -> None:
        fields = {
            "minute": _cron_field("minute", 0, minute),
            "hour": _cron_field("hour", 1, hour),
            "day_of_week": _cron_field("day_of_week", 4, day_of_week),
            "day_of_month": _cron_field("day_of_month", 2, day_of_month),
            "month_of_year": _cron_field("month_of_year", 3, month_of_year),
        }
        order = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        expr = " ".join(fields[name] for name in order)
        from croniter import CroniterBadDateError, croniter

        expanded, nth_weekday = croniter.expand(expr)
        hours = expanded[1]
        # Equality compares what fires, not spelling: "7" == "0" == "sun", 5 == "5".
        key = (
            tuple(tuple(str(v) for v in values) for values in expanded),
            tuple(sorted((k, tuple(sorted(v))) for k, v in nth_weekday.items())),
        )
        for name, value in (("_fields", fields), ("_expr", expr), ("_key", key)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_every_hour", hours == ["*"] or set(hours) == set(range(24)))
        try:  # Reject e.g. day_of_month=31 with month_of_year=2 now, not at fire time.
            croniter(expr, datetime(2000, 1, 1, tzinfo=UTC), day_or=False).get_next(datetime)
        except CroniterBadDateError as exc:
            raise ValueError(f"{self.describe()} never fires") from exc

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"crontab is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"crontab is immutable; cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        return self._key == other._key if isinstance(other, crontab) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return self.describe()

    def __reduce__(self) -> tuple[type[crontab], tuple[str, ...]]:
        # Default pickling/copying restores slots via setattr, which immutability forbids.
        names = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
        return (crontab, tuple(self._fields[name] for name in names))

    @property
    def expression(self) -> str:
        """The equivalent 5-field cron expression (day-of-month/-week ANDed, as in Celery)."""
        return self._expr

    def describe(self) -> str:
        """Return e.g. ``crontab(minute='0', hour='10,17', day_of_week='*')``."""
        shown = ["minute", "hour", "day_of_week"]
        shown += [n for n in ("day_of_month", "month_of_year") if self._fields[n] != "*"]
        return "crontab(" + ", ".join(f"{n}={self._fields[n]!r}" for n in shown) + ")"

    def next_after(self, after: datetime, tz: ZoneInfo | str) -> datetime:
        """Return the first tick strictly after ``after`` as wall-clock time in ``tz``, in UTC."""
        zone = resolve_timezone(tz)
        after = _aware(after, "after")
        from croniter import croniter

        ticks = croniter(self._expr, after.astimezone(zone), day_or=False)
        while True:
            tick = ticks.get_next(datetime).astimezone(UTC)
            local = tick.astimezone(zone)  # recomputes fold from the instant
            repeated = local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
            # `tick > after` guards against croniter DST quirks ever returning a past tick.
            if tick > after and (self._every_hour or not repeated):
                return tick


def due_tick(
    schedule: Schedule, last_run: datetime | None, now: datetime, tz: ZoneInfo | str
) -> datetime | None:
    """Return the tick to fire now, or None if nothing is due.

    That is the most recent tick in ``(last_run, now]``: however many ticks were missed
    (beat down, clock jump), they collapse into ONE firing, stamped with the latest missed
    tick.  ``last_run`` None means first start ever: nothing fires, and the caller should
    record ``now`` as the baseline so the next tick after it fires normally -- a freshly
    deployed schedule must not fire immediately for a tick that happened before it existed.
    """
    if last_run is None:
        return None
    return schedule.latest_tick(last_run, now, tz)


def next_fire_times(
    schedule: Schedule, now: datetime, tz: ZoneInfo | str, n: int
) -> list[datetime]:
    """Return the next ``n`` ticks strictly after ``now`` in UTC (for ``beat --list``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    return list(itertools.islice(schedule.iter_ticks(now, tz), n))
