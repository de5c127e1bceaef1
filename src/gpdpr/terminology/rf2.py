"""Reading a SNOMED CT release in RF2 (Snapshot) into Arrow tables.

RF2 files are UTF-8, tab-separated, CRLF-terminated, with a header row of lowerCamelCase column
names. A release folder (or several, say the UK clinical and drug extensions beside the
International Edition) holds, under any sub-folders:

  sct2_Concept_Snapshot_<edition>_<date>.txt           id effectiveTime active moduleId
                                                       definitionStatusId
  sct2_Description_Snapshot-<lang>_<edition>_<date>.txt  ... conceptId languageCode typeId term
                                                       caseSignificanceId
  sct2_Relationship_Snapshot_<edition>_<date>.txt       ... sourceId destinationId
                                                       relationshipGroup typeId
                                                       characteristicTypeId modifierId
  der2_Refset_SimpleSnapshot_<edition>_<date>.txt       ... refsetId referencedComponentId
  der2_cRefset_AssociationSnapshot_<edition>_<date>.txt ... refsetId referencedComponentId
                                                       targetComponentId

Only the active rows are kept (a Snapshot holds each component's latest state), and of the
relationships only the is-a ones: the hierarchy is what code sets are drawn from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gpdpr.errors import UserError

IS_A = 116680003
SYNONYM = 900000000000013009
FSN = 900000000000003001
# The historical associations an inactive concept's replacement is read from, in the order one
# is preferred when a concept has several.
REPLACED_BY = 900000000000526001
SAME_AS = 900000000000527005
POSSIBLY_EQUIVALENT_TO = 900000000000523009
POSSIBLY_REPLACED_BY = 1186921001
ALTERNATIVE = 900000000000530003
REPLACEMENTS = (REPLACED_BY, SAME_AS, POSSIBLY_REPLACED_BY, POSSIBLY_EQUIVALENT_TO, ALTERNATIVE)

COMMON = ["id", "effectiveTime", "active", "moduleId"]


@dataclass(frozen=True)
class Kind:
    pattern: str  # how the file's name starts, in the International Edition
    columns: list[str]  # its header, exactly
    keep: dict[str, pa.DataType]  # the columns read, and as what

    def matches(self, name: str) -> bool:
        # National editions put a content subtype before "Snapshot" (the UK's UKCLSnapshot,
        # UKDGSnapshot, MONOSnapshot); Full and Delta files never match.
        head, _, _ = self.pattern.partition("Snapshot")
        return re.match(re.escape(head) + r"[A-Za-z]*Snapshot", name) is not None


KINDS = {
    "concepts": Kind(
        "sct2_Concept_Snapshot",
        [*COMMON, "definitionStatusId"],
        {"id": pa.int64(), "active": pa.int8()},
    ),
    "descriptions": Kind(
        "sct2_Description_Snapshot",
        [*COMMON, "conceptId", "languageCode", "typeId", "term", "caseSignificanceId"],
        {"active": pa.int8(), "conceptId": pa.int64(), "typeId": pa.int64(), "term": pa.string()},
    ),
    "relationships": Kind(
        "sct2_Relationship_Snapshot",
        [
            *COMMON,
            "sourceId",
            "destinationId",
            "relationshipGroup",
            "typeId",
            "characteristicTypeId",
            "modifierId",
        ],
        {
            "active": pa.int8(),
            "sourceId": pa.int64(),
            "destinationId": pa.int64(),
            "typeId": pa.int64(),
        },
    ),
    "refsets": Kind(
        "der2_Refset_SimpleSnapshot",
        [*COMMON, "refsetId", "referencedComponentId"],
        {"active": pa.int8(), "refsetId": pa.int64(), "referencedComponentId": pa.int64()},
    ),
    "associations": Kind(
        "der2_cRefset_AssociationSnapshot",
        [*COMMON, "refsetId", "referencedComponentId", "targetComponentId"],
        {
            "active": pa.int8(),
            "refsetId": pa.int64(),
            "referencedComponentId": pa.int64(),
            "targetComponentId": pa.int64(),
        },
    ),
}
# <kind>_<edition>_<YYYYMMDD>.txt: the edition (INT, GB1000000, ...) and version date.
NAME = re.compile(r"_(?P<edition>[A-Za-z0-9-]+)_(?P<date>\d{8})\.txt$")


@dataclass
class Rf2:
    """A release read: the active rows of each kind, and what it calls itself."""

    concepts: pa.Table  # id, active (inactive concepts are kept: records still carry them)
    descriptions: pa.Table  # concept, type, term
    isa: pa.Table  # child, parent
    refsets: pa.Table  # refset, member
    associations: pa.Table  # refset, source, target
    editions: list[str]
    version: str


def files_of(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    for path in sorted(root.rglob("*.txt")):
        for kind, spec in KINDS.items():
            if spec.matches(path.name):
                found[kind].append(path)
    return found


def read_release(root: Path) -> Rf2:
    """Every RF2 Snapshot file under `root`, read; a UserError says what is missing or wrong."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder an RF2 release was unpacked to")
    found = files_of(root)
    if not found["concepts"]:
        raise UserError(
            f"{root}: no sct2_Concept_Snapshot_*.txt under it; give the unpacked release's folder "
            "(a Snapshot release: Full and Delta files are not read)"
        )
    editions: set[str] = set()
    dates: set[str] = set()
    for path in [p for paths in found.values() for p in paths]:
        match = NAME.search(path.name)
        if match:
            editions.add(match["edition"])
            dates.add(match["date"])
    tables = {kind: _read_all(paths, KINDS[kind]) for kind, paths in found.items()}
    concepts = tables["concepts"].select(["id", "active"])
    descriptions = _active(tables["descriptions"])
    relationships = _active(tables["relationships"])
    isa = relationships.filter(pc.equal(relationships["typeId"], IS_A))
    refsets = _active(tables["refsets"])
    associations = _active(tables["associations"])
    return Rf2(
        concepts=pa.table(
            {"id": concepts["id"], "active": pc.equal(concepts["active"], 1)}
        ).combine_chunks(),
        descriptions=pa.table(
            {
                "concept": descriptions["conceptId"],
                "type": descriptions["typeId"],
                "term": descriptions["term"],
            }
        ),
        isa=pa.table({"child": isa["sourceId"], "parent": isa["destinationId"]}),
        refsets=pa.table(
            {"refset": refsets["refsetId"], "member": refsets["referencedComponentId"]}
        ),
        associations=pa.table(
            {
                "refset": associations["refsetId"],
                "source": associations["referencedComponentId"],
                "target": associations["targetComponentId"],
            }
        ),
        editions=sorted(editions),
        version=max(dates) if dates else "unknown",
    )


def _active(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table["active"], 1))


def _read_all(paths: Iterable[Path], kind: Kind) -> pa.Table:
    parts = [_read(path, kind) for path in paths]
    if not parts:
        return pa.table({name: pa.array([], t) for name, t in kind.keep.items()})
    return pa.concat_tables(parts)


def _read(path: Path, kind: Kind) -> pa.Table:
    with path.open("rb") as f:
        header = f.readline().decode("utf-8-sig", "replace").rstrip("\r\n").split("\t")
    if header != kind.columns:
        raise UserError(
            f"{path}, line 1: the header is {' '.join(header)!r}, not the RF2 columns "
            f"{' '.join(kind.columns)!r}; is this file from an RF2 release?"
        )
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 24),
            # Terms may hold quotes: RF2 has no quoting, a field ends at the tab.
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types=kind.keep, include_columns=list(kind.keep)
            ),
        )
    except (pa.ArrowInvalid, OSError) as error:
        raise UserError(
            f"{path}: cannot be read as RF2 ({error}); check the file is whole and unpacked"
        ) from None
