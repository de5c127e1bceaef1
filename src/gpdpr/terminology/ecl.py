"""SNOMED CT Expression Constraint Language (ECL): the part of it code sets are written in,
parsed and evaluated against a loaded release.

Understood (brief and long syntax, keywords in any case):

  expression  := sub | sub (AND|,) sub ... | sub OR sub ... | sub MINUS sub
  sub         := [operator] [^] (concept | * | "(" expression ")")
  operator    := << < <<! <! >> > >>! >!   (descendantOrSelfOf, descendantOf, childOrSelfOf,
                 childOf, ancestorOrSelfOf, ancestorOf, parentOrSelfOf, parentOf)
  concept     := SCTID ["|" term "|"]

As ECL requires, AND and OR are not mixed, and MINUS not chained, without brackets: the reader
must not have to guess which binds first. Refinements (`:`), dotted attributes, filters and
cardinality are not understood, and are refused by name rather than ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gpdpr.errors import UserError
from gpdpr.terminology.sctid import concept_problem
from gpdpr.terminology.store import IdArray, Release

OPERATORS = {
    "<<!": "childOrSelfOf",
    "<!": "childOf",
    "<<": "descendantOrSelfOf",
    "<": "descendantOf",
    ">>!": "parentOrSelfOf",
    ">!": "parentOf",
    ">>": "ancestorOrSelfOf",
    ">": "ancestorOf",
}
LONG_OPERATORS = {name.lower(): name for name in OPERATORS.values()}
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<op><<!|<!|<<|<|>>!|>!|>>|>)
    | (?P<member>\^)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<comma>,)
    | (?P<star>\*)
    | (?P<term>\|[^|]*\|)
    | (?P<id>[0-9]+)
    | (?P<word>[A-Za-z]+)
    | (?P<other>\S)
    )""",
    re.VERBOSE,
)
UNSUPPORTED = {":": "refinements", ".": "dotted attributes", "{": "filters", "[": "cardinality"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    at: int  # where in the expression, for messages


@dataclass(frozen=True)
class Concept:
    id: int


@dataclass(frozen=True)
class Wildcard:
    pass


@dataclass(frozen=True)
class Sub:
    operator: str | None  # a long name from OPERATORS, or None for the focus itself
    member_of: bool
    focus: Concept | Wildcard | Compound | Sub


@dataclass(frozen=True)
class Compound:
    op: str  # AND | OR | MINUS
    parts: tuple[Sub, ...]


Node = Sub | Compound


def tokens(text: str) -> list[Token]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.lastgroup is None:
            break
        kind = match.lastgroup
        value = match.group(kind)
        start = match.start(kind)
        if kind == "other":
            what = UNSUPPORTED.get(value)
            if what:
                raise _error(text, start, f"{what} ({value}) are not supported here")
            raise _error(text, start, f"{value!r} is not part of ECL")
        out.append(Token(kind, value, start))
        pos = match.end()
    return out


def _error(text: str, at: int, problem: str) -> UserError:
    return UserError(f"ECL {text!r}, at character {at + 1}: {problem}")


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokens(text)
        self.pos = 0

    def fail(self, problem: str) -> UserError:
        at = self.tokens[self.pos].at if self.pos < len(self.tokens) else len(self.text)
        return _error(self.text, at, problem)

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise self.fail("the expression ends too soon")
        self.pos += 1
        return token

    def back(self, problem: str) -> UserError:
        self.pos -= 1
        return self.fail(problem)

    def parse(self) -> Node:
        if not self.tokens:
            raise self.fail("an empty expression")
        node = self.expression()
        extra = self.peek()
        if extra is not None:
            raise self.fail(f"{extra.text!r} was not expected here")
        return node

    def joiner(self) -> str | None:
        token = self.peek()
        if token is None:
            return None
        if token.kind == "comma":
            return "AND"
        if token.kind == "word" and token.text.upper() in ("AND", "OR", "MINUS"):
            return token.text.upper()
        return None

    def expression(self) -> Node:
        parts = [self.sub()]
        joined = ""
        op = self.joiner()
        while op is not None:
            if joined and op != joined:
                raise self.fail(f"{joined} and {op} together need brackets to say which first")
            if joined == "MINUS":
                raise self.fail("MINUS twice needs brackets to say which first")
            joined = op
            self.take()
            parts.append(self.sub())
            op = self.joiner()
        return parts[0] if len(parts) == 1 else Compound(joined, tuple(parts))

    def sub(self) -> Sub:
        operator = None
        token = self.take()
        if token.kind == "op":
            operator, token = OPERATORS[token.text], self.take()
        elif token.kind == "word" and token.text.lower() in LONG_OPERATORS:
            operator, token = LONG_OPERATORS[token.text.lower()], self.take()
        member_of = token.kind == "member" or (
            token.kind == "word" and token.text.lower() == "memberof"
        )
        if member_of:
            token = self.take()
        focus: Concept | Wildcard | Compound | Sub
        if token.kind == "star":
            focus = Wildcard()
        elif token.kind == "id":
            problem = concept_problem(token.text)
            if problem:
                raise self.back(f"{token.text} is not a concept identifier: {problem}")
            focus = Concept(int(token.text))
            following = self.peek()
            if following is not None and following.kind == "term":
                self.take()
        elif token.kind == "open":
            focus = self.expression()
            if self.take().kind != "close":
                raise self.back("a bracket is not closed")
        else:
            raise self.back(f"{token.text!r} where a concept, * or ( was expected")
        return Sub(operator, member_of, focus)


def parse(text: str) -> Node:
    """The expression's tree; a UserError says where it cannot be read."""
    return Parser(text).parse()


def evaluate(node: Node, release: Release) -> IdArray:
    """The concept ids the expression stands for in `release`, sorted."""
    if isinstance(node, Compound):
        results = [evaluate(part, release) for part in node.parts]
        out = results[0]
        for other in results[1:]:
            if node.op == "AND":
                out = np.intersect1d(out, other)
            elif node.op == "OR":
                out = np.union1d(out, other)
            else:
                out = np.setdiff1d(out, other)
        return out
    focus = node.focus
    if isinstance(focus, Concept):
        base = np.array([focus.id], np.int64)
    elif isinstance(focus, Wildcard):
        base = release.ids[release.active]
    else:
        base = evaluate(focus, release)
    if node.member_of:
        parts = [release.members(int(refset)) for refset in base]
        base = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
    return _apply(node.operator, base, release)


def _apply(operator: str | None, base: IdArray, release: Release) -> IdArray:
    if operator is None:
        return base
    if operator == "descendantOrSelfOf":
        return np.union1d(base, release.descendants(base))
    if operator == "descendantOf":
        return release.descendants(base)
    if operator == "childOrSelfOf":
        return np.union1d(base, release.children(base))
    if operator == "childOf":
        return release.children(base)
    if operator == "ancestorOrSelfOf":
        return np.union1d(base, release.ancestors(base))
    if operator == "ancestorOf":
        return release.ancestors(base)
    if operator == "parentOrSelfOf":
        return np.union1d(base, release.parents(base))
    return release.parents(base)


def expand(text: str, release: Release) -> IdArray:
    return evaluate(parse(text), release)
