"""The query graph: a definition as typed nodes, the only form the service accepts.

Frames are sets of rows: a table, a table filtered (`Where`), sorted (`SortBy`), or one row per
patient picked from a sorted frame (`PickOne`). Series are values: a column of a frame, a
literal, an operation on series, a per-patient aggregate, a `Case`, or the start or end of a
measure's interval.

Every node checks itself when it is made, so a graph built by hand or edited in transit meets
the same rules as one built with the language: a type error, a column that does not exist or
two frames mixed in one expression is refused, naming the place in the researcher's file
(`at`) that made the node.

A series lives in a *domain*: `PATIENT` (one value per patient, or a constant) or the rows of
one frame. A filtered frame's rows are rows of the frame it filters, so a column of a table can
be used on any filtering of it (`events.where(...).sort_by(events.date)`), and an expression
mixing them lives on the more filtered one. Values from two frames neither of which filters the
other cannot be combined, because their rows do not line up; a per-patient value can be
combined with anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import date
from typing import Any, TypeVar

from gpdpr.errors import UserError
from gpdpr.tre.query.schema import (
    BOOL,
    CODE_TYPES,
    DATE,
    FLOAT,
    INT,
    NUMERIC,
    STR,
    TABLES,
    TYPES,
)

PATIENT = "patient"  # the domain of per-patient values and constants


class DefinitionError(UserError):
    """A definition that cannot run, found before any data is read."""


def problem(at: str | None, message: str) -> DefinitionError:
    return DefinitionError(f"{at}: {message}" if at else message)


@dataclass(frozen=True, eq=False)
class Node:
    """A node of the graph. Equal when of one kind with equal fields (`at` aside), and hashed
    once: a frozen dataclass would hash (and compare) its whole subgraph every time, which for a
    graph reusing nodes is exponential in its depth. What a node works out about itself (its
    type, its domain, ...) is kept on it too (`remembered`), for the same reason."""

    # Where in the researcher's file the node was made: for messages only, so it takes no part
    # in equality (the same expression written twice is one node).
    at: str | None = field(default=None, compare=False, kw_only=True)

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if f.compare)

    def __hash__(self) -> int:
        if _HASH not in self.__dict__:
            _hash_under(self)
        found: int = self.__dict__[_HASH]
        return found

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not type(self):
            return False
        assert isinstance(other, Node)
        return hash(self) == hash(other) and self._fields() == other._fields()


_T = TypeVar("_T")
_HASH = "_remembered_hash"


def _hash_under(root: Node) -> None:
    """Hash `root` and every node under it not hashed yet, children first, without recursion
    (a graph built by hand may be deeper than Python's stack)."""
    stack = [root]
    while stack:
        node = stack[-1]
        if _HASH in node.__dict__:
            stack.pop()
            continue
        waiting = [child for child in children(node) if _HASH not in child.__dict__]
        if waiting:
            stack += waiting
            continue
        node.__dict__[_HASH] = hash((type(node).__name__, *node._fields()))
        stack.pop()


def remembered(node: Node, what: str, work_out: Callable[[], _T]) -> _T:
    """`work_out()`, once per node: nodes never change, so the answer is kept on the node."""
    kept = node.__dict__
    key = f"_remembered_{what}"
    if key not in kept:
        kept[key] = work_out()  # the instance's own dict: frozen dataclasses allow this
    found: _T = kept[key]
    return found


# ---- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Frame(Node):
    def is_patient_frame(self) -> bool:
        return remembered(self, "patient_frame", self._patient_frame)

    def _patient_frame(self) -> bool:
        raise NotImplementedError

    def rows(self) -> Frame:
        """The frame whose rows these are: sorting changes order, not rows."""
        return self


@dataclass(frozen=True, eq=False)
class SelectTable(Frame):
    name: str

    def __post_init__(self) -> None:
        if self.name not in TABLES:
            raise problem(
                self.at,
                f"there is no table {describe(self.name)}; the tables are {', '.join(TABLES)}",
            )

    def _patient_frame(self) -> bool:
        return TABLES[self.name].one_row_per_patient


@dataclass(frozen=True, eq=False)
class Where(Frame):
    source: Frame
    condition: Series

    def __post_init__(self) -> None:
        if self.condition.type != BOOL:
            raise problem(
                self.at, f"`where` needs a true/false condition, not a {self.condition.type}"
            )
        _within(self.at, "`where`", self.source, self.condition)

    def _patient_frame(self) -> bool:
        return self.source.is_patient_frame()


@dataclass(frozen=True, eq=False)
class SortBy(Frame):
    source: Frame
    keys: tuple[Series, ...]

    def __post_init__(self) -> None:
        if self.source.is_patient_frame():
            raise problem(self.at, "only a frame with many rows per patient can be sorted")
        if not self.keys:
            raise problem(self.at, "`sort_by` needs at least one column to sort by")
        for key in self.keys:
            if key.domain() == PATIENT:
                raise problem(self.at, "`sort_by` keys must be columns of the frame being sorted")
            _within(self.at, "`sort_by`", self.source, key)
            if key.type == BOOL:
                raise problem(self.at, "sorting by a true/false value is not supported")

    def _patient_frame(self) -> bool:
        return False

    def rows(self) -> Frame:
        return remembered(self, "rows", self.source.rows)


@dataclass(frozen=True, eq=False)
class PickOne(Frame):
    source: Frame
    position: str  # "first" or "last"

    def __post_init__(self) -> None:
        if self.position not in ("first", "last"):
            raise problem(self.at, f"position must be first or last, not {describe(self.position)}")
        if self.source.is_patient_frame():
            raise problem(self.at, "this frame already has one row per patient")
        if sort_keys(self.source) is None:
            raise problem(
                self.at,
                f"sort the frame before taking the {self.position} row for each patient: "
                f"`.sort_by(...).{self.position}_for_patient()`",
            )

    def _patient_frame(self) -> bool:
        return True


def sort_keys(frame: Frame) -> tuple[Series, ...] | None:
    """The sort a frame carries: the nearest `SortBy` through any later `where`s."""
    while True:
        if isinstance(frame, SortBy):
            return frame.keys
        if isinstance(frame, Where):
            frame = frame.source
            continue
        return None


def table_of(frame: Frame) -> str:
    """The table a frame's rows come from."""

    def work_out() -> str:
        if isinstance(frame, SelectTable):
            return frame.name
        assert isinstance(frame, (Where, SortBy, PickOne))
        return table_of(frame.source)

    return remembered(frame, "table", work_out)


# ---- series ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Series(Node):
    @property
    def type(self) -> str:
        return remembered(self, "type", self._kind)

    def domain(self) -> Frame | str:
        """PATIENT, or the frame whose rows this series has one value for."""
        return remembered(self, "domain", self._domain)

    def _kind(self) -> str:
        raise NotImplementedError

    def _domain(self) -> Frame | str:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Column(Series):
    frame: Frame
    name: str

    def __post_init__(self) -> None:
        table = TABLES[table_of(self.frame)]
        if self.name not in table.columns:
            raise problem(
                self.at,
                f"{table.name} has no column {describe(self.name)}; it has "
                f"{', '.join(table.columns)}",
            )

    def _kind(self) -> str:
        return TABLES[table_of(self.frame)].columns[self.name].type

    def _domain(self) -> Frame | str:
        return PATIENT if self.frame.is_patient_frame() else self.frame.rows()


PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    BOOL: (bool,),
    INT: (int,),
    FLOAT: (float, int),
    STR: (str,),
    DATE: (date,),
    "snomed": (str,),
    "dmd": (str,),
}


