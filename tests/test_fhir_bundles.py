"""FHIR Bundles at the practice boundary, written as GP systems send them: a transaction whose
entries name each other by `urn:uuid:`, a searchset with its includes and outcome, Bundles a line
in NDJSON or one to a file. Their records are read as the same records given one to a line."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from extracting import Keys, patient_pseudonym, run, tables
from fhir_exports import ODS, coded, nhs_number, patient, practice, records, support, write
from fhir_scan import hits
from gpdpr import spec as specification
from gpdpr.practice.extract import quarantine_path
from gpdpr.practice.fhir_bundle import unpack
from gpdpr.practice.fhir_read import Shape

SPEC = specification.shipped()
CANARY = "Canary Jane Smith 943 476 5919"
BASE = "https://gp.example/fhir"


def pseudonym(keys: Keys, n: int) -> str:
    return patient_pseudonym(keys, nhs_number(n).replace(" ", ""))


def transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction as a GP system posts it: each entry named by a fresh urn:uuid and every
    reference between the entries given as that urn; only the patients keep their ids."""
    names = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{uuid.uuid4()}" for r in resources}
    text = orjson.dumps(resources).decode()
    for local, urn in names.items():
        text = text.replace(f'"reference":"{local}"', f'"reference":"{urn}"')
    entries = []
    for r in orjson.loads(text):
        local = f"{r['resourceType']}/{r['id']}"
        if r["resourceType"] == "Patient":  # an update keeps the id the server knows it by
            request = {"method": "PUT", "url": local}
        else:  # a create has none: the entry's urn is its only name
            request = {"method": "POST", "url": r["resourceType"]}
            del r["id"]
        entries.append({"fullUrl": names[local], "resource": r, "request": request})
    return {"resourceType": "Bundle", "id": "tx1", "type": "transaction", "entry": entries}


def sent(package: Path) -> dict[str, list[Any]]:
    """Each table's patient pseudonyms, as rows."""
    return {
        name: table["patient"].to_pylist()
        for name, table in tables(package).items()
        if "patient" in table.column_names
    }


def quarantined(package: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in quarantine_path(package).read_bytes().splitlines()]


def test_a_transaction_with_urn_uuid_references_is_read_end_to_end(
    tmp_path: Path, keys: Keys
) -> None:
    plain = run(write(tmp_path / "plain" / ODS, practice(2)), tmp_path / "plain-out", keys)
    bundle = transaction(practice(2))
    # Entries a transaction may carry that hold no record: a read, and a delete.
    bundle["entry"] += [
        {"request": {"method": "GET", "url": "Patient?identifier=x"}},
        {
            "fullUrl": f"{BASE}/Condition/old",
            "request": {"method": "DELETE", "url": "Condition/old"},
        },
    ]
    folder = write(tmp_path / "export" / ODS, [bundle])
    assert sorted(p.name for p in folder.iterdir()) == ["Bundle.000.ndjson", "export.json"]
    manifest = run(folder, tmp_path / "package", keys)

    assert manifest["quarantined"]["rows"] == 0
    by_table = sent(tmp_path / "package")
    assert {name: len(rows) for name, rows in by_table.items()} == {
        name: len(rows) for name, rows in sent(tmp_path / "plain-out").items()
    }
    assert set(by_table["patients"]) == {pseudonym(keys, 1), pseudonym(keys, 2)}
    for name, rows in by_table.items():  # every record tied to its patient, none left unlinked
        assert set(rows) == {pseudonym(keys, 1), pseudonym(keys, 2)}, name
    assert plain["quarantined"]["rows"] == 0
    assert manifest["not_read"]["Bundle entry without a resource (a request alone)"] == 1
    assert manifest["not_read"]["Bundle entry deleting a resource"] == 1


def test_a_searchset_with_includes_and_an_outcome(tmp_path: Path, keys: Keys) -> None:
    def page(n: int, condition: dict[str, Any]) -> dict[str, Any]:
        condition = condition | {"subject": {"reference": f"{BASE}/Patient/p1"}}
        return {
            "resourceType": "Bundle",
            "id": f"page{n}",
            "type": "searchset",
            "entry": [
                {
                    "fullUrl": f"{BASE}/Condition/{condition['id']}",
                    "resource": condition,
                    "search": {"mode": "match"},
                },
                {  # each page includes the patient again
                    "fullUrl": f"{BASE}/Patient/p1",
                    "resource": patient("p1", 1),
                    "search": {"mode": "include"},
                },
                {
                    "resource": {
                        "resourceType": "OperationOutcome",
                        "id": f"oo{n}",
                        "issue": [{"severity": "warning", "diagnostics": CANARY}],
                    },
                    "search": {"mode": "outcome"},
                },
            ],
        }

    condition = next(r for r in records("p1") if r["resourceType"] == "Condition")
    second = copy.deepcopy(condition) | {"id": "p1-cond-2"}
    others = [r for r in records("p1") if r["resourceType"] != "Condition"]
    folder = write(tmp_path / "export" / ODS, [*support(), *others, page(1, condition)])
    (folder / "page2.json").write_bytes(orjson.dumps(page(2, second), option=orjson.OPT_INDENT_2))
    manifest = run(folder, tmp_path / "package", keys)

    assert manifest["quarantined"]["rows"] == 0
    by_table = sent(tmp_path / "package")
    assert by_table["patients"] == [pseudonym(keys, 1)]  # one person, not one a page
    conditions = tables(tmp_path / "package")["clinical_events"]
    assert conditions.num_rows == 2 + sum(
        r["resourceType"] in ("Observation", "Procedure") for r in others
    )
    assert manifest["not_read"]["Bundle entry with an OperationOutcome (not a record)"] == 2
    assert manifest["not_read"]["Bundle entry repeating a resource already read"] == 1
    assert hits(tmp_path / "package", ["canary"]) == []


