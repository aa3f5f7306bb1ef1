"""A held connection replans 1, 2, 4, ... seconds after it was taken, at most a minute apart."""

from __future__ import annotations

from runledger.postgres.held import ReplanSchedule


def due_times(schedule: ReplanSchedule, until: float, step: float = 0.25) -> list[float]:
    """The times, probed every ``step`` seconds from 0, at which a replan was due."""
    times = []
    for tick in range(int(until / step) + 1):
        if schedule.due(tick * step):
            times.append(tick * step)
    return times


def test_nothing_is_due_before_a_connection_is_taken() -> None:
    assert due_times(ReplanSchedule(), until=10) == []


def test_the_gaps_double_from_the_first() -> None:
    schedule = ReplanSchedule(first=1, longest=60)
    schedule.start(0)
    assert due_times(schedule, until=31) == [1, 3, 7, 15, 31]


def test_the_gaps_stop_growing_at_the_longest() -> None:
    schedule = ReplanSchedule(first=1, longest=4)
    schedule.start(0)
    assert due_times(schedule, until=20) == [1, 3, 7, 11, 15, 19]


def test_a_connection_taken_again_starts_with_the_first_gap() -> None:
    schedule = ReplanSchedule(first=1, longest=60)
    schedule.start(0)
    assert due_times(schedule, until=8) == [1, 3, 7]
    schedule.start(100)
    assert not schedule.due(100.5)
    assert schedule.due(101)
