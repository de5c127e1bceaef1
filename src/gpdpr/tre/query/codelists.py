"""Codelists: sets of SNOMED CT concepts or dm+d products, from OpenCodelists-style CSV files or
by meaning, as an ECL expression expanded against the loaded terminology release.

Every code is checked as SNOMED CT defines an identifier (`gpdpr.terminology`) when the list is
read, and again when the service receives a definition, so a mistyped code is caught before a run
rather than silently matching nothing. A valid code the loaded release does not know is kept, with
a warning naming it (a newer release, or an extension not loaded, may well have it). A code the
specification never collects (legally restricted or sensitive, by meaning) is refused: it could
only ever match nothing, and a researcher who expects otherwise should be told.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpdpr.errors import UserError
from gpdpr.spec import shipped
from gpdpr.terminology import Status, classify, ecl, load_catalogue, sets, store
from gpdpr.terminology.sctid import concept_problem, parse
from gpdpr.tre.query import nodes as n
from gpdpr.tre.query.schema import CODE_TYPES

DMD_NAMESPACE = "1000001"  # the UK drug extension's: its concepts are dm+d products

SYSTEMS = ("snomed", "dmd")
# The columns OpenCodelists downloads name their codes in, by coding system.
CODE_COLUMNS = ("code", "dmd_id", "snomedct_id", "id")
COLUMN_SYSTEMS = {"dmd_id": "dmd", "snomedct_id": "snomed"}


ECL_PREFIX = "ECL "
ECL_RELEASE = " in "


class UnknownCodesWarning(UserWarning):
    """Valid codes the loaded terminology release does not know: kept, and named."""


class NeverCollectedWarning(UserWarning):
    """Concepts an ECL expression takes in that the specification never collects: left out."""


@dataclass(frozen=True)
class Codelist:
    codes: tuple[str, ...]  # sorted, distinct
    system: str | None  # None: a list of plain text values
    source: str

    @classmethod
    def of(cls, values: Sequence[str], source: str = "an inline list") -> Codelist:
        """Values written in the definition: codes are checked when matched against a code
        column (`check_for_column`), text is taken as it is."""
        return cls(tuple(sorted({str(v).strip() for v in values})), None, source)


def codelist_from_csv(
    path: str | Path, column: str | None = None, system: str | None = None
) -> Codelist:
    """Read a codelist: one code per row in `column` (by default the first of code, dmd_id,
    snomedct_id, id that the file has)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise UserError(f"cannot read the codelist {path}: {error.strerror}") from None
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    chosen = column or next((c for c in CODE_COLUMNS if c in header), None)
    if chosen is None or chosen not in header:
        raise UserError(
            f"{path}, line 1: no {column or ' or '.join(CODE_COLUMNS)} column (the header is "
            f"{', '.join(header) or 'empty'}); name the column holding the codes with column="
        )
    lines: dict[str, int] = {}
    for line, row in enumerate(reader, start=2):
        code = (row.get(chosen) or "").strip()
        if not code:
            raise UserError(f"{path}, line {line}: no code in the {chosen} column")
        lines.setdefault(code, line)
    if not lines:
        raise UserError(f"{path}: the codelist has no codes")
    found = _system_of(list(lines), str(path), lines) or COLUMN_SYSTEMS.get(chosen)
    if system is not None and system != found:
        raise UserError(f"{path}: these are {found} codes, not {system}")
    return Codelist(tuple(sorted(lines)), found, path.name)


def codelist_from_ecl(expression: str, system: str | None = None) -> Codelist:
    """A codelist by meaning: the concepts an ECL expression stands for (say
    "<< 195967001 |Asthma|", asthma and every kind of it), expanded now against the loaded
    terminology release, with its history (a retired concept a member replaced is a member).
    The expansion travels with the definition, named by the expression and the release, so a
    run matches exactly these codes whatever release the service has loaded by then."""
    if not isinstance(expression, str):
        raise UserError("codelist_from_ecl takes an ECL expression as text, e.g. '<< 195967001'")
    text = " ".join(expression.split())
    release = store.active()
    source = f"{ECL_PREFIX}{text}{ECL_RELEASE}{release.name} {release.version}"
    named = [str(c.id) for c in ecl.named(ecl.parse(text))]  # each a valid concept id
    excluded = shipped().excluded_codes()
    # A concept the expression names that the release lacks is a warning naming it, as a listed
    # one is. One never collected may be named to take it away (<< X MINUS << Y), so what the
    # expansion holds of those sets is left out and said, not refused.
    check_codes([c for c in named if c not in excluded], source)
    expanded = sets.expand(text, release)
    left_out = Counter(excluded[c] for c in expanded if c in excluded)
    if left_out:
        sets_named = ", ".join(f"{name} ({n:,})" for name, n in sorted(left_out.items()))
        warnings.warn(
            NeverCollectedWarning(
                f"{source}: {sum(left_out.values()):,} of its concepts are in code sets never "
                f"collected ({sets_named}) and are left out: no record carries them here"
            ),
            stacklevel=2,
        )
    codes = sorted(c for c in expanded if c not in excluded)
    if not codes:
        raise UserError(f"{source}: the expression stands for no concept that is collected")
    systems = {s for s in (_system_hint(c) for c in codes) if s is not None}
    if len(systems) > 1:
        raise UserError(f"{source} takes in both SNOMED CT and dm+d codes: narrow it to one system")
    found = systems.pop() if systems else None
    if system is not None and found is not None and system != found:
        raise UserError(f"{source}: these are {found} codes, not {system}")
    return Codelist(tuple(codes), found or system, source)


