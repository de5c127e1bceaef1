"""Aggregate tables, computed from a run's dataset and controlled as they are made: counts of
each group (none of 7 or fewer, no row for such a group), totals of the published rows only,
and statistics that never give back a count or a person's value (ACRO's minimum threshold,
(n, k) dominance and p% rules, no statistic of a value with two or fewer values, a median only
when at least eight people have it), each a cell with its status."""

from __future__ import annotations

import statistics as py_statistics
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.language import (
    Dataset,
    case,
    clinical_events,
    definition_of,
    patients,
    when,
)
from gpdpr.tre.release import disclosure
from gpdpr.tre.release.disclosure import (
    MEDIAN_SHARED,
    MIN_STATISTIC_COUNT,
    ROUND_TO,
    RULES,
    THRESHOLD,
    Rule,
    control_count,
    render_csv,
)
from gpdpr.tre.release.tables import (
    BECAUSE_CATEGORICAL,
    BECAUSE_FEW,
    BECAUSE_MEDIAN,
    BECAUSE_NK,
    BECAUSE_P,
    COUNTED,
    _by_group_then_value,
    _numbered,
    control_table,
)

REASONS = {v for k, v in vars(disclosure).items() if k.startswith("BECAUSE_")} | {
    BECAUSE_CATEGORICAL,
    BECAUSE_FEW,
    BECAUSE_MEDIAN,
    BECAUSE_NK,
    BECAUSE_P,
    "rounded to 3 significant figures",
}


def study(by: tuple[str, ...] = ("sex",), statistics: dict[str, list[str]] | None = None) -> Any:
    """A definition over every kind of variable; its table `t` by `by` with `statistics`."""
    dataset = Dataset()
    dataset.define_population(patients.date_of_birth.is_before("2006-01-01"))
    dataset.sex = patients.sex
    dataset.region = patients.region_code
    dataset.born = patients.date_of_birth
    dataset.band = case(when(patients.imd_decile <= 5).then("poorer"), otherwise="richer")
    dataset.events = clinical_events.count_for_patient()
    dataset.value = clinical_events.sort_by(clinical_events.effective_date).last_for_patient().value
    dataset.add_table("t", by=list(by), statistics=statistics or {})
    return definition_of(dataset, None)


def people(**columns: list[Any]) -> pa.Table:
    """A dataset: one row per patient, with the columns given (the rest empty)."""
    size = len(next(iter(columns.values())))
    types = {
        "sex": pa.string(),
        "region": pa.string(),
        "born": pa.date32(),
        "band": pa.string(),
        "events": pa.int64(),
        "value": pa.float64(),
    }
    return pa.table(
        {
            "patient_id": pa.array([f"p{i}" for i in range(size)], pa.string()),
            **{
                name: pa.array(columns.get(name, [None] * size), kind)
                for name, kind in types.items()
            },
        }
    )


def run(
    dataset: pa.Table, definition: n.Definition, rule: Rule = "round5"
) -> tuple[list[dict[str, Any]], list[disclosure.Cell]]:
    table, cells = control_table(dataset, definition, definition.tables[0], "t.csv", rule)
    return table.to_pylist(), cells


# --- counts and groups ------------------------------------------------------------------------


def test_groups_in_order_small_ones_without_a_row_and_a_total_of_the_rest() -> None:
    sex = ["M"] * 20 + ["F"] * 13 + ["U"] * 5 + [None] * 9
    rows, cells = run(people(sex=sex), study())
    assert rows == [
        {"sex": "F", "patients": 15},
        {"sex": "M", "patients": 20},
        {"sex": "missing", "patients": 10},
        {"sex": "Total", "patients": 40},  # 13 + 20 + 9 = 42: U's 5 are in no published number
    ]
    described = [(c.row, c.column, c.raw, c.status) for c in cells]
    assert described == [
        (1, "patients", 13, "rounded"),
        (2, "patients", 20, "rounded"),
        (None, "patients", 5, "suppressed"),
        (3, "patients", 9, "rounded"),
        (4, "patients", 42, "rounded"),
    ]
    assert all(c.reason in REASONS for c in cells)


