"""Finishing a block: drawn records become supplier tables.

Adds what the drawing step leaves out: record ids, the practice's local patient ids, which staff
member recorded each item, times of day, entered-in-error and amended records, free-text notes
(some naming people), and the data-quality faults planted at --mess-rate. Record tables keep a
hidden `_fault` column that the writers use and drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.identifiers import format_nhs_number
from gpdpr.supplier import schema
from gpdpr.synth.nation import DIED, END_REASONS, NO_DATE, SEXES, IntArray, Nation, Practice
from gpdpr.synth.records import (
    BOTH_FORMAT_FAULTS,
    DUPLICATE_ID,
    FHIR_ONLY_FAULTS,
    GP,
    HCA,
    IMPLAUSIBLE_DATE,
    NO_SUBJECT,
    NURSE,
    PLACEHOLDER_DATE,
    SECONDS_PER_DAY,
    UNKNOWN_CODE,
    Block,
    Generator,
    Rows,
    Vocabulary,
    vocabularies,
)
from gpdpr.terminology import load_catalogue, store

FAULT_COLUMN = "_fault"
WORKDAY_START, WORKDAY_SECONDS = 8 * 3600, 10 * 3600 + 1800  # 08:00 to 18:30

_RELATIONS = ["wife", "husband", "daughter", "son", "mother", "father", "partner", "carer"]
_PHRASES = [
    "Advised to return if symptoms worsen.",
    "Discussed lifestyle and diet.",
    "Reviewed medication, no side effects reported.",
    "Anxious about results, reassured.",
    "Safety-netting advice given.",
    "Examined: chest clear, no concerns.",
    "Plan: review in two weeks.",
    "Information leaflet given.",
    "Declined examination today.",
    "Symptoms improving since last visit.",
]


ALL_FAULTS = BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS


@dataclass
class Started:
    """A record table's drawn columns after ids and faults: `days` is the main date, faults
    applied; `patients` the local patient ids with nulls where the reference was dropped."""

    cols: dict[str, npt.NDArray[Any]]
    fault: npt.NDArray[np.int8]
    ids: IntArray
    patients: pa.Array
    days: npt.NDArray[Any]

    @property
    def n(self) -> int:
        return len(self.ids)


@dataclass
class IdCounter:
    """Next local id per table, carried across the blocks of one practice."""

    next_id: dict[str, int]

    def take(self, table: str, count: int) -> IntArray:
        start = self.next_id.get(table, 1)
        self.next_id[table] = start + count
        return np.arange(start, start + count, dtype=np.int64)


def _to_dates(days: npt.NDArray[Any], missing: npt.NDArray[np.bool_] | None = None) -> pa.Array:
    return pa.array(np.asarray(days, dtype=np.int32), type=pa.int32(), mask=missing).cast(
        pa.date32()
    )


def _to_timestamps(seconds: npt.NDArray[Any]) -> pa.Array:
    return pa.array(np.asarray(seconds, dtype=np.int64)).cast(schema.TS)


def _strings(values: npt.NDArray[Any], empty_is_null: bool = False) -> pa.Array:
    array = pa.array(values, type=pa.string())
    if empty_is_null:
        array = pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)
    return array


def _labels(vocabulary: list[str], codes: npt.NDArray[Any]) -> pa.Array:
    """Text from small integer codes into a short list of labels ('' becomes null)."""
    values = pa.array([v or None for v in vocabulary], type=pa.string())
    return values.take(pa.array(np.asarray(codes, dtype=np.int32)))


def _choose(
    rng: np.random.Generator, shares: dict[str, float], n: int
) -> tuple[list[str], npt.NDArray[np.int64]]:
    labels = list(shares)
    return labels, rng.choice(len(labels), size=n, p=_norm(shares))


def _code_arrays() -> tuple[pa.Array, pa.Array]:
    return _code_arrays_at(store.location())


@cache
def _code_arrays_at(location: str | None) -> tuple[pa.Array, pa.Array]:
    # By the terminology store in use, as the vocabularies are (see records.vocabularies).
    snomed, dmd = vocabularies()
    return pa.array(snomed.codes, type=pa.string()), pa.array(dmd.codes, type=pa.string())


def _snomed_text(codes: npt.NDArray[Any]) -> pa.Array:
    return _code_arrays()[0].take(pa.array(codes))


def _dmd_text(codes: npt.NDArray[Any]) -> pa.Array:
    return _code_arrays()[1].take(pa.array(codes))


def dose_units() -> list[str]:
    """The unit a dm+d product is issued in, read from its name."""
    return _dose_units(store.location())


@cache
def _dose_units(location: str | None) -> list[str]:
    _, dmd = vocabularies()
    catalogue = load_catalogue()
    release = store.active() if location else None
    units = []
    for code in dmd.codes:
        concept = catalogue.lookup("dmd", str(code))
        term = concept.term if concept else release.term(int(code)) if release else None
        name = (term or "").lower()
        if "capsule" in name:
            units.append("capsule")
        elif "tablet" in name:
            units.append("tablet")
        elif "inhal" in name or "/dose" in name:
            units.append("inhaler")
        elif "eye drops" in name or "solution" in name:
            units.append("ml")
        elif "cream" in name or "ointment" in name or "gel" in name:
            units.append("gram")
        else:
            units.append("dose")
    return units


class Finisher:
    def __init__(self, gen: Generator, ids: IdCounter) -> None:
        self.gen = gen
        self.b: Block = gen.b
        self.rng = gen.rng
        self.ids = ids
        self.nation: Nation = gen.b.nation
        self.as_of = self.nation.config.as_of_day
        self.staff_pools = {
            role: self.b.practice.staff_ids(role)
            for role in (GP, NURSE, HCA, "Clinical pharmacist")
        }

    # ---- shared finishing steps -------------------------------------------------------------

    def staff(self, roles: npt.NDArray[Any], vocabulary: list[str] | None = None) -> IntArray:
        """Who recorded each item: a random member of the role named by `roles` (role names, or
        codes into `vocabulary`)."""
        out = np.empty(len(roles), dtype=np.int64)
        for code, role in enumerate(vocabulary or self.staff_pools):
            mine = roles == (code if vocabulary else role)
            pool = self.staff_pools[role]
            out[mine] = pool[self.rng.integers(len(pool), size=int(mine.sum()))]
        return out

    def time_of_day(self, days: npt.NDArray[Any]) -> IntArray:
        seconds = WORKDAY_START + self.rng.integers(0, WORKDAY_SECONDS, size=len(days))
        return np.asarray(days, dtype=np.int64) * SECONDS_PER_DAY + seconds

    def statuses(self, recorded_at: IntArray, active: str = "active") -> tuple[pa.Array, IntArray]:
        """Status and last_modified: a few records are later marked entered-in-error and a few are
        amended; both change last_modified, which is what an incremental extract follows."""
        n = len(recorded_at)
        draw = self.rng.random(n)
        in_error = draw < self.gen.params.entered_in_error_rate
        amended = (draw >= 0.99) & ~in_error
        later = recorded_at + self.rng.integers(1, 120, size=n) * SECONDS_PER_DAY
        end_of_extract = (self.as_of + 1) * SECONDS_PER_DAY - 1
        changed = (in_error | amended) & (later <= end_of_extract)
        last_modified = np.where(changed, later, recorded_at)
        return _labels([active, "entered-in-error"], in_error & changed), last_modified

    def notes(self, rows: IntArray, eligible: npt.NDArray[np.bool_]) -> pa.Array:
        """Free-text notes on a share of eligible records; some name a person, give a phone
        number or an NHS number in clear, as real notes do."""
        ft = self.gen.params.free_text
        n = len(rows)
        noted = np.flatnonzero(eligible & (self.rng.random(n) < ft["note_rate"]))
        out = np.full(n, None, dtype=object)
        people = self.nation.people
        names = self.gen.params.names
        person = self.b.person[rows[noted]]
        draws = self.rng.random((len(noted), 4))
        phrase = self.rng.integers(len(_PHRASES), size=len(noted))
        relation = self.rng.integers(len(_RELATIONS), size=len(noted))
        other_given = self.rng.integers(len(names["female"]), size=len(noted))
        for i, idx in enumerate(noted):
            parts = []
            p = person[i]
            if draws[i, 0] < ft["name_in_note"]:
                parts.append(
                    f"Attended with {_RELATIONS[relation[i]]} {names['female'][other_given[i]]} "
                    f"{names['surnames'][people.family[p]]}."
                )
            parts.append(_PHRASES[phrase[i]])
            if draws[i, 1] < ft["phone_in_note"] and people.phone[p]:
                parts.append(f"Contact on {people.phone[p]} re results.")
            if draws[i, 2] < ft["nhs_number_in_note"]:
                parts.append(f"NHS no {format_nhs_number(int(people.nhs_number[p]), spaced=True)}.")
            out[idx] = " ".join(parts)
        return pa.array(out, type=pa.string())

    def start(
        self,
        table: str,
        rows: Rows,
        codes: list[tuple[str, Vocabulary]],
        kinds: list[int] = ALL_FAULTS,
    ) -> Started:
        """The common first steps for a record table: its drawn rows (sorted), record ids, and the
        faults planted at the mess rate, applied to the canonical columns: unknown codes (the
        named code columns, changed in place), duplicate ids, missing patient references and
        implausible dates (in the table's main date, the column its rows are ordered by)."""
        cols = rows.build()
        n = len(cols["row"])
        fault = np.zeros(n, dtype=np.int8)
        hit = np.flatnonzero(self.rng.random(n) < self.gen.mess_rate)
        fault[hit] = self.rng.choice(kinds, size=len(hit))

        for column, vocabulary in codes:
            bad = fault == UNKNOWN_CODE
            cols[column][bad] = vocabulary.unknown[
                self.rng.integers(len(vocabulary.unknown), size=int(bad.sum()))
            ]
        ids = self.ids.take(table, n)
        dup = np.flatnonzero(fault == DUPLICATE_ID)
        keep = np.flatnonzero(fault != DUPLICATE_ID)  # a copied id must be one that stays put
        if len(dup) and len(keep):
            ids[dup] = ids[keep[self.rng.integers(len(keep), size=len(dup))]]
        else:
            fault[dup] = 0  # nothing to duplicate: no fault after all
        future = self.as_of + self.rng.integers(30, 3000, size=n)
        placeholder = self.rng.random(n) < 0.5
        days = np.where(
            fault == IMPLAUSIBLE_DATE,
            np.where(placeholder, PLACEHOLDER_DATE, future),
            cols[rows.order_by],
        )
        patients = pa.array(self.b.patient_id[cols["row"]], mask=fault == NO_SUBJECT)
        return Started(cols, fault, ids, patients, days)

    # ---- tables -----------------------------------------------------------------------------

    def patients(self) -> dict[str, pa.Table]:
        b, people, regs = self.b, self.nation.people, self.nation.registrations
        names = self.gen.params.names
        p = b.person
        female = people.sex[p] == 0
        given = np.where(
            female,
            np.array(names["female"])[np.minimum(people.given[p], len(names["female"]) - 1)],
            np.array(names["male"])[np.minimum(people.given[p], len(names["male"]) - 1)],
        )
        title = np.where(
            female,
            np.array(names["titles_female"])[people.title[p]],
            np.array(names["titles_male"])[people.title[p]],
        )
        postcode_idx = regs.postcode[b.regs]
        geo = self.nation.geography
        reasons = regs.end_reason[b.regs]
        died_here = reasons == DIED
        joined = self.time_of_day(b.reg_start)
        nhs = np.char.zfill(people.nhs_number[p].astype(str), 10)
        address = np.char.add(
            np.char.add(regs.house_number[b.regs].astype(str), " "),
            self.nation.streets[regs.street[b.regs]],
        )
        patients = pa.table(
            {
                "patient_id": b.patient_id,
                "nhs_number": _strings(nhs),
                "title": _strings(title),
                "given_name": _strings(given),
                "family_name": _strings(np.array(names["surnames"])[people.family[p]]),
                "date_of_birth": _to_dates(b.birth),
                "sex": _strings(SEXES[people.sex[p]]),
                "date_of_death": _to_dates(np.where(died_here, b.reg_end, 0), ~died_here),
                "address_line_1": _strings(address),
                "address_line_2": _strings(geo.post_town[postcode_idx]),
                "postcode": _strings(geo.postcode[postcode_idx]),
                "phone": _strings(people.phone[p], empty_is_null=True),
                "email": _strings(people.email[p], empty_is_null=True),
                "usual_gp_id": self.staff(np.full(len(b), GP)),
                "last_modified": _to_timestamps(joined),
            },
            schema=schema.PATIENTS,
        )
        ended = b.reg_end != NO_DATE
        registrations = pa.table(
            {
                "registration_id": self.ids.take("registrations", len(b)),
                "patient_id": b.patient_id,
                "start_date": _to_dates(b.reg_start),
                "end_date": _to_dates(np.where(ended, b.reg_end, 0), ~ended),
                "registration_type": _strings(
                    np.where(regs.temporary[b.regs], "temporary", "regular")
                ),
                "end_reason": _strings(END_REASONS[reasons], empty_is_null=True),
                "last_modified": _to_timestamps(
                    np.where(ended, self.time_of_day(np.where(ended, b.reg_end, 0)), joined)
                ),
            },
            schema=schema.REGISTRATIONS,
        )
        return {"patients": patients, "registrations": registrations}

    def clinical_events(self) -> pa.Table:
        snomed, _ = vocabularies()
        events = self.gen.events
        t = self.start("clinical_events", events, [("code", snomed)])
        recorded_at = self.time_of_day(t.cols["recorded"])
        status, last_modified = self.statuses(recorded_at)
        labels = list(events.labels["category"])
        noteworthy = np.isin(
            t.cols["category"],
            [labels.index(c) for c in ("condition", "symptom", "procedure") if c in labels],
        )
        return pa.table(
            {
                "event_id": t.ids,
                "patient_id": t.patients,
                "staff_id": self.staff(t.cols["role"], list(events.labels["role"])),
                "category": events.strings("category", t.cols["category"]),
                "code": _snomed_text(t.cols["code"]),
                "effective_date": _to_dates(t.days),
                "recorded_at": _to_timestamps(recorded_at),
                "value": pa.array(t.cols["value"], mask=np.isnan(t.cols["value"])),
                "unit": events.strings("unit", t.cols["unit"]),
                "free_text": self.notes(t.cols["row"], noteworthy),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: t.fault,
            }
        )

    def medications(self) -> pa.Table:
        _, dmd = vocabularies()
        meds = self.gen.medications
        t = self.start("medications", meds, [("code", dmd)])
        status, last_modified = self.statuses(self.time_of_day(t.cols["day"]), active="issued")
        issued_here = t.cols["source"] == list(meds.labels["source"]).index("issued")
        here = pa.array(issued_here)

        def only_if_issued_here(values: pa.Array) -> pa.Array:
            # A medicine prescribed elsewhere is recorded without the quantity or course of the
            # issue, which this practice never saw (FHIR's MedicationStatement has no place for
            # them either).
            return pc.if_else(here, values, pa.scalar(None, values.type))

        return pa.table(
            {
                "issue_id": t.ids,
                "patient_id": t.patients,
                "staff_id": self.staff(t.cols["role"], list(meds.labels["role"])),
                "code": _dmd_text(t.cols["code"]),
                "issue_date": _to_dates(t.days),
                "quantity": only_if_issued_here(pa.array(t.cols["quantity"])),
                "quantity_unit": only_if_issued_here(_labels(dose_units(), t.cols["code"])),
                "dosage": meds.strings("dosage", t.cols["dosage"]),
                "course": only_if_issued_here(meds.strings("course", t.cols["course"])),
                "source": meds.strings("source", t.cols["source"]),
                "free_text": self.notes(t.cols["row"], issued_here),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: t.fault,
            }
        )

    def immunisations(self) -> pa.Table:
        snomed, dmd = vocabularies()
        t = self.start(
            "immunisations", self.gen.immunisations, [("procedure", snomed), ("vaccine", dmd)]
        )
        status, last_modified = self.statuses(self.time_of_day(t.cols["day"]), active="completed")
        letters = np.array(list("ABCDEFGHJKLMNPRSTUVWXYZ"))
        batch = np.char.add(
            np.char.add(
                letters[self.rng.integers(len(letters), size=t.n)],
                letters[self.rng.integers(len(letters), size=t.n)],
            ),
            np.char.zfill(self.rng.integers(0, 10000, size=t.n).astype(str), 4),
        )
        return pa.table(
            {
                "immunisation_id": t.ids,
                "patient_id": t.patients,
                "staff_id": self.staff(np.full(t.n, NURSE)),
                "procedure_code": _snomed_text(t.cols["procedure"]),
                "vaccine_code": _dmd_text(t.cols["vaccine"]),
                "date": _to_dates(t.days),
                "batch": _strings(batch),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: t.fault,
            }
        )

    def allergies(self) -> pa.Table:
        snomed, _ = vocabularies()
        t = self.start("allergies", self.gen.allergies, [("code", snomed)])
        recorded_at = self.time_of_day(t.cols["recorded"])
        status, last_modified = self.statuses(recorded_at)
        reactions = [*self.gen.params.allergy_reactions, ""]
        return pa.table(
            {
                "allergy_id": t.ids,
                "patient_id": t.patients,
                "staff_id": self.staff(np.full(t.n, GP)),
                "code": _snomed_text(t.cols["code"]),
                "onset_date": _to_dates(t.days),
                "recorded_at": _to_timestamps(recorded_at),
                "reaction": _labels(reactions, self.rng.integers(len(reactions), size=t.n)),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: t.fault,
            }
        )

    def appointments(self) -> pa.Table:
        cfg = self.gen.params.appointments
        kinds = [k for k in ALL_FAULTS if k != UNKNOWN_CODE]  # appointments carry no code
        t = self.start("appointments", self.gen.appointments, [], kinds)
        start = t.days.astype(np.int64) * SECONDS_PER_DAY + 8 * 3600 + t.cols["slot"] * 600
        future = t.cols["day"] > self.as_of  # already booked, for after the extract
        modes, mode = _choose(self.rng, cfg["modes"], t.n)
        statuses, status = _choose(self.rng, cfg["statuses"], t.n)
        statuses.append("booked")
        status = np.where(future, len(statuses) - 1, status)
        lo, hi = cfg["booked_ahead_days"]
        ahead = self.rng.integers(lo, hi + 1, size=t.n) * SECONDS_PER_DAY
        booked = start - ahead - self.rng.integers(600, 20_000, size=t.n)
        # Nothing can have been booked after the extract was taken: pull those bookings back
        # into the days before it (deterministically, so the random streams are unchanged).
        extract_end = (int(self.as_of) + 1) * SECONDS_PER_DAY - 1
        booked = np.where(
            booked > extract_end, extract_end - booked % (5 * SECONDS_PER_DAY), booked
        )
        durations = np.array(cfg["durations"], dtype=np.int32)
        duration = durations[self.rng.integers(len(durations), size=t.n)]
        roles = self.rng.choice(3, size=t.n, p=[0.6, 0.3, 0.1])
        return pa.table(
            {
                "appointment_id": t.ids,
                "patient_id": t.patients,
                "staff_id": self.staff(roles, [GP, NURSE, HCA]),
                "start": _to_timestamps(start),
                "duration_minutes": duration,
                "mode": _labels(modes, mode),
                "status": _labels(statuses, status),
                "booked_at": _to_timestamps(booked),
                "last_modified": _to_timestamps(np.where(future, booked, start + duration * 60)),
                FAULT_COLUMN: t.fault,
            }
        )

    def referrals(self) -> pa.Table:
        snomed, _ = vocabularies()
        t = self.start("referrals", self.gen.referrals, [("code", snomed)])
        status, last_modified = self.statuses(self.time_of_day(t.cols["day"]))
        priorities, priority = _choose(self.rng, self.gen.params.referrals["priorities"], t.n)
        return pa.table(
            {
                "referral_id": t.ids,
                "patient_id": t.patients,
                "staff_id": self.staff(np.full(t.n, GP)),
                "code": _snomed_text(t.cols["code"]),
                "referral_date": _to_dates(t.days),
                "priority": _labels(priorities, priority),
                "free_text": self.notes(t.cols["row"], np.ones(t.n, dtype=bool)),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: t.fault,
            }
        )


def _norm(shares: dict[str, float]) -> npt.NDArray[np.float64]:
    values = np.array(list(shares.values()), dtype=float)
    return np.asarray(values / values.sum(), dtype=np.float64)


def finish_block(gen: Generator, ids: IdCounter) -> dict[str, pa.Table]:
    finisher = Finisher(gen, ids)
    tables = finisher.patients()
    tables["clinical_events"] = finisher.clinical_events()
    tables["medications"] = finisher.medications()
    tables["immunisations"] = finisher.immunisations()
    tables["allergies"] = finisher.allergies()
    tables["appointments"] = finisher.appointments()
    tables["referrals"] = finisher.referrals()
    return tables


def practice_tables(nation: Nation, practice: Practice) -> dict[str, pa.Table]:
    """The once-per-practice tables: the organisation and its staff."""
    geo = nation.geography
    organisation = pa.table(
        {
            "ods_code": [practice.ods_code],
            "name": [practice.name],
            "address_line_1": [practice.address_line],
            "post_town": [str(geo.post_town[practice.postcode_index])],
            "postcode": [str(geo.postcode[practice.postcode_index])],
            "region_code": [practice.region_code],
        },
        schema=schema.ORGANISATION,
    )
    staff = pa.table(
        {
            "staff_id": [s.staff_id for s in practice.staff],
            "role": [s.role for s in practice.staff],
            "given_name": [s.given_name for s in practice.staff],
            "family_name": [s.family_name for s in practice.staff],
            "professional_code": [s.professional_code or None for s in practice.staff],
            "sds_user_id": [s.sds_user_id for s in practice.staff],
        },
        schema=schema.STAFF,
    )
    return {"organisation": organisation, "staff": staff}
