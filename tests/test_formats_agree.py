"""FHIR and columnar output of the same seed describe the same people and the same records."""

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from conftest import Made
from readers import FhirOutput, local_id, read_columnar


def by_key(rows: Iterable[tuple[Any, ...]]) -> dict[tuple[Any, Any], tuple[Any, ...]]:
    out = {}
    for row in rows:
        key = (row[0], row[1])
        assert key not in out, f"duplicate record {key}"
        out[key] = row[2:]
    return out


def iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def columnar_rows(table: pa.Table, id_col: str, *cols: str) -> list[tuple[Any, ...]]:
    data = table.to_pydict()
    return [
        (data["ods"][i].lower(), data[id_col][i], *(data[c][i] for c in cols))
        for i in range(table.num_rows)
    ]


def test_same_patients(clean_columnar: Made, clean_fhir_read: FhirOutput) -> None:
    patients = read_columnar(clean_columnar.root)["patients"]
    expected = by_key(
        (ods, pid, nhs, iso(dob), sex, postcode, iso(dod))
        for ods, pid, nhs, dob, sex, postcode, dod in columnar_rows(
            patients,
            "patient_id",
            "nhs_number",
            "date_of_birth",
            "sex",
            "postcode",
            "date_of_death",
        )
    )
    gender = {"female": "F", "male": "M", "unknown": "U"}
    actual = by_key(
        (
            p["_ods"].lower(),
            local_id(p["id"]),
            p["identifier"][0]["value"],
            p["birthDate"],
            gender[p["gender"]],
            p["address"][0]["postalCode"],
            p.get("deceasedDateTime"),
        )
        for p in clean_fhir_read.of("Patient")
    )
    assert len(expected) == 12_000
    assert actual == expected


def test_same_registrations(clean_columnar: Made, clean_fhir_read: FhirOutput) -> None:
    regs = read_columnar(clean_columnar.root)["registrations"]
    expected = by_key(
        (ods, rid, pid, iso(start), iso(end))
        for ods, rid, pid, start, end in columnar_rows(
            regs, "registration_id", "patient_id", "start_date", "end_date"
        )
    )
    actual = by_key(
        (
            e["_ods"].lower(),
            local_id(e["id"]),
            local_id(e["patient"]["reference"]),
            e["period"]["start"],
            e["period"].get("end"),
        )
        for e in clean_fhir_read.of("EpisodeOfCare")
    )
    assert actual == expected


def test_same_clinical_records(clean_columnar: Made, clean_fhir_read: FhirOutput) -> None:
    tables = read_columnar(clean_columnar.root)
    fhir = clean_fhir_read
    assert not fhir.bad_lines

    events = by_key(
        (ods, eid, pid, code, iso(day), value, status)
        for ods, eid, pid, code, day, value, status in columnar_rows(
            tables["clinical_events"],
            "event_id",
            "patient_id",
            "code",
            "effective_date",
            "value",
            "status",
        )
    )
    fhir_events = {}
    for kind, date_field in [
        ("Condition", "onsetDateTime"),
        ("Observation", "effectiveDateTime"),
        ("Procedure", "performedDateTime"),
    ]:
        for r in fhir.of(kind):
            status = r.get("status") or r["verificationStatus"]["coding"][0]["code"]
            in_error = status == "entered-in-error"
            fhir_events[(r["_ods"].lower(), local_id(r["id"]))] = (
                local_id(r["subject"]["reference"]),
                r["code"]["coding"][0]["code"],
                r[date_field],
                r.get("valueQuantity", {}).get("value"),
                "entered-in-error" if in_error else "active",
            )
    assert len(events) > 200_000
    assert fhir_events == events

    meds = by_key(
        (ods, mid, pid, code, iso(day), status)
        for ods, mid, pid, code, day, status in columnar_rows(
            tables["medications"], "issue_id", "patient_id", "code", "issue_date", "status"
        )
    )
    fhir_meds = {}
    for kind, date_field in [
        ("MedicationRequest", "authoredOn"),
        ("MedicationStatement", "effectiveDateTime"),
    ]:
        for r in fhir.of(kind):
            status = "entered-in-error" if r["status"] == "entered-in-error" else "issued"
            fhir_meds[(r["_ods"].lower(), local_id(r["id"]))] = (
                local_id(r["subject"]["reference"]),
                r["medicationCodeableConcept"]["coding"][0]["code"],
                r[date_field],
                status,
            )
    assert fhir_meds == meds

    imms = by_key(
        (ods, iid, pid, vaccine, procedure, iso(day))
        for ods, iid, pid, vaccine, procedure, day in columnar_rows(
            tables["immunisations"],
            "immunisation_id",
            "patient_id",
            "vaccine_code",
            "procedure_code",
            "date",
        )
    )
    fhir_imms = by_key(
        (
            r["_ods"].lower(),
            local_id(r["id"]),
            local_id(r["patient"]["reference"]),
            r["vaccineCode"]["coding"][0]["code"],
            r["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
            r["occurrenceDateTime"],
        )
        for r in fhir.of("Immunization")
    )
    assert fhir_imms == imms

    allergies = by_key(
        (ods, aid, pid, code, iso(day))
        for ods, aid, pid, code, day in columnar_rows(
            tables["allergies"], "allergy_id", "patient_id", "code", "onset_date"
        )
    )
    fhir_allergies = by_key(
        (
            r["_ods"].lower(),
            local_id(r["id"]),
            local_id(r["patient"]["reference"]),
            r["code"]["coding"][0]["code"],
            r["onsetDateTime"],
        )
        for r in fhir.of("AllergyIntolerance")
    )
    assert fhir_allergies == allergies

    appointments = by_key(
        (ods, aid, pid, start.isoformat() + "Z", status)
        for ods, aid, pid, start, status in columnar_rows(
            tables["appointments"], "appointment_id", "patient_id", "start", "status"
        )
    )
    fhir_appointments = by_key(
        (
            r["_ods"].lower(),
            local_id(r["id"]),
            local_id(r["participant"][0]["actor"]["reference"]),
            r["start"],
            r["status"],
        )
        for r in fhir.of("Appointment")
    )
    assert fhir_appointments == appointments

    referrals = by_key(
        (ods, rid, pid, code, iso(day))
        for ods, rid, pid, code, day in columnar_rows(
            tables["referrals"], "referral_id", "patient_id", "code", "referral_date"
        )
    )
    fhir_referrals = by_key(
        (
            r["_ods"].lower(),
            local_id(r["id"]),
            local_id(r["subject"]["reference"]),
            r["code"]["coding"][0]["code"],
            r["authoredOn"],
        )
        for r in fhir.of("ServiceRequest")
    )
    assert fhir_referrals == referrals


def test_bulk_manifest_counts_match_the_files(clean_fhir: Made) -> None:
    import json

    for folder in sorted(p for p in clean_fhir.root.iterdir() if p.is_dir()):
        manifest = json.loads((folder / "export.json").read_text())
        for entry in manifest["output"]:
            lines = (folder / entry["url"]).read_bytes().count(b"\n")
            assert lines == entry["count"], (folder.name, entry)
