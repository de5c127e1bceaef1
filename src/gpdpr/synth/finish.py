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
    Vocabulary,
    vocabularies,
)
from gpdpr.terminology import load_catalogue

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
        import pyarrow.compute as pc

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


@cache
def _code_arrays() -> tuple[pa.Array, pa.Array]:
    snomed, dmd = vocabularies()
    return pa.array(snomed.codes, type=pa.string()), pa.array(dmd.codes, type=pa.string())


@cache
def dose_units() -> list[str]:
    """The unit a dm+d product is issued in, read from its name."""
    _, dmd = vocabularies()
    catalogue = load_catalogue()
    units = []
    for code in dmd.codes:
        concept = catalogue.lookup("dmd", str(code))
        name = concept.term.lower() if concept else ""
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

    def faults(
        self, n: int, kinds: list[int]
    ) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
        fault = np.zeros(n, dtype=np.int8)
        hit = np.flatnonzero(self.rng.random(n) < self.gen.mess_rate)
        fault[hit] = self.rng.choice(kinds, size=len(hit))
        return fault, fault != 0

    def apply_faults(
        self,
        fault: npt.NDArray[np.int8],
        ids: IntArray,
        patient_id: IntArray,
        codes: list[tuple[IntArray, Vocabulary]],
        days: IntArray,
    ) -> tuple[IntArray, pa.Array, IntArray]:
        """Damage the canonical columns where a fault was planted; returns (ids, patient ids with
        nulls, days). Codes are changed in place."""
        for code, vocabulary in codes:
            bad = fault == UNKNOWN_CODE
            code[bad] = vocabulary.unknown[
                self.rng.integers(len(vocabulary.unknown), size=int(bad.sum()))
            ]
        dup = np.flatnonzero(fault == DUPLICATE_ID)
        keep = np.flatnonzero(fault != DUPLICATE_ID)  # a copied id must be one that stays put
        if len(dup) and len(keep):
            ids = ids.copy()
            ids[dup] = ids[keep[self.rng.integers(len(keep), size=len(dup))]]
        else:
            fault[dup] = 0  # nothing to duplicate: no fault after all
        bad_date = fault == IMPLAUSIBLE_DATE
        future = self.as_of + self.rng.integers(30, 3000, size=len(days))
        days = np.where(
            bad_date, np.where(self.rng.random(len(days)) < 0.5, PLACEHOLDER_DATE, future), days
        )
        patients = pa.array(patient_id, mask=fault == NO_SUBJECT)
        return ids, patients, days

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
        cols = self.gen.events.build()
        n = len(cols["row"])
        snomed_codes, _ = _code_arrays()
        snomed, _ = vocabularies()
        fault, _ = self.faults(n, BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS)
        ids, patients, days = self.apply_faults(
            fault,
            self.ids.take("clinical_events", n),
            self.b.patient_id[cols["row"]],
            [(cols["code"], snomed)],
            cols["effective"],
        )
        recorded_at = self.time_of_day(cols["recorded"])
        status, last_modified = self.statuses(recorded_at)
        events = self.gen.events
        labels = list(events.labels["category"])
        noteworthy = np.isin(
            cols["category"],
            [labels.index(c) for c in ("condition", "symptom", "procedure") if c in labels],
        )
        has_value = ~np.isnan(cols["value"])
        return pa.table(
            {
                "event_id": ids,
                "patient_id": patients,
                "staff_id": self.staff(cols["role"], list(events.labels["role"])),
                "category": events.strings("category", cols["category"]),
                "code": snomed_codes.take(pa.array(cols["code"])),
                "effective_date": _to_dates(days),
                "recorded_at": _to_timestamps(recorded_at),
                "value": pa.array(cols["value"], mask=~has_value),
                "unit": events.strings("unit", cols["unit"]),
                "free_text": self.notes(cols["row"], noteworthy),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: fault,
            }
        )

    def medications(self) -> pa.Table:
        cols = self.gen.medications.build()
        n = len(cols["row"])
        _, dmd_codes = _code_arrays()
        _, dmd = vocabularies()
        fault, _ = self.faults(n, BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS)
        ids, patients, days = self.apply_faults(
            fault,
            self.ids.take("medications", n),
            self.b.patient_id[cols["row"]],
            [(cols["code"], dmd)],
            cols["day"],
        )
        issued_at = self.time_of_day(cols["day"])
        status, last_modified = self.statuses(issued_at, active="issued")
        meds = self.gen.medications
        issued_here = cols["source"] == list(meds.labels["source"]).index("issued")
        return pa.table(
            {
                "issue_id": ids,
                "patient_id": patients,
                "staff_id": self.staff(cols["role"], list(meds.labels["role"])),
                "code": dmd_codes.take(pa.array(cols["code"])),
                "issue_date": _to_dates(days),
                "quantity": cols["quantity"],
                "quantity_unit": _labels(dose_units(), cols["code"]),
                "dosage": meds.strings("dosage", cols["dosage"]),
                "course": meds.strings("course", cols["course"]),
                "source": meds.strings("source", cols["source"]),
                "free_text": self.notes(cols["row"], issued_here),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: fault,
            }
        )

    def immunisations(self) -> pa.Table:
        cols = self.gen.immunisations.build()
        n = len(cols["row"])
        snomed_codes, dmd_codes = _code_arrays()
        snomed, dmd = vocabularies()
        fault, _ = self.faults(n, BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS)
        ids, patients, days = self.apply_faults(
            fault,
            self.ids.take("immunisations", n),
            self.b.patient_id[cols["row"]],
            [(cols["procedure"], snomed), (cols["vaccine"], dmd)],
            cols["day"],
        )
        given_at = self.time_of_day(cols["day"])
        status, last_modified = self.statuses(given_at, active="completed")
        letters = np.array(list("ABCDEFGHJKLMNPRSTUVWXYZ"))
        batch = np.char.add(
            np.char.add(
                letters[self.rng.integers(len(letters), size=n)],
                letters[self.rng.integers(len(letters), size=n)],
            ),
            np.char.zfill(self.rng.integers(0, 10000, size=n).astype(str), 4),
        )
        return pa.table(
            {
                "immunisation_id": ids,
                "patient_id": patients,
                "staff_id": self.staff(np.full(n, NURSE)),
                "procedure_code": snomed_codes.take(pa.array(cols["procedure"])),
                "vaccine_code": dmd_codes.take(pa.array(cols["vaccine"])),
                "date": _to_dates(days),
                "batch": _strings(batch),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: fault,
            }
        )

    def allergies(self) -> pa.Table:
        cols = self.gen.allergies.build()
        n = len(cols["row"])
        snomed_codes, _ = _code_arrays()
        snomed, _ = vocabularies()
        fault, _ = self.faults(n, BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS)
        ids, patients, days = self.apply_faults(
            fault,
            self.ids.take("allergies", n),
            self.b.patient_id[cols["row"]],
            [(cols["code"], snomed)],
            cols["onset"],
        )
        recorded_at = self.time_of_day(cols["recorded"])
        status, last_modified = self.statuses(recorded_at)
        reactions = [*self.gen.params.allergy_reactions, ""]
        reaction = self.rng.integers(len(reactions), size=n)
        return pa.table(
            {
                "allergy_id": ids,
                "patient_id": patients,
                "staff_id": self.staff(np.full(n, GP)),
                "code": snomed_codes.take(pa.array(cols["code"])),
                "onset_date": _to_dates(days),
                "recorded_at": _to_timestamps(recorded_at),
                "reaction": _labels(reactions, reaction),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: fault,
            }
        )

    def appointments(self) -> pa.Table:
        cols = self.gen.appointments.build()
        n = len(cols["row"])
        cfg = self.gen.params.appointments
        fault, _ = self.faults(
            n, [k for k in BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS if k != UNKNOWN_CODE]
        )
        start = cols["seconds"]
        days = start // SECONDS_PER_DAY
        ids, patients, bad_days = self.apply_faults(
            fault, self.ids.take("appointments", n), self.b.patient_id[cols["row"]], [], days
        )
        start = start + (bad_days - days) * SECONDS_PER_DAY
        future = days > self.as_of
        modes, mode = _choose(self.rng, cfg["modes"], n)
        statuses, status = _choose(self.rng, cfg["statuses"], n)
        statuses.append("booked")
        status = np.where(future, len(statuses) - 1, status)
        lo, hi = cfg["booked_ahead_days"]
        booked = (
            start
            - self.rng.integers(lo, hi + 1, size=n) * SECONDS_PER_DAY
            - self.rng.integers(600, 20_000, size=n)
        )
        duration = np.array(cfg["durations"], dtype=np.int32)[
            self.rng.integers(len(cfg["durations"]), size=n)
        ]
        roles = self.rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
        return pa.table(
            {
                "appointment_id": ids,
                "patient_id": patients,
                "staff_id": self.staff(roles, [GP, NURSE, HCA]),
                "start": _to_timestamps(start),
                "duration_minutes": duration,
                "mode": _labels(modes, mode),
                "status": _labels(statuses, status),
                "booked_at": _to_timestamps(booked),
                "last_modified": _to_timestamps(np.where(future, booked, start + duration * 60)),
                FAULT_COLUMN: fault,
            }
        )

    def referrals(self) -> pa.Table:
        cols = self.gen.referrals.build()
        n = len(cols["row"])
        snomed_codes, _ = _code_arrays()
        snomed, _ = vocabularies()
        cfg = self.gen.params.referrals
        fault, _ = self.faults(n, BOTH_FORMAT_FAULTS + FHIR_ONLY_FAULTS)
        ids, patients, days = self.apply_faults(
            fault,
            self.ids.take("referrals", n),
            self.b.patient_id[cols["row"]],
            [(cols["code"], snomed)],
            cols["day"],
        )
        sent_at = self.time_of_day(cols["day"])
        status, last_modified = self.statuses(sent_at)
        priorities, priority = _choose(self.rng, cfg["priorities"], n)
        return pa.table(
            {
                "referral_id": ids,
                "patient_id": patients,
                "staff_id": self.staff(np.full(n, GP)),
                "code": snomed_codes.take(pa.array(cols["code"])),
                "referral_date": _to_dates(days),
                "priority": _labels(priorities, priority),
                "free_text": self.notes(cols["row"], np.ones(n, dtype=bool)),
                "status": status,
                "last_modified": _to_timestamps(last_modified),
                FAULT_COLUMN: fault,
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
