"""Reads a practice's FHIR R4 NDJSON export (Bulk Data layout) into canonical batches.

Streaming: each file is read a line at a time and turned into columns a few thousand resources at
a time, so memory does not grow with the size of the practice's record. Each line is parsed with
orjson and only the elements the specification uses are picked out; narrative, notes, names,
addresses and telecoms are never copied. Dates are checked and converted a batch at a time.

Lines that are not records at all (bad JSON, a resource of another or unknown type) are reported
as faults with their file and line number, never their content.

Bundles (in `Bundle.ndjson`, a Bundle a line, or a `*.json` file that is one Bundle) are unpacked
when the export is opened; their resources are then read as if they were lines of their own type,
each named in a fault by its Bundle's file and line and its entry's FHIR path.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.errors import UserError
from gpdpr.practice import fhir_ages as ages
from gpdpr.practice import fhir_read as read
from gpdpr.practice import fhir_stream as stream
from gpdpr.practice.fhir_ages import AgeSpan, Uncollected
from gpdpr.practice.fhir_bundle import FHIR_ID as ID_FORM
from gpdpr.practice.fhir_bundle import REPEATED, Entry, Repeats, unpack
from gpdpr.practice.rules import PARTIAL_TIMES, RECORDED_ONLY
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
from gpdpr.spec import Specification
from gpdpr.terminology import ODS_SYSTEM, SDS_USER_SYSTEM

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
SUPPORT_TYPES = {"Organization", "Practitioner", "PractitionerRole", "Patient", "Medication"}
CLINICAL_FILES = ("Condition", "Observation", "Procedure")
FHIR_ID = re.compile(rb'"id":"([A-Za-z0-9\-.]{1,64})"')
_DATE_SHAPE = r"^\d{4}-\d{2}-\d{2}(T.*)?$"

Row = dict[str, Any]
BOM = b"\xef\xbb\xbf"
# Bulk Data file names: `Patient.ndjson`, or several files of a type, `Patient.000.ndjson`, ...
EXPORT_FILE = re.compile(r"^([A-Z][A-Za-z]{0,63})(\.[0-9]{1,6})?\.ndjson$")
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
# A file that is one Bundle, as some servers list a Bundle in the export's output.
BUNDLE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.json$")
# The last part of a manifest's url, as the name of a file in the export folder: never a path.
LISTED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
NOT_GP_REGISTRATION = "EpisodeOfCare (not a GP registration)"

# Reasons a line is not read at all: a closed set (they are counted in the manifest).
NOT_JSON = "not valid JSON (a truncated or damaged line)"
NOT_OBJECT = "not a FHIR resource (not a JSON object)"
WRONG_TYPE = "a resource of another type than its file holds"
NO_ID = "resource has no id"
UNKNOWN_TYPE = "a resource type the specification does not collect"
WRONG_SHAPE = "an element of the wrong shape"
UNREADABLE = "a resource that cannot be read"
UNRESOLVED = "a reference by identifier that names no one patient of the export by NHS number"
UNVERIFIED = "a reference by an NHS number the patient's record marks as not verified"
FAULT_REASONS = (
    NOT_JSON,
    NOT_OBJECT,
    WRONG_TYPE,
    NO_ID,
    UNKNOWN_TYPE,
    WRONG_SHAPE,
    UNREADABLE,
    UNRESOLVED,
    UNVERIFIED,
)
# Where each canonical date column comes from, to name the element of an unreadable date.
# The resource types sent with no clinical date when they say when they were entered into the
# record (`recordedDate`: the day the clinician entered it, which for an allergy found in
# childhood may be decades after its onset). That day is never written as the onset: the row
# leaves with its onset empty and the time it was recorded, and the plausibility checks look at
# that time instead. Only types whose table is collected for the whole record are listed (a
# retention cut-off needs the clinical date; the specification's test checks this).
DATED_BY_RECORDING = frozenset({"AllergyIntolerance", "Condition"})

DATE_PATHS = {
    ("Condition", "effective_date"): "Condition.onset[x]",
    ("Condition", "recorded_at"): "Condition.recordedDate",
    ("Observation", "effective_date"): "Observation.effective[x]",
    ("Observation", "recorded_at"): "Observation.issued",
    ("Procedure", "effective_date"): "Procedure.performed[x]",
    ("MedicationRequest", "issue_date"): "MedicationRequest.authoredOn",
    ("MedicationStatement", "issue_date"): "MedicationStatement.effective[x]",
    ("Immunization", "date"): "Immunization.occurrence[x]",
    ("AllergyIntolerance", "onset_date"): "AllergyIntolerance.onset[x]",
    ("AllergyIntolerance", "recorded_at"): "AllergyIntolerance.recordedDate",
    ("Appointment", "start"): "Appointment.start",
    ("Appointment", "booked_at"): "Appointment.created",
    ("ServiceRequest", "referral_date"): "ServiceRequest.authoredOn",
    ("EpisodeOfCare", "start_date"): "EpisodeOfCare.period.start",
    ("EpisodeOfCare", "end_date"): "EpisodeOfCare.period.end",
    ("Patient", "date_of_birth"): "Patient.birthDate",
    ("Patient", "date_of_death"): "Patient.deceasedDateTime",
}


def is_fhir(folder: Path) -> bool:
    return (folder / MANIFEST).exists() or any(folder.glob("*.ndjson"))


def table_of(resource_type: str | None) -> str:
    """The table a resource type's rows go to (for its record pseudonym)."""
    if resource_type == "Patient":
        return "patients"
    return TABLE_OF.get(resource_type or "", "unknown")


