"""What a reader hands the extractor: a practice's records in canonical tables, whatever format
they came in.

Readers read only what the specification could need. Free text, names, addresses and contact
details are never read into these tables at all; the patients reader reads the NHS number, date of
birth and postcode only because they are turned into pseudonyms and coarse values at once.

Every batch carries, beside its canonical columns:
- `_row`: where the record is in its source file (line number in NDJSON, 1-based row in Parquet),
  for the quarantine file;
- `_key`: an int64 that is equal for equal record ids within this run (the id itself for a
  supplier's integer ids, a hash of it for FHIR ids), used to find duplicate ids without keeping
  the ids themselves in memory;
- `_bad_date`: true when a date or time in the record could not be read.
`patient_ref` and `staff_ref` are the source's own local ids, of whatever type the reader has (the
same type in the patients and staff tables as in the records).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import pyarrow as pa

DATE = pa.date32()
TIME = pa.timestamp("s")  # UTC, to the second

# The canonical columns of each record table, beyond record_id, patient_ref and staff_ref.
RECORD_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "registrations": {
        "start_date": DATE,
        "end_date": DATE,
        "registration_type": pa.string(),
        "end_reason": pa.string(),
        "status": pa.string(),
        "last_modified": TIME,
    },
    "clinical_events": {
        "category": pa.string(),
        "code": pa.string(),
        "effective_date": DATE,
        "recorded_at": TIME,
        "value": pa.float64(),
        "unit": pa.string(),
        "status": pa.string(),
        "last_modified": TIME,
    },
    "medications": {
        "code": pa.string(),
        "issue_date": DATE,
        "quantity": pa.float64(),
        "quantity_unit": pa.string(),
        "course": pa.string(),
        "source": pa.string(),
        "status": pa.string(),
        "last_modified": TIME,
    },
    "immunisations": {
        "procedure_code": pa.string(),
        "vaccine_code": pa.string(),
        "date": DATE,
        "status": pa.string(),
        "last_modified": TIME,
    },
    "allergies": {
        "code": pa.string(),
        "onset_date": DATE,
        "recorded_at": TIME,
        "status": pa.string(),
        "last_modified": TIME,
    },
    "appointments": {
        "start": TIME,
        "duration_minutes": pa.int32(),
        "mode": pa.string(),
        "status": pa.string(),
        "booked_at": TIME,
        "last_modified": TIME,
    },
    "referrals": {
        "code": pa.string(),
        "referral_date": DATE,
        "priority": pa.string(),
        "status": pa.string(),
        "last_modified": TIME,
    },
}
RECORD_TABLES = list(RECORD_COLUMNS)

# Which terminology each coded column is drawn from.
CODE_SYSTEMS = {
    ("clinical_events", "code"): "snomed",
    ("medications", "code"): "dmd",
    ("immunisations", "procedure_code"): "snomed",
    ("immunisations", "vaccine_code"): "dmd",
    ("allergies", "code"): "snomed",
    ("referrals", "code"): "snomed",
}

# Patients: the canonical columns (identifying ones are consumed by the extractor, never written).
PATIENT_COLUMNS: dict[str, pa.DataType] = {
    "nhs_number": pa.string(),
    "date_of_birth": DATE,
    "sex": pa.string(),
    "date_of_death": DATE,
    "postcode": pa.string(),
    "last_modified": TIME,
}


def utc_naive(value: datetime) -> datetime:
    """A time as naive UTC, the form every table here uses."""
    offset = value.utcoffset()
    return value if offset is None else value.replace(tzinfo=None) - offset


@dataclass
class Batch:
    """Rows of one canonical table from one source file."""

    table: pa.Table
    source: str  # the file name, for the quarantine file
    kind: str | None = None  # the FHIR resource type, for the quarantine file


@dataclass
class Staff:
    refs: list[object]
    sds_user_ids: list[str | None]
    roles: list[str | None]


@dataclass
class ReaderFault:
    """A line or row the reader could not turn into a record at all."""

    source: str
    position: int
    record_id: str | None
    reason: str  # one of a closed set: it is counted in the manifest
    resource_type: str | None = None
    path: str | None = None  # the FHIR element at fault


@dataclass
class Practice:
    ods_code: str
    format: str  # fhir | columnar
    extracted_at: datetime  # when the supplier took the extract (the end of the window)
    not_read: dict[str, int] = field(default_factory=dict)  # never-collected files -> items


class Reader(Protocol):
    practice: Practice

    def staff(self) -> Staff: ...

    def patients(self) -> Iterator[Batch]: ...

    def opt_out_events(self, codes: set[str]) -> pa.Table:
        """Clinical entries with one of `codes`, all of them: patient_ref, code, effective_date,
        recorded_at, status, last_modified, _bad_date."""
        ...

    def records(self, table: str) -> Iterator[Batch]: ...

    def faults(self) -> list[ReaderFault]:
        """Faults found since the last call (lines that were not records at all)."""
        ...

    def close(self) -> None:
        """Remove anything the reader put aside while reading (e.g. a streamed Bundle's spill)."""
        ...
