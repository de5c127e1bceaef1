"""Red team, properties (issue 17): for any definition Hypothesis makes (measures and aggregate
tables over conditions, groups and disclosure rules), over a small population with one planted
unique person, releasing the run with that person and then the run without them, as the same
party, through the release control and the differencing check, either refuses the second
release or publishes exactly the same files. No released table may change by 1 to 7 when one
person is removed: that change is the person.

Library level: the engine's run, the disclosure control (`control(definition, results)`) and the
differencing guard (`release.differencing.check` and `remember`), against a database of its own
(so other tests' releases do not interfere). DuckDB with many examples; Spark with a few."""

from __future__ import annotations

import random
import textwrap
from collections.abc import Iterator
from datetime import date
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from governing import LEAD, agreement_of, bring_to, cast
from gpdpr.db import connect, url_for_home
from gpdpr.db.models import now
from gpdpr.errors import UserError
from gpdpr.governance import people
from gpdpr.tre.query import serial
from gpdpr.tre.query.language import Dataset, Measures, definition_of
from redteam import control_function, engine_named
from tre_data import make_views

TARGET = "the-target"
HAS, OTHER = "59621000", "44054006"  # the planted person has the first; about a third do


def population(seed: int = 17, people_count: int = 120) -> dict[str, pa.Table]:
    """Views of `people_count` people: the target unique by sex, month of birth and decile,
    with HAS on a day of their own; everyone else drawn from a few common values."""
    rng = random.Random(seed)
    patients = [
        {"patient_id": TARGET, "sex": "F", "date_of_birth": date(1931, 7, 1), "imd_decile": 10}
    ]
    events = [{"patient_id": TARGET, "code": HAS, "effective_date": date(2020, 5, 17)}]
    registrations = [{"patient_id": TARGET, "start_date": date(2010, 1, 1)}]
    births = [date(y, m, 1) for y in (1950, 1960, 1970, 1980, 1990, 2000) for m in (1, 7)]
    for i in range(people_count - 1):
        patient = f"p{i:03d}"
        patients.append(
            {
                "patient_id": patient,
                "sex": "F" if i % 2 else "M",
                "date_of_birth": rng.choice(births),
                "imd_decile": rng.randint(1, 9),
            }
        )
        for code, share in ((HAS, 0.35), (OTHER, 0.4)):
            if rng.random() < share:
                day = date(2019 + rng.randint(0, 4), rng.randint(1, 12), 1)
                events.append({"patient_id": patient, "code": code, "effective_date": day})
        if rng.random() < 0.9:
            registrations.append({"patient_id": patient, "start_date": date(2012, 1, 1)})
    return make_views(
        patients=patients, clinical_events=events, practice_registrations=registrations
    )


def without(views: dict[str, pa.Table], patient: str) -> dict[str, pa.Table]:
    return {
        name: view.filter(pa.compute.not_equal(view.column("patient_id"), patient))
        for name, view in views.items()
    }


# ---- definitions -----------------------------------------------------------------------------

PRELUDE = f"""
has = clinical_events.where(clinical_events.code.is_in(["{HAS}"])).exists_for_patient()
other = clinical_events.where(clinical_events.code.is_in(["{OTHER}"])).exists_for_patient()
registered = practice_registrations.for_patient_on("2024-01-01").exists_for_patient()
"""
LEAVES = [
    'patients.sex == "F"',
    'patients.sex == "M"',
    'patients.age_on("2024-01-01") >= 50',
    'patients.age_on("2024-01-01") >= 70',
    "patients.imd_decile <= 5",
    "patients.imd_decile >= 8",
    "has",
    "other",
    "registered",
    "patients.exists_for_patient()",
]
GROUPS = {
    "sex": "patients.sex",
    "band": 'case(when(patients.imd_decile <= 5).then("low"), otherwise="high")',
    "has": "has",
    "old": 'patients.age_on("2024-01-01") >= 60',
}


def conditions() -> st.SearchStrategy[str]:
    leaves = st.sampled_from(LEAVES)
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda p: f"({p[0]}) & ({p[1]})"),
            st.tuples(inner, inner).map(lambda p: f"({p[0]}) | ({p[1]})"),
            inner.map(lambda c: f"~({c})"),
        ),
        max_leaves=3,
    )


