"""Automatic statistical disclosure control: what a result must look like before anyone sees it.

Nothing a researcher sees, inside the environment or released, has been through less than this.
Every number the rules use is a named constant below; the portal's safeguards page is rendered
from these same constants (`rules()`), so what is stated is what is enforced.

Counts (a measure's numerator and denominator, a table's patients):

- **round5** (the default): every count of `THRESHOLD` (7) or fewer, zero included, is redacted
  (published as empty); every other count is rounded to the nearest `ROUND_TO` (5). Zero is
  redacted too, because "nobody in this group" is itself a fact about people, and because
  publishing zeros but not 1..7 would mark the small cells.
- **midpoint6** (an option): OpenSAFELY's midpoint-6 rounding. 0 stays 0 and any n >= 1 becomes
  the middle of its block of six, 6*ceil(n/6) - 3 (1..6 -> 3, 7..12 -> 9, ...).
- **Groups**: under either rule, a group (a table's row, a measure's row for one interval) of
  `THRESHOLD` or fewer people is not published at all: no row, not a blank row. Grouping by a
  near-unique value (a date of birth) so publishes nothing, instead of one row per person.
- **Totals** are the sum of the *raw* counts of the rows that were published, then controlled:
  a total never includes a suppressed group, so "total minus the rows" gives none back.
- **Rates** come from the controlled counts, never the raw ones.

Statistics of a value (mean, median, sd: `release.tables`), with the rule names and default
parameters of ACRO (the SACRO output-checking tool), whose defaults are these constants:

- MinimumThresholdCheck: at least `MIN_STATISTIC_COUNT` (10) people with a value;
- never over a value with `MAX_CATEGORICAL_VALUES` (2) or fewer distinct values in the group:
  the mean of a 0/1 value is a count, and of a value that is zero for all but one person, that
  person's value over n (ACRO's "all values the same" check, widened to two values);
- NKCheck ((n, k) dominance): refused when the `NK_N` (2) largest absolute values make up
  `NK_K` (90%) or more of the group's total;
- PPercentCheck (p% rule): refused when the group's total less its two largest absolute values
  is under `P_PERCENT` (10%) of the largest: the second largest could then estimate the first;
- a median only where at least `MEDIAN_SHARED` (8) people of the group have the published
  value, so that it is nobody's own value;
- each published statistic rounded to `SIGNIFICANT_FIGURES` (3) significant figures.

Every number considered for publication, published or not, is described by a `Cell`: where it
is (file, row, column), what it counts (`key`, from `query.canonical`: never a label), its raw
value (which never leaves the environment), and what became of it (`status`, `reason`). The
differencing check (`release.differencing`) compares cells by key across everything released
and everything shown to a person or their organisation.
"""

from __future__ import annotations

import hashlib
import io
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gpdpr.errors import UserError
from gpdpr.tre.query import canonical
from gpdpr.tre.query import nodes as n

# --- the rules' numbers (each stated on the portal's safeguards page) -------------------------

THRESHOLD = 7  # counts of this many or fewer are redacted; groups this small are not published
ROUND_TO = 5  # round5: the rounding base
BLOCK = 6  # midpoint6: counts are published as the middle of their block of six
MIN_STATISTIC_COUNT = 10  # ACRO safe_threshold: people with a value, for any statistic
MAX_CATEGORICAL_VALUES = 2  # a value with this many distinct values or fewer gets no statistic
NK_N = 2  # ACRO safe_nk_n: the largest n contributors...
NK_K = 0.90  # ACRO safe_nk_k: ...may not make up this share of the total or more
P_PERCENT = 0.10  # ACRO safe_pratio_p: the rest must be at least this share of the largest
MEDIAN_SHARED = THRESHOLD + 1  # people who must have a median's published value
SIGNIFICANT_FIGURES = 3  # a published statistic's precision

Rule = Literal["round5", "midpoint6"]
RULES: tuple[str, ...] = ("round5", "midpoint6")

# What became of a number.
PUBLISHED = "published"  # as it is (midpoint6's zero)
ROUNDED = "rounded"  # published after rounding
REDACTED = "redacted"  # left empty in a published row
SUPPRESSED = "suppressed"  # its whole row is not published
STATUSES = (PUBLISHED, ROUNDED, REDACTED, SUPPRESSED)

