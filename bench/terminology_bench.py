"""Benchmark `gpdpr terminology load` and ECL expansion on a release of the UK edition's shape.

    .venv/bin/python bench/terminology_bench.py
    .venv/bin/python bench/terminology_bench.py --only release:37000 release:370000

Runs (release:CONCEPTS): a generated RF2 Snapshot with CONCEPTS concepts and, per concept, the
UK edition's proportions (about 370,000 concepts, 1.6 million descriptions, 3 million
relationships of which one in five is an is-a): 4.3 descriptions and 8.1 relationships. Its 19
top-level hierarchies hang under the root; Clinical finding (404684003) holds a third of all
concepts, as in SNOMED CT. Each concept's first parent is an earlier concept of its hierarchy
(depths of 10-20, as in the real one), one in three has a second parent; the other relationships
are attributes (finding site and the like) between random concepts. Identifiers carry correct
partitions and Verhoeff check digits. Files are tab-separated with a header, as RF2.

Each run has two child processes: the first writes the release to a temporary folder (not timed),
the second times `load` (read every file, keep the active rows and is-a edges, write the
Parquet store) and then, on the store as the extractor opens it, the first `<< 404684003`
expansion (which builds the hierarchy index) and a second one. Peak MB is the second child's
ru_maxrss. Targets at 370,000 concepts on 2 cores: load at most 60 s, expansion under 1 s.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from rich.console import Console
from rich.table import Table

from runs import CHILD, chosen_runs, run_child

UK_CONCEPTS = 370_000
DESCRIPTIONS_PER_CONCEPT = 4.3
RELATIONSHIPS_PER_CONCEPT = 8.1
ROOT, FINDING = 138875005, 404684003
TOPS = [
    FINDING, 71388002, 363787002, 373873005, 105590001, 410607006, 123037004, 272379006,
    243796009, 48176007, 362981000, 254291000, 123038009, 260787004, 78621006, 308916002,
    370115009, 419891008, 900000000000441003,
]  # fmt: skip
ATTRIBUTES = [363698007, 116676008, 246075003, 42752001, 255234002, 263502005, 370135005]
IS_A = 116680003
HEAD = ["20260101", "1", "900000000000207008"]

# Verhoeff, vectorised: the same tables gpdpr.terminology.sctid derives.
_D = np.array(
    [[(i + j) % 5 if j < 5 else 5 + (i + j) % 5 for j in range(10)] for i in range(5)]
    + [[5 + (i - j) % 5 if j < 5 else (i - j) % 5 for j in range(10)] for i in range(5)]
)
_P = [list(range(10))]
for _ in range(7):
    _P.append([(1, 5, 7, 6, 2, 8, 3, 0, 9, 4)[d] for d in _P[-1]])
_PERM = np.array(_P)
_INV = np.array([0, 4, 3, 2, 1, 5, 6, 7, 8, 9])


def sctids(items: np.ndarray, partition: int) -> np.ndarray:
    body = items.astype(np.int64) * 100 + partition
    c = np.zeros(body.size, np.int64)
    rest = body.copy()
    for i in range(18):
        digit = rest % 10
        live = (rest > 0) | (i == 0)
        c = np.where(live, _D[c, _PERM[(i + 1) % 8, digit]], c)
        rest //= 10
    out: np.ndarray = body * 10 + _INV[c]
    return out


def write_release(folder: Path, n: int, rng: np.random.Generator) -> dict[str, int]:
    ids = np.unique(sctids(rng.integers(1000, 10**9, n * 2), 0))
    ids = ids[~np.isin(ids, [ROOT, *TOPS])]
    ids = rng.permutation(ids)[: n - 1 - len(TOPS)]
    concepts = np.concatenate([[ROOT], TOPS, ids]).astype(np.int64)
    # Hierarchy membership: a third under Clinical finding, the rest spread over the others.
    tops = np.where(rng.random(ids.size) < 1 / 3, 0, rng.integers(1, len(TOPS), ids.size))
    child, parent = [np.array(TOPS, np.int64)], [np.full(len(TOPS), ROOT, np.int64)]
    for h in range(len(TOPS)):
        members = ids[tops == h]
        pool = np.concatenate([[TOPS[h]], members])
        # Each member's parent is an earlier concept of its hierarchy (in pool order).
        first = pool[(rng.random(members.size) * np.arange(1, members.size + 1)).astype(np.int64)]
        second_of = rng.random(members.size) < 1 / 3
        second = pool[(rng.random(members.size) * np.arange(1, members.size + 1)).astype(np.int64)]
        keep = second_of & (second != first)
        child += [members, members[keep]]
        parent += [first, second[keep]]
    isa_child, isa_parent = np.concatenate(child), np.concatenate(parent)
    n_rel = int(n * RELATIONSHIPS_PER_CONCEPT)
    n_attr = max(n_rel - isa_child.size, 0)
    rel_source = np.concatenate([isa_child, rng.choice(concepts, n_attr)])
    rel_dest = np.concatenate([isa_parent, rng.choice(concepts, n_attr)])
    rel_type = np.concatenate(
        [np.full(isa_child.size, IS_A), rng.choice(ATTRIBUTES, n_attr)]
    ).astype(np.int64)
    n_desc = int(n * DESCRIPTIONS_PER_CONCEPT)
    desc_concept = np.concatenate([concepts, rng.choice(concepts, n_desc - n)])
    write(
        folder / "sct2_Concept_Snapshot_BENCH_20260101.txt",
        {"id": concepts, "definitionStatusId": np.full(n, 900000000000074008)},
        ["id", "effectiveTime", "active", "moduleId", "definitionStatusId"],
    )
    term = pa.array([f"Generated concept term number {i}" for i in range(n_desc)])
    write(
        folder / "sct2_Description_Snapshot-en_BENCH_20260101.txt",
        {
            "id": sctids(np.arange(1, n_desc + 1), 1),
            "conceptId": desc_concept,
            "languageCode": pa.array(["en"] * n_desc),
            "typeId": np.where(np.arange(n_desc) < n, 900000000000003001, 900000000000013009),
            "term": term,
            "caseSignificanceId": np.full(n_desc, 900000000000448009),
        },
        ["id", "effectiveTime", "active", "moduleId", "conceptId", "languageCode", "typeId",
         "term", "caseSignificanceId"],
    )  # fmt: skip
    m = rel_source.size
    write(
        folder / "sct2_Relationship_Snapshot_BENCH_20260101.txt",
        {
            "id": sctids(np.arange(1, m + 1), 2),
            "sourceId": rel_source,
            "destinationId": rel_dest,
            "relationshipGroup": np.zeros(m, np.int64),
            "typeId": rel_type,
            "characteristicTypeId": np.full(m, 900000000000011006),
            "modifierId": np.full(m, 900000000000451002),
        },
        ["id", "effectiveTime", "active", "moduleId", "sourceId", "destinationId",
         "relationshipGroup", "typeId", "characteristicTypeId", "modifierId"],
    )  # fmt: skip
    return {"concepts": n, "descriptions": n_desc, "relationships": m, "isa": isa_child.size}


def write(path: Path, columns: dict[str, object], order: list[str]) -> None:
    rows = len(next(iter(columns.values())))  # type: ignore[arg-type]
    fixed = {"effectiveTime": HEAD[0], "active": HEAD[1], "moduleId": HEAD[2]}
    table = pa.table(
        {
            name: columns[name] if name in columns else pa.array([fixed[name]] * rows)
            for name in order
        }
    )
    with path.open("wb") as f:
        f.write(("\t".join(order) + "\r\n").encode())
        pacsv.write_csv(
            table,
            f,
            write_options=pacsv.WriteOptions(
                include_header=False, delimiter="\t", quoting_style="none"
            ),
        )


def child(folder: str) -> None:
    from gpdpr.terminology import ecl, store

    started = time.perf_counter()
    release = store.load(Path(folder))
    release.save(Path(folder) / "store", source=folder)
    load_s = time.perf_counter() - started
    opened = time.perf_counter()
    stored = store.open_store(Path(folder) / "store")
    open_s = time.perf_counter() - opened
    first = time.perf_counter()
    found = ecl.expand(f"<< {FINDING}", stored)
    first_s = time.perf_counter() - first
    second = time.perf_counter()
    ecl.expand(f"<< {FINDING}", stored)
    second_s = time.perf_counter() - second
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "load_s": load_s,
                "open_s": open_s,
                "first_s": first_s,
                "second_s": second_s,
                "found": int(found.size),
                "peak_mb": peak_mb,
            }
        )
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == CHILD:
        if sys.argv[2] == "write":
            counts = write_release(Path(sys.argv[3]), int(sys.argv[4]), np.random.default_rng(1))
            print(json.dumps(counts))
        else:
            child(sys.argv[3])
        return
    runs = chosen_runs(
        __doc__ or "",
        ["release"],
        [("release", UK_CONCEPTS // 10), ("release", UK_CONCEPTS)],
    )
    table = Table(title="gpdpr terminology: load an RF2 Snapshot, expand << 404684003")
    for column in (
        "concepts", "descriptions", "relationships", "load s", "rows/s", "open s",
        "<< first s", "<< again s", "found", "peak MB",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for _, n in runs:
        with tempfile.TemporaryDirectory(prefix="gpdpr-term-bench-") as folder:
            counts = run_child(__file__, "write", folder, str(n))
            figures = run_child(__file__, "time", folder)
        rows = counts["concepts"] + counts["descriptions"] + counts["relationships"]
        table.add_row(
            f"{counts['concepts']:,}",
            f"{counts['descriptions']:,}",
            f"{counts['relationships']:,}",
            f"{figures['load_s']:.1f}",
            f"{rows / figures['load_s']:,.0f}",
            f"{figures['open_s']:.2f}",
            f"{figures['first_s']:.3f}",
            f"{figures['second_s']:.3f}",
            f"{figures['found']:,}",
            f"{figures['peak_mb']:,.0f}",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
