"""Never crash, say where: any JSON value in any position of a resource is either read or
quarantined with its file, line, resource type, id pseudonym and FHIR path.

Run as a script for the larger fuzzed corpus (10,000 resources by default):
    PYTHONPATH=src python tests/test_fhir_shapes.py [resources]
"""

from __future__ import annotations

import copy
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from extracting import Keys, record_pseudonyms, run, tables
from fhir_exports import ODS, practice, write
from fhir_scan import hits
from gpdpr.practice import fhir
from gpdpr.practice.extract import quarantine_path
from gpdpr.practice.rules import REASONS

CLOSED_REASONS = set(REASONS.values()) | set(fhir.FAULT_REASONS)

# Shapes a real export has been seen to hold, each where the extractor reads: (resource id,
# element, value, the FHIR path the quarantine must name, or None where the value is read).
SHAPES: list[tuple[str, str, Any, str | None]] = [
    ("p1-c", "subject", "Patient/p1", "Condition.subject"),
    ("p1-c", "code", {"coding": {"code": "1"}}, "Condition.code.coding"),
    ("p1-c", "code", [{"coding": []}], "Condition.code"),
    ("p1-c", "category", {"coding": []}, "Condition.category"),
    ("p1-c", "onsetDateTime", {"start": "2020"}, "Condition.onsetDateTime"),
    ("p1-o", "valueQuantity", [1], "Observation.valueQuantity"),
    ("p1-o", "performer", {"reference": "Practitioner/s1"}, "Observation.performer"),
    ("p1-o", "effectiveDateTime", 2020, "Observation.effectiveDateTime"),
    ("p1-o", "code", {"coding": ["59621000"]}, "Observation.code.coding"),
    ("p1-p", "subject", {"reference": 7}, "Procedure.subject.reference"),
    ("p1-m", "dispenseRequest", [], "MedicationRequest.dispenseRequest"),
    ("p1-m", "medicationCodeableConcept", "aspirin", "MedicationRequest.medicationCodeableConcept"),
    ("p1-i", "performer", {"actor": {}}, "Immunization.performer"),
    ("p1-i", "extension", {"url": "x"}, "Immunization.extension"),
    ("p1-a", "patient", ["Patient/p1"], "AllergyIntolerance.patient"),
    ("p1-ap", "participant", {"actor": {}}, "Appointment.participant"),
    ("p1-ap", "appointmentType", "Telephone", "Appointment.appointmentType"),
    ("p1-r", "requester", "Practitioner/s1", "ServiceRequest.requester"),
    ("p1-reg", "period", "2001", "EpisodeOfCare.period"),
    ("p1-reg", "type", {"text": "GP"}, "EpisodeOfCare.type"),
    ("p1-o", "meta", "yesterday", "Observation.meta"),
    # Read: a value of the wrong type where a plain value belongs is no value.
    ("p1-o", "issued", ["2020"], "Observation.issued"),
    ("p1-ap", "minutesDuration", "ten", None),
    ("p1-r", "priority", {"code": "urgent"}, None),
    ("p2-c", "recordedDate", None, None),
]


def _apply(resources: list[dict[str, Any]], rid: str, key: str, value: Any) -> None:
    for r in resources:
        if r.get("id") == rid:
            r[key] = value


def test_every_wrong_shape_is_read_or_quarantined_with_its_path(tmp_path: Path, keys: Keys) -> None:
    # Each shape planted in its own patient's resource (p1's shape in pN's), all in one export.
    resources = practice(len(SHAPES))
    expected = {}
    for n, (rid, key, value, path) in enumerate(SHAPES, start=1):
        planted = rid.replace("p1-", f"p{n}-", 1) if rid.startswith("p1-") else rid
        _apply(resources, planted, key, value)
        if path is not None:
            expected[planted] = path
    out = tmp_path / "package"
    manifest = run(write(tmp_path / ODS, resources), out, keys)
    assert set(manifest["quarantined"]["by_reason"]) <= CLOSED_REASONS
    entries = [orjson.loads(x) for x in quarantine_path(out).read_bytes().splitlines()]
    assert {e["record_id"]: e["path"] for e in entries} == expected
    for entry in entries:
        assert entry["source"].endswith(".000.ndjson") and entry["position"] >= 1
        assert entry["resource_type"] == entry["path"].split(".")[0]
        table = fhir.table_of(entry["resource_type"])
        assert {entry["id_pseudonym"]} == record_pseudonyms(keys, ODS, table, [entry["record_id"]])
    # The rest were read: every other resource of the practice was sent.
    sent = sum(t["rows"] for name, t in manifest["tables"].items() if name != "staff")
    assert sent == len(resources) - len(expected) - 4  # less the organisations and staff