def test_bundles_a_line_in_ndjson_and_a_file_that_is_one_bundle(tmp_path: Path, keys: Keys) -> None:
    def collection(n: int) -> dict[str, Any]:
        bundle = transaction([patient(f"p{n}", n), *records(f"p{n}")])
        for entry in bundle["entry"]:
            del entry["request"]
        return bundle | {"id": f"c{n}", "type": "collection"}

    folder = write(tmp_path / "export" / ODS, [*support(), collection(1), collection(2)])
    (folder / "everything.json").write_bytes(
        b"\xef\xbb\xbf" + orjson.dumps(collection(3), option=orjson.OPT_INDENT_2)
    )
    manifest = run(folder, tmp_path / "package", keys)

    assert manifest["quarantined"]["rows"] == 0
    everyone = {pseudonym(keys, n) for n in (1, 2, 3)}
    for name, rows in sent(tmp_path / "package").items():
        assert set(rows) == everyone, name


def test_a_bundle_of_the_wrong_shape_is_quarantined_by_file_line_and_path(
    tmp_path: Path, keys: Keys
) -> None:
    good = transaction(practice(1))
    condition = {"resourceType": "Condition", "id": "c-bad", "subject": CANARY}
    wrong: list[tuple[dict[str, Any], str]] = [
        ({"type": "batch-response", "id": "b1"}, "Bundle.type"),
        ({"type": "collection", "id": "b2", "entry": {"resource": {}}}, "Bundle.entry"),
        ({"type": "collection", "id": "b3", "entry": [{}, CANARY]}, "Bundle.entry[1]"),
        (
            {"type": "batch", "id": "b4", "entry": [{"resource": CANARY}]},
            "Bundle.entry[0].resource",
        ),
        ({"type": "batch", "id": "b5", "entry": [{"fullUrl": 7}]}, "Bundle.entry[0].fullUrl"),
        (
            {"type": "searchset", "id": "b6", "entry": [{"resource": condition, "search": []}]},
            "Bundle.entry[0].search",
        ),
    ]
    bundles = [good] + [{"resourceType": "Bundle", **b} for b, _ in wrong]
    bundles.append(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": condition}]}
    )
    folder = write(tmp_path / "export" / ODS, bundles)
    (folder / "broken.json").write_bytes(b'{"resourceType": "Bundle", "entry": [' + CANARY.encode())
    manifest = run(folder, tmp_path / "package", keys)

    held = {(q["source"], q["position"]): q for q in quarantined(tmp_path / "package")}
    for line, (bundle, path) in enumerate(wrong, start=2):
        q = held.pop(("Bundle.000.ndjson", line))
        assert (q["path"], q["record_id"], q["resource_type"]) == (path, bundle["id"], "Bundle")
    q = held.pop(("Bundle.000.ndjson", 8))  # one entry's element out of shape: that resource only
    assert (q["path"], q["record_id"]) == ("Bundle.entry[0].resource.subject", "c-bad")
    assert held.pop(("broken.json", 1))["reason"].startswith("not valid JSON")
    assert held == {}
    assert manifest["quarantined"]["rows"] == len(wrong) + 2
    assert set(sent(tmp_path / "package")["patients"]) == {pseudonym(keys, 1)}
    assert hits(tmp_path / "package", ["canary"]) == []


def test_a_type1_dissent_recorded_in_a_bundle_is_honoured(tmp_path: Path, keys: Keys) -> None:
    dissent = {
        "resourceType": "Observation",
        "id": "p2-dissent",
        "status": "final",
        "subject": {"reference": "Patient/p2"},
        "code": coded(SPEC.dissent.code),
        "effectiveDateTime": "2022-01-01",
    }
    folder = write(tmp_path / "export" / ODS, [transaction([*practice(3), dissent])])
    manifest = run(folder, tmp_path / "package", keys)

    assert manifest["type1_opt_out"]["active"] == [pseudonym(keys, 2)]
    for name, rows in sent(tmp_path / "package").items():
        assert set(rows) == {pseudonym(keys, 1), pseudonym(keys, 3)}, name


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["urn:uuid:a", "Patient/a", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["reference", "subject", "id", "mode"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)
RESOURCE = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Patient", "Condition", "OperationOutcome", "Bundle"])},
    optional={"id": JSON, "subject": JSON, "type": st.just("collection"), "entry": JSON},
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "fullUrl": st.sampled_from(["urn:uuid:a", f"{BASE}/Patient/a", "x"]) | JSON,
        "resource": RESOURCE | JSON,
        "request": st.fixed_dictionaries(
            {"method": st.sampled_from(["POST", "DELETE"]) | JSON},
            optional={"url": st.sampled_from(["Patient/a", f"{BASE}/Patient/a/_history/2"]) | JSON},
        ),
        "search": st.fixed_dictionaries(
            {"mode": st.sampled_from(["match", "include", "outcome"]) | JSON}
        ),
    },
)
BUNDLE = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["collection", "transaction", "searchset", "batch", "history", "document", "message"]
        )
        | JSON
    },
    optional={"entry": st.lists(ENTRY | JSON, max_size=4) | JSON},
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(BUNDLE)
def test_any_bundle_is_unpacked_or_refused_naming_a_path(bundle: dict[str, Any]) -> None:
    bundle = bundle | {"resourceType": "Bundle"}
    try:
        unpacked = unpack(bundle)
    except Shape as shape:
        assert shape.path.startswith("Bundle.")
    else:
        for entry in unpacked.entries:
            resource = orjson.loads(entry.line)
            assert resource["resourceType"] == entry.kind not in ("OperationOutcome", "Bundle")