# ---- columns -> typed Arrow arrays ------------------------------------------------------------


def _strict_strptime(text: pa.Array, layout: str) -> pa.Array:
    """Parse, refusing impossible days: Arrow's parser rolls them over (30 February becomes
    1 March) where a reader should refuse them, and a rolled-over value always lands on another
    day of the month than the one written."""
    parsed = pc.strptime(text, format=layout, unit="s", error_is_null=True)
    written = pc.if_else(pc.is_valid(parsed), pc.utf8_slice_codeunits(text, 8, 10), "0")
    same = pc.equal(pc.day(parsed), written.cast(pa.int64()))
    return pc.if_else(pc.fill_null(same, False), parsed, pa.scalar(None, parsed.type))


def _text(values: list[Any]) -> pa.Array:
    return pa.array([v if type(v) is str else None for v in values], pa.string())


def _dates(values: list[Any], text: pa.Array | None = None) -> tuple[pa.Array, pa.Array]:
    """(date32 array, bad flags). A FHIR date or dateTime, at any of its precisions: a year or a
    year and month stands for its first day (the patients table keeps only the parts given); a
    value that is present but not a FHIR date (a day-first date, 30 February) is bad."""
    text = _text(values) if text is None else text
    length = pc.utf8_length(text)
    text = pc.if_else(
        pc.equal(length, 4),
        pc.binary_join_element_wise(text, "01-01", "-"),
        pc.if_else(pc.equal(length, 7), pc.binary_join_element_wise(text, "01", "-"), text),
    )
    shaped = pc.match_substring_regex(text, _DATE_SHAPE)
    day = pc.utf8_slice_codeunits(text, 0, 10)
    parsed = _strict_strptime(day, "%Y-%m-%d")
    parsed = pc.if_else(shaped, parsed, pa.scalar(None, parsed.type))
    present = pa.array([v is not None for v in values], pa.bool_())
    bad = pc.and_(present, pc.is_null(parsed))
    return parsed.cast(DATE), bad


