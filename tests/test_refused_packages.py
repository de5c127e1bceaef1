"""A refused package is kept only as its reason and a manifest summary: none of its rows, none of
its people (so no one later erased survives in HOME/rejected)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq

from collecting import central, copies
from conftest import Extracted
from extracting import Keys
from gpdpr.collect.refused import summary
from gpdpr.collect.service import REFUSED_NOTE, collect


def test_a_refused_package_keeps_its_reason_and_a_summary_and_no_one_in_it(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = central(tmp_path, keys)
    [package] = copies(clean_columnar_packages.packages, home.home / "inbox", ["Z10001"])
    people = {str(p) for f in package.glob("*.parquet") for p in _pseudonyms(pq.read_table(f))}
    assert len(people) > 10
    manifest = orjson.loads((package / "manifest.json").read_bytes())
    events = package / "clinical_events.parquet"
    events.write_bytes(events.read_bytes()[: events.stat().st_size // 2])  # refused: damaged

    [refused] = collect(home, [package]).refused
    assert refused.moved_to is not None and not package.exists()
    kept = sorted(p.name for p in refused.moved_to.rglob("*"))
    assert kept == ["REFUSED.txt", "manifest.json"]
    assert "does not match its SHA-256" in (refused.moved_to / REFUSED_NOTE).read_text()
    said = orjson.loads((refused.moved_to / "manifest.json").read_bytes())
    assert said["package_id"] == manifest["package_id"] and said["practice"] == manifest["practice"]
    assert (
        said["tables"]["clinical_events"]["rows"] == manifest["tables"]["clinical_events"]["rows"]
    )
    # every byte the centre holds of it: no pseudonym of anyone in the package
    held = b"".join(p.read_bytes() for p in home.rejected.rglob("*") if p.is_file())
    assert [p for p in people if p.encode() in held] == []


def test_a_summary_turns_lists_of_people_into_counts() -> None:
    manifest = {
        "package_id": "p",
        "type1_opt_out": {"active": ["a" * 64, "b" * 64], "withdrawn": ["c" * 64]},
        "tables": {"patients": {"file": "patients.parquet", "rows": 3}},
        "anything_else": ["d" * 64],
    }
    assert summary(manifest) == {
        "package_id": "p",
        "type1_opt_out": {"active": 2, "withdrawn": 1},
        "tables": {"patients": {"rows": 3}},
    }


def _pseudonyms(table: object) -> list[object]:
    import pyarrow as pa

    assert isinstance(table, pa.Table)
    return [v for name in table.column_names if name == "patient" for v in table[name].to_pylist()]
