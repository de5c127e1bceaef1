"""Codelists: sets of SNOMED CT concepts or dm+d products, from OpenCodelists-style CSV files.

Every code is checked against the terminology the service knows (`gpdpr.terminology`) when the
list is read, and again when the service receives a definition, so a mistyped code is caught
before a run rather than silently matching nothing. A code the specification never collects
(legally restricted or sensitive) is refused too: it could only ever match nothing, and a
researcher who expects otherwise should be told.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpdpr.errors import UserError
from gpdpr.spec import shipped
from gpdpr.terminology import load_catalogue

SYSTEMS = ("snomed", "dmd")
# The columns OpenCodelists downloads name their codes in, by coding system.
CODE_COLUMNS = ("code", "dmd_id", "snomedct_id", "id")


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
    found = _system_of(list(lines), str(path), lines)
    if system is not None and system != found:
        raise UserError(f"{path}: these are {found} codes, not {system}")
    return Codelist(tuple(sorted(lines)), found, path.name)


def _system_of(codes: Sequence[str], source: str, lines: dict[str, int]) -> str | None:
    """The coding system every code belongs to; refuses unknown, mixed or never-collected
    codes, naming each by its line where there is one."""
    check_codes(codes, source, lines)
    catalogue = load_catalogue()
    systems = {s for c in codes for s in SYSTEMS if (s, c) in catalogue}
    if len(systems) > 1:
        raise UserError(f"{source} mixes SNOMED CT and dm+d codes: keep one system per codelist")
    return systems.pop() if systems else None


def check_for_column(codes: Sequence[str], column_system: str, source: str) -> None:
    """Refuse codes that cannot match a column of `column_system` codes."""
    check_codes(codes, source)
    catalogue = load_catalogue()
    other = [c for c in codes if (column_system, c) not in catalogue]
    if other:
        raise UserError(
            f"{source}: {', '.join(other[:10])} {'is' if len(other) == 1 else 'are'} not "
            f"{column_system} codes, so cannot match this column"
        )


def check_codes(codes: Iterable[str], source: str, lines: dict[str, int] | None = None) -> None:
    """Refuse codes the service does not know, or never collects."""
    catalogue = load_catalogue()
    excluded = shipped().excluded_codes()
    problems = []
    for code in codes:
        where = f"line {lines[code]}: " if lines and code in lines else ""
        if code in excluded:
            problems.append(
                f"{where}{code} is in the {excluded[code]} code set, which is never collected"
            )
        elif not any((system, code) in catalogue for system in SYSTEMS):
            problems.append(f"{where}{code} is not a SNOMED CT concept or dm+d product we know")
    if problems:
        shown = "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
        raise UserError(f"{source}: {shown}. Check the codes against OpenCodelists, or remove them")
