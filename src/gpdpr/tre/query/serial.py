"""A definition as JSON: the only form in which it crosses into the research environment.

    {"format": "gpdpr-definition/1",
     "nodes": [{"node": "SelectTable", "name": "patients"}, ...],   # a node's id is its index
     "population": 7, "variables": [["sex", 3], ...],
     "measures": [...], "tables": [...], "disclosure": "round5"}

Reading is strict: every node names only earlier nodes (so there are no cycles), carries exactly
the fields its kind has, and is rebuilt through the same constructors the language uses, so each
check runs again on the service side; every name meets the language's rule (`names`), and the
definition its size limits (`limits`, checked by `nodes.validate`). A graph tampered with in
transit, or written by hand to reach past the view, is refused with the node it failed at.
Nothing in it is ever interpreted as SQL: the compiler (engines/sql.py) names every column
itself and writes text only as quoted literals.

Reading takes time linear in the document: nodes that are equal are made one object (so a
graph that repeats itself costs no more than one that reuses nodes), and nothing below recurses
through the graph.
"""

from __future__ import annotations

import hashlib
from datetime import date
from typing import Any

import orjson

from gpdpr.errors import UserError
from gpdpr.tre.query import limits
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.codelists import check_for_column
from gpdpr.tre.query.names import check_name
from gpdpr.tre.query.schema import CODE_TYPES

FORMAT = "gpdpr-definition/1"
MAX_BYTES = 20_000_000
MAX_AT = 300  # characters of a node's `at` (its place in the researcher's file)

# For each kind: its fields and what each holds.
#   node: one node id; nodes: a list of ids; pairs: a list of [id, id]; optional: id or null;
#   str: a string; strs: a list of strings; value: a JSON scalar.
FIELDS: dict[str, dict[str, str]] = {
    "SelectTable": {"name": "str"},
    "Where": {"source": "node", "condition": "node"},
    "SortBy": {"source": "node", "keys": "nodes"},
    "PickOne": {"source": "node", "position": "str"},
    "Column": {"frame": "node", "name": "str"},
    "Value": {"value": "value", "kind": "str"},
    "IntervalDate": {"which": "str"},
    "IsIn": {"series": "node", "codes": "strs", "codelist": "str"},
    "Apply": {"op": "str", "args": "nodes"},
    "Case": {"cases": "pairs", "default": "optional"},
    "Aggregate": {"op": "str", "source": "node"},
}
CLASSES: dict[str, type[n.Node]] = {
    "SelectTable": n.SelectTable,
    "Where": n.Where,
    "SortBy": n.SortBy,
    "PickOne": n.PickOne,
    "Column": n.Column,
    "Value": n.Value,
    "IntervalDate": n.IntervalDate,
    "IsIn": n.IsIn,
    "Apply": n.Apply,
    "Case": n.Case,
    "Aggregate": n.Aggregate,
}
# What each node field must be, beyond being a node.
FRAME_FIELDS = {
    ("Where", "source"),
    ("SortBy", "source"),
    ("PickOne", "source"),
    ("Column", "frame"),
}


# ---- writing ---------------------------------------------------------------------------------


def to_json(definition: n.Definition) -> bytes:
    """Canonical JSON (sorted keys, no spaces): the same definition always gives the same bytes."""
    ids: dict[n.Node, int] = {}
    out: list[dict[str, Any]] = []
    for node in n.walk(*n.roots(definition)):  # children first, each once
        ids[node] = len(out)
        out.append(_node_json(node, ids))

    def ref(node: n.Node) -> int:
        return ids[node]

    document: dict[str, Any] = {
        "format": FORMAT,
        "population": None if definition.population is None else ref(definition.population),
        "variables": [[name, ref(s)] for name, s in definition.variables],
        "measures": [
            {
                "name": m.name,
                "numerator": ref(m.numerator),
                "denominator": ref(m.denominator),
                "group_by": [[g, ref(s)] for g, s in m.group_by],
                "intervals": {
                    "unit": m.intervals.unit,
                    "start": m.intervals.start.isoformat(),
                    "count": m.intervals.count,
                },
                "at": m.at,
            }
            for m in definition.measures
        ],
        "tables": [
            {
                "name": t.name,
                "by": list(t.by),
                "statistics": [list(s) for s in t.statistics],
                "at": t.at,
            }
            for t in definition.tables
        ],
        "disclosure": definition.disclosure,
    }
    document["nodes"] = out
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def _node_json(node: n.Node, ids: dict[n.Node, int]) -> dict[str, Any]:
    kind = type(node).__name__
    body: dict[str, Any] = {"node": kind, "at": node.at}
    for name, holds in FIELDS[kind].items():
        value = getattr(node, name)
        if holds == "node":
            body[name] = ids[value]
        elif holds == "nodes":
            body[name] = [ids[v] for v in value]
        elif holds == "pairs":
            body[name] = [[ids[a], ids[b]] for a, b in value]
        elif holds == "optional":
            body[name] = None if value is None else ids[value]
        elif holds == "strs":
            body[name] = list(value)
        elif holds == "value" and isinstance(value, date):
            body[name] = value.isoformat()
        else:
            body[name] = value
    return body


