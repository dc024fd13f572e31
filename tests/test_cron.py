"""The cron parser: fields, lists, ranges, steps, names, macros, the day rule, and
the next/last tick arithmetic (UTC), checked against a brute-force minute scan."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from plait.actors.cron import Cron


def ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def show(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M %a")


def test_fields_lists_ranges_steps_and_names() -> None:
    c = Cron.parse("*/15 9-17/4 1,15 jan-mar,DEC mon-fri")
    assert c.minutes == {0, 15, 30, 45}
    assert c.hours == {9, 13, 17}
    assert c.days == {1, 15}
    assert c.months == {1, 2, 3, 12}
    assert c.weekdays == {1, 2, 3, 4, 5}
    assert Cron.parse("5/20 * * * 7").minutes == {5, 25, 45}
    assert Cron.parse("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert Cron.parse("@hourly") == Cron.parse("@hourly")
    assert Cron.parse("@daily").minutes == {0}


@pytest.mark.parametrize("bad", [
    "", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *",
    "* * * * 8", "*/0 * * * *", "5-1 * * * *", "a * * * *", "1,,2 * * * *", "* * * foo *",
    "0 0 30 2 *", "0 0 31 4,6,9,11 *",
])
def test_bad_expressions_say_why(bad: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        Cron.parse(bad)


def test_next_and_last() -> None:
    every5 = Cron.parse("*/5 * * * *")
    assert show(every5.next_after(ts("2024-01-01 10:02"))) == "2024-01-01 10:05 Mon"
    assert show(every5.next_after(ts("2024-01-01 10:05"))) == "2024-01-01 10:10 Mon"
    assert show(every5.next_after(ts("2024-12-31 23:58"))) == "2025-01-01 00:00 Wed"
    assert show(every5.last_at_or_before(ts("2024-01-01 10:05"))) == "2024-01-01 10:05 Mon"
    assert show(every5.last_at_or_before(ts("2024-01-01 10:04") + 59)) == "2024-01-01 10:00 Mon"
    leap = Cron.parse("0 12 29 2 *")
    assert show(leap.next_after(ts("2021-03-01 00:00"))) == "2024-02-29 12:00 Thu"
    assert show(leap.last_at_or_before(ts("2024-02-29 11:59"))) == "2020-02-29 12:00 Sat"


def test_day_fields_or_when_both_restricted_and_when_one_is_a_star() -> None:
    either = Cron.parse("0 0 13 * fri")  # the 13th, or any Friday
    assert show(either.next_after(ts("2024-09-01 00:00"))) == "2024-09-06 00:00 Fri"
    assert show(either.next_after(ts("2024-09-10 00:00"))) == "2024-09-13 00:00 Fri"
    assert show(either.next_after(ts("2024-10-05 00:00"))) == "2024-10-11 00:00 Fri"
    assert show(either.next_after(ts("2024-10-11 00:00"))) == "2024-10-13 00:00 Sun"
    both = Cron.parse("0 0 */2 * fri")  # a starred step is a star: both must hold
    assert show(both.next_after(ts("2024-09-01 00:00"))) == "2024-09-13 00:00 Fri"


def brute_next(cron: Cron, t: float) -> float:
    m = (int(t) // 60 + 1) * 60
    while not cron.matches(m):
        m += 60
    return float(m)


def test_agrees_with_a_minute_by_minute_scan() -> None:
    rng = random.Random(7)
    exprs = ["*/7 * * * *", "0,30 3-5 * * *", "15 */6 1-3 * *", "0 0 * * sat,sun",
             "59 23 31 * *", "0 12 1 jan,jul *", "*/20 8-9 10-20 * mon"]
    for expr in exprs:
        cron = Cron.parse(expr)
        for _ in range(15):
            t = ts("2024-01-01 00:00") + rng.randrange(0, 400 * 86400) + rng.random()
            nxt = cron.next_after(t)
            if nxt - t < 62 * 86400:  # keep the scan short
                assert nxt == brute_next(cron, t), (expr, show(t))
            assert cron.matches(nxt)
            assert cron.last_at_or_before(nxt) == nxt
            assert cron.last_at_or_before(nxt - 1) < nxt
            assert cron.next_after(cron.last_at_or_before(t)) > t
