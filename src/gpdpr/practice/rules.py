"""The specification applied to canonical batches: quarantine, exclusions, pseudonyms, coarsening.

Everything here works on whole Arrow / numpy columns, so the same rules run at the same speed on
either reader's output. Each row gets one outcome, decided in a fixed order (the first that
applies wins):

  quarantine  unreadable date, no subject, subject not registered here, duplicate record id
  excluded    the patient has an active Type 1 opt-out (their faulty records are not reported
              either: a Type 1 patient contributes nothing, not even problems)
  quarantine  invalid code, missing or implausible date
  excluded    entered in error or otherwise not a fact (refuted, not done, cancelled, a draft or
              a proposal: the specification's [facts]), an opt-out code itself, a restricted or
              uncollected sensitive code, older than the retention cut-off
  kept        everything else, projected onto exactly the specification's fields, each field
              held to its allowlist (a value outside it becomes `other` or null, and is counted):
              a text field to its kind, a number, date or time to its range, the one table of
              them the centre holds packages to (gpdpr.practice.ranges)

Record ids leave as keyed pseudonyms; only the quarantine file, which stays at the practice, names
a record by the id the practice's system gave it.

In an incremental extract only rows changed since the watermark are considered (plus every row of
a patient whose opt-out was withdrawn since: the centre erased them and needs them again); a
changed row that is now excluded becomes a deletion, so the centre removes its earlier copy.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache, cached_property
from importlib import resources

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.dictionaries import used_only
from gpdpr.errors import UserError
from gpdpr.practice.pseudonyms import Pseudonymiser, normalise_postcode
from gpdpr.practice.ranges import EARLIEST, EARLIEST_BIRTH, Ranges, Rule, outside, ranges
from gpdpr.practice.source import CODE_SYSTEMS, DATE, RECORD_COLUMNS, Batch, Staff
from gpdpr.spec import Field, Specification, Table
from gpdpr.terminology import Status, classify_all, store

ENTERED_IN_ERROR = "entered-in-error"
# The status a reader gives an opt-out entry that no longer records a decision (an inactive
# Consent or Flag): it is not counted, as an entry in error is not.
NOT_IN_FORCE = "not-in-force"
# A date field's companion saying how much of it was recorded: year, month or day.
PRECISION = "_precision"
# Times a source may give only to the year or month (a FHIR dateTime), so they have one too.
PARTIAL_TIMES = frozenset({"recorded_at"})
# A batch column (FHIR only) marking rows with no clinical date that say when they were entered
# into the record: sent undated, their recorded time checked for plausibility instead.
RECORDED_ONLY = "_recorded_only"

# Outcomes, in the order they are decided.
KEPT = 0
BAD_DATE, NO_SUBJECT, UNKNOWN_SUBJECT, DUPLICATE = 1, 2, 3, 4
TYPE1 = 5
UNKNOWN_CODE, MISSING_DATE, IMPLAUSIBLE_DATE = 6, 7, 8
IN_ERROR, OPT_OUT_CODE, CODE_SET, RETENTION, NOT_A_FACT = 9, 10, 11, 12, 13
DATE_FORM = 14  # decided with MISSING_DATE, which it comes before
NOT_A_FACT_STATUS = (
    "not-a-fact"  # the status a reader gives an entry its record says did not happen
)
QUARANTINE = {BAD_DATE, NO_SUBJECT, UNKNOWN_SUBJECT, DUPLICATE, UNKNOWN_CODE, MISSING_DATE}
QUARANTINE |= {IMPLAUSIBLE_DATE, DATE_FORM}
REASONS = {
    BAD_DATE: "a date or time that cannot be read",
    NO_SUBJECT: "no patient (subject) given",
    UNKNOWN_SUBJECT: "patient not registered at this practice",
    DUPLICATE: "duplicate record id (the first is kept)",
    UNKNOWN_CODE: "code missing or not a valid SNOMED CT identifier",
    MISSING_DATE: "no date",
    DATE_FORM: "a date given only in words, or as an age that falls in no one month or year",
    IMPLAUSIBLE_DATE: "implausible date (before birth, before 1900 or after the extract)",
}
EXCLUSIONS = {
    TYPE1: "type1_opt_out",
    IN_ERROR: "entered_in_error",
    OPT_OUT_CODE: "opt_out_code",
    RETENTION: "older_than_retention",
    NOT_A_FACT: "not_a_fact",
}
DELETE_WHEN_CHANGED = {IN_ERROR, OPT_OUT_CODE, CODE_SET, RETENTION, NOT_A_FACT}
PSEUDONYM_SHAPE = r"^[0-9a-f]{64}$"
CODE_SHAPE = r"^[0-9]{6,18}$"  # a SNOMED CT (and so dm+d) identifier
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Window:
    extracted_at: datetime  # the end of the window: when the supplier took the extract
    since: datetime | None  # the watermark of an incremental extract
    retention_from: date  # records of the retention tables dated before this are not collected

    @property
    def kind(self) -> str:
        return "historic" if self.since is None else "incremental"


def window_for(spec: Specification, extracted_at: datetime, since: datetime | None) -> Window:
    end = extracted_at.date()
    try:
        start = end.replace(year=end.year - spec.retention_years)
    except ValueError:  # 29 February
        start = end.replace(year=end.year - spec.retention_years, day=28)
    if since is not None and since >= extracted_at:
        raise UserError(
            f"the watermark {since.isoformat()} is not before this extract "
            f"({extracted_at.isoformat()}): there is nothing newer to send"
        )
    return Window(extracted_at, since, start)


@dataclass
class Tally:
    """What happened to every row: the manifest's counts."""

    written: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    excluded_by_table: dict[str, Counter[str]] = field(default_factory=dict)
    unchanged: Counter[str] = field(default_factory=Counter)
    replaced: Counter[str] = field(
        default_factory=Counter
    )  # "table.field" -> values outside its allowlist
    not_in_release: Counter[str] = field(
        default_factory=Counter
    )  # table -> rows sent with a valid code the loaded terminology release does not know

    def exclude(self, table: str, reason: str, n: int) -> None:
        if n:
            self.excluded[reason] += n
            self.excluded_by_table.setdefault(table, Counter())[reason] += n


