"""Reading a dm+d release (the NHSBSA's XML files) into the same shape as an RF2 release, so that
its products sit in the terminology store beside SNOMED CT.

A dm+d release folder holds one file per kind, f_<kind>2_3DDMMYY.xml (3, then the release date),
each a root element around the records; three kinds are read:

  f_vtm2_*.xml  VIRTUAL_THERAPEUTIC_MOIETIES/VTM       VTMID NM [INVALID] [VTMIDPREV]
  f_vmp2_*.xml  VIRTUAL_MED_PRODUCTS/VMPS/VMP          VPID NM [VTMID] [INVALID] [VPIDPREV]
  f_amp2_*.xml  ACTUAL_MEDICINAL_PRODUCTS/AMPS/AMP     APID NM VPID [INVALID]

Every id is a SNOMED CT concept id (dm+d products are concepts of SNOMED CT's UK drug extension),
checked as such. The dm+d model becomes the hierarchy codes are drawn from: an AMP is a kind of
its VMP, a VMP of its VTM, so `<< VTM` is the moiety and every product of it. An id changed by
the NHSBSA (VPIDPREV, VTMIDPREV) is an inactive concept REPLACED BY the current one, so a record
made before the change still counts. INVALID marks a record withdrawn: an inactive concept.

The files are parsed with expat, refusing any document type declaration (dm+d files have none),
so no entity can be defined, expanded or fetched; every other element is passed over.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat

import pyarrow as pa

from gpdpr.errors import UserError
from gpdpr.terminology.rf2 import REPLACED_BY, SYNONYM, Rf2
from gpdpr.terminology.sctid import concept_problem


@dataclass(frozen=True)
class Kind:
    name: str  # VTM | VMP | AMP
    file: str  # how the file's name starts
    path: tuple[str, ...]  # the elements from the root to a record
    id: str
    parent: str | None  # the element naming the record one level up the dm+d model
    previous: str | None  # the element naming the id this one replaced


KINDS = (
    Kind("VTM", "f_vtm2_", ("VIRTUAL_THERAPEUTIC_MOIETIES", "VTM"), "VTMID", None, "VTMIDPREV"),
    Kind("VMP", "f_vmp2_", ("VIRTUAL_MED_PRODUCTS", "VMPS", "VMP"), "VPID", "VTMID", "VPIDPREV"),
    Kind("AMP", "f_amp2_", ("ACTUAL_MEDICINAL_PRODUCTS", "AMPS", "AMP"), "APID", "VPID", None),
)
DATE = re.compile(r"_3(?P<day>\d\d)(?P<month>\d\d)(?P<year>\d\d)\.xml$")
MAX_TEXT = 10_000  # characters of one field: a dm+d name is at most a few hundred


@dataclass
class Record:
    line: int
    fields: dict[str, str]


def files_of(root: Path) -> dict[str, list[Path]]:
    return {
        kind.name: sorted(p for p in root.rglob(f"{kind.file}*.xml") if p.is_file())
        for kind in KINDS
    }


def is_dmd(root: Path) -> bool:
    return any(files_of(root).values())


def records(path: Path, kind: Kind) -> Iterator[Record]:
    """The records of one file, each with the line it starts on; a UserError names the file and
    line of anything that is not a dm+d file of this kind."""
    found: list[Record] = []
    stack: list[str] = []
    current: Record | None = None
    text: list[str] = []
    parser = expat.ParserCreate(encoding=None)

    def refuse(*_: object) -> None:
        raise UserError(
            f"{path}, line {parser.CurrentLineNumber}: a document type declaration; dm+d files "
            "have none, and this one is not read"
        )

    def start(name: str, _: dict[str, str]) -> None:
        nonlocal current
        if not stack and name != kind.path[0]:
            raise UserError(
                f"{path}, line {parser.CurrentLineNumber}: the root element is {name}, not "
                f"{kind.path[0]}; is this the dm+d {kind.name} file?"
            )
        stack.append(name)  # the file's other sections are passed over: nothing reads them
        if stack == list(kind.path):
            current = Record(parser.CurrentLineNumber, {})
        text.clear()

    def end(name: str) -> None:
        nonlocal current
        if current is not None and len(stack) == len(kind.path) + 1:
            value = "".join(text).strip()
            if len(value) > MAX_TEXT:
                raise UserError(
                    f"{path}, line {parser.CurrentLineNumber}: {name} is {len(value):,} "
                    f"characters long; a dm+d field is at most {MAX_TEXT:,}"
                )
            current.fields[name] = value
        elif current is not None and stack == list(kind.path):
            found.append(current)
            current = None
        stack.pop()

    def characters(data: str) -> None:
        if current is not None and len(stack) == len(kind.path) + 1:
            text.append(data)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        with path.open("rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as error:
        raise UserError(
            f"{path}, line {error.lineno}: not well-formed XML ({expat.ErrorString(error.code)}); "
            "check the file is whole and unpacked"
        ) from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    yield from found


@dataclass
class Products:
    """What a dm+d release holds, as columns."""

    id: list[int]
    kind: list[str]
    name: list[str]
    parent: list[int | None]
    active: list[bool]
    previous: list[tuple[int, int]]  # (old id, current id)


def _id(value: str | None, element: str, where: str, required: bool) -> int | None:
    if not value:
        if required:
            raise UserError(f"{where}: no {element}")
        return None
    problem = concept_problem(value)
    if problem:
        raise UserError(f"{where}: {element} {value!r} is not a dm+d id ({problem})")
    return int(value)


def read_products(root: Path) -> tuple[Products, str]:
    """Every VTM, VMP and AMP under `root`, and the release's date (YYYYMMDD, from the names)."""
    found = files_of(root)
    out = Products([], [], [], [], [], [])
    dates: set[str] = set()
    for kind in KINDS:
        for path in found[kind.name]:
            match = DATE.search(path.name)
            if match:
                dates.add(f"20{match['year']}{match['month']}{match['day']}")
            for record in records(path, kind):
                where = f"{path}, line {record.line} ({kind.name})"
                f = record.fields
                code = _id(f.get(kind.id), kind.id, where, required=True)
                assert code is not None
                name = f.get("NM", "")
                if not name:
                    raise UserError(f"{where}: {kind.id} {code} has no NM (name)")
                out.id.append(code)
                out.kind.append(kind.name)
                out.name.append(name)
                out.parent.append(
                    _id(f.get(kind.parent), kind.parent, where, False) if kind.parent else None
                )
                out.active.append(f.get("INVALID", "0") != "1")
                previous = (
                    _id(f.get(kind.previous), kind.previous, where, False)
                    if kind.previous
                    else None
                )
                if previous is not None and previous != code:
                    out.previous.append((previous, code))
    return out, max(dates) if dates else "unknown"


