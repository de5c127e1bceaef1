"""Aggregate tables, computed here from the run's dataset and controlled as they are made.

The engines compute one row per patient (`Results.dataset`); the counts and statistics of a
table are computed from it in Python, with the rules of `release.disclosure` applied to each
group as it is computed. Computing them here, not in each engine's SQL, keeps every number of a
table inside one module that can be read in one sitting, and lets the rules look at what they
need (the largest values, how many distinct values, how many people share the median) without
any of it leaving this function.

A table's rows are its groups in the order of their values (a missing value last). A group of
THRESHOLD or fewer people has no row. The last row is the total of the published rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.errors import UserError
from gpdpr.tre.query import canonical
from gpdpr.tre.query import nodes as n
from gpdpr.tre.release.disclosure import (
    BECAUSE_SMALL,
    BECAUSE_SMALL_GROUP,
    BECAUSE_TOTAL,
    MAX_CATEGORICAL_VALUES,
    MEDIAN_SHARED,
    MIN_STATISTIC_COUNT,
    NK_K,
    NK_N,
    P_PERCENT,
    PATIENTS,
    PUBLISHED,
    REDACTED,
    ROUNDED,
    SIGNIFICANT_FIGURES,
    SUPPRESSED,
    THRESHOLD,
    TOTAL,
    Cell,
    Rule,
    _because,
    _control,
    as_text,
    control_count,
    count_status,
    make_cells,
)

# Why a statistic was left empty (constants of the rules only, never a number from the data).
BECAUSE_FEW = f"fewer than {MIN_STATISTIC_COUNT} people have a value (minimum threshold)"
BECAUSE_CATEGORICAL = (
    f"the value takes {MAX_CATEGORICAL_VALUES} or fewer distinct values in the group, so the "
    "statistic would give away a count or a person's value"
)
BECAUSE_NK = (
    f"the {NK_N} largest values make up {round(NK_K * 100)}% or more of the total "
    "((n, k) dominance)"
)
BECAUSE_P = (
    f"the values other than the two largest add up to less than {round(P_PERCENT * 100)}% of "
    "the largest (p% rule)"
)
BECAUSE_MEDIAN = f"fewer than {MEDIAN_SHARED} people have the median's value"
BECAUSE_STATISTIC = f"rounded to {SIGNIFICANT_FIGURES} significant figures"


@dataclass(frozen=True)
class _Groups:
    """The groups of a dataset: each row's group, each group's values (typed, in order)."""

    of_row: np.ndarray  # int64 group number of each row
    values: list[list[Any]]  # per `by` column, the value of each group
    count: int


def control_table(
    dataset: pa.Table,
    definition: n.Definition,
    table: n.AggregateTable,
    file: str,
    rule: Rule = "round5",
) -> tuple[pa.Table, list[Cell]]:
    """The controlled table `table` of the definition, from its dataset (one row per patient of
    the population, a column per variable), and a `Cell` for every number considered: each
    group's count and statistics, published or not, and the total."""
    variables = dict(definition.variables)
    statistics = list(table.statistics)
    needed = [*table.by, *(v for v, _ in statistics)]
    missing = [name for name in dict.fromkeys(needed) if name not in dataset.column_names]
    if missing or definition.population is None:
        raise UserError(
            f"{file}: the dataset has no column(s) {', '.join(missing) or 'population'} for "
            f"table {table.name}; run the definition that defines them"
        )
    groups = _groups(dataset, list(table.by))
    counts = np.bincount(groups.of_row, minlength=groups.count).astype(np.int64)
    kept = counts > THRESHOLD  # a group this small has no row, under either rule
    rows = np.cumsum(kept)

    canon = canonical.Canon()
    population = canon.of(definition.population)
    by_series = [canon.of(variables[name]) for name in table.by]
    group_parts = [
        canonical.groups_part(by_series, [values[g] for values in groups.values])
        for g in range(groups.count)
    ]
    count_keys = [canonical.count_key(population, part) for part in group_parts]

    status, reason = count_status(counts, rule)
    status[~kept], reason[~kept] = SUPPRESSED, BECAUSE_SMALL_GROUP
    columns: list[tuple[str, list[Cell], pa.Array]] = []
    made = make_cells(file, PATIENTS, rows, kept, count_keys, counts, status, reason)
    columns.append((PATIENTS, made, _control(pa.array(counts[kept], pa.int64()), rule)))
    for variable, statistic in statistics:
        name = f"{variable}_{statistic}"
        values = dataset.column(variable).combine_chunks().cast(pa.float64())
        computed = _statistic(values, groups, statistic)
        keys = [
            canonical.statistic_key(statistic, canon.of(variables[variable]), population, part)
            for part in group_parts
        ]
        computed.status[~kept], computed.reason[~kept] = SUPPRESSED, BECAUSE_SMALL_GROUP
        made = make_cells(
            file, name, rows, kept, keys, computed.people, computed.status, computed.reason
        )
        shown = computed.rounded[kept]
        columns.append((name, made, pa.array(shown, pa.float64(), from_pandas=True)))

    # The total: the raw counts of the published rows only, controlled like any count.
    total_raw = int(counts[kept].sum())
    total = control_count(total_raw, rule)
    if total is None:
        total_status, total_reason = REDACTED, BECAUSE_SMALL
    else:
        total_status = PUBLISHED if total_raw == 0 else ROUNDED
        total_reason = BECAUSE_TOTAL if total_raw else _because(rule)
    total_cell = Cell(
        file,
        int(kept.sum()) + 1,
        PATIENTS,
        canonical.count_key(population, []),
        total_raw,
        total is not None,
        total_status,
        total_reason,
    )

    out: dict[str, pa.Array] = {}
    for index, (name, values) in enumerate(zip(table.by, groups.values, strict=True)):
        text = as_text(pa.array(values, dataset.schema.field(name).type)).filter(pa.array(kept))
        last = TOTAL if index == 0 else ""
        out[name] = pa.concat_arrays([text, pa.array([last], pa.string())])
    for name, _, shown_values in columns:
        last_value = total if name == PATIENTS else None
        out[name] = pa.concat_arrays([shown_values, pa.array([last_value], shown_values.type)])
    # Cells row by row, as a checker reads the table: each group's count, then its statistics.
    cells = [cell for row in zip(*(made for _, made, _ in columns), strict=True) for cell in row]
    return pa.table(out), [*cells, total_cell]