@st.composite
def definitions(draw: Any) -> str:
    """A definition file's body: a measure, an aggregate table, or both."""
    rule = draw(st.sampled_from(["round5", "midpoint6"]))
    kinds = draw(st.sampled_from([("measure",), ("table",), ("measure", "table")]))
    body = PRELUDE
    if "table" in kinds:
        by = draw(st.lists(st.sampled_from(sorted(GROUPS)), min_size=1, max_size=2, unique=True))
        body += f"dataset = Dataset()\ndataset.configure_disclosure_control({rule!r})\n"
        body += f"dataset.define_population({draw(conditions())})\n"
        for name in by:
            body += f"dataset.{name} = {GROUPS[name]}\n"
        statistics = ""
        if draw(st.booleans()):
            body += 'dataset.age = patients.age_on("2024-01-01")\n'
            statistics = (
                f", statistics={{'age': {draw(st.sampled_from([['mean'], ['median'], ['sd']]))}}}"
            )
        body += f"dataset.add_table('groups', by={by!r}{statistics})\n"
    if "measure" in kinds:
        groups = draw(st.lists(st.sampled_from(sorted(GROUPS)), max_size=1))
        group_by = "{" + ", ".join(f"{g!r}: {GROUPS[g]}" for g in groups) + "}"
        months = draw(st.integers(1, 2))
        body += f"measures = Measures()\nmeasures.configure_disclosure_control({rule!r})\n"
        body += (
            f"measures.define_measure('rate', numerator={draw(conditions())}, "
            f"denominator={draw(conditions())}, group_by={group_by}, "
            f"intervals=months({months}).starting_on('2024-01-01'))\n"
        )
    return body


def built(body: str) -> Any:
    """The definition a body makes, through its JSON (as the service receives it)."""
    namespace: dict[str, Any] = {}
    exec("from gpdpr.tre.language import *\n" + body, namespace)
    dataset, measures = namespace.get("dataset"), namespace.get("measures")
    assert isinstance(dataset, Dataset | None) and isinstance(measures, Measures | None)
    return serial.from_json(serial.to_json(definition_of(dataset, measures)))


# ---- the guard's own database --------------------------------------------------------------


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sa.Engine, str]]:
    """A central database with the governance cast and one agreement (LEAD's) in force."""
    home = tmp_path_factory.mktemp("ledger")
    db = connect(url_for_home(home))
    cast(db)
    reference = agreement_of(db, bring_to(db, "agreement_active"))
    assert reference is not None
    yield db, reference
    db.dispose()


def released_twice(
    ledger: tuple[sa.Engine, str], engine: str, body: str, views: dict[str, pa.Table]
) -> None:
    from gpdpr.tre.release.checking import record_run
    from gpdpr.tre.release.differencing import DifferencingRisk, check, remember

    try:
        definition = built(body)
    except UserError:
        event("refused as a definition")
        return
    control = control_function()
    running = engine_named(engine)
    try:
        first = control(definition, running.run(definition, views))
        second = control(definition, running.run(definition, without(views, TARGET)))
    except UserError:
        event("refused by the control")
        return
    db, agreement = ledger
    text = serial.to_json(definition).decode()
    with Session(db) as session:
        session.begin()
        try:
            person = people.person(session, LEAD).id
            runs = [
                record_run(
                    session, LEAD, agreement, text, serial.sha256(text.encode()), 0, engine,
                    definition.disclosure, "succeeded", "", {}, now(), now(),
                )
                for _ in range(2)
            ]  # fmt: skip
            try:
                check(session, person, first.cells)
            except DifferencingRisk:
                event("the first release refused")
                return
            remember(session, person, runs[0].id, first.cells, True)
            try:
                check(session, person, second.cells)
            except DifferencingRisk:
                event("the second release refused")
                return
            event("both released")
            assert second.files == first.files, textwrap.indent(body, "  ")
        finally:
            session.rollback()


VIEWS = population()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=definitions())
def test_removing_one_person_never_changes_a_released_table_on_duckdb(
    ledger: tuple[sa.Engine, str], body: str
) -> None:
    """With the planted person, then without: the second release refused, or its files
    byte for byte the first's."""
    released_twice(ledger, "duckdb", body, VIEWS)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=definitions())
def test_removing_one_person_never_changes_a_released_table_on_spark(
    ledger: tuple[sa.Engine, str], body: str
) -> None:
    """The same on Spark, with a few examples (a Spark query takes about a second here)."""
    released_twice(ledger, "spark", body, VIEWS)
