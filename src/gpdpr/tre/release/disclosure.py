"""Automatic statistical disclosure control: what a result must look like before it may leave.

Nothing a researcher sees has been through less than this. The rules, applied to every output:

- **round5** (the default): every count of 7 or fewer (`THRESHOLD`, zero included) is redacted
  (published as empty), then every remaining count is rounded to the nearest 5 (`ROUND_TO`). Zero is
  redacted too because "nobody in this group" is itself a fact about people (no one at this
  practice has the condition) and because publishing zeros but not 1..7 would mark the small cells.
- **midpoint6** (an option): OpenSAFELY's midpoint-6 rounding. 0 stays 0 and any n >= 1 becomes the
  midpoint of its block of six, 6*ceil(n/6) - 3 (1..6 -> 3, 7..12 -> 9, 13..18 -> 15, ...). There is
  no separate redaction: a published 3 already says only "somewhere from 1 to 6", and because every
  count in a block maps to the same number, differences between published counts say nothing finer.
- **Totals** are recomputed after redaction: a total is the sum of the *raw* counts of the cells
  that were not redacted, then controlled by the same rule. It never includes a redacted cell, so
  "total minus the published cells" cannot give one back.
- **Rates** are derived from the controlled counts, never from the raw ones (a raw rate and a
  rounded denominator would give the raw numerator back).
- **Statistics** (means, medians, ...) go out only next to their controlled count, and are
  suppressed whenever that count is 7 or fewer, under either rule: a median of a group of one is
  that person's value, however the count beside it is rounded.
- **Differencing**: two published counts of the same kind for the same group, from different files
  or from an earlier release of the project, whose true values differ by 1..7 reveal that many
  people by subtraction; such a release is refused with the cells named.

Everything here is a pure function over pyarrow tables: the raw counts come in, the controlled
table and a description of each published number (`Cell`) go out. Raw counts stay inside the
environment: no message here ever contains one.
"""

from __future__ import annotations

import bisect
import io
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gpdpr.errors import UserError

Rule = Literal["round5", "midpoint6"]
RULES: tuple[str, ...] = ("round5", "midpoint6")
THRESHOLD = 7
ROUND_TO = 5
BLOCK = 6  # midpoint6: counts are published as the middle of their block of six

MEASURE_KEYS = ("measure", "interval_start", "interval_end")
MEASURE_COUNTS = ("numerator", "denominator")
RATIO = "ratio"
PATIENTS = "patients"
TOTAL = "Total"  # the label of the total row, in the first group column
TOTAL_DIMS = "total"  # the group a total describes, as the differencing check sees it
MISSING = "missing"  # how a null group value is shown (and described)
SHOWN = 20  # offending cells listed in a refusal; the rest are counted

_NULL_COUNT = pa.scalar(None, pa.int64())
_NULL_FLOAT = pa.scalar(None, pa.float64())


class DisclosureRefused(UserError):
    """A release that could reveal a small group of people, refused before anything leaves.

    `pairs` holds each offending cell with the cell it could be subtracted from, for a caller that
    wants to show them in its own way; the message names them without their raw counts."""

    def __init__(self, message: str, pairs: Sequence[tuple[Cell, Cell]]) -> None:
        super().__init__(message)
        self.pairs = tuple(pairs)


@dataclass(frozen=True, slots=True)
class Cell:
    """One published number, as the differencing check sees it (raw stays inside the
    environment)."""

    file: str  # output file name, e.g. "measure_asthma_rate.csv"
    row: int  # 1-based data row in that file
    column: str  # "numerator", "denominator" or "patients"
    dims: str  # canonical description of the group, e.g. "interval=2024-01-01..2024-01-31; ..."
    raw: int  # the true count
    released: bool  # False when redacted


# --- single counts and arrays of counts -------------------------------------------------------


