"""Tests for aioqueue.schedules: pure arithmetic, exact instants, no Redis, no sleeping."""

from __future__ import annotations

import copy
import pickle
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from aioqueue.schedules import (
    Interval,
    Schedule,
    as_schedule,
    crontab,
    due_tick,
    every,
    next_fire_times,
    resolve_timezone,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC_Z = ZoneInfo("UTC")  # the tz argument; datetime.UTC is for building instants


def utc(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


# --- crontab: known next-fire dates -------------------------------------------------------


def test_hours_in_shanghai_are_wall_clock_and_returned_in_utc() -> None:
    schedule = crontab(minute="0", hour="10,17")
    after = datetime(2026, 3, 1, 9, 59, tzinfo=SHANGHAI)
    first = schedule.next_after(after, SHANGHAI)
    assert first == utc(2026, 3, 1, 2, 0)  # 10:00 CST
    assert first.tzinfo is UTC
    assert next_fire_times(schedule, after, "Asia/Shanghai", 3) == [
        utc(2026, 3, 1, 2, 0),
        utc(2026, 3, 1, 9, 0),  # 17:00 CST
        utc(2026, 3, 2, 2, 0),
    ]


def test_next_after_is_strictly_after() -> None:
    schedule = crontab(minute="0", hour="10")
    assert schedule.next_after(utc(2026, 3, 1, 10, 0), UTC_Z) == utc(2026, 3, 2, 10, 0)
    assert schedule.next_after(utc(2026, 3, 1, 9, 59, 59, 999999), UTC_Z) == utc(2026, 3, 1, 10)
    assert schedule.next_after(utc(2026, 3, 1, 10, 0, 0, 1), UTC_Z) == utc(2026, 3, 2, 10, 0)


def test_every_fifteen_minutes() -> None:
    ticks = next_fire_times(crontab(minute="*/15"), utc(2026, 5, 5, 23, 31), UTC_Z, 4)
    assert ticks == [utc(2026, 5, 5, 23, 45), utc(2026, 5, 6), utc(2026, 5, 6, 0, 15),
                     utc(2026, 5, 6, 0, 30)]  # fmt: skip


def test_mon_fri_skips_the_weekend() -> None:
    schedule = crontab(minute=0, hour=9, day_of_week="mon-fri")
    friday_evening = utc(2026, 3, 6, 18, 0)  # 2026-03-06 is a Friday
    assert next_fire_times(schedule, friday_evening, UTC_Z, 2) == [
        utc(2026, 3, 9, 9, 0),  # Monday
        utc(2026, 3, 10, 9, 0),
    ]


@pytest.mark.parametrize("sunday", ["sun", "sunday", 0, 7, "0", "7", [7]])
def test_sunday_spellings(sunday: object) -> None:
    schedule = crontab(minute=0, hour=12, day_of_week=sunday)  # type: ignore[arg-type]
    assert schedule.next_after(utc(2026, 3, 2), UTC_Z) == utc(2026, 3, 8, 12, 0)
    assert schedule == crontab(minute="0", hour="12", day_of_week="sun")


def test_day_of_month_31_skips_short_months() -> None:
    ticks = next_fire_times(crontab(minute=0, hour=0, day_of_month=31), utc(2026, 1, 1), UTC_Z, 4)
    assert ticks == [utc(2026, 1, 31), utc(2026, 3, 31), utc(2026, 5, 31), utc(2026, 7, 31)]


def test_month_of_year_and_iterables_of_ints() -> None:
    schedule = crontab(minute=[0], hour={6}, day_of_month=1, month_of_year={1, 7})
    assert next_fire_times(schedule, utc(2026, 2, 1), UTC_Z, 3) == [
        utc(2026, 7, 1, 6),
        utc(2027, 1, 1, 6),
        utc(2027, 7, 1, 6),
    ]


def test_day_of_month_and_day_of_week_are_anded_like_celery() -> None:
    # Cron would fire on every 13th *or* every Friday; Celery (and we) need both.
    schedule = crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri")
    assert next_fire_times(schedule, utc(2026, 1, 1), UTC_Z, 2) == [
        utc(2026, 2, 13),
        utc(2026, 3, 13),
    ]


# --- DST ----------------------------------------------------------------------------------


def test_berlin_spring_forward_nonexistent_time_fires_once_at_end_of_gap() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that day.
    ticks = next_fire_times(crontab(minute=30, hour=2), utc(2026, 3, 28), BERLIN, 3)
    assert ticks == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # shifted to 03:00 CEST, the first instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_berlin_spring_forward_hourly_schedule_has_no_tick_in_missing_hour() -> None:
    ticks = next_fire_times(crontab(minute=15), utc(2026, 3, 28, 23, 30), BERLIN, 3)
    assert ticks == [utc(2026, 3, 29, 0, 15), utc(2026, 3, 29, 1, 15), utc(2026, 3, 29, 2, 15)]
    assert [t.astimezone(BERLIN).hour for t in ticks] == [1, 3, 4]


def test_berlin_fall_back_fixed_time_fires_once() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice; fire on the first pass only.
    ticks = next_fire_times(crontab(minute=30, hour=2), utc(2026, 10, 24), BERLIN, 3)
    assert ticks == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, first pass; the 02:30 CET repeat is dropped
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    # Starting inside the repeated hour (02:15 CET, second pass) also skips the repeat.
    assert crontab(minute=30, hour=2).next_after(utc(2026, 10, 25, 1, 15), BERLIN) == utc(
        2026, 10, 26, 1, 30
    )


def test_berlin_fall_back_hourly_schedule_fires_in_both_passes() -> None:
    ticks = next_fire_times(crontab(minute="*/30"), utc(2026, 10, 24, 23, 0), BERLIN, 6)
    # Local: 01:30, 02:00, 02:30 (CEST), 02:00, 02:30 (CET), 03:00 -- real half-hours apart.
    assert ticks == [utc(2026, 10, 24, 23, 30) + timedelta(minutes=30 * i) for i in range(6)]


def test_new_york_spring_forward_and_fall_back() -> None:
    daily = crontab(minute=30, hour=2)
    # 2026-03-08 02:00 EST -> 03:00 EDT.
    assert next_fire_times(daily, utc(2026, 3, 7, 12), NEW_YORK, 2) == [
        utc(2026, 3, 8, 7, 0),  # 03:00 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 occurs at 05:30 and 06:30 UTC.
    assert next_fire_times(crontab(minute=30, hour=1), utc(2026, 10, 31, 12), NEW_YORK, 2) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 2, 6, 30),  # 01:30 EST the next day; no second firing on Nov 1
    ]


# Days before each 2026 DST change: (zone, spring-forward eve, fall-back eve).
DST_EVES = [(BERLIN, (3, 28), (10, 24)), (NEW_YORK, (3, 7), (10, 31))]


@pytest.mark.parametrize("expr", ["30 2", "*/30 *", "15 *", "*/20 1-3", "0 */2", "0,45 0-4"])
@pytest.mark.parametrize(("zone", "spring_eve", "fall_eve"), DST_EVES)
def test_next_after_and_due_tick_agree_with_walked_ticks_across_dst(
    expr: str, zone: ZoneInfo, spring_eve: tuple[int, int], fall_eve: tuple[int, int]
) -> None:
    # Schedulers start from arbitrary instants, so next_after must describe ONE set of ticks
    # whatever the start; otherwise two beat processes could claim different tick keys.
    minute, hour = expr.split()
    schedule = crontab(minute=minute, hour=hour)
    for month, day_of_month in (spring_eve, fall_eve):
        day = datetime(2026, month, day_of_month, tzinfo=zone)
        start, end = day.astimezone(UTC), day.astimezone(UTC) + timedelta(days=3)
        walked = schedule.ticks_between(start, end, zone)
        for step in range(0, 2 * 24 * 60, 11):  # 11 minutes: hits ticks and between them
            probe = start + timedelta(minutes=step, seconds=30 * (step % 2))
            expected = next(t for t in walked if t > probe)
            assert schedule.next_after(probe, zone) == expected, probe
            if step % 4 == 0:  # due_tick bisects, so it costs ~100 next_after calls
                latest = max((t for t in walked if t <= probe), default=None)
                assert due_tick(schedule, start, probe, zone) == latest, probe


# --- crontab: validation, equality, description --------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": "61"}, "crontab minute='61' is invalid"),
        ({"hour": "x"}, "crontab hour='x' is invalid"),
        ({"hour": 24}, "crontab hour=24 is invalid"),
        ({"day_of_week": "funday"}, "crontab day_of_week='funday' is invalid"),
        ({"day_of_month": 0}, "crontab day_of_month=0 is invalid"),
        ({"month_of_year": "13"}, "crontab month_of_year='13' is invalid"),
        ({"minute": "*/0"}, "crontab minute='*/0' is invalid"),
        ({"minute": "0 1"}, "crontab minute='0 1' is invalid"),
        ({"minute": []}, "crontab minute=[] is invalid"),
        ({"minute": ["0"]}, "crontab minute=['0'] is invalid"),
        ({"minute": 1.5}, "crontab minute=1.5 is invalid"),
        (
            {"day_of_month": 31, "month_of_year": 2},
            "crontab(minute='*', hour='*', day_of_week='*', day_of_month='31', "
            "month_of_year='2') never fires",
        ),
    ],
)
def test_invalid_crontab_fields_name_field_and_value(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        crontab(**kwargs)  # type: ignore[arg-type]


def test_unknown_timezone_is_named() -> None:
    with pytest.raises(ValueError, match=r"^unknown timezone 'Mars/Base'$"):
        crontab().next_after(utc(2026, 1, 1), "Mars/Base")
    with pytest.raises(ValueError, match="unknown timezone"):
        resolve_timezone("../etc/passwd")
    assert resolve_timezone("Europe/Berlin") is resolve_timezone(BERLIN)


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        crontab().next_after(datetime(2026, 1, 1), UTC_Z)
    with pytest.raises(ValueError, match="timezone-aware"):
        every(5).next_after(datetime(2026, 1, 1), UTC_Z)


def test_crontab_equality_hash_immutability_and_describe() -> None:
    a = crontab(minute="0", hour="10,17")
    b = crontab(minute=0, hour=[17, 10], day_of_week="*")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != crontab(minute=0, hour=10) and a != every(60)
    assert crontab(day_of_week="mon-fri") == crontab(day_of_week="1-5")
    assert a.describe() == repr(a) == "crontab(minute='0', hour='10,17', day_of_week='*')"
    assert crontab(0, 0, day_of_month=1, month_of_year="1,7").describe() == (
        "crontab(minute='0', hour='0', day_of_week='*', day_of_month='1', month_of_year='1,7')"
    )
    assert a.expression == "0 10,17 * * *"
    with pytest.raises(AttributeError):
        a._expr = "* * * * *"
    assert isinstance(a, Schedule)
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(a) == a
    assert pickle.loads(pickle.dumps(every(2.5))) == every(2.5)


# --- intervals -----------------------------------------------------------------------------


def test_interval_ticks_are_anchored_on_the_epoch() -> None:
    schedule = every(10)
    # Two schedulers started at different moments inside one interval agree on the next tick.
    assert schedule.next_after(utc(2026, 1, 1, 0, 0, 1), UTC_Z) == utc(2026, 1, 1, 0, 0, 10)
    assert schedule.next_after(utc(2026, 1, 1, 0, 0, 9, 999999), BERLIN) == utc(
        2026, 1, 1, 0, 0, 10
    )
    assert schedule.next_after(utc(2026, 1, 1, 0, 0, 10), UTC_Z) == utc(2026, 1, 1, 0, 0, 20)
    # 7s does not divide a minute: ticks follow k*7 since 1970, not the wall clock.
    after = utc(2026, 1, 1)
    elapsed = int((after - utc(1970, 1, 1)).total_seconds())
    assert every(7).next_after(after, UTC_Z) == utc(1970, 1, 1) + timedelta(
        seconds=(elapsed // 7 + 1) * 7
    )
    # Timezone of the input does not matter, only the instant.
    assert every(3600).next_after(datetime(2026, 1, 1, 5, 30, tzinfo=SHANGHAI), UTC_Z) == utc(
        2025, 12, 31, 22, 0
    )


def test_sub_second_and_timedelta_intervals() -> None:
    assert every(0.25).next_after(utc(2026, 1, 1, 0, 0, 0, 300000), UTC_Z) == utc(
        2026, 1, 1, 0, 0, 0, 500000
    )
    assert every(timedelta(minutes=5)) == Interval(300) == Interval(300.0)
    assert hash(every(timedelta(minutes=5))) == hash(Interval(300))
    assert every(10).describe() == "every 10s"
    assert every(0.5).describe() == "every 0.5s"
    assert repr(every(10)) == "Interval(seconds=10)"


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), 1e-9, timedelta(0)])
def test_non_positive_intervals_are_rejected(bad: float | timedelta) -> None:
    with pytest.raises(ValueError, match="interval must"):
        every(bad)


