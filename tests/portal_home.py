"""A real service home for the portal's tests: synthetic practices extracted and collected into
a lake, the governance cast of governing.py with passwords, identity-provider accounts for some
patients, and an approved application with an agreement in force."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import sqlalchemy as sa
from argon2 import PasswordHasher

from databases import POSTGRES_ENV, postgres_url
from extracting import nation
from governing import ADMIN, COLLEAGUE, LEAD, act, agreement_of, cast, form, votes
from gpdpr.db import DATABASE_URL_ENV, connect, url_for_home
from gpdpr.governance import agreements, applications, panel
from gpdpr.governance.form import Item, Population
from gpdpr.portal.security import Passwords
from gpdpr.portal.serve import demo_accounts

PASSWORD = "correct horse battery"
# argon2id still, with parameters cheap enough for many sign-ins in tests.
FAST = Passwords(PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1))
ITEMS = (
    Item("patients", "patient", "to count people once"),
    Item("patients", "sex", "outcomes differ by sex"),
    Item("patients", "birth_year", "age"),
    Item("patients", "birth_month", "age"),
    Item("registrations", "patient", "who is registered"),
    Item("registrations", "start_date", "registered when"),
    Item("registrations", "end_date", "registered when"),
    Item("clinical_events", "patient", "diagnoses"),
    Item("clinical_events", "code", "diagnoses"),
    Item("clinical_events", "effective_date", "when"),
)

# A study the portal's tests upload: adults registered on the index date, counted by sex.
STUDY = """
from gpdpr.tre.language import *

index = "2025-01-01"
dataset = Dataset()
registered = practice_registrations.for_patient_on(index)
dataset.define_population(registered.exists_for_patient() & (patients.age_on(index) >= 18))
dataset.sex = patients.sex
dataset.add_table("adults_by_sex", by=["sex"])
"""


def study(table: str, min_age: int) -> str:
    """STUDY with a table of its own name over people of `min_age` and more: its own bytes."""
    return STUDY.replace("adults_by_sex", table).replace(">= 18", f">= {min_age}")


# A table and a measure (the rate of any clinical event per month, by sex): what the checkers'
# pages show as tables and a chart.
MEASURED = (
    study("over_30s_by_sex", 30)
    + """
measures = Measures()
measures.define_measure(
    "any_event",
    numerator=clinical_events.where(
        clinical_events.effective_date.is_during(INTERVAL)
    ).exists_for_patient(),
    denominator=practice_registrations.for_patient_on(INTERVAL.start_date).exists_for_patient()
    & (patients.age_on(INTERVAL.start_date) >= 18),
    group_by={"sex": patients.sex},
    intervals=months(6).starting_on("2024-01-01"),
)
"""
)


@dataclass
class Home:
    home: Path
    engine: sa.Engine
    nhs_numbers: list[str]  # of patients with identity-provider accounts patient1@... onwards
    agreement: str  # in force, LEAD and COLLEAGUE on its team
    application: str


def patient_email(n: int) -> str:
    return f"patient{n}@example.org"


@contextmanager
def database(backend: str) -> Iterator[None]:
    """GPDPR_DATABASE_URL set to a fresh PostgreSQL schema for the block (sqlite: unset)."""
    saved = os.environ.pop(DATABASE_URL_ENV, None)
    try:
        if backend == "sqlite":
            yield
        else:
            with postgres_url() as url:
                os.environ[DATABASE_URL_ENV] = url
                yield
    finally:
        os.environ.pop(DATABASE_URL_ENV, None)
        if saved is not None:
            os.environ[DATABASE_URL_ENV] = saved


def build(folder: Path, patients: int = 60) -> Home:
    """Build the home in `folder` (on the database GPDPR_DATABASE_URL names, if set)."""
    from gpdpr.collect.service import Central, collect

    home = folder / "home"
    home.mkdir(parents=True)
    practices = nation(
        home / "practices", home / "keys", home / "packages", 2, 1_500, 11, workers=1
    )
    collect(Central(home), sorted(p for p in (home / "packages").iterdir()))
    engine = connect(url_for_home(home))
    cast(engine)
    numbers = pq.read_table(practices[0] / "patients.parquet", columns=["nhs_number"])
    nhs_numbers = [str(n) for n in numbers["nhs_number"].to_pylist()[:patients]]
    demo_accounts(home, nhs_numbers, PASSWORD, FAST)
    reference = act(
        engine,
        lambda s: (
            applications.create_draft(
                s,
                LEAD,
                form(items=ITEMS, population=Population(min_age=18), team=(COLLEAGUE,)),
            ).reference
        ),
    )
    act(engine, lambda s: applications.submit(s, LEAD, reference))
    act(engine, lambda s: panel.start_review(s, ADMIN, reference))
    votes(engine, reference)
    act(engine, lambda s: panel.decide(s, ADMIN, reference, "Approved."))
    act(engine, lambda s: agreements.issue(s, ADMIN, reference))
    found = agreement_of(engine, reference)
    assert found is not None
    return Home(home, engine, nhs_numbers, found, reference)


def postgres_available() -> bool:
    return bool(os.environ.get(POSTGRES_ENV))
