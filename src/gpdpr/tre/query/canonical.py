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

A count's key is two halves: a hash of its predicate (a measure's numerator counts `denominator
AND numerator`; a table's count and its total, its population) with the series of its groups,
sorted; and a hash of its groups' values in that order. A statistic's key adds the statistic and
the hash of the variable it describes to the first half.

Two predicates one step apart are compared too (`near`): the same `&`-factors with one left out
(a superset: `x & ~target` beside `x`), or with one alternative of an `|`-factor left out (a
subset: `x | target` beside `x`). One of the two counts then holds the other, and a difference of
a few is those few people. (A numerator is not set beside its own denominator this way: that
difference is the rest of the group, which disclosure control already governs.) Changes deeper
in the graph, or rewritings into another form that means the same, are not found: matching by
meaning in general cannot be decided, which is why counts are also rounded and redacted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import DATE

FORMAT = "gpdpr-cell/3"  # changes whenever the canonical form does: old keys then match nothing
MAX_FACTORS = 32  # `&`-factors of one count's predicate (each gives a near key per cell)
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


def _digest(parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


class Canon:
    """Hashes of series and frames in canonical form, for one interval (or none), remembered
    per node object so that a graph is hashed once however often its nodes are asked for."""

    def __init__(self, interval: Interval | None = None, shared: Canon | None = None) -> None:
        """`shared`: a Canon without an interval whose hashes this one reuses for the nodes
        that do not use INTERVAL (they hash the same for every interval of a measure)."""
        self.interval = interval
        self._shared = shared
        self._hashes: dict[int, str] = {}
        # The operands of a flattened `and`/`or`, and the conditions of a `where` chain, by node.
        self._operands: dict[int, frozenset[str]] = {}
        # hash -> (op, operands): content-addressed, so one dict serves every Canon sharing it
        self._flattened: dict[str, tuple[str, frozenset[str]]] = (
            {} if shared is None else shared._flattened
        )
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
            if self._shared is not None and not n.uses_interval(node):
                self._hashes[id(node)] = self._shared.of(node)
                if id(node) in self._shared._operands:
                    self._operands[id(node)] = self._shared._operands[id(node)]
                self._kept.append(node)
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in n.children(node) if id(c) not in self._hashes)
        return self._hashes[id(root)]

    def conjunction(self, *series: n.Series) -> str:
        """The hash of `series[0] & series[1] & ...`, flattened like any `and`."""
        return self._flat("and", self.factors(*series))

    def conjunction_of(self, factors: frozenset[str]) -> str:
        """The hash of the conjunction of `factors` (from `factors`)."""
        return self._flat("and", factors)

    def factors(self, *series: n.Series) -> frozenset[str]:
        """The `&`-factors of `series[0] & series[1] & ...`, as hashes."""
        operands: set[str] = set()
        for one in series:
            self.of(one)
            operands |= self._and_operands(one)
        return frozenset(operands)

    def near(self, factors: frozenset[str], keep: frozenset[str] = frozenset()) -> list[str]:
        """Hashes of the predicates one step from the conjunction of `factors` (see the
        module's docstring), never the conjunction of `keep` alone (a numerator's denominator).
        """
        if len(factors) > MAX_FACTORS:
            raise n.DefinitionError(
                f"a count's conditions have {len(factors)} `&`-factors; at most {MAX_FACTORS}: "
                "combine some of them into one codelist or one condition"
            )
        found: set[str] = set()
        for factor in factors:
            rest = factors - {factor}
            if rest and rest != keep:
                found.add(self._flat("and", rest))
            op, alternatives = self._flattened.get(factor, ("", frozenset()))
            if op == "or":
                for alternative in alternatives:
                    fewer = self._flat("or", alternatives - {alternative})
                    inner = self._flattened.get(fewer, ("", frozenset()))
                    added = inner[1] if inner[0] == "and" else frozenset((fewer,))
                    found.add(self._flat("and", rest | added))
        found.discard(self._flat("and", factors))
        return sorted(found)

    def _and_operands(self, node: n.Node) -> frozenset[str]:
        if isinstance(node, n.Apply) and node.op == "and":
            return self._operands[id(node)]
        return frozenset((self._hashes[id(node)],))

    def _flat(self, op: str, operands: frozenset[str]) -> str:
        if len(operands) == 1:  # `a & a` is `a`
            return next(iter(operands))
        made = _digest(["Apply", op, sorted(operands)])
        self._flattened[made] = (op, operands)
        return made

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


