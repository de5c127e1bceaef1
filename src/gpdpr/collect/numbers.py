"""The centre's own check of every number, date, time and flag a verified package carries, before
any of it is loaded (its text fields are gpdpr.collect.fields', its codes gpdpr.collect.codes').

A signature proves which practice made a package, not what its extractor put in it: a rogue or
faulty one, signing properly, could put a 10-digit number in a deprivation decile, a month 13, a
date in 1800 or years ahead, a NaN in a measurement, and it would land in the lake and could
reach a research output. The extractor never makes such values; the centre holds every field of
these types to a range of its own, from the specification and the extractor's own constants:

  year      (the year of a coarsened date of birth or death)  EARLIEST_BIRTH's year .. the year
            the package was extracted in
  month     (its month)                                       1 .. 12
  decile    (imd_decile, a column of the postcode lookup)     a decile the lookup holds
  minutes   (appointments.duration_minutes)                   0 .. a day's minutes
  date, timestamp                                             EARLIEST .. the day the package
            was extracted (UTC), the day as the extractor compares it; except an appointment
            booked ahead (BOOKED_AHEAD), which the extractor lets be dated after the extract;
            and the date of a table the specification keeps for a retention period (medicines,
            referrals, appointments) from the first day of that period, as the extractor's window
  float                                                       finite (no NaN, no infinity)
  bool                                                        true or false: nothing to check

or null, for each. A field of these types with no rule here cannot be judged, nor can a field of
a type no check of the centre's knows, so the centre will not start (an allowlist that passes
what it does not know is none).

Each chunk's minimum and maximum are compared first (and a float's NaNs counted): an honest
package costs one pass over each column, and rows are counted only in a chunk found outside. The
Parquet file's own statistics are not used: they are written by the practice, as the rows are.
A package with any value outside its range is refused whole (see gpdpr.collect.codes for why
whole). The reason names the table, column, number of rows and the kind of fault from a closed
set, never the value: the reason is published, and the value may be exactly what must not be.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.collect.verify import Package
from gpdpr.errors import UserError
from gpdpr.lake.store import read_parquet
from gpdpr.practice.package import PackageError
from gpdpr.practice.rules import (
    ARROW_TYPES,
    BOOKED_AHEAD,
    EARLIEST,
    EARLIEST_BIRTH,
    Geography,
    Window,
    window_for,
)
from gpdpr.spec import Field, Specification, Table

# The kinds of fault, a closed set (they are published).
BELOW = "below its field's range"
ABOVE = "above its field's range"
EARLY = f"dated before {EARLIEST.isoformat()}"
LATE = "dated after the day the package was extracted"
RETAINED = "dated before the specification's retention period"
NOT_FINITE = "that is not a finite number (NaN or infinite)"
NOT_DECILE = "not a deprivation decile of the postcode lookup"
FAULTS = (BELOW, ABOVE, EARLY, LATE, RETAINED, NOT_FINITE, NOT_DECILE)

# An appointment is held within one day: nothing a practice books lasts longer, and a count of
# minutes beyond it is a different number in the wrong field.
MINUTES_PER_DAY = 24 * 60
DURATION = ("appointments", "duration_minutes")
DECILE = "imd_decile"  # the postcode lookup's column of deprivation deciles (Geography's third)
YEAR_AND_MONTH = "year and month"  # a coarsening the specification leaves as [year, month] fields
JUDGED = ("int", "float", "date", "timestamp", "bool")
# The other field types, and the checks that judge them: a type in neither is judged by none.
JUDGED_ELSEWHERE = {"pseudonym": "fields", "string": "fields", "code": "codes"}


@dataclass(frozen=True)
class Range:
    """The values a column may hold, both ends inclusive, and what a value beyond each end is."""

    low: Any
    high: Any
    below: str = BELOW
    above: str = ABOVE


@dataclass(frozen=True)
class Held:
    """What one column is held to: a kind (see the module's docstring), the lookup's deciles for
    a decile, for a column that may be dated ahead the column and value that allow it, and
    whether it is the date of a table kept for a retention period."""

    kind: str
    values: pa.Array | None = None
    ahead: tuple[str, str] | None = None
    retained: bool = False

    def range(self, window: Window, kind: pa.DataType) -> Range | None:
        """The range for a package of the extract `window`, in the column's Arrow type."""
        extracted = window.extracted_at.date()
        first, before = (window.retention_from, RETAINED) if self.retained else (EARLIEST, EARLY)
        if self.kind == "year":
            return Range(EARLIEST_BIRTH.year, extracted.year)
        if self.kind == "month":
            return Range(1, 12)
        if self.kind == "minutes":
            return Range(0, MINUTES_PER_DAY)
        if self.kind == "date":
            return Range(first, extracted, before, LATE)
        if self.kind == "timestamp":
            start = datetime.combine(first, time(), UTC)
            last = datetime.combine(extracted, time(23, 59, 59, 999_000), UTC)
            return Range(pa.scalar(start, kind), pa.scalar(last, kind), before, LATE)
        return None  # float, decile, bool: not a range


@dataclass(frozen=True)
class CentreNumbers:
    """What the centre holds each number, date, time and flag column to, table by table."""

    tables: dict[str, dict[str, Held]]
    spec: Specification  # its retention period, for each package's window

    @classmethod
    def of(cls, spec: Specification) -> CentreNumbers:
        lookup = sorted({area[2] for area in Geography.load(spec).areas.values()})
        deciles = pa.array(lookup, ARROW_TYPES["int"])
        names = _year_and_month(spec)
        tables = {}
        for table in spec.tables.values():
            for field in table.fields:
                if field.type not in JUDGED and field.type not in JUDGED_ELSEWHERE:
                    raise UserError(
                        f"the centre cannot check {table.name}.{field.name} of type "
                        f"{field.type!r}: no check judges it; update the collector with the "
                        "specification"
                    )
            judged = [f for f in table.fields if f.type in JUDGED]
            tables[table.name] = {f.name: _held(spec, table, f, names, deciles) for f in judged}
        return cls(tables, spec)


def _year_and_month(spec: Specification) -> dict[str, str]:
    """Field name -> year or month, for the dates the specification coarsens to both."""
    kinds: dict[str, str] = {}
    for coarsening in spec.raw.get("coarsening", {}).values():
        if coarsening.get("leaves_as") == YEAR_AND_MONTH:
            year, month = coarsening["fields"]
            kinds |= {year: "year", month: "month"}
    return kinds


def _held(
    spec: Specification, table: Table, field: Field, names: dict[str, str], deciles: pa.Array
) -> Held:
    if field.type in ("float", "bool"):
        return Held(field.type)
    if field.type in ("date", "timestamp"):
        # The extractor lets only an appointment booked ahead be dated after the extract (its
        # `_implausible`), and only by the table's own date; every other date and time is of
        # something that has happened by the time the extract was taken.
        status = BOOKED_AHEAD.get(table.name)
        ahead = ("status", status) if status is not None and field.name == table.date else None
        # Nor older than the retention period, where the specification keeps one (its `RETENTION`).
        retained = table.name in spec.retention_tables and field.name == table.date
        return Held(field.type, ahead=ahead, retained=retained)
    if field.name in names:
        return Held(names[field.name])
    if field.name == DECILE:
        return Held("decile", deciles)
    if (table.name, field.name) == DURATION:
        return Held("minutes")
    raise UserError(
        f"the centre cannot check the {field.type} field {table.name}.{field.name}: it has no "
        "range for it; update the collector with the specification"
    )


def check_numbers(package: Package, centre: CentreNumbers) -> None:
    """PackageError naming every column of the package with a value outside its range."""
    # The extractor's own window for the package: the day it was taken, the retention cut-off.
    window = window_for(centre.spec, package.until.astimezone(UTC), None)
    found: list[str] = []
    for table, columns in centre.tables.items():
        found += _judge(package, table, columns, window)
    if found:
        raise PackageError(
            f"package {package.folder.name}: {'; '.join(found)}. A practice may not send them, "
            f"and nothing of the package was loaded. {package.practice} must correct its "
            "extractor and extract again"
        )


def _judge(package: Package, table: str, columns: dict[str, Held], window: Window) -> list[str]:
    judged = {name: held for name, held in columns.items() if held.kind != "bool"}
    if not judged:
        return []
    needed = {*judged, *(held.ahead[0] for held in judged.values() if held.ahead)}
    read = read_parquet(package.file(table), sorted(needed))
    found = []
    for column, held in judged.items():
        ahead = read[held.ahead[0]] if held.ahead else None
        faults = _outside(read[column], held, window, ahead)
        found += [
            f"{table}.{column} has {rows:,} row(s) with a value {fault}"
            for fault, rows in sorted(faults.items())
        ]
    return found


def _outside(
    values: pa.ChunkedArray, held: Held, window: Window, ahead: pa.ChunkedArray | None
) -> Counter[str]:
    """How many rows hold a value outside `held`, by fault. A null is never outside."""
    faults: Counter[str] = Counter()
    limits = held.range(window, values.type)
    start = 0
    for chunk in values.chunks:
        # The same rows of the column that may allow a date ahead (zero-copy).
        beside = ahead.slice(start, len(chunk)) if ahead is not None else None
        start += len(chunk)
        if held.kind == "float":
            faults[NOT_FINITE] += _not_finite(chunk)
        elif held.kind == "decile" and held.values is not None:
            faults[NOT_DECILE] += _not_in(chunk, held.values)
        elif limits is not None:
            faults.update(_beyond(chunk, limits, beside, held.ahead))
    return +faults  # only the faults found


def _beyond(
    chunk: pa.Array,
    limits: Range,
    beside: pa.ChunkedArray | None,
    ahead: tuple[str, str] | None,
) -> Counter[str]:
    """Rows below and above `limits`; a row whose `beside` holds the value `ahead` names (an
    appointment booked ahead) may be above. The chunk's minimum and maximum first: an honest
    chunk is done with them."""
    ends = pc.min_max(chunk)
    low, high = ends["min"], ends["max"]
    faults: Counter[str] = Counter()
    if low.is_valid and pc.less(low, limits.low).as_py():
        faults[limits.below] = _count(pc.less(chunk, limits.low))
    if high.is_valid and pc.greater(high, limits.high).as_py():
        above = pc.greater(chunk, limits.high)
        if beside is not None and ahead is not None:
            allowed = pc.fill_null(pc.equal(beside.combine_chunks(), ahead[1]), False)
            above = pc.and_kleene(above, pc.invert(allowed))
        faults[limits.above] = _count(above)
    return faults


def _not_in(chunk: pa.Array, values: pa.Array) -> int:
    """Rows holding a value not among `values`: its distinct values first (a few), the rows
    only if one is outside."""
    distinct = pc.drop_null(pc.unique(chunk))
    if pc.all(pc.is_in(distinct, value_set=values)).as_py() is not False:
        return 0
    return _count(pc.and_(pc.is_valid(chunk), pc.invert(pc.is_in(chunk, value_set=values))))


def _not_finite(chunk: pa.Array) -> int:
    """NaN is skipped by min_max, so it is counted apart; an infinity shows as an end."""
    ends = pc.min_max(chunk)
    nans = _count(pc.is_nan(chunk))
    low, high = ends["min"].as_py(), ends["max"].as_py()
    infinite = low is not None and (low == float("-inf") or high == float("inf"))
    return nans + (_count(pc.is_inf(chunk)) if infinite else 0)


def _count(mask: pa.Array) -> int:
    """Rows where `mask` is true (a null row is not counted: null is always allowed)."""
    return int(pc.sum(pc.fill_null(mask, False)).as_py() or 0)
