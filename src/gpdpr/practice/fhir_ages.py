"""Dates a FHIR resource gives only as the patient's age, a range of ages, or words.

`Condition.onset[x]`, `AllergyIntolerance.onset[x]` and `Procedure.performed[x]` may be an Age
("45 a"), a Range of ages or a string ("childhood"). A string is free text: it never leaves, and
no date is guessed from it. An age is turned into the month or year it falls in only where that
is honest: the span of days the age allows (from the patient's birth date, itself known to the
day, month or year) must lie within one calendar month or one calendar year, and the date is
then given at that precision, as the first day of it. Never to the day: the day of birth never
leaves the practice, and an age in days would give it back (an onset at "0 d" is the birth day).
Any other form (an age with a comparator, a unit that is not a UCUM unit of time, a span across
two years, a patient without a birth date) gives no date: the record is quarantined for it,
naming the element, and counted.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from gpdpr.terminology import UCUM_SYSTEM

# UCUM units of time an Age may be in: (whether it counts months or days, how many of them).
UNITS: dict[str, tuple[bool, float]] = {
    "a": (True, 12),
    "mo": (True, 1),
    "wk": (False, 7),
    "d": (False, 1),
    "h": (False, 1 / 24),
    "min": (False, 1 / 1440),
}
OLDEST = 150 * 12  # months: an age beyond this is not a person's


@dataclass(frozen=True, slots=True)
class Uncollected:
    """A date given in a form no date column can honestly hold; `path` names the element."""

    path: str


@dataclass(frozen=True, slots=True)
class AgeSpan:
    """An age, or a range of ages, as whole months or days after birth: from `low` (inclusive)
    to `high` (exclusive), widened, never narrowed, where the age was given more finely."""

    months: bool
    low: int
    high: int
    path: str


def _one(value: Any) -> tuple[bool, float, float] | None:
    """(months?, low, high) of one age, or None when it is not an age that can be used."""
    if type(value) is not dict or value.get("comparator") is not None:
        return None  # "<5 a" is a bound, not an age
    number = value.get("value")
    if not isinstance(number, int | float) or isinstance(number, bool):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    unit = value.get("code") if value.get("system") == UCUM_SYSTEM else None
    found = UNITS.get(unit) if type(unit) is str else None
    if found is None:
        return None  # a unit in words, or not one of time
    months, factor = found
    # "45 a" is any day from the 45th birthday to the day before the 46th.
    return months, number * factor, (number + 1) * factor


def age(value: Any, path: str) -> AgeSpan | Uncollected:
    """An Age element as the span it allows."""
    found = _one(value)
    if found is None:
        return Uncollected(path)
    months, low, high = found
    return _span(months, low, high, path)


def age_range(value: Any, path: str) -> AgeSpan | Uncollected:
    """A Range of ages; both ends are needed, in the same kind of unit (months or days)."""
    if type(value) is not dict:
        return Uncollected(path)
    low = _one(value.get("low"))
    high = _one(value.get("high"))
    if low is None or high is None or low[0] != high[0] or high[2] <= low[1]:
        return Uncollected(path)
    return _span(low[0], low[1], high[2], path)


def _span(months: bool, low: float, high: float, path: str) -> AgeSpan | Uncollected:
    if (high / (1 if months else 30.4)) > OLDEST:
        return Uncollected(path)
    return AgeSpan(months, math.floor(low), math.ceil(high), path)


def _birth_span(birth: Any) -> tuple[date, date] | None:
    """(first day, day after the last) the birth date given allows."""
    if type(birth) is not str:
        return None
    try:
        if len(birth) == 4:
            year = int(birth)
            return date(year, 1, 1), date(year + 1, 1, 1)
        if len(birth) == 7:
            first = date(int(birth[:4]), int(birth[5:7]), 1)
            return first, _add_months(first, 1)
        first = date.fromisoformat(birth[:10])
        return first, first + timedelta(days=1)
    except ValueError:
        return None


def _add_months(day: date, months: int) -> date:
    """The same day `months` later, or the month's last day where it has no such day."""
    year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last))


def _after(day: date, span: AgeSpan, amount: int) -> date:
    return _add_months(day, amount) if span.months else day + timedelta(days=amount)


def date_of(span: AgeSpan, birth: Any) -> str | Uncollected:
    """The month ("2015-06") or year ("2015") the span of ages falls in, given the patient's
    birth date as FHIR gives it, or Uncollected when it falls in no one month or year."""
    born = _birth_span(birth)
    if born is None:
        return Uncollected(span.path)
    try:
        first = _after(born[0], span, span.low)
        last = _after(born[1], span, span.high) - timedelta(days=1)
    except (ValueError, OverflowError):
        return Uncollected(span.path)
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.year:04d}-{first.month:02d}"
    if first.year == last.year:
        return f"{first.year:04d}"
    return Uncollected(span.path)
