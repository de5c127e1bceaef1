"""The tables a definition can read, as the research environment shows them.

Each is a view of one lake table: the patient pseudonym becomes `patient_id` (the project's own
pseudonym), timestamps become dates (the environment works in days), date of birth and of death
are rebuilt as the first of their month, and two bookkeeping fields never appear: `record_id`
(a practice could look it up in its own system and find the patient) and `last_modified`.

Every column names the specification fields it is made from (`needs`: never empty), which is
what an agreement grants: a definition that reads a column whose fields are outside the
agreement's scope is refused before any data is read. Reading a table at all needs its patient
field and the field its period applies to (views.required_fields).
"""

from __future__ import annotations

from dataclasses import dataclass

# Value types. Codes carry their coding system, so a dm+d codelist cannot be matched against a
# SNOMED CT column by mistake.
BOOL, INT, FLOAT, STR, DATE, SNOMED, DMD = "bool", "int", "float", "str", "date", "snomed", "dmd"
TYPES = (BOOL, INT, FLOAT, STR, DATE, SNOMED, DMD)
CODE_TYPES = (SNOMED, DMD)
NUMERIC = (INT, FLOAT)

PATIENT_ID = "patient_id"
# Beside patient_id in every view, a whole number per patient, 0 .. people - 1, made afresh with
# each set of views: the engines join rows to their patient by it (joining millions of rows on
# 64-character pseudonyms costs several times more) and show only the pseudonym.
PATIENT_KEY = "patient_key"
PRACTICE = "practice"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    needs: tuple[str, ...]  # specification fields of the lake table it is made from
    description: str


@dataclass(frozen=True)
class Table:
    name: str  # as a definition names it
    lake: str  # the lake (and specification) table it shows
    one_row_per_patient: bool
    columns: dict[str, Column]
    date: str | None  # the field the agreement's period applies to

    def column(self, name: str) -> Column | None:
        return self.columns.get(name)


def _columns(*columns: Column) -> dict[str, Column]:
    return {c.name: c for c in columns}


def _field(name: str, kind: str, description: str) -> Column:
    return Column(name, kind, (name,), description)


def _precision(field: str) -> Column:
    return _field(f"{field}_precision", STR, f"year, month or day: how much of {field} is known")


def _staff() -> Column:
    return _field("staff", STR, "the project's code for the member of staff who recorded it")


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "patients",
            "patients",
            True,
            _columns(
                _field("sex", STR, "F, M or U"),
                _field("ethnic_category", STR, "ethnic group, NHS Data Dictionary category A to Z"),
                Column(
                    "date_of_birth",
                    DATE,
                    ("birth_year", "birth_month"),
                    "the first day of the month of birth (the day is never collected)",
                ),
                Column(
                    "date_of_death",
                    DATE,
                    ("death_year", "death_month"),
                    "the first day of the month of death",
                ),
                _field("lsoa_code", STR, "small area (LSOA)"),
                _field("region_code", STR, "region"),
                _field("imd_decile", INT, "deprivation decile of the small area"),
                _field("linkable", BOOL, "whether the record joins across practices"),
                _field("postcode_key", STR, "the project's code for the postcode"),
            ),
            None,
        ),
        Table(
            "practice_registrations",
            "registrations",
            False,
            _columns(
                _field("start_date", DATE, "date the registration began"),
                _precision("start_date"),
                _field("end_date", DATE, "its last day, if it has ended (that day included)"),
                _field("registration_type", STR, "regular or temporary"),
                _field("end_reason", STR, "moved, death or left"),
                # Provenance, not a field of the specification: granted as the item
                # registrations.practice (governance.form.PROVENANCE_ITEMS).
                Column(PRACTICE, STR, (PRACTICE,), "the practice's ODS code"),
            ),
            "start_date",
        ),
        Table(
            "clinical_events",
            "clinical_events",
            False,
            _columns(
                _field("code", SNOMED, "the SNOMED CT concept"),
                _field("category", STR, "condition, symptom, observation or procedure"),
                _field("effective_date", DATE, "the date the entry applies to"),
                _precision("effective_date"),
                _field("recorded_at", DATE, "the day it was entered"),
                _field("value", FLOAT, "the value of a measurement or test result"),
                _field("unit", STR, "the value's unit (UCUM)"),
                _staff(),
            ),
            "effective_date",
        ),
        Table(
            "medications",
            "medications",
            False,
            _columns(
                _field("code", DMD, "the dm+d product"),
                _field("issue_date", DATE, "date of issue"),
                _precision("issue_date"),
                _field("quantity", FLOAT, "quantity issued"),
                _field("quantity_unit", STR, "unit of the quantity"),
                _field("course", STR, "acute or repeat"),
                _field("source", STR, "issued here or elsewhere"),
                _staff(),
            ),
            "issue_date",
        ),
        Table(
            "immunisations",
            "immunisations",
            False,
            _columns(
                _field("procedure_code", SNOMED, "the SNOMED CT vaccination procedure"),
                _field("vaccine_code", DMD, "the dm+d vaccine product"),
                _field("date", DATE, "date given"),
                _precision("date"),
                _staff(),
            ),
            "date",
        ),
        Table(
            "allergies",
            "allergies",
            False,
            _columns(
                _field("code", SNOMED, "the SNOMED CT allergy or intolerance"),
                _field("onset_date", DATE, "date of onset"),
                _precision("onset_date"),
                _field("recorded_at", DATE, "the day it was entered"),
                _staff(),
            ),
            "onset_date",
        ),
        Table(
            "appointments",
            "appointments",
            False,
            _columns(
                _field("start", DATE, "the day it was for"),
                _field("duration_minutes", INT, "length in minutes"),
                _field("mode", STR, "face-to-face, telephone, video or home visit"),
                _field("status", STR, "fulfilled, noshow, cancelled or booked"),
                _field("booked_at", DATE, "the day it was booked"),
                _staff(),
            ),
            "start",
        ),
        Table(
            "referrals",
            "referrals",
            False,
            _columns(
                _field("code", SNOMED, "the SNOMED CT referral procedure"),
                _field("referral_date", DATE, "date of referral"),
                _precision("referral_date"),
                _field("priority", STR, "routine, urgent or two-week-wait"),
                _staff(),
            ),
            "referral_date",
        ),
    )
}

# The patient pseudonym: an agreement must grant patients.patient for any run (see
# views.required_fields).
PATIENT_FIELD = "patient"


def view_name(table: str) -> str:
    """The name a project's view of `table` goes by inside an engine."""
    return f"v_{table}"
