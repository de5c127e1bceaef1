"""The query language researchers write definitions in.

    from gpdpr.tre.language import *

    asthma = codelist_from_csv("codelists/asthma.csv", column="code")
    # or by meaning, expanded against the loaded terminology release when the file is compiled:
    asthma = codelist_from_ecl("<< 195967001 |Asthma|")
    dataset = Dataset()
    dataset.define_population(patients.age_on("2025-01-01") >= 18)
    dataset.sex = patients.sex
    dataset.first_asthma = (
        clinical_events.where(clinical_events.code.is_in(asthma))
        .sort_by(clinical_events.effective_date)
        .first_for_patient()
        .effective_date
    )

Everything here only builds a query graph (`gpdpr.tre.query.nodes`); nothing reads data. A
definition file is run on the researcher's own machine to build the graph, which travels as JSON;
no researcher code ever runs inside the research environment.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from gpdpr.errors import UserError
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.codelists import (
    Codelist,
    check_for_column,
    codelist_from_csv,
    codelist_from_ecl,
)
from gpdpr.tre.query.names import check_name
from gpdpr.tre.query.schema import CODE_TYPES, DATE, INT, TABLES

__all__ = [
    "INTERVAL",
    "Codelist",
    "Dataset",
    "Measures",
    "allergies",
    "appointments",
    "case",
    "clinical_events",
    "codelist_from_csv",
    "codelist_from_ecl",
    "days",
    "immunisations",
    "medications",
    "months",
    "patients",
    "practice_registrations",
    "referrals",
    "weeks",
    "when",
    "years",
]

# The language's own modules: a frame outside them is the researcher's, even a study shipped inside
# gpdpr (the demo's, under gpdpr/tre/examples), which a wider prefix would skip to name a frame of
# whatever ran it (typer's).
_PACKAGE = str(Path(__file__).resolve().parent)


def _at() -> str | None:
    """The researcher's file and line that is building a node: the first frame outside gpdpr."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not str(Path(filename).resolve()).startswith(_PACKAGE):
            return f"{Path(filename).name}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


# ---- values ----------------------------------------------------------------------------------


def _literal(value: Any, like: n.Series | None, at: str | None) -> n.Series:
    """A Python value as a series, typed to sit beside `like` where that makes sense: a string
    beside a date must be an ISO date, a string beside a code is that code."""
    if isinstance(value, Series):
        return value.node
    if isinstance(value, n.Series):
        return value
    if value is None:
        return n.Value(None, like.type if like is not None else INT, at=at)
    if isinstance(value, bool):
        return n.Value(value, "bool", at=at)
    if isinstance(value, int):
        return n.Value(value, "int", at=at)
    if isinstance(value, float):
        return n.Value(value, "float", at=at)
    if isinstance(value, date):
        return n.Value(value, DATE, at=at)
    if isinstance(value, str):
        if like is not None and like.type == DATE:
            try:
                return n.Value(date.fromisoformat(value), DATE, at=at)
            except ValueError:
                raise n.problem(at, f"{value!r} is not a date: write dates as YYYY-MM-DD") from None
        if like is not None and like.type in ("snomed", "dmd"):
            return n.Value(value, like.type, at=at)
        return n.Value(value, "str", at=at)
    raise n.problem(at, f"{value!r} ({type(value).__name__}) cannot be used in a definition")


def _date(value: Any, at: str | None) -> n.Series:
    return _literal(value, n.Value(None, DATE), at)


@dataclass(frozen=True)
class Duration:
    unit: str  # days, weeks, months, years
    count: int

    def starting_on(self, start: str | date) -> n.Intervals:
        """`count` consecutive intervals of one `unit` each, the first starting on `start`."""
        if self.unit not in n.INTERVAL_UNITS:
            raise n.problem(_at(), "measure intervals are months(N) or weeks(N)")
        day = date.fromisoformat(start) if isinstance(start, str) else start
        return n.Intervals(self.unit, day, self.count)


def days(count: int) -> Duration:
    """A duration of `count` days."""
    return Duration("days", count)


def weeks(count: int) -> Duration:
    """A duration of `count` weeks."""
    return Duration("weeks", count)


