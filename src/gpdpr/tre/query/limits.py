"""How big a definition may be: checked in time linear in its size, before anything runs.

A definition is a graph that may reuse nodes, so a few kilobytes of JSON can describe an
expression that is astronomically large when written out, and the compiler writes expressions
out (inlines them) into SQL. So besides counting nodes (each met once however often it is
reused), this bounds the depth (the compiler and the engines' parsers recurse through it) and
the size of the SQL the compiler would write (`expanded`), worked out once per node.

Limits on single nodes (a text value's length, codes in one codelist, intervals of a measure)
are checked where the node is made, in `nodes`.
"""

from __future__ import annotations

from gpdpr.tre.query import nodes as n

MAX_NODES = 20_000
# Compiled, parsed and run on DuckDB and on Spark without exhausting either's stack (the test
# of this limit runs a definition this deep on both).
MAX_DEPTH = 100
# Roughly the number of terms in the SQL the compiler writes: a few tens of characters each.
MAX_EXPANDED = 200_000
MAX_CODES_IN_ALL = 100_000
MAX_VARIABLES = 500
MAX_MEASURES = 50
MAX_GROUPS = 10  # of one measure
MAX_TABLES = 50
MAX_INTERVALS_IN_ALL = 5_000  # over every measure

# How often the compiler writes out an argument of an operation (engines/sql.py `_apply` and the
# dialects' date arithmetic, which on Spark checks the calendar's range first); any other
# argument once. A value compared with INTERVAL's start or end is written out several
# times to work out which intervals the comparison holds in (engines/spans.py `_compared`).
WRITTEN = {"months_between": 3, "years_between": 4, "add_days": 2, "add_months": 3, "add_years": 3}
COMPARED_WITH_INTERVAL = 16


def check(definition: n.Definition) -> None:
    """Refuse a definition over any limit, saying which and what to do."""
    counts = {
        "dataset variables": (len(definition.variables), MAX_VARIABLES),
        "measures": (len(definition.measures), MAX_MEASURES),
        "aggregate tables": (len(definition.tables), MAX_TABLES),
        "intervals over all measures": (
            sum(m.intervals.count for m in definition.measures),
            MAX_INTERVALS_IN_ALL,
        ),
    }
    for what, (found, most) in counts.items():
        if found > most:
            raise n.DefinitionError(f"the definition has {found:,} {what}; at most {most:,}")
    for measure in definition.measures:
        if len(measure.group_by) > MAX_GROUPS:
            raise n.problem(
                measure.at,
                f"{measure.name} has {len(measure.group_by)} groups; at most {MAX_GROUPS}",
            )
    graph = n.walk(*n.roots(definition))  # every node once, however often it is used
    if len(graph) > MAX_NODES:
        raise n.DefinitionError(
            f"the definition has {len(graph):,} distinct nodes; at most {MAX_NODES:,}"
        )
    depth: dict[n.Node, int] = {}
    for node in graph:  # children before parents
        depth[node] = 1 + max((depth[c] for c in n.children(node)), default=0)
        if depth[node] > MAX_DEPTH:
            raise too_deep(node.at)
    codes = sum(len(node.codes) for node in graph if isinstance(node, n.IsIn))
    if codes > MAX_CODES_IN_ALL:
        raise n.DefinitionError(
            f"the definition's codelists have {codes:,} codes in all; at most {MAX_CODES_IN_ALL:,}"
        )
    size = expanded(graph, n.roots(definition))
    if size > MAX_EXPANDED:
        raise n.DefinitionError(
            "the definition is too large when written out: it reuses values so often that the "
            f"query would have more than {MAX_EXPANDED:,} terms. Keep per-patient values as "
            "dataset variables rather than repeating them inside other expressions, and "
            "simplify the expressions"
        )


def too_deep(at: str | None) -> n.DefinitionError:
    return n.problem(
        at,
        f"the definition nests more than {MAX_DEPTH} levels deep (an expression inside an "
        "expression, or a frame filtered again and again): simplify it, for example with case/when "
        "or by combining conditions on one frame",
    )


def expanded(graph: list[n.Node], roots: list[n.Series]) -> int:
    """The number of terms in any one query the compiler writes for the roots (`graph`: the
    nodes under them, children before parents), within a constant factor, counted without
    writing it: an expression is written out wherever it is used, a frame or per-patient
    aggregate once (as a table expression) and referred to by name. Capped just above
    MAX_EXPANDED, to keep the numbers small."""
    cap = MAX_EXPANDED + 1
    inline: dict[n.Node, int] = {}
    total = 0
    for node in graph:
        own = 1 + (len(node.codes) if isinstance(node, n.IsIn) else 0)
        for index, child in enumerate(n.children(node)):
            own += _times(node, index) * inline[child]
        if isinstance(node, (n.Frame, n.Aggregate)):
            total += own  # its table expression, written once
            inline[node] = 1
        else:
            inline[node] = min(own, cap)
        if total > cap:
            return cap
    return min(total + sum(inline[root] for root in set(roots)), cap)


def _times(node: n.Node, index: int) -> int:
    if not isinstance(node, n.Apply):
        return 1
    if node.op in WRITTEN:
        return WRITTEN[node.op]
    other = node.args[1 - index] if len(node.args) == 2 else None
    if isinstance(other, n.IntervalDate):
        return COMPARED_WITH_INTERVAL
    return 1
