"""Measures compiled over spans of intervals, never a row per patient and interval.

A measure's intervals are consecutive (months or weeks), numbered k = 0 .. K-1, so their first
and last days both increase with k. A condition comparing a row's date with INTERVAL's start or
end therefore holds for a run of consecutive intervals, [lo, hi), worked out from the date with
calendar arithmetic; `and` intersects runs and `or` with a condition that does not mention
INTERVAL widens one to all. So a frame filtered by such a condition is its rows each with the
span of intervals it counts in (a registration: the months whose first day it covers; an issue:
the month it falls in), and a row picked per patient and interval is picked per span: for the
many patients with one candidate row it is that row over its span; the others' time is cut at
every start and end of their rows and each piece gets the row current in it.

Each patient's time is then cut into segments at every span boundary of every such frame the
measure reads; within a segment every per-patient value is constant (a count of rows is a
running sum of +1 where a row's span begins and -1 where it ends), so the numerator, denominator
and groups are computed once per segment. A segment adds its counts to every interval it covers
by adding them where it begins and taking them away where it ends, per group, and a running sum
over the intervals gives the totals. Work and memory grow with the rows and spans, not with
patients times intervals.

A measure this cannot express (INTERVAL inside date arithmetic, `or` between two conditions on
INTERVAL, a minimum or sum over rows filtered by INTERVAL, ...) is compiled per patient and
interval instead (`sql.measure_by_interval`): the same answer, more slowly.
"""

from __future__ import annotations

from datetime import timedelta

from gpdpr.tre.engines.sql import (
    INTERVALS,
    PATIENTS,
    Compiler,
    Dialect,
    Query,
    Row,
    as_count,
    group_names,
    interval_rows,
)
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import PATIENT_ID, view_name

LO, HI = "span_lo", "span_hi"  # a span of intervals: k from LO up to, not including, HI
FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq"}


class NotSpannable(Exception):
    """The measure uses INTERVAL in a way spans cannot carry."""


def varies(node: n.Node, frame: n.Frame) -> bool:
    """Whether a value on the rows of `frame` depends on the interval. The rows' own columns do
    not, though the rows were picked out by INTERVAL; a per-patient value of a frame filtered
    by it does."""

    def work_out() -> bool:
        if isinstance(node, n.IntervalDate):
            return True
        if isinstance(node, n.Column):
            return node.frame.rows() not in n.lineage(frame) and n.uses_interval(node.frame)
        if isinstance(node, n.Aggregate):
            return n.uses_interval(node)
        return any(varies(child, frame) for child in n.children(node))

    return n.remembered_for(node, "varies", frame, work_out)


