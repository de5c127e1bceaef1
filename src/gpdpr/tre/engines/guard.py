"""The last look at SQL before an engine runs it: an allowlist of what the compiler writes.

The compiler (engines/sql.py, spans.py) never writes a definition's names into SQL, and writes
its values only as literals (`Dialect.literal`). This checks the result anyway, so that a
mistake there cannot become a way out of the view: it reads the text as the engine will
(string literals by the dialect's own rules, so nothing inside a literal is taken for SQL) and
refuses unless

  - it is one statement, `with ...` or `select ...`, with no comment and no character the
    compiler never writes (`;`, `$`, `?`, a string prefix such as E'..' or R'..', ...);
  - every function called is one the compiler calls (`FUNCTIONS`): never `read_csv`, `glob`,
    `getenv`, `reflect`, `java_method`, `query` ...;
  - every table read (after `from`, `join`, or a comma between tables) is one the engine made
    for this run (a view of the project's data, the intervals) or a table expression the query
    itself defines, by a plain name: never a file, a path, a qualified name or a table function.

Both engines call `check` on every query they run; each then runs it in its sandbox
(engines/duckdb.py, spark.py), which would refuse a file or a second statement again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from gpdpr.errors import UserError
from gpdpr.tre.engines.sql import SCHEMA_COLUMNS

# Every function the compiler calls, in either dialect.
FUNCTIONS = frozenset(
    {
        "add_months",  # spark
        "avg",
        "bool_or",
        "cast",
        "coalesce",
        "count",
        "date_add",  # spark
        "date_diff",  # duckdb
        "datediff",  # spark
        "day",
        "floor",
        "greatest",
        "lead",
        "least",
        "max",
        "max_by",
        "min",
        "min_by",
        "month",
        "named_struct",  # spark
        "nullif",
        "row_number",
        "struct_pack",  # duckdb
        "sum",
        "to_months",  # duckdb
        "try",  # duckdb: null where an operation would fail
        "try_add",  # spark, likewise
        "try_cast",  # spark
        "try_multiply",  # spark
        "try_subtract",  # spark
        "try_sum",  # spark
        "unix_date",  # spark
        "date_from_unix_date",  # spark
        "year",
    }
)
# Words the compiler writes before a parenthesis that are not calls.
KEYWORDS = frozenset(
    {
        "all", "and", "as", "by", "case", "distinct", "else", "filter", "from", "in", "is",
        "join", "not", "on", "or", "over", "select", "then", "union", "using", "when", "where",
    }
)  # fmt: skip
# Words after which a comma no longer separates tables.
_ENDS_TABLES = frozenset(
    {"where", "group", "order", "having", "union", "on", "using", "select", "window", "limit"}
)
_SYMBOLS = frozenset("(),.*+-/=<>!:")
_SPACE = frozenset(" \n")
_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyz_")
_WORD = _WORD_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_QUOTED_NAME = {"duckdb": '"', "spark": "`"}


class Refused(UserError):
    """SQL that the compiler would never write; it is not run."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the compiled query was refused before it ran: {reason}")


@dataclass(frozen=True)
class Token:
    kind: str  # word, name (a quoted column name), string, number, symbol
    text: str
    at: int  # where in the SQL it starts


