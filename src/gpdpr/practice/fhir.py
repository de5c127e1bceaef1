"""Reads a practice's FHIR R4 NDJSON export (Bulk Data layout) into canonical batches.

Streaming: each file is read a line at a time and turned into columns a few thousand resources at
a time, so memory does not grow with the size of the practice's record. Each line is parsed with
orjson and only the elements the specification uses are picked out; narrative, notes, names,
addresses and telecoms are never copied. Dates are checked and converted a batch at a time.

Lines that are not records at all (bad JSON, a resource of another or unknown type) are reported
as faults with their file and line number, never their content.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.errors import UserError
from gpdpr.practice.source import (
    DATE,
    PATIENT_COLUMNS,
    RECORD_COLUMNS,
    TIME,
    Batch,
    Practice,
    ReaderFault,
    Staff,
    utc_naive,
)
from gpdpr.terminology import (
    DMD_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    REGISTRATION_END_EXT,
    SDS_USER_SYSTEM,
    SNOMED_SYSTEM,
    VACCINATION_PROCEDURE_EXT,
)

MANIFEST = "export.json"
BATCH_LINES = 20_000
# Which canonical table each resource type fills.
TABLE_OF = {
    "EpisodeOfCare": "registrations",
    "Condition": "clinical_events",
    "Observation": "clinical_events",
    "Procedure": "clinical_events",
    "MedicationRequest": "medications",
    "MedicationStatement": "medications",
    "Immunization": "immunisations",
    "AllergyIntolerance": "allergies",
    "Appointment": "appointments",
    "ServiceRequest": "referrals",
}
SUPPORT_TYPES = {"Organization", "Practitioner", "PractitionerRole", "Patient"}
CLINICAL_FILES = ("Condition", "Observation", "Procedure")
SEX = {"female": "F", "male": "M"}
PRIORITY = {"routine": "routine", "urgent": "urgent", "asap": "two-week-wait", "stat": "urgent"}
FHIR_ID = re.compile(rb'"id":"([A-Za-z0-9\-.]{1,64})"')
_DATE_SHAPE = r"^\d{4}-\d{2}-\d{2}(T.*)?$"

Row = dict[str, Any]


def is_fhir(folder: Path) -> bool:
    return (folder / MANIFEST).exists() or any(folder.glob("*.ndjson"))


def _tail(reference: dict[str, Any] | None) -> str | None:
    """'Patient/z10001-p1' -> 'z10001-p1' (the local id a reference points at)."""
    if not reference:
        return None
    text = reference.get("reference")
    if not isinstance(text, str):
        return None
    return text.rsplit("/", 1)[-1]


def _code(concept: dict[str, Any] | None, system: str) -> str | None:
    if not concept:
        return None
    for coding in concept.get("coding", ()):
        if coding.get("system") == system:
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


def _first_code(concept: dict[str, Any] | None) -> str | None:
    if not concept:
        return None
    for coding in concept.get("coding", ()):
        return coding.get("code")  # type: ignore[no-any-return]
    return None


def _status(value: str | None) -> str:
    return "entered-in-error" if value == "entered-in-error" else "active"


# ---- one function per resource type: resource -> canonical row ------------------------------


def _condition(r: Row) -> Row:
    category = _first_code((r.get("category") or [None])[0])
    return {
        "staff_ref": _tail(r.get("recorder")),
        "category": "symptom" if category == "encounter-diagnosis" else "condition",
        "code": _code(r.get("code"), SNOMED_SYSTEM),
        "effective_date": r.get("onsetDateTime"),
        "recorded_at": r.get("recordedDate"),
        "status": _status(_first_code(r.get("verificationStatus"))),
    }


def _observation(r: Row) -> Row:
    quantity = r.get("valueQuantity") or {}
    performers = r.get("performer") or [None]
    return {
        "staff_ref": _tail(performers[0]),
        "category": "observation",
        "code": _code(r.get("code"), SNOMED_SYSTEM),
        "effective_date": r.get("effectiveDateTime"),
        "recorded_at": r.get("issued"),
        "value": quantity.get("value"),
        "unit": quantity.get("code") or quantity.get("unit"),
        "status": _status(r.get("status")),
    }


def _procedure(r: Row) -> Row:
    return {
        "staff_ref": _tail(r.get("recorder")),
        "category": "procedure",
        "code": _code(r.get("code"), SNOMED_SYSTEM),
        "effective_date": r.get("performedDateTime"),
        "status": _status(r.get("status")),
    }


def _medication_request(r: Row) -> Row:
    quantity = (r.get("dispenseRequest") or {}).get("quantity") or {}
    course = _first_code(r.get("courseOfTherapyType"))
    return {
        "staff_ref": _tail(r.get("requester")),
        "code": _code(r.get("medicationCodeableConcept"), DMD_SYSTEM),
        "issue_date": r.get("authoredOn"),
        "quantity": quantity.get("value"),
        "quantity_unit": quantity.get("unit"),
        "course": "acute" if course == "acute" else "repeat",
        "source": "issued",
        "status": _status(r.get("status")),
    }


def _medication_statement(r: Row) -> Row:
    return {
        "staff_ref": _tail(r.get("informationSource")),
        "code": _code(r.get("medicationCodeableConcept"), DMD_SYSTEM),
        "issue_date": r.get("effectiveDateTime"),
        "source": "elsewhere",
        "status": _status(r.get("status")),
    }


def _immunization(r: Row) -> Row:
    procedure = None
    for extension in r.get("extension", ()):
        if extension.get("url") == VACCINATION_PROCEDURE_EXT:
            procedure = _code(extension.get("valueCodeableConcept"), SNOMED_SYSTEM)
    performers = r.get("performer") or [{}]
    return {
        "patient_ref": _tail(r.get("patient")),
        "staff_ref": _tail(performers[0].get("actor")),
        "procedure_code": procedure,
        "vaccine_code": _code(r.get("vaccineCode"), DMD_SYSTEM),
        "date": r.get("occurrenceDateTime"),
        "status": _status(r.get("status")),
    }


def _allergy(r: Row) -> Row:
    return {
        "patient_ref": _tail(r.get("patient")),
        "staff_ref": _tail(r.get("recorder")),
        "code": _code(r.get("code"), SNOMED_SYSTEM),
        "onset_date": r.get("onsetDateTime"),
        "recorded_at": r.get("recordedDate"),
        "status": _status(_first_code(r.get("verificationStatus"))),
    }


def _appointment(r: Row) -> Row:
    patient = staff = None
    for participant in r.get("participant", ()):
        reference = (participant.get("actor") or {}).get("reference") or ""
        if reference.startswith("Patient/"):
            patient = reference[8:]
        elif reference.startswith("Practitioner/") and staff is None:
            staff = reference[13:]
    return {
        "patient_ref": patient,
        "staff_ref": staff,
        "start": r.get("start"),
        "duration_minutes": r.get("minutesDuration"),
        "mode": (r.get("appointmentType") or {}).get("text"),
        "status": r.get("status"),
        "booked_at": r.get("created"),
    }


def _service_request(r: Row) -> Row:
    return {
        "staff_ref": _tail(r.get("requester")),
        "code": _code(r.get("code"), SNOMED_SYSTEM),
        "referral_date": r.get("authoredOn"),
        "priority": PRIORITY.get(r.get("priority") or "routine"),
        "status": _status(r.get("status")),
    }


def _episode_of_care(r: Row) -> Row:
    period = r.get("period") or {}
    kind = ((r.get("type") or [{}])[0].get("text") or "").split(" ", 1)[0].lower()
    end_reason = None
    for extension in r.get("extension", ()):
        if extension.get("url") == REGISTRATION_END_EXT:
            end_reason = extension.get("valueString")
    return {
        "patient_ref": _tail(r.get("patient")),
        "start_date": period.get("start"),
        "end_date": period.get("end"),
        "registration_type": kind or None,
        "end_reason": end_reason,
        "status": _status(r.get("status")),
    }


def _patient(r: Row) -> Row:
    nhs_number = None
    for identifier in r.get("identifier", ()):
        if identifier.get("system") == NHS_NUMBER_SYSTEM:
            nhs_number = identifier.get("value")
    address = (r.get("address") or [{}])[0]
    return {
        "patient_ref": r.get("id"),
        "nhs_number": nhs_number,
        "date_of_birth": r.get("birthDate"),
        "sex": SEX.get(r.get("gender") or "", "U"),
        "date_of_death": r.get("deceasedDateTime"),
        "postcode": address.get("postalCode"),
    }


BUILDERS: dict[str, Callable[[Row], Row]] = {
    "Condition": _condition,
    "Observation": _observation,
    "Procedure": _procedure,
    "MedicationRequest": _medication_request,
    "MedicationStatement": _medication_statement,
    "Immunization": _immunization,
    "AllergyIntolerance": _allergy,
    "Appointment": _appointment,
    "ServiceRequest": _service_request,
    "EpisodeOfCare": _episode_of_care,
    "Patient": _patient,
}


def _canonical_row(kind: str, resource: Row) -> Row:
    """A resource as a canonical row: its type's own fields, the patient it is about (most
    types say so in `subject`) and when it last changed."""
    row = BUILDERS[kind](resource)
    if "patient_ref" not in row:
        row["patient_ref"] = _tail(resource.get("subject"))
    row["last_modified"] = (resource.get("meta") or {}).get("lastUpdated")
    return row


# ---- columns -> typed Arrow arrays ------------------------------------------------------------


def _strict_strptime(text: pa.Array, layout: str) -> pa.Array:
    """Parse, refusing impossible days: Arrow's parser rolls them over (30 February becomes
    1 March) where a reader should refuse them, and a rolled-over value always lands on another
    day of the month than the one written."""
    parsed = pc.strptime(text, format=layout, unit="s", error_is_null=True)
    written = pc.if_else(pc.is_valid(parsed), pc.utf8_slice_codeunits(text, 8, 10), "0")
    same = pc.equal(pc.day(parsed), written.cast(pa.int64()))
    return pc.if_else(pc.fill_null(same, False), parsed, pa.scalar(None, parsed.type))


def _dates(values: list[Any]) -> tuple[pa.Array, pa.Array]:
    """(date32 array, bad flags). A FHIR date or dateTime; a value that is present but not a
    full date is bad (partial dates and day-first dates included)."""
    text = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
    shaped = pc.match_substring_regex(text, _DATE_SHAPE)
    day = pc.utf8_slice_codeunits(text, 0, 10)
    parsed = _strict_strptime(day, "%Y-%m-%d")
    parsed = pc.if_else(shaped, parsed, pa.scalar(None, parsed.type))
    present = pa.array([v is not None for v in values], pa.bool_())
    bad = pc.and_(present, pc.is_null(parsed))
    return parsed.cast(DATE), bad


def _times(values: list[Any]) -> tuple[pa.Array, pa.Array]:
    """(timestamp array, bad flags). FHIR instants; the common 'Z' form is parsed in bulk and
    anything else (offsets, fractions of a second, a bare date) one at a time."""
    text = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
    parsed = _strict_strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    missing = pc.and_(pc.is_valid(text), pc.is_null(parsed))
    bad = pa.array([v is not None and not isinstance(v, str) for v in values], pa.bool_())
    if pc.any(missing).as_py():
        fixed = parsed.to_pylist()
        flags = bad.to_pylist()
        for i in pc.indices_nonzero(missing).to_pylist():
            fixed[i], flags[i] = _one_time(values[i])
        return pa.array(fixed, TIME), pa.array(flags, pa.bool_())
    return parsed, bad


def _one_time(text: str) -> tuple[datetime | None, bool]:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None, True
    return utc_naive(value).replace(microsecond=0), False


def _typed(column: list[Any], kind: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    if kind == DATE:
        return _dates(column)
    if kind == TIME:
        return _times(column)
    try:
        return pa.array(column, kind), None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # A value of the wrong JSON type (text where a number belongs, or the reverse) is
        # treated as absent rather than stopping the extract.
        if pa.types.is_string(kind):
            return pa.array([v if isinstance(v, str) else None for v in column], kind), None
        numbers = [
            v if isinstance(v, int | float) and not isinstance(v, bool) else None for v in column
        ]
        try:
            return pa.array(numbers, kind), None
        except (pa.ArrowInvalid, OverflowError):  # e.g. a duration too large for its column
            return pa.nulls(len(column), kind), None


class FhirReader:
    def __init__(self, folder: Path, never_read: set[str]) -> None:
        self.folder = folder
        self._faults: list[ReaderFault] = []
        files = sorted(folder.glob("*.ndjson"))
        if not any(f.stem == "Patient" for f in files):
            raise UserError(
                f"{folder} holds no Patient.ndjson: there are no records to extract "
                "(is this the practice's FHIR export folder?)"
            )
        self.files = {f.stem: f for f in files}
        self.never_read = never_read
        extracted_at = self._transaction_time()
        ods = self._ods_code()
        not_read = {
            name: self._count_lines(path) for name, path in self.files.items() if name in never_read
        }
        self.practice = Practice(ods, "fhir", extracted_at, not_read)

    # ---- files --------------------------------------------------------------------------------

    def _open(self, path: Path) -> Any:
        try:
            return path.open("rb")
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _count_lines(self, path: Path) -> int:
        with self._open(path) as f:
            return sum(1 for line in f if line.strip())

    def _transaction_time(self) -> datetime:
        path = self.folder / MANIFEST
        try:
            about = orjson.loads(path.read_bytes())
            value = datetime.fromisoformat(str(about["transactionTime"]))
        except FileNotFoundError:
            raise UserError(
                f"{self.folder} has no {MANIFEST}: the export manifest says when the extract was "
                "taken, which bounds its time window; ask the supplier for the whole export"
            ) from None
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(
                f"{path} is not a Bulk Data export manifest with a transactionTime"
            ) from None
        return utc_naive(value)

    def _ods_code(self) -> str:
        for _, _, resource in self._resources("Organization"):
            for identifier in resource.get("identifier", ()):
                if identifier.get("system") == ODS_SYSTEM and identifier.get("value"):
                    return str(identifier["value"])
        raise UserError(
            f"{self.folder}: Organization.ndjson does not give the practice's ODS code; "
            "the export is incomplete"
        )

    def _lines(self, name: str) -> Iterator[tuple[int, bytes]]:
        path = self.files.get(name)
        if path is None:
            return
        with self._open(path) as f:
            try:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        yield number, line
            except OSError as exc:
                raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _fault(self, source: str, line: int, record_id: str | None, reason: str) -> None:
        self._faults.append(ReaderFault(source, line, record_id, reason))

    def _resources(
        self, name: str, keep: Callable[[bytes], bool] | None = None
    ) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """(line number, id, resource) for each well-formed resource of type `name` in its
        file; faults for the rest (recorded only on the main pass, keep=None)."""
        source = f"{name}.ndjson"
        for number, line in self._lines(name):
            if keep is not None and not keep(line):
                continue
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                if keep is None:
                    found = FHIR_ID.search(line)
                    rid = found.group(1).decode() if found else None
                    self._fault(source, number, rid, "not valid JSON (a truncated or damaged line)")
                continue
            if not isinstance(resource, dict):
                if keep is None:
                    self._fault(source, number, None, "not a FHIR resource (not a JSON object)")
                continue
            rid = resource.get("id")
            rid = rid if isinstance(rid, str) else None
            kind = resource.get("resourceType")
            if kind != name:
                if keep is None:
                    self._fault(
                        source, number, rid, f"resource type {kind!r} in the file for {name}"
                    )
                continue
            if rid is None:
                if keep is None:
                    self._fault(source, number, None, "resource has no id")
                continue
            yield number, rid, resource

    # ---- the Reader interface -----------------------------------------------------------------

    def staff(self) -> Staff:
        roles: dict[str, str] = {}
        for _, _, role in self._resources("PractitionerRole"):
            ref = _tail(role.get("practitioner"))
            text = [c.get("text") for c in role.get("code", ()) if c.get("text")]
            if ref and text:
                roles[ref] = text[0]
        refs: list[object] = []
        sds: list[str | None] = []
        for _, rid, practitioner in self._resources("Practitioner"):
            refs.append(rid)
            sds.append(
                next(
                    (
                        i.get("value")
                        for i in practitioner.get("identifier", ())
                        if i.get("system") == SDS_USER_SYSTEM
                    ),
                    None,
                )
            )
        return Staff(refs, sds, [roles.get(str(r)) for r in refs])

    def patients(self) -> Iterator[Batch]:
        yield from self._batches(["Patient"], PATIENT_COLUMNS, "patients")

    def records(self, table: str) -> Iterator[Batch]:
        kinds = [k for k, t in TABLE_OF.items() if t == table]
        yield from self._batches(kinds, RECORD_COLUMNS[table], table)
        if table == "referrals":  # the last table: report files of unknown resource types
            self._unknown_files()

    def _unknown_files(self) -> None:
        known = set(TABLE_OF) | SUPPORT_TYPES | self.never_read
        for name in sorted(set(self.files) - known):
            for number, line in self._lines(name):
                found = FHIR_ID.search(line)
                rid = found.group(1).decode() if found else None
                self._fault(f"{name}.ndjson", number, rid, f"unknown resource type {name!r}")

    def _batches(
        self, kinds: list[str], columns: dict[str, pa.DataType], table: str
    ) -> Iterator[Batch]:
        for kind in kinds:
            rows: list[Row] = []
            positions: list[int] = []
            ids: list[str] = []
            for number, rid, resource in self._resources(kind):
                rows.append(_canonical_row(kind, resource))
                positions.append(number)
                ids.append(rid)
                if len(rows) == BATCH_LINES:
                    yield self._batch(rows, positions, ids, columns, kind, table)
                    rows, positions, ids = [], [], []
            if rows:
                yield self._batch(rows, positions, ids, columns, kind, table)

    def _batch(
        self,
        rows: list[Row],
        positions: list[int],
        ids: list[str],
        columns: dict[str, pa.DataType],
        kind: str,
        table: str,
    ) -> Batch:
        out: dict[str, pa.Array] = {
            "_row": pa.array(positions, pa.int64()),
            "_key": pa.array([hash(i) for i in ids], pa.int64()),
            "record_id": pa.array(ids, pa.string()),
            "patient_ref": pa.array([r.get("patient_ref") for r in rows], pa.string()),
        }
        if table != "patients":
            out["staff_ref"] = pa.array([r.get("staff_ref") for r in rows], pa.string())
        bad = pa.array([False] * len(rows), pa.bool_())
        for name, kind_type in columns.items():
            array, flags = _typed([r.get(name) for r in rows], kind_type)
            out[name] = array
            if flags is not None:
                bad = pc.or_(bad, flags)
        out["_bad_date"] = bad
        return Batch(pa.table(out), f"{kind}.ndjson")

    def opt_out_events(self, codes: set[str]) -> pa.Table:
        needles = [c.encode() for c in codes]

        def mentions(line: bytes) -> bool:
            return any(n in line for n in needles)

        rows: list[Row] = []
        for kind in CLINICAL_FILES:
            for _, _, resource in self._resources(kind, keep=mentions):
                row = _canonical_row(kind, resource)
                if row.get("code") in codes:
                    rows.append(row)
        effective, bad_effective = _dates([r.get("effective_date") for r in rows])
        recorded, bad_recorded = _times([r.get("recorded_at") for r in rows])
        modified, bad_modified = _times([r.get("last_modified") for r in rows])
        return pa.table(
            {
                "patient_ref": pa.array([r["patient_ref"] for r in rows], pa.string()),
                "code": pa.array([r["code"] for r in rows], pa.string()),
                "effective_date": effective,
                "recorded_at": recorded,
                "status": pa.array([r["status"] for r in rows], pa.string()),
                "last_modified": modified,
                "_bad_date": pc.or_(pc.or_(bad_effective, bad_recorded), bad_modified),
            }
        )

    def faults(self) -> list[ReaderFault]:
        out, self._faults = self._faults, []
        return out
