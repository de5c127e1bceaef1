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
    BECAUSE_ZERO,
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
    as_text,
    control_count,
    control_counts,
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
    around = canon.near(canon.factors(definition.population))
    typed = [
        pa.array(values, dataset.schema.field(name).type)
        for name, values in zip(table.by, groups.values, strict=True)
    ]
    grouping = canonical.Grouping([canon.of(variables[name]) for name in table.by], typed)
    count_keys = grouping.keys([canonical.count(population)] * groups.count)

    status, reason = count_status(counts, rule)
    status[~kept], reason[~kept] = SUPPRESSED, BECAUSE_SMALL_GROUP
    columns: list[tuple[str, list[Cell], pa.Array]] = []
    near_keys = [grouping.keys([canonical.count(p)] * groups.count) for p in around]
    near = [tuple(k[i] for k in near_keys) for i in range(groups.count)]
    made = make_cells(file, PATIENTS, rows, kept, count_keys, counts, status, reason, near)
    columns.append((PATIENTS, made, control_counts(pa.array(counts[kept], pa.int64()), rule)))
    computed = {
        variable: _Values(dataset.column(variable), groups)
        for variable in dict.fromkeys(v for v, _ in statistics)
    }
    for variable, statistic in statistics:
        name = f"{variable}_{statistic}"
        result = computed[variable].statistic(statistic)
        what = canonical.statistic(statistic, canon.of(variables[variable]), population)
        keys = grouping.keys([what] * groups.count)
        result.status[~kept], result.reason[~kept] = SUPPRESSED, BECAUSE_SMALL_GROUP
        made = make_cells(file, name, rows, kept, keys, result.people, result.status, result.reason)
        shown = result.rounded[kept]
        columns.append((name, made, pa.array(shown, pa.float64(), from_pandas=True)))

    # The total: the raw counts of the published rows only, controlled like any count.
    total_raw = int(counts[kept].sum())
    total = control_count(total_raw, rule)
    if total is None:
        total_status, total_reason = REDACTED, BECAUSE_SMALL
    elif total_raw == 0:
        total_status, total_reason = PUBLISHED, BECAUSE_ZERO  # midpoint6's zero
    else:
        total_status, total_reason = ROUNDED, BECAUSE_TOTAL
    total_cell = Cell(
        file,
        int(kept.sum()) + 1,
        PATIENTS,
        canonical.ungrouped_key(canonical.count(population)),
        total_raw,
        total is not None,
        total_status,
        total_reason,
        tuple(canonical.ungrouped_key(canonical.count(p)) for p in around),
    )

    out: dict[str, pa.Array] = {}
    for index, (name, values) in enumerate(zip(table.by, typed, strict=True)):
        text = as_text(values).filter(pa.array(kept))
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
    sizes = [len(d) for d in dictionaries]
    if np.prod(np.array(sizes, dtype=np.float64)) < 2**62:
        # One whole number per combination of ranks, first column most significant (made in
        # place: at 10 million people each new array of them cost a tenth of a second).
        code = ranks[0].astype(np.int64)
        for rank, size in zip(ranks[1:], sizes[1:], strict=True):
            code *= size
            code += rank
        present_codes, of_row = _numbered(code, int(np.prod(sizes)))
        present = np.empty((len(present_codes), len(by)), np.int64)
        for j in range(len(by) - 1, -1, -1):
            present[:, j] = present_codes % sizes[j]
            present_codes = present_codes // sizes[j]
    else:  # too many combinations for one number: compare them as rows
        present, of_row = np.unique(np.stack(ranks, axis=1), axis=0, return_inverse=True)
    values = [[dictionaries[j][r] for r in present[:, j]] for j in range(len(by))]
    return _Groups(of_row.reshape(-1).astype(np.int64, copy=False), values, len(present))


# Combinations few enough to count in a table of them all (32 MB of counts at most).
COUNTED = 1 << 22


