"""The lake's tables: one for each table of the specification, plus two of its own bookkeeping.

Every row carries its provenance: the practice it came from (the partition, so that a practice's
rows sit together and loading or correcting one practice rewrites only its own files), the package
that brought it and when that package's extract was taken (which decides, when packages arrive
out of order, which copy of a record is the newer).

Each table has a key that identifies a row within its practice: the record id for records, the
patient pseudonym for patients, the staff pseudonym for staff. A newer copy of a key replaces the
older one; a deletion removes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from gpdpr.practice.rules import package_schema
from gpdpr.spec import Specification

PRACTICE = "practice"
PACKAGE_ID = "package_id"
EXTRACTED_AT = "extracted_at"
INSTANT = pa.timestamp("us", tz="UTC")  # Delta Lake's timestamp

LEDGER = "_packages"  # every package loaded, so loading one twice changes nothing
TOMBSTONES = "_tombstones"  # every deletion, so a record deleted before it arrives stays deleted

LEDGER_SCHEMA = pa.schema(
    [
        (PACKAGE_ID, pa.string()),
        (PRACTICE, pa.string()),
        ("kind", pa.string()),
        ("since", INSTANT),
        (EXTRACTED_AT, INSTANT),
        ("specification_version", pa.string()),
        ("rows", pa.int64()),
        ("lake_version", pa.int64()),
    ]
)
TOMBSTONE_SCHEMA = pa.schema(
    [
        ("table", pa.string()),
        ("key", pa.string()),
        ("deleted_at", INSTANT),
        (PACKAGE_ID, pa.string()),
        (PRACTICE, pa.string()),
    ]
)


@dataclass(frozen=True)
class LakeTable:
    name: str
    data: pa.Schema  # the specification's fields, as a package carries them
    key: str
    patient: str | None  # the column naming the patient, if the table has one

    @property
    def schema(self) -> pa.Schema:
        """The Delta table's schema: the data, then provenance; the practice is the partition."""
        fields = [pa.field(f.name, _lake_type(f.type)) for f in self.data]
        fields += [pa.field(PACKAGE_ID, pa.string()), pa.field(EXTRACTED_AT, INSTANT)]
        return pa.schema([*fields, pa.field(PRACTICE, pa.string())])

    @property
    def file_schema(self) -> pa.Schema:
        """What a data file holds: everything but the partition column."""
        return pa.schema([f for f in self.schema if f.name != PRACTICE])

    @property
    def repetitive(self) -> list[str]:
        """Text columns worth a dictionary: all but the key, which is unique in a practice."""
        return [
            f.name for f in self.file_schema if pa.types.is_string(f.type) and f.name != self.key
        ]


def _lake_type(kind: pa.DataType) -> pa.DataType:
    return INSTANT if pa.types.is_timestamp(kind) else kind


def data_tables(spec: Specification) -> dict[str, LakeTable]:
    """The lake tables for a specification's tables, keyed by name."""
    tables: dict[str, LakeTable] = {}
    for name, table in spec.tables.items():
        schema = package_schema(table)
        if name == "patients":
            key, patient = "patient", "patient"
        elif name == "staff":
            key, patient = "staff", None
        else:
            key, patient = "record_id", "patient"
        tables[name] = LakeTable(name, schema, key, patient if patient in schema.names else None)
    return tables
