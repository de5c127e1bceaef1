"""What an applicant fills in: one data access request, checked for shape as it is saved.

A draft may be incomplete (the checks on submission say what is missing), but never wrong: an
unknown purpose, legal basis or exemption, a data item outside the data specification, or a
population that cannot exist is refused as the draft is saved, naming the field.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from gpdpr.errors import UserError
from gpdpr.governance.vocabulary import CATEGORIES, LEGAL_BASES, NDOO_EXEMPTIONS, SEXES
from gpdpr.spec import Specification

MAX_MONTHS = 60
_REGION = re.compile(r"^E12\d{6}$")


@dataclass(frozen=True)
class Item:
    table: str
    field: str
    justification: str = ""


@dataclass(frozen=True)
class Population:
    """Who the data may cover; None (or empty) means no restriction on that count."""

    min_age: int | None = None
    max_age: int | None = None
    sexes: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.min_age is not None:
            out["min_age"] = self.min_age
        if self.max_age is not None:
            out["max_age"] = self.max_age
        if self.sexes:
            out["sexes"] = list(self.sexes)
        if self.regions:
            out["regions"] = list(self.regions)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Population:
        return cls(
            data.get("min_age"),
            data.get("max_age"),
            tuple(data.get("sexes", ())),
            tuple(data.get("regions", ())),
        )


@dataclass(frozen=True)
class ApplicationForm:
    title: str
    purpose_category: str
    lay_summary: str = ""
    technical_summary: str = ""
    expected_benefit: str = ""
    legal_basis: str = ""
    data_from: date | None = None
    data_to: date | None = None
    commercial: bool = False
    commercial_benefit: str = ""
    uses_for_marketing: bool = False
    uses_for_insurance: bool = False
    ndoo_exemption: str | None = None
    ndoo_exemption_reason: str = ""
    duration_months: int = 12
    population: Population = field(default_factory=Population)
    items: tuple[Item, ...] = ()
    team: tuple[str, ...] = ()  # handles of named researchers besides the lead applicant
    collaborators: tuple[str, ...] = ()  # organisation names
    funders: tuple[str, ...] = ()

    def check_shape(self, spec: Specification) -> None:
        """Refuse what no draft may hold; say which field and what would do."""
        if not self.title.strip():
            raise UserError("title: an application needs a title")
        if self.purpose_category not in CATEGORIES:
            raise UserError(
                f"purpose_category: {self.purpose_category!r} is not one of {', '.join(CATEGORIES)}"
            )
        if self.legal_basis and self.legal_basis not in LEGAL_BASES:
            raise UserError(
                f"legal_basis: {self.legal_basis!r} is not one of {', '.join(LEGAL_BASES)}"
            )
        if self.ndoo_exemption is not None and self.ndoo_exemption not in NDOO_EXEMPTIONS:
            raise UserError(
                f"ndoo_exemption: {self.ndoo_exemption!r} is not one of "
                f"{', '.join(NDOO_EXEMPTIONS)} (leave it out to apply the National Data Opt-out)"
            )
        if self.data_from and self.data_to and self.data_from > self.data_to:
            raise UserError(
                f"data_from ({self.data_from}) is after data_to ({self.data_to}): swap them"
            )
        if not 1 <= self.duration_months <= MAX_MONTHS:
            raise UserError(
                f"duration_months: {self.duration_months} should be from 1 to {MAX_MONTHS}"
            )
        self._check_population()
        check_items(self.items, spec)

    def _check_population(self) -> None:
        p = self.population
        for name, age in (("min_age", p.min_age), ("max_age", p.max_age)):
            if age is not None and not 0 <= age <= 120:
                raise UserError(f"population.{name}: {age} is not an age from 0 to 120")
        if p.min_age is not None and p.max_age is not None and p.min_age > p.max_age:
            raise UserError(
                f"population: min_age {p.min_age} is above max_age {p.max_age}, so no one fits"
            )
        bad = [s for s in p.sexes if s not in SEXES]
        if bad:
            raise UserError(f"population.sexes: {bad} should be some of {', '.join(SEXES)}")
        bad = [r for r in p.regions if not _REGION.match(r)]
        if bad:
            raise UserError(f"population.regions: {bad} are not region codes (E12 and six digits)")


# The form's single-valued fields, stored as the application's columns of the same names.
SCALAR_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(ApplicationForm)
    if f.name not in ("population", "items", "team", "collaborators", "funders")
)


# Items that are no field of the specification but provenance the lake keeps with each row,
# which the research environment shows: the practice a registration is with (the practice that
# sent it, lake.tables.PRACTICE). Asked for and granted like any field.
PROVENANCE_ITEMS = frozenset({("registrations", "practice")})


def check_items(items: tuple[Item, ...], spec: Specification) -> None:
    """Every item must be a field of the data specification (or a provenance item), asked for
    once."""
    seen: set[tuple[str, str]] = set()
    for item in items:
        table = spec.tables.get(item.table)
        if table is None:
            raise UserError(
                f"data item {item.table}.{item.field}: there is no table {item.table!r} in the "
                f"data specification {spec.version} (its tables: {', '.join(spec.tables)})"
            )
        if item.field not in table.field_names and (item.table, item.field) not in PROVENANCE_ITEMS:
            raise UserError(
                f"data item {item.table}.{item.field}: the data specification {spec.version} "
                f"does not collect {item.field!r} in {item.table} (its fields: "
                f"{', '.join(table.field_names)})"
            )
        if (item.table, item.field) in seen:
            raise UserError(f"data item {item.table}.{item.field} is asked for twice")
        seen.add((item.table, item.field))
