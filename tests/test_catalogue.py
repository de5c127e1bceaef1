"""The code catalogue holds well-formed codes only, and every code written is in it."""

import re
from pathlib import Path

import pyarrow.compute as pc

from conftest import Made
from gpdpr.terminology import DMD_SYSTEM, SNOMED_SYSTEM, load_catalogue
from readers import FhirOutput, codes_in, read_columnar

# SNOMED CT identifiers (and dm+d ids, which are SNOMED identifiers) end in a Verhoeff check digit.
_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def verhoeff_ok(code: str) -> bool:
    check = 0
    for i, digit in enumerate(reversed(code)):
        check = _D[check][_P[i % 8][int(digit)]]
    return check == 0


def test_verhoeff_recognises_known_snomed_codes_and_rejects_a_typo() -> None:
    assert verhoeff_ok("38341003")  # Hypertensive disorder
    assert verhoeff_ok("827241000000103")
    assert not verhoeff_ok("38341004")


def test_every_catalogue_code_is_a_well_formed_snomed_identifier() -> None:
    catalogue = load_catalogue()
    assert len(catalogue.concepts) > 150
    for concept in catalogue.concepts:
        assert re.fullmatch(r"[1-9]\d{5,17}", concept.code), concept
        assert verhoeff_ok(concept.code), f"{concept.code} ({concept.term}) fails its check digit"
        assert concept.term and concept.system in ("snomed", "dmd")


def test_catalogue_has_no_duplicate_codes_and_says_where_each_was_checked() -> None:
    concepts = load_catalogue().concepts
    assert len({(c.system, c.code) for c in concepts}) == len(concepts)
    csv_text = (Path(__file__).parents[1] / "src/gpdpr/terminology/catalogue.csv").read_text()
    assert all(line.count(",") >= 5 for line in csv_text.splitlines()[1:])


def test_every_code_written_is_in_the_catalogue_in_both_formats(
    clean_columnar: Made, clean_fhir_read: FhirOutput
) -> None:
    catalogue = load_catalogue()
    tables = read_columnar(clean_columnar.root)
    for table, column, system in [
        ("clinical_events", "code", "snomed"),
        ("allergies", "code", "snomed"),
        ("referrals", "code", "snomed"),
        ("immunisations", "procedure_code", "snomed"),
        ("medications", "code", "dmd"),
        ("immunisations", "vaccine_code", "dmd"),
    ]:
        distinct = pc.unique(tables[table][column]).to_pylist()
        assert distinct, table
        missing = [c for c in distinct if (system, c) not in catalogue]
        assert not missing, f"{table}.{column}: {missing}"

    systems = {SNOMED_SYSTEM: "snomed", DMD_SYSTEM: "dmd"}
    seen = 0
    for resources in clean_fhir_read.resources.values():
        for resource in resources:
            for system, code in codes_in(resource):
                if system in systems:
                    seen += 1
                    assert (systems[system], code) in catalogue, (resource["id"], code)
    assert seen > 100_000