# Why, in plain words: constants of the rules only, never a number from the data.
BECAUSE_ROUND5 = f"rounded to the nearest {ROUND_TO}"
BECAUSE_MIDPOINT6 = f"shown as the middle of its block of {BLOCK}"
BECAUSE_ZERO = "zero, shown as it is under midpoint6"
BECAUSE_SMALL = f"{THRESHOLD} or fewer people"
BECAUSE_SMALL_GROUP = f"the group has {THRESHOLD} or fewer people, so its row is not published"
BECAUSE_TOTAL = "the sum of the published rows only, then controlled like any count"

MEASURE_KEYS = ("measure", "interval_start", "interval_end")
MEASURE_COUNTS = ("numerator", "denominator")
RATIO = "ratio"
PATIENTS = "patients"
TOTAL = "Total"  # the label of the total row, in the first group column
MISSING = "missing"  # how a null group value is shown

_NULL_COUNT = pa.scalar(None, pa.int64())
_NULL_FLOAT = pa.scalar(None, pa.float64())


def rules() -> dict[str, Any]:
    """The rules' numbers, for the portal's safeguards page."""
    return {
        "threshold": THRESHOLD,
        "round_to": ROUND_TO,
        "block": BLOCK,
        "min_statistic_count": MIN_STATISTIC_COUNT,
        "max_categorical_values": MAX_CATEGORICAL_VALUES,
        "nk_n": NK_N,
        "nk_k_percent": round(NK_K * 100),
        "p_percent": round(P_PERCENT * 100),
        "median_shared": MEDIAN_SHARED,
        "significant_figures": SIGNIFICANT_FIGURES,
    }


@dataclass(frozen=True, slots=True)
class Cell:
    """One number considered for publication. `raw` and `key` stay inside the environment:
    checkers and researchers may be shown file, row, column, status and reason only."""

    file: str  # output file name, e.g. "measure_asthma_rate.csv"
    row: int | None  # 1-based data row in that file; None when its row is not published
    column: str  # "numerator", "denominator", "patients", or a statistic's column
    key: str  # hex SHA-256 of what it counts (query.canonical), never of a label
    raw: int  # the true count (for a statistic: the people it describes)
    released: bool  # a number was published for it
    status: str  # one of STATUSES
    reason: str  # why, in plain words
    # Keys of what counts one step from what this counts (query.canonical `near`): one holds
    # the other, so a few apart is those few people.
    near: tuple[str, ...] = ()


def cell_of(entry: dict[str, Any]) -> Cell:
    """A cell as cells.json (or a release request) keeps it."""
    return Cell(**{**entry, "near": tuple(entry.get("near", ()))})


def cells_digest(cells: Sequence[Cell]) -> str:
    """A file's cells as one SHA-256, recorded with the run: a release request must come with
    exactly these cells, so that none can be left out of the differencing check."""
    listed = [
        [c.file, c.row, c.column, c.key, c.raw, c.released, c.status, list(c.near)] for c in cells
    ]
    return hashlib.sha256(orjson.dumps(listed)).hexdigest()


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