MAX_TEXT = 1_000  # characters of a text value, a code or a codelist's name
MAX_CODES = 20_000  # codes in one codelist


def _plain_text(text: object) -> bool:
    return isinstance(text, str) and len(text) <= MAX_TEXT and text.isprintable()


def describe(value: object) -> str:
    """A value from a definition, for a message: quoted, and cut short."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


@dataclass(frozen=True, eq=False)
class Value(Series):
    value: bool | int | float | str | date | None
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in TYPES:
            raise problem(self.at, f"unknown value type {describe(self.kind)}")
        ok = self.value is None or (
            isinstance(self.value, PYTHON_TYPES[self.kind])
            and not (self.kind in (INT, FLOAT) and isinstance(self.value, bool))
        )
        if not ok:
            raise problem(self.at, f"{describe(self.value)} is not a {self.kind}")
        # What an engine's numbers can hold (and JSON can carry: it has no infinity or NaN).
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise problem(self.at, f"{describe(self.value)} is not a number a definition can use")
        if isinstance(self.value, int) and not -(2**63) <= self.value < 2**63:
            raise problem(self.at, f"{self.value} is too big: whole numbers are 64-bit")
        if isinstance(self.value, str) and not _plain_text(self.value):
            raise problem(
                self.at,
                f"text values must be printable (no control characters), at most {MAX_TEXT:,} "
                "characters",
            )

    def _kind(self) -> str:
        return self.kind

    def _domain(self) -> Frame | str:
        return PATIENT


@dataclass(frozen=True, eq=False)
class IntervalDate(Series):
    """The first or last day of the interval a measure is being computed for."""

    which: str  # "start" or "end"

    def __post_init__(self) -> None:
        if self.which not in ("start", "end"):
            raise problem(
                self.at, f"an interval has a start and an end, not {describe(self.which)}"
            )

    def _kind(self) -> str:
        return DATE

    def _domain(self) -> Frame | str:
        return PATIENT


@dataclass(frozen=True, eq=False)
class IsIn(Series):
    series: Series
    codes: tuple[str, ...]  # sorted, distinct
    codelist: str  # where the codes came from, for messages and the published definition

    def __post_init__(self) -> None:
        if self.series.type not in (*CODE_TYPES, STR):
            raise problem(
                self.at,
                f"`is_in` matches codes or text against a codelist; this is a {self.series.type}",
            )
        if not _plain_text(self.codelist):
            raise problem(self.at, f"a codelist's name is printable text, at most {MAX_TEXT:,}")
        if not self.codes:
            raise problem(self.at, f"the codelist {self.codelist} is empty")
        if len(self.codes) > MAX_CODES:
            raise problem(
                self.at,
                f"the codelist {self.codelist} has {len(self.codes):,} codes; at most "
                f"{MAX_CODES:,} (split it, or match a broader concept)",
            )
        for code in self.codes:
            if not isinstance(code, str) or not code or not _plain_text(code):
                raise problem(self.at, f"{describe(code)} in {self.codelist} is not a code")
        if list(self.codes) != sorted(set(self.codes)):
            raise problem(self.at, "codelist codes must be distinct and sorted")

    def _kind(self) -> str:
        return BOOL

    def _domain(self) -> Frame | str:
        return self.series.domain()


def _numeric_result(args: tuple[Series, ...]) -> str:
    return INT if all(a.type == INT for a in args) else FLOAT


def _check_comparable(at: str | None, op: str, a: Series, b: Series, ordered: bool) -> str:
    same = a.type == b.type or (a.type in NUMERIC and b.type in NUMERIC)
    if not same:
        raise problem(
            at,
            f"cannot compare a {_kind_phrase(a.type)} with a {_kind_phrase(b.type)} ({op}); "
            "compare like with like (a date with a date, a number with a number)",
        )
    if ordered and a.type in (BOOL, *CODE_TYPES):
        raise problem(at, f"{_kind_phrase(a.type)} values have no order ({op})")
    return BOOL


def _kind_phrase(kind: str) -> str:
    return {
        BOOL: "true/false value",
        INT: "number",
        FLOAT: "number",
        STR: "text",
        DATE: "date",
        "snomed": "SNOMED CT code",
        "dmd": "dm+d code",
    }.get(kind, kind)


def _want(at: str | None, op: str, arg: Series, kinds: tuple[str, ...]) -> None:
    if arg.type not in kinds:
        wanted = " or ".join(sorted({_kind_phrase(k) for k in kinds}))
        raise problem(at, f"`{op}` needs a {wanted}, not a {_kind_phrase(arg.type)}")


# op -> number of arguments. The result type is worked out in `Apply.type`.
OPS: dict[str, int] = {
    "eq": 2,
    "ne": 2,
    "lt": 2,
    "le": 2,
    "gt": 2,
    "ge": 2,
    "and": 2,
    "or": 2,
    "not": 1,
    "is_null": 1,
    "is_not_null": 1,
    "add": 2,
    "sub": 2,
    "mul": 2,
    "div": 2,
    "neg": 1,
    "add_days": 2,
    "add_months": 2,
    "add_years": 2,
    "days_between": 2,
    "months_between": 2,
    "years_between": 2,
    "year": 1,
    "month": 1,
    "coalesce": 2,
}


@dataclass(frozen=True, eq=False)
class Apply(Series):
    op: str
    args: tuple[Series, ...]

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise problem(self.at, f"unknown operation {describe(self.op)}")
        if len(self.args) != OPS[self.op]:
            raise problem(self.at, f"`{self.op}` takes {OPS[self.op]} values")
        _same_rows(self.at, f"`{self.op}`", None, *self.args)
        self.type  # noqa: B018  (works out the result type, refusing a type error now)

    def _kind(self) -> str:
        op, args, at = self.op, self.args, self.at
        if op in ("eq", "ne"):
            return _check_comparable(at, op, args[0], args[1], ordered=False)
        if op in ("lt", "le", "gt", "ge"):
            return _check_comparable(at, op, args[0], args[1], ordered=True)
        if op in ("and", "or", "not"):
            for arg in args:
                _want(at, op, arg, (BOOL,))
            return BOOL
        if op in ("is_null", "is_not_null"):
            return BOOL
        if op in ("add", "sub", "mul", "div", "neg"):
            for arg in args:
                _want(at, op, arg, NUMERIC)
            return FLOAT if op == "div" else _numeric_result(args)
        if op in ("add_days", "add_months", "add_years"):
            _want(at, op, args[0], (DATE,))
            _want(at, op, args[1], (INT,))
            return DATE
        if op in ("days_between", "months_between", "years_between"):
            for arg in args:
                _want(at, op, arg, (DATE,))
            return INT
        if op in ("year", "month"):
            _want(at, op, args[0], (DATE,))
            return INT
        assert op == "coalesce"
        a, b = args
        if a.type != b.type and not (a.type in NUMERIC and b.type in NUMERIC):
            raise problem(
                at,
                f"`when_null_then` needs a value of the same type: a {_kind_phrase(a.type)} "
                f"cannot default to a {_kind_phrase(b.type)}",
            )
        return _numeric_result(args) if a.type in NUMERIC else a.type

    def _domain(self) -> Frame | str:
        return _joint_domain(self.args)


@dataclass(frozen=True, eq=False)
class Case(Series):
    cases: tuple[tuple[Series, Series], ...]
    default: Series | None

    def __post_init__(self) -> None:
        if not self.cases:
            raise problem(self.at, "`case` needs at least one `when(...).then(...)`")
        values = [v for _, v in self.cases] + ([self.default] if self.default else [])
        for condition, _ in self.cases:
            if condition.type != BOOL:
                raise problem(
                    self.at, f"a `when` condition must be true/false, not a {condition.type}"
                )
        kinds = {v.type for v in values if not _is_null(v)}
        if len(kinds) > 1 and not kinds <= set(NUMERIC):
            raise problem(
                self.at,
                "every `then` (and `otherwise`) of a `case` must give the same type of value; "
                f"these give {', '.join(sorted(_kind_phrase(k) for k in kinds))}",
            )
        if not kinds:
            raise problem(self.at, "a `case` must give at least one value that is not None")
        _same_rows(self.at, "`case`", None, *[s for pair in self.cases for s in pair], *values)

    def _kind(self) -> str:
        kinds = {v.type for v in self._values() if not _is_null(v)}
        if kinds <= set(NUMERIC) and len(kinds) > 1:
            return FLOAT
        return next(iter(kinds))

    def _values(self) -> list[Series]:
        return [v for _, v in self.cases] + ([self.default] if self.default else [])

    def _domain(self) -> Frame | str:
        return _joint_domain([s for pair in self.cases for s in pair] + self._values())


def _is_null(series: Series) -> bool:
    return isinstance(series, Value) and series.value is None


AGGREGATES_OF_FRAMES = ("exists", "count")
AGGREGATES_OF_SERIES = ("minimum", "maximum", "sum", "mean", "count_distinct")


@dataclass(frozen=True, eq=False)
class Aggregate(Series):
    """One value per patient from the rows of a frame, or from a series over them."""

    op: str
    source: Frame | Series

    def __post_init__(self) -> None:
        if self.op in AGGREGATES_OF_FRAMES:
            if not isinstance(self.source, Frame):
                raise problem(self.at, f"`{self.op}_for_patient` is a question about a frame")
            return
        if self.op not in AGGREGATES_OF_SERIES:
            raise problem(self.at, f"unknown per-patient aggregate {describe(self.op)}")
        if not isinstance(self.source, Series) or self.source.domain() == PATIENT:
            raise problem(
                self.at,
                f"`{self.op}_for_patient` needs a column of a frame with many rows per patient",
            )
        if self.op in ("sum", "mean"):
            _want(self.at, f"{self.op}_for_patient", self.source, NUMERIC)
        if self.op in ("minimum", "maximum"):
            _want(self.at, f"{self.op}_for_patient", self.source, (INT, FLOAT, DATE, STR))

    def _kind(self) -> str:
        if self.op == "exists":
            return BOOL
        if self.op in ("count", "count_distinct"):
            return INT
        assert isinstance(self.source, Series)
        if self.op == "mean":
            return FLOAT
        return self.source.type

    def _domain(self) -> Frame | str:
        return PATIENT


def lineage(frame: Frame) -> tuple[Frame, ...]:
    """The frames whose rows include `frame`'s rows: itself, then each frame it filters."""

    def work_out() -> tuple[Frame, ...]:
        rows = frame.rows()
        return (rows, *lineage(rows.source)) if isinstance(rows, Where) else (rows,)

    return remembered(frame, "lineage", work_out)