def _groups(dataset: pa.Table, by: list[str]) -> _Groups:
    """Number the groups of `dataset` by the values of the `by` columns, in the order of those
    values (a missing value after the others), first column first."""
    ranks: list[np.ndarray] = []
    dictionaries: list[list[Any]] = []
    for name in by:
        column = dataset.column(name).combine_chunks()
        encoded = pc.dictionary_encode(column, null_encoding="encode")
        order = pc.array_sort_indices(encoded.dictionary, null_placement="at_end").to_numpy()
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))  # dictionary entry -> its place in value order
        ranks.append(rank[encoded.indices.to_numpy(zero_copy_only=False)])
        entries = encoded.dictionary.to_pylist()
        dictionaries.append([entries[i] for i in order])
    if not by or dataset.num_rows == 0:
        size = 1 if by == [] and dataset.num_rows else 0
        return _Groups(np.zeros(dataset.num_rows, np.int64), [[] for _ in by], size)
    stacked = np.stack(ranks, axis=1)
    present, of_row = np.unique(stacked, axis=0, return_inverse=True)
    values = [[dictionaries[j][r] for r in present[:, j]] for j in range(len(by))]
    return _Groups(of_row.reshape(-1).astype(np.int64), values, len(present))


@dataclass(frozen=True)
class _Computed:
    people: np.ndarray  # people with a value, per group: the statistic's raw count
    rounded: np.ndarray  # the published statistic (nan where it is not published)
    status: np.ndarray  # ROUNDED where every rule allows it, else REDACTED
    reason: np.ndarray