@dataclass
class Quarantined:
    """One record held back, for the practice's quarantine file. `reason` is one of a closed set
    (only reasons reach the manifest); the rest says where, and stays at the practice."""

    source: str
    position: int
    record_id: str | None
    reason: str
    resource_type: str | None = None
    id_pseudonym: str | None = None
    path: str | None = None


class SeenIds:
    """Record ids met so far in one table (as int64 keys), to quarantine repeats. Kept sorted;
    each batch is merged in (a stable sort of two sorted runs is a linear merge)."""

    def __init__(self) -> None:
        self.seen = np.empty(0, np.int64)

    def repeats(self, keys: npt.NDArray[np.int64]) -> BoolArray:
        n = len(keys)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        later = np.zeros(n, bool)
        later[1:] = ordered[1:] == ordered[:-1]
        repeat = np.empty(n, bool)
        repeat[order] = later
        if self.seen.size:
            pos = np.minimum(np.searchsorted(self.seen, keys), self.seen.size - 1)
            repeat |= self.seen[pos] == keys
        self.seen = np.sort(np.concatenate([self.seen, ordered[~later]]), kind="stable")
        return repeat


# ---- the spec's field types as Arrow types ---------------------------------------------------

ARROW_TYPES: dict[str, pa.DataType] = {
    "pseudonym": pa.string(),
    "string": pa.string(),
    "code": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("ms", tz="UTC"),  # Parquet has no seconds unit
    "int": pa.int32(),
    "float": pa.float64(),
    "bool": pa.bool_(),
}
PATIENT_FIELDS = {
    "patient",
    "linkable",
    "sex",
    "ethnic_category",
    "birth_year",
    "birth_month",
    "death_year",
    "death_month",
    "lsoa_code",
    "region_code",
    "imd_decile",
    "postcode_key",
    "last_modified",
}


def package_schema(table: Table) -> pa.Schema:
    """A package table's schema, as any Parquet reader sees it."""
    return pa.schema([(f.name, ARROW_TYPES[f.type]) for f in table.fields])


TEXT = pa.dictionary(pa.int32(), pa.string())


def writing_schema(table: Table) -> pa.Schema:
    """The same, with pseudonyms handed to the Parquet writer already dictionary-encoded: each
    patient's 64-character code is stored once per row group, and the writer need not hash
    millions of long strings to find that out. Repetitive text (codes, statuses) likewise.
    (Readers see plain strings.)"""
    return pa.schema([(f.name, _writing_type(f)) for f in table.fields])


def _writing_type(field: Field) -> pa.DataType:
    # Record ids are all different: a dictionary would only get in the way.
    if field.type in ("pseudonym", "code", "string") and field.name != "record_id":
        return TEXT
    return ARROW_TYPES[field.type]


