"""Writes the embedded default release (release/, RF2 Snapshot) from catalogue.csv and
hierarchy.csv: `python -m gpdpr.terminology.embedded`. The files are committed; a test checks
they are what this writes, so the two CSV files stay the place to change them.

Every concept is a real SNOMED CT or dm+d concept. The hierarchy is a faithful but shortened one:
a concept sits under a real ancestor (say Disease, or a real grouping such as Sexually
transmitted infectious disease) without every intermediate concept of the full release, and a
concept hierarchy.csv gives no parent for sits under the top concept of its kind. Description and
relationship identifiers are the project's own (namespace 9999999, which no one is issued):
nothing reads them but the loader.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gpdpr.terminology.rf2 import FSN, IS_A, KINDS, SYNONYM
from gpdpr.terminology.sctid import check_digit

VERSION = "20261101"
EDITION = "GPDPR"
CORE_MODULE = 900000000000207008
PRIMITIVE = 900000000000074008
INFERRED = 900000000000011006
EXISTENTIAL = 900000000000451002
NAMESPACE = "9999999"
TOP_OF_KIND = {
    "disorder": "64572001",
    "finding": "404684003",
    "procedure": "71388002",
    "observable entity": "363787002",
    "VMP": "373873005",
    "vaccine": "373873005",
}
TAG = {"VMP": "product", "vaccine": "product", "root": "SNOMED RT+CTV3"}
CRLF = "\r\n"


@dataclass
class Row:
    code: str
    parents: list[str]
    term: str
    kind: str


def _text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def concepts() -> list[Row]:
    """hierarchy.csv's concepts and parents, with the catalogue's terms and kinds filled in."""
    rows: dict[str, Row] = {}
    for r in csv.DictReader(_text("catalogue.csv").splitlines()):
        if r["code"] and r["code"] not in rows:
            rows[r["code"]] = Row(r["code"], [], r["term"], r["kind"] or "finding")
    for r in csv.DictReader(_text("hierarchy.csv").splitlines()):
        row = rows.setdefault(r["code"], Row(r["code"], [], r["term"], r["kind"]))
        row.parents = r["parents"].split()
        row.term = r["term"] or row.term
        row.kind = r["kind"] or row.kind
    for row in rows.values():
        if not row.parents and row.code != "138875005":
            row.parents = [TOP_OF_KIND.get(row.kind, "138875005")]
    return sorted(rows.values(), key=lambda r: int(r.code))


def _ids(partition: str) -> Iterator[str]:
    item = 0
    while True:
        item += 1
        body = f"{item}{NAMESPACE}{partition}"
        yield body + check_digit(body)


def write(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = concepts()
    description_ids = _ids("11")
    relationship_ids = _ids("12")
    head = [VERSION, "1", str(CORE_MODULE)]

    def file(kind: str, suffix: str, lines: list[list[str]]) -> None:
        name = f"{KINDS[kind].pattern}{suffix}_{EDITION}_{VERSION}.txt"
        body = ["\t".join(KINDS[kind].columns)] + ["\t".join(line) for line in lines]
        (folder / name).write_bytes((CRLF.join(body) + CRLF).encode("utf-8"))

    file("concepts", "", [[r.code, *head, str(PRIMITIVE)] for r in rows])
    descriptions = []
    for r in rows:
        tag = TAG.get(r.kind, r.kind)
        for kind, term in ((FSN, f"{r.term} ({tag})"), (SYNONYM, r.term)):
            descriptions.append(
                [next(description_ids), *head, r.code, "en", str(kind), term, "900000000000448009"]
            )
    file("descriptions", "-en", descriptions)
    relationships = [
        [next(relationship_ids), *head, r.code, p, "0", str(IS_A), str(INFERRED), str(EXISTENTIAL)]
        for r in rows
        for p in r.parents
    ]
    file("relationships", "", relationships)
    # The release carries no simple refsets and no inactive concepts: the headers alone say so.
    for part in ("refsets", "associations"):
        file(part, "", [])


if __name__ == "__main__":
    write(Path(__file__).parent / "release")
