"""The centre's own check of the codes a verified package carries, before any of it is loaded.

A signature proves which practice made a package, not that its extractor was sound: a rogue or
faulty one could send a record of a legally restricted or sensitive kind, or a code that is no
code at all. So the centre holds every code column to the specification again, against its own
terminology release (GPDPR_TERMINOLOGY, else the embedded one):

  - each value is a SNOMED CT concept identifier (digits, partition, Verhoeff check digit; a
    dm+d identifier is one too); a valid code the release does not know passes, as at the
    practice;
  - no value is in a set the specification never collects (its restricted sets, its sensitive
    sets it does not collect, the Type 1 opt-out codes), each expanded by ECL in the centre's
    release with history applied, and joined with the expansion the package's manifest says
    its practice used. The union is what makes releases of different dates safe: a child
    concept only the newer of the two knows is kept out whichever side has it, and a manifest
    that lists fewer codes weakens nothing (it can only make its own package refused).

A package with any such row is refused whole, never loaded with the rows dropped: restricted data
must never reach the lake, and a practice that sends it is in breach, so nothing it sent in that
package is trusted (its counts, deletions and opt-out lists came from the same faulty run), and
the refusal is what makes the practice's operators find and fix the fault. The reason names the
table, column and number of rows, and the kind of fault from a closed set; never a code, nor
which set it fell in (the reason is published, and which set would say something of a patient).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.collect.verify import Package
from gpdpr.lake.store import read_parquet
from gpdpr.practice.package import PackageError
from gpdpr.spec import Specification
from gpdpr.terminology.sctid import concept_mask
from gpdpr.terminology.store import Release

INVALID = "not a valid SNOMED CT or dm+d concept identifier"
NEVER = "a code of a set the specification never collects (restricted, sensitive or opt-out)"


@dataclass(frozen=True)
class CentreCodes:
    """What the centre holds code columns to: its specification in its release."""

    columns: dict[str, tuple[str, ...]]  # table -> its code columns
    never: dict[str, frozenset[str]]  # set name -> its codes in the centre's release
    release: dict[str, str | bool]  # the release's name, version, whether embedded

    @classmethod
    def of(cls, spec: Specification, release: Release) -> CentreCodes:
        names = [n for n, s in spec.code_sets.items() if not s.collect]
        never = {n: spec.code_sets[n].expand() for n in names}
        never["type1_dissent"] = spec.dissent_codes()
        never["type1_withdrawn"] = spec.withdrawal_codes()
        columns = {
            t.name: tuple(f.name for f in t.fields if f.type == "code")
            for t in spec.tables.values()
        }
        return cls({t: c for t, c in columns.items() if c}, never, release.label)


def check_codes(package: Package, centre: CentreCodes) -> None:
    """PackageError naming every table and column with rows the centre may not load."""
    never = pa.array(sorted(_never(package.manifest, centre)), pa.string())
    found: list[str] = []
    kept_out = False
    for table, columns in centre.columns.items():
        read = read_parquet(package.file(table), list(columns), dictionary=list(columns))
        for column in columns:
            invalid, forbidden, unused = _faults(read[column], never)
            for fault, rows in ((INVALID, invalid), (NEVER, forbidden)):
                if rows:
                    found.append(f"{table}.{column} has {rows:,} row(s) with {fault}")
            if unused and not forbidden:
                found.append(f"{table}.{column} holds {NEVER} in its file, though no row uses it")
            kept_out |= forbidden > 0 or unused
    if not found:
        return
    hint = ""
    if kept_out and not _same_release(package, centre):
        release = centre.release
        hint = (
            " The package was made with another terminology release than the centre's "
            f"({release['name']} {release['version']}), which puts those codes in the sets: "
            "extract with that release or a later one."
        )
    raise PackageError(
        f"package {package.folder.name}: {'; '.join(found)}. A practice may not send them, and "
        f"nothing of the package was loaded.{hint} {package.practice} must correct its extract "
        "and extract again"
    )


def _faults(values: pa.ChunkedArray, never: pa.Array) -> tuple[int, int, bool]:
    """How many rows hold an invalid identifier, how many a never-collected code, and whether
    the file holds a never-collected code that no row uses (in a dictionary page: still in the
    file, so still sent). Each chunk's distinct values are judged, not its rows: millions of
    rows hold a few thousand codes."""
    invalid = forbidden = 0
    unused = False
    for chunk in values.chunks:
        if not isinstance(chunk, pa.DictionaryArray):
            chunk = pc.dictionary_encode(chunk)
        distinct = chunk.dictionary
        bad = pa.array(~concept_mask(distinct))
        if pc.any(bad).as_py():
            invalid += _rows_using(chunk, bad)
        kept_out = pc.is_in(distinct, value_set=never)
        if pc.any(kept_out).as_py():
            rows = _rows_using(chunk, kept_out)
            forbidden += rows
            unused |= rows == 0
    return invalid, forbidden, unused


def _rows_using(chunk: pa.DictionaryArray, values: pa.Array) -> int:
    """The rows whose value is one of those marked (a dictionary may hold values no row uses)."""
    return int(pc.sum(pc.fill_null(pc.take(values, chunk.indices), False)).as_py() or 0)


def _never(manifest: dict[str, Any], centre: CentreCodes) -> set[str]:
    """The centre's never-collected codes, with those the manifest lists for the same sets."""
    out: set[str] = set().union(*centre.never.values())
    recorded = manifest.get("terminology")
    sets = recorded.get("code_sets") if isinstance(recorded, dict) else None
    for name in centre.never:
        listed = sets.get(name) if isinstance(sets, dict) else None
        codes = listed.get("codes") if isinstance(listed, dict) else None
        if isinstance(codes, list):
            out.update(c for c in codes if isinstance(c, str))
    return out


def _same_release(package: Package, centre: CentreCodes) -> bool:
    used = package.manifest.get("terminology")
    return (
        isinstance(used, dict)
        and used.get("name") == centre.release["name"]
        and used.get("version") == centre.release["version"]
    )
