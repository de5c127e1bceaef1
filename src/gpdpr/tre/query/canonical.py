"""What a published number counts, as a key that does not depend on how it was named.

The differencing check (`release.differencing`) compares cells that count the same people. Two
definitions can count the same people under different names: another measure or variable name,
another codelist label, `a & b` written `b & a`, one `where` or two. So a cell's key is a hash of
the *canonical form* of what it counts, never of a label:

- each node of the query graph is hashed from its kind, its own fields and its children's
  hashes (a Merkle hash: a node shared by many parents is hashed once, so the work is linear in
  the graph's size, however it reuses nodes);
- `at` (where in the researcher's file a node was made) and a codelist's label are left out;
  the codes themselves are kept;
- `and` and `or` are flattened (`a & (b & c)` is `a & b & c`), their operands de-duplicated and
  sorted; so are `where`s one after another (`t.where(a).where(b)` is `t.where(a & b)`); `==`,
  `!=`, `+` and `*` have their two operands sorted;
- a measure's INTERVAL dates are replaced by the interval's own dates, so a measure's January
  and a table of people registered on 1 January count the same people when their conditions
  agree, and a denominator that does not depend on the interval has one key for every interval.

A count's key is the hash of its predicate (a measure's numerator counts `denominator AND
numerator`; a table's count and its total, its population) and its groups: the hash of each
group's series with the group's value, sorted by series. A statistic's key adds the statistic and
the hash of the variable it describes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

import orjson

from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import DATE

FORMAT = "gpdpr-cell/1"  # changes whenever the canonical form does: old keys then match nothing
_FLATTENED = ("and", "or")
_COMMUTATIVE = ("eq", "ne", "add", "mul")
_FIELD_KINDS: dict[str, dict[str, str]] = {
    "SelectTable": {"name": "str"},
    "SortBy": {"source": "node", "keys": "nodes"},
    "PickOne": {"source": "node", "position": "str"},
    "Column": {"frame": "node", "name": "str"},
    "Value": {"value": "value", "kind": "str"},
    "IntervalDate": {"which": "str"},
    "Apply": {"op": "str", "args": "nodes"},
    "Case": {"cases": "pairs", "default": "optional"},
    "Aggregate": {"op": "str", "source": "node"},
}  # Where and IsIn are hashed by their own rules below

Interval = tuple[date, date]
GroupValue = bool | int | float | str | date | None


def _digest(parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


class Canon:
    """Hashes of series and frames in canonical form, for one interval (or none), remembered
    per node object so that a graph is hashed once however often its nodes are asked for."""

    def __init__(self, interval: Interval | None = None) -> None:
        self.interval = interval
        self._hashes: dict[int, str] = {}
        # The operands of a flattened `and`/`or`, and the conditions of a `where` chain, by node.
        self._operands: dict[int, frozenset[str]] = {}
        self._kept: list[n.Node] = []  # keeps each hashed node alive, so its id stays its own

    def of(self, root: n.Node) -> str:
        """The canonical hash of `root` (hex SHA-256)."""
        # Children first, without recursion (a definition may nest deeply), each node once.
        stack: list[tuple[n.Node, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in self._hashes:
                continue
            if ready:
                self._hashes[id(node)] = self._hash(node)
                self._kept.append(node)
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in n.children(node) if id(c) not in self._hashes)
        return self._hashes[id(root)]

    def conjunction(self, *series: n.Series) -> str:
        """The hash of `series[0] & series[1] & ...`, flattened like any `and`."""
        operands: set[str] = set()
        for one in series:
            self.of(one)
            operands |= self._and_operands(one)
        return self._flat("and", frozenset(operands))

    def _and_operands(self, node: n.Node) -> frozenset[str]:
        if isinstance(node, n.Apply) and node.op == "and":
            return self._operands[id(node)]
        return frozenset((self._hashes[id(node)],))

    def _flat(self, op: str, operands: frozenset[str]) -> str:
        if len(operands) == 1:  # `a & a` is `a`
            return next(iter(operands))
        return _digest(["Apply", op, sorted(operands)])

    def _hash(self, node: n.Node) -> str:
        h = self._hashes
        if isinstance(node, n.Apply) and node.op in _FLATTENED:
            operands: set[str] = set()
            for arg in node.args:
                same = isinstance(arg, n.Apply) and arg.op == node.op
                operands |= self._operands[id(arg)] if same else {h[id(arg)]}
            self._operands[id(node)] = frozenset(operands)
            return self._flat(node.op, frozenset(operands))
        if isinstance(node, n.Apply) and node.op in _COMMUTATIVE:
            return _digest(["Apply", node.op, sorted(h[id(a)] for a in node.args)])
        if isinstance(node, n.Where):
            source = node.source
            conditions = set(self._and_operands(node.condition))
            if isinstance(source, n.Where):
                conditions |= self._operands[id(source)]
                source = _unfiltered(source)
            self._operands[id(node)] = frozenset(conditions)
            return _digest(["Where", h[id(source)], sorted(conditions)])
        if isinstance(node, n.IsIn):  # the codes, not the codelist's label
            return _digest(["IsIn", h[id(node.series)], list(node.codes)])
        if isinstance(node, n.IntervalDate) and self.interval is not None:
            day = self.interval[0] if node.which == "start" else self.interval[1]
            return _digest(["Value", day, DATE])
        kind = type(node).__name__
        parts: list[Any] = [kind]
        for name, holds in _FIELD_KINDS[kind].items():
            value = getattr(node, name)
            if holds == "node":
                parts.append(h[id(value)])
            elif holds == "nodes":
                parts.append([h[id(v)] for v in value])
            elif holds == "pairs":
                parts.append([[h[id(a)], h[id(b)]] for a, b in value])
            elif holds == "optional":
                parts.append(None if value is None else h[id(value)])
            else:
                parts.append(value)
        return _digest(parts)


def _unfiltered(frame: n.Where) -> n.Frame:
    """The frame a chain of `where`s filters."""
    source: n.Frame = frame
    while isinstance(source, n.Where):
        source = source.source
    return source


Groups = list[tuple[str, GroupValue]]


def groups_part(series: Sequence[str], values: Sequence[GroupValue]) -> Groups:
    """The groups of one row: (series hash, value) pairs, sorted by series and without repeats
    (grouping twice by one series is grouping once)."""
    return sorted(dict(zip(series, values, strict=True)).items(), key=_first)


def _first(pair: tuple[str, GroupValue]) -> str:
    return pair[0]


def count_key(predicate: str, groups: Groups) -> str:
    """The key of a count of the people for whom `predicate` holds, in `groups`."""
    return _digest([FORMAT, "count", predicate, groups])


def statistic_key(statistic: str, variable: str, predicate: str, groups: Groups) -> str:
    """The key of a statistic of `variable` over the people `count_key` would count."""
    return _digest([FORMAT, statistic, variable, predicate, groups])


def count_keys(
    predicates: Sequence[str],
    series: Sequence[Sequence[str]],
    values: Iterable[Sequence[GroupValue]],
) -> list[str]:
    """`count_key` for many rows at once: row i counts `predicates[i]` within the groups
    `series[i]` (one hash per group column) with the values `values[i]`. Built in one pass,
    since a measure of five years by month and practice has hundreds of thousands of rows."""
    return [
        _digest([FORMAT, "count", predicate, groups_part(hashes, row)])
        for predicate, hashes, row in zip(predicates, series, values, strict=True)
    ]
