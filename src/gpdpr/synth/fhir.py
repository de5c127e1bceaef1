"""FHIR R4 NDJSON in the Bulk Data layout, written from the same supplier tables as the columnar
output, so both formats describe the same people and records.

One file per resource type per practice (Patient.ndjson, Observation.ndjson, ...) and an
export.json shaped like a Bulk Data export's completion manifest. Identifiers use the UK Core
systems (NHS number, ODS code, SDS user id, GMC / NMC numbers); clinical codes are SNOMED CT, and
medicines and vaccines dm+d.

FHIR-only faults (dates that do not parse, truncated lines) are applied here, from their own
random stream, to the records the finishing step marked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.synth.finish import FAULT_COLUMN
from gpdpr.synth.records import TRUNCATED, UNPARSEABLE_DATE
from gpdpr.terminology import (
    DMD_SYSTEM,
    GMC_SYSTEM,
    NHS_NUMBER_SYSTEM,
    NMC_SYSTEM,
    ODS_SYSTEM,
    REGISTRATION_END_EXT,
    SDS_USER_SYSTEM,
    SNOMED_SYSTEM,
    UCUM_SYSTEM,
    VACCINATION_PROCEDURE_EXT,
    load_catalogue,
)

Resource = dict[str, Any]
SLICE_ROWS = 20_000  # rows turned into Python objects at a time
XHTML = "http://www.w3.org/1999/xhtml"
HL7 = "http://terminology.hl7.org/CodeSystem"
GENDER = {"F": "female", "M": "male", "U": "unknown"}
OBSERVATION_CATEGORY = {
    "obs.systolic": "vital-signs",
    "obs.diastolic": "vital-signs",
    "obs.bmi": "vital-signs",
    "obs.hba1c": "laboratory",
    "obs.cholesterol": "laboratory",
    "obs.egfr": "laboratory",
}
PRIORITY = {"routine": "routine", "urgent": "urgent", "two-week-wait": "asap"}
RESOURCE_TYPES = [
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Patient",
    "EpisodeOfCare",
    "Condition",
    "Observation",
    "Procedure",
    "MedicationRequest",
    "MedicationStatement",
    "AllergyIntolerance",
    "Immunization",
    "Appointment",
    "ServiceRequest",
]


@cache
def _display() -> dict[tuple[str, str], str]:
    return {(c.system, c.code): c.term for c in load_catalogue().concepts}


@cache
def _category_of_code() -> dict[str, str]:
    """Observation category by SNOMED code (vital signs, laboratory; the rest social history)."""
    catalogue = load_catalogue()
    out = {}
    for key, category in OBSERVATION_CATEGORY.items():
        for concept in catalogue.codes(key):
            out[concept.code] = category
    return out


def _coding(system: str, code: str | None) -> dict[str, Any]:
    short = "snomed" if system == SNOMED_SYSTEM else "dmd"
    coding: dict[str, Any] = {"system": system, "code": code}
    display = _display().get((short, code or ""))
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _hl7(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{HL7}/{system}", "code": code}]}


def _columns(table: pa.Table) -> dict[str, list[Any]]:
    """Columns as Python lists, dates as ISO strings and timestamps as FHIR instants."""
    out: dict[str, list[Any]] = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_date32(column.type):
            out[name] = pc.strftime(column, format="%Y-%m-%d").to_pylist()
        elif pa.types.is_timestamp(column.type):
            out[name] = pc.strftime(column, format="%Y-%m-%dT%H:%M:%SZ").to_pylist()
        else:
            out[name] = column.to_pylist()
    return out


def _rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    cols = _columns(table)
    names = list(cols)
    for values in zip(*(cols[n] for n in names), strict=True):
        yield dict(zip(names, values, strict=True))


class FhirWriter:
    """Writes one practice's resources, block by block, to its NDJSON files."""

    def __init__(self, folder: Path, ods: str, rng: np.random.Generator) -> None:
        self.folder = folder
        self.ods = ods
        self.prefix = ods.lower()
        self.rng = rng
        self.files: dict[str, IO[bytes]] = {}
        self.counts: dict[str, int] = dict.fromkeys(RESOURCE_TYPES, 0)

    # ---- plumbing ---------------------------------------------------------------------------

    def _emit(self, resource_type: str, lines: list[bytes]) -> None:
        if resource_type not in self.files:
            self.files[resource_type] = open(self.folder / f"{resource_type}.ndjson", "wb")  # noqa: SIM115
        if lines:
            self.files[resource_type].write(b"\n".join(lines) + b"\n")
            self.counts[resource_type] += len(lines)

    def _dump(self, resource: Resource, fault: int) -> bytes:
        line = orjson.dumps(resource)
        if fault == TRUNCATED:
            return line[: int(self.rng.integers(10, max(11, len(line) - 1)))]
        return line

    def _unparseable(self, iso: str) -> str:
        """A date as a careless interface writes it: day-first, or a day the month lacks."""
        year, month, day = iso[:4], iso[5:7], iso[8:10]
        if self.rng.random() < 0.5:
            return f"{day}/{month}/{year}"
        return f"{year}-{month}-{32 + int(day[1]) % 8}"  # no month has a 32nd to 39th

    def _ref(self, kind: str, local_id: int | None) -> dict[str, str] | None:
        if local_id is None:
            return None
        letter = {"Patient": "p", "Practitioner": "s"}[kind]
        return {"reference": f"{kind}/{self.prefix}-{letter}{local_id}"}

    def _id(self, letter: str, local_id: int) -> str:
        return f"{self.prefix}-{letter}{local_id}"

    def _write(
        self,
        table: pa.Table,
        build: Callable[[dict[str, Any]], tuple[str, Resource]],
        date_fields: tuple[str, ...],
    ) -> None:
        """Build each row's resource and write it, applying FHIR-only faults. (A record with no
        subject needs nothing here: its patient id is already null, so the reference is left
        out.)"""
        # In slices, so that only a slice's Python objects are alive at once.
        for first in range(0, table.num_rows, SLICE_ROWS):
            by_type: dict[str, list[bytes]] = {}
            for row in _rows(table.slice(first, SLICE_ROWS)):
                fault = row.get(FAULT_COLUMN, 0)
                resource_type, resource = build(row)
                if fault == UNPARSEABLE_DATE:
                    for f in date_fields:
                        if f in resource:
                            resource[f] = self._unparseable(resource[f])
                            break
                by_type.setdefault(resource_type, []).append(self._dump(resource, fault))
            for resource_type, lines in by_type.items():
                self._emit(resource_type, lines)

    def close(self) -> None:
        for resource_type in RESOURCE_TYPES:
            if resource_type not in self.files:
                self._emit(resource_type, [])
        for f in self.files.values():
            f.close()

    # ---- per practice -----------------------------------------------------------------------

    def practice(self, organisation: pa.Table, staff: pa.Table) -> None:
        org = next(_rows(organisation))
        self._emit(
            "Organization",
            [
                orjson.dumps(
                    {
                        "resourceType": "Organization",
                        "id": self.prefix,
                        "identifier": [{"system": ODS_SYSTEM, "value": org["ods_code"]}],
                        "active": True,
                        "type": [
                            {
                                "coding": [{"system": f"{HL7}/organization-type", "code": "prov"}],
                                "text": "GP practice",
                            }
                        ],
                        "name": org["name"],
                        "address": [
                            {
                                "line": [org["address_line_1"]],
                                "city": org["post_town"],
                                "postalCode": org["postcode"],
                                "country": "GB",
                            }
                        ],
                    }
                )
            ],
        )
        practitioners, roles = [], []
        for s in _rows(staff):
            identifiers = [{"system": SDS_USER_SYSTEM, "value": s["sds_user_id"]}]
            if s["professional_code"]:
                system = GMC_SYSTEM if s["role"] == "GP" else NMC_SYSTEM
                identifiers.append({"system": system, "value": s["professional_code"]})
            pid = self._id("s", s["staff_id"])
            practitioners.append(
                orjson.dumps(
                    {
                        "resourceType": "Practitioner",
                        "id": pid,
                        "identifier": identifiers,
                        "name": [{"family": s["family_name"], "given": [s["given_name"]]}],
                    }
                )
            )
            roles.append(
                orjson.dumps(
                    {
                        "resourceType": "PractitionerRole",
                        "id": f"{pid}-role",
                        "practitioner": {"reference": f"Practitioner/{pid}"},
                        "organization": {"reference": f"Organization/{self.prefix}"},
                        "code": [{"text": s["role"]}],
                    }
                )
            )
        self._emit("Practitioner", practitioners)
        self._emit("PractitionerRole", roles)

    # ---- per block --------------------------------------------------------------------------

    def block(self, tables: dict[str, pa.Table]) -> None:
        self._patients(tables["patients"])
        self._registrations(tables["registrations"])
        self._write(
            tables["clinical_events"],
            self._clinical_event,
            ("onsetDateTime", "effectiveDateTime", "performedDateTime"),
        )
        self._write(tables["medications"], self._medication, ("authoredOn", "effectiveDateTime"))
        self._write(tables["immunisations"], self._immunisation, ("occurrenceDateTime",))
        self._write(tables["allergies"], self._allergy, ("onsetDateTime",))
        appointments = tables["appointments"]
        minutes = pc.multiply(appointments["duration_minutes"].cast(pa.int64()), 60)
        end = pc.add(appointments["start"], minutes.cast(pa.duration("s")))
        self._write(appointments.append_column("end", end), self._appointment, ("created",))
        self._write(tables["referrals"], self._referral, ("authoredOn",))

    def _patients(self, table: pa.Table) -> None:
        lines = []
        org = {"reference": f"Organization/{self.prefix}"}
        for p in _rows(table):
            name = f"{p['title']} {p['given_name']} {p['family_name']}"
            telecom = []
            if p["phone"]:
                use = "mobile" if p["phone"].startswith("07") else "home"
                telecom.append({"system": "phone", "value": p["phone"], "use": use})
            if p["email"]:
                telecom.append({"system": "email", "value": p["email"]})
            resource: Resource = {
                "resourceType": "Patient",
                "id": self._id("p", p["patient_id"]),
                "meta": {"lastUpdated": p["last_modified"]},
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="{XHTML}"><p>{name}, born {p["date_of_birth"]}</p>'
                    f"<p>{p['address_line_1']}, {p['address_line_2']}, {p['postcode']}</p></div>",
                },
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": p["nhs_number"]}],
                "name": [
                    {
                        "use": "official",
                        "family": p["family_name"],
                        "given": [p["given_name"]],
                        "prefix": [p["title"]],
                    }
                ],
                "telecom": telecom,
                "gender": GENDER[p["sex"]],
                "birthDate": p["date_of_birth"],
                "address": [
                    {
                        "use": "home",
                        "line": [p["address_line_1"]],
                        "city": p["address_line_2"],
                        "postalCode": p["postcode"],
                    }
                ],
                "generalPractitioner": [org],
                "managingOrganization": org,
            }
            if p["date_of_death"]:
                resource["deceasedDateTime"] = p["date_of_death"]
            if not telecom:
                del resource["telecom"]
            lines.append(orjson.dumps(resource))
        self._emit("Patient", lines)

    def _registrations(self, table: pa.Table) -> None:
        lines = []
        for r in _rows(table):
            period = {"start": r["start_date"]}
            if r["end_date"]:
                period["end"] = r["end_date"]
            resource: Resource = {
                "resourceType": "EpisodeOfCare",
                "id": self._id("r", r["registration_id"]),
                "meta": {"lastUpdated": r["last_modified"]},
                "status": "finished" if r["end_date"] else "active",
                "type": [{"text": f"{r['registration_type'].capitalize()} GP registration"}],
                "patient": self._ref("Patient", r["patient_id"]),
                "managingOrganization": {"reference": f"Organization/{self.prefix}"},
                "period": period,
            }
            if r["end_reason"]:
                resource["extension"] = [
                    {"url": REGISTRATION_END_EXT, "valueString": r["end_reason"]}
                ]
            lines.append(orjson.dumps(resource))
        self._emit("EpisodeOfCare", lines)

    def _common(self, letter: str, row: dict[str, Any], id_column: str) -> Resource:
        return {
            "id": self._id(letter, row[id_column]),
            "meta": {"lastUpdated": row["last_modified"]},
        }

    def _clinical_event(self, e: dict[str, Any]) -> tuple[str, Resource]:
        in_error = e["status"] == "entered-in-error"
        code = _coding(SNOMED_SYSTEM, e["code"])
        subject = self._ref("Patient", e["patient_id"])
        recorder = self._ref("Practitioner", e["staff_id"])
        category = e["category"]
        resource: Resource
        if category in ("condition", "symptom"):
            resource = {
                "resourceType": "Condition",
                **self._common("c", e, "event_id"),
                "verificationStatus": _hl7(
                    "condition-ver-status", "entered-in-error" if in_error else "confirmed"
                ),
                "category": [
                    _hl7(
                        "condition-category",
                        "problem-list-item" if category == "condition" else "encounter-diagnosis",
                    )
                ],
                "code": code,
                "subject": subject,
                "onsetDateTime": e["effective_date"],
                "recordedDate": e["recorded_at"],
                "recorder": recorder,
            }
            if not in_error:  # a record entered in error has no clinical status (FHIR con-5)
                resource["clinicalStatus"] = _hl7("condition-clinical", "active")
        elif category == "procedure":
            resource = {
                "resourceType": "Procedure",
                **self._common("c", e, "event_id"),
                "status": "entered-in-error" if in_error else "completed",
                "code": code,
                "subject": subject,
                "performedDateTime": e["effective_date"],
                "recorder": recorder,
            }
        else:
            resource = {
                "resourceType": "Observation",
                **self._common("c", e, "event_id"),
                "status": "entered-in-error" if in_error else "final",
                "category": [
                    _hl7(
                        "observation-category", _category_of_code().get(e["code"], "social-history")
                    )
                ],
                "code": code,
                "subject": subject,
                "effectiveDateTime": e["effective_date"],
                "issued": e["recorded_at"],
                "performer": [recorder],
            }
            if e["value"] is not None:
                resource["valueQuantity"] = {
                    "value": e["value"],
                    "unit": e["unit"],
                    "system": UCUM_SYSTEM,
                    "code": e["unit"],
                }
        if e["free_text"]:
            resource["note"] = [{"text": e["free_text"]}]
            resource["text"] = {
                "status": "additional",
                "div": f'<div xmlns="{XHTML}">{e["free_text"]}</div>',
            }
        return resource["resourceType"], _drop_none(resource)

    def _medication(self, m: dict[str, Any]) -> tuple[str, Resource]:
        in_error = m["status"] == "entered-in-error"
        medication = _coding(DMD_SYSTEM, m["code"])
        subject = self._ref("Patient", m["patient_id"])
        dosage = [{"text": m["dosage"]}]
        resource: Resource
        if m["source"] == "elsewhere":
            resource = {
                "resourceType": "MedicationStatement",
                **self._common("m", m, "issue_id"),
                "status": "entered-in-error" if in_error else "active",
                "medicationCodeableConcept": medication,
                "subject": subject,
                "effectiveDateTime": m["issue_date"],
                "dateAsserted": m["last_modified"],
                "informationSource": self._ref("Practitioner", m["staff_id"]),
                "dosage": dosage,
            }
        else:
            resource = {
                "resourceType": "MedicationRequest",
                **self._common("m", m, "issue_id"),
                "status": "entered-in-error" if in_error else "completed",
                "intent": "order",
                "courseOfTherapyType": _hl7(
                    "medicationrequest-course-of-therapy",
                    "acute" if m["course"] == "acute" else "continuous",
                ),
                "medicationCodeableConcept": medication,
                "subject": subject,
                "authoredOn": m["issue_date"],
                "requester": self._ref("Practitioner", m["staff_id"]),
                "dosageInstruction": dosage,
                "dispenseRequest": {
                    "quantity": {"value": m["quantity"], "unit": m["quantity_unit"]}
                },
            }
        if m["free_text"]:
            resource["note"] = [{"text": m["free_text"]}]
        return resource["resourceType"], _drop_none(resource)

    def _immunisation(self, i: dict[str, Any]) -> tuple[str, Resource]:
        resource: Resource = {
            "resourceType": "Immunization",
            **self._common("i", i, "immunisation_id"),
            "extension": [
                {
                    "url": VACCINATION_PROCEDURE_EXT,
                    "valueCodeableConcept": _coding(SNOMED_SYSTEM, i["procedure_code"]),
                }
            ],
            "status": "entered-in-error" if i["status"] == "entered-in-error" else "completed",
            "vaccineCode": _coding(DMD_SYSTEM, i["vaccine_code"]),
            "patient": self._ref("Patient", i["patient_id"]),
            "occurrenceDateTime": i["date"],
            "recorded": i["last_modified"],
            "lotNumber": i["batch"],
            "performer": [{"actor": self._ref("Practitioner", i["staff_id"])}],
        }
        return "Immunization", _drop_none(resource)

    def _allergy(self, a: dict[str, Any]) -> tuple[str, Resource]:
        in_error = a["status"] == "entered-in-error"
        resource: Resource = {
            "resourceType": "AllergyIntolerance",
            **self._common("a", a, "allergy_id"),
            "verificationStatus": _hl7(
                "allergyintolerance-verification", "entered-in-error" if in_error else "confirmed"
            ),
            "code": _coding(SNOMED_SYSTEM, a["code"]),
            "patient": self._ref("Patient", a["patient_id"]),
            "onsetDateTime": a["onset_date"],
            "recordedDate": a["recorded_at"],
            "recorder": self._ref("Practitioner", a["staff_id"]),
        }
        if not in_error:  # FHIR ait-2: no clinical status on a record entered in error
            resource["clinicalStatus"] = _hl7("allergyintolerance-clinical", "active")
        if a["reaction"]:
            resource["reaction"] = [{"manifestation": [{"text": a["reaction"]}]}]
        return "AllergyIntolerance", _drop_none(resource)

    def _appointment(self, a: dict[str, Any]) -> tuple[str, Resource]:
        participants = [{"actor": self._ref("Practitioner", a["staff_id"]), "status": "accepted"}]
        if a["patient_id"] is not None:
            participants.insert(
                0, {"actor": self._ref("Patient", a["patient_id"]), "status": "accepted"}
            )
        resource: Resource = {
            "resourceType": "Appointment",
            **self._common("ap", a, "appointment_id"),
            "status": a["status"],
            "appointmentType": {"text": a["mode"]},
            "start": a["start"],
            "end": a["end"],
            "minutesDuration": a["duration_minutes"],
            "created": a["booked_at"],
            "participant": participants,
        }
        return "Appointment", resource

    def _referral(self, r: dict[str, Any]) -> tuple[str, Resource]:
        resource: Resource = {
            "resourceType": "ServiceRequest",
            **self._common("rf", r, "referral_id"),
            "status": "entered-in-error" if r["status"] == "entered-in-error" else "completed",
            "intent": "order",
            "priority": PRIORITY[r["priority"]],
            "code": _coding(SNOMED_SYSTEM, r["code"]),
            "subject": self._ref("Patient", r["patient_id"]),
            "authoredOn": r["referral_date"],
            "requester": self._ref("Practitioner", r["staff_id"]),
        }
        if r["priority"] == "two-week-wait":
            resource["orderDetail"] = [{"text": "Suspected cancer: two-week wait"}]
        if r["free_text"]:
            resource["note"] = [{"text": r["free_text"]}]
        return "ServiceRequest", _drop_none(resource)


def _drop_none(resource: Resource) -> Resource:
    return {k: v for k, v in resource.items() if v is not None}