def months(count: int) -> Duration:
    """`count` calendar months. A date plus a month is the same day of the next month, or that
    month's last day where it has no such day: 2024-01-31 + 1 month is 2024-02-29, and
    2024-01-31 + 2 months is 2024-03-31 (each sum is counted from the date itself, so months
    are never chained through a shorter one). A measure's monthly intervals start the same way
    from their first start: from 2024-01-31, on 31 January, 29 February, 31 March, 30 April;
    each ends the day before the next starts."""
    return Duration("months", count)


def years(count: int) -> Duration:
    """A duration of `count` calendar years."""
    return Duration("years", count)


def _shift(series: n.Series, duration: Duration, sign: int, at: str | None) -> n.Series:
    amount = n.Value(duration.count * sign * (7 if duration.unit == "weeks" else 1), INT, at=at)
    op = {"days": "add_days", "weeks": "add_days", "months": "add_months", "years": "add_years"}
    return n.Apply(op[duration.unit], (series, amount), at=at)


class Series:
    """A value per row of a frame, or per patient. Operators build comparisons and arithmetic."""

    def __init__(self, node: n.Series) -> None:
        self.node = node

    def __repr__(self) -> str:
        return f"<series {self.node.type} at {self.node.at}>"

    def __bool__(self) -> bool:
        raise n.problem(
            _at(),
            "a series is not true or false until the query runs: combine conditions with & "
            "and |, not `and`/`or`, and use case(when(...)) rather than `if`",
        )

    def _op(self, op: str, *others: Any) -> Series:
        at = _at()
        args = (self.node, *(_literal(o, self.node, at) for o in others))
        return Series(n.Apply(op, args, at=at))

    def __eq__(self, other: Any) -> Series:  # type: ignore[override]
        return self._op("eq", other)

    def __ne__(self, other: Any) -> Series:  # type: ignore[override]
        return self._op("ne", other)

    def __lt__(self, other: Any) -> Series:
        return self._op("lt", other)

    def __le__(self, other: Any) -> Series:
        return self._op("le", other)

    def __gt__(self, other: Any) -> Series:
        return self._op("gt", other)

    def __ge__(self, other: Any) -> Series:
        return self._op("ge", other)

    def __and__(self, other: Any) -> Series:
        return self._op("and", other)

    def __or__(self, other: Any) -> Series:
        return self._op("or", other)

    def __invert__(self) -> Series:
        return self._op("not")

    def __neg__(self) -> Series:
        return self._op("neg")

    def __add__(self, other: Any) -> Series:
        if isinstance(other, Duration):
            return Series(_shift(self.node, other, 1, _at()))
        return self._op("add", other)

    def __radd__(self, other: Any) -> Series:
        return self.__add__(other)

    def __sub__(self, other: Any) -> Series:
        if isinstance(other, Duration):
            return Series(_shift(self.node, other, -1, _at()))
        return self._op("sub", other)

    def __mul__(self, other: Any) -> Series:
        return self._op("mul", other)

    def __truediv__(self, other: Any) -> Series:
        return self._op("div", other)

    __hash__ = None  # type: ignore[assignment]

    def is_null(self) -> Series:
        """True where the value is missing."""
        return self._op("is_null")

    def is_not_null(self) -> Series:
        """True where there is a value."""
        return self._op("is_not_null")

    def when_null_then(self, other: Any) -> Series:
        """The value, or `other` where it is missing."""
        return self._op("coalesce", other)

    def is_in(self, codes: Codelist | Sequence[str]) -> Series:
        """True where the code is in the codelist (or list of codes); a codelist's system must
        match the column's."""
        at = _at()
        codelist = codes if isinstance(codes, Codelist) else Codelist.of(codes)
        if self.node.type in CODE_TYPES:
            try:
                check_for_column(codelist.codes, self.node.type, codelist.source)
            except UserError as error:
                raise n.problem(at, str(error)) from None
        return Series(n.IsIn(self.node, codelist.codes, codelist.source, at=at))

    # dates
    @property
    def year(self) -> Series:
        """The year of a date, as a whole number."""
        return self._op("year")

    @property
    def month(self) -> Series:
        """The month of a date, 1 to 12."""
        return self._op("month")

    def is_before(self, other: Any) -> Series:
        """True where the date is before `other` (a date, or another date value)."""
        return self._op("lt", other)

    def is_on_or_before(self, other: Any) -> Series:
        """True where the date is `other` or before it."""
        return self._op("le", other)

    def is_after(self, other: Any) -> Series:
        """True where the date is after `other`."""
        return self._op("gt", other)

    def is_on_or_after(self, other: Any) -> Series:
        """True where the date is `other` or after it."""
        return self._op("ge", other)

    def is_on_or_between(self, first: Any, last: Any) -> Series:
        """On `first`, on `last` or between them."""
        return self._op("ge", first) & self._op("le", last)

    def is_during(self, interval: Any) -> Series:
        """Inside a measure's interval: `INTERVAL`."""
        return self.is_on_or_between(interval.start_date, interval.end_date)

    def days_until(self, other: Any) -> Series:
        """Whole days from this date to `other`."""
        return self._op("days_between", other)

    def months_until(self, other: Any) -> Series:
        """Whole calendar months from this date to `other`."""
        return self._op("months_between", other)

    def years_until(self, other: Any) -> Series:
        """Whole years from this date to `other` (an age, from a date of birth)."""
        return self._op("years_between", other)

    # per-patient aggregates of a column with many rows per patient
    def _aggregate(self, op: str) -> Series:
        return Series(n.Aggregate(op, self.node, at=_at()))

    def minimum_for_patient(self) -> Series:
        """Each patient's smallest value (of a table with many rows per patient)."""
        return self._aggregate("minimum")

    def maximum_for_patient(self) -> Series:
        """Each patient's largest value."""
        return self._aggregate("maximum")

    def sum_for_patient(self) -> Series:
        """The sum of each patient's values."""
        return self._aggregate("sum")

    def mean_for_patient(self) -> Series:
        """The mean of each patient's values."""
        return self._aggregate("mean")

    def count_distinct_for_patient(self) -> Series:
        """How many different values each patient has."""
        return self._aggregate("count_distinct")


