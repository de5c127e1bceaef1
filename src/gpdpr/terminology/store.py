"""The terminology store: a SNOMED CT release as columnar files, and the hierarchy index over it.

`gpdpr terminology load PATH --into DIR` writes DIR/ (Parquet files and release.json, made in a
side folder and renamed into place, so a store is whole or absent); the extractor, the centre and
the research environment read the store GPDPR_TERMINOLOGY names, or, without one, the small release
embedded in gpdpr (src/gpdpr/terminology/release/, RF2 written by the project: real concept ids
for what the specification and the synthetic practices use, under a realistic hierarchy).

"Descendants of X" is a breadth-first walk of the is-a edges held as a compressed sparse index
(each concept's children are one contiguous slice): a few array operations per level of the
hierarchy, which SNOMED CT keeps to a few dozen, rather than a closure table of tens of millions
of rows to build at every load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gpdpr.errors import UserError
from gpdpr.terminology.rf2 import REPLACEMENTS, SYNONYM, Rf2, read_release

ENV = "GPDPR_TERMINOLOGY"
EMBEDDED_NAME = "gpdpr embedded SNOMED CT subset"
STORE_TABLES = ("concepts", "descriptions", "isa", "refsets", "associations")
IdArray = npt.NDArray[np.int64]


@dataclass
class Release:
    name: str
    version: str
    embedded: bool
    ids: IdArray  # every concept, sorted
    active: npt.NDArray[np.bool_]  # aligned with ids
    isa: pa.Table  # child, parent
    descriptions: pa.Table  # concept, type, term
    refsets: pa.Table  # refset, member
    associations: pa.Table  # refset, source, target
    _members: dict[int, IdArray] = field(default_factory=dict)
    expansions: dict[str, frozenset[str]] = field(default_factory=dict)  # ECL -> codes

    @classmethod
    def of(cls, rf2: Rf2, name: str, embedded: bool = False) -> Release:
        concepts = rf2.concepts.sort_by("id")
        ids = concepts["id"].to_numpy()
        if ids.size and np.any(ids[1:] == ids[:-1]):
            raise UserError(f"{name}: a concept is listed twice; a Snapshot has one row each")
        return cls(
            name=name,
            version=rf2.version,
            embedded=embedded,
            ids=ids,
            active=concepts["active"].to_numpy(zero_copy_only=False),
            isa=rf2.isa,
            descriptions=rf2.descriptions,
            refsets=rf2.refsets,
            associations=rf2.associations,
        )

    # ---- identity ------------------------------------------------------------------------------

    @property
    def label(self) -> dict[str, str | bool]:
        return {"name": self.name, "version": self.version, "embedded": self.embedded}

    def positions(self, codes: IdArray) -> npt.NDArray[np.int64]:
        """Each code's index in `ids`, or -1 where the release has no such concept."""
        at = np.searchsorted(self.ids, codes)
        at = np.minimum(at, max(self.ids.size - 1, 0))
        found = self.ids.size > 0 and self.ids[at] == codes
        return np.where(found, at, -1)

    def knows(self, codes: IdArray) -> npt.NDArray[np.bool_]:
        return self.positions(codes) >= 0

    # ---- the hierarchy -------------------------------------------------------------------------

    @cached_property
    def _down(self) -> tuple[IdArray, IdArray]:
        return self._index(self.isa["parent"], self.isa["child"])

    @cached_property
    def _up(self) -> tuple[IdArray, IdArray]:
        return self._index(self.isa["child"], self.isa["parent"])

    def _index(self, source: pa.ChunkedArray, target: pa.ChunkedArray) -> tuple[IdArray, IdArray]:
        """Compressed sparse rows: the targets of concept i are at[start[i]:start[i + 1]]."""
        s = self.positions(source.to_numpy())
        t = self.positions(target.to_numpy())
        ok = (s >= 0) & (t >= 0)  # an edge to a concept the release lacks leads nowhere
        s, t = s[ok], t[ok]
        order = np.argsort(s, kind="stable")
        start = np.zeros(self.ids.size + 1, np.int64)
        np.cumsum(np.bincount(s, minlength=self.ids.size), out=start[1:])
        return start, t[order]

    def _walk(self, codes: IdArray, index: tuple[IdArray, IdArray], self_too: bool) -> IdArray:
        start, targets = index
        at = self.positions(codes)
        at = at[at >= 0]
        seen = np.zeros(self.ids.size, bool)
        frontier = np.unique(at)
        while frontier.size:
            lo, hi = start[frontier], start[frontier + 1]
            counts = hi - lo
            total = int(counts.sum())
            if not total:
                break
            # Every slice lo[k]:hi[k] laid end to end, without a Python loop.
            offsets = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
            found = targets[offsets]
            # Marking, not sorting, removes repeats: a pass over a bit per concept per level.
            level = np.zeros(self.ids.size, bool)
            level[found[~seen[found]]] = True
            seen |= level
            frontier = np.flatnonzero(level)
        if self_too:
            seen[at] = True
        return self.ids[seen]

    def descendants(self, codes: IdArray, self_too: bool = False) -> IdArray:
        return self._walk(codes, self._down, self_too)

    def ancestors(self, codes: IdArray, self_too: bool = False) -> IdArray:
        return self._walk(codes, self._up, self_too)

    def children(self, codes: IdArray) -> IdArray:
        return self._step(codes, self._down)

    def parents(self, codes: IdArray) -> IdArray:
        return self._step(codes, self._up)

    def _step(self, codes: IdArray, index: tuple[IdArray, IdArray]) -> IdArray:
        start, targets = index
        at = self.positions(codes)
        at = at[at >= 0]
        parts = [targets[start[i] : start[i + 1]] for i in at]
        return np.unique(self.ids[np.concatenate(parts)]) if parts else np.empty(0, np.int64)

    # ---- reference sets and history ------------------------------------------------------------

    def members(self, refset: int) -> IdArray:
        if refset not in self._members:
            hits = self.refsets.filter(pc.equal(self.refsets["refset"], refset))
            self._members[refset] = np.unique(hits["member"].to_numpy())
        return self._members[refset]

    def replacements(self, codes: IdArray) -> IdArray:
        """The active concepts the historical associations say replace the inactive ones among
        `codes` (each by its most definite association: REPLACED BY before SAME AS, and so on)."""
        at = self.positions(codes)
        inactive = codes[(at >= 0) & ~self.active[np.maximum(at, 0)]]
        if not inactive.size:
            return np.empty(0, np.int64)
        rows = self.associations.filter(
            pc.is_in(self.associations["source"], value_set=pa.array(inactive))
        )
        out: list[int] = []
        for source in np.unique(rows["source"].to_numpy()):
            mine = rows.filter(pc.equal(rows["source"], int(source)))
            for kind in REPLACEMENTS:
                targets = mine.filter(pc.equal(mine["refset"], kind))["target"].to_pylist()
                if targets:
                    out.extend(targets)
                    break
        return np.unique(np.array(out, np.int64))

    def replaced_into(self, codes: IdArray) -> IdArray:
        """The inactive concepts a historical association maps into `codes`."""
        a = self.associations
        rows = a.filter(
            pc.and_(
                pc.is_in(a["target"], value_set=pa.array(codes, pa.int64())),
                pc.is_in(a["refset"], value_set=pa.array(REPLACEMENTS, pa.int64())),
            )
        )
        sources = np.unique(rows["source"].to_numpy())
        at = self.positions(sources)
        inactive: IdArray = sources[(at >= 0) & ~self.active[np.maximum(at, 0)]]
        return inactive

    # ---- terms ---------------------------------------------------------------------------------

    @cached_property
    def _terms(self) -> dict[int, str]:
        # One synonym per concept stands for it (the first by position); the fully specified
        # name is the fallback. Without the language refsets this is not always the preferred
        # term, which is why it is shown beside the code and never replaces it.
        out: dict[int, str] = {}
        d = self.descriptions
        for wanted in (True, False):
            chosen = d.filter(
                pc.equal(d["type"], SYNONYM) if wanted else pc.not_equal(d["type"], SYNONYM)
            )
            for concept, term in zip(
                chosen["concept"].to_pylist(), chosen["term"].to_pylist(), strict=True
            ):
                out.setdefault(concept, term)
        return out

    def term(self, code: int) -> str | None:
        return self._terms.get(code)

    # ---- on disk -------------------------------------------------------------------------------

    def save(self, into: Path, source: str) -> None:
        """Write the store to `into` whole, or leave what was there untouched."""
        into = into.resolve()
        into.parent.mkdir(parents=True, exist_ok=True)
        side = Path(tempfile.mkdtemp(prefix=f".{into.name}.", dir=into.parent))
        try:
            tables = {
                "concepts": pa.table({"id": self.ids, "active": self.active}),
                "descriptions": self.descriptions,
                "isa": self.isa,
                "refsets": self.refsets,
                "associations": self.associations,
            }
            # The hierarchy index too, so that opening a store costs no sorting.
            start, targets = self._down
            tables["down_start"] = pa.table({"start": start})
            tables["down_targets"] = pa.table({"target": targets})
            for name, table in tables.items():
                pq.write_table(table, side / f"{name}.parquet", compression="zstd")
            meta = {"name": self.name, "version": self.version, "source": source}
            (side / "release.json").write_text(json.dumps(meta, indent=2) + "\n")
            if into.exists():
                old = into.with_name(f".{into.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                into.rename(old)
                side.rename(into)
                shutil.rmtree(old, ignore_errors=True)
            else:
                side.rename(into)
        except BaseException:
            shutil.rmtree(side, ignore_errors=True)
            raise


def open_store(folder: Path) -> Release:
    meta_path = folder / "release.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tables = {name: pq.read_table(folder / f"{name}.parquet") for name in STORE_TABLES}
    except (OSError, ValueError, pa.ArrowException) as error:
        raise UserError(
            f"{folder} is not a terminology store ({error}); make one with "
            "`gpdpr terminology load RELEASE --into FOLDER`"
        ) from None
    concepts = tables["concepts"]
    release = Release(
        name=str(meta["name"]),
        version=str(meta["version"]),
        embedded=False,
        ids=concepts["id"].to_numpy(),
        active=concepts["active"].to_numpy(zero_copy_only=False),
        isa=tables["isa"],
        descriptions=tables["descriptions"],
        refsets=tables["refsets"],
        associations=tables["associations"],
    )
    index = [folder / "down_start.parquet", folder / "down_targets.parquet"]
    if all(path.exists() for path in index):
        start, targets = (pq.read_table(path).column(0).to_numpy() for path in index)
        release.__dict__["_down"] = (start, targets)  # what the cached property would build
    return release


def load(path: Path, name: str | None = None) -> Release:
    """An RF2 release folder, read."""
    rf2 = read_release(path)
    return Release.of(rf2, name or f"SNOMED CT {'+'.join(rf2.editions) or path.name}")


@cache
def embedded() -> Release:
    folder = resources.files(__package__).joinpath("release")
    with resources.as_file(folder) as path:
        return Release.of(read_release(Path(path)), EMBEDDED_NAME, embedded=True)


@cache
def _stored(folder: str) -> Release:
    return open_store(Path(folder))


def location() -> str | None:
    """The store folder in use, or None for the embedded release."""
    return os.environ.get(ENV) or None


def active() -> Release:
    """The release every part of gpdpr decides codes by: the store GPDPR_TERMINOLOGY names, or
    the embedded one."""
    folder = os.environ.get(ENV)
    return _stored(folder) if folder else embedded()
