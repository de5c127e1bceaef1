"""Disclosure control of counts and measures: no small count, no small group, no way back to one;
every number considered is a cell with its status; and the safeguards page states the rules
from the constants that enforce them.

Aggregate tables and their statistics: test_tre_statistics.py. Keys and differencing:
test_tre_differencing.py."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import date
from html import unescape
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from gpdpr.errors import UserError
from gpdpr.portal.app import create_app
from gpdpr.tre.engines import sql
from gpdpr.tre.query import canonical
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.language import (
    INTERVAL,
    Measures,
    months,
    patients,
    practice_registrations,
)
from gpdpr.tre.release import disclosure
from gpdpr.tre.release.disclosure import (
    BLOCK,
    MAX_CATEGORICAL_VALUES,
    MEDIAN_SHARED,
    MIN_STATISTIC_COUNT,
    NK_K,
    NK_N,
    P_PERCENT,
    ROUND_TO,
    RULES,
    SIGNIFICANT_FIGURES,
    STATUSES,
    THRESHOLD,
    Rule,
    control_count,
    control_counts,
    control_measure,
    render_csv,
)

JAN = (date(2024, 1, 1), date(2024, 1, 31))
FEB = (date(2024, 2, 1), date(2024, 2, 29))


def women_among_adults(name: str = "women", grouped: bool = True) -> n.Measure:
    """Women among adults, monthly, by region (the raw tables below are its results)."""
    measures = Measures()
    measures.define_measure(
        name,
        numerator=patients.sex == "F",
        denominator=patients.age_on(INTERVAL.start_date) >= 18,
        group_by={"region": patients.region_code} if grouped else {},
        intervals=months(2).starting_on("2024-01-01"),
    )
    return measures.measures[0]


def measure(
    numerators: list[int],
    denominators: list[int],
    regions: list[str | None] | None = None,
    interval: tuple[date, date] = JAN,
) -> pa.Table:
    """A raw measure table as an engine computes it: one row per region for one month."""
    rows = len(numerators)
    regions = regions if regions is not None else [f"E1200000{i}" for i in range(rows)]
    return pa.table(
        {
            "interval_start": pa.array([interval[0]] * rows, pa.date32()),
            "interval_end": pa.array([interval[1]] * rows, pa.date32()),
            "region": pa.array(regions, pa.string()),
            "numerator": pa.array(numerators, pa.int64()),
            "denominator": pa.array(denominators, pa.int64()),
        }
    )


MEASURE = women_among_adults()
REASONS = {v for k, v in vars(disclosure).items() if k.startswith("BECAUSE_")}


# --- single counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "published"),
    [(0, None), (1, None), (7, None), (8, 10), (10, 10), (12, 10), (13, 15), (17, 15), (18, 20)],
)
def test_round5_redacts_seven_or_fewer_and_rounds_the_rest_to_the_nearest_five(
    raw: int, published: int | None
) -> None:
    assert control_count(raw) == published
    assert control_count(raw, "round5") == published


@pytest.mark.parametrize(
    ("raw", "published"),
    [(0, 0), (1, 3), (6, 3), (7, 9), (8, 9), (12, 9), (13, 15), (18, 15), (19, 21)],
)
def test_midpoint6_publishes_the_middle_of_each_block_of_six_and_keeps_zero(
    raw: int, published: int
) -> None:
    assert control_count(raw, "midpoint6") == published


@pytest.mark.parametrize("rule", RULES)
def test_no_count_publishes_nothing(rule: Rule) -> None:
    assert control_count(None, rule) is None


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_a_count_that_cannot_be_a_number_of_people_is_refused(bad: object) -> None:
    with pytest.raises(UserError, match="count"):
        control_count(bad)  # type: ignore[arg-type]


def test_an_unknown_rule_is_refused_with_the_rules_there_are() -> None:
    with pytest.raises(UserError, match="round5, midpoint6"):
        control_count(10, "round10")  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=10**12))
def test_round5_never_publishes_one_to_seven_and_only_multiples_of_five(n: int) -> None:
    published = control_count(n)
    if published is None:
        assert n <= THRESHOLD
    else:
        assert n > THRESHOLD
        assert published > THRESHOLD
        assert published % ROUND_TO == 0
        assert abs(published - n) <= ROUND_TO // 2


@settings(max_examples=300)
@given(st.integers(min_value=1, max_value=10**12))
def test_midpoint6_hides_where_in_its_block_a_count_lies(n: int) -> None:
    published = control_count(n, "midpoint6")
    assert published is not None
    assert published % 6 == 3
    assert abs(published - n) <= 3
    block = (n - 1) // 6
    assert all(
        control_count(m, "midpoint6") == published for m in range(6 * block + 1, 6 * block + 7)
    )


@pytest.mark.parametrize("rule", RULES)
def test_the_vectorised_rule_agrees_with_the_single_count_rule(rule: Rule) -> None:
    values = [*range(0, 200), None]
    out = control_counts(pa.array(values, pa.int64()), rule)
    assert out.type == pa.int64()
    assert isinstance(out, pa.Array)
    assert out.to_pylist() == [control_count(v, rule) for v in values]


def test_control_counts_takes_chunked_and_narrower_integer_columns() -> None:
    chunked = pa.chunked_array([pa.array([0, 8], pa.int32()), pa.array([13], pa.int32())])
    out = control_counts(chunked)
    assert isinstance(out, pa.Array)
    assert out.type == pa.int64()
    assert out.to_pylist() == [None, 10, 15]


def test_control_counts_refuses_negative_and_fractional_counts() -> None:
    with pytest.raises(UserError, match="negative count at row 2"):
        control_counts(pa.array([3, -1]))
    with pytest.raises(UserError, match="not whole-number counts"):
        control_counts(pa.array([3.0, 1.5]))


# --- measures ---------------------------------------------------------------------------------


def test_a_measure_controls_both_counts_adds_the_ratio_and_drops_small_groups() -> None:
    raw = measure([3, 12, 40, 2], [100, 13, 41, 7])
    table, _ = control_measure(raw, MEASURE, "measure_women.csv")
    assert table.column_names == [
        "measure", "interval_start", "interval_end", "region", "numerator", "denominator", "ratio"
    ]  # fmt: skip
    assert table.schema.field("ratio").type == pa.float64()
    # The fourth region has 7 people: it has no row at all, not a row of blanks.
    assert table.column("region").to_pylist() == ["E12000000", "E12000001", "E12000002"]
    assert table.column("measure").to_pylist() == ["women"] * 3
    assert table.column("numerator").to_pylist() == [None, 10, 40]
    assert table.column("denominator").to_pylist() == [100, 15, 40]


def test_rates_come_from_the_controlled_counts_never_the_raw_ones() -> None:
    table, _ = control_measure(measure([13, 3, 0], [22, 50, 9]), MEASURE, "m.csv")
    assert table.column("ratio").to_pylist() == [15 / 20, None, None]  # not 13 / 22


@pytest.mark.parametrize("rule", RULES)
def test_under_every_rule_a_group_of_seven_or_fewer_is_not_published(rule: Rule) -> None:
    # midpoint6 would show a denominator of 3 (and 0 beside it): the row itself says somebody.
    raw = measure([0, 1, 7, 0], [0, 1, 7, 13])
    table, cells = control_measure(raw, MEASURE, "m.csv", rule)
    assert table.num_rows == 1
    assert table.column("denominator").to_pylist() == [control_count(13, rule)]
    dropped = [c for c in cells if c.row is None]
    assert len(dropped) == 6 and {c.status for c in dropped} == {"suppressed"}
    assert not any(c.released for c in dropped)


def test_midpoint6_keeps_a_zero_or_small_numerator_beside_a_published_denominator() -> None:
    table, cells = control_measure(measure([0, 7], [13, 13]), MEASURE, "m.csv", rule="midpoint6")
    assert table.column("numerator").to_pylist() == [0, 9]
    assert table.column("ratio").to_pylist() == [0.0, 9 / 15]
    assert [(c.status, c.released) for c in cells if c.column == "numerator"] == [
        ("published", True),
        ("rounded", True),
    ]


def test_a_measure_gives_a_cell_for_every_count_considered_with_its_status() -> None:
    _, cells = control_measure(measure([3, 12, 1], [100, 13, 5]), MEASURE, "m.csv")
    described = [(c.file, c.row, c.column, c.raw, c.released, c.status) for c in cells]
    assert described == [
        ("m.csv", 1, "numerator", 3, False, "redacted"),
        ("m.csv", 1, "denominator", 100, True, "rounded"),
        ("m.csv", 2, "numerator", 12, True, "rounded"),
        ("m.csv", 2, "denominator", 13, True, "rounded"),
        ("m.csv", None, "numerator", 1, False, "suppressed"),
        ("m.csv", None, "denominator", 5, False, "suppressed"),
    ]
    assert cells[0].reason == f"{THRESHOLD} or fewer people"
    assert cells[4].reason == cells[5].reason
    assert "not published" in cells[5].reason
    assert all(re.fullmatch("[0-9a-f]{64}", c.key) for c in cells)


def test_a_numerator_counts_its_denominator_and_numerator_within_interval_and_group() -> None:
    _, cells = control_measure(measure([20], [100], ["E12000007"]), MEASURE, "m.csv")
    canon = canonical.Canon(JAN)
    grouping = canonical.Grouping([canon.of(patients.region_code.node)], [pa.array(["E12000007"])])
    both = canon.conjunction(MEASURE.denominator, MEASURE.numerator)
    assert cells[0].key == grouping.keys([canonical.count(both)])[0]
    assert cells[1].key == grouping.keys([canonical.count(canon.of(MEASURE.denominator))])[0]
    # Another interval, another group, or no group: another count.
    _, february = control_measure(measure([20], [100], ["E12000007"], FEB), MEASURE, "m.csv")
    _, elsewhere = control_measure(measure([20], [100], ["E12000008"]), MEASURE, "m.csv")
    ungrouped = women_among_adults(grouped=False)
    _, everywhere = control_measure(measure([20], [100]).drop_columns(["region"]), ungrouped, "m")
    keys = {c.key for c in [*cells, *february, *elsewhere, *everywhere]}
    assert len(keys) == 8


def test_group_values_of_any_type_are_part_of_the_key() -> None:
    measures = Measures()
    measures.define_measure(
        "linked",
        numerator=patients.sex == "F",
        denominator=patients.age_on(INTERVAL.start_date) >= 18,
        group_by={"linkable": patients.linkable, "born": patients.date_of_birth},
        intervals=months(1).starting_on("2024-01-01"),
    )
    raw = measure([12, 12, 12], [13, 13, 13]).drop_columns(["region"])
    raw = raw.add_column(2, "linkable", pa.array([True, None, True]))
    raw = raw.add_column(3, "born", pa.array([date(1980, 5, 1)] * 2 + [None], pa.date32()))
    _, cells = control_measure(raw, measures.measures[0], "m.csv")
    assert len({c.key for c in cells}) == 6


def replaced(index: int, name: str, values: pa.Array) -> Callable[[pa.Table], pa.Table]:
    return lambda table: table.set_column(index, name, values)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.drop_columns(["denominator"]), "needs the column.s. denominator"),
        (lambda t: t.drop_columns(["interval_start"]), "needs the column.s. interval_start"),
        (lambda t: t.drop_columns(["region"]), "needs the column.s. region"),
        (replaced(3, "numerator", pa.array([1.0, 2.5])), "'numerator' holds double"),
        (replaced(4, "denominator", pa.array(["9", "9"])), "'denominator' holds str"),
        (replaced(3, "numerator", pa.array([1, -2])), "'numerator' has a negative count at row 2"),
        (replaced(4, "denominator", pa.array([9, None])), "'denominator' has no value at row 2"),
        (replaced(3, "numerator", pa.array([1, 10])), "a numerator is above its denominator"),
        (replaced(0, "interval_start", pa.array(["2024-01-01"] * 2)), "'interval_start' holds str"),
        (lambda t: t.append_column("ratio", pa.array([0.5, 0.5])), "has column.s. ratio"),
        (lambda t: t.append_column("weight", pa.array([5, 5])), "has column.s. weight"),
        (replaced(2, "region", pa.array(["A1", "A1"])), "rows 1 and 2 are the same group"),
    ],
)
def test_a_bad_measure_table_is_refused_naming_the_file_and_column(
    change: Callable[[pa.Table], pa.Table], problem: str
) -> None:
    with pytest.raises(UserError, match=problem) as refused:
        control_measure(change(measure([1, 2], [9, 9])), MEASURE, "measure_women.csv")
    assert str(refused.value).startswith("measure_women.csv: ")


def test_the_same_group_in_two_intervals_is_two_rows() -> None:
    raw = pa.concat_tables([measure([12], [13]), measure([12], [13], interval=FEB)])
    table, cells = control_measure(raw, MEASURE, "m.csv")
    assert table.num_rows == 2 and len({c.key for c in cells}) == 4


measures_counts = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 40)).map(lambda p: (min(p), max(p))),
    min_size=1,
    max_size=15,
)


@settings(max_examples=150, deadline=None)
@given(measures_counts, st.sampled_from(RULES))
def test_no_published_count_of_a_measure_is_one_to_seven_or_beside_a_small_group(
    pairs: list[tuple[int, int]], rule: Rule
) -> None:
    numerators, denominators = [p[0] for p in pairs], [p[1] for p in pairs]
    table, cells = control_measure(measure(numerators, denominators), MEASURE, "m.csv", rule)
    published = table.to_pylist()
    assert len(published) == sum(d > THRESHOLD for d in denominators)
    for row in published:
        assert row["denominator"] > THRESHOLD
        if rule == "round5":
            assert row["numerator"] is None or (
                row["numerator"] > THRESHOLD and row["numerator"] % ROUND_TO == 0
            )
            assert row["denominator"] % ROUND_TO == 0
    assert {c.status for c in cells} <= set(STATUSES)
    for cell in cells:
        assert cell.released == (cell.status in ("published", "rounded"))
        assert (cell.row is None) == (cell.status == "suppressed")
        assert cell.reason in REASONS  # the rules' own words, never a number of the data


# --- files ------------------------------------------------------------------------------------


def test_render_csv_writes_iso_dates_empty_nulls_and_the_same_bytes_however_chunked() -> None:
    table, _ = control_measure(measure([3, 12], [100, 13]), MEASURE, "m.csv")
    text = render_csv(table)
    assert text == (
        b'"measure","interval_start","interval_end","region","numerator","denominator","ratio"\n'
        b'"women",2024-01-01,2024-01-31,"E12000000",,100,\n'
        b'"women",2024-01-01,2024-01-31,"E12000001",10,15,0.6666666666666666\n'
    )
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=1))
    assert render_csv(rechunked) == text


# --- the safeguards page ----------------------------------------------------------------------


def test_the_safeguards_page_states_each_rule_with_the_constants_that_enforce_it(
    tmp_path: Path,
) -> None:
    page = TestClient(create_app(tmp_path)).get("/safeguards")
    assert page.status_code == 200
    rules = {
        match.group(1): " ".join(unescape(re.sub(r"<[^>]+>", "", match.group(2))).split())
        for match in re.finditer(r'<li id="rule-([a-z]+)">(.*?)</li>', page.text, re.S)
    }
    expected = {
        "counts": [f"{THRESHOLD} or fewer", f"nearest {ROUND_TO}", f"block of {BLOCK}"],
        "groups": [f"group of {THRESHOLD} or fewer people is not published"],
        "totals": ["only the rows that were published"],
        "rates": ["rounded counts"],
        "statistics": [
            f"at least {MIN_STATISTIC_COUNT} people",
            f"{SIGNIFICANT_FIGURES} significant figures",
        ],
        "categorical": [f"{MAX_CATEGORICAL_VALUES} or fewer different values"],
        "dominance": [
            f"the {NK_N} largest values make up {round(NK_K * 100)}%",
            f"less than {round(P_PERCENT * 100)}% of the largest",
        ],
        "median": [f"at least {MEDIAN_SHARED} people"],
        "differencing": [f"1 to {THRESHOLD} apart", "names the files only"],
    }
    assert set(rules) == set(expected)
    for rule, phrases in expected.items():
        for phrase in phrases:
            assert phrase in rules[rule], (rule, phrase, rules[rule])
    # Every number on the list is one of the constants (or derived from one).
    stated = {int(v) for text in rules.values() for v in re.findall(r"\d+", text)}
    constants = set(disclosure.rules().values()) | {1, BLOCK // 2}
    assert stated <= constants, stated - constants
    assert np.isclose(NK_K, 0.9) and np.isclose(P_PERCENT, 0.1)  # ACRO's published defaults


@pytest.mark.parametrize("by_region", [False, True])
def test_a_measures_keys_are_the_keys_of_each_row_counted_on_its_own(by_region: bool) -> None:
    """Keys are made for all of a measure's rows at once; they must be the keys each row gets
    when its interval's counts and groups are keyed one row at a time. Grouped by the practice
    on each interval's first day (a series that changes with the interval), every interval is
    alike and whole columns are keyed at once; grouped by region too (a series that does not
    change), the two series' hashes fall in one order for some months and the other for
    others, and the rows are keyed one by one."""
    practice = practice_registrations.for_patient_on(INTERVAL.start_date).practice
    measures = Measures()
    measures.define_measure(
        "by_practice",
        numerator=patients.sex == "F",
        denominator=patients.age_on(INTERVAL.start_date) >= 18,
        group_by={"practice": practice, "region": patients.region_code},
        intervals=months(24).starting_on("2023-01-01"),
    )
    (measure_,) = measures.measures
    spans = [(a, b) for a, b, *_ in sql.interval_rows(measure_.intervals)]
    orders = set()
    for span in spans:
        canon = canonical.Canon(span)
        hashes = [canon.of(series) for _, series in measure_.group_by]
        orders.add(hashes[0] < hashes[1])
    assert orders == {True, False}  # the case this test is for
    if not by_region:
        measure_ = dataclasses.replace(measure_, group_by=measure_.group_by[:1])

    regions = ("E1", "E2") if by_region else (None,)
    rows = [(span, p, r) for span in spans for p in ("A81001", None) for r in regions]
    raw = pa.table(
        {
            "interval_start": pa.array([s[0] for s, _, _ in rows], pa.date32()),
            "interval_end": pa.array([s[1] for s, _, _ in rows], pa.date32()),
            "practice": pa.array([p for _, p, _ in rows], pa.string()),
            **({"region": pa.array([r for _, _, r in rows], pa.string())} if by_region else {}),
            "numerator": pa.array([50] * len(rows), pa.int64()),
            "denominator": pa.array([100] * len(rows), pa.int64()),
        }
    )
    _, cells = control_measure(raw, measure_, "m.csv")
    for index, (span, p, r) in enumerate(rows):
        canon = canonical.Canon(span)
        grouping = canonical.Grouping(
            [canon.of(series) for _, series in measure_.group_by],
            [pa.array([p], pa.string()), pa.array([r], pa.string())][: len(measure_.group_by)],
        )
        below = canon.factors(measure_.denominator)
        both = canon.factors(measure_.denominator, measure_.numerator)
        for cell, (factors, keep) in zip(
            cells[2 * index : 2 * index + 2], ((both, below), (below, frozenset())), strict=True
        ):
            expected = [canon.conjunction_of(factors), *canon.near(factors, keep)]
            keys = [grouping.keys([canonical.count(w)])[0] for w in expected]
            assert (cell.key, cell.near) == (keys[0], tuple(keys[1:]))