def _joint_domain(args: list[Series] | tuple[Series, ...]) -> Frame | str:
    """The most filtered of the args' frames, provided every other one is in its lineage."""
    domains = {a.domain() for a in args} - {PATIENT}
    if not domains:
        return PATIENT
    deepest = max(domains, key=lambda d: len(lineage(d)))  # type: ignore[arg-type]
    assert isinstance(deepest, Frame)
    if not domains <= set(lineage(deepest)):
        raise DefinitionError(_MIXED)
    return deepest


_MIXED = (
    "mixes values from frames whose rows do not line up (two different tables, or two "
    "different filterings of one): use columns of one frame, or per-patient values (such as "
    "`.first_for_patient()` or `.exists_for_patient()`)"
)


def _same_rows(at: str | None, what: str, frame: Frame | None, *series: Series) -> None:
    """Refuse mixing values from frames whose rows do not line up."""
    try:
        _joint_domain(series)
    except DefinitionError:
        raise problem(at, f"{what} {_MIXED}") from None


def _within(at: str | None, what: str, frame: Frame, series: Series) -> None:
    """Refuse a condition or key that is not defined on every row of `frame`."""
    domain = series.domain()
    if domain != PATIENT and domain not in lineage(frame):
        raise problem(
            at,
            f"{what} uses values of another frame; refer to columns of the frame itself (or "
            "of the table it comes from), or to per-patient values",
        )