def check_supported(spec: Specification) -> None:
    """Every field the specification asks for must be one the extractor can make; a field it
    cannot make is an error, never a silently empty column."""
    for name, table in spec.tables.items():
        if name == "patients":
            makeable = PATIENT_FIELDS
        elif name == "staff":
            makeable = {"staff", "role"}
        elif name in RECORD_COLUMNS:
            columns = RECORD_COLUMNS[name]
            dates = {
                f"{c}{PRECISION}"
                for c, kind in columns.items()
                if kind == DATE or c in PARTIAL_TIMES
            }
            makeable = {"record_id", "patient", "staff", *columns, *dates}
        else:
            raise UserError(f"{spec.source}: the extractor has no source for table {name!r}")
        unknown = [f for f in table.field_names if f not in makeable]
        if unknown:
            raise UserError(
                f"{spec.source}: the extractor cannot make field(s) {', '.join(unknown)} "
                f"of table {name!r}"
            )


# ---- people -----------------------------------------------------------------------------------


@dataclass
class Geography:
    """Postcode -> small area, region and deprivation decile, from the lookup the spec names."""

    areas: dict[str, tuple[str, str, int]]

    @property
    def deciles(self) -> set[int]:
        """The deprivation deciles the lookup holds."""
        return {area[2] for area in self.areas.values()}

    @classmethod
    def load(cls, spec: Specification) -> Geography:
        return _geography(spec.raw["coarsening"]["postcode"]["lookup"], spec.source)


@cache
def _geography(lookup: str, source: str) -> Geography:
    """Read once per process: a supplier extracting many practices needs it only once."""
    package, _, name = lookup.partition("/")
    try:
        text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        raise UserError(f"{source}: the postcode lookup {lookup!r} cannot be read") from None
    areas = {
        normalise_postcode(r["postcode"]): (r["lsoa_code"], r["region_code"], int(r["imd_decile"]))
        for r in csv.DictReader(text.splitlines())
    }
    return Geography(areas)


@dataclass
class OptOuts:
    """Each patient's Type 1 status, from their latest opt-out code."""

    active: set[object]  # latest code is a dissent: contributes nothing
    withdrawn: set[object]  # latest code is a withdrawal
    restored_since: set[object]  # withdrawn after the watermark: send everything again


def opt_outs(events: pa.Table, spec: Specification, since: datetime | None) -> OptOuts:
    """The latest opt-out code per patient decides. An entry entered in error does not count.
    Where the record is unclear, the dissent stands: a dissent whose date cannot be read counts
    as the latest, a withdrawal whose date cannot be read does not count, and a dissent and a
    withdrawal at the same moment leave the patient opted out. An entry no longer in force (an
    inactive Consent or Flag) does not count either."""
    dissent = spec.dissent_codes()
    latest: dict[object, tuple[tuple[date, datetime, bool], str, datetime | None]] = {}
    for e in events.to_pylist():
        if e["status"] in (ENTERED_IN_ERROR, NOT_IN_FORCE) or e["patient_ref"] is None:
            continue
        is_dissent = e["code"] in dissent
        unclear = e["_bad_date"] or e["effective_date"] is None
        if unclear and not is_dissent:
            continue
        when = date.max if unclear else e["effective_date"]
        order = (when, e["recorded_at"] or datetime.min, is_dissent)
        ref = e["patient_ref"]
        if ref not in latest or order > latest[ref][0]:
            latest[ref] = (order, e["code"], e["last_modified"])
    active = {ref for ref, (_, code, _) in latest.items() if code in dissent}
    withdrawn = set(latest) - active
    restored: set[object] = set()
    if since is not None:
        for ref in withdrawn:
            modified = latest[ref][2]
            if modified is None or modified > since:
                restored.add(ref)
    return OptOuts(active, withdrawn, restored)


@dataclass
class PatientIndex:
    """The practice's patients in row order: their refs (to look records up by), pseudonyms,
    dates of birth (for plausibility), and Type 1 state."""

    refs: pa.Array
    pseudonyms: pa.Array
    birth: pa.Array
    type1: BoolArray
    resend: BoolArray

    @cached_property
    def birth_days(self) -> npt.NDArray[np.int32]:
        return _days(self.birth)

    def positions(self, refs: pa.Array) -> pa.Array:
        return pc.index_in(refs, value_set=self.refs)


@dataclass
class StaffIndex:
    refs: pa.Array
    pseudonyms: pa.Array
    roles: pa.Array

    @classmethod
    def build(cls, staff: Staff, pseudonymiser: Pseudonymiser) -> StaffIndex:
        pseudonyms = [
            pseudonymiser.staff(sds, ref)
            for ref, sds in zip(staff.refs, staff.sds_user_ids, strict=True)
        ]
        return cls(pa.array(staff.refs), pa.array(pseudonyms, pa.string()), pa.array(staff.roles))

    def table(self, spec_table: Table, replaced: Counter[str]) -> pa.Table:
        columns = {"staff": self.pseudonyms, "role": self.roles.cast(pa.string())}
        return project(spec_table, columns, replaced)


# ---- the rules --------------------------------------------------------------------------------