def count_status(raw: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """What `rule` does to each raw count of a published row: (status, reason) arrays."""
    if rule == "midpoint6":
        zero = raw == 0
        status = np.where(zero, PUBLISHED, ROUNDED)
        reason = np.where(zero, BECAUSE_ZERO, BECAUSE_MIDPOINT6)
    else:
        small = raw <= THRESHOLD
        status = np.where(small, REDACTED, ROUNDED)
        reason = np.where(small, BECAUSE_SMALL, BECAUSE_ROUND5)
    return status.astype(object), reason.astype(object)


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


def control_measure(
    raw: pa.Table, measure: n.Measure, file: str, rule: Rule = "round5"
) -> tuple[pa.Table, list[Cell]]:
    """Control a measure as the engine computed it: `interval_start` and `interval_end` (dates),
    the group columns of `measure.group_by`, `numerator` and `denominator` (counts of people).

    Out: `measure` (its name), the intervals, the groups, both counts controlled and `ratio`
    (from the controlled counts), for the rows whose denominator is above THRESHOLD only; and a
    `Cell` for every numerator and denominator, published or not. A numerator counts
    `denominator & numerator`, a denominator its own predicate, each within its interval and
    groups (`query.canonical`)."""
    _check_rule(rule)
    groups = [name for name, _ in measure.group_by]
    _check_measure_shape(raw, groups, file)
    numerator = _counts(raw.column("numerator"), "numerator", file, allow_null=False)
    denominator = _counts(raw.column("denominator"), "denominator", file, allow_null=False)
    if len(numerator) and pc.any(pc.greater(numerator, denominator)).as_py():
        raise UserError(
            f"{file}: a numerator is above its denominator; a numerator counts people of its "
            "denominator, each once, so check the query (or the engine) that produced it"
        )
    _refuse_repeats(file, raw, ["interval_start", *groups])
    (numerator_keys, numerator_near), (denominator_keys, denominator_near) = _measure_keys(
        raw, measure
    )

    kept = pc.greater(denominator, THRESHOLD)
    published = raw.filter(kept)
    shown_numerator = _control(numerator.filter(kept), rule)
    shown_denominator = _control(denominator.filter(kept), rule)
    table = pa.table(
        {
            "measure": pa.array([measure.name] * published.num_rows, pa.string()),
            "interval_start": published.column("interval_start"),
            "interval_end": published.column("interval_end"),
            **{name: published.column(name) for name in groups},
            "numerator": shown_numerator,
            "denominator": shown_denominator,
            RATIO: _ratio(shown_numerator, shown_denominator),
        }
    )

    keep = kept.to_numpy(zero_copy_only=False)
    rows_out = np.cumsum(keep)
    raw_numerator = numerator.to_numpy()
    raw_denominator = denominator.to_numpy()
    status, reason = count_status(raw_numerator, rule)
    status[~keep], reason[~keep] = SUPPRESSED, BECAUSE_SMALL_GROUP
    numerators = make_cells(
        file, "numerator", rows_out, keep, numerator_keys, raw_numerator, status, reason,
        numerator_near,
    )  # fmt: skip
    status = np.where(keep, ROUNDED, SUPPRESSED).astype(object)
    reason = np.where(keep, rounding_reason(rule), BECAUSE_SMALL_GROUP).astype(object)
    denominators = make_cells(
        file, "denominator", rows_out, keep, denominator_keys, raw_denominator, status, reason,
        denominator_near,
    )  # fmt: skip
    cells = [cell for pair in zip(numerators, denominators, strict=True) for cell in pair]
    return table, cells


def rounding_reason(rule: str) -> str:
    """The reason of a count above THRESHOLD under `rule`."""
    return BECAUSE_MIDPOINT6 if rule == "midpoint6" else BECAUSE_ROUND5


Keys = tuple[list[str], list[tuple[str, ...]]]  # each row's key, and its near keys


def _measure_keys(raw: pa.Table, measure: n.Measure) -> tuple[Keys, Keys]:
    """The numerator's and the denominator's key of each row, each with its near keys. What
    is counted is hashed once per interval (INTERVAL's dates are part of it, and of the series
    grouped by), reusing the hashes of the nodes that do not use INTERVAL; the rows' group
    values are hashed once for all intervals."""
    count = raw.num_rows
    if not count:
        return ([], []), ([], [])
    days = pc.cast(raw.column("interval_start"), pa.int32()).to_numpy()
    _, firsts, of_row = np.unique(days, return_index=True, return_inverse=True)
    shared = canonical.Canon()
    values: dict[tuple[int, ...], np.ndarray] = {}  # value halves, by the group columns' order
    orders, halves = [], []  # per interval: the group columns' order; what halves per kind
    for first in firsts.tolist():
        interval = (
            raw.column("interval_start")[first].as_py(),
            raw.column("interval_end")[first].as_py(),
        )
        canon = canonical.Canon(interval, shared)
        grouped, order = canonical.group_order([canon.of(s) for _, s in measure.group_by])
        if order not in values:
            columns = [raw.column(measure.group_by[p][0]) for p in order]
            values[order] = np.array(canonical.value_halves(columns, count), dtype=object)
        below = canon.factors(measure.denominator)
        both = canon.factors(measure.denominator, measure.numerator)
        orders.append(order)
        halves.append(
            [
                [
                    canonical.what_half(canonical.count(w), grouped)
                    for w in [canon.conjunction_of(factors), *canon.near(factors, keep)]
                ]
                for factors, keep in ((both, below), (below, frozenset()))
            ]
        )
    found: list[Keys] = []
    for kind in range(2):
        sizes = {len(h[kind]) for h in halves}
        if len(sizes) == 1 and len(values) == 1:  # every interval alike: whole columns at once
            mine = next(iter(values.values()))
            table = np.array([h[kind] for h in halves], dtype=object)[of_row]
            keyed = [table[:, j] + mine for j in range(table.shape[1])]
            near: list[tuple[str, ...]] = (
                list(zip(*keyed[1:], strict=True)) if len(keyed) > 1 else [()] * count
            )
            found.append((keyed[0].tolist(), near))
            continue
        keys, nears = [], []  # intervals whose near keys or group orders differ: row by row
        for row, i in enumerate(of_row.tolist()):
            value = values[orders[i]][row]
            keys.append(halves[i][kind][0] + value)
            nears.append(tuple(half + value for half in halves[i][kind][1:]))
        found.append((keys, nears))
    return found[0], found[1]


def _check_measure_shape(raw: pa.Table, groups: list[str], file: str) -> None:
    """Refuse a table that is not the raw measure the definition asks for, before any number in
    it is looked at."""
    _refuse_repeated_names(raw.column_names, file)
    expected = ["interval_start", "interval_end", *groups, *MEASURE_COUNTS]
    missing = [name for name in expected if name not in raw.column_names]
    if missing:
        raise UserError(
            f"{file}: a measure table needs the column(s) {', '.join(missing)}; it has "
            f"{', '.join(raw.column_names) or 'none'}"
        )
    extra = [name for name in raw.column_names if name not in expected]
    if extra:
        # It would be published as it is, uncontrolled.
        raise UserError(
            f"{file}: the raw measure table has column(s) {', '.join(extra)} that the measure "
            "does not define; a measure has its intervals, its groups and its two counts"
        )
    for name in ("interval_start", "interval_end"):
        if not pa.types.is_date(raw.schema.field(name).type):
            raise UserError(
                f"{file}: column '{name}' holds {raw.schema.field(name).type} values, not dates"
            )
        if raw.column(name).null_count:
            row = _first_row(pc.is_null(raw.column(name).combine_chunks()))
            raise UserError(f"{file}: column '{name}' has no date at row {row}")


def _ratio(numerator: pa.Array, denominator: pa.Array) -> pa.Array:
    """Controlled numerator over controlled denominator; null when either was redacted or the
    denominator is 0 (there is no rate of nobody)."""
    ratio = pc.divide(numerator.cast(pa.float64()), denominator.cast(pa.float64()))
    result: pa.Array = pc.if_else(pc.equal(denominator, 0), _NULL_FLOAT, ratio)
    return result


# --- shared helpers ---------------------------------------------------------------------------


def as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Group values as strings, null shown as "missing": how a table publishes them. Dates come
    out as ISO dates; types arrow cannot cast fall back to Python's str()."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    try:
        text = pc.cast(values, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        text = pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())
    result: pa.Array = pc.fill_null(text, MISSING)
    return result


def _refuse_repeats(file: str, raw: pa.Table, columns: list[str]) -> None:
    """Each group may appear once in a file: a repeat is a bug upstream, and two counts for one
    group would confuse both readers and the differencing check."""
    if raw.group_by(columns).aggregate([]).num_rows == raw.num_rows:  # the usual answer, fast
        return
    seen: dict[tuple[object, ...], int] = {}
    values = [raw.column(name).to_pylist() for name in columns]
    for row, group in enumerate(zip(*values, strict=True), start=1):
        first = seen.setdefault(group, row)
        if first != row:
            raise UserError(
                f"{file}: rows {first} and {row} are the same group; each group must appear "
                "once, so check the grouping that produced the table"
            )


def _refuse_repeated_names(names: list[str], file: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(
            f"{file}: column(s) {', '.join(repeated)} appear more than once; rename them"
        )


def make_cells(
    file: str,
    column: str,
    rows: np.ndarray,
    kept: np.ndarray,
    keys: Sequence[str],
    raw: np.ndarray,
    status: np.ndarray,
    reason: np.ndarray,
    near: Sequence[tuple[str, ...]] | None = None,
) -> list[Cell]:
    """One `Cell` per raw row: `rows` numbers the published rows (cumulatively), `kept` says
    which were published. A five-year monthly measure by practice has hundreds of thousands of
    rows, and a frozen dataclass's own __init__ (one object.__setattr__ per field) would take
    most of the time spent here, so the cells are made empty and filled a field at a time
    through the slot descriptors, each in one C-level pass."""
    count = len(keys)
    cells: list[Cell] = list(map(object.__new__, repeat(Cell, count)))
    published = (status == PUBLISHED) | (status == ROUNDED)
    fields = {
        "file": repeat(file, count),
        "row": [int(r) if k else None for r, k in zip(rows.tolist(), kept.tolist(), strict=True)],
        "column": repeat(column, count),
        "key": keys,
        "raw": raw.tolist(),
        "released": published.tolist(),
        "status": status.tolist(),
        "reason": reason.tolist(),
        "near": near if near is not None else repeat((), count),
    }
    for name, values in fields.items():
        deque(map(getattr(Cell, name).__set__, cells, values), maxlen=0)
    return cells


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
