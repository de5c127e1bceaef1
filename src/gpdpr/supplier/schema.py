"""Tables of a GP system supplier's columnar bulk extract, one Parquet file each per practice.

This is the practice-side source format: it holds everything a GP record holds, identifiers and
free text included. What may leave the practice is decided by the data specification, not here.
Local ids (patient_id, staff_id, record ids) are the supplier's own integers, unique within a
practice; nhs_number is the national identifier. Timestamps are UTC, to the second.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("s")

ORGANISATION = pa.schema(
    [
        ("ods_code", pa.string()),
        ("name", pa.string()),
        ("address_line_1", pa.string()),
        ("post_town", pa.string()),
        ("postcode", pa.string()),
        ("region_code", pa.string()),
    ]
)

STAFF = pa.schema(
    [
        ("staff_id", pa.int64()),
        ("role", pa.string()),
        ("given_name", pa.string()),
        ("family_name", pa.string()),
        ("professional_code", pa.string()),  # GMC number (GPs) or NMC PIN (nurses)
        ("sds_user_id", pa.string()),
    ]
)

PATIENTS = pa.schema(
    [
        ("patient_id", pa.int64()),
        ("nhs_number", pa.string()),
        ("title", pa.string()),
        ("given_name", pa.string()),
        ("family_name", pa.string()),
        ("date_of_birth", pa.date32()),
        ("sex", pa.string()),  # F, M, U
        ("date_of_death", pa.date32()),
        ("address_line_1", pa.string()),
        ("address_line_2", pa.string()),
        ("postcode", pa.string()),
        ("phone", pa.string()),
        ("email", pa.string()),
        ("usual_gp_id", pa.int64()),
        ("last_modified", TS),
    ]
)

REGISTRATIONS = pa.schema(
    [
        ("registration_id", pa.int64()),
        ("patient_id", pa.int64()),
        ("start_date", pa.date32()),
        ("end_date", pa.date32()),
        ("registration_type", pa.string()),  # regular, temporary
        ("end_reason", pa.string()),  # moved, death, left; null while registered
        ("last_modified", TS),
    ]
)

CLINICAL_EVENTS = pa.schema(
    [
        ("event_id", pa.int64()),
        ("patient_id", pa.int64()),
        ("staff_id", pa.int64()),
        ("category", pa.string()),  # condition, symptom, observation, procedure
        ("code", pa.string()),  # SNOMED CT
        ("effective_date", pa.date32()),
        ("recorded_at", TS),
        ("value", pa.float64()),
        ("unit", pa.string()),  # UCUM
        ("free_text", pa.string()),
        ("status", pa.string()),  # active, entered-in-error
        ("last_modified", TS),
    ]
)

MEDICATIONS = pa.schema(
    [
        ("issue_id", pa.int64()),
        ("patient_id", pa.int64()),
        ("staff_id", pa.int64()),
        ("code", pa.string()),  # dm+d
        ("issue_date", pa.date32()),
        ("quantity", pa.float64()),
        ("quantity_unit", pa.string()),
        ("dosage", pa.string()),
        ("course", pa.string()),  # acute, repeat
        ("source", pa.string()),  # issued (here), elsewhere (recorded, prescribed elsewhere)
        ("free_text", pa.string()),
        ("status", pa.string()),
        ("last_modified", TS),
    ]
)

IMMUNISATIONS = pa.schema(
    [
        ("immunisation_id", pa.int64()),
        ("patient_id", pa.int64()),
        ("staff_id", pa.int64()),
        ("procedure_code", pa.string()),  # SNOMED CT
        ("vaccine_code", pa.string()),  # dm+d
        ("date", pa.date32()),
        ("batch", pa.string()),
        ("status", pa.string()),
        ("last_modified", TS),
    ]
)

ALLERGIES = pa.schema(
    [
        ("allergy_id", pa.int64()),
        ("patient_id", pa.int64()),
        ("staff_id", pa.int64()),
        ("code", pa.string()),  # SNOMED CT
        ("onset_date", pa.date32()),
        ("recorded_at", TS),
        ("reaction", pa.string()),
        ("status", pa.string()),
        ("last_modified", TS),
    ]
)

APPOINTMENTS = pa.schema(
    [
        ("appointment_id", pa.int64()),
        ("patient_id", pa.int64()),
        ("staff_id", pa.int64()),
        ("start", TS),
        ("duration_minutes", pa.int32()),
        ("mode", pa.string()),  # face-to-face, telephone, video, home visit
        ("status", pa.string()),  # fulfilled, noshow, cancelled, booked
        ("booked_at", TS),
        ("last_modified", TS),
    ]
)

REFERRALS = pa.schema(
    [
        ("referral_id", pa.int64()),
        ("patient_id", pa.int64()),
        ("staff_id", pa.int64()),
        ("code", pa.string()),  # SNOMED CT
        ("referral_date", pa.date32()),
        ("priority", pa.string()),  # routine, urgent, two-week-wait
        ("free_text", pa.string()),
        ("status", pa.string()),
        ("last_modified", TS),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "organisation": ORGANISATION,
    "staff": STAFF,
    "patients": PATIENTS,
    "registrations": REGISTRATIONS,
    "clinical_events": CLINICAL_EVENTS,
    "medications": MEDICATIONS,
    "immunisations": IMMUNISATIONS,
    "allergies": ALLERGIES,
    "appointments": APPOINTMENTS,
    "referrals": REFERRALS,
}

# Text columns with many distinct values: not worth a Parquet dictionary.
HIGH_CARDINALITY = {
    "nhs_number",
    "given_name",
    "family_name",
    "address_line_1",
    "postcode",
    "phone",
    "email",
    "free_text",
    "batch",
    "sds_user_id",
    "professional_code",
}


def parquet_options(table: str) -> dict[str, object]:
    """Writer options: dictionaries for repetitive text, statistics for ids, dates and values
    (what readers filter on); statistics on free text cost time and tell a reader nothing."""
    fields = TABLES[table]
    text = [f.name for f in fields if pa.types.is_string(f.type)]
    return {
        "compression": "zstd",
        "use_dictionary": [c for c in text if c not in HIGH_CARDINALITY],
        "write_statistics": [f.name for f in fields if not pa.types.is_string(f.type)],
    }


# The tables whose rows are clinical records (and so can carry data-quality faults).
RECORD_TABLES = [
    "clinical_events",
    "medications",
    "immunisations",
    "allergies",
    "appointments",
    "referrals",
]
ID_COLUMN = {
    "patients": "patient_id",
    "registrations": "registration_id",
    "staff": "staff_id",
    "clinical_events": "event_id",
    "medications": "issue_id",
    "immunisations": "immunisation_id",
    "allergies": "allergy_id",
    "appointments": "appointment_id",
    "referrals": "referral_id",
}
