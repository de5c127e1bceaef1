"""The centre holds every number, date and time of a package to a range: a practice whose
extractor is rogue or faulty, signing its packages properly, still cannot put an NHS number in a
deprivation decile, a month 13, a birth in 1850 or 3000, a date in 1800 or after its extract, a
referral older than the specification keeps, a NaN or an infinity in a measurement, or a negative
appointment length in the lake."""

from __future__ import annotations

import re
import shutil
import struct
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from collecting import central, copies, one_verified, plant, reseal, verified
from conftest import Extracted
from extracting import Keys
from gpdpr.collect.numbers import (
    ABOVE,
    BELOW,
    EARLY,
    FAULTS,
    LATE,
    NOT_DECILE,
    NOT_FINITE,
    RETAINED,
    CentreNumbers,
    check_numbers,
)
from gpdpr.collect.service import REFUSED_NOTE, collect
from gpdpr.collect.verify import Package
from gpdpr.db.models import Event
from gpdpr.errors import UserError
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.practice.package import PackageError
from gpdpr.practice.ranges import (
    BOOKED_AHEAD,
    CLOCK_SKEW,
    EARLIEST,
    EARLIEST_BIRTH,
    MINUTES_PER_DAY,
    PLANNED_AHEAD,
)
from gpdpr.practice.rules import Geography
from gpdpr.spec import Field, shipped

NHS_NUMBER = 2095768434  # the shape of an NHS number (valid check digit), and an int32
UNTIL = datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC)  # the fixtures' extract time


@dataclass(frozen=True)
class Attack:
    """One rogue value in one column of one package, and the fault the centre must name."""

    table: str
    column: str
    value: object
    fault: str


ATTACKS = [
    Attack("patients", "imd_decile", NHS_NUMBER, NOT_DECILE),
    Attack("patients", "birth_month", 13, ABOVE),
    Attack("patients", "birth_year", 1850, BELOW),
    Attack("patients", "death_year", 3000, ABOVE),
    Attack("clinical_events", "effective_date", date(1800, 6, 15), EARLY),
    Attack("medications", "issue_date", UNTIL.date() + timedelta(days=3), LATE),
    Attack("clinical_events", "value", float("nan"), NOT_FINITE),
    Attack("medications", "quantity", float("-inf"), NOT_FINITE),
    Attack("appointments", "duration_minutes", -45, BELOW),
    Attack("allergies", "recorded_at", datetime(2031, 7, 1, 9, tzinfo=UTC), LATE),
    Attack("referrals", "referral_date", date(2010, 3, 1), RETAINED),  # kept 10 years only
]


def _attacked(packages: Path, into: Path, keys: Keys) -> tuple[list[Path], Path]:
    """One package per attack (the fixtures' six practices, round and round), and one honest."""
    names = sorted(p.name for p in packages.iterdir() if p.is_dir())
    chosen = [names[i % len(names)] for i in range(len(ATTACKS) + 1)]
    *rogues, honest = copies(packages, into, chosen)
    for package, attack in zip(rogues, ATTACKS, strict=True):
        plant(package, attack.table, attack.column, attack.value)
        reseal(package, keys, package.name[:6])
    return rogues, honest


def _digits(reason: str, package: Path) -> set[str]:
    """The numbers a reason holds, the package's folder name and practice code aside."""
    return set(re.findall(r"\d+", reason.replace(package.name, "").replace(package.name[:6], "")))


def _holds(path: Path, canary: int) -> bool:
    """Whether a file's bytes hold the canary as text or as a 4- or 8-byte number, or a Parquet
    file's numbers hold it (its pages are compressed)."""
    data = path.read_bytes()
    forms = (str(canary).encode(), struct.pack("<i", canary), struct.pack("<q", canary))
    if any(form in data for form in forms):
        return True
    if path.suffix != ".parquet":
        return False
    with pq.ParquetFile(path) as parquet:
        numbers = [f.name for f in parquet.schema_arrow if pa.types.is_integer(f.type)]
        read = parquet.read(columns=numbers)
    return any(pc.any(pc.equal(column, canary)).as_py() for column in read.columns)


