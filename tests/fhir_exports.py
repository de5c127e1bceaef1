"""Small FHIR Bulk Data exports written by hand, for the practice-boundary tests: a practice,
one clinician, a few patients each with one resource of every type the extractor reads. Each test
changes what it is about and leaves the rest valid."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from extracting import Keys, run
from gpdpr.identifiers import format_nhs_number, nhs_check_digit
from gpdpr.terminology import (
    DMD_SYSTEM,
    NHS_NUMBER_SYSTEM,
    ODS_SYSTEM,
    SDS_USER_SYSTEM,
    SNOMED_SYSTEM,
    UCUM_SYSTEM,
    load_catalogue,
)

ODS = "Z19001"
WHEN = "2026-10-31T23:59:59Z"
Resource = dict[str, Any]


def nhs_number(n: int) -> str:
    """A valid NHS number of the test range (999...)."""
    body = 999_000_000 + n * 20  # room to step past bodies without a check digit
    while nhs_check_digit(body) is None:
        body += 1
    return format_nhs_number(body * 10 + int(nhs_check_digit(body) or 0))


def _codes(system: str) -> list[str]:
    return [c.code for c in load_catalogue().concepts if c.system == system]


SNOMED = _codes("snomed")
DMD = _codes("dmd")
POSTCODE = "DL6 8LY"


def subject(pid: str) -> dict[str, str]:
    return {"reference": f"Patient/{pid}"}


def coded(code: str, system: str = SNOMED_SYSTEM) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def patient(pid: str, n: int) -> Resource:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"lastUpdated": "2026-01-01T10:00:00Z"},
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs_number(n)}],
        "name": [{"family": "Family", "given": ["Given"]}],
        "gender": "female",
        "birthDate": "1970-05-17",
        "address": [{"use": "home", "line": ["1 High Street"], "postalCode": POSTCODE}],
    }


def records(pid: str) -> list[Resource]:
    """One resource of each collected type for the patient, every one of them kept."""
    staff = {"reference": "Practitioner/s1"}
    return [
        {
            "resourceType": "EpisodeOfCare",
            "id": f"{pid}-reg",
            "status": "active",
            "type": [{"text": "Regular GP registration"}],
            "patient": subject(pid),
            "period": {"start": "2001-02-03"},
        },
        {
            "resourceType": "Condition",
            "id": f"{pid}-c",
            "verificationStatus": coded("confirmed", "http://hl7.org/fhir/ver"),
            "code": coded(SNOMED[0]),
            "subject": subject(pid),
            "onsetDateTime": "2015-06-01",
            "recordedDate": "2015-06-01T09:00:00Z",
            "recorder": staff,
        },
        {
            "resourceType": "Observation",
            "id": f"{pid}-o",
            "status": "final",
            "code": coded(SNOMED[1]),
            "subject": subject(pid),
            "effectiveDateTime": "2020-03-04",
            "issued": "2020-03-04T09:00:00Z",
            "performer": [staff],
            "valueQuantity": {
                "value": 7.5,
                "unit": "mmol/L",
                "system": UCUM_SYSTEM,
                "code": "mmol/L",
            },
        },
        {
            "resourceType": "Procedure",
            "id": f"{pid}-p",
            "status": "completed",
            "code": coded(SNOMED[2]),
            "subject": subject(pid),
            "performedDateTime": "2019-01-02",
            "recorder": staff,
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{pid}-m",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": coded(DMD[0], DMD_SYSTEM),
            "subject": subject(pid),
            "authoredOn": "2024-05-06",
            "requester": staff,
            "dispenseRequest": {"quantity": {"value": 28, "unit": "tablet"}},
        },
        {
            "resourceType": "Immunization",
            "id": f"{pid}-i",
            "status": "completed",
            "vaccineCode": coded(DMD[1], DMD_SYSTEM),
            "patient": subject(pid),
            "occurrenceDateTime": "2023-10-01",
        },
        {
            "resourceType": "AllergyIntolerance",
            "id": f"{pid}-a",
            "code": coded(SNOMED[3]),
            "patient": subject(pid),
            "onsetDateTime": "2010-01-01",
        },
        {
            "resourceType": "Appointment",
            "id": f"{pid}-ap",
            "status": "fulfilled",
            "appointmentType": {"text": "Telephone"},
            "start": "2025-02-03T09:00:00Z",
            "minutesDuration": 10,
            "participant": [{"actor": subject(pid)}, {"actor": staff}],
        },
        {
            "resourceType": "ServiceRequest",
            "id": f"{pid}-r",
            "status": "active",
            "intent": "order",
            "code": coded(SNOMED[4]),
            "subject": subject(pid),
            "authoredOn": "2024-07-08",
            "requester": staff,
            "priority": "routine",
        },
    ]


def support() -> list[Resource]:
    return [
        {
            "resourceType": "Organization",
            "id": "hospital",
            "identifier": [{"system": ODS_SYSTEM, "value": "RXX01"}],
        },
        {
            "resourceType": "Organization",
            "id": "practice",
            "identifier": [{"system": ODS_SYSTEM, "value": ODS}],
        },
        {
            "resourceType": "Practitioner",
            "id": "s1",
            "identifier": [{"system": SDS_USER_SYSTEM, "value": "123456789012"}],
        },
        {
            "resourceType": "PractitionerRole",
            "id": "s1-role",
            "practitioner": {"reference": "Practitioner/s1"},
            "code": [{"text": "GP"}],
        },
    ]


def practice(patients: int = 3) -> list[Resource]:
    """Every resource of a small, valid practice: patients p1..pN and their records."""
    out = support()
    for n in range(1, patients + 1):
        out.append(patient(f"p{n}", n))
        out.extend(records(f"p{n}"))
    return out


def write(
    folder: Path,
    resources: Iterable[Resource | bytes],
    files_per_type: int = 1,
    manifest: bool = True,
) -> Path:
    """An export folder as a server writes it: each type's resources in `Type.000.ndjson`
    (spread over several numbered files if asked) and export.json listing each file."""
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = {}
    for r in resources:
        if isinstance(r, bytes):  # a raw line, filed under the type it says or Observation
            kind = "Observation"
            try:
                parsed = orjson.loads(r)
                if isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str):
                    kind = parsed["resourceType"]
            except orjson.JSONDecodeError:
                pass
            by_type.setdefault(kind, []).append(r)
        else:
            by_type.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    output = []
    for kind, lines in by_type.items():
        parts = min(files_per_type, len(lines))
        for i in range(parts):
            chunk = lines[i::parts]
            name = f"{kind}.{i:03d}.ndjson"
            (folder / name).write_bytes(b"".join(line + b"\n" for line in chunk))
            output.append(
                {"type": kind, "url": f"https://server.example/files/{name}", "count": len(chunk)}
            )
    if manifest:
        about = {
            "transactionTime": WHEN,
            "request": "Group/x/$export",
            "output": output,
            "error": [],
        }
        (folder / "export.json").write_bytes(orjson.dumps(about))
    return folder


def changed(resources: list[Resource], rid: str, **fields: Any) -> list[Resource]:
    """The practice with one resource's top-level fields replaced (None removes a field)."""
    out = copy.deepcopy(resources)
    for r in out:
        if r.get("id") == rid:
            for key, value in fields.items():
                if value is None:
                    r.pop(key, None)
                else:
                    r[key] = value
    return out


