"""An honest practice whose source holds messy numbers and dates is collected, not refused: the
extractor holds every field to the range the centre holds it to (gpdpr.practice.ranges). A value
outside leaves as null, counted in the manifest and the practice's report; a registration's
planned end a few weeks ahead and a time the GP system stamped a few hours after the extract (its
clock) leave as they are."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from collecting import central
from conftest import one_practice
from extracting import Keys, patient_pseudonym, record_pseudonyms
from extracting import run as run_extract
from gpdpr.collect.service import collect
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.practice.report import render
from readers import practice_folders

UNTIL = datetime(2026, 10, 31, 23, 59, 59)  # the synthetic practice's extract time (UTC)
IDS = {  # each table's record id column in the supplier's columnar extract
    "patients": "patient_id",
    "registrations": "registration_id",
    "clinical_events": "event_id",
    "medications": "issue_id",
    "allergies": "allergy_id",
    "appointments": "appointment_id",
}
# What the source holds, by table: (a field, a value, whether it is legitimate as it is).
MESS: dict[str, list[tuple[str, object, bool]]] = {
    "patients": [
        ("last_modified", UNTIL + timedelta(hours=5), True),  # the GP system's clock, ahead
        ("date_of_death", date(UNTIL.year + 1, 3, 1), False),  # a death year after the extract
        ("last_modified", UNTIL + timedelta(days=3), False),
    ],
    "registrations": [
        ("end_date", UNTIL.date() + timedelta(days=60), True),  # a temporary resident's plan
        ("end_date", UNTIL.date().replace(year=UNTIL.year + 3), False),
    ],
    "clinical_events": [
        ("value", float("nan"), False),
        ("recorded_at", UNTIL + timedelta(hours=4), True),
    ],
    "medications": [("quantity", float("inf"), False)],
    "allergies": [("recorded_at", UNTIL + timedelta(days=10), False)],
    "appointments": [
        ("duration_minutes", 2_000, False),
        ("booked_at", UNTIL + timedelta(hours=2), True),
    ],
}
FIELDS = {("patients", "date_of_death"): "death_year"}  # a source field -> the field it leaves as


def _sent(package: Path, table: str) -> set[str]:
    """The keys of the rows a package sent of `table`: record pseudonyms, or patients'."""
    key = "patient" if table == "patients" else "record_id"
    return set(pq.read_table(package / f"{table}.parquet", columns=[key])[key].to_pylist())


def _key(keys: Keys, ods: str, table: str, row: dict[str, Any]) -> str:
    """The key a source row leaves under, by the documented methods."""
    if table == "patients":
        return patient_pseudonym(keys, str(row["nhs_number"]))
    [pseudonym] = record_pseudonyms(keys, ods, table, [row[IDS[table]]])
    return pseudonym


def _planted(
    practice: Path, into: Path, clean: Path, keys: Keys
) -> dict[tuple[str, str, bool], tuple[str, object]]:
    """A copy of the practice with MESS planted, each value in a row of its own that the clean
    extract sent. (table, field, legitimate) -> (the row's key, the value)."""
    shutil.copytree(practice, into)
    planted = {}
    for table, mess in MESS.items():
        path = into / f"{table}.parquet"
        source = pq.read_table(path)
        rows = source.to_pylist()
        sent = _sent(clean, table)
        chosen = (r for r in rows if _key(keys, practice.name, table, r) in sent)
        for (column, value, legitimate), row in zip(mess, chosen, strict=False):
            row[column] = value
            planted[(table, column, legitimate)] = (_key(keys, practice.name, table, row), value)
        pq.write_table(pa.Table.from_pylist(rows, schema=source.schema), path)
    return planted


def test_an_honest_practice_with_messy_numbers_and_dates_is_collected_not_refused(
    keys: Keys, tmp_path: Path
) -> None:
    [practice] = practice_folders(one_practice(tmp_path, 300, 23).root)
    for folder in ("clean", "packages"):
        (tmp_path / folder).mkdir()
    clean = tmp_path / "clean" / practice.name
    before = run_extract(practice, clean, keys)
    planted = _planted(practice, tmp_path / "messy" / practice.name, clean, keys)
    assert len(planted) == sum(len(m) for m in MESS.values())
    package = tmp_path / "packages" / practice.name
    manifest = run_extract(tmp_path / "messy" / practice.name, package, keys)

    # Nothing more was held back than before; each value outside was counted where it was.
    assert manifest["tables"] == before["tables"]
    assert manifest["quarantined"] == before["quarantined"]
    outside = {
        f"{t}.{FIELDS.get((t, f), f)}": 1 for (t, f, legitimate) in planted if not legitimate
    }
    assert manifest["replaced_outside_allowlist"] == before["replaced_outside_allowlist"] | outside

    console = Console(record=True, width=200)
    render(manifest, package, console)
    told = console.export_text()
    for name, count in outside.items():
        assert f"sent as other or null: {name}, {count:,}." in told

    home = central(tmp_path, keys)
    result = collect(home, [package])
    assert result.refused == []
    assert [loaded.practice for loaded in result.loaded] == [practice.name]

    con = connect(Lake.open(home.lake_folder).snapshot())
    for (table, column, legitimate), (key, value) in planted.items():
        by = "patient" if table == "patients" else "record_id"
        if (table, column) in FIELDS:
            [(year, month)] = con.execute(
                "select death_year, death_month from patients where patient = ?", [key]
            ).fetchall()
            assert (year, month) == (None, None), "a death year after the extract, and its month"
            continue
        [(held,)] = con.execute(f"select {column} from {table} where {by} = ?", [key]).fetchall()
        if legitimate:
            assert _same(held, value), (table, column, held, value)
        else:
            assert held is None, (table, column, held)


def _same(held: object, value: object) -> bool:
    """A date or time as the lake holds it (a time in UTC) and as the source gave it."""
    if isinstance(held, datetime) and isinstance(value, datetime):
        return held.astimezone(UTC).replace(tzinfo=None) == value
    return held == value
