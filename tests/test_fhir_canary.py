"""Privacy proven on every element: a canary in every string leaf of every resource type the
extractor reads (paths from FHIR R4's structure definitions, via the fhirclient models), then
every byte of the package, its manifest and the central lake, decoded, searched: no canary."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from collecting import central
from extracting import Keys, run, tables
from fhir_canaries import PREFIX, Canaries, planted, swapped
from fhir_exports import ODS, coded, practice, subject, write
from fhir_scan import package_text
from gpdpr.collect.service import collect
from gpdpr.spec import shipped

WITHDRAWN = shipped().dissent_withdrawn.code


def _bases() -> list[dict[str, Any]]:
    """A valid practice of two patients, with the types only some exports hold: a statement of
    a medicine, a Medication, and a withdrawal recorded as a Consent and as a Flag."""
    out = practice(2)
    for pid in ("p1", "p2"):
        out += [
            {
                "resourceType": "MedicationStatement",
                "id": f"{pid}-ms",
                "status": "active",
                "medicationReference": {"reference": "Medication/med1"},
                "subject": subject(pid),
                "effectiveDateTime": "2024-01-02",
            },
            {
                "resourceType": "Consent",
                "id": f"{pid}-consent",
                "status": "active",
                "patient": subject(pid),
                "dateTime": "2022-01-01",
                "provision": {"code": [coded(WITHDRAWN)]},
            },
            {
                "resourceType": "Flag",
                "id": f"{pid}-flag",
                "status": "active",
                "subject": subject(pid),
                "code": coded(WITHDRAWN),
                "period": {"start": "2022-01-01"},
            },
        ]
    medication = next(r for r in out if r["resourceType"] == "MedicationRequest")
    code = medication["medicationCodeableConcept"]
    out.append({"resourceType": "Medication", "id": "med1", "code": code})
    return out


def test_a_canary_in_every_string_leaf_reaches_neither_package_nor_lake(
    tmp_path: Path, keys: Keys
) -> None:
    canaries = Canaries()
    resources = []
    for base in _bases():
        # p1's resources carry every element they lack; p2's each have one of their own leaves
        # swapped for a canary in turn (one copy per leaf).
        if base.get("id", "").startswith("p2") or base["id"] == "p2":
            resources += [base, *swapped(canaries, base)]
        else:
            resources.append(planted(canaries, base))
    folder = write(tmp_path / "export" / ODS, resources)
    (tmp_path / "packages").mkdir()
    out = tmp_path / "packages" / ODS
    manifest = run(folder, out, keys)

    # The planted resources were read and kept, not merely held back: every table has p1's row.
    written = tables(out)
    for name in ("clinical_events", "medications", "immunisations", "allergies", "appointments"):
        assert written[name].num_rows >= 1, name
    assert manifest["quarantined"]["rows"] > 0  # many swaps make a record unreadable: held back

    home = central(tmp_path, keys)
    package_copy = tmp_path / "to-collect" / ODS
    shutil.copytree(out, package_copy)
    collect(home, [package_copy])
    lake = home.lake_folder
    assert any(lake.rglob("*.parquet"))

    found = package_text(out) + package_text(lake)
    hits = [c for c in canaries.paths if c in found]
    assert len(canaries.paths) > 10_000
    assert PREFIX not in found
    assert hits == []