def test_rogue_numbers_are_refused_whole_and_kept_nowhere_at_the_centre(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = central(tmp_path, keys)
    rogues, honest = _attacked(clean_columnar_packages.packages, tmp_path / "in", keys)

    result = collect(home, [*rogues, honest])

    reasons = {r.folder: r.reason for r in result.refused}
    assert set(reasons) == set(rogues), "each attack is refused, the honest package is not"
    for package, attack in zip(rogues, ATTACKS, strict=True):
        reason = reasons[package]
        assert f"{attack.table}.{attack.column} has 1 row(s) with a value {attack.fault}" in reason
        assert "nothing of the package was loaded" in reason
        # No row value: the only numbers a reason gives are the row count and EARLIEST.
        assert _digits(reason, package) <= {"1", *re.findall(r"\d+", EARLIEST.isoformat())}
        assert str(attack.value) not in reason
    for refused in result.refused:
        assert refused.moved_to is not None
        assert refused.reason in (refused.moved_to / REFUSED_NOTE).read_text()

    # Only the honest package is in the lake, whole.
    assert [r.practice for r in result.loaded] == [honest.name[:6]]
    assert result.loaded[0].rows["clinical_events"] > 0
    lake = Lake.open(home.lake_folder)
    con = connect(lake.snapshot())
    for table in lake.data:
        held = con.sql(f"select distinct practice from {table}").fetchall()
        assert held == [(honest.name[:6],)], table
    patients = con.sql("select max(imd_decile), max(birth_month) from patients").fetchall()
    assert patients == [(10, 12)]

    # The NHS number is nowhere the centre keeps things: lake, rejected/, its database, events.
    # (The packages given were the operator's, left where they were: the scan finds it there.)
    decile = next(p for p, a in zip(rogues, ATTACKS, strict=True) if a.column == "imd_decile")
    assert NHS_NUMBER in pq.read_table(decile / "patients.parquet")["imd_decile"].to_pylist()
    files = [p for p in home.home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == REFUSED_NOTE for p in files)
    for path in files:
        assert not _holds(path, NHS_NUMBER), path
    with home.engine().connect() as db:
        details = db.execute(sa.select(Event.kind, Event.details)).all()
    assert {kind for kind, _ in details} >= {"package.refused", "package.loaded"}
    published = orjson.dumps([d for _, d in details]) + orjson.dumps(list(reasons.values()))
    assert str(NHS_NUMBER).encode() not in published


@pytest.fixture(scope="module")
def centre() -> CentreNumbers:
    return CentreNumbers.of(shipped())


def test_every_number_and_date_of_an_honest_package_is_within_its_range(
    clean_columnar_packages: Extracted, keys: Keys, centre: CentreNumbers
) -> None:
    """What the practice's extractor writes passes as it is: nulls, and appointments booked
    for after the extract (the honest packages load in the test above too)."""
    packages = sorted(p for p in clean_columnar_packages.packages.iterdir() if p.is_dir())
    for folder in packages:
        package = verified(folder, keys)
        assert package.until == UNTIL, "the ranges these tests write out are the fixtures'"
        check_numbers(package, centre)
    people = pq.read_table(packages[0] / "patients.parquet")
    assert 0 < people["death_year"].null_count < len(people), "nulls pass"
    [(table, status)] = BOOKED_AHEAD.items()
    booked = pq.read_table(packages[0] / f"{table}.parquet").to_pylist()
    assert any(a["status"] == status and a["start"] > UNTIL for a in booked), "ahead passes"


@pytest.fixture(scope="module")
def one_package(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Package:
    return one_verified(clean_columnar_packages.packages, keys, tmp_path_factory.mktemp("nums"))


def _restored(package: Package) -> None:
    """Every table as the practice made it, whatever an earlier example planted (only the tables
    planted in are copied back: the property rewrites them many times)."""
    kept = package.folder.parent / "as_made"
    if not kept.exists():
        shutil.copytree(package.folder, kept)
    for table in _DIRTY:
        shutil.copy(kept / f"{table}.parquet", package.folder / f"{table}.parquet")
    _DIRTY.clear()


_DIRTY: set[str] = set()  # the tables of one_package planted in since it was last restored


def _planted(package: Package, table: str, column: str, value: object, rows: int = 1) -> None:
    _DIRTY.add(table)
    plant(package.folder, table, column, value, rows)


def _int_range(column: str) -> set[int] | range:
    """The values a column may hold, from the calendar, the extractor's constants and the
    shipped lookup: written out here apart from the check's own rules."""
    if column == "birth_month":
        return range(1, 13)
    if column == "birth_year":
        return range(EARLIEST_BIRTH.year, UNTIL.year + 1)
    if column == "duration_minutes":
        return range(0, MINUTES_PER_DAY + 1)
    return {area[2] for area in Geography.load(shipped()).areas.values()}


INTS = [
    ("patients", "birth_month"),
    ("patients", "birth_year"),
    ("patients", "imd_decile"),
    ("appointments", "duration_minutes"),
]


@settings(max_examples=40, derandomize=True, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.sampled_from(INTS))
@example(0, INTS[0])
@example(1, INTS[0])
@example(12, INTS[0])
@example(13, INTS[0])
@example(EARLIEST_BIRTH.year - 1, INTS[1])
@example(EARLIEST_BIRTH.year, INTS[1])
@example(UNTIL.year, INTS[1])
@example(UNTIL.year + 1, INTS[1])
@example(0, INTS[2])
@example(10, INTS[2])
@example(11, INTS[2])
@example(NHS_NUMBER, INTS[2])
@example(-1, INTS[3])
@example(MINUTES_PER_DAY, INTS[3])
@example(MINUTES_PER_DAY + 1, INTS[3])
def test_an_int_outside_its_range_is_refused_and_one_inside_passes(
    one_package: Package, centre: CentreNumbers, value: int, where: tuple[str, str]
) -> None:
    table, column = where
    _restored(one_package)
    _planted(one_package, table, column, value, rows=3)

    if value in _int_range(column):
        check_numbers(one_package, centre)
    else:
        with pytest.raises(PackageError) as refused:
            check_numbers(one_package, centre)
        reason = str(refused.value)
        assert re.search(
            rf"{table}\.{column} has 3 row\(s\) with a value ({'|'.join(FAULTS)})", reason
        )
        assert str(value) not in reason.replace(one_package.folder.name, "")


DAY = timedelta(days=1)
# The first day of the specification's retention period, written out apart from the check's own.
KEPT_FROM = UNTIL.date().replace(year=UNTIL.year - shipped().retention_years)
START_OF = datetime.combine(EARLIEST, time(), UTC)
END_OF = datetime.combine(UNTIL.date(), time(23, 59, 59), UTC)


@pytest.mark.parametrize(
    ("table", "column", "value", "fault"),
    [
        ("registrations", "start_date", EARLIEST, None),
        ("registrations", "end_date", EARLIEST - DAY, EARLY),
        ("registrations", "end_date", UNTIL.date(), None),
        ("registrations", "start_date", UNTIL.date() + DAY, LATE),
        ("patients", "last_modified", START_OF, None),
        ("patients", "last_modified", START_OF - timedelta(seconds=1), EARLY),
        ("registrations", "end_date", UNTIL.date() + PLANNED_AHEAD, None),  # a planned end
        ("registrations", "end_date", UNTIL.date() + PLANNED_AHEAD + DAY, LATE),
        ("appointments", "booked_at", END_OF + CLOCK_SKEW, None),  # the GP system's clock
        ("appointments", "booked_at", END_OF + CLOCK_SKEW + timedelta(seconds=1), LATE),
        ("patients", "last_modified", END_OF + CLOCK_SKEW + timedelta(seconds=1), LATE),
        ("patients", "birth_month", None, None),  # null is always allowed
        ("medications", "issue_date", KEPT_FROM, None),
        ("medications", "issue_date", KEPT_FROM - DAY, RETAINED),
        ("appointments", "start", datetime.combine(KEPT_FROM, time(), UTC), None),
        ("appointments", "start", datetime.combine(KEPT_FROM, time(), UTC) - DAY / 24, RETAINED),
        ("clinical_events", "effective_date", KEPT_FROM - DAY, None),  # kept for the whole record
        ("clinical_events", "value", float("inf"), NOT_FINITE),
        ("clinical_events", "value", -1e308, None),  # a number, however odd
    ],
)
def test_each_end_of_a_range_is_where_the_extractor_puts_it(
    one_package: Package,
    centre: CentreNumbers,
    table: str,
    column: str,
    value: object,
    fault: str | None,
) -> None:
    """Dates from EARLIEST (or the retention period's first day, in a table kept for one) to
    the day of the extract (UTC) as the extractor compares them, a time by its day; not a day
    (an hour) either side. A time the GP system stamps may be a day later (its clock), a
    registration's planned end a year later."""
    _restored(one_package)
    _planted(one_package, table, column, value)
    if fault is None:
        check_numbers(one_package, centre)
    else:
        with pytest.raises(
            PackageError, match=rf"{table}\.{column} has 1 row\(s\) .* {re.escape(fault)}"
        ):
            check_numbers(one_package, centre)


@pytest.mark.parametrize("status", ["booked", "fulfilled", None])
def test_only_an_appointment_booked_ahead_may_start_after_the_extract(
    one_package: Package, centre: CentreNumbers, status: str | None
) -> None:
    """As the extractor's `_implausible` allows: the table's date, booked, and nothing else."""
    _restored(one_package)
    _planted(one_package, "appointments", "start", UNTIL + timedelta(days=700), rows=2)
    _planted(one_package, "appointments", "status", status, rows=2)
    if status == "booked":
        check_numbers(one_package, centre)
    else:
        with pytest.raises(PackageError, match=rf"appointments\.start has 2 row\(s\) .* {LATE}"):
            check_numbers(one_package, centre)


def test_a_number_or_date_field_the_centre_has_no_range_for_stops_it_before_any_package() -> None:
    """An allowlist that passed what it does not know would be none."""
    spec = shipped()
    patients = spec.tables["patients"]
    odd = Field("household_size", "int", "a number the centre has no range for")
    changed = replace(patients, fields=(*patients.fields, odd))
    with pytest.raises(UserError, match=r"cannot check the int field patients\.household_size"):
        CentreNumbers.of(replace(spec, tables={**spec.tables, "patients": changed}))
    novel = Field("weight", "decimal", "a type no check of the centre's judges")
    changed = replace(patients, fields=(*patients.fields, novel))
    with pytest.raises(UserError, match=r"cannot check patients\.weight of type 'decimal'"):
        CentreNumbers.of(replace(spec, tables={**spec.tables, "patients": changed}))