def _precision(text: pa.Array, parsed: pa.Array) -> pa.Array:
    """How much of each date was given: year, month or day (null where there is no date)."""
    length = pc.utf8_length(text)
    named = pc.if_else(pc.equal(length, 4), "year", pc.if_else(pc.equal(length, 7), "month", "day"))
    return pc.if_else(pc.is_valid(parsed), named, pa.scalar(None, pa.string()))


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
    if len(text) in (4, 7):  # a dateTime given only to the year or month: its first moment
        text = f"{text}-01-01"[:10]
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
    """A Bulk Data export folder: export.json and its NDJSON files, one or several per type."""

    def __init__(self, folder: Path, spec: Specification, ods_code: str | None = None) -> None:
        self.folder = folder
        self.spec = spec
        self._faults: list[ReaderFault] = []
        self._lines_read: dict[Path, int] = {}
        about = self._manifest()
        self.files = self._export_files(about)
        self._entry_paths: dict[tuple[str, int, str | None], str] = {}
        self._skipped: dict[str, int] = {}
        self._spill: tempfile.TemporaryDirectory[str] | None = None
        self._streamed: dict[str, stream.Streamed] = {}
        self._bundle_sources: list[str] = []
        try:
            self._open_export(about, ods_code)
        except BaseException:
            self.close()  # nothing spilled from a Bundle outlives a refusal
            raise
        self._medication_codes: dict[str, str | None] | None = None
        self._merged: dict[str, str] | None = None
        self._identified: dict[str, tuple[str | None, bool]] | None = None
        self._births: dict[str, str] | None = None

    def _open_export(self, about: dict[str, Any], ods_code: str | None) -> None:
        spec, folder = self.spec, self.folder
        self.unpacked = self._bundles(self.files.pop("Bundle", []))
        self.streamed_types = {kind for s in self._streamed.values() for kind in s.files}
        if "Patient" not in self.files.keys() | self.unpacked.keys() | self.streamed_types:
            raise UserError(
                f"{folder} holds no Patient file (Patient.ndjson or Patient.000.ndjson): there "
                "are no records to extract (is this the practice's FHIR export folder?)"
            )
        self.never_read = spec.never_read_resource_types()
        extracted_at = self._transaction_time(about)
        self.context = read.Context(
            snomed=frozenset(spec.code_systems["snomed"]),
            dmd=frozenset(spec.code_systems["dmd"]),
            facts=spec.facts,
            extracted_on=extracted_at.date().isoformat(),
            verified=spec.nhs_number_verified,
        )
        ods = self._practice(ods_code)
        not_read = {
            name: sum(self._count_lines(p) for p in paths)
            for name, paths in self.files.items()
            if name in self.never_read
        }
        for name, entries in self.unpacked.items():
            if name in self.never_read:
                not_read[name] = not_read.get(name, 0) + len(entries)
        for streamed in self._streamed.values():
            for name, n in streamed.counts.items():
                if name in self.never_read:
                    not_read[name] = not_read.get(name, 0) + n
        not_read.update(self._skipped)
        self.practice = Practice(ods, "fhir", extracted_at, not_read)

    # ---- the export's files ---------------------------------------------------------------------

    def _manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        try:
            about = orjson.loads(path.read_bytes().removeprefix(BOM))
        except FileNotFoundError:
            raise UserError(
                f"{self.folder} has no {MANIFEST}: the export manifest says when the extract was "
                "taken, which bounds its time window; ask the supplier for the whole export"
            ) from None
        except (OSError, orjson.JSONDecodeError):
            raise UserError(f"{path} is not a readable Bulk Data export manifest") from None
        if not isinstance(about, dict):
            raise UserError(f"{path} is not a Bulk Data export manifest (not a JSON object)")
        return about

    def _export_files(self, about: dict[str, Any]) -> dict[str, list[Path]]:
        """The files of each type, checked against the manifest's `output` list: a file it lists
        that is missing, or one of another type than listed, means the export is not the one the
        server finished, and nothing is extracted from it (the line counts are checked as the
        files are read). A server names its files as it likes; a file the manifest lists is of
        the type it gives, one it does not list must be named `Type.ndjson` or `Type.000.ndjson`,
        and is read all the same: nothing is left out. The files of the `error` and `deleted`
        lists are checked, never read as records (see _check_errors, _check_deleted)."""
        where = self.folder / MANIFEST
        self._expected: dict[Path, int] = {}
        listed: dict[Path, str] = {}
        for n, kind, path, entry in self._listed(about, "output"):
            if kind == "Bundle" and path.suffix == ".json":
                count = entry.get("count")
                if count not in (None, 1):  # a .json file is one resource: the Bundle
                    raise UserError(
                        f"{where}: output entry {n} counts other than one resource in a file "
                        "that holds one Bundle; ask the supplier for the export again"
                    )
                continue
            named = EXPORT_FILE.match(path.name)
            if not RESOURCE_TYPE.match(kind) or (named is not None and named.group(1) != kind):
                raise UserError(
                    f"{where}: output entry {n} says its file holds another resource type than "
                    "its name does, or no resource type; ask the supplier for the export again"
                )
            listed[path] = kind
            count = entry.get("count")
            if isinstance(count, int) and not isinstance(count, bool):
                self._expected[path] = count
        errors = [path for _, _, path, _ in self._listed(about, "error")]
        deleted = [path for _, _, path, _ in self._listed(about, "deleted")]
        self._check_errors(errors)
        self._check_deleted(deleted)
        found: dict[str, list[Path]] = {}
        for path in sorted(set(self.folder.glob("*.ndjson")) | set(listed)):
            if path in errors or path in deleted:
                continue
            named = EXPORT_FILE.match(path.name)
            if path not in listed and named is None:
                raise UserError(
                    f"{path} is not named as a Bulk Data export file (Type.ndjson or "
                    f"Type.000.ndjson) nor listed in {MANIFEST}; rename it or remove it "
                    "from the export folder"
                )
            found.setdefault(listed[path] if named is None else named.group(1), []).append(path)
        return found

    def _listed(self, about: dict[str, Any], key: str) -> list[tuple[int, str, Path, Any]]:
        """(position, type, file, item) of each file a list of the manifest names. A url's last
        part names a file of the export folder, never a path: a name of any other form, or of
        a file that is not there, means the export is not the one the server wrote."""
        where = self.folder / MANIFEST
        items = about.get(key)
        if items is None:
            return []
        if not isinstance(items, list):
            raise UserError(f"{where}: `{key}` is not a list of the export's files")
        out = []
        for n, item in enumerate(items, start=1):
            url = item.get("url") if isinstance(item, dict) else None
            kind = item.get("type") if isinstance(item, dict) else None
            if not isinstance(url, str) or not isinstance(kind, str):
                raise UserError(f"{where}: {key} entry {n} does not give a type and a url")
            name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            path = self.folder / name
            if not LISTED_NAME.match(name) or name == MANIFEST or not path.exists():
                raise UserError(
                    f"{where}: {key} entry {n} lists a file that is not in {self.folder}; "
                    "the export is incomplete: ask the supplier for the whole export"
                )
            out.append((n, kind, path, item))
        return out

    def _check_errors(self, files: list[Path]) -> None:
        """The server's own messages about the export (OperationOutcome): an error or a fatal
        one means resources it should have written may be missing, and half a record must not
        be sent as the whole of it. A message the server could not write whole counts as an
        error. Information and warnings are read no further."""
        found = 0
        for path in files:
            for _, line in self._lines(path):
                try:
                    outcome = orjson.loads(line)
                except orjson.JSONDecodeError:
                    outcome = None
                issues = outcome.get("issue") if isinstance(outcome, dict) else None
                if not isinstance(issues, list):
                    found += 1
                    continue
                found += sum(
                    1
                    for i in issues
                    if not isinstance(i, dict)
                    or i.get("severity") not in ("information", "warning")
                )
        if found:
            names = ", ".join(p.name for p in files)
            raise UserError(
                f"{self.folder / MANIFEST}: the server reported {found:,} error(s) while "
                f"exporting (in {names}): the export may be incomplete; ask the supplier to run "
                "it again"
            )

    def _check_deleted(self, files: list[Path]) -> None:
        """An export since a date lists what was deleted since; the extractor does not yet take
        a deletion from the source to the lake, so such an export is refused rather than its
        deletions lost (a record deleted at the practice would stay in use)."""
        for path in files:
            if any(True for _ in self._lines(path)):
                raise UserError(
                    f"{self.folder / MANIFEST}: the export lists resources deleted since its "
                    f"`_since` date (in {path.name}), which cannot yet be applied; ask the "
                    "supplier for a whole export (without `_since`)"
                )

    def _open(self, path: Path) -> Any:
        try:
            return path.open("rb")
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _count_lines(self, path: Path) -> int:
        with self._open(path) as f:
            return sum(1 for line in f if line.strip())

    def _transaction_time(self, about: dict[str, Any]) -> datetime:
        try:
            value = datetime.fromisoformat(str(about["transactionTime"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{self.folder / MANIFEST} is not a Bulk Data export manifest with a "
                "transactionTime"
            ) from None
        return utc_naive(value)

    def _practice(self, ods_code: str | None) -> str:
        """The practice is the one the key kit was issued to, and the export must say it is
        theirs: an export holds many organisations (hospitals, pharmacies), so the first one
        with an ODS code is not necessarily the practice."""
        codes: list[str] = []
        for _, _, _, resource in self._resources("Organization", quiet=True):
            for identifier in _list(resource.get("identifier")):
                if (
                    isinstance(identifier, dict)
                    and identifier.get("system") == ODS_SYSTEM
                    and isinstance(identifier.get("value"), str)
                ):
                    codes.append(identifier["value"].strip().upper())
        if ods_code is None and codes:
            return codes[0]
        if ods_code is not None and ods_code.upper() in codes:
            return ods_code
        raise UserError(
            f"{self.folder}: no Organization in the export has the ODS code "
            f"{ods_code or '(any)'}; the export is incomplete, or is another practice's"
        )

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        with self._open(path) as f:
            n = 0
            try:
                first = f.readline().removeprefix(BOM)  # a byte-order mark is not part of line 1
                if first.strip():
                    n += 1
                    yield 1, first
                for number, line in enumerate(f, start=2):
                    # A resource's line is long; only a short one may be blank (CRLF, spaces).
                    if len(line) > 8 or line.strip():
                        n += 1
                        yield number, line
            except OSError as exc:
                raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
            self._lines_read[path] = n

    def _fault(
        self,
        source: str,
        line: int,
        record_id: str | None,
        reason: str,
        kind: str | None = None,
        path: str | None = None,
    ) -> None:
        entry = self._entry_paths.get((source, line, record_id)) if self._entry_paths else None
        streamed = self._streamed.get(source) if self._streamed else None
        if streamed is not None:  # a streamed Bundle's position is the index of its entry
            entry = streamed.nested.get((line, record_id), f"Bundle.entry[{line}]")
        if entry is not None and kind is not None:  # "Condition.subject" in a Bundle's entry 3:
            rest = path[len(kind) :] if path and path.startswith(kind) else ""
            path = f"{entry}.resource{rest}"  # "Bundle.entry[3].resource.subject"
        self._faults.append(ReaderFault(source, line, record_id, reason, kind, path))

    def _resources(
        self, name: str, keep: Callable[[bytes], bool] | None = None, quiet: bool = False
    ) -> Iterator[tuple[str, int, str, dict[str, Any]]]:
        """(file name, line number, id, resource) for each well-formed resource of type `name`
        in its files; faults for the rest (recorded only on the main pass)."""
        report = keep is None and not quiet
        for source, number, line in self._lines_of(name):
            if keep is not None and not keep(line):
                continue
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                if report:
                    found = FHIR_ID.search(line)
                    rid = found.group(1).decode() if found else None
                    self._fault(source, number, rid, NOT_JSON, name)
                continue
            if not isinstance(resource, dict):
                if report:
                    self._fault(source, number, None, NOT_OBJECT, name)
                continue
            rid = resource.get("id")
            rid = rid if isinstance(rid, str) and rid else None
            kind = resource.get("resourceType")
            if kind != name:
                if report:
                    named = kind if isinstance(kind, str) and RESOURCE_TYPE.match(kind) else None
                    self._fault(source, number, rid, WRONG_TYPE, named, "resourceType")
                continue
            if rid is None:
                if report:
                    self._fault(source, number, None, NO_ID, name, f"{name}.id")
                continue
            yield source, number, rid, resource

    def _lines_of(self, name: str) -> Iterator[tuple[str, int, bytes]]:
        """(file name, line number, line) of each resource of type `name`: its files' lines,
        then the resources of that type Bundles hold."""
        for file in self.files.get(name, ()):
            source = file.name
            for number, line in self._lines(file):
                yield source, number, line
        entries = self.unpacked.get(name, [])
        k = 0
        for source in self._bundle_sources:  # in the order they were read
            streamed = self._streamed.get(source)
            if streamed is not None:
                if name in streamed.files:
                    for index, line in stream.spilled_lines(streamed.files[name]):
                        yield source, index, line
                continue
            while k < len(entries) and entries[k][0] == source:
                yield source, entries[k][1], entries[k][2].line
                k += 1

    def _bundles(self, files: list[Path]) -> dict[str, list[tuple[str, int, Entry]]]:
        """The resources every Bundle of the export holds, by type. A Bundle of the wrong shape is
        quarantined whole, named by file, line and the FHIR path at fault. The Bundles are taken
        in one order (the NDJSON files' lines, then the files that are one Bundle, by name),
        whether a file is parsed whole or streamed, so which copy of a repeated resource is read
        first never depends on a file's size."""
        found: dict[str, list[tuple[str, int, Entry]]] = {}
        repeats = Repeats()
        for file in files:
            self._bundle_sources.append(file.name)
            for number, line in self._lines(file):
                self._unpack(file.name, number, line, repeats, found, whole_file=False)
        for path in sorted(self.folder.glob("*.json")):
            if path.name == MANIFEST:
                continue
            self._bundle_sources.append(path.name)
            try:
                if path.stat().st_size > stream.STREAM_BYTES:
                    self._stream(path, repeats)
                else:
                    content = path.read_bytes().removeprefix(BOM)
                    self._unpack(path.name, 1, content, repeats, found, whole_file=True)
            except OSError as exc:
                raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
        return found

    def _unpack(
        self,
        source: str,
        number: int,
        line: bytes,
        repeats: Repeats,
        found: dict[str, list[tuple[str, int, Entry]]],
        whole_file: bool,
    ) -> None:
        """One Bundle parsed whole: a line of an NDJSON file, or a file that is one Bundle (whose
        entries are then named by their index, as a streamed Bundle's are)."""
        try:
            bundle = orjson.loads(line)
        except orjson.JSONDecodeError:
            self._fault(source, number, None, NOT_JSON, "Bundle")
            return
        if not isinstance(bundle, dict):
            self._fault(source, number, None, NOT_OBJECT, "Bundle")
            return
        bid = bundle.get("id")
        bid = bid if isinstance(bid, str) and ID_FORM.match(bid) else None
        if bundle.get("resourceType") != "Bundle":
            self._fault(source, number, bid, WRONG_TYPE, None, "resourceType")
            return
        try:
            unpacked = unpack(bundle)
        except read.Shape as shape:
            self._fault(source, number, bid, WRONG_SHAPE, "Bundle", shape.path)
            return
        for why, n in unpacked.skipped.items():
            self._skipped[why] = self._skipped.get(why, 0) + n
        for entry in unpacked.entries:
            if repeats.repeated(entry):
                self._skipped[REPEATED] = self._skipped.get(REPEATED, 0) + 1
                continue
            position = entry.index if whole_file else number
            self._entry_paths[(source, position, entry.rid)] = entry.path
            found.setdefault(entry.kind, []).append((source, position, entry))
        repeats.bundle_read()

    def _stream(self, path: Path, repeats: Repeats) -> None:
        """A Bundle file too large to parse whole: its resources are spilled to files of their
        own, a type to a file, in a private folder removed with the reader (see fhir_stream)."""
        if self._spill is None:
            self._spill = tempfile.TemporaryDirectory(prefix="gpdpr-bundle-")
        into = Path(self._spill.name) / str(len(self._streamed))
        into.mkdir()
        try:
            done = stream.stream(path, into, repeats, REPEATED)
        except stream.BundleFault as fault:
            reason = {"json": NOT_JSON, "object": NOT_OBJECT, "type": WRONG_TYPE}.get(
                fault.kind, WRONG_SHAPE
            )
            kind = None if fault.kind == "type" else "Bundle"
            self._fault(path.name, 1, fault.bundle_id, reason, kind, fault.path)
            shutil.rmtree(into, ignore_errors=True)
            return
        self._streamed[path.name] = done
        for why, n in done.skipped.items():
            self._skipped[why] = self._skipped.get(why, 0) + n

    def close(self) -> None:
        """Remove the resources spilled from streamed Bundles."""
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None

    # ---- the Reader interface -----------------------------------------------------------------

    def staff(self) -> Staff:
        roles: dict[str, str] = {}
        for _, _, _, role in self._resources("PractitionerRole"):
            try:
                who = read.ref(role.get("practitioner"), "practitioner", "Practitioner")
                names = [
                    c.get("text") for c in read.seq(role.get("code"), "code") if isinstance(c, dict)
                ]
            except read.Shape:
                continue
            text = [t for t in names if isinstance(t, str)]
            if who and text:
                roles[who] = text[0]
        refs: list[object] = []
        sds: list[str | None] = []
        for _, _, rid, practitioner in self._resources("Practitioner"):
            refs.append(rid)
            found = None
            for i in _list(practitioner.get("identifier")):
                if isinstance(i, dict) and i.get("system") == SDS_USER_SYSTEM:
                    value = i.get("value")
                    found = value if isinstance(value, str) else None
            sds.append(found)
        return Staff(refs, sds, [roles.get(str(r)) for r in refs])

    def merged(self) -> dict[str, str]:
        """Patient records merged into another (`link` of type replaced-by): old id -> the
        id of the record that replaced it, so a merged person is one person."""
        if self._merged is None:
            merged: dict[str, str] = {}
            for _, _, rid, p in self._resources("Patient", keep=lambda line: b'"link"' in line):
                for link in _list(p.get("link")):
                    if isinstance(link, dict) and link.get("type") == "replaced-by":
                        try:
                            other = read.ref(link.get("other"), "link", "Patient")
                        except read.Shape:
                            other = None
                        if other and other != rid:
                            merged[rid] = other
            self._merged = merged
        return self._merged

    def _identified_patient(self, ref: read.ByIdentifier) -> tuple[str | None, bool]:
        """(the id of the one patient of the export that has the identifier a reference names,
        whether they hold it verified), or (None, False): no such patient, two of them, or a
        system a patient may not be named by. Every number a patient holds (old, unverified)
        counts in telling whether it names one patient; only a verified one may link records."""
        if self._identified is None:
            found: dict[str, tuple[str | None, bool]] = {}
            for _, _, rid, p in self._resources("Patient", quiet=True):
                for i in _list(p.get("identifier")):
                    if not isinstance(i, dict) or not isinstance(i.get("value"), str):
                        continue
                    key = read.ByIdentifier.of(i.get("system"), i["value"], "")
                    if key:
                        mine = self._survivor(rid)
                        verified = read.verified_number(i, self.context)
                        held, known = found.get(key, (mine, False))
                        found[key] = (mine, known or verified) if held == mine else (None, False)
            self._identified = found
        return self._identified.get(ref, (None, False)) if ref else (None, False)

    def _resolved(self, ref: str | None) -> str | read.ByIdentifier | None:
        """A patient reference as the id of the record it names: a merged record's survivor, and
        the patient a reference by identifier names (or the reference, when it names no one)."""
        if type(ref) is read.ByIdentifier:
            # An opt-out holds even by a number not verified: where it is unclear, dissent wins.
            found, _ = self._identified_patient(ref)
            return ref if found is None else found
        return self._survivor(ref)

    def _birth(self, ref: str | None) -> str | None:
        """A patient's birth date as their record gives it, for a date given as an age."""
        if self._births is None:
            self._births = {}
            for _, _, rid, p in self._resources("Patient", quiet=True):
                birth = p.get("birthDate")
                if type(birth) is str:
                    self._births[rid] = birth
        return self._births.get(ref) if ref is not None else None

    def _survivor(self, ref: str | None) -> str | None:
        merged = self.merged()
        seen = 0
        while ref in merged and seen < 10:  # a chain of merges, never a loop
            ref, seen = merged[ref], seen + 1
        return ref

    def patients(self) -> Iterator[Batch]:
        yield from self._batches(["Patient"], PATIENT_COLUMNS, "patients")

    def records(self, table: str) -> Iterator[Batch]:
        kinds = [k for k, t in TABLE_OF.items() if t == table]
        yield from self._batches(kinds, RECORD_COLUMNS[table], table)
        if table == "referrals":  # the last table: report files of unknown resource types
            self._unknown_files()

    def _unknown_files(self) -> None:
        known = set(TABLE_OF) | SUPPORT_TYPES | self.never_read
        for name in sorted((set(self.files) | set(self.unpacked) | self.streamed_types) - known):
            for source, number, line in self._lines_of(name):
                found = FHIR_ID.search(line)
                rid = found.group(1).decode() if found else None
                self._fault(source, number, rid, UNKNOWN_TYPE, name)

    def _medication(self, medication: str) -> str | None:
        if self._medication_codes is None:
            self._medication_codes = {}
            for _, _, rid, m in self._resources("Medication", quiet=True):
                try:
                    self._medication_codes[rid] = read.code(m.get("code"), self.context.dmd, "code")
                except read.Shape:
                    self._medication_codes[rid] = None
        return self._medication_codes.get(medication)

    def _batches(
        self, kinds: list[str], columns: dict[str, pa.DataType], table: str
    ) -> Iterator[Batch]:
        ctx = self.context
        merged = self.merged()
        canonical_row = read.canonical_row
        for kind in kinds:
            rows: list[Row] = []
            positions: list[int] = []
            ids: list[str] = []
            source = ""
            patients = kind == "Patient"
            registrations = kind == "EpisodeOfCare"
            medicines = kind in ("MedicationRequest", "MedicationStatement")
            remap = bool(merged) and not patients
            dated = None if patients else self.spec.tables[table].date
            for file, number, rid, resource in self._resources(kind):
                if file != source and rows:
                    yield self._batch(rows, positions, ids, columns, kind, source)
                    rows, positions, ids = [], [], []
                source = file
                try:
                    row = canonical_row(kind, resource, ctx)
                except read.Shape as shape:
                    self._fault(file, number, rid, WRONG_SHAPE, kind, shape.path)
                    continue
                except Exception:
                    self._fault(file, number, rid, UNREADABLE, kind)
                    continue
                if patients and rid in merged:
                    continue  # the person is the record that replaced this one
                if registrations and not row["_gp"]:
                    self.practice.not_read[NOT_GP_REGISTRATION] = (
                        self.practice.not_read.get(NOT_GP_REGISTRATION, 0) + 1
                    )
                    continue
                subject = row["patient_ref"]
                if type(subject) is read.ByIdentifier:
                    found, verified = self._identified_patient(subject)
                    if found is None or not verified:
                        why = UNRESOLVED if found is None else UNVERIFIED
                        self._fault(file, number, rid, why, kind, subject.path)
                        continue
                    row["patient_ref"] = found
                elif remap:
                    row["patient_ref"] = self._survivor(subject)
                if dated is not None and type(row.get(dated)) is AgeSpan:
                    row[dated] = ages.date_of(row[dated], self._birth(row["patient_ref"]))
                if medicines and row["_medication"] is not None:
                    row["code"] = self._medication(row["_medication"])
                rows.append(row)
                positions.append(number)
                ids.append(rid)
                if len(rows) == BATCH_LINES:
                    yield self._batch(rows, positions, ids, columns, kind, source)
                    rows, positions, ids = [], [], []
            if rows:
                yield self._batch(rows, positions, ids, columns, kind, source)

    def _batch(
        self,
        rows: list[Row],
        positions: list[int],
        ids: list[str],
        columns: dict[str, pa.DataType],
        kind: str,
        source: str,
    ) -> Batch:
        patients = kind == "Patient"
        out: dict[str, pa.Array] = {
            "_row": pa.array(positions, pa.int64()),
            "_key": pa.array([hash(i) for i in ids], pa.int64()),
            "record_id": pa.array(ids, pa.string()),
            "patient_ref": pa.array([r.get("patient_ref") for r in rows], pa.string()),
        }
        if not patients:
            out["staff_ref"] = pa.array([r.get("staff_ref") for r in rows], pa.string())
        bad = pa.array([False] * len(rows), pa.bool_())
        path: pa.Array | None = None
        forms = None if patients else _date_forms(rows, self.spec.tables[TABLE_OF[kind]].date)
        for name, kind_type in columns.items():
            given = [r.get(name) for r in rows]
            if kind_type == DATE and not patients:
                text = _text(given)
                array, flags = _dates(given, text)
                out[f"{name}_precision"] = _precision(text, array)
            elif name in PARTIAL_TIMES:
                array, flags = _times(given)
                out[f"{name}_precision"] = _precision(_text(given), array)
            else:
                array, flags = _typed(given, kind_type)
            out[name] = array
            if flags is not None and pc.any(flags).as_py():
                where = DATE_PATHS.get((kind, name), f"{kind}.meta.lastUpdated")
                here = pa.scalar(where, pa.string())
                if path is None:
                    path = pa.nulls(len(rows), pa.string())
                path = pc.if_else(pc.and_(flags, pc.is_null(path)), here, path)
                bad = pc.or_(bad, flags)
        out["_bad_date"] = bad
        dated = self.spec.tables[TABLE_OF[kind]].date if kind in DATED_BY_RECORDING else None
        if dated is not None:
            out[RECORDED_ONLY] = pc.and_(pc.is_null(out[dated]), pc.is_valid(out["recorded_at"]))
        if forms is not None:
            out["_date_form"] = pc.is_valid(forms)
            path = forms if path is None else pc.coalesce(path, forms)
        out["_path"] = path if path is not None else pa.nulls(len(rows), pa.string())
        if patients:
            for name in ("_date_of_birth_precision", "_date_of_death_precision"):
                out[name] = pa.array([r.get(name) for r in rows], pa.int8())
            ethnic = [r.get("ethnic_category") for r in rows]
            out["ethnic_category"] = pa.array(
                [e if isinstance(e, str) else None for e in ethnic], pa.string()
            )
        return Batch(pa.table(out), source, kind)

    def opt_out_events(self, codes: set[str]) -> pa.Table:
        """Every entry with an opt-out code, as an Observation, Condition, Procedure, Consent or
        Flag, in any coding position and under any spelling of SNOMED CT. A dissent whose date
        is given only to the year or month counts from the end of that period, a withdrawal
        from its start, so that where it is unclear which came last, the dissent stands."""
        needles = [c.encode() for c in codes]
        wanted = frozenset(codes)
        dissent = self.spec.dissent_codes()

        def mentions(line: bytes) -> bool:
            return any(n in line for n in needles)

        rows: list[Row] = []
        for kind in read.OPT_OUT_TYPES:
            for source, number, rid, resource in self._resources(kind, keep=mentions):
                found = read.opt_out_codes(resource, wanted, self.context.snomed)
                if not found:
                    continue
                subject = self._resolved(read.opt_out_subject(kind, resource))
                if type(subject) is read.ByIdentifier:
                    if kind in ("Consent", "Flag"):  # the others are quarantined when read
                        self._fault(source, number, rid, UNRESOLVED, kind, subject.path)
                    continue
                effective, recorded = read.opt_out_date(kind, resource)
                in_force = read.opt_out_status(kind, resource, self.context.extracted_on)
                meta = resource.get("meta")
                for code in sorted(found):
                    is_dissent = code in dissent
                    day, unclear = _opt_out_day(effective, latest=is_dissent)
                    rows.append(
                        {
                            "patient_ref": subject,
                            "code": code,
                            "effective_date": day,
                            "recorded_at": recorded if isinstance(recorded, str) else None,
                            "status": in_force,
                            "last_modified": meta.get("lastUpdated")
                            if isinstance(meta, dict)
                            else None,
                            "_unclear": unclear,
                        }
                    )
        recorded_at, bad_recorded = _times([r["recorded_at"] for r in rows])
        modified, bad_modified = _times([r["last_modified"] for r in rows])
        unclear = pa.array([r["_unclear"] for r in rows], pa.bool_())
        return pa.table(
            {
                "patient_ref": pa.array([r["patient_ref"] for r in rows], pa.string()),
                "code": pa.array([r["code"] for r in rows], pa.string()),
                "effective_date": pa.array([r["effective_date"] for r in rows], DATE),
                "recorded_at": recorded_at,
                "status": pa.array([r["status"] for r in rows], pa.string()),
                "last_modified": modified,
                "_bad_date": pc.or_(pc.or_(unclear, bad_recorded), bad_modified),
            }
        )

    def faults(self) -> list[ReaderFault]:
        self._check_counts()
        out, self._faults = self._faults, []
        return out

    def _check_counts(self) -> None:
        """The manifest's count of each file against the lines read from it: a file cut short
        (or added to) after the export finished is refused, not half read."""
        for path, count in getattr(self, "_expected", {}).items():
            read_here = self._lines_read.get(path)
            if read_here is None:
                read_here = self._count_lines(path)
            if read_here != count:
                raise UserError(
                    f"{path} holds {read_here:,} resources but {MANIFEST} says {count:,}: the "
                    "file changed after the export; ask the supplier for the export again"
                )


def _date_forms(rows: list[Row], column: str | None) -> pa.Array | None:
    """Where a row's date was given only in words or as an age too vague for a month or year:
    the element's path (the date itself left empty), or None where no row's was."""
    if column is None:
        return None
    found = [r.get(column) for r in rows]
    if not any(type(v) is Uncollected for v in found):
        return None
    for r in rows:
        if type(r.get(column)) is Uncollected:
            r[column] = None
    return pa.array([v.path if type(v) is Uncollected else None for v in found], pa.string())


def _opt_out_day(value: Any, latest: bool) -> tuple[date | None, bool]:
    """(the day an opt-out entry counts from, whether it is unclear). A partial date counts
    from the last day of its period for a dissent and the first for a withdrawal."""
    if not isinstance(value, str) or len(value) < 4:
        return None, True
    try:
        if len(value) == 4:
            year = int(value)
            return (date(year, 12, 31) if latest else date(year, 1, 1)), False
        if len(value) == 7:
            year, month = int(value[:4]), int(value[5:7])
            if latest:
                following = date(year + month // 12, month % 12 + 1, 1)
                return date.fromordinal(following.toordinal() - 1), False
            return date(year, month, 1), False
        return date.fromisoformat(value[:10]), False
    except ValueError:
        return None, True


def _list(value: Any) -> list[Any]:
    """A list element of a support resource, or nothing when it has another shape: a staff
    member or an organisation of the wrong shape is not one the records can name."""
    return value if isinstance(value, list) else []
