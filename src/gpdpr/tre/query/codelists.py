"""Codelists: sets of SNOMED CT concepts or dm+d products, from OpenCodelists-style CSV files.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpdpr.errors import UserError
from gpdpr.spec import shipped
from gpdpr.terminology import Status, classify, load_catalogue
from gpdpr.terminology.sctid import concept_problem, parse

DMD_NAMESPACE = "1000001"  # the UK drug extension's: its concepts are dm+d products

SYSTEMS = ("snomed", "dmd")
# The columns OpenCodelists downloads name their codes in, by coding system.
CODE_COLUMNS = ("code", "dmd_id", "snomedct_id", "id")
COLUMN_SYSTEMS = {"dmd_id": "dmd", "snomedct_id": "snomed"}


class UnknownCodesWarning(UserWarning):
    """Valid codes the loaded terminology release does not know: kept, and named."""


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
