"""The centre's own check of every text field a verified package carries, before any of it is
loaded (its code columns are gpdpr.collect.codes').

A signature proves which practice made a package, not what its extractor put in it: a rogue or
faulty one, signing properly, could write an NHS number or a name into a pseudonym column, or
free text into a field of a closed vocabulary, and it would land in the lake and could reach a
research output. The extractor holds every text field to its kind (gpdpr.practice.rules.allowed);
the centre holds them to it again, each as an allowlist of its own:

  pseudonym         64 lower-case hex digits (the shape of every pseudonym the service makes);
  vocabulary        one of the field's values in the specification;
  lookup:<column>   a value of that column of the postcode lookup the specification names, as
                    the centre itself holds it (the same shipped file the practice reads);

or null, for each. The package's deletions (a table name and a record's pseudonym; they become
the lake's tombstones) and the pseudonyms of its manifest's Type 1 lists (which reach the opt-out
registry) are held likewise. A text field of a kind not listed here cannot be judged, so the
centre will not start (an allowlist that passes what it does not know is none).

Each chunk's distinct values are judged, not its rows, as for codes; and a value outside the kind
that sits in a Parquet dictionary page with no row using it is still in the file, so still sent.
A package with any such value is refused whole (see gpdpr.collect.codes for why whole). The
reason names the table, column, number of rows and the kind of fault from a closed set, never the
value: the reason is published, and the value may be exactly what must not be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.collect.verify import Package
from gpdpr.errors import UserError
from gpdpr.lake.store import read_parquet
from gpdpr.practice.package import PackageError
from gpdpr.practice.rules import PSEUDONYM_SHAPE, Geography
from gpdpr.spec import Specification

NOT_PSEUDONYM = "not a pseudonym (64 lower-case hex digits)"
NOT_VOCABULARY = "not in the field's vocabulary"
NOT_LOOKUP = "not in the postcode lookup"
NOT_RECORD_TABLE = "not a table of records of the specification"

# Where each lookup column sits in Geography.areas' values (lsoa_code, region_code, imd_decile).
_LOOKUP_PLACE = {"lsoa_code": 0, "region_code": 1}
DELETIONS = "deletions"
TYPE1_LISTS = ("active", "withdrawn", "registered")


@dataclass(frozen=True)
class Allowed:
    """One text column's allowlist: the shape of a pseudonym, or a set of values."""

    fault: str  # what a value outside it is, for the reason
    values: pa.Array | None = None  # None: the pseudonym shape

    def outside(self, distinct: pa.Array) -> pa.Array:
        """For each value, whether it is outside (a null is not: null is always allowed)."""
        if self.values is None:
            inside = pc.match_substring_regex(distinct, PSEUDONYM_SHAPE)
        else:
            inside = pc.is_in(distinct, value_set=self.values)
        return pc.and_(pc.is_valid(distinct), pc.invert(pc.fill_null(inside, True)))


PSEUDONYM = Allowed(NOT_PSEUDONYM)


@dataclass(frozen=True)
class CentreFields:
    """What the centre holds each text column of a package to, table by table."""

    tables: dict[str, dict[str, Allowed]]
    deletions: dict[str, Allowed]

    @classmethod
    def of(cls, spec: Specification) -> CentreFields:
        areas = Geography.load(spec).areas.values()
        lookups = {
            column: pa.array(sorted({area[place] for area in areas}), pa.string())
            for column, place in _LOOKUP_PLACE.items()
        }
        tables: dict[str, dict[str, Allowed]] = {}
        for table in spec.tables.values():
            text = [f for f in table.fields if f.type in ("pseudonym", "string")]
            tables[table.name] = {f.name: _allowed(f.kind, f.values, lookups) for f in text}
        # Only a record of a table with record ids can be deleted by one.
        records = sorted(t.name for t in spec.tables.values() if "record_id" in t.field_names)
        deletable = Allowed(NOT_RECORD_TABLE, pa.array(records, pa.string()))
        return cls(tables, {"table": deletable, "record_id": PSEUDONYM})


def _allowed(kind: str, values: tuple[str, ...], lookups: dict[str, pa.Array]) -> Allowed:
    if kind == "pseudonym":
        return PSEUDONYM
    if kind == "vocabulary":
        return Allowed(NOT_VOCABULARY, pa.array(values, pa.string()))
    column = kind.removeprefix("lookup:")
    if kind.startswith("lookup:") and column in lookups:
        return Allowed(NOT_LOOKUP, lookups[column])
    raise UserError(
        f"the centre cannot check text fields of kind {kind!r}: it knows pseudonym, vocabulary "
        f"and lookup:{'/'.join(sorted(lookups))}; update the collector with the specification"
    )


def check_fields(package: Package, centre: CentreFields) -> None:
    """PackageError naming every column of the package with a value outside its allowlist."""
    found: list[str] = []
    for table, columns in centre.tables.items():
        found += _judge(table, package.file(table), columns)
    deletions = package.folder / str(package.manifest["deletions"]["file"])
    found += _judge(DELETIONS, deletions, centre.deletions)
    found += _type1_lists(package)
    if found:
        raise PackageError(
            f"package {package.folder.name}: {'; '.join(found)}. A practice may not send them, "
            f"and nothing of the package was loaded. {package.practice} must correct its "
            "extractor and extract again"
        )


def _judge(table: str, path: Path, columns: dict[str, Allowed]) -> list[str]:
    names = list(columns)
    read = read_parquet(path, names, dictionary=names)
    found = []
    for column, allowed in columns.items():
        rows, unused = _outside(read[column], allowed)
        if rows:
            found.append(f"{table}.{column} has {rows:,} row(s) with a value {allowed.fault}")
        if unused:
            found.append(
                f"{table}.{column} holds a value {allowed.fault} in its file, though no row uses it"
            )
    return found


def _outside(values: pa.ChunkedArray, allowed: Allowed) -> tuple[int, bool]:
    """How many rows hold a value outside `allowed`, and whether the file holds one no row
    uses (in a dictionary page). Millions of rows hold a few thousand distinct values."""
    rows = 0
    unused = False
    for chunk in values.chunks:
        if not isinstance(chunk, pa.DictionaryArray):
            chunk = pc.dictionary_encode(chunk)
        bad = allowed.outside(chunk.dictionary)
        entries = int(pc.sum(bad).as_py() or 0)
        if not entries:
            continue
        using = pc.fill_null(pc.take(bad, chunk.indices), False)
        rows += int(pc.sum(using).as_py() or 0)
        unused |= len(pc.unique(pc.filter(chunk.indices, using))) < entries
    return rows, unused


def _type1_lists(package: Package) -> list[str]:
    """The manifest's Type 1 lists name people by pseudonym, and go to the opt-out registry."""
    lists = package.manifest.get("type1_opt_out")
    found = []
    for name in TYPE1_LISTS:
        listed = lists.get(name) if isinstance(lists, dict) else None
        if listed is None:
            continue  # verify and authority say what a package without them is
        entries = listed if isinstance(listed, list) else [listed]
        strings = pa.array([e if isinstance(e, str) else "" for e in entries], pa.string())
        bad = int(pc.sum(PSEUDONYM.outside(strings)).as_py() or 0)
        if bad:
            found.append(f"type1_opt_out.{name} has {bad:,} entry(ies) {NOT_PSEUDONYM}")
    return found
