"""The code catalogue: the SNOMED CT concepts and dm+d products gpdpr knows, with their terms.

Shipped as data (catalogue.csv). Each row is a real code; `key` is the handle the synthetic
generator uses to pick codes for a clinical idea (several codes may share one key). The catalogue is
also what lets later stages say a code is unknown.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

SNOMED_SYSTEM = "http://snomed.info/sct"
DMD_SYSTEM = "https://dmd.nhs.uk"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
SDS_USER_SYSTEM = "https://fhir.nhs.uk/Id/sds-user-id"
GMC_SYSTEM = "https://fhir.hl7.org.uk/Id/gmc-number"
NMC_SYSTEM = "https://fhir.hl7.org.uk/Id/nmc-number"
UCUM_SYSTEM = "http://unitsofmeasure.org"
VACCINATION_PROCEDURE_EXT = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-VaccinationProcedure"
)
# Registration end reasons have no home in core EpisodeOfCare; carried in a documented extension.
REGISTRATION_END_EXT = "https://gpdpr.org/fhir/StructureDefinition/registration-end-reason"

SYSTEM_URIS = {"snomed": SNOMED_SYSTEM, "dmd": DMD_SYSTEM}


@dataclass(frozen=True)
class Concept:
    key: str
    system: str  # "snomed" or "dmd"
    code: str
    term: str
    kind: str

    @property
    def system_uri(self) -> str:
        return SYSTEM_URIS[self.system]


class Catalogue:
    def __init__(self, concepts: list[Concept]) -> None:
        self.concepts = concepts
        self._by_key: dict[str, list[Concept]] = {}
        self._by_code: dict[tuple[str, str], Concept] = {}
        for concept in concepts:
            self._by_key.setdefault(concept.key, []).append(concept)
            self._by_code[(concept.system, concept.code)] = concept

    def codes(self, key: str) -> list[Concept]:
        """The concepts filed under `key`, most common first."""
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(f"the code catalogue has no concepts for key {key!r}") from None

    def keys(self) -> list[str]:
        return list(self._by_key)

    def lookup(self, system: str, code: str) -> Concept | None:
        return self._by_code.get((system, code))

    def __contains__(self, system_and_code: tuple[str, str]) -> bool:
        return system_and_code in self._by_code


@cache
def load_catalogue() -> Catalogue:
    text = resources.files(__package__).joinpath("catalogue.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    concepts = [
        Concept(r["key"], r["system"], r["code"], r["term"], r["kind"]) for r in rows if r["key"]
    ]
    return Catalogue(concepts)


# The seam every reader of records uses: what a code is, by the loaded release (see codes).
from gpdpr.terminology.codes import Status, classify, classify_all  # noqa: E402

__all__ = ["Status", "classify", "classify_all"]
