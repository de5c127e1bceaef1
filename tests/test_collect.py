"""The central collector: what it loads, what it refuses, and that the lake never ends up between
two states: each test compares the lake's rows and content before and after."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from collecting import central, copies, resign, state
from conftest import Extracted, Made
from extracting import Keys, record_pseudonyms, run
from gpdpr.collect.service import REFUSED_NOTE, Central, collect, erase_cycle
from gpdpr.errors import UserError
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.optout.registry import Registry
from readers import practice_folders
from test_extract import _amend as amend

WATERMARK = datetime(2026, 10, 31, 23, 59, 59)
LATER = datetime(2026, 11, 14, 10, 0, 0)


def test_a_batch_is_loaded_whole_in_one_version_with_provenance_on_every_row(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = central(tmp_path, keys)
    folders = copies(clean_columnar_packages.packages, home.home / "inbox")
    result = collect(home, folders)

    assert result.version is not None and result.version.number == 1
    assert not result.refused and not result.left
    assert not any(f.exists() for f in folders), "the home's own copies go once loaded"
    assert _index(home) == _lake_people(home), "the timeline's index is what the lake holds"
    con = connect(Lake.open(home.lake_folder).snapshot())
    active = Registry(home.engine()).active_type1()
    assert active, "the clean nation has practice-recorded Type 1 opt-outs"
    for loaded in result.loaded:
        manifest: dict[str, Any] = clean_columnar_packages.manifests[loaded.practice]
        assert loaded.package_id == manifest["package_id"]
        sent = sum(t["rows"] for t in manifest["tables"].values())
        assert loaded.total == sent - loaded.type1_dropped
        for table, rows in loaded.rows.items():
            got = con.sql(
                f"select count(*), count(distinct practice), min(practice) from {table} "
                f"where package_id = '{loaded.package_id}'"
            ).fetchall()[0]
            assert got[0] == rows and (got[1], got[2]) == (1, loaded.practice)
    # Rows of people opted out at another practice are dropped on the way in.
    assert sum(r.type1_dropped for r in result.loaded) > 0
    con.register("active", pa.table({"p": sorted(active)}))
    for table in ("patients", "clinical_events", "medications", "appointments"):
        assert (
            con.sql(
                f"select count(*) from {table} where patient in (select p from active)"
            ).fetchall()[0][0]
            == 0
        )
    ledger = con.sql("select package_id, lake_version from packages order by 1").fetchall()
    assert ledger == sorted((r.package_id, 1) for r in result.loaded)


def test_loading_a_package_twice_changes_nothing(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = central(tmp_path, keys)
    names = ["Z10001", "Z10002"]
    # Twice in one batch: loaded once.
    first = collect(home, copies(clean_columnar_packages.packages, tmp_path / "a", names * 2))
    assert [r.already_in for r in first.loaded] == [None, None, 1, 1]
    before = state(home)
    again = collect(home, copies(clean_columnar_packages.packages, tmp_path / "b", names))
    assert again.version is None
    assert [r.already_in for r in again.loaded] == [1, 1]
    assert state(home) == before


# ---- packages that must be refused ------------------------------------------------------------


def _kit(keys: Keys, ods: str) -> Path:
    return keys.kit(ods) / "signing.key"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _unsigned(p: Path, keys: Keys) -> None:
    (p / "manifest.sig").unlink()


def _signed_by_another(p: Path, keys: Keys) -> None:
    resign(p, _kit(keys, "Z10002"))


def _truncated(p: Path, keys: Keys) -> None:
    f = p / "clinical_events.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _altered(p: Path, keys: Keys) -> None:
    _flip_byte(p / "medications.parquet")


def _lying_counts(p: Path, keys: Keys) -> None:
    rows = pq.read_metadata(p / "clinical_events.parquet").num_rows
    resign(p, _kit(keys, "Z10001"), {"tables/clinical_events/rows": rows + 1})


UNKNOWN = "Z99990"  # a practice no test issues a kit to (the key folder is the session's)


def _unknown_practice(p: Path, keys: Keys) -> None:
    assert not (keys.folder / "practices" / UNKNOWN).exists()
    resign(p, _kit(keys, "Z10001"), {"practice/ods_code": UNKNOWN})


def _old_specification(p: Path, keys: Keys) -> None:
    resign(p, _kit(keys, "Z10001"), {"specification/version": "0.9.0"})


def _other_specification_content(p: Path, keys: Keys) -> None:
    resign(p, _kit(keys, "Z10001"), {"specification/sha256": "0" * 64})


def _extra_file(p: Path, keys: Keys) -> None:
    (p / "notes.txt").write_text("Jane Smith, 999 000 0018")


def _wrong_columns(p: Path, keys: Keys) -> None:
    """Properly signed and checksummed, but a table lacks a column the specification has."""
    f = p / "allergies.parquet"
    pq.write_table(pq.read_table(f).drop_columns(["staff"]), f)
    from gpdpr.practice.package import sha256_file

    resign(
        p,
        _kit(keys, "Z10001"),
        {
            "files/allergies.parquet": {"bytes": f.stat().st_size, "sha256": sha256_file(f)},
        },
    )


def _no_manifest(p: Path, keys: Keys) -> None:
    (p / "manifest.json").unlink()


TAMPERING = {
    "unsigned": (_unsigned, "has no manifest.sig"),
    "signed by another practice": (_signed_by_another, "signature does not verify"),
    "truncated": (_truncated, "does not match its SHA-256"),
    "altered": (_altered, "does not match its SHA-256"),
    "manifest lies about counts": (_lying_counts, "but the manifest says"),
    "unknown practice": (_unknown_practice, f"{UNKNOWN}, which has no key registered"),
    "old specification version": (_old_specification, "which the centre does not accept"),
    "specification content differs": (_other_specification_content, "different content"),
    "file not in the manifest": (_extra_file, "notes.txt are not in the manifest"),
    "wrong columns": (_wrong_columns, "does not have the specification's columns"),
    "no manifest": (_no_manifest, "has no manifest.json"),
}


@pytest.fixture
def loaded_home(clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path) -> Central:
    home = central(tmp_path, keys)
    collect(home, copies(clean_columnar_packages.packages, tmp_path / "first", ["Z10003"]))
    return home


@pytest.mark.parametrize("how", sorted(TAMPERING))
def test_an_untrustworthy_package_is_refused_moved_aside_and_loads_nothing(
    how: str,
    clean_columnar_packages: Extracted,
    keys: Keys,
    tmp_path: Path,
    loaded_home: Central,
) -> None:
    home = loaded_home
    tamper, reason = TAMPERING[how]
    [package] = copies(clean_columnar_packages.packages, tmp_path / "bad", ["Z10001"])
    tamper(package, keys)
    given = _listing(package)
    before = state(home)

    result = collect(home, [package])

    assert result.version is None and not result.loaded
    [refused] = result.refused
    assert reason in refused.reason
    assert refused.moved_to is not None and reason in (refused.moved_to / REFUSED_NOTE).read_text()
    assert refused.left and result.left == [package]
    assert _listing(package) == given, "a package from outside the home is left untouched"
    assert state(home) == before


def test_a_refused_package_does_not_hold_back_the_good_ones(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = central(tmp_path, keys)
    bad, good = copies(clean_columnar_packages.packages, tmp_path / "in", ["Z10001", "Z10002"])
    _altered(bad, keys)
    result = collect(home, [bad, good])
    assert [r.folder.name for r in result.refused] == ["Z10001"]
    assert [(r.practice, r.already_in) for r in result.loaded] == [("Z10002", None)]
    con = connect(Lake.open(home.lake_folder).snapshot())
    assert con.sql("select distinct practice from clinical_events").fetchall() == [("Z10002",)]


# ---- incrementals, in and out of order --------------------------------------------------------


@pytest.fixture(scope="module")
def incremental(
    clean_columnar: Made,
    clean_columnar_packages: Extracted,
    keys: Keys,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, set[str]]]:
    """An incremental package of practice 3: corrections, entries in error, a new dissent and a
    withdrawn one."""
    practice = practice_folders(clean_columnar.root)[2]
    work = tmp_path_factory.mktemp("incremental")
    changed = amend(practice, work / "amended" / practice.name, LATER)
    (work / "packages").mkdir()
    run(work / "amended" / practice.name, work / "packages" / "Z10003-inc", keys, since=WATERMARK)
    return work / "packages", changed


def test_corrections_and_deletions_land_the_same_whatever_order_packages_arrive_in(
    clean_columnar_packages: Extracted,
    incremental: tuple[Path, dict[str, set[str]]],
    keys: Keys,
    tmp_path: Path,
) -> None:
    historic_from, (incremental_from, changed) = clean_columnar_packages.packages, incremental
    orders = {
        "in order": [["historic"], ["incremental"]],
        "out of order": [["incremental"], ["historic"]],
        "one batch": [["historic", "incremental"]],
    }
    results = {}
    for name, batches in orders.items():
        home = central(tmp_path / name.replace(" ", "-"), keys)
        for batch in batches:
            folders = []
            for which in batch:
                if which == "historic":
                    folders += copies(historic_from, tmp_path / name / which, ["Z10003"])
                else:
                    folders += copies(incremental_from, tmp_path / name / which, ["Z10003-inc"])
            collect(home, folders)
        erase_cycle(home)  # the incremental brings a new dissent: erase them in every order
        results[name] = state(home)[1]
        con = connect(Lake.open(home.lake_folder).snapshot())
        corrected = record_pseudonyms(keys, "Z10003", "clinical_events", changed["corrected"])
        ids = ", ".join(f"'{i}'" for i in corrected)
        values = con.sql(f"select distinct value from clinical_events where record_id in ({ids})")
        assert values.fetchall() == [(42.0,)]
        in_error = record_pseudonyms(keys, "Z10003", "clinical_events", changed["in_error"])
        gone = ", ".join(f"'{i}'" for i in in_error)
        left = con.sql(f"select count(*) from clinical_events where record_id in ({gone})")
        assert left.fetchall() == [(0,)]
    assert results["in order"] == results["out of order"] == results["one batch"]


def test_the_collect_command_explains_a_refusal_and_exits_non_zero(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    import subprocess
    import sys

    home = tmp_path / "home"
    shutil.copytree(keys.folder, home / "keys")
    bad, good = copies(clean_columnar_packages.packages, tmp_path / "in", ["Z10001", "Z10002"])
    _lying_counts(bad, keys)
    done = subprocess.run(
        [sys.executable, "-m", "gpdpr", "collect", str(bad), str(good), "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 1, done.stderr
    assert "refused Z10001" in done.stdout and "but the manifest says" in done.stdout
    assert "lake version 1 committed" in done.stdout
    assert (home / "rejected" / "Z10001" / REFUSED_NOTE).exists()


def test_a_second_writer_is_turned_away_while_the_lake_is_being_written(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = central(tmp_path, keys)
    folders = copies(clean_columnar_packages.packages, tmp_path / "in", ["Z10001"])
    with Lake.open(home.lake_folder).writing():
        with pytest.raises(UserError, match="another gpdpr process is writing to the lake"):
            collect(home, folders)
        with pytest.raises(UserError, match="another gpdpr process is writing to the lake"):
            erase_cycle(home)
    assert all(f.exists() for f in folders), "a package turned away is kept for the next run"
    assert collect(home, folders).version is not None


def test_a_new_historic_extract_supersedes_everything_extracted_before_it(
    clean_columnar: Made,
    clean_columnar_packages: Extracted,
    incremental: tuple[Path, dict[str, set[str]]],
    keys: Keys,
    tmp_path: Path,
) -> None:
    """Records the practice no longer holds go with the next historic extract, and an older
    incremental arriving after it changes nothing."""
    practice = practice_folders(clean_columnar.root)[2]
    home = central(tmp_path, keys)
    collect(home, copies(clean_columnar_packages.packages, tmp_path / "first", ["Z10003"]))

    later = tmp_path / "later" / practice.name
    shutil.copytree(practice, later)
    events = pq.read_table(later / "clinical_events.parquet")
    gone = events.slice(1000, 25)["event_id"].to_pylist()
    pq.write_table(
        events.filter(pc.invert(pc.is_in(events["event_id"], pa.array(gone)))),
        later / "clinical_events.parquet",
    )
    about = json.loads((later / "extract.json").read_text())
    about["extracted_at"] = "2026-11-20T08:00:00Z"  # after the incremental's window
    (later / "extract.json").write_text(json.dumps(about))
    (tmp_path / "snapshot").mkdir()
    run(later, tmp_path / "snapshot" / "Z10003", keys)
    collect(home, [tmp_path / "snapshot" / "Z10003"])

    con = connect(Lake.open(home.lake_folder).snapshot())
    ids = ", ".join(f"'{i}'" for i in record_pseudonyms(keys, "Z10003", "clinical_events", gone))
    assert con.sql(
        f"select count(*) from clinical_events where record_id in ({ids})"
    ).fetchall() == [(0,)]
    assert con.sql("select count(distinct package_id) from clinical_events").fetchall() == [(1,)]
    before = state(home)

    incremental_from, _ = incremental  # extracted 2026-11-14: older than the new snapshot
    late = collect(home, copies(incremental_from, tmp_path / "late", ["Z10003-inc"]))
    [loaded] = late.loaded
    assert loaded.total == 0 and loaded.stale > 0
    assert state(home)[1] == before[1]


def test_without_the_practices_keys_nothing_is_judged_and_nothing_moved(
    clean_columnar_packages: Extracted, tmp_path: Path
) -> None:
    home = Central(tmp_path / "home", key_folder=tmp_path / "no-keys")
    folders = copies(clean_columnar_packages.packages, tmp_path / "in", ["Z10001"])
    with pytest.raises(UserError, match="no practice keys at"):
        collect(home, folders)
    assert folders[0].exists() and not home.rejected.exists()


def _listing(folder: Path) -> dict[str, str]:
    """Every file under `folder`, by path, with its content's hash."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _index(home: Central) -> dict[tuple[str, str], int]:
    """The collections index: rows per (pseudonym hash, package)."""
    import sqlalchemy as sa

    from gpdpr.db.models import Collected

    with home.engine().connect() as con:
        found = con.execute(
            sa.select(Collected.pseudonym_hash, Collected.package_id, Collected.rows)
        )
        return {(h, p): n for h, p, n in found}


