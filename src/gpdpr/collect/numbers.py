"""The centre's own check of every number, date, time and flag a verified package carries, before
any of it is loaded (its text fields are gpdpr.collect.fields', its codes gpdpr.collect.codes').

A signature proves which practice made a package, not what its extractor put in it: a rogue or
faulty one, signing properly, could put a 10-digit number in a deprivation decile, a month 13, a
date in 1800 or years ahead, a NaN in a measurement, and it would land in the lake and could
reach a research output. The centre holds every field of these types to the range the extractor
holds it to, from the one table both sides use (gpdpr.practice.ranges: years, months, deciles,
appointment minutes, dates from EARLIEST or the retention period's first day to the extract's
day, a day later for a time the GP system stamps, a year later for a registration's planned end,
any day ahead for an appointment booked; finite floats), so an honest package always passes and
a value outside is the extractor's doing, never the source's.

A field of these types with no rule there cannot be judged, nor can a field of a type no check
of the centre's knows, so the centre will not start (an allowlist that passes what it does not
know is none).

Each chunk's minimum and maximum are compared first (and a float's NaNs looked for): an honest
package costs one pass over each column, and rows are counted only in a chunk found outside. The
Parquet file's own statistics are not used: they are written by the practice, as the rows are.
A package with any value outside its range is refused whole (see gpdpr.collect.codes for why
whole). The reason names the table, column, number of rows and the kind of fault from a closed
set, never the value: the reason is published, and the value may be exactly what must not be.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC

import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.collect.verify import Package
from gpdpr.errors import UserError
from gpdpr.lake.store import read_parquet
from gpdpr.practice import ranges as held
from gpdpr.practice.package import PackageError
from gpdpr.practice.ranges import EARLIEST, TYPES, Ranges, Rule, ranges
from gpdpr.practice.rules import Geography, Window, window_for
from gpdpr.spec import Specification

# The kinds of fault, a closed set (they are published).
BELOW = "below its field's range"
ABOVE = "above its field's range"
EARLY = f"dated before {EARLIEST.isoformat()}"
LATE = "dated after the last day its field allows"  # the extract's day, or a margin after it
RETAINED = "dated before the specification's retention period"
NOT_FINITE = "that is not a finite number (NaN or infinite)"
NOT_DECILE = "not a deprivation decile of the postcode lookup"
FAULTS = (BELOW, ABOVE, EARLY, LATE, RETAINED, NOT_FINITE, NOT_DECILE)
# The other field types, and the checks that judge them: a type in neither is judged by none.
JUDGED_ELSEWHERE = {"pseudonym": "fields", "string": "fields", "code": "codes"}


@dataclass(frozen=True)
class CentreNumbers:
    """What the centre holds each number, date, time and flag column to, table by table: the
    extractor's own rules (gpdpr.practice.ranges)."""

    tables: Ranges
    spec: Specification  # its retention period, for each package's window

    @classmethod
    def of(cls, spec: Specification) -> CentreNumbers:
        for table in spec.tables.values():
            for field in table.fields:
                if field.type not in TYPES and field.type not in JUDGED_ELSEWHERE:
                    raise UserError(
                        f"the centre cannot check {table.name}.{field.name} of type "
                        f"{field.type!r}: no check judges it; update the collector with the "
                        "specification"
                    )
        return cls(ranges(spec, Geography.load(spec).deciles), spec)


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


def _judge(package: Package, table: str, columns: dict[str, Rule], window: Window) -> list[str]:
    judged = {name: rule for name, rule in columns.items() if rule.kind != "bool"}
    if not judged:
        return []
    needed = {*judged, *(rule.booked[0] for rule in judged.values() if rule.booked)}
    read = read_parquet(package.file(table), sorted(needed))
    found = []
    for column, rule in judged.items():
        beside = read[rule.booked[0]] if rule.booked else None
        faults = _outside(read[column], rule, window, beside)
        found += [
            f"{table}.{column} has {rows:,} row(s) with a value {fault}"
            for fault, rows in sorted(faults.items())
        ]
    return found


def _outside(
    values: pa.ChunkedArray, rule: Rule, window: Window, beside: pa.ChunkedArray | None
) -> Counter[str]:
    """How many rows hold a value outside `rule`, by fault. A null is never outside."""
    faults: Counter[str] = Counter()
    names = _faults(rule)
    extracted = window.extracted_at.date()
    start = 0
    for chunk in values.chunks:
        # The same rows of the column that may allow a date ahead.
        rows = beside.slice(start, len(chunk)).combine_chunks() if beside is not None else None
        start += len(chunk)
        for way, mask in held.outside(chunk, rule, extracted, window.retention_from, rows).items():
            faults[names[way]] += _count(mask)
    return +faults  # only the faults found


def _faults(rule: Rule) -> dict[str, str]:
    """The published name of each way out of `rule`'s range."""
    dated = rule.kind in ("date", "timestamp")
    return {
        held.BELOW: (RETAINED if rule.retained else EARLY) if dated else BELOW,
        held.ABOVE: LATE if dated else ABOVE,
        held.NOT_FINITE: NOT_FINITE,
        held.NOT_IN: NOT_DECILE,
    }


def _count(mask: pa.Array) -> int:
    """Rows where `mask` is true (a null row is not counted: null is always allowed)."""
    return int(pc.sum(pc.fill_null(mask, False)).as_py() or 0)