def sha256(document: bytes) -> str:
    return hashlib.sha256(document).hexdigest()


# ---- reading ---------------------------------------------------------------------------------


def from_json(document: bytes | str) -> n.Definition:
    """The definition a JSON document describes, checked as if built with the language."""
    raw = document.encode() if isinstance(document, str) else document
    if len(raw) > MAX_BYTES:
        raise n.DefinitionError(f"the definition is {len(raw):,} bytes; at most {MAX_BYTES:,}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise n.DefinitionError(f"the definition is not valid JSON: {error}") from None
    reader = _Reader()
    definition = reader.definition(data)
    n.validate(definition)  # within the limits first
    check_codelists(definition)
    return definition


def check_codelists(definition: n.Definition) -> None:
    """Every code matched against a code column is one the service knows and collects."""
    for node in n.walk(*n.roots(definition)):
        if isinstance(node, n.IsIn) and node.series.type in CODE_TYPES:
            try:
                check_for_column(node.codes, node.series.type, node.codelist)
            except UserError as error:
                raise n.problem(node.at, str(error)) from None


class _Reader:
    def __init__(self) -> None:
        self.built: list[n.Node] = []
        # Each node once: an equal node read again is the one made before (hash-consing).
        self.made: dict[n.Node, n.Node] = {}
        self.depth: dict[n.Node, int] = {}

    def definition(self, data: Any) -> n.Definition:
        top = _object(data, "the definition")
        _keys(
            top,
            {"format", "nodes", "population", "variables", "measures", "tables", "disclosure"},
            "the definition",
        )
        if top["format"] != FORMAT:
            raise n.DefinitionError(
                f"this is not a {FORMAT} definition (format {top['format']!r}): compile it with "
                "this version of gpdpr"
            )
        nodes = _list(top["nodes"], "nodes")
        if len(nodes) > limits.MAX_NODES:
            raise n.DefinitionError(
                f"the definition has {len(nodes):,} nodes; at most {limits.MAX_NODES:,}"
            )
        for index, body in enumerate(nodes):
            self.built.append(self.node(index, body))
        population = (
            None if top["population"] is None else self.series(top["population"], "population")
        )
        variables = []
        for index, pair in enumerate(_list(top["variables"], "variables")):
            name = self.name(pair, "a variable", f"variable {index + 1}")
            variables.append((name, self.series(pair[1], f"variable {name}")))
        return n.Definition(
            population=population,
            variables=tuple(variables),
            measures=tuple(
                self.measure(m, f"measure {i + 1}")
                for i, m in enumerate(_list(top["measures"], "measures"))
            ),
            tables=tuple(
                self.table(t, f"table {i + 1}")
                for i, t in enumerate(_list(top["tables"], "tables"))
            ),
            disclosure=_string(top["disclosure"], "disclosure"),
        )

    def node(self, index: int, body: Any) -> n.Node:
        where = f"node {index}"
        body = _object(body, where)
        kind = body.get("node")
        if kind not in FIELDS:
            raise n.DefinitionError(f"{where}: unknown kind of node {kind!r}")
        _keys(body, {"node", "at", *FIELDS[kind]}, f"{where} ({kind})")
        at = _at(body["at"], where)
        args: dict[str, Any] = {}
        for name, holds in FIELDS[kind].items():
            value = body[name]
            label = f"{where} ({kind}.{name})"
            if holds == "node":
                args[name] = self.ref(value, index, label)
                if (kind, name) in FRAME_FIELDS and not isinstance(args[name], n.Frame):
                    raise n.DefinitionError(f"{label}: must refer to a frame")
                wants_series = (kind, name) not in FRAME_FIELDS and kind != "Aggregate"
                if wants_series and not isinstance(args[name], n.Series):
                    raise n.DefinitionError(f"{label}: must refer to a series")
            elif holds == "nodes":
                args[name] = tuple(self.series_ref(v, index, label) for v in _list(value, label))
            elif holds == "pairs":
                pairs = []
                for pair in _list(value, label):
                    if not isinstance(pair, list) or len(pair) != 2:
                        raise n.DefinitionError(f"{label}: each case is [condition, value]")
                    pairs.append(tuple(self.series_ref(v, index, label) for v in pair))
                args[name] = tuple(pairs)
            elif holds == "optional":
                args[name] = None if value is None else self.series_ref(value, index, label)
            elif holds == "strs":
                args[name] = tuple(_string(v, label) for v in _list(value, label))
            elif holds == "str":
                args[name] = _string(value, label)
            else:
                args[name] = value
        if kind == "Value":
            args["value"] = _value(args["value"], args["kind"], where)
        try:
            made = CLASSES[kind](**args, at=at)
        except n.DefinitionError as error:
            raise n.DefinitionError(f"{where}: {error}") from None
        except (TypeError, ValueError, AttributeError, AssertionError) as error:
            raise n.DefinitionError(f"{where} ({kind}) is malformed: {error}") from None
        made = self.made.setdefault(made, made)
        # Its children are deep enough already: refuse here, before anything recurses.
        depth = 1 + max((self.depth[c] for c in n.children(made)), default=0)
        if depth > limits.MAX_DEPTH:
            raise limits.too_deep(f"{where}{f' ({at})' if at else ''}")
        self.depth[made] = depth
        return made

    def ref(self, value: Any, index: int, label: str) -> n.Node:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < index:
            raise n.DefinitionError(
                f"{label}: {value!r} is not an earlier node (a node may only refer to nodes "
                "before it)"
            )
        return self.built[value]

    def series_ref(self, value: Any, index: int, label: str) -> n.Series:
        node = self.ref(value, index, label)
        if not isinstance(node, n.Series):
            raise n.DefinitionError(f"{label}: must refer to a series")
        return node

    def series(self, value: Any, label: str) -> n.Series:
        return self.series_ref(value, len(self.built), label)

    def name(self, pair: Any, what: str, label: str) -> str:
        if not isinstance(pair, list) or len(pair) != 2:
            raise n.DefinitionError(f"{label}: each entry is [name, node]")
        return check_name(pair[0], what, label)

    def measure(self, data: Any, place: str) -> n.Measure:
        body = _object(data, place)
        _keys(body, {"name", "numerator", "denominator", "group_by", "intervals", "at"}, place)
        name = check_name(body["name"], "a measure", place)
        label = f"measure {name}"
        intervals = _object(body["intervals"], f"{label} intervals")
        _keys(intervals, {"unit", "start", "count"}, f"{label} intervals")
        try:
            start = date.fromisoformat(_string(intervals["start"], f"{label} start"))
        except ValueError:
            raise n.DefinitionError(f"{label}: the intervals' start is not a date") from None
        count = intervals["count"]
        if not isinstance(count, int) or isinstance(count, bool):
            raise n.DefinitionError(f"{label}: the number of intervals must be a whole number")
        try:
            made = n.Intervals(_string(intervals["unit"], f"{label} unit"), start, count)
        except n.DefinitionError as error:
            raise n.DefinitionError(f"{label}: {error}") from None
        return n.Measure(
            name,
            self.series(body["numerator"], f"{label} numerator"),
            self.series(body["denominator"], f"{label} denominator"),
            tuple(
                (self.name(g, "a group_by", label), self.series(g[1], f"{label} group_by"))
                for g in _list(body["group_by"], f"{label} group_by")
            ),
            made,
            at=_at(body["at"], label),
        )

    def table(self, data: Any, place: str) -> n.AggregateTable:
        body = _object(data, place)
        _keys(body, {"name", "by", "statistics", "at"}, place)
        name = check_name(body["name"], "a table", place)
        label = f"table {name}"
        statistics = []
        for pair in _list(body["statistics"], f"{label} statistics"):
            if not isinstance(pair, list) or len(pair) != 2:
                raise n.DefinitionError(f"{label}: each statistic is [variable, statistic]")
            variable = check_name(pair[0], "a variable", f"{label} statistics")
            statistic = _string(pair[1], f"{label} statistics")
            if statistic not in n.STATISTICS:
                raise n.DefinitionError(
                    f"{label}: unknown statistic {n.describe(statistic)}; the statistics are "
                    f"{', '.join(n.STATISTICS)}"
                )
            statistics.append((variable, statistic))
        return n.AggregateTable(
            name,
            tuple(
                check_name(b, "a variable", f"{label} by") for b in _list(body["by"], f"{label} by")
            ),
            tuple(statistics),
            at=_at(body["at"], label),
        )


def _object(value: Any, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise n.DefinitionError(f"{label} must be a JSON object")
    return value


def _list(value: Any, label: str) -> list[Any]:
    if not isinstance(value, list):
        raise n.DefinitionError(f"{label} must be a JSON list")
    return value


def _string(value: Any, label: str) -> str:
    if not isinstance(value, str):
        raise n.DefinitionError(f"{label} must be text, not {type(value).__name__}")
    return value


def _at(value: Any, label: str) -> str | None:
    """Where in the researcher's file something was made: shown in messages, so kept short."""
    if value is not None and not (
        isinstance(value, str) and len(value) <= MAX_AT and value.isprintable()
    ):
        raise n.DefinitionError(
            f"{label}: `at` must be printable text of at most {MAX_AT} characters"
        )
    return value


def _keys(body: dict[str, Any], expected: set[str], label: str) -> None:
    missing, extra = expected - set(body), set(body) - expected
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(missing))}")
        if extra:
            parts.append(f"unexpected {', '.join(sorted(extra))}")
        raise n.DefinitionError(f"{label}: {'; '.join(parts)}")


def _value(value: Any, kind: Any, where: str) -> Any:
    if kind == "date" and isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise n.DefinitionError(f"{where}: {value!r} is not a date") from None
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise n.DefinitionError(f"{where}: a value must be a JSON scalar")
    return value
