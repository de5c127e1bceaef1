"""The practice boundary on FHIR nobody here wrote: every column held to the kind the
specification declares, every form of a Type 1 dissent honoured, only facts sent, the patient as
the practice knows them, and the Bulk Data layout as servers write it."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from extracting import Keys, patient_pseudonym, record_pseudonyms, run, tables
from fhir_exports import (
    DMD,
    ODS,
    SNOMED,
    changed,
    coded,
    nhs_number,
    patient,
    practice,
    records,
    subject,
    support,
    write,
)
from fhir_scan import hits
from gpdpr import spec as specification
from gpdpr.errors import UserError
from gpdpr.practice import fhir
from gpdpr.practice.extract import quarantine_path
from gpdpr.practice.rules import REASONS, project
from gpdpr.terminology import DMD_SYSTEM, REGISTRATION_END_EXT, SNOMED_SYSTEM

SPEC = specification.shipped()
DISSENT = SPEC.dissent.code
WITHDRAWN = SPEC.dissent_withdrawn.code
SNOMED_OID = "urn:oid:2.16.840.1.113883.6.96"
CANARY = "Canary Jane Smith 943 476 5919"
CLOSED_REASONS = set(REASONS.values()) | set(fhir.FAULT_REASONS)


def extract(tmp_path: Path, keys: Keys, resources: list[Any], **kwargs: Any) -> dict[str, Any]:
    folder = write(tmp_path / "export" / ODS, resources, **kwargs)
    return run(folder, tmp_path / "package", keys)


# ---- 1. the allowlist, from the specification alone ----------------------------------------------

KINDS = {
    "pseudonym",
    "code:snomed",
    "code:dmd",
    "vocabulary",
    "date",
    "timestamp",
    "number",
    "bool",
}
KINDS |= {"lookup:lsoa_code", "lookup:region_code"}


def _valid(field: specification.Field) -> Any:
    return {
        "pseudonym": "a" * 64,
        "code:snomed": SNOMED[0],
        "code:dmd": DMD[0],
        "vocabulary": field.values[0] if field.values else None,
        "lookup:lsoa_code": "E01900000",
        "lookup:region_code": "E12000001",
        "date": date(2020, 1, 1),
        "timestamp": datetime(2020, 1, 1, 9),
        "number": 1,
        "bool": True,
    }[field.kind]


def _columns(table: specification.Table, hostile: str | None) -> dict[str, pa.Array]:
    out = {}
    for f in table.fields:
        value = _valid(f) if f.name != hostile else CANARY
        out[f.name] = pa.array([value, _valid(f)])
    return out


@pytest.mark.parametrize(
    ("table", "field"),
    [(t.name, f.name) for t in SPEC.tables.values() for f in t.fields],
)
def test_every_column_has_a_declared_kind_and_nothing_outside_it_is_written(
    table: str, field: str
) -> None:
    spec_table = SPEC.tables[table]
    kind = next(f for f in spec_table.fields if f.name == field)
    assert kind.kind in KINDS
    replaced: Counter[str] = Counter()
    if kind.kind in ("date", "timestamp", "number", "bool"):
        # Typed columns cannot hold text at all: the write fails rather than copy it.
        with pytest.raises((pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)):
            project(spec_table, _columns(spec_table, field), replaced)
        return
    if kind.kind.startswith("lookup:"):
        # Filled only from the shipped postcode lookup (never from the record): see the
        # postcode test below, where a canary postcode leaves no trace.
        assert kind.lookup in ("lsoa_code", "region_code")
        return
    written = project(spec_table, _columns(spec_table, field), replaced)
    values = written[field].to_pylist()
    assert CANARY not in values
    assert values[0] == kind.otherwise
    assert replaced == {f"{table}.{field}": 1}


def test_a_text_field_without_a_closed_vocabulary_is_refused_by_the_loader() -> None:
    text = (Path(specification.__file__).parent / "specification.toml").read_text()
    loose = text.replace(
        'values = ["face-to-face", "telephone", "video", "home visit", "other"]\n', ""
    )
    with pytest.raises(UserError, match="needs its closed vocabulary"):
        specification.parse(loose, "loose.toml")


def test_the_seven_text_columns_and_record_ids_leave_nothing_of_the_source(
    tmp_path: Path, keys: Keys
) -> None:
    resources = practice(2)
    staff_role = next(r for r in resources if r["resourceType"] == "PractitionerRole")
    staff_role["code"] = [{"text": f"{CANARY} role"}]
    for r in resources:
        kind = r["resourceType"]
        if kind == "Appointment":
            r["appointmentType"] = {"text": f"{CANARY} mode"}
        elif kind == "EpisodeOfCare":
            r["extension"] = [{"url": REGISTRATION_END_EXT, "valueString": f"{CANARY} end"}]
            r["type"] = [{"text": f"{CANARY} GP registration"}]
        elif kind == "Observation":
            r["valueQuantity"] = {"value": 5, "unit": f"{CANARY} unit", "code": "{" + CANARY + "}"}
            r["valueQuantity"]["system"] = "http://unitsofmeasure.org"
        elif kind == "MedicationRequest":
            r["dispenseRequest"] = {"quantity": {"value": 3, "unit": f"{CANARY} qty"}}
    # A record id made of a name and an NHS number.
    condition = next(r for r in resources if r["resourceType"] == "Condition")
    condition["id"] = f"jane-smith-{nhs_number(1)}"
    manifest = extract(tmp_path, keys, resources)
    package = tmp_path / "package"
    assert hits(package, ["canary", nhs_number(1), "jane-smith"]) == []
    written = tables(package)
    units = {(r["category"], r["unit"]) for r in written["clinical_events"].to_pylist()}
    assert units == {("observation", "other"), ("condition", None), ("procedure", None)}
    assert set(written["appointments"]["mode"].to_pylist()) == {"other"}
    assert written["staff"]["role"].to_pylist() == ["other"]
    assert set(written["registrations"]["end_reason"].to_pylist()) == {"other"}
    assert manifest["replaced_outside_allowlist"] == {
        "appointments.mode": 2,
        "clinical_events.unit": 2,
        "medications.quantity_unit": 2,
        "registrations.end_reason": 2,
        "staff.role": 1,
    }
    ids = written["clinical_events"]["record_id"].to_pylist()
    expected = record_pseudonyms(keys, ODS, "clinical_events", [f"jane-smith-{nhs_number(1)}"])
    assert expected <= set(ids)


def test_quarantine_reasons_come_from_a_closed_set_and_name_no_source_text(
    tmp_path: Path, keys: Keys
) -> None:
    lines: list[Any] = [
        *practice(1),
        orjson.dumps({"resourceType": "Observation", "id": "x1", "subject": CANARY}),
        orjson.dumps({"resourceType": "CanaryType", "id": "x2"}),
        b'{"resourceType": "Condition", "id": "canary-cut-sh',
    ]
    folder = write(tmp_path / "export" / ODS, lines)
    # A line of another type filed in the Observation file.
    obs = next(folder.glob("Observation.*.ndjson"))
    obs.write_bytes(obs.read_bytes() + orjson.dumps({"resourceType": "Canary", "id": "x3"}) + b"\n")
    about = orjson.loads((folder / "export.json").read_bytes())
    for entry in about["output"]:
        if entry["type"] == "Observation":
            entry["count"] += 1
    (folder / "export.json").write_bytes(orjson.dumps(about))
    manifest = run(folder, tmp_path / "package", keys)
    assert set(manifest["quarantined"]["by_reason"]) <= CLOSED_REASONS
    assert manifest["quarantined"]["rows"] == 4
    assert hits(tmp_path / "package", ["canary"]) == []
    held = quarantine_path(tmp_path / "package").read_bytes()
    entries = [orjson.loads(x) for x in held.splitlines()]
    by_id = {e["record_id"]: e for e in entries}
    assert by_id["x1"]["path"] == "Observation.subject"
    assert by_id["x1"]["resource_type"] == "Observation"
    assert by_id["x1"]["id_pseudonym"] in record_pseudonyms(keys, ODS, "clinical_events", ["x1"])


# ---- 2. every dissent honoured ----------------------------------------------------------------


def _dissent(kind: str, pid: str, code: str = DISSENT, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"resourceType": kind, "id": f"{pid}-{kind}-{code[:4]}-{len(extra)}"}
    if kind == "Consent":
        base |= {
            "status": "active",
            "patient": subject(pid),
            "dateTime": "2022-01-01",
            "provision": {"code": [coded(code)]},
        }
    elif kind == "Flag":
        base |= {"status": "active", "subject": subject(pid), "code": coded(code)}
        base["period"] = {"start": "2022-01-01"}
    else:
        dates = {"Observation": "effectiveDateTime", "Condition": "onsetDateTime"}
        base |= {"subject": subject(pid), "code": coded(code)}
        base[dates.get(kind, "performedDateTime")] = "2022-01-01"
    return base | extra


def _forms() -> dict[str, list[dict[str, Any]]]:
    """Patient id -> the opt-out entries of one form."""
    second = {"coding": [{"system": SNOMED_SYSTEM, "code": "1234"}, *coded(DISSENT)["coding"]]}
    return {
        "p1": [_dissent("Observation", "p1") | {"code": second}],
        "p2": [_dissent("Observation", "p2") | {"code": coded(DISSENT, SNOMED_OID)}],
        "p3": [_dissent("Observation", "p3") | {"subject": {"reference": "Patient/p3/_history/2"}}],
        "p4": [_dissent("Observation", "p4") | {"subject": {"reference": "urn:uuid:p4"}}],
        "p5": [
            _dissent("Observation", "p5")
            | {"subject": {"reference": "https://gp.example/fhir/Patient/p5"}}
        ],
        "p6": [_dissent("Consent", "p6")],
        "p7": [_dissent("Flag", "p7")],
        "p8": [_dissent("Condition", "p8")],
        "p9": [_dissent("Procedure", "p9")],
        "p10": [
            _dissent("Observation", "p10")
            | {"code": coded(SNOMED[5]), "valueCodeableConcept": coded(DISSENT)}
        ],
        # The latest dated entry wins; a tie, or an undated dissent, stays a dissent.
        "p11": [
            _dissent("Observation", "p11"),
            _dissent("Observation", "p11", WITHDRAWN, effectiveDateTime="2023-01-01"),
        ],
        "p12": [
            _dissent("Observation", "p12"),
            _dissent("Consent", "p12", WITHDRAWN),
        ],
        "p13": [
            _dissent("Flag", "p13", period=None),
            _dissent("Observation", "p13", WITHDRAWN, effectiveDateTime="2023-01-01"),
        ],
        "p14": [  # a dissent known only to its year outlasts a withdrawal within that year
            _dissent("Observation", "p14", effectiveDateTime="2023"),
            _dissent("Observation", "p14", WITHDRAWN, effectiveDateTime="2023-06-01"),
        ],
        "p15": [_dissent("Observation", "p15", status="entered-in-error")],
    }


def test_every_form_of_a_type1_dissent_is_honoured(tmp_path: Path, keys: Keys) -> None:
    forms = _forms()
    resources = support()
    for n in range(1, len(forms) + 1):
        resources += [patient(f"p{n}", n), *records(f"p{n}")]
    for entries in forms.values():
        for e in entries:
            resources.append({k: v for k, v in e.items() if v is not None})
    manifest = extract(tmp_path, keys, resources)
    active = set(manifest["type1_opt_out"]["active"])
    withdrawn = set(manifest["type1_opt_out"]["withdrawn"])
    dissenting = {f"p{n}" for n in range(1, 15)} - {"p11"}
    for n in range(1, len(forms) + 1):
        pseudonym = patient_pseudonym(keys, nhs_number(n).replace(" ", ""))
        assert (pseudonym in active) == (f"p{n}" in dissenting), f"p{n}"
    assert patient_pseudonym(keys, nhs_number(11).replace(" ", "")) in withdrawn
    written = tables(tmp_path / "package")
    sent = set(written["patients"]["patient"].to_pylist())
    assert not sent & active
    assert len(sent) == 2  # p11 (withdrawn) and p15 (dissent entered in error)
    for name, table in written.items():
        if "patient" in table.column_names:
            assert not set(table["patient"].to_pylist()) & active, name


def test_dissent_codes_come_from_the_specification() -> None:
    assert SPEC.dissent_codes() == {DISSENT}
    assert SPEC.withdrawal_codes() == {WITHDRAWN}


# ---- 6. facts only ----------------------------------------------------------------------------


def test_only_facts_are_sent_as_the_specification_declares(tmp_path: Path, keys: Keys) -> None:
    resources = practice(1)
    not_facts: dict[str, dict[str, Any]] = {
        "p1-c": {"verificationStatus": coded("refuted", "http://hl7.org/fhir/ver")},
        "p1-o": {"status": "cancelled"},
        "p1-p": {"status": "not-done"},
        "p1-m": {"intent": "proposal"},
        "p1-i": {"status": "not-done"},
        "p1-a": {"verificationStatus": coded("refuted")},
        "p1-ap": {"status": "proposed"},
        "p1-r": {"status": "revoked"},
    }
    for rid, fields in not_facts.items():
        resources = changed(resources, rid, **fields)
    extra = copy.deepcopy(next(r for r in resources if r["id"] == "p1-m"))
    extra |= {"id": "p1-m2", "intent": "order", "status": "draft"}
    resources.append(extra)
    manifest = extract(tmp_path, keys, resources)
    assert manifest["excluded"]["not_a_fact"] == len(not_facts) + 1
    written = tables(tmp_path / "package")
    for name in ("clinical_events", "medications", "immunisations", "allergies", "appointments"):
        assert written[name].num_rows == 0, name
    assert written["registrations"].num_rows == 1
    for kind, statuses in SPEC.facts.items():
        assert kind in fhir.TABLE_OF and statuses


# ---- 7. the patient as the practice knows them ---------------------------------------------------


def test_the_current_nhs_number_and_address_and_merged_records(tmp_path: Path, keys: Keys) -> None:
    resources = practice(3)
    p1 = next(r for r in resources if r["id"] == "p1")
    p1["identifier"] = [
        {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number(1)},
        {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number(77), "use": "old"},
    ]
    p1["address"] = [
        {"use": "home", "postalCode": "DL6 8LY"},
        {"use": "old", "postalCode": "DL25 7HJ"},
        {"use": "home", "postalCode": "DL25 7NZ", "period": {"end": "2019-01-01"}},
    ]
    p1["birthDate"] = "1980"
    p2 = next(r for r in resources if r["id"] == "p2")
    p2["link"] = [{"type": "replaced-by", "other": {"reference": "Patient/p3"}}]
    hospital = {
        "resourceType": "EpisodeOfCare",
        "id": "p3-hosp",
        "status": "active",
        "type": [{"text": "Hospital inpatient stay"}],
        "patient": subject("p3"),
        "period": {"start": "2020-01-01"},
    }
    manifest = extract(tmp_path, keys, [*resources, hospital])
    written = tables(tmp_path / "package")
    people = {r["patient"]: r for r in written["patients"].to_pylist()}
    one = patient_pseudonym(keys, nhs_number(1).replace(" ", ""))
    three = patient_pseudonym(keys, nhs_number(3).replace(" ", ""))
    assert set(people) == {one, three}  # p2 is p3
    assert people[one]["lsoa_code"] == "E01900000"
    assert (people[one]["birth_year"], people[one]["birth_month"]) == (1980, None)
    events = Counter(written["clinical_events"]["patient"].to_pylist())
    assert events == {one: 3, three: 6}
    assert written["registrations"].num_rows == 3  # the hospital stay is not a registration
    assert manifest["not_read"] == {fhir.NOT_GP_REGISTRATION: 1}


def test_the_practice_is_the_key_kits_and_must_be_in_the_export(tmp_path: Path, keys: Keys) -> None:
    resources = [r for r in practice(1) if r.get("id") != "practice"]
    folder = write(tmp_path / "export" / ODS, resources)
    with pytest.raises(UserError, match=f"no Organization in the export has the ODS code {ODS}"):
        run(folder, tmp_path / "package", keys)


# ---- 5. FHIR as servers export it ----------------------------------------------------------------


def test_several_files_per_type_extract_as_one(tmp_path: Path, keys: Keys) -> None:
    one = extract(tmp_path / "one", keys, practice(4))
    many = extract(tmp_path / "many", keys, practice(4), files_per_type=3)
    assert one["tables"] == many["tables"]
    assert many["tables"]["clinical_events"]["rows"] == 12
    assert many["quarantined"]["rows"] == 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "lists a file that is not in"),
        ("count", "holds 4 resources but export.json says 5"),
        ("renamed", "lists a file that is not in"),
    ],
)
def test_an_export_that_is_not_what_the_server_listed_is_refused(
    tmp_path: Path, keys: Keys, damage: str, message: str
) -> None:
    folder = write(tmp_path / "export" / ODS, practice(4))
    about = orjson.loads((folder / "export.json").read_bytes())
    conditions = folder / "Condition.000.ndjson"
    if damage == "missing":
        conditions.unlink()
    elif damage == "count":
        next(o for o in about["output"] if o["type"] == "Condition")["count"] = 5
    else:
        conditions.rename(folder / "conditions.ndjson")
    (folder / "export.json").write_bytes(orjson.dumps(about))
    with pytest.raises(UserError, match=message):
        run(folder, tmp_path / "package", keys)
    assert not (tmp_path / "package").exists()


def test_a_file_the_manifest_does_not_list_is_read_all_the_same(tmp_path: Path, keys: Keys) -> None:
    folder = write(tmp_path / "export" / ODS, practice(4))
    about = orjson.loads((folder / "export.json").read_bytes())
    about["output"] = [o for o in about["output"] if o["type"] != "Condition"]
    (folder / "export.json").write_bytes(orjson.dumps(about))
    manifest = run(folder, tmp_path / "package", keys)
    assert manifest["tables"]["clinical_events"]["rows"] == 12


def test_a_bom_crlf_line_ends_and_blank_lines_are_read(tmp_path: Path, keys: Keys) -> None:
    folder = write(tmp_path / "export" / ODS, practice(2))
    for path in folder.glob("*.ndjson"):
        lines = path.read_bytes().splitlines()
        path.write_bytes(b"\xef\xbb\xbf" + b"\r\n\r\n".join(lines) + b"\r\n\r\n")
    (folder / "export.json").write_bytes(b"\xef\xbb\xbf" + (folder / "export.json").read_bytes())
    manifest = run(folder, tmp_path / "package", keys)
    assert manifest["quarantined"]["rows"] == 0
    assert manifest["tables"]["clinical_events"]["rows"] == 6


def test_real_world_forms_of_dates_references_and_medicines(tmp_path: Path, keys: Keys) -> None:
    resources = practice(1)
    medication = {"resourceType": "Medication", "id": "med1", "code": coded(DMD[2], DMD_SYSTEM)}
    resources = changed(
        resources,
        "p1-o",
        effectiveDateTime=None,
        effectivePeriod={"start": "2019-03"},
        valueQuantity={
            "value": 5,
            "comparator": "<",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
        subject={"reference": "https://gp.example/fhir/Patient/p1/_history/4"},
    )
    resources = changed(
        resources,
        "p1-m",
        medicationCodeableConcept=None,
        medicationReference={"reference": "Medication/med1"},
    )
    statement = {
        "resourceType": "MedicationStatement",
        "id": "p1-ms",
        "status": "active",
        "contained": [
            {"resourceType": "Medication", "id": "m", "code": coded(DMD[3], SNOMED_SYSTEM)}
        ],
        "medicationReference": {"reference": "#m"},
        "subject": {"reference": "urn:uuid:p1"},
        "effectivePeriod": {"start": "2024-01-02"},
    }
    extract(tmp_path, keys, [*resources, medication, statement])
    written = tables(tmp_path / "package")
    observation = next(
        r for r in written["clinical_events"].to_pylist() if r["category"] == "observation"
    )
    assert observation["effective_date"] == date(2019, 3, 1)
    assert (observation["value"], observation["unit"]) == (None, "mmol/L")  # `<5` is not 5
    assert sorted(written["medications"]["code"].to_pylist()) == sorted([DMD[2], DMD[3]])
