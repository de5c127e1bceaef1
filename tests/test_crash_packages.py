"""A package whose signature is valid but whose Parquet pages are damaged (the practice's disk or
writer broke them before signing) is refused before the load, with where it is damaged, and moved
aside; the good packages of the same run load as if it had never been sent."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from collecting import copies, resign
from conftest import Extracted
from extracting import Keys
from gpdpr.collect.service import REFUSED_NOTE, Central, collect
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.practice.kit import SIGNING_KEY
from gpdpr.practice.package import sha256_file

GOOD = ["Z10001", "Z10003"]
BAD = "Z10002"


def _damage_a_page(path: Path) -> None:
    """Overwrite the header of the largest column chunk's first page, leaving the footer (all
    that a metadata check reads) intact."""
    meta = pq.ParquetFile(path).metadata
    chunks = [meta.row_group(0).column(i) for i in range(meta.num_columns)]
    largest = max(chunks, key=lambda c: c.total_compressed_size)
    data = bytearray(path.read_bytes())
    start = largest.data_page_offset
    data[start : start + 24] = b"\xff" * 24
    path.write_bytes(bytes(data))


def test_a_signed_package_with_a_damaged_page_is_refused_and_the_others_load(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    inbox = tmp_path / "home" / "inbox"  # the service's own: a refused one is deleted
    folders = copies(clean_columnar_packages.packages, inbox, [GOOD[0], BAD, GOOD[1]])
    bad = folders[1]
    damaged = bad / "clinical_events.parquet"
    _damage_a_page(damaged)
    resign(
        bad,
        keys.kit(BAD) / SIGNING_KEY,
        {f"files/{damaged.name}/sha256": sha256_file(damaged)},
    )
    # The damage is real, and invisible to the footer: the row count and schema still read.
    assert pq.ParquetFile(damaged).metadata.num_rows > 0
    with pytest.raises(OSError):
        pq.read_table(damaged)

    home = Central(tmp_path / "home", key_folder=keys.folder)
    result = collect(home, folders)

    [refused] = result.refused
    assert refused.folder.name == BAD
    assert "clinical_events.parquet is damaged" in refused.reason
    assert "does not decode" in refused.reason
    assert refused.moved_to is not None and refused.moved_to.parent == home.rejected
    assert (refused.moved_to / REFUSED_NOTE).read_text().strip() == refused.reason
    assert not bad.exists()
    loaded = sorted(r.practice for r in result.loaded if r.already_in is None)
    assert loaded == GOOD
    assert result.version is not None
    held = (
        connect(Lake.open(home.lake_folder).snapshot())
        .sql("select practice, count(*) from clinical_events group by practice order by 1")
        .fetchall()
    )
    assert [p for p, n in held if n] == GOOD
