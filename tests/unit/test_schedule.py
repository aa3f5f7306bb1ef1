"""Cron maths and schedule specs (no database): next_tick, latest_tick, ScheduleSpec."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runledger.core.schedule import ScheduleSpec, latest_tick, next_tick
from runledger.errors import (
    BlankJobType,
    InvalidCron,
    InvalidMaxAttempts,
    PayloadNotSerializable,
    PriorityOutOfRange,
    UnknownTimezone,
)

UTC = datetime.UTC
PARIS = "Europe/Paris"


def utc(*args: int) -> datetime.datetime:
    return datetime.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# --- next_tick -------------------------------------------------------------------------------


def test_next_tick_every_minute_in_utc_is_the_next_whole_minute() -> None:
    assert next_tick("* * * * *", "UTC", utc(2026, 5, 4, 12, 0, 30, 500)) == utc(2026, 5, 4, 12, 1)


def test_next_tick_is_strictly_after_a_time_that_is_itself_a_tick() -> None:
    assert next_tick("* * * * *", "UTC", utc(2026, 5, 4, 12, 0)) == utc(2026, 5, 4, 12, 1)
    assert next_tick("0 3 * * *", "UTC", utc(2026, 5, 4, 3, 0)) == utc(2026, 5, 5, 3, 0)


def test_next_tick_returns_an_aware_utc_datetime_for_an_aware_non_utc_input() -> None:
    after = datetime.datetime(
        2026, 5, 4, 14, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    )

    tick = next_tick("30 12 * * *", "UTC", after)

    assert tick == utc(2026, 5, 4, 12, 30)
    assert tick.utcoffset() == datetime.timedelta(0)


def test_next_tick_in_paris_winter_is_one_hour_before_utc() -> None:
    assert next_tick("30 2 * * *", PARIS, utc(2026, 1, 10, 12)) == utc(2026, 1, 11, 1, 30)


def test_next_tick_in_paris_summer_is_two_hours_before_utc() -> None:
    assert next_tick("30 2 * * *", PARIS, utc(2026, 7, 10, 12)) == utc(2026, 7, 11, 0, 30)


def test_next_tick_across_the_spring_change_fires_once_on_the_day_without_0230() -> None:
    # 2026-03-29: Paris clocks jump from 02:00 CET to 03:00 CEST, so 02:30 does not exist.
    ticks = []
    moment = utc(2026, 3, 27, 12)
    for _ in range(4):
        moment = next_tick("30 2 * * *", PARIS, moment)
        ticks.append(moment)

    assert ticks == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # the gap: fired at 03:00 CEST, the first instant after it
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]


def test_next_tick_is_strictly_increasing_across_both_dst_changes() -> None:
    for start in (utc(2026, 3, 28), utc(2026, 10, 24)):
        moment = start
        for _ in range(24 * 4 * 3):  # every 15 minutes for three days
            following = next_tick("*/15 * * * *", PARIS, moment)
            assert following > moment
            assert following - moment <= datetime.timedelta(minutes=15)
            moment = following


def test_next_tick_across_the_autumn_change_fires_a_daily_schedule_once_that_day() -> None:
    # 2026-10-25: Paris clocks go back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
    ticks = []
    moment = utc(2026, 10, 23, 12)
    for _ in range(4):
        moment = next_tick("30 2 * * *", PARIS, moment)
        ticks.append(moment)

    local_days = [tick.astimezone(zoneinfo.ZoneInfo(PARIS)).date() for tick in ticks]
    assert ticks[:2] == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30)]
    assert len(set(local_days)) == len(local_days), ticks


# --- latest_tick -----------------------------------------------------------------------------


def test_latest_tick_at_an_exact_tick_is_that_tick() -> None:
    assert latest_tick("* * * * *", "UTC", utc(2026, 5, 4, 12, 7)) == utc(2026, 5, 4, 12, 7)
    assert latest_tick("0 0 * * *", "UTC", utc(2026, 5, 4)) == utc(2026, 5, 4)


def test_latest_tick_between_ticks_is_the_one_before() -> None:
    at = utc(2026, 5, 4, 12, 7, 59, 999_999)
    assert latest_tick("* * * * *", "UTC", at) == utc(2026, 5, 4, 12, 7)
    assert latest_tick("0 */6 * * *", "UTC", at) == utc(2026, 5, 4, 12, 0)
    assert latest_tick("0 0 1 1 *", "UTC", at) == utc(2026, 1, 1)


def test_latest_tick_in_paris_is_computed_in_local_time() -> None:
    # 2026-07-11 00:45 UTC is 02:45 CEST: today's 02:30 local (00:30 UTC) has passed.
    assert latest_tick("30 2 * * *", PARIS, utc(2026, 7, 11, 0, 45)) == utc(2026, 7, 11, 0, 30)
    # 00:15 UTC is 02:15 CEST: today's has not, so yesterday's.
    assert latest_tick("30 2 * * *", PARIS, utc(2026, 7, 11, 0, 15)) == utc(2026, 7, 10, 0, 30)


def test_latest_tick_across_the_spring_change_is_the_gap_tick() -> None:
    assert latest_tick("30 2 * * *", PARIS, utc(2026, 3, 29, 0, 59)) == utc(2026, 3, 28, 1, 30)
    assert latest_tick("30 2 * * *", PARIS, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 1, 0)
    assert latest_tick("30 2 * * *", PARIS, utc(2026, 3, 29, 12)) == utc(2026, 3, 29, 1, 0)


def test_latest_tick_in_the_repeated_autumn_hour_is_the_tick_earlier_that_night() -> None:
    # 01:10 UTC is 02:10 CET, after the 02:30 CEST (00:30 UTC) tick of the same night.
    assert latest_tick("30 2 * * *", PARIS, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 0, 30)


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(utc(2026, 3, 28, 22), id="spring"),
        pytest.param(
            utc(2026, 10, 24, 22),
            id="autumn",
        ),
    ],
)
def test_latest_tick_and_next_tick_bracket_every_moment_across_dst_in_paris(
    start: datetime.datetime,
) -> None:
    cron = "*/20 * * * *"
    for minute in range(0, 6 * 60, 7):
        at = start + datetime.timedelta(minutes=minute, seconds=13)
        before, after = latest_tick(cron, PARIS, at), next_tick(cron, PARIS, at)
        assert before <= at < after
        assert after - before <= datetime.timedelta(minutes=20), (at, before, after)


def test_latest_tick_half_a_second_after_each_tick_is_that_tick_through_the_autumn_change() -> None:
    # What fire_due computes when a due tick fires on time: latest_tick(now) must be the tick,
    # or the job gets an older tick's scheduled_at, hits ON CONFLICT and is never enqueued.
    cron = "*/20 * * * *"
    tick = utc(2026, 10, 24, 23, 0)
    for _ in range(9):  # 23:00Z to 01:40Z, through the repeated hour
        tick = next_tick(cron, PARIS, tick)
        assert latest_tick(cron, PARIS, tick + datetime.timedelta(seconds=0.5)) == tick


def test_latest_tick_of_a_next_tick_is_that_tick() -> None:
    moment = utc(2026, 5, 4, 12, 0, 1)
    for cron, tz in (("* * * * *", "UTC"), ("15 4 * * 1", PARIS), ("0 0 1 * *", "Asia/Tokyo")):
        tick = next_tick(cron, tz, moment)
        assert latest_tick(cron, tz, tick) == tick


# --- ScheduleSpec ----------------------------------------------------------------------------


def test_schedule_spec_keeps_its_fields_and_defaults_to_utc() -> None:
    spec = ScheduleSpec(name="nightly", cron="0 3 * * *", job_type="report.build")

    assert (spec.name, spec.cron, spec.job_type) == ("nightly", "0 3 * * *", "report.build")
    assert spec.timezone == "UTC"
    assert spec.payload is None
    assert spec.queue is None


def test_schedule_spec_is_frozen() -> None:
    spec = ScheduleSpec(name="nightly", cron="0 3 * * *", job_type="report.build")

    with pytest.raises(AttributeError):
        spec.cron = "* * * * *"  # type: ignore[misc]


@pytest.mark.parametrize(
    "cron", ["* * *", "61 * * * *", "* 24 * * *", "* * * * * *", "", "not a cron", "* * 0 * *"]
)
def test_schedule_spec_with_an_invalid_cron_raises_invalid_cron_naming_it(cron: str) -> None:
    with pytest.raises(InvalidCron) as caught:
        ScheduleSpec(name="bad", cron=cron, job_type="tick")

    assert caught.value.name == "bad"
    assert caught.value.cron == cron
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 30 2 *",  # February 30th
        "0 0 31 2 *",
        "0 0 31 4 *",  # April has 30 days
        "15 10 31 4,6,9,11 *",
        "0 0 30-31 2 *",
        "0 0 30 2 ?",
        "0 0 31 2 1#5",  # '#' makes day-of-month and day-of-week an intersection
    ],
)
@pytest.mark.parametrize("timezone", ["UTC", PARIS])
def test_schedule_spec_with_a_cron_that_can_never_fire_raises_invalid_cron(
    cron: str, timezone: str
) -> None:
    with pytest.raises(InvalidCron) as caught:
        ScheduleSpec(name="feb30", cron=cron, job_type="tick", timezone=timezone)

    assert (caught.value.name, caught.value.cron) == ("feb30", cron)
    assert "never" in caught.value.reason
    assert "'feb30'" in str(caught.value)


@pytest.mark.parametrize(
    "cron",
    [
        "*/0 * * * *",
        "60 * * * *",
        "0-59/0 * * * *",
        "0 0 * * 8",
        "0 0 * 13 *",
        "0 0 * * MON#6",
        "0 0 * * 0L",
        "H * * * *",
        "a b c d e",
        "* * * * * * *",
        "@hourly",
        "   ",
        "\x00 * * * *",
    ],
)
def test_schedule_spec_with_input_croniter_refuses_raises_only_invalid_cron(cron: str) -> None:
    with pytest.raises(InvalidCron) as caught:
        ScheduleSpec(name="odd", cron=cron, job_type="tick")

    assert (caught.value.name, caught.value.cron) == ("odd", cron)
    assert caught.value.reason


@pytest.mark.parametrize("cron", [None, 5, ["*"] * 5])
def test_schedule_spec_with_a_cron_that_is_not_a_string_raises_invalid_cron(cron: object) -> None:
    with pytest.raises(InvalidCron):
        ScheduleSpec(name="odd", cron=cron, job_type="tick")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("0 0 29 2 *", utc(2097, 3, 1), utc(2104, 2, 29)),  # 2100 is not a leap year
        ("0 0 * 2 5#5", utc(2092, 3, 1), utc(2104, 2, 29)),  # a fifth Friday in February
        ("0 0 30 2 1", utc(2026, 1, 1), utc(2026, 2, 2)),  # day-of-week or day-of-month
        ("0 0 L 2 *", utc(2026, 1, 1), utc(2026, 2, 28)),
    ],
)
def test_schedule_spec_accepts_a_cron_that_fires_rarely_or_by_weekday(
    cron: str, after: datetime.datetime, expected: datetime.datetime
) -> None:
    spec = ScheduleSpec(name="rare", cron=cron, job_type="tick")

    assert next_tick(spec.cron, spec.timezone, after) == expected


def test_invalid_cron_without_a_schedule_name_says_so_plainly() -> None:
    error = InvalidCron(cron="0 0 30 2 *", reason="it can never fire")

    assert error.name is None
    assert str(error).startswith("invalid cron expression '0 0 30 2 *': it can never fire")


def test_next_tick_and_latest_tick_raise_invalid_cron_naming_the_schedule_they_are_given() -> None:
    moment = utc(2026, 5, 4)
    with pytest.raises(InvalidCron) as nexts:
        next_tick("0 0 30 2 *", "UTC", moment, name="feb30")
    with pytest.raises(InvalidCron) as latests:
        latest_tick("0 0 31 4 *", PARIS, moment, name="apr31")
    with pytest.raises(InvalidCron) as unparsable:
        next_tick("*/0 * * * *", "UTC", moment, name="zero")
    with pytest.raises(UnknownTimezone) as zone:
        next_tick("* * * * *", "Mars/Olympus", moment, name="mars")

    assert (nexts.value.name, nexts.value.cron) == ("feb30", "0 0 30 2 *")
    assert (latests.value.name, latests.value.cron) == ("apr31", "0 0 31 4 *")
    assert unparsable.value.name == "zero"
    assert zone.value.name == "mars"


def _field(low: int, high: int, *extra: str) -> st.SearchStrategy[str]:
    """Plausible values of one cron field: numbers, ranges, steps, lists and its specials."""
    number = st.integers(low, high).map(str)
    return st.one_of(
        st.sampled_from(["*", *extra]),
        number,
        st.tuples(number, number).map("-".join),
        st.tuples(st.sampled_from(["*", f"{low}-{high}", str(low)]), st.integers(1, 40)).map(
            lambda step: f"{step[0]}/{step[1]}"
        ),
        st.lists(number, min_size=2, max_size=3).map(",".join),
    )


_CRONS = st.one_of(
    st.tuples(
        _field(0, 59),
        _field(0, 23),
        _field(1, 31, "?", "L", "1W", "15W", "LW"),
        _field(1, 12, "FEB", "APR-JUN"),
        _field(0, 7, "?", "MON-FRI", "SUN", "5#5", "MON#2", "1#1"),
    ).map(" ".join),
    # anything: out-of-range numbers, zero steps, stray characters, wrong field counts
    st.lists(
        st.one_of(
            st.integers(-1, 99).map(str),
            st.text(alphabet="0123456789*/,-#LW?HMON ", max_size=6),
        ),
        min_size=4,
        max_size=7,
    ).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(
    cron=_CRONS,
    timezone=st.sampled_from(["UTC", PARIS, "America/New_York", "Australia/Lord_Howe"]),
    moment=st.datetimes(
        min_value=datetime.datetime(1990, 1, 1),
        max_value=datetime.datetime(2150, 1, 1),
        timezones=st.just(UTC),
    ),
)
def test_a_cron_the_spec_accepts_has_ticks_around_any_moment_and_others_raise_invalid_cron(
    cron: str, timezone: str, moment: datetime.datetime
) -> None:
    try:
        spec = ScheduleSpec(name="fuzz", cron=cron, job_type="tick", timezone=timezone)
    except InvalidCron as err:
        assert (err.name, err.cron) == ("fuzz", cron)
        return

    upcoming = next_tick(spec.cron, spec.timezone, moment)
    latest = latest_tick(spec.cron, spec.timezone, moment)
    assert latest <= moment < upcoming


def test_schedule_spec_with_a_blank_name_raises_invalid_cron() -> None:
    with pytest.raises(InvalidCron):
        ScheduleSpec(name="  ", cron="* * * * *", job_type="tick")


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "", "../etc/passwd", "UTC+99"])
def test_schedule_spec_with_an_unknown_timezone_raises_unknown_timezone(timezone: str) -> None:
    with pytest.raises(UnknownTimezone) as caught:
        ScheduleSpec(name="tz", cron="* * * * *", job_type="tick", timezone=timezone)

    assert caught.value.name == "tz"
    assert caught.value.timezone == timezone
    assert isinstance(caught.value, ValueError)


def test_schedule_spec_validates_its_job_options() -> None:
    with pytest.raises(BlankJobType):
        ScheduleSpec(name="s", cron="* * * * *", job_type=" ")
    with pytest.raises(PriorityOutOfRange):
        ScheduleSpec(name="s", cron="* * * * *", job_type="t", priority=1000)
    with pytest.raises(InvalidMaxAttempts):
        ScheduleSpec(name="s", cron="* * * * *", job_type="t", max_attempts=0)
    with pytest.raises(PayloadNotSerializable):
        ScheduleSpec(name="s", cron="* * * * *", job_type="t", payload={"when": object()})


def test_a_schedule_name_longer_than_the_limit_is_refused_at_definition() -> None:
    from runledger.core.job import MAX_NAME_BYTES
    from runledger.errors import TextTooLong

    with pytest.raises(TextTooLong) as raised:
        ScheduleSpec(name="n" * (MAX_NAME_BYTES + 1), cron="* * * * *", job_type="t")
    assert (raised.value.field, raised.value.limit) == ("schedule", MAX_NAME_BYTES)
    ScheduleSpec(name="n" * MAX_NAME_BYTES, cron="* * * * *", job_type="t")