# ---- what a definition asks for --------------------------------------------------------------

INTERVAL_UNITS = ("months", "weeks")
STATISTICS = ("mean", "median", "sd")
MAX_INTERVALS = 1200


@dataclass(frozen=True)
class Intervals:
    unit: str  # "months" or "weeks"
    start: date
    count: int

    def __post_init__(self) -> None:
        if self.unit not in INTERVAL_UNITS:
            raise DefinitionError(f"intervals are in months or weeks, not {describe(self.unit)}")
        if not 1 <= self.count <= MAX_INTERVALS:
            raise DefinitionError(f"a measure has 1 to {MAX_INTERVALS} intervals, not {self.count}")


@dataclass(frozen=True)
class Measure:
    name: str
    numerator: Series
    denominator: Series
    group_by: tuple[tuple[str, Series], ...]
    intervals: Intervals
    at: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class AggregateTable:
    name: str
    by: tuple[str, ...]
    statistics: tuple[tuple[str, str], ...]  # (variable, statistic)
    at: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Definition:
    population: Series | None
    variables: tuple[tuple[str, Series], ...]
    measures: tuple[Measure, ...] = ()
    tables: tuple[AggregateTable, ...] = ()
    disclosure: str = "round5"


def walk(*roots: Node) -> list[Node]:
    """Every node under the roots once, children before parents. Without recursion, so that
    no depth of graph can exhaust Python's stack."""
    seen: dict[Node, None] = {}
    stack: list[tuple[Node, bool]] = [(root, False) for root in reversed(roots)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            seen[node] = None
        elif node not in seen:
            stack.append((node, True))
            stack += [(child, False) for child in reversed(children(node)) if child not in seen]
    return list(seen)


def children(node: Node) -> list[Node]:
    if isinstance(node, (Where,)):
        return [node.source, node.condition]
    if isinstance(node, SortBy):
        return [node.source, *node.keys]
    if isinstance(node, PickOne):
        return [node.source]
    if isinstance(node, Column):
        return [node.frame]
    if isinstance(node, IsIn):
        return [node.series]
    if isinstance(node, Apply):
        return list(node.args)
    if isinstance(node, Case):
        out: list[Node] = [s for pair in node.cases for s in pair]
        return out + ([node.default] if node.default else [])
    if isinstance(node, Aggregate):
        return [node.source]
    return []


def roots(definition: Definition) -> list[Series]:
    out: list[Series] = [definition.population] if definition.population is not None else []
    out += [s for _, s in definition.variables]
    for measure in definition.measures:
        out += [measure.numerator, measure.denominator, *(s for _, s in measure.group_by)]
    return out


def columns_used(definition: Definition) -> dict[str, set[str]]:
    """{table: columns} a definition reads: every table it touches, whether or not it reads a
    column of it (`medications.count_for_patient()` reads medications)."""
    used: dict[str, set[str]] = {}
    for node in walk(*roots(definition)):
        if isinstance(node, SelectTable):
            used.setdefault(node.name, set())
        if isinstance(node, Column):
            used.setdefault(table_of(node.frame), set()).add(node.name)
    return used


def uses_interval(node: Node) -> bool:
    return remembered(
        node,
        "uses_interval",
        lambda: isinstance(node, IntervalDate) or any(uses_interval(c) for c in children(node)),
    )


def remembered_for(node: Node, what: str, other: Node, work_out: Callable[[], _T]) -> _T:
    """`work_out()`, once per node and `other` node (a question about the two)."""
    kept: dict[Node, _T] = remembered(node, what, dict)
    if other not in kept:
        kept[other] = work_out()
    return kept[other]


def conjuncts(condition: Series) -> tuple[Series, ...]:
    """The factors of `a & b & ...` (each once, however often the graph repeats it), in the
    order a stack meets them: the rightmost first."""

    def work_out() -> tuple[Series, ...]:
        found: dict[Series, None] = {}
        seen: set[Series] = set()
        stack = [condition]
        while stack:
            factor = stack.pop()
            if factor in seen:
                continue
            seen.add(factor)
            if isinstance(factor, Apply) and factor.op == "and":
                stack += factor.args
            else:
                found[factor] = None
        return tuple(found)

    return remembered(condition, "conjuncts", work_out)


# What a group or a table's `by` may be: values shared by many people. A date or a decimal is
# near-unique, so grouping by it would publish a row per person.
CATEGORICAL = (BOOL, STR, INT, *CODE_TYPES)


def validate(definition: Definition) -> None:
    """Refuse a definition that cannot make a release: nothing to release, a population or
    variable that is not one value per patient, INTERVAL outside a measure, a table over
    variables that do not exist, a numerator or denominator that is not true/false for each
    patient, a group that is not categorical, a definition over the limits (`limits`)."""
    from gpdpr.tre.query import limits  # both build on this module
    from gpdpr.tre.query.names import check_name

    limits.check(definition)  # first: the checks below take time that grows with the size
    if not definition.measures and not definition.tables:
        raise DefinitionError(
            "the definition releases nothing: add a measure (Measures.define_measure) or an "
            "aggregate table (dataset.add_table); a dataset itself never leaves the environment"
        )
    if definition.disclosure not in ("round5", "midpoint6"):
        raise DefinitionError(
            f"unknown disclosure control rule {describe(definition.disclosure)}: round5 or "
            "midpoint6"
        )
    if definition.tables and definition.population is None:
        raise DefinitionError("aggregate tables need a dataset with `define_population`")
    if definition.population is not None:
        _per_patient(definition.population, "the population", BOOL)
    names = [name for name, _ in definition.variables]
    if len(set(names)) != len(names):
        raise DefinitionError("two dataset variables have the same name")
    for name, series in definition.variables:
        check_name(name, "a variable", series.at)
        _per_patient(series, f"dataset.{name}", None)
    for table in definition.tables:
        _check_table(table, dict(definition.variables))
    seen: set[str] = set()
    for measure in definition.measures:
        check_name(measure.name, "a measure", measure.at)
        if measure.name in seen:
            raise problem(measure.at, f"two measures are called {describe(measure.name)}")
        seen.add(measure.name)
        for role in ("numerator", "denominator"):
            series = getattr(measure, role)
            if series.domain() != PATIENT or series.type != BOOL:
                raise problem(
                    measure.at or series.at,
                    f"the {role} of {measure.name} must be true/false for each patient (each "
                    "person counts at most once): use `.exists_for_patient()`, or compare a "
                    "number (`.count_for_patient() > 0`), rather than "
                    + (
                        "many values per patient"
                        if series.domain() != PATIENT
                        else f"a {_kind_phrase(series.type)}"
                    ),
                )
        groups = [group for group, _ in measure.group_by]
        if len(set(groups)) != len(groups):
            raise problem(measure.at, f"two groups of {measure.name} have the same name")
        for group, series in measure.group_by:
            check_name(group, "a group_by", measure.at)
            if series.domain() != PATIENT:
                raise problem(
                    measure.at or series.at,
                    f"group_by {group} of {measure.name} must be one value per patient",
                )
            _categorical(series, f"group_by {group} of {measure.name}", measure.at)
    if len(definition.tables) != len({t.name for t in definition.tables}):
        raise DefinitionError("two aggregate tables have the same name")


def _categorical(series: Series, what: str, at: str | None) -> None:
    if series.type not in CATEGORICAL:
        how = (
            "band it with `.year` or `.month`, or with case/when"
            if series.type == DATE
            else "band it with case/when"
        )
        kind = "decimal number" if series.type == FLOAT else _kind_phrase(series.type)
        raise problem(
            at or series.at,
            f"{what} is a {kind}, which would make nearly everyone a group "
            f"of their own: groups are true/false, text, codes or whole numbers ({how})",
        )


def _per_patient(series: Series, what: str, kind: str | None) -> None:
    if series.domain() != PATIENT:
        raise problem(series.at, f"{what} has many values per patient; reduce it to one")
    if kind is not None and series.type != kind:
        raise problem(series.at, f"{what} must be true/false, not a {_kind_phrase(series.type)}")
    if uses_interval(series):
        raise problem(series.at, f"{what} uses INTERVAL, which only a measure has")


def _check_table(table: AggregateTable, variables: dict[str, Series]) -> None:
    from gpdpr.tre.query.names import check_name

    check_name(table.name, "a table", table.at)
    if not table.by:
        raise problem(table.at, f"table {table.name} needs at least one `by` variable")
    for name in (*table.by, *(v for v, _ in table.statistics)):
        if name not in variables:
            raise problem(
                table.at, f"table {table.name} uses {describe(name)}, not a dataset variable"
            )
    made = ["patients", *(f"{v}_{s}" for v, s in table.statistics)]
    for name in (*table.by, *made):
        if [*table.by, *made].count(name) > 1:
            raise problem(
                table.at,
                f"table {table.name} would have two columns called {name}: list each variable "
                "and statistic once, and rename a variable that has the name of a column",
            )
    for name in table.by:
        _categorical(variables[name], f"table {table.name} groups by {name}, which", table.at)
    for name, statistic in table.statistics:
        if statistic not in STATISTICS:
            raise problem(
                table.at, f"unknown statistic {describe(statistic)}: {', '.join(STATISTICS)}"
            )
        if variables[name].type not in NUMERIC:
            raise problem(
                table.at,
                f"the {statistic} of {name} needs a number (whole or decimal), not a "
                f"{_kind_phrase(variables[name].type)}",
            )