class SpanCompiler(Compiler):
    """The compiler of a measure over spans: values that do not depend on the interval are
    compiled as for a dataset; those that do, over spans of intervals k (LO <= k < HI)."""

    def __init__(self, dialect: Dialect, used: dict[str, set[str]], intervals: n.Intervals):
        super().__init__(dialect, used)
        self.intervals = intervals
        self.count = intervals.count
        rows = interval_rows(intervals)
        # Every interval date lies between these: a date outside compares with all of them as
        # these do, so dates are first brought within (and one day either side stays valid).
        self.floor = rows[0][0] - timedelta(days=1)
        self.ceiling = rows[-1][1] + timedelta(days=1)
        self.spanned: dict[n.Frame, str] = {}  # a frame filtered by INTERVAL -> its CTE
        self.picked: dict[n.PickOne, str] = {}  # a row per patient and span -> its CTE
        self.counts: dict[n.Frame, tuple[int, bool]] = {}  # rows counted -> (number, all rows?)
        self.joined: dict[n.PickOne, str] = {}  # picks joined to the segment -> alias
        self.segment: Row | None = None  # the row context of a segment, once made
        self.roots: list[n.Series] = []  # the measure's values, whose picks' columns are read
        self._read_of_picks: dict[n.Frame, set[str]] | None = None
        self.by_interval = False  # whether a segment must be cut into single intervals

    # ---- which intervals a row counts in ------------------------------------------------

    def starts_by(self, day: str) -> str:
        """F(day): how many intervals (continuing past the last) start on or before `day`, a
        day brought within [floor, ceiling]."""
        start, d = self.intervals.start, self.d
        first = d.literal(start, "date")
        if self.intervals.unit == "weeks":
            within = f"cast(floor({d.days_between(first, day)} / 7.0) as bigint) + 1"
        else:
            months = f"((year({day}) - {start.year}) * 12 + month({day}) - {start.month})"
            if start.day == 1:
                within = f"{months} + 1"
            elif start.day <= 28:
                within = f"{months} + (case when day({day}) >= {start.day} then 1 else 0 end)"
            else:  # months shorter than the start day start on their last day
                began = d.add_months(first, months)
                within = f"{months} + (case when {day} >= {began} then 1 else 0 end)"
        return f"(case when {day} < {first} then cast(0 as bigint) else {within} end)"

    def _clamped(self, day: str) -> str:
        floor, ceiling = (self.d.literal(x, "date") for x in (self.floor, self.ceiling))
        return f"least(greatest({day}, {floor}), {ceiling})"

    def span(self, condition: n.Series, row: Row) -> tuple[str, str]:
        """(lo, hi): the intervals k, lo <= k < hi, for which `condition` holds on the row;
        lo >= hi if none (a null condition holds for none)."""
        if not varies(condition, row.frame):
            holds = self.expr(condition, row)
            return f"(case when {holds} then 0 else {self.count} end)", str(self.count)
        if isinstance(condition, n.Apply) and condition.op == "and":
            (lo1, hi1), (lo2, hi2) = (self.span(a, row) for a in condition.args)
            return f"greatest({lo1}, {lo2})", f"least({hi1}, {hi2})"
        if isinstance(condition, n.Apply) and condition.op == "or":
            plain = [a for a in condition.args if not varies(a, row.frame)]
            if not plain:
                raise NotSpannable("`or` between two conditions on INTERVAL")
            other = next(a for a in condition.args if a is not plain[0])
            either = self.expr(plain[0], row)
            lo, hi = self.span(other, row)
            return (
                f"(case when {either} then 0 else {lo} end)",
                f"(case when {either} then {self.count} else {hi} end)",
            )
        if isinstance(condition, n.Apply) and condition.op in FLIPPED:
            a, b = condition.args
            op = condition.op
            if isinstance(a, n.IntervalDate) and not varies(b, row.frame):
                return self._compared(a.which, op, self.expr(b, row))
            if isinstance(b, n.IntervalDate) and not varies(a, row.frame):
                return self._compared(b.which, FLIPPED[op], self.expr(a, row))
        raise NotSpannable("INTERVAL used other than compared with a date")

    def _compared(self, which: str, op: str, day: str) -> tuple[str, str]:
        """The intervals k whose start (or end) `op` day: e.g. start_k <= day holds for
        k < F(day), end_k <= day for k < F(day + 1) - 1 (end_k is start_k+1 less a day)."""
        c = self._clamped(day)
        before, after = self.d.add_days(c, "-1"), self.d.add_days(c, "1")
        f = self.starts_by
        if which == "start":
            bounds = {
                "le": (None, f(c)),
                "lt": (None, f(before)),
                "ge": (f(before), None),
                "gt": (f(c), None),
                "eq": (f(before), f(c)),
            }[op]
        else:
            bounds = {
                "le": (None, f"{f(after)} - 1"),
                "lt": (None, f"{f(c)} - 1"),
                "ge": (f"{f(c)} - 1", None),
                "gt": (f"{f(after)} - 1", None),
                "eq": (f"{f(c)} - 1", f"{f(after)} - 1"),
            }[op]
        lo, hi = bounds
        # A null date compares as null: the row counts in no interval.
        lo_sql = f"greatest({lo}, 0)" if lo is not None else "0"
        hi_sql = f"least({hi}, {self.count})" if hi is not None else str(self.count)
        return f"(case when {day} is null then {self.count} else {lo_sql} end)", hi_sql

    # ---- frames over spans --------------------------------------------------------------

    def spanned_frame(self, frame: n.Frame) -> str:
        """A CTE of the frame's rows (patient, columns read) with their span, non-empty."""
        if frame not in self.spanned:
            self.spanned[frame] = self._spanned_frame(frame)
        return self.spanned[frame]

    def _spanned_frame(self, frame: n.Frame) -> str:
        if isinstance(frame, n.SortBy):
            return self.spanned_frame(frame.source)
        if not isinstance(frame, n.Where) or frame.source.is_patient_frame():
            raise NotSpannable("a frame of one row per patient filtered by INTERVAL")
        row = Row("s", frame.source.rows(), None)
        if n.uses_interval(frame.source):
            source, lo, hi = self.spanned_frame(frame.source), f"s.{LO}", f"s.{HI}"
        else:
            source, lo, hi = self.frame(frame.source).name, "0", str(self.count)
        # The conditions that do not mention INTERVAL filter the rows before any span is made.
        conditions = n.conjuncts(frame.condition)
        plain = [self.expr(c, row) for c in conditions if not varies(c, row.frame)]
        for condition in (c for c in conditions if varies(c, row.frame)):
            mine_lo, mine_hi = self.span(condition, row)
            lo, hi = f"greatest({lo}, {mine_lo})", f"least({hi}, {mine_hi})"
        columns = [PATIENT_ID, *sorted(self.used.get(n.table_of(frame), ()))]
        listed = ", ".join(f"s.{c}" for c in columns)
        where = f" where {' and '.join(plain)}" if plain else ""
        spans = (
            f"select {listed}, {lo} as {LO}, {hi} as {HI} from {source} s{row.join_sql()}{where}"
        )
        return self._cte("spans", f"select * from ({spans}) s where {LO} < {HI}")

    def picked_frame(self, frame: n.PickOne) -> str:
        """A CTE of one row per patient and span of intervals (patient, columns, span): the
        first or last of the rows whose span covers it."""
        if frame not in self.picked:
            self.picked[frame] = self._picked_frame(frame)
        return self.picked[frame]

    def _picked_frame(self, frame: n.PickOne) -> str:
        keys = n.sort_keys(frame.source)
        assert keys is not None
        row = Row("s", frame.source.rows(), None)
        if any(varies(k, row.frame) for k in keys):
            raise NotSpannable("sorting by a value that depends on INTERVAL")
        spans = self.spanned_frame(frame.source)
        every, ordering = self._ordering(frame, row)
        key_fields = self._key_fields(ordering, frame.source)
        # Ties are broken by every column read from the table; only those read from this pick
        # are carried on.
        read = self._read_of_pick(frame)
        columns = [c for c in every if c in read]
        extras = "".join(f", {sql} as {name}" for name, sql in key_fields)
        rows = self._cte("candidates", f"select s.*{extras} from {spans} s")
        q = self.d.column
        # Most patients have one candidate row: it is their pick over its whole span.
        counted = self._cte(
            "counted",
            f"select {PATIENT_ID} from {rows} where {PATIENT_ID} is not null "
            f"group by {PATIENT_ID} having count(*) > 1",
        )
        several = self._cte(
            "several", f"select * from {rows} where {PATIENT_ID} in (select * from {counted})"
        )
        # The others' time cut at every start and end of their rows.
        bounds = (
            f"select {PATIENT_ID}, {LO} as boundary from {several} union "
            f"select {PATIENT_ID}, {HI} from {several}"
        )
        pieces = (
            f"select {PATIENT_ID}, boundary as {LO}, lead(boundary) over "
            f"(partition by {PATIENT_ID} order by boundary) as {HI} from ({bounds}) b"
        )
        value = self.d.struct([(f"c{i}", q(c)) for i, c in enumerate(columns)] or [("c", "1")])
        order = self.d.struct([(name, f"r.{name}") for name, _ in key_fields])
        chosen = "min_by" if frame.position == "first" else "max_by"
        picked = (
            f"select p.{PATIENT_ID}, p.{LO}, p.{HI}, {chosen}({value}, {order}) as picked "
            f"from ({pieces}) p join {several} r on r.{PATIENT_ID} = p.{PATIENT_ID} "
            f"and r.{LO} <= p.{LO} and p.{LO} < r.{HI} where p.{HI} is not null "
            f"group by p.{PATIENT_ID}, p.{LO}, p.{HI}"
        )
        out = ", ".join([PATIENT_ID, LO, HI, *(q(c) for c in columns)])
        unpacked = ", ".join(
            [PATIENT_ID, LO, HI, *(f"picked.c{i} as {q(c)}" for i, c in enumerate(columns))]
        )
        return self._cte(
            "picked",
            f"select {out} from {rows} where {PATIENT_ID} not in (select * from {counted}) "
            "union all "
            f"select {unpacked} from ({picked}) several",
        )

    def _read_of_pick(self, frame: n.Frame) -> set[str]:
        """The columns the measure's values read of a frame (found once, for every frame)."""
        if self._read_of_picks is None:
            self._read_of_picks = {}
            for node in n.walk(*self.roots):
                if isinstance(node, n.Column):
                    self._read_of_picks.setdefault(node.frame, set()).add(node.name)
        return self._read_of_picks.get(frame, set())

    # ---- values per segment -------------------------------------------------------------

    def expr(self, node: n.Series, row: Row) -> str:
        if row is not self.segment:
            if varies(node, row.frame):
                raise NotSpannable("INTERVAL inside a condition, key or value of rows")
            return super().expr(node, row)
        if not n.uses_interval(node):
            return super().expr(node, row)
        if isinstance(node, n.IntervalDate):
            self.by_interval = True
            return f"g.interval_{node.which}"
        if isinstance(node, n.Aggregate) and node.op in n.AGGREGATES_OF_FRAMES:
            frame = node.source
            assert isinstance(frame, n.Frame)
            if isinstance(frame, n.PickOne):
                present = f"({self._join_pick(frame)}.{PATIENT_ID} is not null)"
                if node.op == "exists":
                    return present
                return f"(case when {present} then cast(1 as bigint) else cast(0 as bigint) end)"
            rows = frame.rows()
            index, every = self.counts.get(rows, (len(self.counts), False))
            self.counts[rows] = (index, every or node.op == "count")
            self.spanned_frame(rows)
            if node.op == "exists":
                return f"(g.c{index} > 0)"
            return f"g.c{index}"
        if isinstance(node, n.Column) and isinstance(node.frame, n.PickOne):
            return f"{self._join_pick(node.frame)}.{node.name}"
        if isinstance(node, (n.Apply, n.Case, n.IsIn)):
            return super().expr(node, row)
        raise NotSpannable("a per-patient value over rows filtered by INTERVAL")

    def _join_pick(self, frame: n.PickOne) -> str:
        self.picked_frame(frame)
        if frame not in self.joined:
            self.joined[frame] = f"j{len(self.joined)}"
        return self.joined[frame]

    def segments(self, base: n.Frame | None) -> str:
        """Each patient's time cut where any span the measure reads begins or ends: (patient,
        span, c0.. the rows of each counted frame covering it, weight 1). Rows counted in one
        interval only do not cut it: the segment's value in that interval is taken away
        (weight -1) and the value with them put in (weight 1), so that most patients' time
        need not be sorted."""
        counts = sorted(self.counts.items(), key=lambda item: item[1][0])
        # Only where the spans that never overlap decide which time counts at all: a counted
        # frame the denominator needs a row of must cut time where its rows are.
        by_points = base is None or base in self.joined
        singles = []
        cut_by = {}
        for frame, (index, every) in counts:
            spans = self.spanned_frame(frame)
            if not every:  # only whether there is a row: one row per patient and span will do
                spans = f"(select distinct {PATIENT_ID}, {LO}, {HI} from {spans} s)"
            if by_points:
                ones = "".join(f", {int(i == index)} as c{i}" for i in range(len(counts)))
                singles.append(
                    f"select {PATIENT_ID}, {LO} as k{ones} from {spans} s where {HI} = {LO} + 1"
                )
                spans = f"(select * from {spans} s where {HI} > {LO} + 1)"
            cut_by[frame] = spans
        segments = self._cut(base, counts, cut_by)
        listed = [PATIENT_ID, LO, HI, *(f"c{i}" for i in range(len(counts)))]
        listed += ["interval_start", "interval_end"] if self.by_interval else []
        whole = f"select {', '.join(listed)}, 1 as weight from {segments}"
        if not singles:
            return self._cte("signed", whole)
        sums = "".join(f", sum(c{i}) as c{i}" for i in range(len(counts)))
        points = self._cte(
            "points",
            f"select {PATIENT_ID}, k{sums} from ({' union all '.join(singles)}) p "
            f"group by {PATIENT_ID}, k",
        )
        more = "".join(f", g.c{i} + p.c{i} as c{i}" for i in range(len(counts)))
        before = "".join(f", g.c{i} as b{i}" for i in range(len(counts)))
        dates = ", g.interval_start, g.interval_end" if self.by_interval else ""
        within = self._cte(
            "within",
            f"select g.{PATIENT_ID}, p.k{more}{before}{dates} from {points} p join {segments} g "
            f"on g.{PATIENT_ID} = p.{PATIENT_ID} and g.{LO} <= p.k and p.k < g.{HI}",
        )
        values = "".join(f", c{i}" for i in range(len(counts))) + dates.replace("g.", "")
        olds = "".join(f", b{i}" for i in range(len(counts))) + dates.replace("g.", "")
        return self._cte(
            "signed",
            f"{whole} union all "
            f"select {PATIENT_ID}, k, k + 1{values}, 1 from {within} union all "
            f"select {PATIENT_ID}, k, k + 1{olds}, -1 from {within}",
        )

    def _cut(
        self,
        base: n.Frame | None,
        counts: list[tuple[n.Frame, tuple[int, bool]]],
        cut_by: dict[n.Frame, str],
    ) -> str:
        """The segments: spans that never overlap, cut by the counted rows' spans."""
        zeros = "".join(f", 0 as c{i}" for i in range(len(counts)))

        def points(source: str, at: str, change: int | None, mine: int = -1) -> str:
            deltas = "".join(
                f", {change if change is not None and i == mine else 0} as c{i}"
                for i in range(len(counts))
            )
            return f"select {PATIENT_ID}, {at} as boundary{deltas} from {source} src"

        # Spans that never overlap within a patient (each pick's; all of time, for everyone,
        # unless the denominator needs a row of one of the frames), and counted rows' spans.
        disjoint = [self.picked[frame] for frame in self.joined]
        if base is None:
            disjoint.append(
                f"(select {PATIENT_ID}, 0 as {LO}, {self.count} as {HI} "
                f"from {view_name('patients')})"
            )
        counted = [cut_by[frame] for frame, _ in counts]
        if len(disjoint) == 1 and not counted:  # nothing to cut them
            whole = f"select {PATIENT_ID}, {LO}, {HI} from {disjoint[0]} s"
            return self._by_interval(self._cte("segments", whole), counts)
        plain = ""
        if len(disjoint) == 1:
            # Only the patients with counted rows need their spans cut; the others' are whole.
            ones = " union ".join(f"select {PATIENT_ID} from {c} s" for c in counted)
            who = self._cte("counted_patients", f"{ones}")
            mine = f"(select {PATIENT_ID} from {who} where {PATIENT_ID} is not null)"
            plain = (
                f"select {PATIENT_ID}, {LO}, {HI}{zeros} from {disjoint[0]} s "
                f"where {PATIENT_ID} not in {mine} union all "
            )
            disjoint = [f"(select * from {disjoint[0]} s where {PATIENT_ID} in {mine})"]
        parts = []
        for index, spans in enumerate(counted):
            parts += [points(spans, LO, 1, index), points(spans, HI, -1, index)]
        for spans in disjoint:
            parts += [points(spans, LO, None), points(spans, HI, None)]
        # Boundaries met more than once make empty segments (the next boundary is the same),
        # dropped; the running sums take in every change at a boundary (a range frame).
        order = f"partition by {PATIENT_ID} order by boundary"
        window = f"over ({order} range between unbounded preceding and current row)"
        running = "".join(f", sum(c{i}) {window} as c{i}" for i in range(len(counts)))
        cut = (
            f"select {PATIENT_ID}, boundary as {LO}, lead(boundary) over ({order}) as {HI}"
            f"{running} from ({' union all '.join(parts)}) c"
        )
        segments = self._cte("segments", f"{plain}select * from ({cut}) c where {HI} > {LO}")
        return self._by_interval(segments, counts)

    def _by_interval(self, segments: str, counts: list[tuple[n.Frame, tuple[int, bool]]]) -> str:
        """The segments cut into single intervals, with their dates, if the measure's values
        use INTERVAL's dates themselves."""
        if not self.by_interval:
            return segments
        listed = "".join(f", g.c{i}" for i in range(len(counts)))
        return self._cte(
            "segments",
            f"select g.{PATIENT_ID}, i.k as {LO}, i.k + 1 as {HI}{listed}, i.interval_start, "
            f"i.interval_end from {segments} g join {INTERVALS} i "
            f"on i.k >= g.{LO} and i.k < g.{HI}",
        )