class Rules:
    def __init__(
        self,
        spec: Specification,
        window: Window,
        pseudonymiser: Pseudonymiser,
        tally: Tally,
        quarantine: list[Quarantined],
        resend: frozenset[str] = frozenset(),
    ) -> None:
        self.spec = spec
        self.resend_asked = resend  # pseudonyms the centre asks to have in full again
        self.resent_on_request = 0
        self.window = window
        self.pseudonymiser = pseudonymiser
        self.tally = tally
        self.quarantine = quarantine
        self.release = store.active()
        self.ranges: Ranges = ranges(spec, Geography.load(spec).deciles)
        excluded = spec.excluded_codes()
        self.set_codes = pa.array(list(excluded), pa.string())
        self.set_names = np.array(list(excluded.values()) or [""], dtype=object)
        self.set_rules = {n: s.rule for n, s in spec.code_sets.items()}
        self.opt_out_codes = pa.array(
            sorted(spec.dissent_codes() | spec.withdrawal_codes()), pa.string()
        )
        self.deletions: list[tuple[str, str]] = []
        # Patients with a registration current at the extract: the manifest says which of its
        # Type 1 statements are about them, since the centre heeds no other (a dissenter's
        # registration rows are withheld with the rest of their record).
        self.registered: set[str] = set()
        self._seen: dict[str, SeenIds] = {}
        self._precisions = {
            name: [f.name for f in t.fields if f.name.endswith(PRECISION)]
            for name, t in spec.tables.items()
        }

    # ---- patients ------------------------------------------------------------------------------

    def patients(
        self, batches: list[Batch], opt: OptOuts, geography: Geography
    ) -> tuple[PatientIndex, pa.Table, list[str], list[str]]:
        """The patient index, the patients table to write, and the pseudonyms of patients with
        an active and a withdrawn Type 1 opt-out (for the manifest)."""
        good: list[pa.Table] = []
        for batch in batches:
            t = batch.table
            n = t.num_rows
            outcome = np.zeros(n, np.int8)
            repeat = self._seen.setdefault("patients", SeenIds()).repeats(t["_key"].to_numpy())
            birth = t["date_of_birth"]
            too_late = pc.fill_null(pc.greater(birth, self.window.extracted_at.date()), False)
            too_early = pc.fill_null(pc.less(birth, EARLIEST_BIRTH), False)
            _first(outcome, t["_bad_date"].to_numpy(zero_copy_only=False), BAD_DATE)
            _first(outcome, repeat, DUPLICATE)
            _first(outcome, _np(pc.or_(too_late, too_early)), IMPLAUSIBLE_DATE)
            self._report("patients", batch, outcome, np.ones(n, bool))
            good.append(t.filter(pa.array(outcome == KEPT)))
        people = pa.concat_tables(good) if good else None
        if people is None or people.num_rows == 0:
            raise UserError("the practice has no readable patient records: nothing to extract")

        refs = people["patient_ref"].combine_chunks()
        ref_list = refs.to_pylist()
        made, linkable = self.pseudonymiser.patients(people["nhs_number"], ref_list)
        pseudonyms = pa.array(made, pa.string())
        type1 = np.array([r in opt.active for r in ref_list], bool)
        resend = np.array([r in opt.restored_since for r in ref_list], bool)
        if self.resend_asked:
            asked = np.array([p in self.resend_asked for p in made], bool) & ~type1
            self.resent_on_request = int(asked.sum())
            resend |= asked
        index = PatientIndex(
            refs, pseudonyms, people["date_of_birth"].combine_chunks(), type1, resend
        )

        considered = self._changed(people["last_modified"].combine_chunks(), resend)
        self.tally.exclude("patients", "type1_opt_out", int((considered & type1).sum()))
        self.tally.unchanged["patients"] += int((~considered).sum())
        keep = considered & ~type1
        table = self._patient_table(people, pseudonyms, linkable, keep, geography)
        active = sorted(p for p, t in zip(made, type1.tolist(), strict=True) if t)
        withdrawn = sorted(p for p, r in zip(made, ref_list, strict=True) if r in opt.withdrawn)
        return index, table, active, withdrawn

    def _patient_table(
        self,
        people: pa.Table,
        pseudonyms: pa.Array,
        linkable: BoolArray,
        keep: BoolArray,
        geography: Geography,
    ) -> pa.Table:
        mask = pa.array(keep)
        kept = people.filter(mask)
        postcodes = kept["postcode"].to_pylist()
        areas = [geography.areas.get(normalise_postcode(p)) if p else None for p in postcodes]
        birth, death = kept["date_of_birth"], kept["date_of_death"]
        columns = {
            "patient": pseudonyms.filter(mask),
            "linkable": pa.array(linkable[keep]),
            "sex": kept["sex"],
            "ethnic_category": kept["ethnic_category"]
            if "ethnic_category" in kept.column_names
            else pa.nulls(kept.num_rows, pa.string()),
            "birth_year": pc.year(birth),
            "birth_month": _month(kept, "date_of_birth"),
            "death_year": pc.year(death),
            "death_month": _month(kept, "date_of_death"),
            "lsoa_code": pa.array([a[0] if a else None for a in areas], pa.string()),
            "region_code": pa.array([a[1] if a else None for a in areas], pa.string()),
            "imd_decile": pa.array([a[2] if a else None for a in areas], pa.int32()),
            "postcode_key": pa.array(self.pseudonymiser.postcodes(postcodes), pa.string()),
            "last_modified": kept["last_modified"],
        }
        return self._project("patients", columns)

    # ---- records -------------------------------------------------------------------------------

    def records(self, table: str, batch: Batch, index: PatientIndex, staff: StaffIndex) -> pa.Table:
        """The rows of one batch that leave the practice, in the specification's shape."""
        t = batch.table
        n = t.num_rows
        spec_table = self.spec.tables[table]
        outcome = np.zeros(n, np.int8)

        position = index.positions(t["patient_ref"])
        registered = _np(pc.is_valid(position))
        where = position.fill_null(0).to_numpy(zero_copy_only=False)
        has_subject = _np(pc.is_valid(t["patient_ref"]))
        repeat = self._seen.setdefault(table, SeenIds()).repeats(t["_key"].to_numpy())

        _first(outcome, t["_bad_date"].to_numpy(zero_copy_only=False), BAD_DATE)
        _first(outcome, ~has_subject, NO_SUBJECT)
        _first(outcome, ~registered, UNKNOWN_SUBJECT)
        _first(outcome, repeat, DUPLICATE)
        _first(outcome, registered & index.type1[where], TYPE1)
        if table == "registrations":
            self._note_registered(t, registered, index, position)

        set_hit = np.zeros(n, bool)
        set_which = np.zeros(n, np.int64)
        opt_out_code = np.zeros(n, bool)
        not_in_release = np.zeros(n, bool)
        # A code given must be a valid identifier (one the release does not know is still sent,
        # and counted); a table with two code columns (a vaccination's procedure
        # and product) needs one of them, as real records often carry only the product.
        any_code = np.zeros(n, bool)
        coded = [(c, s) for (owner, c), s in CODE_SYSTEMS.items() if owner == table]
        for column, _ in coded:
            any_code |= _np(pc.is_valid(t[column]))
        if coded:
            _first(outcome, ~any_code, UNKNOWN_CODE)
        for column, system in coded:
            codes = t[column]
            status = classify_all(system, codes)
            _first(outcome, status == Status.INVALID, UNKNOWN_CODE)
            not_in_release |= status == Status.NOT_IN_RELEASE
            opt_out_code |= _np(pc.is_in(codes, value_set=self.opt_out_codes))
            found = pc.index_in(codes, value_set=self.set_codes)
            hit = _np(pc.is_valid(found))
            set_which = np.where(hit & ~set_hit, found.fill_null(0).to_numpy(), set_which)
            set_hit |= hit

        if spec_table.date is not None:
            when = t[spec_table.date]
            day = when.cast(pa.date32()) if pa.types.is_timestamp(when.type) else when
            if "_date_form" in t.column_names:
                _first(outcome, _np(t["_date_form"]), DATE_FORM)
            missing = ~_np(pc.is_valid(day))
            recorded_only = _np(t[RECORDED_ONLY]) if RECORDED_ONLY in t.column_names else None
            if recorded_only is not None and table not in self.spec.retention_tables:
                missing &= ~recorded_only
                recorded = t["recorded_at"].cast(pa.date32())
                late = self._implausible(
                    table, t, recorded, index, where, registered, "recorded_at"
                )
                _first(outcome, recorded_only & late, IMPLAUSIBLE_DATE)
            _first(outcome, missing, MISSING_DATE)
            _first(
                outcome,
                self._implausible(table, t, day, index, where, registered),
                IMPLAUSIBLE_DATE,
            )

        _first(outcome, _np(pc.equal(t["status"], ENTERED_IN_ERROR)), IN_ERROR)
        _first(outcome, _np(pc.equal(t["status"], NOT_A_FACT_STATUS)), NOT_A_FACT)
        _first(outcome, opt_out_code, OPT_OUT_CODE)
        _first(outcome, set_hit, CODE_SET)
        if table in self.spec.retention_tables and spec_table.date is not None:
            old = _np(pc.less(day, self.window.retention_from))
            _first(outcome, old, RETENTION)

        considered = self._changed(t["last_modified"], registered & index.resend[where])
        self._report(table, batch, outcome, considered)
        self._count(table, outcome, considered, set_which)
        sent_unknown = int((considered & (outcome == KEPT) & not_in_release).sum())
        if sent_unknown:
            self.tally.not_in_release[table] += sent_unknown
        if self.window.since is not None:
            gone = considered & np.isin(outcome, list(DELETE_WHEN_CHANGED))
            ids = t["record_id"].filter(pa.array(gone)).to_pylist()
            self.deletions.extend((table, i) for i in self.pseudonymiser.records(table, ids))
        keep = pa.array(considered & (outcome == KEPT))
        kept = t.filter(keep)
        columns: dict[str, pa.Array | pa.ChunkedArray] = {
            name: kept[name] for name in kept.column_names if not name.startswith("_")
        }
        columns["record_id"] = pa.array(
            self.pseudonymiser.records(table, kept["record_id"].to_pylist()), pa.string()
        )
        columns["patient"] = _encode(index.pseudonyms, position.filter(keep))
        for name in self._precisions.get(table, ()):
            if name not in columns:  # a reader that gives whole dates only: the day, if any
                day = columns[name.removesuffix(PRECISION)]
                columns[name] = pc.if_else(pc.is_valid(day), "day", pa.scalar(None, pa.string()))
        if "staff_ref" in kept.column_names:
            columns["staff"] = _encode(staff.pseudonyms, staff_positions(staff, kept["staff_ref"]))
        return self._project(table, columns)

    def _note_registered(
        self,
        t: pa.Table,
        known: BoolArray,
        index: PatientIndex,
        position: pa.Array | pa.ChunkedArray,
    ) -> None:
        """Remember who these registration rows show registered on the extract's day: begun by
        then and not ended by then, a date missing or unreadable counting as registered (where
        it is unclear, a dissent is heard). The whole table is read, changed or not, so an
        incremental extract knows it too."""
        day = pa.scalar(self.window.extracted_at.date(), pa.date32())
        begun = pc.fill_null(pc.less_equal(t["start_date"], day), True)
        not_ended = pc.fill_null(pc.greater(t["end_date"], day), True)
        in_force = pc.fill_null(pc.not_equal(t["status"], ENTERED_IN_ERROR), True)
        current = _np(pc.and_(pc.and_(begun, not_ended), in_force))
        current &= known
        if current.any():
            picked = position.filter(pa.array(current))
            self.registered.update(pc.take(index.pseudonyms, picked).to_pylist())

    def table_done(self, table: str) -> None:
        """Forget the table's record ids: duplicates are found within a table, so the memory
        they take is held for one table at a time."""
        self._seen.pop(table, None)

    def _implausible(
        self,
        table: str,
        t: pa.Table,
        day: pa.ChunkedArray,
        index: PatientIndex,
        where: npt.NDArray[np.int64],
        registered: BoolArray,
        column: str | None = None,
    ) -> BoolArray:
        """Before 1900, before the patient was born, or after the latest day its range allows
        (except appointments booked for the days ahead): the table's date, or `column`'s."""
        values = _days(day)
        birth = index.birth_days[where]
        early = values < _day_number(EARLIEST)
        # A date known only to its year or month is stored as its first day: it is before the
        # birth only if the whole of that year or month is.
        column = column or self.spec.tables[table].date
        latest = _last_days(values, t, f"{column}{PRECISION}")
        before_birth = registered & (birth != _NO_DAY) & (latest < birth)
        # As late as the field's range (gpdpr.practice.ranges) lets it be: the extract's day,
        # or for a time the GP system stamps a day after; a booked appointment any day ahead.
        rule = self.ranges[table].get(str(column), Rule("date"))
        latest_allowed = self.window.extracted_at.date() + rule.after
        future = values > _day_number(latest_allowed)
        if rule.booked is not None:
            future &= ~_np(pc.equal(t[rule.booked[0]], rule.booked[1]))
        implausible: BoolArray = (values != _NO_DAY) & (early | before_birth | future)
        return implausible

    def _changed(self, last_modified: pa.Array | pa.ChunkedArray, resend: BoolArray) -> BoolArray:
        if self.window.since is None:
            return np.ones(len(last_modified), bool)
        newer = pc.fill_null(
            pc.greater(last_modified, pa.scalar(self.window.since, pa.timestamp("s"))), True
        )
        return _np(newer) | resend

    def _report(
        self, table: str, batch: Batch, outcome: npt.NDArray[np.int8], considered: BoolArray
    ) -> None:
        bad = np.flatnonzero(considered & np.isin(outcome, list(QUARANTINE)))
        if not bad.size:
            return
        t = batch.table
        rows = t["_row"].to_numpy()[bad]
        picked = pa.array(bad)
        ids = t["record_id"].take(picked).to_pylist()
        names = self.pseudonymiser.records(table, ids)
        paths = (
            t["_path"].take(picked).to_pylist() if "_path" in t.column_names else [None] * len(ids)
        )
        for row, rid, name, path, code in zip(
            rows.tolist(), ids, names, paths, outcome[bad].tolist(), strict=True
        ):
            reason = REASONS[code]
            self.quarantine.append(
                Quarantined(batch.source, row, str(rid), reason, batch.kind, name, path)
            )

    def _count(
        self,
        table: str,
        outcome: npt.NDArray[np.int8],
        considered: BoolArray,
        set_which: npt.NDArray[np.int64],
    ) -> None:
        self.tally.unchanged[table] += int((~considered).sum())
        looked = outcome[considered]
        for code, reason in EXCLUSIONS.items():
            self.tally.exclude(table, reason, int((looked == code).sum()))
        in_set = considered & (outcome == CODE_SET)
        if in_set.any():
            names, counts = np.unique(self.set_names[set_which[in_set]], return_counts=True)
            for name, count in zip(names.tolist(), counts.tolist(), strict=True):
                self.tally.exclude(table, f"{self.set_rules[name]}_code:{name}", count)

    def _project(self, table: str, columns: dict[str, pa.Array | pa.ChunkedArray]) -> pa.Table:
        spec_table = self.spec.tables[table]
        held = hold(spec_table, columns, self.ranges[table], self.window, self.tally.replaced)
        return project(spec_table, held, self.tally.replaced)


