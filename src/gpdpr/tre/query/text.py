"""A definition as readable text, for publication: the query graph written back as the query
language a researcher would have typed (`clinical_events.where(...).exists_for_patient()`), each
statement with the file and line of the researcher's own source it came from, and a one-line
summary of what it asks for a reader who does not read code.

The text is made from the graph alone (the published `definition.json`), so what a reader sees is
what ran: no part of it is the researcher's own file. Every value from the definition is written
as a Python literal (`repr`), so the text is plain text; pages escape it like any other.
"""

from __future__ import annotations

from datetime import date

from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.codelists import ecl_of

INFIX = {
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "and": "&",
    "or": "|",
}
METHODS = {  # an operation written as a method of its first value, with the rest as arguments
    "is_null": "is_null",
    "is_not_null": "is_not_null",
    "coalesce": "when_null_then",
    "days_between": "days_until",
    "months_between": "months_until",
    "years_between": "years_until",
}
SHIFTS = {"add_days": "days", "add_months": "months", "add_years": "years"}


def _literal(value: object) -> str:
    if isinstance(value, date):
        return repr(value.isoformat())
    return repr(value)


class _Writer:
    """Writes one definition. A filtered or sorted frame used more than once (a frame sorted by
    its own column, a registration both tested and sorted) is given a name, assigned before the
    first statement that needs it, as a researcher would have written it; so the text is exact:
    run again as the language, it makes the same graph."""

    def __init__(self, definition: n.Definition) -> None:
        self.uses: dict[n.Node, int] = {}
        for node in n.walk(*n.roots(definition)):
            for child in n.children(node):
                self.uses[child] = self.uses.get(child, 0) + 1
        self.names: dict[n.Node, str] = {}
        self.taken: set[str] = set()
        self.lines: list[str] = []

    def frame(self, frame: n.Frame) -> str:
        if isinstance(frame, n.SelectTable):
            return frame.name
        if frame in self.names:
            return self.names[frame]
        if isinstance(frame, n.Where):
            text = f"{self.frame(frame.source)}.where({self.series(frame.condition)})"
        elif isinstance(frame, n.SortBy):
            keys = ", ".join(self.series(k) for k in frame.keys)
            text = f"{self.frame(frame.source)}.sort_by({keys})"
        elif isinstance(frame, n.PickOne):
            text = f"{self.frame(frame.source)}.{frame.position}_for_patient()"
        else:
            raise TypeError(f"no text for {type(frame).__name__}")
        if self.uses.get(frame, 0) < 2:
            return text
        name = self._name(n.table_of(frame))
        self.names[frame] = name
        self.lines.append(_statement(f"{name} = {text}", frame.at))
        return name

    def _name(self, table: str) -> str:
        k = 1
        while f"{table}_{k}" in self.taken:
            k += 1
        self.taken.add(f"{table}_{k}")
        return f"{table}_{k}"

    def operand(self, node: n.Series) -> str:
        """A value inside an operator: bracketed if it is itself an operator's result."""
        text = self.series(node)
        if isinstance(node, n.Apply) and (node.op in INFIX or node.op in ("not", "neg")):
            return f"({text})"
        return text

    def series(self, node: n.Series) -> str:
        """One value of the graph as the language writes it."""
        if isinstance(node, n.Column):
            return f"{self.frame(node.frame)}.{node.name}"
        if isinstance(node, n.Value):
            return _literal(node.value)
        if isinstance(node, n.IntervalDate):
            return f"INTERVAL.{node.which}_date"
        if isinstance(node, n.IsIn):
            expression = ecl_of(node.codelist)
            made = (
                f"codelist_from_ecl({_literal(expression)})"
                if expression is not None
                else f"codelist_from_csv({_literal(node.codelist)})"
            )
            return f"{self.operand(node.series)}.is_in({made})"
        if isinstance(node, n.Apply):
            return self._apply(node)
        if isinstance(node, n.Case):
            whens = [f"when({self.series(c)}).then({self.series(v)})" for c, v in node.cases]
            if node.default is not None:
                whens.append(f"otherwise={self.series(node.default)}")
            return f"case({', '.join(whens)})"
        if isinstance(node, n.Aggregate):
            if isinstance(node.source, n.Frame):
                return f"{self.frame(node.source)}.{node.op}_for_patient()"
            return f"{self.operand(node.source)}.{node.op}_for_patient()"
        raise TypeError(f"no text for {type(node).__name__}")

    def _apply(self, node: n.Apply) -> str:
        args = node.args
        if node.op in INFIX:
            return f"{self.operand(args[0])} {INFIX[node.op]} {self.operand(args[1])}"
        if node.op == "not":
            return f"~{self.operand(args[0])}"
        if node.op == "neg":
            return f"-{self.operand(args[0])}"
        if node.op in ("year", "month"):
            return f"{self.operand(args[0])}.{node.op}"
        if node.op in SHIFTS:
            return f"{self.operand(args[0])} + {SHIFTS[node.op]}({self.series(args[1])})"
        if node.op in METHODS:
            rest = ", ".join(self.series(a) for a in args[1:])
            return f"{self.operand(args[0])}.{METHODS[node.op]}({rest})"
        raise TypeError(f"no text for the operation {node.op}")

    def statement(self, text: str, at: str | None) -> None:
        self.lines.append(_statement(text, at))


