"""Forms real GP exports take that the first boundary work left open: opt-outs no longer in force,
references by identifier only, UK Core patient extensions, partial dates kept at their precision,
and Bundles as a Bulk Data export lists them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from extracting import Keys, patient_pseudonym, run, tables
from fhir_exports import ODS, SNOMED, coded, nhs_number, patient, records, subject, support, write
from fhir_scan import hits
from gpdpr import spec as specification
from gpdpr.errors import UserError
from gpdpr.lake.tables import data_tables
from gpdpr.practice import fhir
from gpdpr.practice.extract import quarantine_path
from gpdpr.tre.query.schema import TABLES as TRE_TABLES

SPEC = specification.shipped()
DISSENT = SPEC.dissent.code


def extract(tmp_path: Path, keys: Keys, resources: list[Any], **kwargs: Any) -> dict[str, Any]:
    folder = write(tmp_path / "export" / ODS, resources, **kwargs)
    return run(folder, tmp_path / "package", keys)


def pseudonym(keys: Keys, n: int) -> str:
    return patient_pseudonym(keys, nhs_number(n).replace(" ", ""))


def people(n: int) -> list[dict[str, Any]]:
    out = support()
    for i in range(1, n + 1):
        out += [patient(f"p{i}", i), *records(f"p{i}")]
    return out


# ---- 1. opt-outs no longer in force --------------------------------------------------------------


def consent(pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"{pid}-consent",
        "status": "active",
        "patient": subject(pid),
        "dateTime": "2022-01-01",
        "provision": {"type": "deny", "code": [coded(DISSENT)]},
    } | extra


def flag(pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "id": f"{pid}-flag",
        "status": "active",
        "subject": subject(pid),
        "code": coded(DISSENT),
        "period": {"start": "2022-01-01"},
    } | extra


# Patient -> (their only opt-out entry, whether it still counts as a dissent). The export was taken
# on 2026-10-31.
FORMS: dict[str, tuple[dict[str, Any], bool]] = {
    "p1": (consent("p1"), True),
    "p2": (consent("p2", status="inactive"), False),
    "p3": (consent("p3", status="rejected"), False),
    "p4": (consent("p4", status="entered-in-error"), False),
    "p5": (
        consent("p5", provision={"code": [coded(DISSENT)], "period": {"end": "2024-05-01"}}),
        False,
    ),
    # An end known only to the year of the extract has not passed yet: the dissent stands.
    "p6": (consent("p6", provision={"code": [coded(DISSENT)], "period": {"end": "2026"}}), True),
    # A status that says nothing of being out of force (a draft) leaves the dissent standing.
    "p7": (consent("p7", status="draft"), True),
    "p8": (flag("p8"), True),
    "p9": (flag("p9", status="inactive"), False),
    "p10": (flag("p10", status="entered-in-error"), False),
    "p11": (flag("p11", period={"start": "2022-01-01", "end": "2025-12-31"}), False),
    "p12": (flag("p12", period={"start": "2022-01-01", "end": "2027-01-01"}), True),
    "p13": (flag("p13", status=None), True),
}


def test_an_inactive_consent_or_flag_is_not_a_dissent_and_an_active_one_is(
    tmp_path: Path, keys: Keys
) -> None:
    resources = people(len(FORMS))
    for entry, _ in FORMS.values():
        resources.append({k: v for k, v in entry.items() if v is not None})
    manifest = extract(tmp_path, keys, resources)
    active = set(manifest["type1_opt_out"]["active"])
    for n, (pid, (_, dissent)) in enumerate(FORMS.items(), start=1):
        assert (pseudonym(keys, n) in active) == dissent, pid
    assert manifest["tables"]["patients"]["rows"] == sum(not d for _, d in FORMS.values())


def test_an_inactive_dissent_does_not_outweigh_an_active_one(tmp_path: Path, keys: Keys) -> None:
    resources = [
        *people(1),
        consent("p1", id="old", status="inactive", dateTime="2025-01-01"),
        flag("p1", period={"start": "2020-01-01"}),
    ]
    manifest = extract(tmp_path, keys, resources)
    assert manifest["type1_opt_out"]["active"] == [pseudonym(keys, 1)]
    assert manifest["tables"]["patients"]["rows"] == 0


@pytest.mark.parametrize("status", ["inactive", "entered-in-error"])
def test_an_inactive_withdrawal_does_not_release_a_dissent(
    tmp_path: Path, keys: Keys, status: str
) -> None:
    withdrawn = SPEC.dissent_withdrawn.code
    resources = [
        *people(1),
        flag("p1", period={"start": "2020-01-01"}),
        consent("p1", status=status, dateTime="2024-01-01", provision={"code": [coded(withdrawn)]}),
    ]
    manifest = extract(tmp_path, keys, resources)
    assert manifest["type1_opt_out"]["active"] == [pseudonym(keys, 1)]


# ---- 2. references by identifier, and conditional references ------------------------------------

NHS = "https://fhir.nhs.uk/Id/nhs-number"
CANARY = "CanaryIdent 9434765919"


def by_identifier(system: str, value: str) -> dict[str, Any]:
    return {"identifier": {"system": system, "value": value}}


def conditional(query: str) -> dict[str, Any]:
    return {"reference": f"Patient?{query}"}


def test_a_patient_named_only_by_nhs_number_is_that_patient(tmp_path: Path, keys: Keys) -> None:
    spaced, plain = nhs_number(1), nhs_number(2).replace(" ", "")
    resources = people(3)
    subjects = {
        "p1-c": by_identifier(NHS, spaced),  # as written on a letter, with spaces
        "p2-c": conditional(f"identifier={NHS}|{plain}"),
        "p3-c": conditional(f"identifier={NHS.replace('/', '%2F')}%7C{nhs_number(3)}"),
    }
    for r in resources:
        if r["id"] in subjects:
            r["subject"] = subjects[r["id"]]
        if r["id"] == "p1-ap":  # the appointment's patient, and a clinician by smartcard id
            r["participant"] = [
                {"actor": by_identifier(NHS, nhs_number(1))},
                {"actor": by_identifier("https://fhir.nhs.uk/Id/sds-user-id", "123456789012")},
            ]
    # A dissent whose Flag names the patient by NHS number only is honoured.
    resources.append(flag("p3", subject=by_identifier(NHS, nhs_number(3))))
    manifest = extract(tmp_path, keys, resources)
    assert manifest["quarantined"]["rows"] == 0
    assert manifest["not_read"] == {"Flag": 1}  # read for the opt-out alone, never sent
    assert manifest["type1_opt_out"]["active"] == [pseudonym(keys, 3)]
    written = tables(tmp_path / "package")
    diagnoses = written["clinical_events"].filter(
        pc.equal(written["clinical_events"]["category"], "condition")
    )
    assert sorted(diagnoses["patient"].to_pylist()) == sorted(
        [pseudonym(keys, 1), pseudonym(keys, 2)]
    )
    assert written["appointments"]["patient"].to_pylist().count(pseudonym(keys, 1)) == 1


# Subject -> the FHIR path the quarantine names. None names no patient of the export by NHS number.
UNRESOLVED = {
    "x1": (by_identifier("https://canary.example/id", CANARY), "Condition.subject.identifier"),
    "x2": (by_identifier(NHS, CANARY), "Condition.subject.identifier"),
    "x3": (by_identifier(NHS, "9434765919"), "Condition.subject.identifier"),
    "x4": (conditional(f"identifier={NHS}|{CANARY}"), "Condition.subject.reference"),
    "x5": (conditional(f"name={CANARY}"), "Condition.subject.reference"),
    "x6": (conditional(f"identifier=https://canary.example|{nhs_number(1)}"), None),
    "x7": (conditional(f"identifier={NHS}|{nhs_number(1)}&name={CANARY}"), None),
    "x8": ({"identifier": {"system": NHS, "value": 9434765919}}, None),
}


def test_a_reference_naming_no_one_patient_is_quarantined_and_its_identifier_never_leaves(
    tmp_path: Path, keys: Keys
) -> None:
    resources = people(2)
    # p2's old NHS number is p1's current one: a reference by it names no one patient.
    p2 = next(r for r in resources if r["id"] == "p2")
    p2["identifier"].append({"system": NHS, "value": nhs_number(1), "use": "old"})
    condition = next(r for r in resources if r["id"] == "p1-c")
    planted = {**UNRESOLVED, "x9": (by_identifier(NHS, nhs_number(1)), None)}
    for rid, (subject_, _) in planted.items():
        resources.append({**condition, "id": rid, "subject": subject_})
    resources.append(flag("p1", id="flag-x", subject=by_identifier(NHS, CANARY)))
    manifest = extract(tmp_path, keys, resources)
    held = quarantine_path(tmp_path / "package").read_bytes()
    entries = {e["record_id"]: e for e in map(orjson.loads, held.splitlines())}
    assert set(entries) == set(planted) | {"flag-x"}
    for rid, (_, path) in UNRESOLVED.items():
        assert entries[rid]["reason"] == fhir.UNRESOLVED, rid
        if path is not None:
            assert entries[rid]["path"] == path, rid
    assert entries["flag-x"]["path"] == "Flag.subject.identifier"
    assert manifest["type1_opt_out"]["active"] == []
    assert hits(tmp_path / "package", ["canary", "9434765919"]) == []
    assert "canary" not in held.decode().lower()


# ---- 3. UK Core patient extensions ------------------------------------------------------------

UK_CORE = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-"
ETHNIC = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"
VERIFIED = "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland"


def ethnicity(code: str, system: str = ETHNIC) -> dict[str, Any]:
    concept = {"coding": [{"system": system, "code": code, "display": f"{CANARY} display"}]}
    return {"url": f"{UK_CORE}EthnicCategory", "valueCodeableConcept": concept}


def verification(code: str) -> dict[str, Any]:
    concept = {"coding": [{"system": VERIFIED, "code": code}]}
    return {"url": f"{UK_CORE}NHSNumberVerificationStatus", "valueCodeableConcept": concept}


def test_the_uk_core_ethnic_category_is_held_to_the_specifications_vocabulary(
    tmp_path: Path, keys: Keys
) -> None:
    resources = people(4)
    given = {
        "p1": [ethnicity("A")],
        "p2": [ethnicity(CANARY)],  # outside the vocabulary: leaves as `other`, counted
        "p3": [ethnicity("A", "https://canary.example/ethnicity")],  # not the category system
        "p4": [],
    }
    for r in resources:
        if r["id"] in given:
            r["extension"] = given[r["id"]]
    manifest = extract(tmp_path, keys, resources)
    rows = {r["patient"]: r for r in tables(tmp_path / "package")["patients"].to_pylist()}
    found = {pid: rows[pseudonym(keys, n)]["ethnic_category"] for n, pid in enumerate(given, 1)}
    assert found == {"p1": "A", "p2": "other", "p3": None, "p4": None}
    assert manifest["replaced_outside_allowlist"] == {"patients.ethnic_category": 1}
    assert hits(tmp_path / "package", ["canary"]) == []


def test_an_nhs_number_not_verified_is_not_used_to_link(tmp_path: Path, keys: Keys) -> None:
    resources = people(4)
    statuses = {"p1": "01", "p2": "03", "p3": None, "p4": "02"}
    for r in resources:
        if r["id"] in statuses and statuses[r["id"]] is not None:
            r["identifier"][0]["extension"] = [verification(str(statuses[r["id"]]))]
    extract(tmp_path, keys, resources)
    rows = tables(tmp_path / "package")["patients"].to_pylist()
    by_nhs = {pseudonym(keys, n): pid for n, pid in enumerate(statuses, 1)}
    linked = {by_nhs[r["patient"]] for r in rows if r["patient"] in by_nhs and r["linkable"]}
    assert linked == {"p1", "p3"}
    assert len(rows) == 4 and sum(not r["linkable"] for r in rows) == 2
    assert SPEC.nhs_number_verified == frozenset({"01"})


def test_an_nhs_number_not_verified_links_no_record_within_the_export(
    tmp_path: Path, keys: Keys
) -> None:
    resources = people(4)
    statuses = {"p1": "01", "p2": "03", "p4": "02"}  # p3's number gives no status: as held
    for r in resources:
        if r["id"] in statuses:
            r["identifier"][0]["extension"] = [verification(statuses[r["id"]])]
        if r["id"] in ("p1-c", "p2-c", "p3-c", "p4-c"):  # each diagnosis names its patient by
            r["subject"] = by_identifier(NHS, nhs_number(int(r["id"][1])))  # NHS number only
    # A dissent naming its patient by a number not verified is honoured all the same.
    resources.append(flag("p4", subject=by_identifier(NHS, nhs_number(4))))
    manifest = extract(tmp_path, keys, resources)

    held = quarantine_path(tmp_path / "package").read_bytes().splitlines()
    entries = {e["record_id"]: e for e in map(orjson.loads, held)}
    assert set(entries) == {"p2-c", "p4-c"}
    for entry in entries.values():
        assert (entry["reason"], entry["path"]) == (fhir.UNVERIFIED, "Condition.subject.identifier")
    written = tables(tmp_path / "package")
    diagnoses = written["clinical_events"].filter(
        pc.equal(written["clinical_events"]["category"], "condition")
    )
    assert sorted(diagnoses["patient"].to_pylist()) == sorted(
        [pseudonym(keys, 1), pseudonym(keys, 3)]
    )
    people_sent = written["patients"].to_pylist()
    assert len(people_sent) == 3 and len(manifest["type1_opt_out"]["active"]) == 1
    p2 = [r for r in people_sent if r["patient"] not in {pseudonym(keys, 1), pseudonym(keys, 3)}]
    assert [r["linkable"] for r in p2] == [False]  # p2 is sent, known by the practice's number
    observations = written["clinical_events"].filter(
        pc.equal(written["clinical_events"]["category"], "observation")
    )
    assert p2[0]["patient"] in observations["patient"].to_pylist()  # "Patient/p2" still links


# ---- 4. partial dates kept at their precision ---------------------------------------------------


def test_a_partial_date_leaves_with_its_precision(tmp_path: Path, keys: Keys) -> None:
    resources = people(1)
    partial: dict[str, dict[str, Any]] = {
        "p1-c": {"onsetDateTime": "2019", "recordedDate": "2019-04"},
        "p1-o": {"effectiveDateTime": "2019-03", "issued": "2019-03-05T10:00:00+01:00"},
        "p1-i": {"occurrenceDateTime": "2020-05"},
        "p1-a": {"recordedDate": "2011"},
        "p1-reg": {"period": {"start": "2001", "end": "2024-06"}},
    }
    for r in resources:
        r.update(partial.get(r["id"], {}))
    extract(tmp_path, keys, resources)
    written = tables(tmp_path / "package")
    events = {
        r["category"]: (
            r["effective_date"],
            r["effective_date_precision"],
            r["recorded_at"],
            r["recorded_at_precision"],
        )
        for r in written["clinical_events"].to_pylist()
    }
    utc = UTC
    assert events == {
        "condition": (date(2019, 1, 1), "year", datetime(2019, 4, 1, tzinfo=utc), "month"),
        "observation": (date(2019, 3, 1), "month", datetime(2019, 3, 5, 9, tzinfo=utc), "day"),
        "procedure": (date(2019, 1, 2), "day", None, None),
    }
    allergy = written["allergies"].to_pylist()[0]
    assert (allergy["recorded_at"], allergy["recorded_at_precision"]) == (
        datetime(2011, 1, 1, tzinfo=utc),
        "year",
    )
    assert written["immunisations"].to_pylist()[0]["date_precision"] == "month"
    registration = written["registrations"].to_pylist()[0]
    assert (registration["start_date"], registration["start_date_precision"]) == (
        date(2001, 1, 1),
        "year",
    )
    assert (registration["end_date"], registration["end_date_precision"]) == (
        date(2024, 6, 1),
        "month",
    )
    assert written["medications"]["issue_date_precision"].to_pylist() == ["day"]


def test_every_precision_field_is_in_the_lake_and_the_research_environment() -> None:
    lake = data_tables(SPEC)
    precisions = [
        (t.name, f) for t in SPEC.tables.values() for f in t.fields if f.name.endswith("_precision")
    ]
    assert {(t, f.name) for t, f in precisions} >= {
        ("registrations", "end_date_precision"),
        ("clinical_events", "recorded_at_precision"),
        ("allergies", "recorded_at_precision"),
    }
    assert len(precisions) == 9
    for table, field in precisions:
        assert field.values == ("year", "month", "day")
        assert lake[table].data.field(field.name).type == pa.string()
        shown = [t for t in TRE_TABLES.values() if t.lake == table]
        assert shown and all(t.columns[field.name].needs == (field.name,) for t in shown), (
            field.name
        )
    assert TRE_TABLES["patients"].columns["ethnic_category"].needs == ("ethnic_category",)


# ---- 5. Bundles as exports list them, and history, document and message Bundles -----------------


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "id": f"b-{kind}", "type": kind, "entry": entries}


def test_a_bundle_file_listed_in_the_export_manifest_is_read(tmp_path: Path, keys: Keys) -> None:
    resources = people(2)
    held = [r for r in resources if r.get("id", "").startswith("p2")]
    folder = write(tmp_path / "export" / ODS, [r for r in resources if r not in held])
    (folder / "Bundle.json").write_bytes(
        orjson.dumps(bundle("collection", [{"resource": r} for r in held]))
    )
    about = orjson.loads((folder / "export.json").read_bytes())
    about["output"].append({"type": "Bundle", "url": "https://s.example/Bundle.json", "count": 1})
    (folder / "export.json").write_bytes(orjson.dumps(about))
    manifest = run(folder, tmp_path / "package", keys)
    assert manifest["quarantined"]["rows"] == 0
    assert manifest["tables"]["clinical_events"]["rows"] == 6
    assert manifest["tables"]["patients"]["rows"] == 2
    # Listed but absent, or counted as more than the one Bundle it is: refused whole.
    for damage, message in (("missing", "lists a file that is not in"), ("count", "one Bundle")):
        listed = next(o for o in about["output"] if o["type"] == "Bundle")
        if damage == "missing":
            listed["url"] = "https://s.example/Other.json"
        else:
            listed |= {"url": "Bundle.json", "count": 3}
        (folder / "export.json").write_bytes(orjson.dumps(about))
        with pytest.raises(UserError, match=message):
            run(folder, tmp_path / f"package-{damage}", keys)


def test_history_document_and_message_bundles(tmp_path: Path, keys: Keys) -> None:
    resources = people(3)
    mine = {r["id"]: r for r in resources if r.get("id")}
    newer = {**mine["p1-c"], "code": coded(SNOMED[6])}
    history = bundle(
        "history",
        [  # newest first, as a server writes a history
            {"resource": newer, "request": {"method": "PUT", "url": "Condition/p1-c"}},
            {"resource": mine["p1-c"], "request": {"method": "POST", "url": "Condition"}},
            {"request": {"method": "DELETE", "url": "Observation/p1-o"}},
            {"resource": mine["p1-o"], "request": {"method": "POST", "url": "Observation"}},
        ],
    )
    composition = {"resourceType": "Composition", "id": "doc", "title": CANARY}
    document = bundle(
        "document",
        [{"resource": composition}, {"resource": mine["p2-c"]}, {"resource": mine["p2-o"]}],
    )
    header = {"resourceType": "MessageHeader", "id": "mh", "eventCoding": {"code": CANARY}}
    message = bundle("message", [{"resource": header}, {"resource": mine["p3-c"]}])
    bundled = {"p1-c", "p1-o", "p2-c", "p2-o", "p3-c"}
    rest = [r for r in resources if r.get("id") not in bundled]
    manifest = extract(tmp_path, keys, [*rest, history, document, message])
    assert manifest["quarantined"]["rows"] == 0
    events = tables(tmp_path / "package")["clinical_events"].to_pylist()
    by_patient: dict[str, list[tuple[str, str]]] = {}
    for e in events:
        by_patient.setdefault(e["patient"], []).append((e["category"], e["code"]))
    # p1: the condition's newest version; the observation's newest is its deletion.
    assert sorted(by_patient[pseudonym(keys, 1)]) == [
        ("condition", SNOMED[6]),
        ("procedure", SNOMED[2]),
    ]
    every = [("condition", SNOMED[0]), ("observation", SNOMED[1]), ("procedure", SNOMED[2])]
    assert sorted(by_patient[pseudonym(keys, 2)]) == every
    assert sorted(by_patient[pseudonym(keys, 3)]) == every
    assert manifest["not_read"]["Composition"] == 1
    assert hits(tmp_path / "package", ["canary"]) == []
