"""The range each number, date and time of a package is held to: one table, for both sides. The
extractor holds every such field to it before anything leaves the practice (gpdpr.practice.rules),
and the centre refuses a package holding any value outside it (gpdpr.collect.numbers), so an
honest practice's package always passes and a rogue one, however properly signed, never does.

  a year of a coarsened date (birth, death)  EARLIEST_BIRTH's year .. the extract's year
  its month                                  1 .. 12
  imd_decile                                 a decile the postcode lookup holds
  appointments.duration_minutes              0 .. a day's minutes
  a table's own date (its `date`)            EARLIEST, or in a table kept for a retention period
                                             the period's first day, .. the extract's day; an
                                             appointment booked ahead (BOOKED_AHEAD) any day after
  a time the GP system stamps itself         EARLIEST .. the day after the extract's (CLOCK_SKEW)
    (last_modified, recorded_at, booked_at)
  registrations.end_date                     EARLIEST .. a year after the extract's day
                                             (PLANNED_END)
  any other date or time                     EARLIEST .. the extract's day
  float                                      finite (no NaN, no infinity)
  bool                                       true or false: nothing to hold

or null, for each. Days are UTC days, a time's by the day it falls on, as the extractor has
always compared them. An int field with no rule here is an error on both sides (the extractor
and the centre will not start): a range neither side knows would be none.

What the extractor does with a value outside: a table's own date quarantines its record as an
implausible date, or excludes it as older than the retention period, as it always has (a patient
whose date of birth is outside EARLIEST_BIRTH .. the extract's day is quarantined, so the birth
year is inside); any other value becomes null and is counted in the manifest's
replaced_outside_allowlist under its table.field (a year's month goes with it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.errors import UserError
from gpdpr.spec import Field, Specification, Table

EARLIEST = date(1900, 1, 2)  # 1900-01-01 is a common "date unknown" placeholder
# No one alive and registered was born before this: an earlier date of birth is a mistake.
EARLIEST_BIRTH = date(1880, 1, 1)
# The one kind of record that may be dated after the extract was taken: an appointment booked for
# the days ahead (table -> the status that lets its date be in the future).
BOOKED_AHEAD = {"appointments": "booked"}
# An appointment is held within one day: nothing a practice books lasts longer, and a count of
# minutes beyond it is a different number in the wrong field.
MINUTES_PER_DAY = 24 * 60
DURATION = ("appointments", "duration_minutes")
DECILE = "imd_decile"  # the postcode lookup's column of deprivation deciles
YEAR_AND_MONTH = "year and month"  # a coarsening the specification leaves as [year, month] fields
# Times the GP system stamps with its own clock, not the extractor's: a record changed, entered
# or booked in the minutes the extract ran can carry a time a little after the extract's, when
# the two clocks disagree or the extract's time is the start of a run that took hours. A day
# covers both; a time later than that is not skew but wrong.
STAMPED = frozenset({"last_modified", "recorded_at", "booked_at"})
CLOCK_SKEW = timedelta(days=1)
# A temporary resident is registered for a stay of up to three months, and GP systems export the
# planned end of it (FHIR EpisodeOfCare.period.end) before it comes; a year after the extract
# holds any such stay, even one extended. A later end is no plan but a mistake.
PLANNED_END = ("registrations", "end_date")
PLANNED_AHEAD = timedelta(days=366)
TYPES = ("int", "float", "date", "timestamp", "bool")  # the field types held here

# The ways out of a range (the centre names each in its published reasons).
BELOW, ABOVE, NOT_FINITE, NOT_IN = "below", "above", "not finite", "not in"


@dataclass(frozen=True)
class Rule:
    """What one field is held to: its kind (year, month, decile, minutes, date, timestamp,
    float, bool); for a date or time, how long after the extract's day it may be, whether it is
    its table's own date and from when (the retention period's first day, or EARLIEST), and the
    column and value that let a row be dated ahead without end (a booked appointment); for a
    year, its month; for a decile, the lookup's deciles."""

    kind: str
    after: timedelta = timedelta(0)
    own: bool = False
    retained: bool = False
    booked: tuple[str, str] | None = None
    month: str | None = None
    values: pa.Array | None = None

    def ends(self, extracted: date, retention_from: date) -> tuple[Any, Any] | None:
        """The lowest and highest value allowed, for an extract taken on the day `extracted`
        (a date, for a date or time); None for a kind that is not a range."""
        if self.kind == "year":
            return EARLIEST_BIRTH.year, extracted.year
        if self.kind == "month":
            return 1, 12
        if self.kind == "minutes":
            return 0, MINUTES_PER_DAY
        if self.kind in ("date", "timestamp"):
            return (retention_from if self.retained else EARLIEST), extracted + self.after
        return None


Ranges = dict[str, dict[str, Rule]]  # table -> field -> its rule