@dataclass(frozen=True)
class Shown:
    """A codelist of a definition as its page shows it: each code with its term."""

    name: str
    ecl: str | None  # the expression it was expanded from, if any
    codes: tuple[tuple[str, str | None], ...]  # the first SHOWN codes, each with its term
    more: int  # how many codes are not shown


SHOWN = 200


def shown(definition: n.Definition) -> list[Shown]:
    """Every codelist a definition matches codes against, with the terms of the loaded
    release beside the codes (None for a code it does not know), for a researcher to check."""
    release = store.active()
    out: dict[tuple[str, tuple[str, ...]], Shown] = {}
    for node in n.walk(*n.roots(definition)):
        if not isinstance(node, n.IsIn) or node.series.type not in CODE_TYPES:
            continue
        key = (node.codelist, node.codes)
        if key not in out:
            first = node.codes[:SHOWN]
            out[key] = Shown(
                node.codelist,
                ecl_of(node.codelist),
                tuple((c, release.term(int(c))) for c in first),
                len(node.codes) - len(first),
            )
    return list(out.values())


def ecl_of(source: str) -> str | None:
    """The expression a codelist was expanded from, or None for one that was not."""
    if not source.startswith(ECL_PREFIX) or ECL_RELEASE not in source:
        return None
    return source[len(ECL_PREFIX) :].rsplit(ECL_RELEASE, 1)[0]


def _system_of(codes: Sequence[str], source: str, lines: dict[str, int]) -> str | None:
    """The coding system every code belongs to; refuses invalid, mixed or never-collected
    codes, naming each by its line where there is one."""
    check_codes(codes, source, lines)
    systems = {s for s in (_system_hint(c) for c in codes) if s is not None}
    if len(systems) > 1:
        raise UserError(f"{source} mixes SNOMED CT and dm+d codes: keep one system per codelist")
    return systems.pop() if systems else None


def _system_hint(code: str) -> str | None:
    """Which system a code is known to be of: by the catalogue, or a dm+d product by the UK
    drug extension's namespace; None where a valid code could be either."""
    catalogue = load_catalogue()
    known = [s for s in SYSTEMS if (s, code) in catalogue]
    if len(known) == 1:
        return known[0]
    parsed = parse(code)
    if isinstance(parsed, str) or parsed.namespace is None:
        return None
    return "dmd" if parsed.namespace == DMD_NAMESPACE else "snomed"


def check_for_column(codes: Sequence[str], column_system: str, source: str) -> None:
    """Refuse codes that cannot match a column of `column_system` codes."""
    check_codes(codes, source)
    other = [c for c in codes if _system_hint(c) not in (None, column_system)]
    if other:
        raise UserError(
            f"{source}: {', '.join(other[:10])} {'is' if len(other) == 1 else 'are'} not "
            f"{column_system} codes, so cannot match this column"
        )


def check_codes(codes: Iterable[str], source: str, lines: dict[str, int] | None = None) -> None:
    """Refuse codes that are not SNOMED CT or dm+d identifiers, or are never collected; warn
    of valid codes the loaded release does not know (UnknownCodesWarning, naming them)."""
    excluded = shipped().excluded_codes()
    problems = []
    unknown = []
    for code in codes:
        where = f"line {lines[code]}: " if lines and code in lines else ""
        status = classify("snomed", code)
        if status is Status.INVALID:
            problem = concept_problem(code)
            problems.append(
                f"{where}{code} is not a SNOMED CT concept or dm+d product identifier ({problem})"
            )
        elif code in excluded:
            problems.append(
                f"{where}{code} is in the {excluded[code]} code set, which is never collected"
            )
        elif status is Status.NOT_IN_RELEASE:
            unknown.append(code)
    if problems:
        shown = "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
        raise UserError(f"{source}: {shown}. Check the codes against OpenCodelists, or remove them")
    if unknown:
        shown = ", ".join(unknown[:20]) + (
            f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        )
        warnings.warn(
            UnknownCodesWarning(
                f"{source}: {shown} {'is' if len(unknown) == 1 else 'are'} valid but not in the "
                "loaded terminology release; kept (load a newer release to check them)"
            ),
            stacklevel=2,
        )