def relist(folder: Path) -> None:
    """Rewrite export.json's `output` to list the folder's files as they now are, as the server
    would have listed them had it written what a test has planted since."""
    about = orjson.loads((folder / "export.json").read_bytes())
    about["output"] = [
        {
            "type": path.name.split(".", 1)[0],
            "url": path.name,
            "count": sum(1 for line in path.read_bytes().splitlines() if line.strip()),
        }
        for path in sorted(folder.glob("*.ndjson"))
    ]
    (folder / "export.json").write_bytes(orjson.dumps(about))


UKCORE = Path(__file__).parent / "fixtures" / "ukcore" / "export"


def ukcore_with(into: Path, keys: Keys, planted: list[tuple[str, str]]) -> dict[str, Any]:
    """The UK Core examples, with an Observation for each (SNOMED CT code, record id) planted,
    extracted; the package's manifest."""
    folder = into / "GP5"
    shutil.copytree(UKCORE, folder)
    (folder / "export.json").write_bytes(
        orjson.dumps({"transactionTime": "2026-11-01T00:00:00Z", "output": []})
    )
    path = folder / "Observation.000.ndjson"
    observations = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    dated = next(o for o in observations if o.get("effectiveDateTime") and o.get("subject"))
    for code, record_id in planted:
        coding = [{"system": SNOMED_SYSTEM, "code": code}]
        observations.append({**dated, "id": record_id, "code": {"coding": coding}})
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in observations))
    relist(folder)
    return run(folder, into / "package", keys)