# ---- fuzzing -------------------------------------------------------------------------------------

FUZZ_CANARY = "FuzzCanary"  # every string the fuzzer plants carries it: none may be sent
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what JSON writers (and orjson) can write
    | st.floats()
    | st.text(max_size=8).map(lambda t: f"{FUZZ_CANARY}{t}"),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _places(value: Any, trail: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a resource (object keys and list items), as key trails."""
    out = [trail] if trail else []
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in ("resourceType", "id"):
                out += _places(v, (*trail, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _places(v, (*trail, i))
    return out


def mutate(resource: dict[str, Any], place: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    target: Any = out
    for step in place[:-1]:
        target = target[step]
    target[place[-1]] = value
    return out


RECORDS = [r for r in practice(1) if r["id"].startswith("p1-")]


MUTATION = st.tuples(st.integers(0, len(RECORDS) - 1), st.integers(0, 10_000), JSON)


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4, unique_by=lambda m: m[0]))
def test_fuzzed_resources_are_read_or_quarantined(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, mutations: list[tuple[int, int, Any]]
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    fuzzed = {}
    for which, where, value in mutations:
        original = RECORDS[which]
        places = _places(original)
        fuzzed[original["id"]] = mutate(original, places[where % len(places)], value)
    resources = [r for r in practice(1) if r["id"] not in fuzzed] + list(fuzzed.values())
    folder = write(tmp / ODS, resources)
    manifest = run(folder, tmp / "package", keys)
    assert set(manifest["quarantined"]["by_reason"]) <= CLOSED_REASONS
    assert hits(tmp / "package", [FUZZ_CANARY]) == []
    written = tables(tmp / "package")
    quarantined = quarantine_path(tmp / "package").read_bytes()
    # Each fuzzed resource is sent, quarantined, or counted as left out.
    accounted = sum(manifest["excluded"].values()) + sum(manifest["not_read"].values())
    for r in fuzzed.values():
        table = fhir.table_of(r["resourceType"])
        (pseudonym,) = record_pseudonyms(keys, ODS, table, [r["id"]])
        if pseudonym in set(written[table]["record_id"].to_pylist()):
            continue
        if pseudonym.encode() in quarantined:
            continue
        accounted -= 1
        assert accounted >= 0, r["id"]


def fuzz_corpus(resources: int, seed: int = 1) -> None:
    """The larger run: `resources` fuzzed resources in one export, one extract, counted."""
    rng = random.Random(seed)
    leaves: list[Any] = [
        None,
        True,
        0,
        -1,
        1e308,
        "",
        "x" * 300,
        [],
        {},
        [[]],
        {"a": {}},
        "2020-13",
    ]
    leaves += ["Patient/p1", {"reference": 5}, {"coding": {}}, [{"coding": [1]}], "\ud7ff"]
    leaves += [f"{FUZZ_CANARY} 943 476 5919", {"text": FUZZ_CANARY}, [{"code": FUZZ_CANARY}]]
    out: list[dict[str, Any]] = practice(20)
    base = [r for r in out if r["resourceType"] not in ("Organization", "Patient")]
    made = 0
    while made < resources:
        original = rng.choice(base)
        places = _places(original)
        fuzzed = mutate(original, rng.choice(places), rng.choice(leaves))
        fuzzed["id"] = f"f{made}"
        out.append(fuzzed)
        made += 1
    with tempfile.TemporaryDirectory() as tmp:
        keys = Keys(Path(tmp) / "keys")
        folder = write(Path(tmp) / ODS, out)
        manifest = run(folder, Path(tmp) / "package", keys)
        sent = sum(
            t["rows"] for n, t in manifest["tables"].items() if n not in ("patients", "staff")
        )
        print(f"fuzzed resources: {resources:,}; tracebacks: 0 (the extract completed)")
        print(f"records sent: {sent:,}; excluded: {sum(manifest['excluded'].values()):,}")
        held = manifest["quarantined"]
        print(f"quarantined: {held['rows']:,} {held['by_reason']}")
        print(f"replaced outside the allowlist: {manifest['replaced_outside_allowlist']}")
        print(f"canary hits in the package: {len(hits(Path(tmp) / 'package', [FUZZ_CANARY]))}")


if __name__ == "__main__":
    fuzz_corpus(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