def _intervals(intervals: n.Intervals) -> str:
    return f"{intervals.unit}({intervals.count}).starting_on({_literal(intervals.start)})"


def _statement(text: str, at: str | None) -> str:
    return f"{text}  # {at}" if at else text


def definition_text(definition: n.Definition) -> str:
    """The whole definition as the language's statements, one after another, each with the
    researcher's file and line where the graph recorded it."""
    out = _Writer(definition)
    if definition.population is not None or definition.variables or definition.tables:
        out.statement("dataset = Dataset()", None)
    if definition.population is not None:
        population = out.series(definition.population)
        out.statement(f"dataset.define_population({population})", definition.population.at)
    for name, value in definition.variables:
        out.statement(f"dataset.{name} = {out.series(value)}", value.at)
    for table in definition.tables:
        stats = ""
        if table.statistics:
            wanted: dict[str, list[str]] = {}
            for variable, statistic in table.statistics:
                wanted.setdefault(variable, []).append(statistic)
            stats = f", statistics={wanted!r}"
        out.statement(f"dataset.add_table({table.name!r}, by={list(table.by)!r}{stats})", table.at)
    if definition.measures:
        out.statement("measures = Measures()", None)
    for measure in definition.measures:
        numerator, denominator = out.series(measure.numerator), out.series(measure.denominator)
        groups = ", ".join(f"{k!r}: {out.series(v)}" for k, v in measure.group_by)
        out.statement(
            f"measures.define_measure(\n    {measure.name!r},\n"
            f"    numerator={numerator},\n"
            f"    denominator={denominator},\n"
            f"    group_by={{{groups}}},\n"
            f"    intervals={_intervals(measure.intervals)},\n)",
            measure.at,
        )
    if definition.disclosure != "round5":
        holder = "measures" if definition.measures else "dataset"
        out.statement(f"{holder}.configure_disclosure_control({definition.disclosure!r})", None)
    return "\n".join(out.lines) + "\n"


def summary(definition: n.Definition) -> str:
    """What the definition asks, in one sentence for a reader who does not read code."""
    parts: list[str] = []
    for table in definition.tables:
        by = " and ".join(word.replace("_", " ") for word in table.by) or "everyone"
        parts.append(f"how many people are in each group of {by} ({table.name})")
    for measure in definition.measures:
        groups = " and ".join(k.replace("_", " ") for k, _ in measure.group_by)
        every = measure.intervals.unit.rstrip("s")
        parts.append(
            f"the rate {measure.name.replace('_', ' ')} each {every} for "
            f"{measure.intervals.count} {measure.intervals.unit} from "
            f"{measure.intervals.start:%d %B %Y}" + (f", by {groups}" if groups else "")
        )
    if not parts:
        return "Nothing is released from this definition."
    return "It counts " + "; and ".join(parts) + "."


def question_of(document: bytes | str) -> str | None:
    """The summary of a definition's published JSON, or None where it cannot be read (a
    definition from an older format is still listed, only without its words)."""
    from gpdpr.errors import UserError
    from gpdpr.tre.query.serial import from_json

    try:
        return summary(from_json(document))
    except (UserError, TypeError, ValueError):
        return None