def as_rf2(products: Products, version: str) -> Rf2:
    """The products as an RF2 release reads: concepts (a replaced id an inactive one),
    names as synonyms, the dm+d model as is-a, replaced ids as REPLACED BY."""
    ids = list(products.id)
    active = list(products.active)
    current = set(ids)
    for old, _ in products.previous:
        if old not in current:
            ids.append(old)
            active.append(False)
            current.add(old)
    children = [c for c, p in zip(products.id, products.parent, strict=True) if p is not None]
    parents = [p for p in products.parent if p is not None]
    return Rf2(
        concepts=pa.table({"id": pa.array(ids, pa.int64()), "active": pa.array(active)}),
        descriptions=pa.table(
            {
                "concept": pa.array(products.id, pa.int64()),
                "type": pa.array([SYNONYM] * len(products.id), pa.int64()),
                "term": pa.array(products.name, pa.string()),
            }
        ),
        isa=pa.table(
            {"child": pa.array(children, pa.int64()), "parent": pa.array(parents, pa.int64())}
        ),
        refsets=pa.table({"refset": pa.array([], pa.int64()), "member": pa.array([], pa.int64())}),
        associations=pa.table(
            {
                "refset": pa.array([REPLACED_BY] * len(products.previous), pa.int64()),
                "source": pa.array([o for o, _ in products.previous], pa.int64()),
                "target": pa.array([c for _, c in products.previous], pa.int64()),
            }
        ),
        editions=["dm+d"],
        version=version,
    )


def products_table(products: Products) -> pa.Table:
    """The store's record of which concepts are dm+d products, and of what kind."""
    return pa.table(
        {
            "id": pa.array(products.id, pa.int64()),
            "kind": pa.array(products.kind, pa.string()),
            "parent": pa.array(products.parent, pa.int64()),
        }
    )