class Grouping:
    """What a row of a table or measure counts, as a key: half a hash of the `what` (a count of
    a predicate, or a statistic of a variable over it) with the series grouped by, and half a
    hash of the row's values of those series.

    Groups are ordered by their series' hashes, and a series grouped by twice counts once, so
    the names and the order of the group columns make no difference. The series sit in the
    `what` half, so the values' half depends on the values alone: a measure whose group series
    change with its intervals (registered *on the interval's first day*) encodes and hashes its
    rows' values once for all intervals, and each distinct tuple of values is hashed once.
    """

    def __init__(
        self,
        series: Sequence[str],
        columns: Sequence[pa.Array | pa.ChunkedArray],
        rows: int | None = None,
    ):
        """`rows`: how many rows there are, needed when there are no group columns to tell
        (by default one)."""
        self.series, order = group_order(series)
        self.values = value_halves(
            [columns[i] for i in order], _length(columns) if rows is None else rows
        )
        self._what: dict[str, str] = {}

    def what_half(self, what: str) -> str:
        """The first half of a key counting `what` in these groups."""
        half = self._what.get(what)
        if half is None:
            half = self._what[what] = what_half(what, self.series)
        return half

    def keys(self, what: Sequence[str]) -> list[str]:
        """The key of each row, counting `what` (from `count` or `statistic`)."""
        return [self.what_half(w) + v for w, v in zip(what, self.values, strict=True)]


def group_order(series: Sequence[str]) -> tuple[list[str], tuple[int, ...]]:
    """The series grouped by as a key has them (sorted by hash, a series given twice once), and
    the position in `series` of each: the order its group columns' values are hashed in."""
    first = {h: i for i, h in reversed(list(enumerate(series)))}
    grouped = sorted(first)
    return grouped, tuple(first[h] for h in grouped)


def what_half(what: str, series: Sequence[str]) -> str:
    """A key's first half (128 bits): what is counted, and the (sorted) series grouped by."""
    return hashlib.sha256(orjson.dumps([what, list(series)])).hexdigest()[:32]


def value_halves(columns: Sequence[pa.Array | pa.ChunkedArray], rows: int) -> list[str]:
    """A key's second half (128 bits) for each row: a hash of its values of `columns`, in order.
    Rows with the same values share one hash, made once."""
    if not columns:
        return [hashlib.sha256(b"").hexdigest()[:32]] * rows
    distinct = pc.dictionary_encode(_encode(list(columns)))
    hashes = [
        hashlib.sha256(value.encode()).hexdigest()[:32] for value in distinct.dictionary.to_pylist()
    ]
    rows_hashes: list[str] = np.array(hashes, dtype=object)[distinct.indices.to_numpy()].tolist()
    return rows_hashes


def count(predicate: str) -> str:
    """The `what` of a count of the people for whom `predicate` holds."""
    return orjson.dumps([FORMAT, "count", predicate]).decode()


def statistic(name: str, variable: str, predicate: str) -> str:
    """The `what` of a statistic of `variable` over the people `count(predicate)` counts."""
    return orjson.dumps([FORMAT, name, variable, predicate]).decode()


def ungrouped_key(what: str) -> str:
    """The key of a number over everyone `what` describes, in no group (a total)."""
    return Grouping([], []).keys([what])[0]


def _length(columns: Sequence[pa.Array | pa.ChunkedArray]) -> int:
    return len(columns[0]) if columns else 1


# As pyarrow scalars once: a Python string given to a compute function is converted on every
# call, at a cost that a measure's key-making per interval would pay thousands of times.
_V, _COLON, _NOTHING, _N = (pa.scalar(s) for s in ("V", ":", "", "N"))


def _encode(columns: list[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """Each row's group values as one string: per value, "V<length>:<text>" or "N" (missing),
    so no two rows' values run together."""
    parts = []
    for column in columns:
        text = pc.cast(column, pa.string())
        length = pc.cast(pc.utf8_length(text), pa.string())
        sized = pc.binary_join_element_wise(_V, length, _COLON, text, _NOTHING)
        parts.append(pc.fill_null(sized, _N))
    joined = pc.binary_join_element_wise(*parts, _NOTHING) if len(parts) > 1 else parts[0]
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