class _Interval:
    """The interval a measure is being computed for: INTERVAL.start_date, INTERVAL.end_date."""

    @property
    def start_date(self) -> Series:
        return Series(n.IntervalDate("start", at=_at()))

    @property
    def end_date(self) -> Series:
        return Series(n.IntervalDate("end", at=_at()))


INTERVAL = _Interval()


# ---- frames ----------------------------------------------------------------------------------


class Frame:
    def __init__(self, node: n.Frame) -> None:
        self._node = node

    @property
    def node(self) -> n.Frame:
        return self._node

    def __getattr__(self, name: str) -> Series:
        if name.startswith("_"):
            raise AttributeError(name)
        return Series(n.Column(self._node, name, at=_at()))

    def __repr__(self) -> str:
        return f"<frame of {n.table_of(self._node)}>"

    def where(self, condition: Series | bool) -> Frame:
        """Only the rows where `condition` holds."""
        at = _at()
        return Frame(n.Where(self._node, _literal(condition, None, at), at=at))

    def except_where(self, condition: Series) -> Frame:
        """The rows where `condition` is false or unknown: `where`'s opposite, keeping nulls."""
        at = _at()
        keep = n.Apply(
            "or",
            (
                n.Apply("not", (condition.node,), at=at),
                n.Apply("is_null", (condition.node,), at=at),
            ),
            at=at,
        )
        return Frame(n.Where(self._node, keep, at=at))

    def sort_by(self, *keys: Series) -> Frame:
        """The rows in order of `keys`, for `first_for_patient` and `last_for_patient`."""
        return Frame(n.SortBy(self._node, tuple(k.node for k in keys), at=_at()))

    def first_for_patient(self) -> Frame:
        """Each patient's first row in the sort order: one row per patient."""
        return Frame(n.PickOne(self._node, "first", at=_at()))

    def last_for_patient(self) -> Frame:
        """Each patient's last row in the sort order: one row per patient."""
        return Frame(n.PickOne(self._node, "last", at=_at()))

    def exists_for_patient(self) -> Series:
        """True for each patient with at least one row."""
        return Series(n.Aggregate("exists", self._node, at=_at()))

    def count_for_patient(self) -> Series:
        """How many rows each patient has (0 for none)."""
        return Series(n.Aggregate("count", self._node, at=_at()))


