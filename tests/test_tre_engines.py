"""Every operation of the query language, on every engine, against answers written out by hand.

Each test builds a definition with the language, sends it through its JSON form (what the
service runs), runs it on a few hand-made rows and checks the answer. The `engine` fixture
(tests/conftest.py) runs each test on DuckDB and on Spark (local mode), so a definition means
the same wherever it runs; test_tre_properties.py compares the two on random definitions.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pytest

from gpdpr.errors import UserError
from gpdpr.tre.engines.base import Engine, dataset_schema, measure_schema
from gpdpr.tre.engines.sql import interval_rows
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.language import (
    INTERVAL,
    Dataset,
    Measures,
    Series,
    allergies,
    appointments,
    case,
    clinical_events,
    days,
    definition_of,
    immunisations,
    medications,
    months,
    patients,
    practice_registrations,
    referrals,
    weeks,
    when,
    years,
)
from tre_data import column, make_views, run, through_json

HTN = ["38341003", "59621000"]  # SNOMED CT codes for hypertension, from the catalogue
T2D = "44054006"  # type 2 diabetes
FLU = "39716811000001100"  # a dm+d flu vaccine
D = date


def dataset() -> Dataset:
    found = Dataset()
    found.define_population(patients.exists_for_patient())
    return found


def values(engine: Engine, views: dict[str, pa.Table], **variables: Series) -> dict[str, Any]:
    """{variable: {patient_id: value}} of a dataset of everyone in `views`."""
    made = dataset()
    made.in_data = patients.exists_for_patient()  # something to make the released table by
    for name, series in variables.items():
        setattr(made, name, series)
    made.add_table("everyone", by=["in_data"])
    results = run(engine, views, made)
    assert results.dataset is not None
    # Each variable in the service's type (the patient is named by tre_data.run, not the
    # engine, which keeps a whole-number key).
    expected = dataset_schema(through_json(definition_of(made, None)))
    assert results.dataset.schema.remove(0) == expected.remove(0)
    return {name: column(results, name) for name in variables}


def by_patient(*found: Any) -> dict[str, Any]:
    """{p1: first, p2: second, ...}"""
    return {f"p{i}": v for i, v in enumerate(found, start=1)}


# ---- comparisons, logic, nulls ---------------------------------------------------------------

NUMBERS = make_views(
    patients=[
        {"patient_id": "p1", "imd_decile": 7, "sex": "F", "date_of_birth": D(1990, 1, 1)},
        {"patient_id": "p2", "imd_decile": -3, "sex": "M", "date_of_birth": D(2000, 6, 1)},
        {"patient_id": "p3", "imd_decile": 0, "sex": "U", "date_of_birth": D(2010, 12, 1)},
        {"patient_id": "p4"},
    ],
    clinical_events=[
        {"patient_id": "p1", "value": 2.5},
        {"patient_id": "p2", "value": -0.5},
        {"patient_id": "p3", "value": 0.0},
        {"patient_id": "p4", "value": None},
    ],
)
X = clinical_events.value.maximum_for_patient  # one decimal per patient (p4: null)


# op: (imd_decile against 0, a decimal against imd_decile, sex against "M", date of birth
# against 2000-06-01), each for p1..p4.
COMPARED = {
    "eq": ((False, False, True, None), (False, False, True, None), (False, True, False, None),
           (False, True, False, None)),
    "ne": ((True, True, False, None), (True, True, False, None), (True, False, True, None),
           (True, False, True, None)),
    "lt": ((False, True, False, None), (True, False, False, None), (True, False, False, None),
           (True, False, False, None)),
    "le": ((False, True, True, None), (True, False, True, None), (True, True, False, None),
           (True, True, False, None)),
    "gt": ((True, False, False, None), (False, True, False, None), (False, False, True, None),
           (False, False, True, None)),
    "ge": ((True, False, True, None), (False, True, True, None), (False, True, True, None),
           (False, True, True, None)),
}  # fmt: skip


def test_comparisons_of_numbers_text_and_dates_with_null_as_unknown(engine: Engine) -> None:
    compared: dict[str, Series] = {}
    for op in COMPARED:
        method = f"__{op}__"
        compared |= {
            f"imd_{op}": getattr(patients.imd_decile, method)(0),
            f"x_{op}": getattr(X(), method)(patients.imd_decile),  # a decimal, a whole number
            f"sex_{op}": getattr(patients.sex, method)("M"),
            f"born_{op}": getattr(patients.date_of_birth, method)("2000-06-01"),
        }
    found = values(engine, NUMBERS, **compared)
    assert found == {
        f"{what}_{op}": by_patient(*expected)
        for op, answers in COMPARED.items()
        for what, expected in zip(("imd", "x", "sex", "born"), answers, strict=True)
    }


def test_and_or_not_follow_three_valued_logic(engine: Engine) -> None:
    # a: linkable (true, false, null); b: imd_decile > 5 (true, false, null): nine patients.
    imd = {True: 9, False: 1, None: None}
    cases = [(a, b) for a in (True, False, None) for b in (True, False, None)]
    views = make_views(
        patients=[
            {"patient_id": f"p{i}", "linkable": a, "imd_decile": imd[b]}
            for i, (a, b) in enumerate(cases, start=1)
        ]
    )
    a, b = patients.linkable, patients.imd_decile > 5
    found = values(engine, views, both=a & b, either=a | b, neither=~a, eq=a == b)
    T, F, N = True, False, None
    assert found == {
        "both": by_patient(T, F, N, F, F, F, N, F, N),
        "either": by_patient(T, T, T, T, F, N, T, N, N),
        "neither": by_patient(F, F, F, T, T, T, N, N, N),
        "eq": by_patient(T, F, N, F, T, N, N, N, N),
    }


def test_is_null_and_when_null_then_for_every_type(engine: Engine) -> None:
    views = make_views(
        patients=[
            {"patient_id": "p1", "sex": "F", "imd_decile": 3, "linkable": False,
             "date_of_birth": D(1980, 1, 1)},
            {"patient_id": "p2"},
        ],
        clinical_events=[{"patient_id": "p1", "value": 1.5, "code": T2D}],
    )  # fmt: skip
    code = clinical_events.sort_by(clinical_events.value).first_for_patient().code
    found = values(
        engine,
        views,
        sex=patients.sex.is_null(),
        born=patients.date_of_birth.is_not_null(),
        linkable=patients.linkable.is_null(),
        code=code.is_null(),
        sex_or=patients.sex.when_null_then("unknown"),
        imd_or=patients.imd_decile.when_null_then(0),
        imd_or_x=patients.imd_decile.when_null_then(X()),  # a whole number or a decimal
        x_or=X().when_null_then(-1),
        born_or=patients.date_of_birth.when_null_then("1900-01-01"),
        linkable_or=patients.linkable.when_null_then(True),
        code_or=code.when_null_then(T2D),
    )
    assert found == {
        "sex": by_patient(False, True),
        "born": by_patient(True, False),
        "linkable": by_patient(False, True),
        "code": by_patient(False, True),
        "sex_or": by_patient("F", "unknown"),
        "imd_or": by_patient(3, 0),
        "imd_or_x": by_patient(3.0, None),
        "x_or": by_patient(1.5, -1.0),
        "born_or": by_patient(D(1980, 1, 1), D(1900, 1, 1)),
        "linkable_or": by_patient(False, True),
        "code_or": by_patient(T2D, T2D),
    }


# ---- arithmetic ------------------------------------------------------------------------------


def test_arithmetic_on_whole_numbers_and_decimals(engine: Engine) -> None:
    imd = patients.imd_decile  # 7, -3, 0, null
    found = values(
        engine,
        NUMBERS,
        add=imd + 3,
        sub=imd - X(),
        mul=imd * 2,
        mul_x=X() * 2,
        neg=-imd,
        neg_x=-X(),
        half=imd / 2,
        mixed=(imd + X()) * imd - 1,
    )
    assert found == {
        "add": by_patient(10, 0, 3, None),
        "sub": by_patient(4.5, -2.5, 0.0, None),
        "mul": by_patient(14, -6, 0, None),
        "mul_x": by_patient(5.0, -1.0, 0.0, None),
        "neg": by_patient(-7, 3, 0, None),
        "neg_x": by_patient(-2.5, 0.5, -0.0, None),
        "half": by_patient(3.5, -1.5, 0.0, None),
        "mixed": by_patient(65.5, 9.5, -1.0, None),
    }


BIG = 2**63 - 1  # the largest whole number an engine holds


def test_what_would_overflow_is_null_not_an_error_on_every_engine(engine: Engine) -> None:
    """A run that fails for one person's value and not for another's answers a question about
    them (is the target's value over some bound?) before any disclosure control. So whatever
    would overflow, a whole number past 64 bits or a date past 9999-12-31 (or before
    0001-01-01), is unknown (null), the same on every engine, and the run goes on."""
    imd = patients.imd_decile  # 7, -3, 0, null
    born = patients.date_of_birth  # 1990-01-01, 2000-06-01, 2010-12-01, null

    def shifted(op: str, count: Series) -> Series:
        return Series(n.Apply(op, (born.node, count.node)))

    views = make_views(
        patients=[dict(p) for p in NUMBERS["patients"].to_pylist()],
        appointments=[
            {"patient_id": "p1", "duration_minutes": BIG},
            {"patient_id": "p1", "duration_minutes": 1},
            {"patient_id": "p2", "duration_minutes": 5},
        ],
    )
    found = values(
        engine,
        views,
        plus=imd + BIG,
        times=imd * BIG,
        minus=imd - BIG - 1,
        negated=-(imd - BIG - 1),
        days=shifted("add_days", imd * 100_000),
        far_days=shifted("add_days", imd * 10**12),
        month_later=shifted("add_months", imd * 100_000),
        years_later=shifted("add_years", imd * 10**18),
        minutes=appointments.duration_minutes.sum_for_patient(),
    )
    assert found == {
        "plus": by_patient(None, BIG - 3, BIG, None),
        "times": by_patient(None, None, 0, None),
        "minus": by_patient(-(2**63) + 7, None, -(2**63), None),
        "negated": by_patient(2**63 - 7, None, None, None),
        "days": by_patient(
            D(1990, 1, 1) + timedelta(days=700_000),
            D(2000, 6, 1) - timedelta(days=300_000),
            D(2010, 12, 1),
            None,
        ),
        "far_days": by_patient(None, None, D(2010, 12, 1), None),
        "month_later": by_patient(None, None, D(2010, 12, 1), None),
        "years_later": by_patient(None, None, D(2010, 12, 1), None),
        "minutes": by_patient(None, 5, None, None),
    }


def test_division_by_zero_is_null_and_division_is_always_decimal(engine: Engine) -> None:
    imd = patients.imd_decile  # 7, -3, 0, null
    found = values(
        engine,
        NUMBERS,
        by_zero=imd / 0,
        by_zero_x=X() / 0.0,
        x_by_imd=X() / imd,
        imd_by_x=imd / X(),
        whole=imd / 1,
    )
    assert found == {
        "by_zero": by_patient(None, None, None, None),
        "by_zero_x": by_patient(None, None, None, None),
        "x_by_imd": by_patient(2.5 / 7, -0.5 / -3, None, None),
        "imd_by_x": by_patient(2.8, 6.0, None, None),
        "whole": by_patient(7.0, -3.0, 0.0, None),
    }


# ---- dates -----------------------------------------------------------------------------------

CALENDAR = make_views(
    patients=[
        {"patient_id": f"p{i}", "date_of_birth": day}
        for i, day in enumerate(
            [D(2024, 1, 31), D(2023, 1, 31), D(2024, 2, 29), D(2023, 12, 31), D(2020, 3, 31), None],
            start=1,
        )
    ]
)


def test_adding_days_weeks_months_and_years_across_month_ends_and_leap_years(
    engine: Engine,
) -> None:
    day = patients.date_of_birth
    found = values(
        engine,
        CALENDAR,
        next_day=day + days(1),
        day_before=day - days(1),
        week_on=day + weeks(1),
        month_on=day + months(1),
        month_before=day - months(1),
        year_on=day + years(1),
        four_years_before=day - years(4),
        year=day.year,
        month=day.month,
    )
    assert found == {
        "next_day": by_patient(D(2024, 2, 1), D(2023, 2, 1), D(2024, 3, 1), D(2024, 1, 1),
                               D(2020, 4, 1), None),
        "day_before": by_patient(D(2024, 1, 30), D(2023, 1, 30), D(2024, 2, 28), D(2023, 12, 30),
                                 D(2020, 3, 30), None),
        "week_on": by_patient(D(2024, 2, 7), D(2023, 2, 7), D(2024, 3, 7), D(2024, 1, 7),
                              D(2020, 4, 7), None),
        # A month on from the 31st is the last day of a shorter month.
        "month_on": by_patient(D(2024, 2, 29), D(2023, 2, 28), D(2024, 3, 29), D(2024, 1, 31),
                               D(2020, 4, 30), None),
        "month_before": by_patient(D(2023, 12, 31), D(2022, 12, 31), D(2024, 1, 29),
                                   D(2023, 11, 30), D(2020, 2, 29), None),
        # A year on from 29 February is 28 February.
        "year_on": by_patient(D(2025, 1, 31), D(2024, 1, 31), D(2025, 2, 28), D(2024, 12, 31),
                              D(2021, 3, 31), None),
        "four_years_before": by_patient(D(2020, 1, 31), D(2019, 1, 31), D(2020, 2, 29),
                                        D(2019, 12, 31), D(2016, 3, 31), None),
        "year": by_patient(2024, 2023, 2024, 2023, 2020, None),
        "month": by_patient(1, 1, 2, 12, 3, None),
    }  # fmt: skip


def test_adding_a_number_of_days_or_months_held_in_the_data(engine: Engine) -> None:
    views = make_views(
        patients=[
            {"patient_id": "p1", "date_of_birth": D(2024, 1, 31), "imd_decile": 1},
            {"patient_id": "p2", "date_of_birth": D(2024, 3, 1), "imd_decile": -1},
            {"patient_id": "p3", "date_of_birth": D(2024, 3, 1), "imd_decile": None},
        ]
    )
    day, count = patients.date_of_birth.node, patients.imd_decile.node
    found = values(
        engine,
        views,
        plus_days=Series(n.Apply("add_days", (day, count))),
        plus_months=Series(n.Apply("add_months", (day, count))),
        plus_years=Series(n.Apply("add_years", (day, count))),
    )
    assert found == {
        "plus_days": by_patient(D(2024, 2, 1), D(2024, 2, 29), None),
        "plus_months": by_patient(D(2024, 2, 29), D(2024, 2, 1), None),
        "plus_years": by_patient(D(2025, 1, 31), D(2023, 3, 1), None),
    }


def test_days_months_and_years_between_dates_including_backwards(engine: Engine) -> None:
    pairs = [
        (D(2000, 1, 15), D(2024, 1, 15)),
        (D(2000, 1, 15), D(2024, 1, 14)),  # a day short of 24 years
        (D(2024, 2, 29), D(2025, 2, 28)),  # a day short of a year, from a leap day
        (D(2024, 1, 31), D(2024, 2, 29)),  # not yet a whole month
        (D(2024, 3, 31), D(2024, 2, 29)),  # backwards
        (D(2020, 6, 15), D(2019, 6, 16)),  # backwards, a day short of a year
        (D(2020, 6, 15), D(2019, 6, 15)),  # backwards, a whole (leap) year
        (D(2023, 12, 31), D(2024, 1, 1)),
        (None, D(2024, 1, 1)),
    ]
    views = make_views(
        patients=[
            {"patient_id": f"p{i}", "date_of_birth": a, "date_of_death": b}
            for i, (a, b) in enumerate(pairs, start=1)
        ]
    )
    born, died = patients.date_of_birth, patients.date_of_death
    found = values(
        engine,
        views,
        days=born.days_until(died),
        months=born.months_until(died),
        years=born.years_until(died),
    )
    # Whole months and years are counted like an age: a span short of a whole one counts down,
    # backwards as forwards (so a day short of a year back is -1 year).
    assert found == {
        "days": by_patient(8766, 8765, 365, 29, -31, -365, -366, 1, None),
        "months": by_patient(288, 287, 11, 0, -2, -12, -12, 0, None),
        "years": by_patient(24, 23, 0, 0, -1, -1, -1, 0, None),
    }


def test_age_on_a_day_from_the_month_of_birth(engine: Engine) -> None:
    views = make_views(
        patients=[
            {"patient_id": "p1", "date_of_birth": D(1980, 3, 1)},
            {"patient_id": "p2", "date_of_birth": D(2024, 2, 1)},
            {"patient_id": "p3", "date_of_birth": D(2024, 5, 1)},  # born after the day
            {"patient_id": "p4"},
        ]
    )
    found = values(
        engine,
        views,
        on_leap_day=patients.age_on("2024-02-29"),
        a_day_later=patients.age_on(D(2024, 3, 1)),
    )
    assert found == {
        "on_leap_day": by_patient(43, 0, -1, None),
        "a_day_later": by_patient(44, 0, -1, None),
    }


# ---- codelists and text ----------------------------------------------------------------------

AWKWARD = ["O'Neil", "back\\slash", "quote''twice", "Ŵales", "per%cent_"]


def test_text_that_looks_like_a_variable_is_only_text(engine: Engine) -> None:
    # Spark replaces ${...} in SQL, even inside quotes, with its settings, Java properties and
    # environment variables unless told not to: this would read the server's environment.
    views = make_views(patients=[{"patient_id": "p1", "lsoa_code": "${env:HOME}"}])
    found = values(
        engine,
        views,
        home=case(when(patients.lsoa_code.is_not_null()).then("${env:HOME}")),
        app=case(when(patients.lsoa_code.is_not_null()).then("${spark.app.name}")),
        java=case(when(patients.lsoa_code.is_not_null()).then("${system:user.timezone}")),
        same=patients.lsoa_code == "${env:HOME}",
        listed=patients.lsoa_code.is_in(["${env:HOME}"]),
    )
    assert found == {
        "home": {"p1": "${env:HOME}"},
        "app": {"p1": "${spark.app.name}"},
        "java": {"p1": "${system:user.timezone}"},
        "same": {"p1": True},
        "listed": {"p1": True},
    }


def test_is_in_matches_codes_and_text_with_null_as_unknown(engine: Engine) -> None:
    views = make_views(
        patients=[
            {"patient_id": "p1", "lsoa_code": "O'Neil"},
            {"patient_id": "p2", "lsoa_code": "back\\slash"},
            {"patient_id": "p3", "lsoa_code": "perXcentY"},  # not a pattern: % and _ are text
            {"patient_id": "p4", "lsoa_code": "Ŵales"},
            {"patient_id": "p5", "lsoa_code": "quote''twice"},
            {"patient_id": "p6"},
        ],
        clinical_events=[
            {"patient_id": "p1", "code": HTN[0]},
            {"patient_id": "p1", "code": T2D},
            {"patient_id": "p2", "code": T2D},
            {"patient_id": "p3", "code": None},
            {"patient_id": "p4", "code": HTN[1]},
        ],
    )
    events = clinical_events
    found = values(
        engine,
        views,
        lsoa_in=patients.lsoa_code.is_in(AWKWARD),
        lsoa_eq=patients.lsoa_code == "quote''twice",
        lsoa_is_oneil=patients.lsoa_code == "O'Neil",
        htn=events.where(events.code.is_in(HTN)).exists_for_patient(),
        not_htn=events.where(~events.code.is_in(HTN)).count_for_patient(),
        except_htn=events.except_where(events.code.is_in(HTN)).count_for_patient(),
    )
    assert found == {
        "lsoa_in": by_patient(True, True, False, True, True, None),
        "lsoa_eq": by_patient(False, False, False, False, True, None),
        "lsoa_is_oneil": by_patient(True, False, False, False, False, None),
        "htn": by_patient(True, False, False, True, False, False),
        # A row with no code is neither in the codelist nor out of it ...
        "not_htn": by_patient(1, 1, 0, 0, 0, 0),
        # ... but except_where keeps it (it drops only rows where the condition holds).
        "except_htn": by_patient(1, 1, 1, 0, 0, 0),
    }


# ---- case ------------------------------------------------------------------------------------


def test_case_takes_the_first_when_that_holds_else_otherwise_or_null(engine: Engine) -> None:
    imd = patients.imd_decile  # 7, -3, 0, null
    found = values(
        engine,
        NUMBERS,
        banded=case(when(imd < 0).then("low"), when(imd < 5).then("mid"), otherwise="high"),
        no_otherwise=case(when(imd < 0).then("low"), when(imd < 5).then("mid")),
        first_wins=case(when(imd < 10).then(1), when(imd < 5).then(2)),
        mixed=case(when(imd > 0).then(1), otherwise=X()),  # whole numbers become decimals
        a_null_then=case(when(imd == 0).then(None), otherwise=imd),
        dates=case(when(patients.sex == "F").then(patients.date_of_birth), otherwise="1999-12-31"),
        flags=case(when(imd.is_null()).then(False), otherwise=imd > 0),
    )
    assert found == {
        # A condition that is null (imd unknown) does not hold.
        "banded": by_patient("high", "low", "mid", "high"),
        "no_otherwise": by_patient(None, "low", "mid", None),
        "first_wins": by_patient(1, 1, 1, None),
        "mixed": by_patient(1.0, -0.5, 0.0, None),
        "a_null_then": by_patient(7, -3, None, None),
        "dates": by_patient(D(1990, 1, 1), D(1999, 12, 31), D(1999, 12, 31), D(1999, 12, 31)),
        "flags": by_patient(True, False, False, False),
    }


def test_a_null_then_beside_text_or_dates_stays_null(engine: Engine) -> None:
    # `then(None)` beside plain literals is a null of no particular type (the graph says whole
    # number); it once made both engines cast every branch to a number and fail on the text.
    imd = patients.imd_decile  # 7, -3, 0, null
    found = values(
        engine,
        NUMBERS,
        text=case(when(imd > 0).then(None), otherwise="not positive"),
        day=case(when(imd < 0).then(D(2024, 2, 29)), when(imd >= 0).then(None)),
        flag=case(when(imd.is_null()).then(None), otherwise=True),
    )
    assert found == {
        "text": by_patient(None, "not positive", "not positive", "not positive"),
        "day": by_patient(None, D(2024, 2, 29), None, None),
        "flag": by_patient(True, True, True, None),
    }


def test_decimal_literals_in_any_notation(engine: Engine) -> None:
    x = X()  # 2.5, -0.5, 0.0, null
    found = values(
        engine,
        NUMBERS,
        tiny=x > 1e-05,
        huge=x * 1e16,
        third=x + 0.1,
        whole_as_decimal=x < 3.0,
    )
    assert found == {
        "tiny": by_patient(True, False, False, None),
        "huge": by_patient(2.5e16, -0.5e16, 0.0, None),
        "third": by_patient(2.5 + 0.1, -0.5 + 0.1, 0.1, None),
        "whole_as_decimal": by_patient(True, True, True, None),
    }


# ---- per-patient aggregates ------------------------------------------------------------------

EVENTS = make_views(
    patients=[{"patient_id": p} for p in ("p1", "p2", "p3")],
    clinical_events=[
        {"patient_id": "p1", "value": 3.0, "effective_date": D(2020, 1, 1), "code": HTN[0],
         "unit": "mmol/L"},
        {"patient_id": "p1", "value": 1.0, "effective_date": D(2021, 5, 5), "code": T2D,
         "unit": "kg"},
        {"patient_id": "p1", "value": 1.0, "effective_date": D(2019, 3, 3), "code": HTN[0]},
        {"patient_id": "p1", "value": None, "effective_date": D(2022, 2, 2), "code": None,
         "unit": "mmol/L"},
        {"patient_id": "p2"},  # a row with nothing in it
    ],
    appointments=[
        {"patient_id": "p1", "duration_minutes": 10},
        {"patient_id": "p1", "duration_minutes": 25},
        {"patient_id": "p1", "duration_minutes": None},
        {"patient_id": "p2", "duration_minutes": None},
    ],
)  # fmt: skip


def test_every_per_patient_aggregate_with_nulls_and_patients_without_rows(engine: Engine) -> None:
    e = clinical_events
    minutes = appointments.duration_minutes
    found = values(
        engine,
        EVENTS,
        exists=e.exists_for_patient(),
        count=e.count_for_patient(),
        count_where=e.where(e.value > 1).count_for_patient(),
        exists_where=e.where(e.value > 1).exists_for_patient(),
        min_x=e.value.minimum_for_patient(),
        max_x=e.value.maximum_for_patient(),
        min_date=e.effective_date.minimum_for_patient(),
        max_date=e.effective_date.maximum_for_patient(),
        min_text=e.unit.minimum_for_patient(),
        max_text=e.unit.maximum_for_patient(),
        sum_x=e.value.sum_for_patient(),
        mean_x=e.value.mean_for_patient(),
        distinct_x=e.value.count_distinct_for_patient(),
        distinct_code=e.code.count_distinct_for_patient(),
        sum_minutes=minutes.sum_for_patient(),
        mean_minutes=minutes.mean_for_patient(),
        max_minutes=minutes.maximum_for_patient(),
        distinct_minutes=minutes.count_distinct_for_patient(),
    )
    assert found == {
        "exists": by_patient(True, True, False),
        "count": by_patient(4, 1, 0),
        "count_where": by_patient(1, 0, 0),
        "exists_where": by_patient(True, False, False),
        "min_x": by_patient(1.0, None, None),
        "max_x": by_patient(3.0, None, None),
        "min_date": by_patient(D(2019, 3, 3), None, None),
        "max_date": by_patient(D(2022, 2, 2), None, None),
        "min_text": by_patient("kg", None, None),
        "max_text": by_patient("mmol/L", None, None),
        "sum_x": by_patient(5.0, None, None),
        "mean_x": by_patient(5.0 / 3, None, None),
        "distinct_x": by_patient(2, 0, 0),
        "distinct_code": by_patient(2, 0, 0),
        "sum_minutes": by_patient(35, None, None),
        "mean_minutes": by_patient(17.5, None, None),
        "max_minutes": by_patient(25, None, None),
        "distinct_minutes": by_patient(2, 0, 0),
    }


def test_aggregates_of_the_patients_table_itself(engine: Engine) -> None:
    found = values(
        engine,
        NUMBERS,
        female=patients.where(patients.sex == "F").exists_for_patient(),
        rows=patients.where(patients.imd_decile >= 0).count_for_patient(),
    )
    assert found == {
        "female": by_patient(True, False, False, False),
        "rows": by_patient(1, 0, 1, 0),
    }


# ---- where -----------------------------------------------------------------------------------


def test_where_keeps_rows_whose_condition_holds_and_may_use_per_patient_values(
    engine: Engine,
) -> None:
    views = make_views(
        patients=[
            {"patient_id": "p1", "date_of_birth": D(2000, 1, 1)},
            {"patient_id": "p2", "date_of_birth": None},
        ],
        clinical_events=[
            {"patient_id": "p1", "effective_date": D(2010, 1, 1), "value": 1.0},
            {"patient_id": "p1", "effective_date": D(2018, 1, 1), "value": 2.0},  # turned 18
            {"patient_id": "p1", "effective_date": D(2020, 1, 1), "value": None},
            {"patient_id": "p1", "effective_date": None, "value": 4.0},
            {"patient_id": "p2", "effective_date": D(2020, 1, 1), "value": 8.0},
        ],
    )
    e = clinical_events
    adult = e.where(e.effective_date >= patients.date_of_birth + years(18))
    found = values(
        engine,
        views,
        as_adult=adult.count_for_patient(),
        as_adult_big=adult.where(adult.value > 1).value.sum_for_patient(),
        chained=e.where(e.value > 1).where(e.effective_date.is_null()).count_for_patient(),
        between=e.where(
            e.effective_date.is_on_or_between("2010-01-01", "2018-01-01")
        ).count_for_patient(),
        constant=e.where(True).count_for_patient(),
        before=e.where(e.effective_date.is_before("2018-01-01")).count_for_patient(),
        after=e.where(e.effective_date.is_after("2018-01-01")).count_for_patient(),
        on_or_before=e.where(e.effective_date.is_on_or_before("2018-01-01")).count_for_patient(),
    )
    assert found == {
        "as_adult": by_patient(2, 0),
        "as_adult_big": by_patient(2.0, None),
        "chained": by_patient(1, 0),
        "between": by_patient(2, 0),
        "constant": by_patient(4, 1),
        "before": by_patient(1, 0),
        "after": by_patient(1, 1),
        "on_or_before": by_patient(2, 0),
    }


# ---- sorting and picking a row ---------------------------------------------------------------

SORTED = make_views(
    patients=[{"patient_id": p} for p in ("p1", "p2", "p3", "p4", "p5")],
    clinical_events=[
        # p1: a row with no date, and a tie on the first date
        {"patient_id": "p1", "effective_date": D(2020, 1, 1), "value": 7.0, "code": T2D},
        {"patient_id": "p1", "effective_date": D(2020, 1, 1), "value": 5.0, "code": HTN[1]},
        {"patient_id": "p1", "effective_date": None, "value": 1.0, "code": HTN[0]},
        {"patient_id": "p1", "effective_date": D(2021, 6, 1), "value": 2.0, "code": T2D},
        # p2: the same row twice
        {"patient_id": "p2", "effective_date": D(2019, 1, 1), "value": 3.0, "code": T2D},
        {"patient_id": "p2", "effective_date": D(2019, 1, 1), "value": 3.0, "code": T2D},
        # p3: only rows without a date, tied apart from the value (one of them null)
        {"patient_id": "p3", "effective_date": None, "value": None, "code": T2D},
        {"patient_id": "p3", "effective_date": None, "value": 9.0, "code": T2D},
        # p4: one row; p5: none
        {"patient_id": "p4", "effective_date": D(2018, 1, 1), "value": 6.0, "code": HTN[0]},
    ],
)


def test_first_and_last_for_patient_with_ties_and_nulls_in_the_sort_keys(engine: Engine) -> None:
    e = clinical_events
    by_date = e.sort_by(e.effective_date)
    found = values(
        engine,
        SORTED,
        first=by_date.first_for_patient().value,
        last=by_date.last_for_patient().value,
        first_date=by_date.first_for_patient().effective_date,
        last_date=by_date.last_for_patient().effective_date,
        first_two_keys=e.sort_by(e.effective_date, e.value).first_for_patient().value,
        last_by_text=e.sort_by(e.code).last_for_patient().value,
        last_big=by_date.where(e.value > 4).last_for_patient().value,
    )
    # Rows with no date sort first, so `first` picks one and `last` never does unless there is
    # nothing else. Rows tied on the sort keys are put in order by every column the definition
    # reads (here effective_date, value, code), nulls first, so every engine picks the same.
    assert found == {
        "first": by_patient(1.0, 3.0, None, 6.0, None),
        "last": by_patient(2.0, 3.0, 9.0, 6.0, None),
        "first_date": by_patient(None, D(2019, 1, 1), None, D(2018, 1, 1), None),
        "last_date": by_patient(D(2021, 6, 1), D(2019, 1, 1), None, D(2018, 1, 1), None),
        "first_two_keys": by_patient(1.0, 3.0, None, 6.0, None),
        # HTN[1] = "59621000" sorts after T2D = "44054006" and HTN[0] = "38341003".
        "last_by_text": by_patient(5.0, 3.0, 9.0, 6.0, None),
        "last_big": by_patient(5.0, None, 9.0, 6.0, None),
    }


def test_a_tie_on_the_sort_key_is_broken_by_the_columns_read(engine: Engine) -> None:
    e = clinical_events
    by_date = e.sort_by(e.effective_date).where(e.effective_date.is_not_null())
    # Only the date and value are read: of p1's two rows on 2020-01-01, first has the lower value.
    found = values(
        engine,
        SORTED,
        first=by_date.first_for_patient().value,
        last=by_date.last_for_patient().value,
    )
    assert found == {
        "first": by_patient(5.0, 3.0, None, 6.0, None),
        "last": by_patient(2.0, 3.0, None, 6.0, None),
    }


def test_registrations_for_patient_on_a_day(engine: Engine) -> None:
    views = make_views(
        patients=[{"patient_id": p} for p in ("p1", "p2", "p3", "p4")],
        practice_registrations=[
            {"patient_id": "p1", "start_date": D(2010, 1, 1), "end_date": None, "practice": "A"},
            {"patient_id": "p1", "start_date": D(2015, 6, 1), "end_date": D(2020, 1, 1),
             "practice": "B"},
            # two registrations starting the same day: the later practice code is taken
            {"patient_id": "p2", "start_date": D(2019, 1, 1), "end_date": None, "practice": "D"},
            {"patient_id": "p2", "start_date": D(2019, 1, 1), "end_date": None, "practice": "C"},
            {"patient_id": "p3", "start_date": None, "end_date": None, "practice": "E"},
        ],
    )  # fmt: skip
    r = practice_registrations
    found = values(
        engine,
        views,
        in_2018=r.for_patient_on("2018-01-01").practice,
        on_its_end=r.for_patient_on("2020-01-01").practice,  # end_date is its last day
        before_any=r.for_patient_on("2009-12-31").exists_for_patient(),
        registered=r.for_patient_on("2020-01-01").exists_for_patient(),
        start=r.for_patient_on("2018-01-01").start_date,
    )
    assert found == {
        "in_2018": by_patient("B", None, None, None),
        "on_its_end": by_patient("B", "D", None, None),
        "before_any": by_patient(False, False, False, False),
        "registered": by_patient(True, True, False, False),
        "start": by_patient(D(2015, 6, 1), None, None, None),
    }


def test_columns_of_every_table_whatever_their_names(engine: Engine) -> None:
    views = make_views(
        patients=[{"patient_id": "p1"}, {"patient_id": "p2"}],
        immunisations=[
            {"patient_id": "p1", "date": D(2023, 10, 1), "vaccine_code": FLU,
             "procedure_code": HTN[0], "staff": "s1"},
        ],
        appointments=[
            {"patient_id": "p1", "start": D(2024, 1, 2), "mode": "video", "status": "fulfilled",
             "booked_at": D(2023, 12, 1), "duration_minutes": 10},
        ],
        medications=[
            {"patient_id": "p1", "code": FLU, "issue_date": D(2024, 1, 1), "quantity": 2.5,
             "source": "here", "course": "acute", "quantity_unit": "tablet"},
        ],
        allergies=[{"patient_id": "p2", "onset_date": D(1999, 1, 1), "code": T2D}],
        referrals=[{"patient_id": "p2", "referral_date": D(2022, 2, 2), "priority": "urgent"}],
        clinical_events=[{"patient_id": "p2", "recorded_at": D(2022, 1, 1), "category": "x"}],
    )  # fmt: skip
    found = values(
        engine,
        views,
        date=immunisations.date.maximum_for_patient(),
        flu=immunisations.where(immunisations.vaccine_code.is_in([FLU])).exists_for_patient(),
        start=appointments.start.minimum_for_patient(),
        mode=appointments.mode.maximum_for_patient(),
        status=appointments.status.minimum_for_patient(),
        booked=appointments.booked_at.maximum_for_patient(),
        source=medications.source.maximum_for_patient(),
        quantity=medications.quantity.sum_for_patient(),
        onset=allergies.onset_date.minimum_for_patient(),
        priority=referrals.priority.maximum_for_patient(),
        recorded=clinical_events.recorded_at.maximum_for_patient(),
    )
    assert found == {
        "date": by_patient(D(2023, 10, 1), None),
        "flu": by_patient(True, False),
        "start": by_patient(D(2024, 1, 2), None),
        "mode": by_patient("video", None),
        "status": by_patient("fulfilled", None),
        "booked": by_patient(D(2023, 12, 1), None),
        "source": by_patient("here", None),
        "quantity": by_patient(2.5, None),
        "onset": by_patient(None, D(1999, 1, 1)),
        "priority": by_patient(None, "urgent"),
        "recorded": by_patient(None, D(2022, 1, 1)),
    }


def test_names_that_are_sql_keywords_are_only_names(engine: Engine) -> None:
    made = dataset()
    made.order = patients.sex
    made.end = patients.imd_decile
    made.null = patients.date_of_birth.is_null()
    made.select = patients.imd_decile > 0
    made.add_table("group", by=["order", "select"], statistics={"end": ["mean", "median"]})
    measures = Measures()
    measures.define_measure(
        "from",
        numerator=patients.imd_decile > 0,
        denominator=patients.exists_for_patient(),
        group_by={"case": patients.sex, "date": patients.date_of_birth.year},
        intervals=months(1).starting_on("2024-01-01"),
    )
    results = run(engine, NUMBERS, made, measures)
    assert column(results, "order") == by_patient("F", "M", "U", None)
    assert column(results, "end") == by_patient(7, -3, 0, None)
    assert column(results, "null") == by_patient(False, False, False, True)
    assert column(results, "select") == by_patient(True, False, False, None)
    january = {"interval_start": D(2024, 1, 1), "interval_end": D(2024, 1, 31)}
    assert results.measures["from"].to_pylist() == [
        {**january, "case": "F", "date": 1990, "numerator": 1, "denominator": 1},
        {**january, "case": "M", "date": 2000, "numerator": 0, "denominator": 1},
        {**january, "case": "U", "date": 2010, "numerator": 0, "denominator": 1},
        {**january, "case": None, "date": None, "numerator": 0, "denominator": 1},
    ]


def test_a_patient_with_nothing_recorded(engine: Engine) -> None:
    views = make_views(patients=[{"patient_id": "p1"}])
    e = clinical_events
    found = values(
        engine,
        views,
        sex=patients.sex,
        age=patients.age_on("2024-01-01"),
        events=e.count_for_patient(),
        any_event=e.exists_for_patient(),
        last=e.sort_by(e.effective_date).last_for_patient().code,
        practice=practice_registrations.for_patient_on("2024-01-01").practice,
        total=medications.quantity.sum_for_patient(),
        banded=case(when(patients.imd_decile > 5).then("high"), otherwise="other"),
    )
    assert found == {
        "sex": {"p1": None},
        "age": {"p1": None},
        "events": {"p1": 0},
        "any_event": {"p1": False},
        "last": {"p1": None},
        "practice": {"p1": None},
        "total": {"p1": None},
        "banded": {"p1": "other"},
    }


def test_no_patients_at_all_gives_empty_answers_of_the_right_types(engine: Engine) -> None:
    views = make_views()
    made = dataset()
    made.sex = patients.sex
    made.events = clinical_events.count_for_patient()
    made.add_table("by_sex", by=["sex"], statistics={"events": ["mean", "median", "sd"]})
    measures = Measures()
    measures.define_measure(
        "m",
        numerator=clinical_events.exists_for_patient(),
        denominator=patients.exists_for_patient(),
        group_by={"sex": patients.sex},
        intervals=weeks(2).starting_on("2024-01-01"),
    )
    definition = through_json(definition_of(made, measures))
    results = engine.run(definition, views)
    assert results.dataset is not None and results.dataset.num_rows == 0
    assert results.dataset.schema == dataset_schema(definition)
    assert results.measures["m"].num_rows == 0
    assert results.measures["m"].schema == measure_schema(definition.measures[0])


def test_the_population_keeps_only_those_for_whom_it_holds(engine: Engine) -> None:
    made = Dataset()
    made.define_population(patients.imd_decile >= 0)  # null: not in the population
    made.sex = patients.sex
    made.add_table("by_sex", by=["sex"])
    results = run(engine, NUMBERS, made)
    assert column(results, "sex") == {"p1": "F", "p3": "U"}


# ---- measures --------------------------------------------------------------------------------

MEASURED = make_views(
    patients=[
        {"patient_id": "p1", "sex": "F"},
        {"patient_id": "p2", "sex": "M"},
        {"patient_id": "p3", "sex": None},
        {"patient_id": "p4", "sex": "F"},
    ],
    practice_registrations=[
        {"patient_id": "p1", "start_date": D(2020, 1, 1), "practice": "A"},
        {"patient_id": "p2", "start_date": D(2024, 2, 1), "practice": "B"},
        # p3's last day registered is 29 February (an end_date is the last day included)
        {"patient_id": "p3", "start_date": D(2020, 1, 1), "end_date": D(2024, 2, 29),
         "practice": "A"},
    ],
    clinical_events=[
        {"patient_id": "p1", "code": HTN[0], "effective_date": D(2024, 1, 31), "value": 9.0},
        {"patient_id": "p1", "code": HTN[0], "effective_date": D(2024, 2, 29), "value": 1.0},
        {"patient_id": "p1", "code": T2D, "effective_date": D(2024, 3, 4), "value": 7.0},
        {"patient_id": "p2", "code": HTN[1], "effective_date": D(2024, 1, 15), "value": 8.0},
        {"patient_id": "p2", "code": HTN[1], "effective_date": D(2024, 3, 10), "value": 8.0},
        {"patient_id": "p3", "code": HTN[0], "effective_date": D(2024, 3, 1), "value": 6.0},
        {"patient_id": "p3", "code": HTN[0], "effective_date": D(2024, 3, 3), "value": 6.0},
        {"patient_id": "p4", "code": HTN[0], "effective_date": D(2024, 2, 10), "value": 5.0},
    ],
)  # fmt: skip

REGISTERED = practice_registrations.for_patient_on(INTERVAL.start_date)


def measure(
    engine: Engine, numerator: Series, group_by: dict[str, Series], intervals: n.Intervals
) -> list[dict[str, Any]]:
    measures = Measures()
    measures.define_measure(
        "m",
        numerator=numerator,
        denominator=REGISTERED.exists_for_patient(),
        group_by=group_by,
        intervals=intervals,
    )
    results = run(engine, MEASURED, None, measures)
    found = results.measures["m"]
    assert found.schema == measure_schema(through_json(definition_of(None, measures)).measures[0])
    listed: list[dict[str, Any]] = found.to_pylist()
    return listed


def interval(start: date, end: date) -> dict[str, date]:
    return {"interval_start": start, "interval_end": end}


JAN = interval(D(2024, 1, 1), D(2024, 1, 31))
FEB = interval(D(2024, 2, 1), D(2024, 2, 29))  # a leap year
MAR = interval(D(2024, 3, 1), D(2024, 3, 31))


def test_a_monthly_measure_by_practice(engine: Engine) -> None:
    e = clinical_events
    found = measure(
        engine,
        e.where(e.code.is_in(HTN) & e.effective_date.is_during(INTERVAL)).exists_for_patient(),
        {"practice": REGISTERED.practice},
        months(3).starting_on("2024-01-01"),
    )
    # Registered at each month's start: p1 (A) throughout, p3 (A) until March, p2 (B) from
    # February; p4 never. Only those registered are counted, in numerator and denominator.
    assert found == [
        {**JAN, "practice": "A", "numerator": 1, "denominator": 2},
        {**FEB, "practice": "A", "numerator": 1, "denominator": 2},
        {**FEB, "practice": "B", "numerator": 0, "denominator": 1},
        {**MAR, "practice": "A", "numerator": 0, "denominator": 1},
        {**MAR, "practice": "B", "numerator": 1, "denominator": 1},
    ]


def test_a_weekly_measure_grouped_by_a_count_of_events_and_two_groups_one_unknown(
    engine: Engine,
) -> None:
    e = clinical_events
    during = e.where(e.effective_date.is_during(INTERVAL))
    found = measure(
        engine,
        during.exists_for_patient(),
        {
            "sex": patients.sex,
            "practice": REGISTERED.practice,
            "events": during.count_for_patient(),
        },
        weeks(3).starting_on("2024-02-26"),
    )
    week1, week2, week3 = (
        interval(D(2024, 2, 26), D(2024, 3, 3)),
        interval(D(2024, 3, 4), D(2024, 3, 10)),
        interval(D(2024, 3, 11), D(2024, 3, 17)),
    )
    # An unknown group comes after the known ones.
    assert found == [
        {**week1, "sex": "F", "practice": "A", "events": 1, "numerator": 1, "denominator": 1},
        {**week1, "sex": "M", "practice": "B", "events": 0, "numerator": 0, "denominator": 1},
        {**week1, "sex": None, "practice": "A", "events": 2, "numerator": 1, "denominator": 1},
        {**week2, "sex": "F", "practice": "A", "events": 1, "numerator": 1, "denominator": 1},
        {**week2, "sex": "M", "practice": "B", "events": 1, "numerator": 1, "denominator": 1},
        {**week3, "sex": "F", "practice": "A", "events": 0, "numerator": 0, "denominator": 1},
        {**week3, "sex": "M", "practice": "B", "events": 0, "numerator": 0, "denominator": 1},
    ]


def test_a_measure_picking_each_intervals_latest_row(engine: Engine) -> None:
    e = clinical_events
    latest = e.where(e.effective_date <= INTERVAL.end_date).sort_by(e.effective_date)
    found = measure(
        engine,
        latest.last_for_patient().value > 5,
        {"latest_high": latest.last_for_patient().value > 5},
        months(3).starting_on("2024-01-01"),
    )
    # The latest value by each month's end: p1 9, 1, 7; p2 8, 8, 8; p3 none, none, 6. Who is
    # registered: Jan p1, p3; Feb p1, p2, p3; Mar p1, p2. No latest value is a group too (last).
    assert found == [
        {**JAN, "latest_high": True, "numerator": 1, "denominator": 1},
        {**JAN, "latest_high": None, "numerator": 0, "denominator": 1},
        {**FEB, "latest_high": False, "numerator": 0, "denominator": 1},
        {**FEB, "latest_high": True, "numerator": 1, "denominator": 1},
        {**FEB, "latest_high": None, "numerator": 0, "denominator": 1},
        {**MAR, "latest_high": True, "numerator": 2, "denominator": 2},
    ]


# ---- measures over spans of intervals ------------------------------------------------------
# A measure whose conditions compare dates with INTERVAL is computed over spans of intervals
# (gpdpr.tre.engines.spans), not per patient and interval; one that uses INTERVAL otherwise is
# computed per patient and interval. Each kind of comparison is checked against counting by hand, on
# months that start on the 31st (shorter months start on their last day) and on weeks.

SPANNED = make_views(
    patients=[{"patient_id": "p1"}, {"patient_id": "p2"}, {"patient_id": "p3"}],
    clinical_events=[
        {"patient_id": "p1", "effective_date": D(2024, 1, 30), "value": 1.0},
        {"patient_id": "p1", "effective_date": D(2024, 1, 31), "value": 9.0},
        {"patient_id": "p1", "effective_date": D(2024, 2, 28), "value": 2.0},
        {"patient_id": "p1", "effective_date": D(2024, 2, 29), "value": None},
        {"patient_id": "p2", "effective_date": D(2024, 3, 3), "value": 7.0},
        {"patient_id": "p2", "effective_date": D(2024, 3, 30), "value": 3.0},
        {"patient_id": "p2", "effective_date": D(2024, 3, 31), "value": 8.0},
        {"patient_id": "p2", "effective_date": None, "value": 9.0},
        {"patient_id": "p3", "effective_date": D(2024, 4, 29), "value": 4.0},
        {"patient_id": "p3", "effective_date": D(2024, 4, 30), "value": 6.0},
        {"patient_id": "p3", "effective_date": D(1900, 1, 1), "value": 1.0},
        {"patient_id": "p3", "effective_date": D(9999, 12, 31), "value": 1.0},
        {"patient_id": "nobody", "effective_date": D(2024, 2, 29), "value": 1.0},
    ],
)

Check = Callable[[date | None, float | None, date, date], bool]
_e = clinical_events
_on = _e.effective_date
COMPARISONS: list[tuple[Series, Check]] = [
    (_on < INTERVAL.start_date, lambda d, v, s, e: d is not None and d < s),
    (_on <= INTERVAL.start_date, lambda d, v, s, e: d is not None and d <= s),
    (_on > INTERVAL.start_date, lambda d, v, s, e: d is not None and d > s),
    (_on >= INTERVAL.start_date, lambda d, v, s, e: d is not None and d >= s),
    (_on == INTERVAL.start_date, lambda d, v, s, e: d is not None and d == s),
    (_on < INTERVAL.end_date, lambda d, v, s, e: d is not None and d < e),
    (_on <= INTERVAL.end_date, lambda d, v, s, e: d is not None and d <= e),
    (INTERVAL.end_date < _on, lambda d, v, s, e: d is not None and e < d),
    (INTERVAL.end_date <= _on, lambda d, v, s, e: d is not None and e <= d),
    (_on == INTERVAL.end_date, lambda d, v, s, e: d is not None and d == e),
    (_on.is_during(INTERVAL), lambda d, v, s, e: d is not None and s <= d <= e),
    (  # `or` with a condition on the row alone
        (_e.value > 5) | _on.is_during(INTERVAL),
        lambda d, v, s, e: (v is not None and v > 5) or (d is not None and s <= d <= e),
    ),
    (  # INTERVAL in date arithmetic: computed per patient and interval instead
        _on.is_on_or_after(INTERVAL.start_date - days(3)) & _on.is_on_or_before(INTERVAL.end_date),
        lambda d, v, s, e: d is not None and s - timedelta(days=3) <= d <= e,
    ),
]


@pytest.mark.parametrize(
    "intervals",
    [months(3).starting_on("2024-01-31"), weeks(4).starting_on("2024-02-26")],
    ids=["months from the 31st", "weeks"],
)
def test_measures_count_rows_in_intervals_by_every_comparison_with_interval(
    engine: Engine, intervals: n.Intervals
) -> None:
    # Each patient's number of rows in each interval is a group; the numerator is whether
    # they have any.
    measures = Measures()
    for i, (condition, _) in enumerate(COMPARISONS):
        measures.define_measure(
            f"m{i}",
            numerator=_e.where(condition).exists_for_patient(),
            denominator=patients.exists_for_patient(),
            group_by={"rows": _e.where(condition).count_for_patient()},
            intervals=intervals,
        )
    results = run(engine, SPANNED, None, measures)
    rows = SPANNED["clinical_events"].to_pylist()
    people = sorted(SPANNED["patients"].column("patient_id").to_pylist())
    for i, (_, check) in enumerate(COMPARISONS):
        expected = []
        for start, end in interval_rows(intervals):
            counts = [
                sum(
                    1
                    for r in rows
                    if r["patient_id"] == person
                    and check(r["effective_date"], r["value"], start, end)
                )
                for person in people
            ]
            expected += [
                {
                    **interval(start, end),
                    "rows": count,
                    "numerator": counts.count(count) if count else 0,
                    "denominator": counts.count(count),
                }
                for count in sorted(set(counts))
            ]
        assert results.measures[f"m{i}"].to_pylist() == expected, f"comparison {i}"


def test_measures_pick_each_intervals_registration_when_registrations_overlap(
    engine: Engine,
) -> None:
    registered = practice_registrations.for_patient_on(INTERVAL.start_date)
    measures = Measures()
    measures.define_measure(
        "m",
        numerator=_e.where(_on.is_during(INTERVAL)).exists_for_patient(),
        denominator=registered.exists_for_patient(),
        group_by={"practice": registered.practice},
        intervals=months(4).starting_on("2024-01-01"),
    )
    views = make_views(
        patients=[{"patient_id": "p1"}, {"patient_id": "p2"}],
        practice_registrations=[
            # p1: A throughout; B from 15 February to 20 March, the latest to start in March.
            {"patient_id": "p1", "start_date": D(2020, 1, 1), "practice": "A"},
            {"patient_id": "p1", "start_date": D(2024, 2, 15), "end_date": D(2024, 3, 20),
             "practice": "B"},
            # p2: C until 1 February (its last day, so registered on it), then D from 1 March.
            {"patient_id": "p2", "start_date": D(2023, 6, 1), "end_date": D(2024, 2, 1),
             "practice": "C"},
            {"patient_id": "p2", "start_date": D(2024, 3, 1), "practice": "D"},
        ],
        clinical_events=[
            {"patient_id": "p1", "effective_date": D(2024, 3, 5)},
            {"patient_id": "p1", "effective_date": D(2024, 3, 25)},
            {"patient_id": "p2", "effective_date": D(2024, 2, 10)},  # with C on 1 February
            {"patient_id": "p2", "effective_date": D(2024, 4, 30)},
        ],
    )  # fmt: skip
    jan, feb, mar, apr = (
        interval(s, e) for s, e in interval_rows(months(4).starting_on("2024-01-01"))
    )
    assert run(engine, views, None, measures).measures["m"].to_pylist() == [
        {**jan, "practice": "A", "numerator": 0, "denominator": 1},
        {**jan, "practice": "C", "numerator": 0, "denominator": 1},
        {**feb, "practice": "A", "numerator": 0, "denominator": 1},
        {**feb, "practice": "C", "numerator": 1, "denominator": 1},
        {**mar, "practice": "B", "numerator": 1, "denominator": 1},
        {**mar, "practice": "D", "numerator": 0, "denominator": 1},
        {**apr, "practice": "A", "numerator": 0, "denominator": 1},
        {**apr, "practice": "D", "numerator": 1, "denominator": 1},
    ]


def test_measures_with_interval_in_a_patients_own_value(engine: Engine) -> None:
    # Age on each interval's first day groups the patients: their spans are cut per interval.
    registered = practice_registrations.for_patient_on(INTERVAL.start_date)
    measures = Measures()
    measures.define_measure(
        "m",
        numerator=_e.where(_on.is_during(INTERVAL)).exists_for_patient(),
        denominator=registered.exists_for_patient(),
        group_by={"adult": patients.age_on(INTERVAL.start_date) >= 18},
        intervals=months(3).starting_on("2024-01-01"),
    )
    views = make_views(
        patients=[
            {"patient_id": "p1", "date_of_birth": D(2006, 2, 1)},  # 18 on 1 February 2024
            {"patient_id": "p2", "date_of_birth": D(1970, 5, 1)},
        ],
        practice_registrations=[
            {"patient_id": "p1", "start_date": D(2010, 1, 1), "practice": "A"},
            {"patient_id": "p2", "start_date": D(2024, 2, 10), "practice": "A"},
        ],
        clinical_events=[
            {"patient_id": "p1", "effective_date": D(2024, 1, 3)},
            {"patient_id": "p1", "effective_date": D(2024, 3, 3)},
            {"patient_id": "p1", "effective_date": D(2024, 3, 4)},
            {"patient_id": "p2", "effective_date": D(2024, 3, 9)},
        ],
    )
    jan, feb, mar = (interval(s, e) for s, e in interval_rows(months(3).starting_on("2024-01-01")))
    assert run(engine, views, None, measures).measures["m"].to_pylist() == [
        {**jan, "adult": False, "numerator": 1, "denominator": 1},
        {**feb, "adult": True, "numerator": 0, "denominator": 1},
        {**mar, "adult": True, "numerator": 2, "denominator": 2},
    ]


def test_numbers_no_engine_or_json_can_hold_are_refused() -> None:
    for number in (float("inf"), float("nan"), 2**63):
        with pytest.raises(n.DefinitionError, match="number"):
            patients.imd_decile < number  # noqa: B015


def test_names_a_result_column_already_has_are_refused() -> None:
    made = dataset()
    with pytest.raises(n.DefinitionError, match="'patients' is reserved"):
        made.patients = patients.sex
    made.imd = patients.imd_decile
    made.imd_mean = patients.sex
    made.add_table("t", by=["imd_mean"], statistics={"imd": ["mean"]})
    with pytest.raises(n.DefinitionError, match="two columns called imd_mean"):
        through_json(definition_of(made, None))
    measures = Measures()
    with pytest.raises(n.DefinitionError, match="'numerator' is reserved"):
        measures.define_measure(
            "m",
            numerator=patients.exists_for_patient(),
            denominator=patients.exists_for_patient(),
            group_by={"numerator": patients.sex},
            intervals=months(1).starting_on("2024-01-01"),
        )


# ---- the Spark engine without Spark ----------------------------------------------------------


def test_gpdpr_works_without_pyspark_and_says_how_to_install_it() -> None:
    script = (
        "import sys\n"
        "sys.modules['pyspark'] = None  # as if it were not installed\n"
        "from gpdpr.tre.engines import spark\n"
        "from gpdpr.errors import UserError\n"
        "try:\n"
        "    spark.SparkEngine().run(None, {})\n"
        "except UserError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert "needs pyspark" in done.stdout
    assert "pip install 'gpdpr[spark]'" in done.stdout


def test_spark_without_java_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from gpdpr.tre.engines import spark

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"needs Java.*apt-get install default-jre-headless"):
        spark._java()