def control_count(n: int | None, rule: Rule = "round5") -> int | None:
    """The published form of one raw count under `rule`: None when redacted (or when there is no
    count at all). Matches `control_counts` exactly; this is the one to use for a single total."""
    _check_rule(rule)
    if n is None:
        return None
    if isinstance(n, bool):  # True is an int to Python, but never a count of people
        raise UserError(f"a count must be a whole number, not {n!r}")
    try:
        n = operator.index(n)  # numpy integers too, but not floats: 7.5 people is a bug upstream
    except TypeError:
        raise UserError(f"a count must be a whole number, not {n!r}") from None
    if n < 0:
        raise UserError("a count cannot be negative; check the query that produced it")
    if rule == "midpoint6":
        return 0 if n == 0 else BLOCK * -(-n // BLOCK) - BLOCK // 2
    if n <= THRESHOLD:
        return None
    return (n + ROUND_TO // 2) // ROUND_TO * ROUND_TO  # no ties: ROUND_TO is odd


def control_counts(values: pa.Array | pa.ChunkedArray, rule: Rule = "round5") -> pa.Array:
    """`control_count` over a whole column at once (int64 out, null where redacted). Nulls in
    stay null: there is nothing to publish for them."""
    _check_rule(rule)
    return _control(_counts(values, "values", "the counts", allow_null=True), rule)


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise UserError(
            f"unknown disclosure rule {rule!r}: use one of {', '.join(RULES)} "
            "(round5 is the default)"
        )


def _control(counts: pa.Array, rule: str) -> pa.Array:
    """The vectorised rule, on int64 counts already checked to be 0 or more."""
    if rule == "midpoint6":
        blocks = pc.divide(pc.add(counts, BLOCK - 1), BLOCK)  # integer division: ceil(n / 6)
        midpoints = pc.subtract(pc.multiply(blocks, BLOCK), BLOCK // 2)
        result: pa.Array = pc.if_else(pc.equal(counts, 0), counts, midpoints)
        return result
    rounded = pc.multiply(pc.divide(pc.add(counts, ROUND_TO // 2), ROUND_TO), ROUND_TO)
    result = pc.if_else(pc.less_equal(counts, THRESHOLD), _NULL_COUNT, rounded)
    return result


def _counts(
    values: pa.Array | pa.ChunkedArray, column: str, where: str, allow_null: bool
) -> pa.Array:
    """Raw counts as one int64 array, refusing what cannot be a count of people."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_integer(values.type):
        raise UserError(
            f"{where}: column '{column}' holds {values.type} values, not whole-number counts; "
            "counts must be an integer column (cast it, or fix the query that produced it)"
        )
    counts: pa.Array = values.cast(pa.int64())
    if not allow_null and counts.null_count:
        row = _first_row(pc.is_null(counts))
        raise UserError(
            f"{where}: column '{column}' has no value at row {row}; every group needs a count "
            "(use 0 for nobody)"
        )
    if len(counts) and (pc.min(counts).as_py() or 0) < 0:
        row = _first_row(pc.fill_null(pc.less(counts, 0), False))
        raise UserError(
            f"{where}: column '{column}' has a negative count at row {row}; counts of people "
            "cannot be below 0, so check the query that produced it"
        )
    return counts


def _first_row(mask: pa.Array) -> int:
    """The 1-based row of the first true value in `mask`."""
    return int(pc.index(mask, True).as_py()) + 1


# --- measures ---------------------------------------------------------------------------------


def control_measure(raw: pa.Table, file: str, rule: Rule = "round5") -> tuple[pa.Table, list[Cell]]:
    """Control a measure table: `measure` (string), `interval_start` and `interval_end` (dates),
    zero or more group columns (any type), `numerator` and `denominator` (integer counts).

    Returns the same columns in the same order with both counts controlled, plus `ratio` (float64)
    derived from the controlled counts, and one `Cell` per numerator and per denominator.

    A denominator's dims are the interval and the group values, without the measure name: two
    measures' denominators over the same groups are usually nested populations (registered
    patients, and registered adults), the classic subtraction. A numerator's dims also name its
    measure, so that it is compared with releases of the same measure (a re-run with a changed
    definition) but not with every unrelated measure over the same practices and months, where
    counts 1 to 7 apart are chance, not disclosure."""
    _check_rule(rule)
    _check_measure_shape(raw, file)
    numerator = _counts(raw.column("numerator"), "numerator", file, allow_null=False)
    denominator = _counts(raw.column("denominator"), "denominator", file, allow_null=False)
    groups = [n for n in raw.column_names if n not in (*MEASURE_KEYS, *MEASURE_COUNTS)]
    dims = _measure_dims(raw, groups)
    measures = [str(m) for m in raw.column("measure").to_pylist()]
    _refuse_repeats(file, [f"measure '{m}', {d}" for m, d in zip(measures, dims, strict=True)])

    controlled_numerator = _control(numerator, rule)
    controlled_denominator = _control(denominator, rule)
    table = raw.set_column(raw.column_names.index("numerator"), "numerator", controlled_numerator)
    table = table.set_column(
        table.column_names.index("denominator"), "denominator", controlled_denominator
    )
    table = table.append_column(RATIO, _ratio(controlled_numerator, controlled_denominator))

    named = [f"measure={m}; {d}" for m, d in zip(measures, dims, strict=True)]
    numerators = _cells(file, "numerator", named, numerator, controlled_numerator)
    denominators = _cells(file, "denominator", dims, denominator, controlled_denominator)
    cells = [cell for pair in zip(numerators, denominators, strict=True) for cell in pair]
    return table, cells


def _check_measure_shape(raw: pa.Table, file: str) -> None:
    """Refuse a table that is not a raw measure, before any number in it is looked at."""
    missing = [n for n in (*MEASURE_KEYS, *MEASURE_COUNTS) if n not in raw.column_names]
    if missing:
        raise UserError(
            f"{file}: a measure table needs the column(s) {', '.join(missing)}; it has "
            f"{', '.join(raw.column_names) or 'none'}"
        )
    if RATIO in raw.column_names:
        # It would be treated as a group column and published as it is: a ratio of raw counts.
        raise UserError(
            f"{file}: the raw measure table already has a '{RATIO}' column; drop it, the ratio is "
            "derived here from the controlled counts"
        )
    _refuse_repeated_names(raw.column_names, file)
    kind = raw.schema.field("measure").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UserError(f"{file}: column 'measure' must hold measure names (strings), not {kind}")
    if raw.column("measure").null_count:
        row = _first_row(pc.is_null(raw.column("measure").combine_chunks()))
        raise UserError(f"{file}: column 'measure' has no measure name at row {row}")
    for name in ("interval_start", "interval_end"):
        if not pa.types.is_date(raw.schema.field(name).type):
            raise UserError(
                f"{file}: column '{name}' holds {raw.schema.field(name).type} values, not dates"
            )
        if raw.column(name).null_count:
            row = _first_row(pc.is_null(raw.column(name).combine_chunks()))
            raise UserError(f"{file}: column '{name}' has no date at row {row}")


def _measure_dims(raw: pa.Table, groups: list[str]) -> list[str]:
    """`interval=START..END; group=value; ...` for each row, built column-wise (a five-year
    monthly measure by practice has hundreds of thousands of rows)."""
    start = pc.cast(raw.column("interval_start"), pa.string())
    end = pc.cast(raw.column("interval_end"), pa.string())
    interval = pc.binary_join_element_wise(pa.scalar("interval="), start, pa.scalar(".."), end, "")
    parts = [interval] + [_labelled(name, _as_text(raw.column(name))) for name in groups]
    joined = pc.binary_join_element_wise(*parts, "; ") if len(parts) > 1 else parts[0]
    return [str(d) for d in joined.to_pylist()]


def _ratio(numerator: pa.Array, denominator: pa.Array) -> pa.Array:
    """Controlled numerator over controlled denominator; null when either was redacted or the
    denominator is 0 (there is no rate of nobody)."""
    ratio = pc.divide(numerator.cast(pa.float64()), denominator.cast(pa.float64()))
    result: pa.Array = pc.if_else(pc.equal(denominator, 0), _NULL_FLOAT, ratio)
    return result


# --- aggregate tables -------------------------------------------------------------------------


def control_table(
    raw: pa.Table, by: list[str], file: str, rule: Rule = "round5"
) -> tuple[pa.Table, list[Cell]]:
    """Control an aggregate table: the `by` group columns, a `patients` count, and statistic
    columns (floats, e.g. `age_mean`, `bmi_median`, `bmi_sd`) describing the same groups.

    The output has the group columns as strings (null shown as "missing"), `patients` controlled,
    the statistics suppressed where the group has 7 or fewer patients, and a last "Total" row whose
    count is the controlled sum of the raw counts of the rows that were not redacted (its statistics
    are empty: they cannot be recomputed from the released rows). With no `by` columns the rows are
    themselves totals, so no total row is added.

    Cells: one per row's `patients` (dims from the group values), and one for the total
    (dims "total", so totals of tables over the same population are compared)."""
    _check_rule(rule)
    statistics = _check_table_shape(raw, by, file)
    patients = _counts(raw.column(PATIENTS), PATIENTS, file, allow_null=False)
    groups = [_as_text(raw.column(name)) for name in by]
    dims = _table_dims(by, groups, raw.num_rows)
    _refuse_repeats(file, dims)

    controlled = _control(patients, rule)
    # A statistic describes individuals when its group is small, whatever the count's rule.
    small = pc.less_equal(patients, THRESHOLD)
    columns: dict[str, pa.Array] = {name: group for name, group in zip(by, groups, strict=True)}
    columns[PATIENTS] = controlled
    for name in statistics:
        values = raw.column(name).combine_chunks().cast(pa.float64())
        columns[name] = pc.if_else(small, _NULL_FLOAT, values)
    cells = _cells(file, PATIENTS, dims, patients, controlled)
    if not by:
        return pa.table(columns), cells

    total_raw = int(pc.sum(pc.if_else(pc.is_valid(controlled), patients, 0)).as_py() or 0)
    total = control_count(total_raw, rule)
    last = {name: "" for name in by} | {by[0]: TOTAL, PATIENTS: total}
    table = pa.table(
        {
            name: pa.concat_arrays([a, pa.array([last.get(name)], a.type)])
            for name, a in columns.items()
        }
    )
    cells.append(Cell(file, raw.num_rows + 1, PATIENTS, TOTAL_DIMS, total_raw, total is not None))
    return table, cells


def _check_table_shape(raw: pa.Table, by: list[str], file: str) -> list[str]:
    """Refuse a table that is not a raw aggregate; return its statistic columns."""
    _refuse_repeated_names(raw.column_names, file)
    if PATIENTS in by or len(set(by)) != len(by):
        raise UserError(
            f"{file}: the group columns ({', '.join(by)}) must be distinct and cannot include "
            f"'{PATIENTS}', which is the count"
        )
    missing = [n for n in (*by, PATIENTS) if n not in raw.column_names]
    if missing:
        raise UserError(
            f"{file}: an aggregate table needs the column(s) {', '.join(missing)}; it has "
            f"{', '.join(raw.column_names) or 'none'}"
        )
    statistics = [n for n in raw.column_names if n not in by and n != PATIENTS]
    for name in statistics:
        if not pa.types.is_floating(raw.schema.field(name).type):
            # An integer here is most likely another count, which would leave unrounded.
            raise UserError(
                f"{file}: column '{name}' holds {raw.schema.field(name).type} values; besides the "
                f"group columns and '{PATIENTS}', an aggregate table may only hold statistics as "
                "floats (mean, median, sd): add it to the groups, make a count its own table, "
                "or drop it"
            )
    return statistics


def _table_dims(by: list[str], groups: list[pa.Array], rows: int) -> list[str]:
    """`group=value; ...` for each row; "total" when there are no groups (each row is the total)."""
    if not by:
        return [TOTAL_DIMS] * rows
    parts = [_labelled(name, values) for name, values in zip(by, groups, strict=True)]
    joined = pc.binary_join_element_wise(*parts, "; ") if len(parts) > 1 else parts[0]
    return [str(d) for d in joined.to_pylist()]


# --- shared helpers ---------------------------------------------------------------------------


def _as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Group values as strings, null shown as "missing": how they are published and described.
    Dates come out as ISO dates; types arrow cannot cast fall back to Python's str()."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    try:
        text = pc.cast(values, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        text = pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())
    result: pa.Array = pc.fill_null(text, MISSING)
    return result


def _labelled(name: str, text: pa.Array) -> pa.Array:
    result: pa.Array = pc.binary_join_element_wise(pa.scalar(f"{name}="), text, "")
    return result


def _refuse_repeats(file: str, keys: list[str]) -> None:
    """Each group may appear once in a file: a repeat is a bug upstream, and two published counts
    for one group would confuse both readers and the differencing check."""
    if len(set(keys)) == len(keys):  # the usual answer, found without a Python-level loop
        return
    seen: dict[str, int] = {}
    for row, key in enumerate(keys, start=1):
        first = seen.setdefault(key, row)
        if first != row:
            raise UserError(
                f"{file}: rows {first} and {row} are the same group ({key}); each group must "
                "appear once, so check the grouping that produced the table"
            )


def _refuse_repeated_names(names: list[str], file: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(
            f"{file}: column(s) {', '.join(repeated)} appear more than once; rename them"
        )


def _cells(
    file: str, column: str, dims: list[str], raw: pa.Array, controlled: pa.Array
) -> list[Cell]:
    """One `Cell` per row. A five-year monthly measure by practice has hundreds of thousands of
    rows, and a frozen dataclass's own __init__ (one object.__setattr__ per field) would take
    most of the time spent here, so the cells are made empty and filled a field at a time through
    the slot descriptors, each in one C-level pass."""
    rows = len(dims)
    cells: list[Cell] = list(map(object.__new__, repeat(Cell, rows)))
    fields = {
        "file": repeat(file, rows),
        "row": range(1, rows + 1),
        "column": repeat(column, rows),
        "dims": dims,
        "raw": raw.to_pylist(),
        "released": pc.is_valid(controlled).to_pylist(),
    }
    for name, values in fields.items():
        deque(map(getattr(Cell, name).__set__, cells, values), maxlen=0)
    return cells


# --- differencing -----------------------------------------------------------------------------


def check_differencing(new: Sequence[Cell], earlier: Sequence[Cell]) -> None:
    """Refuse a release if one of its published counts, subtracted from another published count of
    the same kind for the same group, would reveal 1..7 people.

    New cells are compared with every earlier cell (an earlier release of the same file counts:
    re-running with a few more patients is the classic attack) and with new cells from other files.
    Redacted cells are never compared: nothing was published for them. Each offending new cell is
    named once, with the nearest cell it could be subtracted from. Cells are indexed by
    (dims, column), and a group with many cells is searched by bisection, so the work grows with
    the number of cells, not with the number of pairs."""
    found = _offending_pairs(new, earlier)
    if found:
        pairs = [(cell, other) for cell, other, _ in found]
        raise DisclosureRefused(_refusal(found), pairs)


Key = tuple[str, str]  # (dims, column): the cells that describe the same count of the same group
_key = operator.attrgetter("dims", "column")
_SCAN = 16  # groups up to this size are scanned; larger ones are sorted once and bisected


def _offending_pairs(new: Sequence[Cell], earlier: Sequence[Cell]) -> list[tuple[Cell, Cell, bool]]:
    """Each offending new cell with its nearest partner, and whether that partner was released
    earlier (True) or comes with this release (False)."""
    before = _released_by_key(earlier)
    now = _released_by_key(new)
    ordered: dict[tuple[str, str, str], _Sorted] = {}  # large groups, sorted once
    pairs: list[tuple[Cell, Cell, bool]] = []
    named: set[tuple[int, int]] = set()  # new-with-new pairs already reported, either way round
    for key, alongside in now.items():
        earlier_alike = before.get(key)
        if earlier_alike is None and len(alongside) == 1:
            continue  # the common case, kept cheap: nothing else describes this count
        for cell in alongside:
            if earlier_alike is not None:
                if len(earlier_alike) == 1:  # a re-release: one earlier cell, compared inline
                    other = earlier_alike[0]
                    partner = other if 0 < abs(other.raw - cell.raw) <= THRESHOLD else None
                else:
                    partner = _nearest(earlier_alike, cell, False, ordered, ("earlier", *key))
                if partner is not None:
                    pairs.append((cell, partner, True))
                    continue
            if len(alongside) == 1:
                continue
            partner = _nearest(alongside, cell, True, ordered, ("new", *key))
            if partner is not None and (id(partner), id(cell)) not in named:
                named.add((id(cell), id(partner)))
                pairs.append((cell, partner, False))
    return pairs


def _released_by_key(cells: Sequence[Cell]) -> dict[Key, list[Cell]]:
    """Released cells by (dims, column), in order of first appearance; redacted ones published
    nothing to subtract."""
    grouped: dict[Key, list[Cell]] = {}
    for key, cell in zip(map(_key, cells), cells, strict=True):
        if cell.released:
            members = grouped.get(key)
            if members is None:
                grouped[key] = [cell]
            else:
                members.append(cell)
    return grouped


@dataclass(frozen=True, slots=True)
class _Sorted:
    """A large group's cells sorted by raw count (then file and row, for a deterministic choice)."""

    raws: list[int]
    cells: list[Cell]


def _nearest(
    members: list[Cell],
    cell: Cell,
    other_file_only: bool,
    ordered: dict[tuple[str, str, str], _Sorted],
    name: tuple[str, str, str],
) -> Cell | None:
    """The member whose raw count differs from `cell`'s by the least amount within 1..THRESHOLD
    (the lower one on a tie), or None. Equal counts reveal nobody, so they are skipped; so is
    `cell`'s own file when comparing within a release (a file's cells are not alternatives to
    each other)."""
    if len(members) <= _SCAN:
        near = [
            m
            for m in members
            if 0 < abs(m.raw - cell.raw) <= THRESHOLD
            and not (other_file_only and m.file == cell.file)
        ]
        return min(near, key=lambda m: (abs(m.raw - cell.raw), m.raw, m.file, m.row), default=None)
    group = ordered.get(name)
    if group is None:
        members = sorted(members, key=lambda m: (m.raw, m.file, m.row))
        group = ordered[name] = _Sorted([m.raw for m in members], members)
    return _nearest_sorted(group, cell, other_file_only)


def _nearest_sorted(group: _Sorted, cell: Cell, other_file_only: bool) -> Cell | None:
    """`_nearest` by bisection: walk out from `cell`'s count on each side, past its own file."""
    best: Cell | None = None
    below = bisect.bisect_left(group.raws, cell.raw) - 1
    above = bisect.bisect_right(group.raws, cell.raw)
    for start, step in ((below, -1), (above, 1)):
        i = start
        while 0 <= i < len(group.raws) and abs(group.raws[i] - cell.raw) <= THRESHOLD:
            candidate = group.cells[i]
            if not other_file_only or candidate.file != cell.file:
                if best is None or abs(candidate.raw - cell.raw) < abs(best.raw - cell.raw):
                    best = candidate
                break
            i += step
    return best


def _refusal(pairs: Sequence[tuple[Cell, Cell, bool]]) -> str:
    """What was refused, where, and what to do, naming cells but never their raw counts."""
    lines = [
        f"release refused: {len(pairs)} published count(s) could be subtracted from another "
        "published count for the same group to reveal 1 to 7 people:"
    ]
    for cell, other, earlier in pairs[:SHOWN]:
        when = "an earlier release" if earlier else "this release"
        lines.append(
            f"  {cell.file} row {cell.row}, {cell.column} ({cell.dims}) against "
            f"{other.file} row {other.row} ({when})"
        )
    if len(pairs) > SHOWN:
        lines.append(f"  ... and {len(pairs) - SHOWN} more")
    lines.append(
        "Coarsen the groups (longer intervals, larger areas or wider bands) so that such counts "
        "no longer sit this close, or drop one of the files from the release, then run again."
    )
    return "\n".join(lines)


# --- files ------------------------------------------------------------------------------------


def render_csv(table: pa.Table) -> bytes:
    """A controlled table as CSV bytes: header row, ISO dates, nulls empty, strings quoted (so an
    empty string and a null differ). Every option is pinned, so the bytes, and the hash published
    with them, cannot change with a pyarrow default."""
    sink = io.BytesIO()
    options = pacsv.WriteOptions(
        include_header=True, delimiter=",", eol="\n", null_string="", quoting_style="needed"
    )
    pacsv.write_csv(table, sink, options)
    return sink.getvalue()