def _statistic(values: pa.Array, groups: _Groups, statistic: str) -> _Computed:
    """One statistic per group, with the rules of `disclosure` applied; vectorised over groups
    (a table by a near-unique value has as many groups as people). A value that is missing (or
    not a finite number) is left out, as SQL's aggregates leave out nulls."""
    size = groups.count
    value = values.to_numpy(zero_copy_only=False).astype(np.float64)  # null -> nan
    valid = np.isfinite(value)
    group, value = groups.of_row[valid], value[valid]
    people = np.bincount(group, minlength=size).astype(np.int64)
    starts = np.cumsum(people) - people
    order = np.lexsort((value, group))  # by group, then value
    ordered, in_group = value[order], group[order]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(group, weights=value, minlength=size) / people
        if statistic == "mean":
            result = mean
        elif statistic == "sd":
            squares = np.bincount(group, weights=(value - mean[group]) ** 2, minlength=size)
            result = np.sqrt(squares / (people - 1))
        elif statistic == "median":
            result = _medians(ordered, starts, people)
        else:
            raise UserError(f"unknown statistic {statistic!r}: mean, median or sd")
    rounded = _round(result)

    # Distinct values per group: where the value changes within a group's sorted run.
    first = np.ones(len(ordered), bool)
    first[1:] = (ordered[1:] != ordered[:-1]) | (in_group[1:] != in_group[:-1])
    distinct = np.bincount(in_group[first], minlength=size)
    # Dominance, on absolute values (ACRO's NKCheck and PPercentCheck).
    by_size = np.abs(value)[np.lexsort((np.abs(value), group))]
    total = np.bincount(group, weights=np.abs(value), minlength=size)
    largest, second = (_from_top(by_size, starts, people, k) for k in (1, 2))
    top = sum((_from_top(by_size, starts, people, k) for k in range(1, NK_N + 1)), np.zeros(size))
    dominated = (total > 0) & (top >= NK_K * total)
    p_fails = (total - largest - second) < P_PERCENT * largest
    shared = np.ones(size, bool)
    if statistic == "median":  # how many people have the median's published value
        same = _round(value) == rounded[group]
        shared = np.bincount(group[same], minlength=size) >= MEDIAN_SHARED

    status = np.full(size, ROUNDED, dtype=object)
    reason = np.full(size, BECAUSE_STATISTIC, dtype=object)
    # Applied last to first, so that the reason given is the first rule that fails.
    for failed, because in (
        (~shared, BECAUSE_MEDIAN),
        (dominated, BECAUSE_NK),
        (p_fails, BECAUSE_P),
        (distinct <= MAX_CATEGORICAL_VALUES, BECAUSE_CATEGORICAL),
        (people < MIN_STATISTIC_COUNT, BECAUSE_FEW),
    ):
        status[failed], reason[failed] = REDACTED, because
    published = status == ROUNDED
    shown = np.full(size, np.nan)
    shown[published] = [float(f"{v:.{SIGNIFICANT_FIGURES}g}") for v in rounded[published]]
    return _Computed(people, shown, status, reason)


def _medians(ordered: np.ndarray, starts: np.ndarray, people: np.ndarray) -> np.ndarray:
    """The median of each group's sorted run (nan for a group with no value)."""
    out = np.full(len(people), np.nan)
    has = people > 0
    low = starts[has] + (people[has] - 1) // 2
    high = starts[has] + people[has] // 2
    out[has] = (ordered[low] + ordered[high]) / 2
    return out


def _from_top(ordered: np.ndarray, starts: np.ndarray, people: np.ndarray, k: int) -> np.ndarray:
    """The k-th largest of each group's ascending run (0 where the group has fewer values)."""
    out = np.zeros(len(people))
    has = people >= k
    out[has] = ordered[starts[has] + people[has] - k]
    return out


def _round(values: np.ndarray) -> np.ndarray:
    """`values` rounded to SIGNIFICANT_FIGURES significant figures (nan stays nan, 0 stays 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
        digits = SIGNIFICANT_FIGURES - 1 - np.where(np.isfinite(magnitude), magnitude, 0)
        scale = 10.0 ** np.clip(digits, -300, 300)  # a subnormal value rounds to 0
        rounded: np.ndarray = np.round(values * scale) / scale
    return rounded