def test_as_schedule_coerces_beat_schedule_values() -> None:
    cron = crontab(minute=0)
    assert as_schedule(cron) is cron
    assert as_schedule(30) == every(30)
    assert as_schedule(2.5) == every(2.5)
    assert as_schedule(timedelta(hours=1)) == every(3600)
    with pytest.raises(ValueError, match="-5"):
        as_schedule(-5)
    for bad in ("10", None, True, [10]):
        with pytest.raises(TypeError, match=re.escape(repr(bad))):
            as_schedule(bad)


# --- catch-up -------------------------------------------------------------------------------


def test_due_tick_collapses_missed_ticks_into_one() -> None:
    schedule = crontab(minute="*/15")
    last_run = utc(2026, 1, 1, 0, 0)
    now = utc(2026, 1, 1, 1, 20)  # missed 00:15, 00:30, 00:45, 01:00, 01:15
    assert len(schedule.ticks_between(last_run, now, UTC_Z)) == 5
    assert due_tick(schedule, last_run, now, UTC_Z) == utc(2026, 1, 1, 1, 15)
    # After firing that tick, nothing is due until the next one.
    assert due_tick(schedule, utc(2026, 1, 1, 1, 15), now, UTC_Z) is None
    assert due_tick(schedule, utc(2026, 1, 1, 1, 15), utc(2026, 1, 1, 1, 30), UTC_Z) == utc(
        2026, 1, 1, 1, 30
    )


