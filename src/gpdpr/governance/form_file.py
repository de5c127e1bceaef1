"""An application as a TOML file: what `gpdpr governance apply` and `edit` read.

Keys at the top level are the form's fields, `[population]` restricts who the data covers and
each `[[items]]` entry asks for one field (or several `fields` of one table) with its
justification. Anything the file holds that the form has no place for, or of the wrong type, is
refused naming the file and the key, so a typo never silently drops part of an application.
Text written over several lines is joined into paragraphs. What the values mean (a known
purpose, an item in the data specification) is checked when the draft is saved
(`ApplicationForm.check_shape`).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Any

from gpdpr.errors import UserError
from gpdpr.governance.form import ApplicationForm, Item, Population

TEXT = (
    "title",
    "purpose_category",
    "lay_summary",
    "technical_summary",
    "expected_benefit",
    "legal_basis",
    "commercial_benefit",
    "ndoo_exemption",
    "ndoo_exemption_reason",
)
FLAGS = ("commercial", "uses_for_marketing", "uses_for_insurance")
DATES = ("data_from", "data_to")
NAMES = ("team", "collaborators", "funders")
TOP = (*TEXT, *FLAGS, *DATES, "duration_months", *NAMES, "population", "items")
REQUIRED = ("title", "purpose_category")
POPULATION = ("min_age", "max_age", "sexes", "regions")
ITEM = ("table", "field", "fields", "justification")


def read_form(path: Path) -> ApplicationForm:
    """The application in TOML file `path`, or a UserError naming the file and the key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (gpdpr governance example writes one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise UserError(f"{path}: cannot read it: {reason}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    return _Reader(path).form(data)


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> UserError:
        return UserError(f"{self.path}: {key}: {problem}")

    def form(self, data: dict[str, Any]) -> ApplicationForm:
        self.known(data, TOP, "")
        for key in REQUIRED:
            if key not in data:
                raise self.fail(key, "missing: every application needs one")
        values: dict[str, Any] = {}
        for key in TEXT:
            if key in data:
                values[key] = _prose(self.text(data[key], key))
        for key in FLAGS:
            if key in data:
                values[key] = self.typed(data[key], key, bool, "true or false")
        for key in DATES:
            if key in data:
                values[key] = self.date(data[key], key)
        if "duration_months" in data:
            values["duration_months"] = self.number(data["duration_months"], "duration_months")
        for key in NAMES:
            if key in data:
                values[key] = self.names(data[key], key)
        population = self.typed(data.get("population", {}), "population", dict, "a table")
        values["population"] = self.population(population)
        items = self.typed(data.get("items", []), "items", list, "an array of [[items]] tables")
        values["items"] = tuple(i for n, e in enumerate(items, 1) for i in self.items(e, n))
        return ApplicationForm(**values)

    def known(self, data: dict[str, Any], keys: tuple[str, ...], prefix: str) -> None:
        for key in data:
            if key not in keys:
                close = difflib.get_close_matches(key, keys, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(
                    prefix + key, f"unknown key{hint}; the keys allowed are {', '.join(keys)}"
                )

    def typed(self, value: Any, key: str, kind: type, what: str) -> Any:
        # bool is an int in Python, but never a number of months or an age here
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"should be {what} (got {_shown(value)})")
        return value

    def text(self, value: Any, key: str) -> str:
        return str(self.typed(value, key, str, "text in quotes")).strip()

    def number(self, value: Any, key: str) -> int:
        return int(self.typed(value, key, int, "a whole number"))

    def names(self, value: Any, key: str) -> tuple[str, ...]:
        listed = self.typed(value, key, list, 'a list of names in quotes, like ["a", "b"]')
        return tuple(self.text(v, key) for v in listed)

    def date(self, value: Any, key: str) -> date:
        if isinstance(value, datetime) or not isinstance(value, date):
            raise self.fail(
                key, f"should be a date without quotes, like 2015-01-01 (got {_shown(value)})"
            )
        return value

    def population(self, data: dict[str, Any]) -> Population:
        self.known(data, POPULATION, "population.")

        def age(key: str) -> int | None:
            return self.number(data[key], f"population.{key}") if key in data else None

        def listed(key: str) -> tuple[str, ...]:
            return self.names(data[key], f"population.{key}") if key in data else ()

        return Population(age("min_age"), age("max_age"), listed("sexes"), listed("regions"))

    def items(self, entry: Any, number: int) -> list[Item]:
        where = f"items (entry {number})"
        entry = self.typed(entry, where, dict, "a table with table, field and justification")
        self.known(entry, ITEM, f"{where}: ")
        if "table" not in entry:
            raise self.fail(where, "missing table: the table of the data specification")
        if ("field" in entry) == ("fields" in entry):
            raise self.fail(where, "give either field (one) or fields (a list), not both")
        table = self.text(entry["table"], f"{where}: table")
        if "field" in entry:
            fields: tuple[str, ...] = (self.text(entry["field"], f"{where}: field"),)
        else:
            fields = self.names(entry["fields"], f"{where}: fields")
            if not fields:
                raise self.fail(f"{where}: fields", "empty: name at least one field")
        why = _prose(self.text(entry.get("justification", ""), f"{where}: justification"))
        return [Item(table, field, why) for field in fields]


def _prose(text: str) -> str:
    """Text as written across lines of a TOML string, as paragraphs: the lines of each joined
    with spaces, paragraphs (split by a blank line) kept apart."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _shown(value: Any) -> str:
    """A value as it looks in TOML, near enough for an error message."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return (
        "a table"
        if isinstance(value, dict)
        else "a list"
        if isinstance(value, list)
        else str(value)
    )


EXAMPLE = '''\
# An application for access to GP data, as `gpdpr governance apply FILE --as HANDLE` reads it.
# Change everything below to describe your own project. Lines starting with # are comments.
# Save it as a draft with `apply`, change it with `edit`, and send it to the panel with
# `submit`: the automatic checks then say what is missing, or refuse a purpose the service
# does not allow (marketing, insurance, or a commercial purpose with no benefit to health
# and care).

# A short title: it is published on the Data Uses Register.
title = "Diabetes care and deprivation in primary care, 2015 to 2025"

# One of: service_planning, public_health, research, policy.
purpose_category = "research"

# For the public: what you will do and why, in plain words (it is published). Text in
# triple quotes may run over several lines: they are joined into one paragraph, and a blank
# line starts the next.
lay_summary = """
People with type 2 diabetes who live in poorer areas are more likely to develop serious
complications. We want to find out whether they get the same checks from their GP practice
(blood sugar tests, blood pressure checks and reviews of their medicines) as people living
in better-off areas, and whether any gap has narrowed or widened over ten years.
"""

# For the panel: design, methods, and why each data item is needed.
technical_summary = """
Retrospective cohort of adults with a recorded diagnosis of type 2 diabetes. Outcomes: the
annual completion of the HbA1c, blood pressure and medication review care processes, and
HbA1c control. Exposure: Index of Multiple Deprivation decile of the area of residence.
Multilevel models with patients nested in practices, adjusted for age and sex, with time
trends by deprivation decile. Results are published only as aggregate tables with small
numbers suppressed.
"""

# What health and care gains, and for whom.
expected_benefit = """
Evidence for commissioners and practices on where diabetes care falls short for deprived
communities, to target outreach and reduce avoidable complications.
"""

# One of: public_task_health_care, public_task_public_health, public_task_research,
# legitimate_interests_research, explicit_consent.
legal_basis = "public_task_research"

# The period of records needed: TOML dates, without quotes.
data_from = 2015-01-01
data_to = 2025-12-31

# How long you need access, in months (1 to 60).
duration_months = 24

# Is the applicant a commercial company, or will one profit from the results? If true,
# commercial_benefit must say what it gains.
commercial = false
commercial_benefit = ""

# Will the data or results be used for marketing, or for insurance? Either refuses the
# application: the service exists for health and care planning and research only.
uses_for_marketing = false
uses_for_insurance = false

# The National Data Opt-out is applied unless you claim an exemption. To claim one, name it
# (consent, legal_requirement, overriding_public_interest or communicable_disease) and say why:
# ndoo_exemption = "consent"
# ndoo_exemption_reason = "..."

# Other named researchers (handles from `gpdpr governance people`, with the applicant role).
# You, the lead applicant, are on the team already. Only the team may use the data.
team = ["s.patel"]

# Organisations working with you, and who pays for the work (names from
# `gpdpr governance orgs`). Your own organisation is added as the lead.
collaborators = ["NHS West Yorkshire Integrated Care Board"]
funders = ["Diabetes Research Trust"]

# Who the data may cover. Leave a key out for no restriction on it.
[population]
min_age = 18
# max_age = 120
# F, M or U (unknown); leave out for everyone.
# sexes = ["F", "M", "U"]
# Region codes (E12 and six digits): here Yorkshire and The Humber, and the North West.
regions = ["E12000003", "E12000002"]

# The data items: each a field of the data specification, with why it is needed.
# `field` asks for one field; `fields` asks for several of one table with one justification.
# Ask only for what the analysis needs: the panel weighs every item.

[[items]]
table = "patients"
field = "patient"
justification = "The pseudonym, to link each person's records across tables."

[[items]]
table = "patients"
fields = ["sex", "birth_year"]
justification = "Age and sex: the models adjust for both."

[[items]]
table = "patients"
field = "imd_decile"
justification = "Deprivation decile of the area of residence: the exposure under study."

[[items]]
table = "patients"
field = "region_code"
justification = "Region, to compare regions and to keep to the population above."

[[items]]
table = "clinical_events"
fields = ["patient", "code", "effective_date", "value", "unit"]
justification = """
Diagnoses, HbA1c and blood pressure results with their dates and units: the outcomes
(care processes completed, and HbA1c control) and the type 2 diabetes diagnosis that
defines the cohort.
"""

[[items]]
table = "medications"
fields = ["patient", "code", "issue_date"]
justification = "Glucose-lowering and blood pressure medicines, for the medication reviews."
'''
