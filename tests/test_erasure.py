"""Erasure: a Type 1 opt-out removes every row of the person from the lake and every byte of them
from disk within one cycle, touches no one else, keeps them out when their data arrives again,
and lets them back in when they withdraw it."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from collecting import central, copies
from conftest import Extracted, Made
from extracting import Keys, run
from gpdpr.collect.service import Central, collect, erase_cycle
from gpdpr.custodian.central import Custodian
from gpdpr.lake.query import connect, digest
from gpdpr.lake.store import Lake
from gpdpr.optout.registry import Registry
from gpdpr.practice.resend import write_resend_list
from home_scan import stored
from readers import practice_folders

PEOPLE = 6
SINCE = datetime(2026, 10, 31)  # a watermark just before the practices' extract


def _bytes_found(folder: Path, needles: list[bytes]) -> list[str]:
    """Every file under `folder` holding any of the needles: byte for byte in the file as it is
    on disk, and, for Parquet (compressed, so a raw search would miss them), in every value of
    every column once decoded. A file that cannot be decoded fails the test rather than pass
    unsearched."""
    texts = pa.array([n.decode() for n in needles])
    # A pseudonym is also kept as a number: its first 16 bytes (lake.tables.PERSON).
    numbers = pa.array([bytes.fromhex(n.decode()[:32]) for n in needles], pa.binary())
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(folder)}: {n[:12]!r}" for n in needles if n in data]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name, column in zip(table.column_names, table.columns, strict=True):
                column = stored(column)
                kind = column.type
                if pa.types.is_binary(kind) or pa.types.is_fixed_size_binary(kind):
                    values, wanted = column.cast(pa.binary()), numbers
                else:
                    values, wanted = column.cast(pa.string()), texts
                if pc.any(pc.is_in(values, value_set=wanted)).as_py():
                    found.append(f"{path.relative_to(folder)}: a value of {name}")
    return found


def _people_in_lake(practice: Path, home: Central, how_many: int) -> dict[str, str]:
    """NHS number -> pseudonym for people of the practice who have records in the lake."""
    custodian = Custodian(home.keys, home.engine())
    nhs = pq.read_table(practice / "patients.parquet", columns=["nhs_number"])["nhs_number"]
    con = connect(Lake.open(home.lake_folder).snapshot())
    chosen: dict[str, str] = {}
    for number in nhs.to_pylist():
        pseudonym = custodian.pseudonym_for(number, actor="test")
        held = con.sql(
            "select count(*) from clinical_events where patient = ?", params=[pseudonym]
        ).fetchall()[0][0]
        if held:
            chosen[number] = pseudonym
        if len(chosen) == how_many:
            return chosen
    raise AssertionError("not enough people with records")


@pytest.fixture
def home(clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path) -> Central:
    home = central(tmp_path, keys)
    collect(home, copies(clean_columnar_packages.packages, tmp_path / "inbox"))
    return home


def test_an_opted_out_person_is_physically_gone_and_no_one_else_is_touched(
    home: Central, clean_columnar: Made, keys: Keys, tmp_path: Path
) -> None:
    practice = practice_folders(clean_columnar.root)[0]
    people = _people_in_lake(practice, home, PEOPLE)
    erased = set(people.values())
    registry = Registry(home.engine())
    for pseudonym in erased:
        assert registry.set(pseudonym, "type1", "online")
    lake = Lake.open(home.lake_folder)
    held_before = digest(lake.snapshot(), leave_out=erased)
    everything_before = digest(lake.snapshot())
    needles = [p.encode() for p in erased]
    assert _bytes_found(home.lake_folder, needles), "the canary check must see them first"

    # Also waiting: everyone whose opt-out came in the practices' own manifests.
    awaiting = set(registry.awaiting_receipt())
    assert erased < awaiting

    cycle = erase_cycle(home)

    assert cycle.receipts == len(awaiting)
    assert _bytes_found(home.lake_folder, needles) == []
    after = lake.snapshot()
    assert after.version.operation == "vacuum"
    assert digest(after) == held_before, "only the opted-out people's rows went"
    removed = {t: everything_before[t][0] - held_before[t][0] for t in held_before}
    assert cycle.erasure.rows_removed == sum(removed.values()) > 0
    assert dict(cycle.erasure.by_table()) == {t: n for t, n in removed.items() if n}
    receipts = registry.receipts()
    assert len(receipts) == len(awaiting)
    assert sum(r["rows_removed"] for r in receipts) == cycle.erasure.rows_removed
    assert {r["lake_version"] for r in receipts} == {after.version.number}
    # Versions from before the erasure named the files it deleted: they are no longer offered.
    with pytest.raises(Exception, match="can no longer be read"):
        lake.snapshot(1)
    # A second cycle has no one new to receipt and nothing to remove.
    again = erase_cycle(home)
    assert again.receipts == 0 and again.erasure.rows_removed == 0


def test_records_arriving_after_an_opt_out_are_dropped_and_return_on_withdrawal(
    home: Central, clean_columnar: Made, keys: Keys, tmp_path: Path
) -> None:
    practice = practice_folders(clean_columnar.root)[0]
    people = _people_in_lake(practice, home, 2)
    registry = Registry(home.engine())
    for pseudonym in people.values():
        registry.set(pseudonym, "type1", "online")
    erase_cycle(home)
    needles = [p.encode() for p in people.values()]

    # The practice knows nothing of an online opt-out: its next extract still carries them.
    (tmp_path / "resend").mkdir()
    run(practice, tmp_path / "resend" / practice.name, keys)
    result = collect(home, [tmp_path / "resend" / practice.name])
    [loaded] = result.loaded
    assert loaded.type1_dropped > 0
    assert _bytes_found(home.lake_folder, needles) == []

    # They withdraw online. Their practice never knew: an ordinary incremental extract sends
    # only what changed, so their erased history does not come back by itself...
    for pseudonym in people.values():
        assert registry.withdraw(pseudonym, "type1", "online")
    assert registry.restored_type1() == set(people.values())
    (tmp_path / "plain").mkdir()
    run(practice, tmp_path / "plain" / practice.name, keys, since=SINCE)
    collect(home, [tmp_path / "plain" / practice.name])
    assert _held(home, people) == (0, 0)

    # ...until the centre's resend list asks for it: the next extract sends them in full.
    resend = tmp_path / "resend.json"
    write_resend_list(resend, registry.restored_type1(), since=None)
    (tmp_path / "asked").mkdir()
    manifest = run(practice, tmp_path / "asked" / practice.name, keys, since=SINCE, resend=resend)
    assert manifest["resent_on_request"] == len(people)
    collect(home, [tmp_path / "asked" / practice.name])
    people_back, rows_back = _held(home, people)
    assert people_back == len(people) and rows_back > 0


def _held(home: Central, people: dict[str, str]) -> tuple[int, int]:
    con = connect(Lake.open(home.lake_folder).snapshot())
    con.register("them", pa.table({"p": sorted(people.values())}))
    found = con.sql(
        "select count(distinct patient), count(*) from clinical_events "
        "where patient in (select p from them)"
    ).fetchall()[0]
    return int(found[0]), int(found[1])


def test_compaction_in_the_cycle_brings_no_one_back_and_leaves_no_copy(
    home: Central, clean_columnar: Made
) -> None:
    """The cycle compacts before it erases: a lake whose files were each split ten ways (as ten
    daily loads would leave it) is merged, the person is erased from the merged files, and
    neither the files compaction retired nor anything else on disk still holds them."""
    practice = practice_folders(clean_columnar.root)[0]
    people = _people_in_lake(practice, home, 2)
    lake = Lake.open(home.lake_folder)
    with lake.writing() as tx:
        for name in lake.schemas:
            for file in tx.snapshot.files(name):
                rows = tx.snapshot.read_file(name, file)
                for start in range(0, rows.num_rows, max(1, -(-rows.num_rows // 10))):
                    tx.write(name, file.practice, rows.slice(start, -(-rows.num_rows // 10)))
                tx.retire(name, file)
        tx.commit("split", {})
    erased = set(people.values())
    held_before = digest(lake.snapshot(), leave_out=erased)
    registry = Registry(home.engine())
    for pseudonym in erased:
        registry.set(pseudonym, "type1", "online")

    cycle = erase_cycle(home)

    assert cycle.compaction is not None and cycle.compaction.files_merged > 0
    assert cycle.erasure.rows_removed > 0
    assert _bytes_found(home.lake_folder, [p.encode() for p in erased]) == []
    after = lake.snapshot()
    assert digest(after) == held_before, "only the opted-out people's rows went"
    per_practice = Counter(f.practice for f in after.files("clinical_events"))
    assert per_practice and max(per_practice.values()) == 1, "the split files were merged"