def check(text: str, dialect: str, relations: Collection[str]) -> None:
    """Refuse (Refused) SQL that is not a query of the compiler's shape over `relations` (the
    views and tables the engine made for the run) and the table expressions it defines."""
    found = tokens(text, dialect)
    if not found or found[0].text not in ("with", "select"):
        raise Refused("it is not a query (with ... or select ...)")
    defined = _defined(found)
    known = frozenset(relations) | defined
    clause: list[str | None] = [None]  # per parenthesis: whether in a list of tables
    expect_table = False
    for index, token in enumerate(found):
        after = found[index + 1] if index + 1 < len(found) else None
        if expect_table:
            expect_table = False
            if token.text != "(":
                if token.kind != "word" or token.text not in known:
                    raise Refused(f"it reads {_shown(token.text)}, not a table made for this run")
                if after is not None and after.text in (".", "("):
                    raise Refused(f"it reads {_shown(token.text)}{after.text}...")
        if token.kind == "word":
            called = after is not None and after.text == "("
            if called and token.text not in FUNCTIONS and token.text not in KEYWORDS:
                raise Refused(f"it calls {_shown(token.text)}, which the compiler never does")
            if token.text in ("from", "join"):
                expect_table = True
                clause[-1] = "from" if token.text == "from" else clause[-1]
            elif token.text in _ENDS_TABLES:
                clause[-1] = None
        elif token.kind == "symbol":
            if token.text == "(":
                clause.append(None)
            elif token.text == ")":
                if len(clause) == 1:
                    raise Refused("its parentheses do not match")
                clause.pop()
            elif token.text == "," and clause[-1] == "from":
                expect_table = True
        elif token.kind == "name" and after is not None and after.text == "(":
            raise Refused("a quoted name called as a function")
    if expect_table or len(clause) != 1:
        raise Refused("it ends before it is complete")


def _defined(found: list[Token]) -> frozenset[str]:
    """The table expressions a query defines: `with a as (...), b as (...) select ...`."""
    names = set()
    depth = 0
    for index, token in enumerate(found):
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif (
            depth == 0
            and token.kind == "word"
            and index > 0
            and found[index - 1].text in ("with", ",")
            and index + 2 < len(found)
            and found[index + 1].text == "as"
            and found[index + 2].text == "("
        ):
            names.add(token.text)
        elif depth == 0 and token.text == "select":
            break
    return frozenset(names)


def tokens(text: str, dialect: str) -> list[Token]:
    """The SQL's tokens as `dialect` reads them; Refused at anything the compiler never writes."""
    out: list[Token] = []
    i, end = 0, len(text)
    while i < end:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif c == "'":
            if i > 0 and text[i - 1] in _WORD:
                raise Refused("a string with a prefix")
            j = _string_end(text, i, dialect)
            out.append(Token("string", text[i : j + 1], i))
            i = j + 1
        elif c == _QUOTED_NAME.get(dialect):
            j = text.find(c, i + 1)
            if j < 0 or text[i + 1 : j] not in SCHEMA_COLUMNS:
                raise Refused("a quoted name that is not a column of the schema")
            out.append(Token("name", text[i + 1 : j], i))
            i = j + 1
        elif c in _WORD_START:
            j = i
            while j < end and text[j] in _WORD:
                j += 1
            out.append(Token("word", text[i:j], i))
            i = j
        elif c in _DIGITS:
            j = _number_end(text, i)
            out.append(Token("number", text[i:j], i))
            i = j
        elif c in _SYMBOLS:
            if text.startswith(("--", "/*"), i):
                raise Refused("a comment")
            out.append(Token("symbol", c, i))
            i += 1
        else:
            raise Refused(f"a character the compiler never writes ({c!r}) at {i}")
    return out


def _string_end(text: str, start: int, dialect: str) -> int:
    """Where the string literal opening at `start` closes: DuckDB doubles a quote inside one;
    Spark escapes any character with a backslash."""
    i = start + 1
    while i < len(text):
        c = text[i]
        if dialect == "spark" and c == "\\":
            i += 2
            continue
        if c == "'":
            if dialect == "duckdb" and text.startswith("''", i):
                i += 2
                continue
            return i
        i += 1
    raise Refused("a string that does not end")


def _number_end(text: str, i: int) -> int:
    """The end of a number: digits, perhaps a point and digits, perhaps an exponent."""

    def digits(j: int) -> int:
        while j < len(text) and text[j] in _DIGITS:
            j += 1
        return j

    i = digits(i)
    if text.startswith(".", i) and i + 1 < len(text) and text[i + 1] in _DIGITS:
        i = digits(i + 1)
    if i < len(text) and text[i] in "eE":
        j = i + 1 + (1 if text.startswith(("+", "-"), i + 1) else 0)
        if j < len(text) and text[j] in _DIGITS:
            i = digits(j)
    if i < len(text) and text[i] in _WORD:
        raise Refused("a number run into a word")
    return i


def _shown(text: str) -> str:
    return repr(text[:40])