def _lake_people(home: Central) -> dict[tuple[str, str], int]:
    """The same, counted over every lake table that names a patient."""
    from gpdpr.db import pseudonym_hash

    snapshot = Lake.open(home.lake_folder).snapshot()
    con = connect(snapshot)
    counted: dict[tuple[str, str], int] = {}
    for name, table in snapshot.lake.data.items():
        if table.patient:
            rows = con.sql(
                f'select "{table.patient}", package_id, count(*) from {name} group by all'
            )
            for person, package, n in rows.fetchall():
                key = (pseudonym_hash(person), package)
                counted[key] = counted.get(key, 0) + n
    return counted


def test_the_collections_index_is_made_with_the_load_record_even_after_a_kill_and_an_erasure(
    clean_columnar_packages: Extracted,
    keys: Keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run killed between its lake commit and its record leaves both to the next run, which
    indexes what the lake holds then: not the people an erasure removed in between."""
    from gpdpr.collect import service
    from gpdpr.collect.received import rebuild
    from gpdpr.db import pseudonym_hash

    home = central(tmp_path, keys)
    folders = copies(clean_columnar_packages.packages, tmp_path / "in", ["Z10001", "Z10002"])
    monkeypatch.setattr(service, "record_committed_loads", lambda *_: 0)
    assert collect(home, folders).version is not None
    monkeypatch.undo()
    assert _index(home) == {}, "the kill came before the record: nothing indexed yet"

    people = {h for h, _ in _lake_people(home)}
    registry = Registry(home.engine())
    erased = sorted(_held(home))[0]
    registry.set(erased, "type1", "online")
    erase_cycle(home)

    again = collect(home, folders)  # the operator's re-run: already loaded, now recorded
    assert again.version is None and {r.already_in for r in again.loaded} == {1}
    index = _index(home)
    assert index and index == _lake_people(home)
    assert pseudonym_hash(erased) not in {h for h, _ in index}
    assert len({h for h, _ in index}) == len(people) - 1
    # Made again from the whole lake (`gpdpr lake index`, after an upgrade): the same.
    assert rebuild(home.engine(), Lake.open(home.lake_folder)) == len(index)
    assert _index(home) == index


def _held(home: Central) -> set[str]:
    """The pseudonyms of the patients the lake holds."""
    patients = Lake.open(home.lake_folder).snapshot().read("patients", ["patient"])
    return {str(p) for p in patients["patient"].to_pylist()}