def hold(
    spec_table: Table,
    columns: dict[str, pa.Array | pa.ChunkedArray],
    rules: dict[str, Rule],
    window: Window,
    replaced: Counter[str],
) -> dict[str, pa.Array | pa.ChunkedArray]:
    """Each number, date and time column held to its range (gpdpr.practice.ranges), as the
    centre will hold it: a value outside becomes null, and is counted as a text value outside
    its vocabulary is; a year's month goes with it. A table's own date was held before, by
    quarantine (`_implausible`) and the retention cut-off, to the same range: were one outside
    here, it would leave null too, never as it was."""
    held = dict(columns)
    types = {f.name: ARROW_TYPES[f.type] for f in spec_table.fields}
    for name, rule in rules.items():
        values = _whole(_cast(held[name], types[name]))
        beside = _whole(held[rule.booked[0]]).cast(pa.string()) if rule.booked else None
        masks = outside(values, rule, window.extracted_at.date(), window.retention_from, beside)
        held[name] = values
        if not masks:
            continue
        out = masks.popitem()[1]
        for mask in masks.values():
            out = pc.or_(out, mask)
        replaced[f"{spec_table.name}.{name}"] += int(pc.sum(out).as_py() or 0)
        for emptied in (name, rule.month):
            if emptied is not None:
                column = _whole(_cast(held[emptied], types[emptied]))
                held[emptied] = pc.if_else(out, pa.scalar(None, column.type), column)
    return held


