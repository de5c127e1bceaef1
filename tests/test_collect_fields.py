"""The centre holds every text field of a package to its kind: a practice whose extractor is rogue
or faulty, signing its packages properly, still cannot put an NHS number, a name or free text in
the lake through a pseudonym, vocabulary or lookup field, its deletions or its Type 1 lists."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from collecting import central, copies, hide, one_verified, plant, reseal, verified
from conftest import Extracted
from extracting import Keys
from gpdpr.collect.fields import NOT_LOOKUP, NOT_PSEUDONYM, CentreFields, check_fields
from gpdpr.collect.service import REFUSED_NOTE, collect
from gpdpr.collect.verify import Package
from gpdpr.db.models import Event
from gpdpr.errors import UserError
from gpdpr.lake.query import connect
from gpdpr.lake.store import Lake
from gpdpr.practice.package import MANIFEST, PackageError
from gpdpr.practice.rules import Geography
from gpdpr.spec import Field, shipped

NHS_NUMBER = "9434765919"  # the shape of an NHS number (valid check digit)
NAME = "Ada Canarywright"
POSTCODE = "ZZ99 3CZ"  # a postcode where a small area's code belongs
HIDDEN = "Hidden Canary 4857773456"
DELETED = "4010232137"
OPTED_OUT = "6541237890"
CANARIES = (NHS_NUMBER, NAME, POSTCODE, HIDDEN, DELETED, OPTED_OUT)
PSEUDONYM = re.compile(r"[0-9a-f]{64}")


def _delete(package: Path, record_id: str) -> None:
    """Deletions naming one record, and the manifest counting it."""
    manifest = orjson.loads((package / MANIFEST).read_bytes())
    file = package / str(manifest["deletions"]["file"])
    pq.write_table(pa.table({"table": ["clinical_events"], "record_id": [record_id]}), file)
    manifest["deletions"]["rows"] = 1
    (package / MANIFEST).write_bytes(orjson.dumps(manifest))


def _type1(package: Path, pseudonym: str) -> None:
    """A Type 1 dissent for someone the manifest says is registered here."""
    manifest = orjson.loads((package / MANIFEST).read_bytes())
    manifest["type1_opt_out"]["active"].append(pseudonym)
    manifest["type1_opt_out"].setdefault("registered", []).append(pseudonym)
    (package / MANIFEST).write_bytes(orjson.dumps(manifest))


def _textual(kind: pa.DataType) -> bool:
    textual: bool = pa.types.is_string(kind) or (
        pa.types.is_dictionary(kind) and pa.types.is_string(kind.value_type)
    )
    return textual


def _holds(path: Path, canary: str) -> bool:
    """Whether a file's bytes hold the canary, or a Parquet file's text, its dictionary pages
    included (its pages are compressed)."""
    if canary.encode() in path.read_bytes():
        return True
    if path.suffix != ".parquet":
        return False
    with pq.ParquetFile(path) as probe:
        text = [f.name for f in probe.schema_arrow if _textual(f.type)]
    with pq.ParquetFile(path, read_dictionary=text) as parquet:
        data = parquet.read(columns=text)
    return any(
        pc.any(pc.match_substring(chunk.dictionary, canary)).as_py()
        for column in data.columns
        for chunk in column.chunks
    )


def test_rogue_text_is_refused_whole_and_kept_nowhere_at_the_centre(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path: Path
) -> None:
    home = central(tmp_path, keys)
    names = ["Z10001", "Z10002", "Z10003", "Z10004", "Z10005", "Z10006", "Z10001"]
    nhs, name, area, hiding, good, deleting, opting = copies(
        clean_columnar_packages.packages, tmp_path / "in", names
    )
    plant(nhs, "medications", "patient", NHS_NUMBER)
    plant(name, "clinical_events", "unit", NAME)
    plant(area, "patients", "lsoa_code", POSTCODE)
    hide(hiding, "registrations", "patient", HIDDEN)
    _delete(deleting, DELETED)
    _type1(opting, OPTED_OUT)
    for package in (nhs, name, area, hiding, deleting, opting):
        reseal(package, keys, package.name[:6])

    result = collect(home, [nhs, name, area, hiding, good, deleting, opting])

    reasons = {r.folder.name: r.reason for r in result.refused}
    assert set(reasons) == {"Z10001", "Z10002", "Z10003", "Z10004", "Z10006", "Z10001-2"}
    assert f"medications.patient has 1 row(s) with a value {NOT_PSEUDONYM}" in reasons["Z10001"]
    assert (
        "clinical_events.unit has 1 row(s) with a value not in the field's vocabulary"
        in (reasons["Z10002"])
    )
    assert f"patients.lsoa_code has 1 row(s) with a value {NOT_LOOKUP}" in reasons["Z10003"]
    assert (
        f"registrations.patient holds a value {NOT_PSEUDONYM} in its file, though no row"
        in (reasons["Z10004"])
    )
    assert "registrations.patient has" not in reasons["Z10004"], "no row uses it"
    assert f"deletions.record_id has 1 row(s) with a value {NOT_PSEUDONYM}" in reasons["Z10006"]
    assert f"type1_opt_out.active has 1 entry(ies) {NOT_PSEUDONYM}" in reasons["Z10001-2"]
    for refused in result.refused:
        assert "nothing of the package was loaded" in refused.reason
        assert refused.moved_to is not None
        assert refused.reason in (refused.moved_to / REFUSED_NOTE).read_text()

    # Only the honest package is in the lake, whole.
    assert [r.practice for r in result.loaded] == ["Z10005"]
    lake = Lake.open(home.lake_folder)
    con = connect(lake.snapshot())
    for table in lake.data:
        held = con.sql(f"select distinct practice from {table}").fetchall()
        assert held == [("Z10005",)], table
    assert result.loaded[0].rows["clinical_events"] > 0

    # No canary anywhere the centre keeps things: lake, rejected/, its database, events. (The
    # packages given were the operator's, left where they were: the scan finds canaries there.)
    assert _holds(nhs / "medications.parquet", NHS_NUMBER)
    assert _holds(hiding / "registrations.parquet", HIDDEN)
    files = [p for p in home.home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == REFUSED_NOTE for p in files)
    for path in files:
        for canary in CANARIES:
            assert not _holds(path, canary), (canary, path)
    with home.engine().connect() as db:
        details = db.execute(sa.select(Event.kind, Event.details)).all()
    assert {kind for kind, _ in details} >= {"package.refused", "package.loaded"}
    published = orjson.dumps([d for _, d in details]) + orjson.dumps(list(reasons.values()))
    for canary in CANARIES:
        assert canary.encode() not in published


def test_every_field_of_an_honest_package_is_within_its_kind(
    clean_columnar_packages: Extracted, keys: Keys
) -> None:
    """What the practice's extractor writes passes the centre's check as it is: nulls, every
    vocabulary's values, small areas of the lookup (the honest packages load in
    test_rogue_text_is_refused_whole_and_kept_nowhere_at_the_centre too)."""
    centre = CentreFields.of(shipped())
    packages = sorted(p for p in clean_columnar_packages.packages.iterdir() if p.is_dir())
    for folder in packages:
        check_fields(verified(folder, keys), centre)
    registrations = pq.read_table(packages[0] / "registrations.parquet")
    assert 0 < registrations["end_reason"].null_count < len(registrations), "nulls pass"
    areas = {area[0] for area in Geography.load(shipped()).areas.values()}
    assert POSTCODE not in areas


@pytest.fixture(scope="module")
def one_package(
    clean_columnar_packages: Extracted, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Package:
    return one_verified(clean_columnar_packages.packages, keys, tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def centre() -> CentreFields:
    return CentreFields.of(shipped())


PSEUDONYM_FIELDS = [("staff.parquet", "staff"), ("patients.parquet", "postcode_key")]


def _near_pseudonyms() -> st.SearchStrategy[str]:
    """Pseudonyms, near misses of one (a character off, too short or long, upper case, a
    trailing newline) and any text at all."""
    hexes = st.text("0123456789abcdef", min_size=64, max_size=64)

    @st.composite
    def near(draw: st.DrawFn) -> str:
        good = draw(hexes)
        at = draw(st.integers(0, 63))
        return good[:at] + draw(st.characters()) + good[at + draw(st.integers(0, 1)) :]

    return st.one_of(hexes, near(), hexes.map(str.upper), st.text(max_size=70))


@settings(max_examples=25, derandomize=True, deadline=None)
@given(_near_pseudonyms(), st.sampled_from(PSEUDONYM_FIELDS))
@example("a" * 64 + "\n", PSEUDONYM_FIELDS[0])
@example("0" * 63, PSEUDONYM_FIELDS[0])
@example("٠" * 64, PSEUDONYM_FIELDS[1])
@example("9434765919", PSEUDONYM_FIELDS[1])
def test_a_pseudonym_field_takes_nothing_but_a_pseudonym(
    one_package: Package, centre: CentreFields, value: str, where: tuple[str, str]
) -> None:
    file, column = where
    for name, _ in PSEUDONYM_FIELDS:  # as the practice made them, whatever an example did
        kept = one_package.folder.parent / name
        if not kept.exists():
            shutil.copy(one_package.folder / name, kept)
        shutil.copy(kept, one_package.folder / name)
    plant(one_package.folder, file.removesuffix(".parquet"), column, value)

    if PSEUDONYM.fullmatch(value):
        check_fields(one_package, centre)
    else:
        with pytest.raises(PackageError) as refused:
            check_fields(one_package, centre)
        table = file.removesuffix(".parquet")
        assert f"{table}.{column} has 1 row(s) with a value {NOT_PSEUDONYM}" in str(refused.value)
        if value.strip():
            assert value not in str(refused.value)


def test_a_text_field_of_a_kind_the_centre_cannot_judge_stops_it_before_any_package() -> None:
    """An allowlist that passed what it does not know would be none."""
    spec = shipped()
    patients = spec.tables["patients"]
    odd = Field("postcode_district", "string", "a kind with neither values nor a known lookup")
    changed = replace(patients, fields=(*patients.fields, odd))
    with pytest.raises(UserError, match="cannot check text fields of kind 'lookup:None'"):
        CentreFields.of(replace(spec, tables={**spec.tables, "patients": changed}))