class PatientsTable(Frame):
    def age_on(self, day: Any) -> Series:
        """Age in whole years on `day`, from the month of birth (taken as its first day)."""
        at = _at()
        born = n.Column(self.node, "date_of_birth", at=at)
        return Series(n.Apply("years_between", (born, _date(day, at)), at=at))


class RegistrationsTable(Frame):
    def for_patient_on(self, day: Any) -> Frame:
        """The registration each patient had on `day` (the latest to start, if several). A
        registration holds from its `start_date` to its `end_date`, both days included (as
        FHIR's Period: a patient deregistered on 31 March was registered that day)."""
        at = _at()
        on = _date(day, at)
        start = n.Column(self.node, "start_date", at=at)
        end = n.Column(self.node, "end_date", at=at)
        current = n.Apply(
            "and",
            (
                n.Apply("le", (start, on), at=at),
                n.Apply(
                    "or",
                    (n.Apply("is_null", (end,), at=at), n.Apply("ge", (end, on), at=at)),
                    at=at,
                ),
            ),
            at=at,
        )
        filtered = n.Where(self.node, current, at=at)
        # Ties are broken by the columns the definition reads (as for any pick): sorting by
        # the practice too would read it, which the agreement may not grant.
        keys = (n.Column(filtered, "start_date", at=at),)
        return Frame(n.PickOne(n.SortBy(filtered, keys, at=at), "last", at=at))


patients = PatientsTable(n.SelectTable("patients"))
practice_registrations = RegistrationsTable(n.SelectTable("practice_registrations"))
clinical_events = Frame(n.SelectTable("clinical_events"))
medications = Frame(n.SelectTable("medications"))
immunisations = Frame(n.SelectTable("immunisations"))
allergies = Frame(n.SelectTable("allergies"))
appointments = Frame(n.SelectTable("appointments"))
referrals = Frame(n.SelectTable("referrals"))
assert set(TABLES) == {
    "patients",
    "practice_registrations",
    "clinical_events",
    "medications",
    "immunisations",
    "allergies",
    "appointments",
    "referrals",
}


# ---- case ------------------------------------------------------------------------------------


@dataclass
class _When:
    condition: Series
    value: Any = None
    at: str | None = None

    def then(self, value: Any) -> _When:
        return _When(self.condition, value, _at())


def when(condition: Series) -> _When:
    """A condition for `case`, given its value with `.then(value)`."""
    return _When(condition, at=_at())


def case(*cases: _When, otherwise: Any = None) -> Series:
    """The value of the first `when` whose condition holds, else `otherwise` (or null)."""
    at = _at()
    values = [c.value for c in cases] + [otherwise]
    like = next((v.node for v in values if isinstance(v, Series)), None)
    pairs = tuple((c.condition.node, _literal(c.value, like, c.at or at)) for c in cases)
    default = None if otherwise is None else _literal(otherwise, like, at)
    return Series(n.Case(pairs, default, at=at))


# ---- what a definition produces -------------------------------------------------------------