@pytest.mark.parametrize("rule", RULES)
def test_grouping_by_a_near_unique_value_publishes_nothing(rule: Rule) -> None:
    """The attack: a table by date of birth, one row per person. No group has more than 7
    people, so no group has a row, and the total of no rows is nothing."""
    born = [date(1950, 1, 1) + timedelta(days=30 * (i // 3)) for i in range(300)]
    rows, cells = run(people(born=born, sex=["F"] * 300), study(by=("born",)), rule)
    assert rows == [{"born": "Total", "patients": control_count(0, rule)}]
    assert {c.status for c in cells[:-1]} == {"suppressed"}
    assert not any(c.released for c in cells[:-1])


@pytest.mark.parametrize("rule", RULES)
def test_a_group_of_seven_has_no_row_under_either_rule(rule: Rule) -> None:
    rows, _ = run(people(sex=["F"] * 7 + ["M"] * 8), study(), rule)
    assert [r["sex"] for r in rows] == ["M", "Total"]


def test_two_group_columns_come_out_as_text_with_missing_and_a_blank_beside_total() -> None:
    sex = ["F"] * 10 + ["M"] * 10
    region = ["E1"] * 10 + [None] * 10
    definition = study(("sex", "region"))
    table, _ = control_table(
        people(sex=sex, region=region), definition, definition.tables[0], "t.csv"
    )
    assert table.schema.field("sex").type == pa.string()
    assert render_csv(table).splitlines() == [
        b'"sex","region","patients"',
        b'"F","E1",10',
        b'"M","missing",10',
        b'"Total","",20',
    ]


# --- statistics -------------------------------------------------------------------------------


def stats(
    values: Sequence[float | None], statistic: str = "mean", sex: str = "F"
) -> dict[str, Any]:
    """The published row of one group with these values, and its statistic's cell."""
    size = len(values)
    definition = study(statistics={"value": [statistic]})
    rows, cells = run(people(sex=[sex] * size, value=list(values)), definition)
    [cell] = [c for c in cells if c.column == f"value_{statistic}"]
    return {"shown": rows[0][f"value_{statistic}"], "cell": cell}


def test_a_statistic_is_computed_correctly_and_rounded_to_three_significant_figures() -> None:
    values = [20.0 + 1.37 * i for i in range(40)]
    for statistic, expected in (
        ("mean", py_statistics.mean(values)),
        ("sd", py_statistics.stdev(values)),
    ):
        got = stats(values, statistic)
        assert got["shown"] == float(f"{expected:.3g}")
        assert got["cell"].status == "rounded" and got["cell"].raw == 40


def test_a_mean_of_a_yes_no_value_is_never_published() -> None:
    """The attack: the mean of a 0/1 variable is a count (here 17 of 40, exactly)."""
    got = stats([1.0] * 17 + [0.0] * 23)
    assert got["shown"] is None
    assert (got["cell"].status, got["cell"].reason) == ("redacted", BECAUSE_CATEGORICAL)
    assert stats([5.0] * 40)["shown"] is None  # one value: everyone's


@pytest.mark.parametrize("statistic", ["mean", "sd", "median"])
def test_a_value_zero_for_all_but_one_person_gives_nothing_away(statistic: str) -> None:
    """The attack: the mean of a value that is zero for everyone but the target is the target's
    value over n."""
    assert stats([0.0] * 49 + [7123.0], statistic)["shown"] is None
    # With two or more people beside zero, a few people still dominate the total.
    got = stats([0.0] * 47 + [1.0, 2.0, 7123.0], statistic)
    assert got["shown"] is None


def test_two_people_dominating_the_total_is_refused_by_n_k() -> None:
    # the two largest are 93% of the total; the rest, 15% of the largest (p% passes)
    got = stats([1.0, 2.0] * 5 + [100.0, 100.0])
    assert (got["cell"].status, got["cell"].reason) == ("redacted", BECAUSE_NK)


def test_a_largest_value_the_others_could_estimate_is_refused_by_the_p_percent_rule() -> None:
    # the rest are 8% of the largest (with p = 10% and k = 90%, (n, k) then fails too)
    got = stats([1.0, 2.0] * 5 + [5.0, 240.0])
    assert (got["cell"].status, got["cell"].reason) == ("redacted", BECAUSE_P)


def test_dominance_is_judged_on_absolute_values() -> None:
    got = stats([1.0, -1.0, 2.0, -2.0] * 5 + [-5000.0])  # a mean near zero, all the same
    assert got["cell"].status == "redacted"


def test_a_statistic_needs_ten_people_with_a_value() -> None:
    values: list[float | None] = [float(v) for v in range(MIN_STATISTIC_COUNT - 1)]
    got = stats([*values, None, None, None])  # 12 people, 9 with a value
    assert got["shown"] is None
    assert (got["cell"].reason, got["cell"].raw) == (BECAUSE_FEW, MIN_STATISTIC_COUNT - 1)
    assert stats([float(v) for v in range(10, 10 + MIN_STATISTIC_COUNT)])["shown"] == 14.5


def test_a_median_is_published_only_when_enough_people_have_its_value() -> None:
    shared = [1.0] * 10 + [2.0] * MEDIAN_SHARED + [3.0] * 10
    assert stats(shared, "median")["shown"] == 2.0
    # 27 different values: the median is one person's own.
    got = stats([float(v) for v in range(27)], "median")
    assert (got["shown"], got["cell"].reason) == (None, BECAUSE_MEDIAN)
    # ... and with one fewer sharing it, so is it, near enough.
    fewer = [1.0] * 10 + [2.0] * (MEDIAN_SHARED - 1) + [3.0] * 10
    assert stats(fewer, "median")["shown"] is None


def test_a_suppressed_group_has_no_statistics_and_the_total_row_none() -> None:
    definition = study(statistics={"value": ["mean"]})
    values = [float(v) for v in range(30)]
    rows, cells = run(people(sex=["F"] * 25 + ["M"] * 5, value=values), definition)
    assert rows == [
        {"sex": "F", "patients": 25, "value_mean": 12.0},
        {"sex": "Total", "patients": 25, "value_mean": None},
    ]
    suppressed = [c for c in cells if c.row is None]
    assert [(c.column, c.status) for c in suppressed] == [
        ("patients", "suppressed"),
        ("value_mean", "suppressed"),
    ]


def test_an_integer_variable_is_a_value_like_any_other() -> None:
    definition = study(statistics={"events": ["mean", "median"]})
    events = [0, 1, 2, 3] * 5
    rows, _ = run(people(sex=["F"] * 20, events=events), definition)
    assert rows[0]["events_mean"] == 1.5 and rows[0]["events_median"] is None


# --- properties -------------------------------------------------------------------------------

groups = st.lists(st.integers(0, 30), min_size=1, max_size=8)


def by_group(counts: list[int]) -> pa.Table:
    """People in regions R0, R1, ... of these sizes; each region's values the same whatever the
    size of the others."""
    regions = [f"R{i}" for i, count in enumerate(counts) for _ in range(count)]
    values = [float(j % 13) for count in counts for j in range(count)]
    return people(region=regions, value=values)


@settings(max_examples=150, deadline=None)
@given(groups, st.data(), st.sampled_from(RULES))
def test_no_published_number_gives_back_a_small_group(
    counts: list[int], data: st.DataObject, rule: Rule
) -> None:
    """Whatever a suppressed group really held (1 to 7 people, or nobody at all), the published
    file is the same byte for byte: no count, total or statistic carries a trace of it."""
    definition = study(by=("region",), statistics={"value": ["mean", "median", "sd"]})
    table, cells = control_table(by_group(counts), definition, definition.tables[0], "t.csv", rule)
    published = table.column("patients").to_pylist()
    if rule == "round5":
        assert all(p is None or (p > THRESHOLD and p % ROUND_TO == 0) for p in published)
    kept = [c for c in counts if c > THRESHOLD]
    assert published[-1] == control_count(sum(kept), rule)
    assert table.num_rows == len(kept) + 1
    altered = [c if c > THRESHOLD else data.draw(st.integers(0, THRESHOLD)) for c in counts]
    again, _ = control_table(by_group(altered), definition, definition.tables[0], "t.csv", rule)
    assert render_csv(again) == render_csv(table)
    assert all(c.reason in REASONS for c in cells)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    codes=st.lists(st.integers(0, 40), max_size=200),
    combinations=st.sampled_from([41, 64, COUNTED, COUNTED + 1, 1 << 40]),
)
def test_groups_are_numbered_as_a_sort_of_every_row_would_number_them(
    codes: list[int], combinations: int
) -> None:
    """Counting the combinations (few of them) or sorting the rows (many) gives the groups in
    the same order and each row the same group."""
    code = np.array(codes, np.int64) * (combinations // 41)
    present, of_row = _numbered(code, combinations)
    expected, expected_of_row = np.unique(code, return_inverse=True)
    assert present.tolist() == expected.tolist()
    assert of_row.tolist() == expected_of_row.reshape(-1).tolist()


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 5), st.floats(allow_nan=False, allow_infinity=False)),
        max_size=200,
    ),
    groups=st.sampled_from([6, 1 << 16, (1 << 16) + 1]),
)
def test_rows_are_ordered_by_group_then_value_as_a_lexsort_orders_them(
    rows: list[tuple[int, float]], groups: int
) -> None:
    """The two sorts (few groups) or the lexsort (many) put the same values in the same
    places: each group's run of values, ascending, in group order."""
    group = np.array([g * (groups // 6) for g, _ in rows], np.int64)
    value = np.array([v for _, v in rows], np.float64)
    order = _by_group_then_value(group, value, groups)
    expected = np.lexsort((value, group))
    assert sorted(order.tolist()) == list(range(len(rows)))  # every row, once
    assert group[order].tolist() == group[expected].tolist()
    assert value[order].tolist() == value[expected].tolist()