def project(
    spec_table: Table, columns: dict[str, pa.Array | pa.ChunkedArray], replaced: Counter[str]
) -> pa.Table:
    """Exactly the specification's fields, in its order and types, each held to its allowlist:
    nothing else can leave. Dates, times, numbers and flags are held by their Arrow types; text
    fields by `allowed`."""
    schema = writing_schema(spec_table)
    out = {}
    for spec_field, arrow_field in zip(spec_table.fields, schema, strict=True):
        values = columns[spec_field.name]
        if spec_field.type == "code" and pa.types.is_dictionary(values.type):
            # The source's dictionary names every code it held, those left out too.
            values = used_only(values)
        if pa.types.is_string(values.type) or pa.types.is_dictionary(values.type):
            values, n = allowed(spec_field, values)
            if n:
                replaced[f"{spec_table.name}.{spec_field.name}"] += n
        out[spec_field.name] = _cast(values, arrow_field.type)
    return pa.table(out, schema=schema)


def allowed(
    spec_field: Field, values: pa.Array | pa.ChunkedArray
) -> tuple[pa.Array | pa.ChunkedArray, int]:
    """A text column held to its field's kind: (the values, how many were replaced). A value
    outside the kind becomes the vocabulary's `other`, or null; it is never copied."""
    if spec_field.lookup is not None:  # drawn from the shipped postcode lookup, nothing else
        return values, 0
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    plain = values.dictionary if isinstance(values, pa.DictionaryArray) else values
    if spec_field.kind == "vocabulary":
        ok = pc.is_in(plain, value_set=pa.array(spec_field.values, pa.string()))
    elif spec_field.kind == "pseudonym":
        ok = pc.match_substring_regex(plain, PSEUDONYM_SHAPE)
    elif spec_field.type == "code":
        # Membership of the system's release is checked before (unknown codes are quarantined);
        # here only the shape of an identifier may pass.
        ok = pc.match_substring_regex(plain, CODE_SHAPE)
    else:
        raise UserError(f"field {spec_field.name!r} of type {spec_field.type} holds text")
    ok = pc.or_kleene(pc.is_null(plain), pc.fill_null(ok, False))  # null stays null
    if pc.all(ok).as_py():
        return values, 0
    if isinstance(values, pa.DictionaryArray):
        ok = ok.take(values.indices)
        ok = pc.fill_null(ok, True)
        values = values.cast(pa.string())
    bad = int(pc.sum(pc.invert(ok)).as_py() or 0)
    return pc.if_else(ok, values, pa.scalar(spec_field.otherwise, pa.string())), bad