def test_due_tick_interval_and_long_outage() -> None:
    assert due_tick(every(10), utc(2026, 1, 1), utc(2026, 1, 1, 0, 0, 55), UTC_Z) == utc(
        2026, 1, 1, 0, 0, 50
    )
    assert due_tick(every(10), utc(2026, 1, 1, 0, 0, 50), utc(2026, 1, 1, 0, 0, 59), UTC_Z) is None
    # A year of missed per-minute ticks is one firing, found without walking 525,600 ticks.
    assert due_tick(crontab(), utc(2025, 1, 1), utc(2026, 1, 1, 0, 0, 30), UTC_Z) == utc(2026, 1, 1)


def test_due_tick_first_start_fires_nothing() -> None:
    # No baseline yet: the caller records `now`, even if `now` is exactly on a tick.
    assert due_tick(crontab(minute=0), None, utc(2026, 1, 1, 10, 0), UTC_Z) is None
    assert due_tick(every(10), None, utc(2026, 1, 1, 10, 0), UTC_Z) is None


def test_ticks_between_is_bounded_and_next_fire_times_validates_n() -> None:
    assert every(60).ticks_between(utc(2026, 1, 1), utc(2026, 1, 1, 0, 3), UTC_Z) == [
        utc(2026, 1, 1, 0, 1),
        utc(2026, 1, 1, 0, 2),
        utc(2026, 1, 1, 0, 3),
    ]
    with pytest.raises(ValueError, match="more than 2 ticks"):
        every(60).ticks_between(utc(2026, 1, 1), utc(2026, 1, 1, 0, 3), UTC_Z, limit=2)
    assert next_fire_times(every(60), utc(2026, 1, 1), UTC_Z, 0) == []
    with pytest.raises(ValueError, match="n must be"):
        next_fire_times(every(60), utc(2026, 1, 1), UTC_Z, -1)
