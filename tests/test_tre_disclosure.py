"""Disclosure control: no small count, no way back to one, and no release that differences one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpdpr.errors import UserError
from gpdpr.tre.release.disclosure import (
    ROUND_TO,
    RULES,
    THRESHOLD,
    Cell,
    DisclosureRefused,
    Rule,
    check_differencing,
    control_count,
    control_counts,
    control_measure,
    control_table,
    render_csv,
)

JAN = (date(2024, 1, 1), date(2024, 1, 31))
FEB = (date(2024, 2, 1), date(2024, 2, 29))


def measure(
    numerators: list[int],
    denominators: list[int],
    practices: list[str | None] | None = None,
    name: str = "asthma",
) -> pa.Table:
    """A raw measure table, one row per practice for January."""
    rows = len(numerators)
    practices = practices if practices is not None else [f"A8100{i}" for i in range(rows)]
    return pa.table(
        {
            "measure": [name] * rows,
            "interval_start": pa.array([JAN[0]] * rows, pa.date32()),
            "interval_end": pa.array([JAN[1]] * rows, pa.date32()),
            "practice": practices,
            "numerator": pa.array(numerators, pa.int64()),
            "denominator": pa.array(denominators, pa.int64()),
        }
    )


def aggregate(patients: list[int], means: list[float] | None = None) -> pa.Table:
    """A raw aggregate table grouped by age band."""
    bands = [f"{10 * i}-{10 * i + 9}" for i in range(len(patients))]
    means = means if means is not None else [float(i) for i in range(len(patients))]
    return pa.table(
        {
            "age_band": bands,
            "patients": pa.array(patients, pa.int64()),
            "bmi_mean": pa.array(means, pa.float64()),
        }
    )


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


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=50))
def test_no_released_count_in_a_column_is_one_to_seven(values: list[int]) -> None:
    out = control_counts(pa.array(values, pa.int64())).to_pylist()
    assert all(v is None or (v > THRESHOLD and v % ROUND_TO == 0) for v in out)


# --- measures ---------------------------------------------------------------------------------


def test_a_measure_keeps_its_columns_controls_both_counts_and_adds_the_ratio() -> None:
    raw = measure([3, 12, 40], [100, 13, 41])
    table, _ = control_measure(raw, "measure_asthma.csv")
    assert table.column_names == [*raw.column_names, "ratio"]
    assert table.schema.field("ratio").type == pa.float64()
    assert table.column("numerator").to_pylist() == [None, 10, 40]
    assert table.column("denominator").to_pylist() == [100, 15, 40]
    assert table.column("practice").to_pylist() == raw.column("practice").to_pylist()


def test_rates_come_from_the_controlled_counts_never_the_raw_ones() -> None:
    table, _ = control_measure(measure([13, 3, 20, 0], [22, 50, 5, 0]), "m.csv")
    ratios = table.column("ratio").to_pylist()
    assert ratios[0] == 15 / 20  # not 13 / 22
    assert ratios[1] is None  # numerator redacted
    assert ratios[2] is None  # denominator redacted
    assert ratios[3] is None  # nothing over nobody


def test_midpoint6_rates_use_the_midpoints_and_zero_is_a_rate_of_zero() -> None:
    table, _ = control_measure(measure([0, 7], [13, 13]), "m.csv", rule="midpoint6")
    assert table.column("numerator").to_pylist() == [0, 9]
    assert table.column("ratio").to_pylist() == [0.0, 9 / 15]


def test_a_measure_gives_one_cell_per_count_described_by_interval_and_groups() -> None:
    _, cells = control_measure(measure([3, 12], [100, 13], ["A81001", None]), "m.csv")
    named = "measure=asthma; "
    assert cells == [
        Cell(
            "m.csv",
            1,
            "numerator",
            named + "interval=2024-01-01..2024-01-31; practice=A81001",
            3,
            False,
        ),
        Cell(
            "m.csv", 1, "denominator", "interval=2024-01-01..2024-01-31; practice=A81001", 100, True
        ),
        Cell(
            "m.csv",
            2,
            "numerator",
            named + "interval=2024-01-01..2024-01-31; practice=missing",
            12,
            True,
        ),
        Cell(
            "m.csv", 2, "denominator", "interval=2024-01-01..2024-01-31; practice=missing", 13, True
        ),
    ]


def test_a_measure_without_groups_is_described_by_its_interval_alone() -> None:
    _, cells = control_measure(measure([12], [13]).drop_columns(["practice"]), "m.csv")
    assert {c.dims for c in cells if c.column == "denominator"} == {
        "interval=2024-01-01..2024-01-31"
    }


def test_group_values_of_any_type_describe_the_group() -> None:
    raw = measure([12, 12], [13, 13]).append_column("registered", pa.array([True, None]))
    raw = raw.append_column("since", pa.array([date(2020, 5, 1), date(2021, 6, 1)], pa.date32()))
    _, cells = control_measure(raw, "m.csv")
    assert cells[0].dims.endswith("; practice=A81000; registered=true; since=2020-05-01")
    assert cells[2].dims.endswith("; practice=A81001; registered=missing; since=2021-06-01")


def test_two_measures_denominators_over_the_same_groups_are_compared_by_differencing() -> None:
    _, everyone = control_measure(measure([20], [100], name="asthma"), "asthma.csv")
    _, adults = control_measure(measure([20], [97], name="copd"), "copd.csv")
    with pytest.raises(
        DisclosureRefused, match=r"copd\.csv row 1, denominator .* asthma\.csv row 1"
    ):
        check_differencing(adults, everyone)


def test_numerators_are_compared_only_with_the_same_measure() -> None:
    _, asthma = control_measure(measure([20], [100], name="asthma"), "asthma.csv")
    _, copd = control_measure(measure([23], [100], name="copd"), "copd.csv")
    check_differencing(copd, asthma)  # unrelated measures: 3 apart by chance, not disclosure
    _, asthma_again = control_measure(measure([23], [100], name="asthma"), "asthma2.csv")
    with pytest.raises(DisclosureRefused, match=r"asthma2\.csv row 1, numerator"):
        check_differencing(asthma_again, asthma)


def replaced(index: int, name: str, values: pa.Array) -> Callable[[pa.Table], pa.Table]:
    return lambda table: table.set_column(index, name, values)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.drop_columns(["denominator"]), "needs the column.s. denominator"),
        (lambda t: t.drop_columns(["interval_start"]), "needs the column.s. interval_start"),
        (replaced(4, "numerator", pa.array([1.0, 2.5])), "'numerator' holds double"),
        (replaced(5, "denominator", pa.array(["9", "9"])), "'denominator' holds str"),
        (replaced(4, "numerator", pa.array([1, -2])), "'numerator' has a negative count at row 2"),
        (replaced(5, "denominator", pa.array([1, None])), "'denominator' has no value at row 2"),
        (replaced(1, "interval_start", pa.array(["2024-01-01"] * 2)), "'interval_start' holds str"),
        (lambda t: t.append_column("ratio", pa.array([0.5, 0.5])), "already has a 'ratio' column"),
        (replaced(3, "practice", pa.array(["A1", "A1"])), "rows 1 and 2 are the same group"),
    ],
)
def test_a_bad_measure_table_is_refused_naming_the_file_and_column(
    change: Callable[[pa.Table], pa.Table], problem: str
) -> None:
    with pytest.raises(UserError, match=problem) as refused:
        control_measure(change(measure([1, 2], [9, 9])), "measure_asthma.csv")
    assert str(refused.value).startswith("measure_asthma.csv: ")


def test_two_measures_in_one_file_may_share_their_groups() -> None:
    raw = pa.concat_tables([measure([12], [13], name="a"), measure([20], [30], name="b")])
    table, cells = control_measure(raw, "m.csv")
    assert table.num_rows == 2
    check_differencing(cells, [])  # same file: they are not alternatives to each other


# --- aggregate tables -------------------------------------------------------------------------


def test_an_aggregate_table_is_controlled_with_its_statistics_and_a_recomputed_total() -> None:
    table, cells = control_table(aggregate([20, 5, 13], [24.5, 31.0, 27.25]), ["age_band"], "t.csv")
    assert table.column_names == ["age_band", "patients", "bmi_mean"]
    assert table.to_pylist() == [
        {"age_band": "0-9", "patients": 20, "bmi_mean": 24.5},
        {"age_band": "10-19", "patients": None, "bmi_mean": None},
        {"age_band": "20-29", "patients": 15, "bmi_mean": 27.25},
        {"age_band": "Total", "patients": 35, "bmi_mean": None},  # 20 + 13, not 20 + 5 + 13
    ]
    assert cells[-1] == Cell("t.csv", 4, "patients", "total", 33, True)
    assert [c.dims for c in cells[:3]] == ["age_band=0-9", "age_band=10-19", "age_band=20-29"]
    assert [c.released for c in cells] == [True, False, True, True]


def test_statistics_go_out_only_with_a_count_above_the_threshold_under_either_rule() -> None:
    raw = aggregate([7, 8, 0], [30.0, 40.0, float("nan")])
    round5, _ = control_table(raw, ["age_band"], "t.csv")
    midpoint6, _ = control_table(raw, ["age_band"], "t.csv", rule="midpoint6")
    assert round5.column("bmi_mean").to_pylist()[:3] == [None, 40.0, None]
    assert midpoint6.column("patients").to_pylist()[:3] == [9, 9, 0]
    # A mean of a group of seven describes those seven people, however the count is rounded.
    assert midpoint6.column("bmi_mean").to_pylist()[:3] == [None, 40.0, None]


def test_group_columns_come_out_as_text_with_missing_and_a_blank_beside_total() -> None:
    raw = pa.table(
        {
            "sex": ["female", "male", None],
            "region": pa.array([1, None, 3], pa.int32()),
            "patients": pa.array([10, 20, 30], pa.int64()),
            "age_median": pa.array([40.0, 41.0, 42.0], pa.float32()),
        }
    )
    table, cells = control_table(raw, ["sex", "region"], "t.csv")
    assert table.schema.field("sex").type == pa.string()
    assert table.schema.field("region").type == pa.string()
    assert table.schema.field("age_median").type == pa.float64()
    assert table.column("sex").to_pylist() == ["female", "male", "missing", "Total"]
    assert table.column("region").to_pylist() == ["1", "missing", "3", ""]
    assert cells[1].dims == "sex=male; region=missing"


def test_a_table_without_groups_is_its_own_total() -> None:
    table, cells = control_table(pa.table({"patients": pa.array([42], pa.int64())}), [], "t.csv")
    assert table.to_pylist() == [{"patients": 40}]
    assert cells == [Cell("t.csv", 1, "patients", "total", 42, True)]


@pytest.mark.parametrize("rule", RULES)
def test_an_empty_table_has_a_total_of_nothing(rule: Rule) -> None:
    table, cells = control_table(aggregate([]), ["age_band"], "t.csv", rule)
    assert table.to_pylist() == [
        {"age_band": "Total", "patients": control_count(0, rule), "bmi_mean": None}
    ]
    assert cells == [Cell("t.csv", 1, "patients", "total", 0, rule == "midpoint6")]


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=12),
    st.data(),
    st.sampled_from(RULES),
)
def test_a_redacted_cell_cannot_be_recovered_from_the_total(
    patients: list[int], data: st.DataObject, rule: Rule
) -> None:
    """Whatever a redacted cell really held, the published file is the same byte for byte: the
    total (and everything else) carries no trace of it."""
    published, _ = control_table(aggregate(patients), ["age_band"], "t.csv", rule)
    altered = [
        data.draw(st.integers(min_value=0, max_value=THRESHOLD))
        if control_count(n, rule) is None
        else n
        for n in patients
    ]
    again, _ = control_table(aggregate(altered), ["age_band"], "t.csv", rule)
    assert render_csv(again) == render_csv(published)
    released = [n for n in patients if control_count(n, rule) is not None]
    assert published.column("patients").to_pylist()[-1] == control_count(sum(released), rule)


BY_AGE = ["age_band"]


@pytest.mark.parametrize(
    ("raw", "by", "problem"),
    [
        (aggregate([10]).drop_columns(["patients"]), BY_AGE, "needs the column.s. patients"),
        (aggregate([10]), ["sex"], "needs the column.s. sex"),
        (aggregate([10]), ["age_band", "age_band"], "must be distinct"),
        (aggregate([10]), ["age_band", "patients"], "must be distinct"),
        (aggregate([10]).append_column("events", pa.array([3])), BY_AGE, "'events' holds int64"),
        (
            replaced(1, "patients", pa.array([10.0]))(aggregate([10])),
            BY_AGE,
            "'patients' holds dou",
        ),
        (aggregate([10, -3]), BY_AGE, "'patients' has a negative count at row 2"),
        (
            replaced(0, "age_band", pa.array(["x", "x"]))(aggregate([10, 10])),
            BY_AGE,
            "rows 1 and 2",
        ),
    ],
)
def test_a_bad_aggregate_table_is_refused_naming_the_file_and_column(
    raw: pa.Table, by: list[str], problem: str
) -> None:
    with pytest.raises(UserError, match=problem) as refused:
        control_table(raw, by, "table_bmi.csv")
    assert str(refused.value).startswith("table_bmi.csv: ")


# --- differencing -----------------------------------------------------------------------------


def cell(file: str, raw: int, dims: str = "practice=A81001", row: int = 1, **kw: object) -> Cell:
    return Cell(
        file=file,
        row=row,
        column=str(kw.get("column", "numerator")),
        dims=dims,
        raw=raw,
        released=bool(kw.get("released", True)),
    )


@pytest.mark.parametrize("difference", range(1, THRESHOLD + 1))
def test_a_count_one_to_seven_away_from_an_earlier_one_is_refused_with_both_cells_named(
    difference: int,
) -> None:
    earlier = [cell("a.csv", 1234, row=3)]
    new = [cell("b.csv", 1234 + difference, row=5)]
    with pytest.raises(DisclosureRefused) as refused:
        check_differencing(new, earlier)
    message = str(refused.value)
    assert "b.csv row 5, numerator (practice=A81001) against a.csv row 3 (an earlier release)" in (
        message
    )
    assert "1234" not in message and str(1234 + difference) not in message
    assert "Coarsen the groups" in message and "drop one of the files" in message
    assert refused.value.pairs == ((new[0], earlier[0]),)


def test_a_rerun_of_the_same_file_with_a_few_more_patients_is_refused() -> None:
    with pytest.raises(
        DisclosureRefused, match=r"t\.csv row 4, patients \(total\) against t\.csv row 4"
    ):
        check_differencing(
            [cell("t.csv", 52, "total", row=4, column="patients")],
            [cell("t.csv", 50, "total", row=4, column="patients")],
        )


def test_two_new_files_that_difference_each_other_are_refused_once() -> None:
    new = [cell("a.csv", 30), cell("b.csv", 33)]
    with pytest.raises(DisclosureRefused) as refused:
        check_differencing(new, [])
    assert len(refused.value.pairs) == 1
    assert "(this release)" in str(refused.value)


@pytest.mark.parametrize(
    ("new", "earlier"),
    [
        ([cell("b.csv", 30)], [cell("a.csv", 30)]),  # identical counts reveal nobody
        ([cell("b.csv", 30)], [cell("a.csv", 22)]),  # 8 apart: more than a small group
        ([cell("b.csv", 30)], [cell("a.csv", 100)]),
        ([cell("b.csv", 30)], [cell("a.csv", 27, "practice=A81002")]),  # another group
        ([cell("b.csv", 30)], [cell("a.csv", 27, column="denominator")]),  # another kind of count
        ([cell("b.csv", 30)], [cell("a.csv", 5, released=False)]),  # nothing was published
        ([cell("b.csv", 5, released=False)], [cell("a.csv", 8)]),
        ([cell("a.csv", 30), cell("a.csv", 33, row=2)], []),  # same file: not alternatives
        ([cell("a.csv", 30), cell("b.csv", 30), cell("c.csv", 40)], []),
    ],
)
def test_counts_that_reveal_nobody_by_subtraction_are_allowed(
    new: list[Cell], earlier: list[Cell]
) -> None:
    check_differencing(new, earlier)


def test_the_nearest_offending_cell_is_named() -> None:
    earlier = [cell("a.csv", 24), cell("c.csv", 31, row=9), cell("d.csv", 40)]
    with pytest.raises(DisclosureRefused) as refused:
        check_differencing([cell("b.csv", 30)], earlier)
    assert refused.value.pairs == ((cell("b.csv", 30), earlier[1]),)


def test_a_long_refusal_lists_the_first_cells_and_counts_the_rest() -> None:
    earlier = [cell("a.csv", 100, f"practice={i}", row=i) for i in range(1, 31)]
    new = [cell("b.csv", 101, f"practice={i}", row=i) for i in range(1, 31)]
    with pytest.raises(DisclosureRefused) as refused:
        check_differencing(new, earlier)
    message = str(refused.value)
    assert message.startswith("release refused: 30 published count(s)")
    assert "b.csv row 20," in message and "b.csv row 21," not in message
    assert "... and 10 more" in message


# --- files ------------------------------------------------------------------------------------


def test_render_csv_writes_iso_dates_empty_nulls_and_the_same_bytes_however_chunked() -> None:
    table, _ = control_measure(measure([3, 12], [100, 13]), "m.csv")
    text = render_csv(table)
    assert text == (
        b'"measure","interval_start","interval_end","practice","numerator","denominator","ratio"\n'
        b'"asthma",2024-01-01,2024-01-31,"A81000",,100,\n'
        b'"asthma",2024-01-01,2024-01-31,"A81001",10,15,0.6666666666666666\n'
    )
    rechunked = pa.Table.from_batches(table.to_batches(max_chunksize=1))
    assert render_csv(rechunked) == text


def test_render_csv_tells_a_blank_from_a_missing_value() -> None:
    raw = pa.table({"a": ["x", "y"], "b": ["p", "q"], "patients": pa.array([10, 3], pa.int64())})
    table, _ = control_table(raw, ["a", "b"], "t.csv")
    assert render_csv(table).splitlines()[-1] == b'"Total","",10'
    assert render_csv(table).splitlines()[2] == b'"y","q",'


def test_measures_over_several_intervals_are_described_per_interval() -> None:
    raw = pa.concat_tables([measure([12], [13]), measure([12], [13])])
    raw = raw.set_column(1, "interval_start", pa.array([JAN[0], FEB[0]], pa.date32()))
    raw = raw.set_column(2, "interval_end", pa.array([JAN[1], FEB[1]], pa.date32()))
    _, cells = control_measure(raw, "m.csv")
    assert cells[2].dims == "measure=asthma; interval=2024-02-01..2024-02-29; practice=A81000"
    assert cells[3].dims == "interval=2024-02-01..2024-02-29; practice=A81000"