def staff_positions(staff: StaffIndex, refs: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each row's position in the staff list; null for no one, or for someone not on it (their
    entries keep the record, without saying who made it)."""
    if len(staff.refs) == 0 or staff.refs.type != refs.type:
        return pa.nulls(len(refs), pa.int32())
    return pc.index_in(refs, value_set=staff.refs)


# ---- small helpers ----------------------------------------------------------------------------

_NO_DAY = np.iinfo(np.int32).min


def _np(values: pa.Array | pa.ChunkedArray) -> BoolArray:
    """A boolean column as numpy, null read as false."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _days(values: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.int32]:
    """date32 as days since 1970, with nulls as a sentinel below every real date."""
    return np.asarray(
        pc.fill_null(values.cast(pa.int32()), _NO_DAY).to_numpy(zero_copy_only=False), np.int32
    )


def _last_days(values: npt.NDArray[np.int32], t: pa.Table, precision: str) -> npt.NDArray[np.int32]:
    """The last day each date may mean, by how much of it was given (`precision`)."""
    if precision not in t.column_names:
        return values
    given = t[precision]
    year = _np(pc.equal(given, "year"))
    month = _np(pc.equal(given, "month"))
    if not (year.any() or month.any()):
        return values
    days = np.where(values == _NO_DAY, 0, values).astype("datetime64[D]")
    ends = {
        "Y": (days.astype("datetime64[Y]") + 1).astype("datetime64[D]") - 1,
        "M": (days.astype("datetime64[M]") + 1).astype("datetime64[D]") - 1,
    }
    out = np.where(year, ends["Y"], np.where(month, ends["M"], days)).astype(np.int64)
    return np.where(values == _NO_DAY, _NO_DAY, out).astype(np.int32)