def ranges(spec: Specification, deciles: Iterable[int]) -> Ranges:
    """Every int, float, date, time and flag field of the specification and its rule, table by
    table (`deciles`: the postcode lookup's). UserError for an int field with no rule."""
    lookup = pa.array(sorted(set(deciles)), pa.int32())
    months = _months(spec)
    return {
        table.name: {
            f.name: _rule(spec, table, f, months, lookup) for f in table.fields if f.type in TYPES
        }
        for table in spec.tables.values()
    }


def _months(spec: Specification) -> dict[str, str | None]:
    """Year field -> its month field, and month field -> None, for the dates the specification
    coarsens to both."""
    names: dict[str, str | None] = {}
    for coarsening in spec.raw.get("coarsening", {}).values():
        if coarsening.get("leaves_as") == YEAR_AND_MONTH:
            year, month = coarsening["fields"]
            names |= {year: month, month: None}
    return names


def _rule(
    spec: Specification,
    table: Table,
    field: Field,
    months: dict[str, str | None],
    deciles: pa.Array,
) -> Rule:
    if field.type in ("float", "bool"):
        return Rule(field.type)
    if field.type in ("date", "timestamp"):
        if field.name == table.date:
            status = BOOKED_AHEAD.get(table.name)
            booked = ("status", status) if status is not None else None
            retained = table.name in spec.retention_tables
            return Rule(field.type, own=True, retained=retained, booked=booked)
        if (table.name, field.name) == PLANNED_END:
            return Rule(field.type, after=PLANNED_AHEAD)
        if field.name in STAMPED:
            return Rule(field.type, after=CLOCK_SKEW)
        return Rule(field.type)  # something that has happened by the time of the extract
    if field.name in months:
        month = months[field.name]
        return Rule("year", month=month) if month is not None else Rule("month")
    if field.name == DECILE:
        return Rule("decile", values=deciles)
    if (table.name, field.name) == DURATION:
        return Rule("minutes")
    raise UserError(
        f"gpdpr cannot check the {field.type} field {table.name}.{field.name}: it has no range "
        "for it; update gpdpr with the specification"
    )


def outside(
    values: pa.Array,
    rule: Rule,
    extracted: date,
    retention_from: date,
    beside: pa.Array | None = None,
) -> dict[str, pa.Array]:
    """The rows of `values` outside `rule`'s range for an extract taken on the day `extracted`,
    as a mask for each way out some row takes (none: all inside). `beside` is the column the
    rule's `booked` names, the same rows. A null is never outside. The minimum and maximum
    first: an honest column is done with them."""
    if rule.kind == "float":
        return _not_finite(values)
    if rule.kind == "decile" and rule.values is not None:
        return _not_in(values, rule.values)
    ends = rule.ends(extracted, retention_from)
    if ends is None:
        return {}
    low, high = _scalars(ends, values.type)
    least, most = (pc.min_max(values)[end] for end in ("min", "max"))
    masks = {}
    if least.is_valid and pc.less(least, low).as_py():
        masks[BELOW] = pc.fill_null(pc.less(values, low), False)
    if most.is_valid and pc.greater(most, high).as_py():
        above = pc.fill_null(pc.greater(values, high), False)
        if rule.booked is not None and beside is not None:
            allowed = pc.fill_null(pc.equal(beside, rule.booked[1]), False)
            above = pc.and_(above, pc.invert(allowed))
        masks[ABOVE] = above
    return {way: mask for way, mask in masks.items() if pc.any(mask).as_py()}


def _scalars(ends: tuple[Any, Any], kind: pa.DataType) -> tuple[pa.Scalar, pa.Scalar]:
    """The ends in the column's type: a time from the first moment of its first day to the
    last of its last (to the millisecond, the package's unit)."""
    low, high = ends
    if pa.types.is_timestamp(kind):
        tz = UTC if kind.tz is not None else None
        low = datetime.combine(low, time(), tz)
        high = datetime.combine(high, time(23, 59, 59, 999_000), tz)
    return pa.scalar(low, kind), pa.scalar(high, kind)


def _not_in(values: pa.Array, allowed: pa.Array) -> dict[str, pa.Array]:
    """Rows holding a value not among `allowed`: the column's distinct values first (a few)."""
    distinct = pc.drop_null(pc.unique(values))
    if pc.all(pc.is_in(distinct, value_set=allowed)).as_py() is not False:
        return {}
    return {NOT_IN: pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=allowed)))}


def _not_finite(values: pa.Array) -> dict[str, pa.Array]:
    """NaN is skipped by min_max, so it is looked for apart; an infinity shows as an end."""
    nan = pc.fill_null(pc.is_nan(values), False)
    least, most = (pc.min_max(values)[end].as_py() for end in ("min", "max"))
    if least is not None and (least == float("-inf") or most == float("inf")):
        nan = pc.or_(nan, pc.fill_null(pc.is_inf(values), False))
    return {NOT_FINITE: nan} if pc.any(nan).as_py() else {}