def measure_sql(definition: n.Definition, measure: n.Measure, dialect: Dialect) -> str:
    """The measure over spans of intervals; NotSpannable if it cannot be."""
    return measure_query(definition, measure, dialect).text()


def measure_query(definition: n.Definition, measure: n.Measure, dialect: Dialect) -> Query:
    """measure_sql, as its parts."""
    compiler = SpanCompiler(dialect, n.columns_used(definition), measure.intervals)
    roots = [measure.numerator, measure.denominator, *(s for _, s in measure.group_by)]
    # The patients view is joined to the segments only for its columns: a patient's key is
    # known (not null) only if they are in it (engines.keyed).
    reads_patients = any(_reads_patients(root) for root in roots)
    row = Row("p" if reads_patients else "g", PATIENTS, None)
    compiler.segment = row
    compiler.roots = roots
    numerator = as_count(compiler.expr(measure.numerator, row), measure.numerator.type)
    denominator = as_count(compiler.expr(measure.denominator, row), measure.denominator.type)
    groups = [
        (name, compiler.expr(series, row))
        for name, (_, series) in zip(group_names(measure), measure.group_by, strict=True)
    ]
    base = _requires(measure.denominator, compiler)
    segments = compiler.segments(base)
    picks = "".join(
        f" {'join' if frame == base else 'left join'} {compiler.picked[frame]} {alias} "
        f"on {alias}.{PATIENT_ID} = g.{PATIENT_ID} and {alias}.{LO} <= g.{LO} "
        f"and g.{LO} < {alias}.{HI}"
        for frame, alias in compiler.joined.items()
    )
    patients = (
        f" join {view_name('patients')} p on p.{PATIENT_ID} = g.{PATIENT_ID}"
        if reads_patients
        else ""
    )
    per_segment = compiler._cte(
        "per_segment",
        f"select g.{LO}, g.{HI}, g.weight"
        + "".join(f", {sql} as {name}" for name, sql in groups)
        + f", {numerator} as numerator, {denominator} as denominator "
        f"from {segments} g{patients}{picks}{row.join_sql()} where g.{PATIENT_ID} is not null",
    )
    names = [name for name, _ in groups]
    listed = "".join(f"{name}, " for name in names)
    k = compiler.count
    # Each counted segment adds to the intervals it covers: its counts where it begins, less
    # them where it ends; and every group has a row for every interval, so that a running sum
    # over the intervals gives each one's totals.
    sign = "(case when side = 0 then weight else -weight end)"
    changes = (
        f"select {listed}(case when side = 0 then {LO} else {HI} end) as k, "
        f"{sign} * numerator as numerator, {sign} * denominator as denominator, "
        f"{sign} as segments from {per_segment} cross join (select 0 as side union all "
        f"select 1) sides where denominator > 0 and (side = 0 or {HI} < {k}) union all "
        f"select {listed}i.k, 0, 0, 0 from (select distinct {', '.join(names) or '1 as one'} "
        f"from {per_segment} where denominator > 0) d cross join {INTERVALS} i"
    )
    summed = (
        f"select {listed}k, sum(numerator) as numerator, sum(denominator) as denominator, "
        f"sum(segments) as segments from ({changes}) c group by {listed}k"
    )
    partition = f"partition by {', '.join(names)} " if names else ""
    window = f"over ({partition}order by k rows between unbounded preceding and current row)"
    running = (
        f"select {listed}k, sum(numerator) {window} as numerator, "
        f"sum(denominator) {window} as denominator, sum(segments) {window} as segments "
        f"from ({summed}) s"
    )
    keys = ["interval_start", "interval_end", *names]
    ordered = ", ".join(f"{key} asc nulls last" for key in keys)
    return compiler.query(
        "select i.interval_start, i.interval_end"
        + "".join(f", t.{g} as {g}" for g in names)
        + ", cast(t.numerator as bigint) as numerator, "
        f"cast(t.denominator as bigint) as denominator from ({running}) t "
        f"join {INTERVALS} i on i.k = t.k where t.segments > 0 order by {ordered}"
    )


def _reads_patients(node: n.Node) -> bool:
    """Whether a per-patient value reads a column of the patients view itself (values from
    other frames are joined by patient)."""

    def work_out() -> bool:
        if isinstance(node, n.Column):
            return node.frame == PATIENTS
        if isinstance(node, n.Aggregate):
            return False
        return any(_reads_patients(child) for child in n.children(node))

    return n.remembered(node, "reads_patients", work_out)


def _requires(denominator: n.Series, compiler: SpanCompiler) -> n.Frame | None:
    """A frame over spans that the denominator needs a row of (it is `frame.exists_for_patient()
    & ...`), so that only its spans need segments: a pick of one row per patient, or rows
    counted."""
    for factor in n.conjuncts(denominator):
        if (
            isinstance(factor, n.Aggregate)
            and factor.op in ("exists", "count")
            and isinstance(factor.source, n.Frame)
            and (factor.source in compiler.joined or factor.source.rows() in compiler.counts)
        ):
            return factor.source
    return None