class Dataset:
    """One row per patient in the population: an intermediate that stays inside the
    environment. What leaves is aggregate tables of it (`add_table`) and measures."""

    population: n.Series | None
    variables: dict[str, n.Series]
    tables: list[n.AggregateTable]
    disclosure: str | None

    def __init__(self) -> None:
        object.__setattr__(self, "population", None)
        object.__setattr__(self, "variables", {})
        object.__setattr__(self, "tables", [])
        object.__setattr__(self, "disclosure", None)

    def define_population(self, condition: Series) -> None:
        """Who is in the dataset: the patients for whom `condition` is true."""
        object.__setattr__(self, "population", condition.node)

    def configure_disclosure_control(self, rule: str) -> None:
        """`round5` (redact 7 or fewer, round to 5; the default) or `midpoint6`."""
        object.__setattr__(self, "disclosure", rule)

    def __setattr__(self, name: str, value: Any) -> None:
        at = _at()
        check_name(name, "a variable", at)
        if not isinstance(value, Series):
            raise n.problem(at, f"dataset.{name} must be a series, not {type(value).__name__}")
        if value.node.domain() != n.PATIENT:
            raise n.problem(
                at,
                f"dataset.{name} has many values per patient: reduce it to one, for example "
                "with .first_for_patient(), .count_for_patient() or .exists_for_patient()",
            )
        self.variables[name] = value.node

    def __getattr__(self, name: str) -> Series:
        variables = self.__dict__.get("variables", {})
        if name in variables:
            return Series(variables[name])
        raise AttributeError(name)

    def add_table(
        self,
        name: str,
        by: Sequence[str],
        statistics: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Release the number of patients in each group of the `by` variables, with optional
        statistics (mean, median, sd) of numeric variables in each group."""
        at = _at()
        check_name(name, "a table", at)
        stats = tuple((v, s) for v, listed in (statistics or {}).items() for s in listed)
        self.tables.append(n.AggregateTable(name, tuple(by), stats, at=at))


class Measures:
    """Rates over time: numerator / denominator for each interval and group."""

    def __init__(self) -> None:
        self.measures: list[n.Measure] = []
        self.disclosure: str | None = None
        self._defaults: dict[str, Any] = {}

    def define_defaults(self, **defaults: Any) -> None:
        """Defaults (numerator, denominator, group_by, intervals) for every measure defined
        after."""
        unknown = set(defaults) - {"numerator", "denominator", "group_by", "intervals"}
        if unknown:
            raise n.problem(_at(), f"unknown measure defaults: {', '.join(sorted(unknown))}")
        self._defaults.update(defaults)

    def configure_disclosure_control(self, rule: str) -> None:
        """`round5` (redact 7 or fewer, round to 5; the default) or `midpoint6`."""
        self.disclosure = rule

    def define_measure(
        self,
        name: str,
        numerator: Series | None = None,
        denominator: Series | None = None,
        group_by: Mapping[str, Series] | None = None,
        intervals: n.Intervals | None = None,
    ) -> None:
        """A rate, numerator / denominator, for each interval and each group of `group_by`; the
        numerator counts patients also in the denominator."""
        at = _at()
        check_name(name, "a measure", at)
        numerator = numerator if numerator is not None else self._defaults.get("numerator")
        denominator = denominator if denominator is not None else self._defaults.get("denominator")
        intervals = intervals if intervals is not None else self._defaults.get("intervals")
        groups = dict(group_by if group_by is not None else self._defaults.get("group_by", {}))
        missing = [
            role
            for role, given in (
                ("numerator", numerator),
                ("denominator", denominator),
                ("intervals", intervals),
            )
            if given is None
        ]
        if missing or numerator is None or denominator is None or intervals is None:
            raise n.problem(at, f"measure {name!r} needs {', '.join(missing)}")
        for group in groups:
            check_name(group, "a group_by", at)
        self.measures.append(
            n.Measure(
                name,
                numerator.node,
                denominator.node,
                tuple((k, v.node) for k, v in groups.items()),
                intervals,
                at=at,
            )
        )


def definition_of(dataset: Dataset | None, measures: Measures | None) -> n.Definition:
    """The query graph a definition file made."""
    rules = {
        rule
        for rule in (
            dataset.disclosure if dataset else None,
            measures.disclosure if measures else None,
        )
        if rule
    }
    if len(rules) > 1:
        raise n.DefinitionError(
            "the dataset and the measures ask for different disclosure control rules "
            f"({', '.join(sorted(rules))}); configure one"
        )
    return n.Definition(
        population=dataset.population if dataset else None,
        variables=tuple(dataset.variables.items()) if dataset else (),
        measures=tuple(measures.measures) if measures else (),
        tables=tuple(dataset.tables) if dataset else (),
        disclosure=rules.pop() if rules else "round5",
    )