def _numbered(code: np.ndarray, combinations: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of `code` (each below `combinations`) in ascending order, and each
    row's place among them: as `np.unique(code, return_inverse=True)`, but counted rather than
    sorted when there are few enough combinations (at 10 million people, a sort of every row
    was most of release control's time)."""
    if combinations > COUNTED:
        present, of_row = np.unique(code, return_inverse=True)
        return present, of_row.reshape(-1)
    present = np.flatnonzero(np.bincount(code, minlength=combinations))
    place = np.zeros(combinations, np.int64)
    place[present] = np.arange(len(present))
    return present, place[code]


@dataclass(frozen=True)
class _Computed:
    people: np.ndarray  # people with a value, per group: the statistic's raw count
    rounded: np.ndarray  # the published statistic (nan where it is not published)
    status: np.ndarray  # ROUNDED where every rule allows it, else REDACTED
    reason: np.ndarray


class _Values:
    """One variable's values by group, sorted once for every statistic of it, with what the
    rules need to know of each group. A value that is missing (or not a finite number) is left
    out, as SQL's aggregates leave out nulls. Vectorised over groups: a table by a near-unique
    value has as many groups as people."""

    def __init__(self, column: pa.ChunkedArray, groups: _Groups) -> None:
        size = groups.count
        value = column.combine_chunks().cast(pa.float64()).to_numpy(zero_copy_only=False)
        valid = np.isfinite(value)  # null is nan here
        group, value = groups.of_row[valid], value[valid]
        self.size, self.group, self.value = size, group, value
        self.people = np.bincount(group, minlength=size).astype(np.int64)
        self.starts = np.cumsum(self.people) - self.people
        order = _by_group_then_value(group, value, size)
        self.ordered, in_group = value[order], group[order]
        # Distinct values per group: where the value changes within a group's sorted run.
        first = np.ones(len(self.ordered), bool)
        first[1:] = (self.ordered[1:] != self.ordered[:-1]) | (in_group[1:] != in_group[:-1])
        self.distinct = np.bincount(in_group[first], minlength=size)
        # Dominance, on absolute values (ACRO's NKCheck and PPercentCheck). The largest
        # absolute values of a sorted run are at its two ends.
        largest = _largest_absolute(self.ordered, self.starts, self.people, max(NK_N, 2))
        total = np.bincount(group, weights=np.abs(value), minlength=size)
        self.dominated = (total > 0) & (largest[:, :NK_N].sum(axis=1) >= NK_K * total)
        rest = total - largest[:, 0] - largest[:, 1]
        self.p_fails = rest < P_PERCENT * largest[:, 0]

    def statistic(self, statistic: str) -> _Computed:
        """One statistic per group, with every rule of `disclosure` applied."""
        size, people, group, value = self.size, self.people, self.group, self.value
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.bincount(group, weights=value, minlength=size) / people
            if statistic == "mean":
                result = mean
            elif statistic == "sd":
                squares = np.bincount(group, weights=(value - mean[group]) ** 2, minlength=size)
                result = np.sqrt(squares / (people - 1))
            elif statistic == "median":
                result = _medians(self.ordered, self.starts, people)
            else:
                raise UserError(f"unknown statistic {statistic!r}: mean, median or sd")
        rounded = _round(result)
        shared = np.ones(size, bool)
        if statistic == "median":  # how many people have the median's published value
            same = _round(value) == rounded[group]
            shared = np.bincount(group[same], minlength=size) >= MEDIAN_SHARED

        status = np.full(size, ROUNDED, dtype=object)
        reason = np.full(size, BECAUSE_STATISTIC, dtype=object)
        # Applied last to first, so that the reason given is the first rule that fails.
        for failed, because in (
            (~shared, BECAUSE_MEDIAN),
            (self.dominated, BECAUSE_NK),
            (self.p_fails, BECAUSE_P),
            (self.distinct <= MAX_CATEGORICAL_VALUES, BECAUSE_CATEGORICAL),
            (people < MIN_STATISTIC_COUNT, BECAUSE_FEW),
        ):
            status[failed], reason[failed] = REDACTED, because
        published = status == ROUNDED
        shown = np.full(size, np.nan)
        shown[published] = [float(f"{v:.{SIGNIFICANT_FIGURES}g}") for v in rounded[published]]
        return _Computed(people, shown, status, reason)


def _by_group_then_value(group: np.ndarray, value: np.ndarray, groups: int) -> np.ndarray:
    """The rows in order of group, then value (equal values in either order: nothing told
    apart by it differs), as `np.lexsort((value, group))` orders them but in two cheaper
    sorts when there are few groups: by value, then by group keeping that order, which NumPy
    does by counting (a radix sort) for whole numbers of 16 bits. At 10 million people the
    lexsort was half of release control's time."""
    if groups > 1 << 16:
        return np.lexsort((value, group))
    by_value = np.argsort(value)  # equal values need no order of their own: not stable
    return by_value[np.argsort(group[by_value].astype(np.uint16), kind="stable")]


def _largest_absolute(
    ordered: np.ndarray, starts: np.ndarray, people: np.ndarray, k: int
) -> np.ndarray:
    """The k largest absolute values of each group's ascending run, largest first (0 where a
    group has fewer): they are among its first k and its last k values."""
    offsets = np.concatenate((np.arange(k), -np.arange(1, k + 1)))  # from the start, the end
    position = np.where(
        offsets >= 0, starts[:, None] + offsets, starts[:, None] + people[:, None] + offsets
    )
    # A position outside the group, or one the other end has already taken, counts as 0.
    inside = (position >= starts[:, None]) & (position < (starts + people)[:, None])
    from_end = offsets < 0
    taken_twice = from_end & (position < (starts[:, None] + np.minimum(people, k)[:, None]))
    usable = inside & ~taken_twice
    candidates = np.where(
        usable,
        np.abs(ordered[np.clip(position, 0, max(len(ordered) - 1, 0))]) if len(ordered) else 0.0,
        0.0,
    )
    return -np.sort(-candidates, axis=1)[:, :k]


def _medians(ordered: np.ndarray, starts: np.ndarray, people: np.ndarray) -> np.ndarray:
    """The median of each group's sorted run (nan for a group with no value)."""
    out = np.full(len(people), np.nan)
    has = people > 0
    low = starts[has] + (people[has] - 1) // 2
    high = starts[has] + people[has] // 2
    out[has] = (ordered[low] + ordered[high]) / 2
    return out


def _round(values: np.ndarray) -> np.ndarray:
    """`values` rounded to SIGNIFICANT_FIGURES significant figures (nan stays nan, 0 stays 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
        digits = SIGNIFICANT_FIGURES - 1 - np.where(np.isfinite(magnitude), magnitude, 0)
        scale = 10.0 ** np.clip(digits, -300, 300)  # a subnormal value rounds to 0
        rounded: np.ndarray = np.round(values * scale) / scale
    return rounded
