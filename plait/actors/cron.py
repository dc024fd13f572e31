"""Five-field cron expressions, in UTC: when a schedule's ticks fall.

``minute hour day-of-month month day-of-week``; each field is ``*`` or a
comma-separated list of items, an item being a number, a range ``a-b``, or
either (or ``*``) with a step ``/n``. Months and weekdays may be named
(``jan``..``dec``, ``sun``..``sat``; weekday 0 and 7 are both Sunday). The
macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily``
(``@midnight``) and ``@hourly`` stand for their usual expansions.

As in Vixie cron, when both day fields are restricted (neither starts with
``*``) a day matches if *either* matches; otherwise both must. Ticks are whole
minutes of UTC, so a schedule means the same on every machine.

Pure functions of time: :meth:`Cron.next_after` and :meth:`Cron.last_at_or_before`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Cron"]

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (low, high, names) per field; weekday 7 is folded onto 0 after parsing
FIELDS: tuple[tuple[int, int, dict[str, int]], ...] = (
    (0, 59, {}), (0, 23, {}), (1, 31, {}), (1, 12, MONTHS), (0, 7, DAYS))
HORIZON_DAYS = 366 * 28  # the calendar repeats every 28 years: no tick by then means never
MINUTE = timedelta(minutes=1)


def _value(text: str, low: int, high: int, names: dict[str, int]) -> int:
    value = names.get(text.lower())
    if value is None:
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a number or a name")
        value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high}")
    return value


def _item(item: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    body, _, step_text = item.partition("/")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"bad step in {item!r}")
        step = int(step_text)
    if body == "*":
        first, last = low, high
    elif "-" in body:
        a, _, b = body.partition("-")
        first, last = _value(a, low, high, names), _value(b, low, high, names)
        if first > last:
            raise ValueError(f"empty range {body!r}")
    else:
        first = _value(body, low, high, names)
        last = high if step_text else first  # "5/15" means 5, 20, 35, 50
    return set(range(first, last + 1, step))


def _field(text: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"empty item in {text!r}")
        values |= _item(item, low, high, names)
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed expression; ``Cron.parse("*/5 * * * *")``."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_star: bool
    weekday_star: bool

    @classmethod
    def parse(cls, expr: str) -> Cron:
        """Parse ``expr``; ``ValueError`` says what is wrong, or that it never fires."""
        text = MACROS.get(expr.strip().lower(), expr)
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"cron {expr!r}: expected 5 fields, got {len(parts)}")
        try:
            sets = [_field(p, lo, hi, names) for p, (lo, hi, names) in zip(parts, FIELDS,
                                                                             strict=True)]
        except ValueError as exc:
            raise ValueError(f"cron {expr!r}: {exc}") from None
        weekdays = frozenset(d % 7 for d in sets[4])
        cron = cls(expr, sets[0], sets[1], sets[2], sets[3], weekdays,
                   parts[2].startswith("*"), parts[4].startswith("*"))
        cron.next_after(0.0)  # raises if no day ever matches (say, "0 0 30 2 *")
        return cron

    def _day_ok(self, dt: datetime) -> bool:
        day = dt.day in self.days
        weekday = (dt.weekday() + 1) % 7 in self.weekdays  # Python's Monday is 0
        if self.day_star or self.weekday_star:
            return day and weekday
        return day or weekday

    def matches(self, t: float) -> bool:
        """Whether the minute holding ``t`` is a tick."""
        dt = datetime.fromtimestamp(t, UTC)
        return (dt.minute in self.minutes and dt.hour in self.hours
                and dt.month in self.months and self._day_ok(dt))

    def next_after(self, t: float) -> float:
        """The first tick strictly after ``t`` (seconds since the epoch)."""
        dt = datetime.fromtimestamp(t, UTC).replace(second=0, microsecond=0) + MINUTE
        limit = dt + timedelta(days=HORIZON_DAYS)
        while dt <= limit:
            if dt.month not in self.months:
                dt = (dt.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_ok(dt):
                dt = dt.replace(hour=0, minute=0) + timedelta(days=1)
            elif dt.hour not in self.hours:
                dt = dt.replace(minute=0) + timedelta(hours=1)
            else:
                later = [m for m in self.minutes if m >= dt.minute]
                if later:
                    return dt.replace(minute=min(later)).timestamp()
                dt = dt.replace(minute=0) + timedelta(hours=1)
        raise ValueError(f"cron {self.expr!r} never fires")

    def last_at_or_before(self, t: float) -> float:
        """The latest tick at or before ``t``."""
        dt = datetime.fromtimestamp(t, UTC).replace(second=0, microsecond=0)
        limit = dt - timedelta(days=HORIZON_DAYS)
        while dt >= limit:
            if dt.month not in self.months:
                dt = dt.replace(day=1, hour=0, minute=0) - MINUTE
            elif not self._day_ok(dt):
                dt = dt.replace(hour=0, minute=0) - MINUTE
            elif dt.hour not in self.hours:
                dt = dt.replace(minute=0) - MINUTE
            else:
                earlier = [m for m in self.minutes if m <= dt.minute]
                if earlier:
                    return dt.replace(minute=max(earlier)).timestamp()
                dt = dt.replace(minute=0) - MINUTE
        raise ValueError(f"cron {self.expr!r} never fired")