def _day_number(day: date) -> int:
    return (day - date(1970, 1, 1)).days


def _month(people: pa.Table, column: str) -> pa.Array | pa.ChunkedArray:
    """The month of a date, or null where the source gave only its year (a reader says how
    much of a date it was given in `_<column>_precision`: 4, 7 or 10 characters)."""
    month = pc.month(people[column])
    precision = f"_{column}_precision"
    if precision not in people.column_names:
        return month
    known = pc.fill_null(pc.greater_equal(people[precision], 7), True)
    return pc.if_else(known, month, pa.scalar(None, month.type))


def _first(outcome: npt.NDArray[np.int8], mask: BoolArray, code: int) -> None:
    """Give `code` to the rows in `mask` that have no outcome yet."""
    outcome[(outcome == KEPT) & mask] = code


def _encode(dictionary: pa.Array, positions: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """Rows' pseudonyms as a dictionary array holding only the pseudonyms these rows use
    (positions index `dictionary`; a null position is a null pseudonym)."""
    if isinstance(positions, pa.ChunkedArray):
        positions = positions.combine_chunks()
    missing = np.asarray(positions.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    where = np.asarray(positions.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    used = np.zeros(len(dictionary), bool)
    used[where[~missing]] = True
    renumber = np.cumsum(used, dtype=np.int32) - 1 if len(dictionary) else np.zeros(1, np.int32)
    indices = pa.array(renumber[where], pa.int32(), mask=missing)
    return pa.DictionaryArray.from_arrays(indices, dictionary.take(pa.array(np.flatnonzero(used))))


def _whole(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of a column's values, however many chunks it came in."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    return values


def _cast(values: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_dictionary(kind) and not pa.types.is_dictionary(values.type):
        return pc.dictionary_encode(values).cast(kind)
    # Naive times here are UTC already, so giving them the UTC zone changes no value.
    if pa.types.is_timestamp(kind) and pa.types.is_timestamp(values.type):
        values = values.cast(pa.timestamp(values.type.unit, tz="UTC"))
    return values.cast(kind)
